//! Network-programming latency through the whole engine: `SERVICES` Services × 10
//! endpoints loaded into the kernel (in a network namespace), then one EndpointSlice change
//! every 10 ms (100/s) for `SECONDS`, each applied to the change tracker as it happens;
//! the scheduler decides when to sync and the proxier commits. For each change, the time
//! from the change to the end of the sync that committed it (kube-proxy's
//! `network_programming_duration_seconds`). nftables over netlink and iptables-legacy, with
//! `--min-sync-period` 0 and 1 s (kube-proxy's default).
//!
//! Needs root. `cargo run --release -p service-benches --example netprog_latency [SERVICES]
//! [SECONDS]` (defaults 10000 and 30).

use std::time::{Duration, Instant, SystemTime};

use service_core::tracker::{ChangeTracker, Event};
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::iptables::{IptablesConfig, Renderer as IptRenderer};
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};
use service_proxy::{Engine, Proxier, SchedulerConfig};
use service_testkit::netns::{E2e, Netns, require};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn run(label: &str, proxier: Box<dyn Proxier>, services: usize, seconds: u64, min: Duration) {
    let (svcs, mut slices) = service_testkit::fixtures::scale(services, 10);
    let mut tracker = ChangeTracker::new(service_benches::node());
    let t0 = SystemTime::now();
    for s in &svcs {
        tracker
            .apply(Event::ServiceUpserted(s.object.clone()), t0)
            .expect("valid");
    }
    for s in &slices {
        tracker
            .apply(Event::EndpointSliceUpserted(s.clone()), t0)
            .expect("valid");
    }
    let config = SchedulerConfig::new(min, Duration::from_secs(3600));
    let mut engine = Engine::new(tracker, config, vec![proxier], Instant::now());
    let load = Instant::now();
    let first = engine
        .poll(Instant::now(), SystemTime::now())
        .expect("the first sync is due");
    assert!(first.ok(), "{label}: first sync: {:?}", first.results);
    let load = load.elapsed();

    let period = Duration::from_millis(10);
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let end = start + Duration::from_secs(seconds);
    let mut next = start;
    let (mut sent, mut syncs, mut latencies) = (0usize, 0usize, Vec::new());
    while Instant::now() < end || engine.scheduler().pending_since().is_some() {
        let now = Instant::now();
        while next <= now && now < end {
            // Move one endpoint of a Service, a different one each time.
            let slice = &mut slices[(sent * 7919) % services];
            slice.endpoints[0].addresses[0] =
                format!("10.250.{}.{}", sent / 250 % 250, sent % 250 + 1);
            // The change happened when it was due, even if a long sync kept this loop
            // from applying it at once (no coordinated omission).
            engine
                .apply(
                    Event::EndpointSliceUpserted(slice.clone()),
                    wall_start + (next - start),
                    Instant::now(),
                )
                .expect("valid");
            sent += 1;
            next += period;
        }
        if let Some(sync) = engine.poll(Instant::now(), SystemTime::now()) {
            assert!(sync.ok(), "{label}: {:?}", sync.results);
            if syncs < 3 && std::env::var_os("VERBOSE").is_some() {
                for (_, r) in &sync.results {
                    println!("  {}", r.as_ref().expect("ok"));
                }
            }
            syncs += 1;
            latencies.extend(sync.latencies);
        }
        let wake = engine
            .poll_timeout()
            .map_or(next, |t| t.min(next))
            .max(Instant::now());
        std::thread::sleep(wake - Instant::now());
    }
    latencies.sort();
    println!(
        "{label}: {services} services x 10 endpoints (first load {load:?}), {sent} changes in {seconds} s, {syncs} syncs: \
         p50 {:?}, p99 {:?}, max {:?} (over {} changes)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
}

fn main() {
    if require("netprog_latency", &["ip", "nft", "iptables-legacy-restore"]) == E2e::Skip {
        return;
    }
    let services = service_benches::arg_or(1, 10_000);
    let seconds = service_benches::arg_or(2, 30) as u64;
    for min in [Duration::ZERO, Duration::from_secs(1)] {
        let ns = Netns::new("netprog");
        let renderer =
            NftRenderer::new(NftablesConfig::new(service_benches::proxy_config()), false);
        let socket = NftSocket::in_netns(&ns.path()).expect("netlink socket");
        run(
            &format!("nftables, min-sync-period {min:?}"),
            Box::new(NftProxier::new(renderer, socket)),
            services,
            seconds,
            min,
        );
        let ns = Netns::new("netprog");
        let renderer =
            IptRenderer::new(IptablesConfig::new(service_benches::proxy_config()), false);
        let runner = SystemRunner::in_netns(ns.name()).with_flavor(Flavor::Legacy);
        run(
            &format!("iptables-legacy, min-sync-period {min:?}"),
            Box::new(IptablesProxier::new(renderer, runner)),
            services,
            seconds,
            min,
        );
    }
}
