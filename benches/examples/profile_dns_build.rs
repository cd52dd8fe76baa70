//! Builds the DNS zone of 10,000 Services repeatedly, for `perf record`.

fn main() {
    let snap = service_benches::snapshot(10_000, 10);
    let mut keep = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..40 {
        keep.push(service_dns::Zone::from_snapshot(
            service_dns::DnsConfig::default(),
            &snap,
        ));
    }
    eprintln!("{:?} per build", started.elapsed() / 40);
    std::mem::forget(keep);
}
