//! `render --backend {iptables|nftables|ipvs} [NODE FLAGS] FILE...`: prints the complete rule set
//! for a node on stdout.
//!
//! For iptables this is `iptables-restore` input (or `ip6tables-restore` with
//! `--ip-family ipv6`) including the jump rules from the built-in chains: restored without
//! `--noflush` on a host without other rules, it reproduces exactly what the proxy installs.
//! For nftables it is an `nft -f` script that replaces the `kube-proxy` table of the family
//! (`ip`, or `ip6` with `--ip-family ipv6`) with what the proxy sends over netlink. For
//! IPVS it is the plan: `ipvsadm -S -n` lines, then the addresses and ipset entries, then
//! the fixed iptables rules IPVS mode adds.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use service_core::model::IpFamily;
use service_examples::{BackendArg, IpFamilyArg, NodeArgs, load_snapshot};
use service_proxy::Proxier as _;
use service_proxy::dry_run::DryRun;
use service_proxy::iptables::IptablesConfig;
use service_proxy::ipvs::IpvsConfig;
use service_proxy::nftables::NftablesConfig;

/// Render the proxy rules for one node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Which backend's rules to render.
    #[arg(long, value_enum, default_value = "iptables")]
    backend: BackendArg,
    /// IP family to render (default: the family of the first --node-ip).
    #[arg(long, value_enum)]
    ip_family: Option<IpFamilyArg>,
    #[command(flatten)]
    node: NodeArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let snapshot = match load_snapshot(&args.files, &args.node) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let family = if args.node.ipv6(args.ip_family) {
        IpFamily::Ipv6
    } else {
        IpFamily::Ipv4
    };
    let proxy = match args.node.proxy_config() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The proxier the daemon runs without --apply: its first (full) sync is the rule set.
    let mut proxier = match args.backend {
        BackendArg::Iptables => DryRun::iptables(IptablesConfig::new(proxy), family),
        BackendArg::Nftables => DryRun::nftables(NftablesConfig::new(proxy), family),
        BackendArg::Ipvs => DryRun::ipvs(IpvsConfig::new(proxy), family),
        BackendArg::Userspace => {
            eprintln!(
                "error: the userspace backend's rules name the ports its portals listen on: run `proxy --backend userspace` (without --apply it prints them)"
            );
            return ExitCode::from(2);
        }
    };
    if let Err(e) = proxier.sync_to(&snapshot) {
        eprintln!("error: rendering: {e}");
        return ExitCode::FAILURE;
    }
    let text = proxier.last_text();
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("error: writing the rules: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
