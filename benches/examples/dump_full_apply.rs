//! Writes what the iptables applier feeds to iptables-restore on a first full sync of `N`
//! services × 10 endpoints.
use std::io::Write as _;

use service_proxy::iptables::apply::Applier;
use service_proxy::iptables::{IptablesConfig, Renderer};
use service_testkit::FakeRunner;

fn main() {
    let n: usize = service_benches::arg_or(1, 1000);
    let snap = service_benches::snapshot(n, 10);
    let proxy = service_benches::proxy_config();
    let rules = Renderer::new(IptablesConfig::new(proxy), false).full(&snap);
    let mut a = Applier::new(FakeRunner::default(), false, true);
    a.apply(&rules).expect("fake apply");
    std::io::stdout()
        .write_all(a.runner().restores[0].as_bytes())
        .expect("stdout");
}
