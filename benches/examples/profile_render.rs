//! A driver for profilers: one full iptables render of `N` services × 10 endpoints
//! (`N` from the first argument, default 2000).

use service_proxy::iptables::{IptablesConfig, Renderer};

fn main() {
    let n: usize = service_benches::arg_or(1, 2000);
    let snap = service_benches::snapshot(n, 10);
    let proxy = service_benches::proxy_config();
    let rounds: usize = service_benches::arg_or(2, 1);
    let mut text = Vec::new();
    for _ in 0..rounds {
        let start = std::time::Instant::now();
        Renderer::new(IptablesConfig::new(proxy.clone()), false)
            .full(&snap)
            .write_restore_input(&mut text);
        eprintln!("{} bytes in {:?}", text.len(), start.elapsed());
    }
}
