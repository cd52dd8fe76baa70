//! Real `iptables-restore` apply times inside a network namespace, at 10k services × 10
//! endpoints: the first (full) sync, then partial syncs after one Service changed.
//! Needs root; prints what it measured. Run: `cargo bench -p service-benches --bench iptables_apply`.

use std::time::Instant;

use service_proxy::Proxier;
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::iptables::{IptablesConfig, Renderer};
use service_testkit::netns::{E2e, Netns, require};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if require("iptables_apply", &["ip", "iptables-restore"]) == E2e::Skip {
        return;
    }
    // iptables-nft's --noflush restore grows with rules x chains: measure it at 1k, and
    // legacy at 10k (SERVICES overrides both).
    let forced: Option<usize> = std::env::var("SERVICES").ok().and_then(|v| v.parse().ok());
    let only = std::env::var("FLAVOR").ok();
    for (flavor, default) in [(Flavor::Legacy, 10_000), (Flavor::Nft, 1_000)] {
        if only
            .as_deref()
            .is_some_and(|f| !format!("{flavor:?}").eq_ignore_ascii_case(f))
        {
            continue;
        }
        measure(flavor, forced.unwrap_or(default));
    }
}

fn measure(flavor: Flavor, services: usize) {
    let ns = Netns::new("apply-bench");
    let proxy = service_benches::proxy_config();
    let mut proxier = IptablesProxier::new(
        Renderer::new(IptablesConfig::new(proxy), false),
        SystemRunner::in_netns(ns.name()).with_flavor(flavor),
    );
    let (before, after, _) = service_benches::one_change(services, 10);
    let t = Instant::now();
    let r = proxier.sync_to(&before).expect("full sync");
    println!(
        "{flavor:?}: full sync, {services} services x 10 endpoints: {} rules in {:?} (render + iptables-save + iptables-restore)",
        r.iptables().expect("iptables report").rules,
        t.elapsed()
    );
    let mut times = Vec::new();
    for i in 0..6 {
        let snap = if i % 2 == 0 { &after } else { &before };
        let t = Instant::now();
        let r = proxier.sync_to(snap).expect("partial sync");
        assert_eq!(r.kind, service_proxy::SyncKind::Partial);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{flavor:?}: partial sync after one change: median {:?} (min {:?}, max {:?}, {} rules restored)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        r.iptables().expect("iptables report").rules
    );
    proxier.cleanup().expect("cleanup");
}
