//! IPVS sync times at scale against a real IPVS table, in User-Mode Linux (the host kernel
//! has no IPVS). UML runs every system call through `ptrace`, so the absolute times are
//! far above a real node's; compare them with each other. For 1k and 10k services × 10
//! endpoints: the first sync (everything created), a sync after one endpoint changed, the
//! same sync again (nothing to do), and a full one (`force_full`: every virtual server's
//! real servers read again) with nothing to do. A measurement, not a check: run it by name,
//! in release mode (a few minutes):
//!
//! ```sh
//! cargo test --release -p service-benches --test ipvs_sync_uml -- --ignored --nocapture --exact ipvs_sync_times
//! ```

use std::time::{Duration, Instant};

use service_proxy::Proxier;
use service_proxy::iptables::apply::{Flavor, SystemRunner};
use service_proxy::ipvs::{IpvsConfig, IpvsProxier};
use service_testkit::netns::E2e;
use service_testkit::uml;

/// What each timed line starts with (the outer test prints these from UML's console).
const MARK: &str = "ipvs sync";

#[test]
#[ignore = "a measurement that takes minutes: run it by name (see the file's header)"]
fn ipvs_sync_times() {
    if uml::require("ipvs_sync_times", &["ipset", "iptables-legacy-restore"]) == E2e::Skip {
        return;
    }
    let console = uml::run_inside("ipvs_sync_times_in_uml", Duration::from_secs(3600));
    for line in console.lines().filter(|l| l.contains(MARK)) {
        println!("{}", line.trim());
    }
}

#[test]
#[ignore = "runs inside User-Mode Linux, started by ipvs_sync_times"]
fn ipvs_sync_times_in_uml() {
    assert!(uml::inside(), "runs inside UML only (see ipvs_sync_times)");
    uml::load_modules(uml::IPVS_NODE_MODULES).expect("load the UML kernel modules");
    for services in [1_000, 10_000] {
        let (before, after, _) = service_benches::one_change(services, 10);
        let mut proxy = service_benches::proxy_config();
        proxy.local_addresses = vec!["192.168.0.2".parse().expect("ip")];
        let runner = SystemRunner::new().with_flavor(Flavor::Legacy);
        let mut proxier =
            IpvsProxier::new(IpvsConfig::new(proxy), runner, false).expect("start IPVS");
        let timed = |what: &str, proxier: &mut IpvsProxier<SystemRunner>, snap| {
            let started = Instant::now();
            let report = proxier.sync_to(snap).expect("sync");
            println!(
                "{MARK} {services} services, {what}: {:?} ({} changes, full: {})",
                started.elapsed(),
                report.ipvs().expect("ipvs report").changes,
                report.ipvs().expect("ipvs report").read_all
            );
        };
        timed("first", &mut proxier, &before);
        timed("one endpoint changed", &mut proxier, &after);
        timed("nothing changed", &mut proxier, &after);
        proxier.force_full();
        timed("forced full, nothing changed", &mut proxier, &after);
        proxier.cleanup().expect("cleanup");
    }
}
