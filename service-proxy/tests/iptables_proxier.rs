//! The iptables proxier against a fake `iptables-restore` (kube-proxy's
//! `iptablestest.FakeIPTables` is the model): what each sync feeds the program.

use service_proxy::iptables::apply::{Applier, IptablesProxier};
use service_proxy::iptables::{IptablesConfig, Renderer, Table};
use service_proxy::{BackendReport, Proxier, ProxyConfig, SyncKind};
use service_testkit::{FakeRunner, fixtures};

fn proxier() -> IptablesProxier<FakeRunner> {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    IptablesProxier::new(
        Renderer::new(IptablesConfig::new(proxy), false),
        FakeRunner::default(),
    )
}

fn canary(p: &mut IptablesProxier<FakeRunner>) {
    p.applier_mut().runner_mut().saved.insert(
        (false, Table::Mangle),
        ":KUBE-PROXY-CANARY - [0:0]\n".into(),
    );
}

#[test]
fn first_sync_is_full_and_installs_jumps_and_canary() {
    let mut p = proxier();
    let report = p.sync_to(&fixtures::kube_proxy_snapshot()).unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    let input = &p.applier_mut().runner().restores[0];
    assert!(input.starts_with("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n*filter\n"));
    assert!(input.contains("-I INPUT 1 -j KUBE-FIREWALL\n"));
    assert!(input.contains(
        "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
    ));
    assert!(input.contains("-I FORWARD 4 -m comment --comment \"kubernetes externally-visible service portals\" -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES\n"));
}

#[test]
fn unchanged_snapshot_writes_nothing_and_a_change_is_partial() {
    let mut p = proxier();
    let snap = fixtures::kube_proxy_snapshot();
    p.sync_to(&snap).unwrap();
    canary(&mut p);
    let r = p.sync_to(&snap).unwrap();
    assert!(!r.wrote);
    assert_eq!(p.applier_mut().runner().restores.len(), 1);
    let yaml = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.9]");
    let c = fixtures::cluster(&yaml);
    let next = snap
        .rebuild(
            snap.node.as_ref().clone(),
            &c.services,
            &c.endpoint_slices,
            &[],
        )
        .unwrap();
    let r = p.sync_to(&next).unwrap();
    assert_eq!(r.kind, SyncKind::Partial);
    assert_eq!(r.service_ports_changed, 1);
    let input = p.applier_mut().runner().restores.last().unwrap();
    assert!(!input.contains("*mangle"));
    assert!(input.contains("-X KUBE-SEP-SXIVWICOYRO3J4NJ"));
}

#[test]
fn missing_canary_forces_a_full_sync() {
    let mut p = proxier();
    let snap = fixtures::kube_proxy_snapshot();
    p.sync_to(&snap).unwrap();
    // No canary in the (fake) mangle table: someone flushed it.
    let r = p.sync_to(&snap).unwrap();
    assert_eq!(r.kind, SyncKind::Full);
    assert!(r.wrote);
    assert_eq!(r.repaired, 1, "the flush is reported: {r}");
}

#[test]
fn failed_partial_restore_is_redone_in_full() {
    let mut p = proxier();
    let snap = fixtures::kube_proxy_snapshot();
    p.sync_to(&snap).unwrap();
    canary(&mut p);
    let yaml = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.9]");
    let c = fixtures::cluster(&yaml);
    let next = snap
        .rebuild(
            snap.node.as_ref().clone(),
            &c.services,
            &c.endpoint_slices,
            &[],
        )
        .unwrap();
    p.applier_mut().runner_mut().fail_restores = 1;
    let r = p.sync_to(&next).unwrap();
    assert!(matches!(r.detail, BackendReport::Iptables(d) if d.recovered));
    assert_eq!(r.kind, SyncKind::Full);
    assert_eq!(r.repaired, 1, "{r}");
    let restores = &p.applier_mut().runner().restores;
    assert_eq!(restores.len(), 3);
    assert!(restores[2].starts_with("*mangle"));
    // Both fail: the error surfaces and the next sync is full.
    p.applier_mut().runner_mut().fail_restores = 2;
    let again = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.8]");
    let c = fixtures::cluster(&again);
    let third = next
        .rebuild(
            next.node.as_ref().clone(),
            &c.services,
            &c.endpoint_slices,
            &[],
        )
        .unwrap();
    assert!(p.sync_to(&third).is_err());
    let r = p.sync_to(&third).unwrap();
    assert_eq!(r.kind, SyncKind::Full);
}

#[test]
fn leftover_chains_and_misplaced_jumps_are_reconciled() {
    let mut p = proxier();
    p.applier_mut().runner_mut().saved.insert(
        (false, Table::Nat),
        ":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n".into(),
    );
    p.sync_to(&fixtures::kube_proxy_snapshot()).unwrap();
    let input = &p.applier_mut().runner().restores[0];
    assert!(input.contains(":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n"));
    assert!(input.contains("-X KUBE-SVC-AAAAAAAAAAAAAAAA\n"));
    assert!(!input.contains("DOCKER"));
    // Ours was not first in PREROUTING: deleted and re-inserted at the top.
    assert!(input.contains(
        "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
    ));
    assert!(input.contains("-I PREROUTING 1 "));
}

#[test]
fn cleanup_removes_only_ours() {
    let mut runner = FakeRunner::default();
    runner.saved.insert(
        (false, Table::Nat),
        ":KUBE-SERVICES - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j DOCKER\n-A DOCKER -j RETURN\n".into(),
    );
    runner.saved.insert(
        (false, Table::Filter),
        ":KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -m comment --comment kubelet -j KUBE-FIREWALL\n".into(),
    );
    let mut a = Applier::new(runner, false, true);
    a.cleanup().unwrap();
    let input = &a.runner().restores[0];
    assert!(input.contains(
        "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
    ));
    assert!(input.contains("-X KUBE-SERVICES\n"));
    assert!(input.contains("-X KUBE-SEP-AAAAAAAAAAAAAAAA\n"));
    assert!(!input.contains("DOCKER"));
    assert!(
        !input.contains("-X KUBE-FIREWALL"),
        "kept while another rule jumps to it:\n{input}"
    );
    assert!(input.contains("-D INPUT -j KUBE-FIREWALL\n"), "{input}");
    assert!(
        !input.contains("-D INPUT -m comment --comment kubelet"),
        "{input}"
    );
}
