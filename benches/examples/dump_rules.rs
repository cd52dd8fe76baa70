//! Writes the full iptables-restore input for `N` services × 10 endpoints to stdout.
use std::io::Write as _;

use service_proxy::iptables::{IptablesConfig, Renderer};

fn main() {
    let n: usize = service_benches::arg_or(1, 1000);
    let snap = service_benches::snapshot(n, 10);
    let proxy = service_benches::proxy_config();
    let mut out = Vec::new();
    Renderer::new(IptablesConfig::new(proxy), false)
        .full(&snap)
        .write_restore_input(&mut out);
    std::io::stdout().write_all(&out).expect("stdout");
}
