//! One contract, every proxier (see `common/contract.rs`): the dry runs of each backend
//! without a kernel; iptables (both flavours), nftables and the userspace proxy in a network
//! namespace (root); IPVS inside User-Mode Linux.

mod common;

use std::time::Duration;

use common::contract::{Observe, check};
use service_core::model::IpFamily;
use service_proxy::ProxyConfig;
use service_proxy::dry_run::DryRun;
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::iptables::{IptablesConfig, Renderer as IptRenderer};
use service_proxy::ipvs::{IpvsConfig, IpvsProxier};
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};
use service_proxy::userspace::{UserspaceConfig, UserspaceProxier, UserspaceProxy};
use service_testkit::netns::{E2e, Netns, require};
use service_testkit::uml;

fn proxy_config() -> ProxyConfig {
    let mut p = ProxyConfig::default();
    p.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    p.local_addresses = vec!["192.168.0.2".parse().unwrap()];
    p
}

const DRY: Observe<'static> = Observe {
    state: None,
    shows_endpoints: false,
    partial: true,
};

#[test]
fn dry_runs_keep_the_contract() {
    let v4 = IpFamily::Ipv4;
    check(
        "dry run iptables",
        &mut DryRun::iptables(IptablesConfig::new(proxy_config()), v4.clone()),
        &DRY,
    );
    check(
        "dry run nftables",
        &mut DryRun::nftables(NftablesConfig::new(proxy_config()), v4.clone()),
        &DRY,
    );
    check(
        "dry run ipvs",
        &mut DryRun::ipvs(IpvsConfig::new(proxy_config()), v4),
        &DRY,
    );
}

#[test]
fn kernel_proxiers_keep_the_contract() {
    if require(
        "kernel_proxiers_keep_the_contract",
        &["ip", "nft", "iptables-nft-save", "iptables-legacy-save"],
    ) == E2e::Skip
    {
        return;
    }
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        let ns = Netns::new("contract");
        let save = if flavor == Flavor::Nft {
            "iptables-nft-save"
        } else {
            "iptables-legacy-save"
        };
        let state = || ns.exec_text(save, &[]);
        check(
            &format!("iptables ({flavor:?})"),
            &mut IptablesProxier::new(
                IptRenderer::new(IptablesConfig::new(proxy_config()), false),
                SystemRunner::in_netns(ns.name()).with_flavor(flavor),
            ),
            &Observe {
                state: Some(&state),
                shows_endpoints: true,
                partial: true,
            },
        );
    }

    let ns = Netns::new("contract");
    let state = || ns.exec_text("nft", &["list", "ruleset"]);
    check(
        "nftables",
        &mut NftProxier::new(
            NftRenderer::new(NftablesConfig::new(proxy_config()), false),
            NftSocket::in_netns(&ns.path()).expect("netlink socket"),
        ),
        &Observe {
            state: Some(&state),
            shows_endpoints: true,
            partial: true,
        },
    );

    let ns = Netns::new("contract");
    let rt = ns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    });
    let state = || ns.exec_text("iptables-save", &["-t", "nat"]);
    check(
        "userspace",
        &mut UserspaceProxier::new(
            UserspaceProxy::new(UserspaceConfig::default(), rt.handle().clone()),
            SystemRunner::in_netns(ns.name()),
        ),
        &Observe {
            state: Some(&state),
            shows_endpoints: false,
            partial: false,
        },
    );
}

#[test]
fn ipvs_proxier_keeps_the_contract() {
    if uml::require(
        "ipvs_proxier_keeps_the_contract",
        &["ip", "ipset", "ipvsadm", "iptables-legacy-save"],
    ) == E2e::Skip
    {
        return;
    }
    uml::run_inside("ipvs_contract_in_uml", Duration::from_secs(300));
}

#[test]
#[ignore = "runs inside User-Mode Linux, started by ipvs_proxier_keeps_the_contract"]
fn ipvs_contract_in_uml() {
    assert!(uml::inside(), "this test runs inside UML only");
    uml::load_modules(uml::IPVS_NODE_MODULES).expect("load the UML kernel modules");
    let ns = Netns::new("contract");
    ns.ip(&["link", "set", "lo", "up"]);
    let runner = SystemRunner::in_netns(ns.name()).with_flavor(Flavor::Legacy);
    let mut proxier =
        IpvsProxier::in_netns(IpvsConfig::new(proxy_config()), runner, false, &ns.path())
            .expect("start the IPVS backend");
    let state = || ns.exec_text("ipvsadm", &["-S", "-n"]);
    check(
        "ipvs",
        &mut proxier,
        &Observe {
            state: Some(&state),
            shows_endpoints: true,
            partial: true,
        },
    );
}
