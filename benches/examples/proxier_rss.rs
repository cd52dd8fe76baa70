//! What an nftables node agent holds in memory at scale, and what its first load and one
//! endpoint change cost, the way the daemon does them: every Service and EndpointSlice fed
//! to a change tracker, the tracker's snapshot loaded into the kernel (in a network
//! namespace) by the netlink proxier, then one slice changed and synced with the tracker's
//! set of changed ports. Needs root.
//!
//! ```sh
//! cargo run --release -p service-benches --example proxier_rss [SERVICES] [ENDPOINTS] [CHANGES]
//! ```
//!
//! Defaults: 100,000 Services × 10 endpoints. Resident memory is read from
//! `/proc/self/status` after each step (glibc keeps some freed memory, so it is an upper
//! bound of what the agent needs).

use std::time::{Instant, SystemTime};

use service_core::tracker::{ChangeTracker, Event};
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::nftables::{NftablesConfig, Renderer};
use service_proxy::{Proxier, SyncRequest};
use service_testkit::netns::Netns;

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn report(what: &str, started: Instant) {
    println!(
        "{what:<52} {:>10.3} ms   RSS {:>5} MiB",
        started.elapsed().as_secs_f64() * 1e3,
        status("VmRSS:")
    );
}

fn main() {
    let services = service_benches::arg_or(1, 100_000);
    let endpoints = service_benches::arg_or(2, 10);
    println!("{services} Services × {endpoints} endpoints");
    let t = Instant::now();
    let (objects, mut slices) = service_testkit::fixtures::scale_objects(services, endpoints);
    let changed_slice = {
        let mut s = slices[services / 2].clone();
        s.endpoints[0].addresses[0] = "10.250.0.1".into();
        s
    };
    report("fixture objects generated", t);

    let t = Instant::now();
    let now = SystemTime::now();
    let mut tracker = ChangeTracker::new(service_benches::node());
    for svc in objects {
        tracker
            .apply(Event::ServiceUpserted(svc), now)
            .expect("valid Service");
    }
    for slice in slices.drain(..) {
        tracker
            .apply(Event::EndpointSliceUpserted(slice), now)
            .expect("valid EndpointSlice");
    }
    let (snapshot, _) = tracker.checkout();
    drop(slices);
    report("change tracker fed, snapshot checked out", t);

    let ns = Netns::new("nft-rss");
    let socket = NftSocket::in_netns(&ns.path()).expect("netlink socket in the namespace");
    let renderer = Renderer::new(NftablesConfig::new(service_benches::proxy_config()), false);
    let mut proxier = NftProxier::new(renderer, socket);
    let t = Instant::now();
    proxier.sync_to(&snapshot).expect("cold load");
    drop(snapshot);
    report("nftables cold load over netlink (render + commit)", t);

    let rounds = service_benches::arg_or(3, 5);
    for round in 0..rounds {
        let t = Instant::now();
        // In turn: an endpoint's address replaced, one endpoint gone (the Service's
        // number of endpoints changes), the original slice back.
        let mut slice = changed_slice.clone();
        match round % 3 {
            0 => slice.endpoints[0].addresses[0] = "10.250.0.2".into(),
            1 => {
                slice.endpoints.pop();
            }
            _ => {}
        }
        tracker
            .apply(Event::EndpointSliceUpserted(slice), SystemTime::now())
            .expect("valid EndpointSlice");
        let applied = t.elapsed();
        let (snapshot, changes) = tracker.checkout();
        let checked_out = t.elapsed();
        let r = proxier
            .sync(SyncRequest::new(&snapshot, Instant::now()).with_changes(&changes.ports))
            .expect("one change");
        let synced = t.elapsed();
        drop(snapshot);
        assert_eq!(r.service_ports_changed, 1);
        report("one endpoint change: tracker, checkout, sync", t);
        println!(
            "    (event {:.3} ms, checkout {:.3} ms, sync {:.3} ms)",
            applied.as_secs_f64() * 1e3,
            (checked_out - applied).as_secs_f64() * 1e3,
            (synced - checked_out).as_secs_f64() * 1e3
        );
    }
    println!(
        "resident now {} MiB, peak {} MiB (the peak includes the fixture objects)",
        status("VmRSS:"),
        status("VmHWM:")
    );
}
