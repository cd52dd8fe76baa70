//! Kernel end-to-end test of the iptables backend: the rendered rules are applied with
//! `iptables-restore` inside a node network namespace, and real TCP and UDP connections
//! from an external client and from pod namespaces must reach the expected endpoints.
//! For every flow, the tracer's verdict must agree with what the kernel did.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

mod common;

use std::collections::BTreeMap;

use common::{
    Backend, CLUSTER, Env, From, NODE_IP, NODE_POD_CIDR, TIMEOUT, check, ip, local_traffic_cases,
    names, run_flows, run_local_traffic_case, sa, save_all, snapshot_of, snapshot_with_pod_cidrs,
};
use service_proxy::ProxyConfig;
use service_proxy::conntrack::Conntrack;
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::iptables::{IptablesConfig, Renderer};
use service_proxy::trace::Packet;
use service_proxy::{Proxier, SyncKind};
use service_testkit::fixtures;
use service_testkit::netns::{E2e, Netns, Reached, UdpClient, require, tcp_connect};

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    proxy.local_addresses = vec![ip("192.168.0.2")];
    IptablesConfig::new(proxy)
}

#[test]
fn iptables_end_to_end_nft() {
    if require(
        "iptables_end_to_end_nft",
        &["ip", "iptables-restore", "iptables-save"],
    ) == E2e::Skip
    {
        return;
    }
    end_to_end(Flavor::System, "iptables", "iptables-save");
}

#[test]
fn iptables_end_to_end_legacy() {
    if require(
        "iptables_end_to_end_legacy",
        &["ip", "iptables-legacy-restore", "iptables-legacy-save"],
    ) == E2e::Skip
    {
        return;
    }
    end_to_end(Flavor::Legacy, "iptables-legacy", "iptables-legacy-save");
}

fn end_to_end(flavor: Flavor, iptables: &str, save: &str) {
    let env = Env::new();
    let node = &env.topo.node;
    // Somebody else's rules, which must survive everything the proxy does.
    node.exec(iptables, &["-N", "OTHER-CHAIN"]);
    node.exec(
        iptables,
        &["-A", "INPUT", "-s", "198.18.0.1", "-j", "OTHER-CHAIN"],
    );
    node.exec(
        iptables,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "198.18.0.0/24",
            "-j",
            "RETURN",
        ],
    );
    let pristine = save_all(node, save);

    let conntrack =
        Conntrack::in_netns(&node.path()).expect("conntrack socket in the node namespace");
    let mut proxier = IptablesProxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(node.name()).with_flavor(flavor),
    )
    .with_conntrack(conntrack);
    let snap = snapshot_of(CLUSTER, None);
    let report = proxier.sync_to(&snap).expect("first sync");
    assert_eq!(report.kind, SyncKind::Full);
    let rules = proxier.current_rules().unwrap();

    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]).expect("our rules parse");
    run_flows(&env, &trace, Backend::Iptables);

    // UDP: a client keeps its flow on one endpoint (conntrack), until that endpoint goes.
    let resolver = UdpClient::new(&env.topo.pods[env.client_pod].ns);
    let first = match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
        Reached::Server(name, _) => name,
        other => panic!("UDP service: {other:?}"),
    };
    for _ in 0..5 {
        assert_eq!(
            resolver.ask(sa("10.96.0.53:53"), TIMEOUT),
            Reached::Server(first.clone(), ip("10.244.1.50"))
        );
    }
    let gone_ip = env.topo.pod(&first).ip.to_string();
    let mut dump = Conntrack::in_netns(&node.path()).unwrap();
    let stale = |d: &mut Conntrack| {
        d.dump(&service_core::model::IpFamily::Ipv4)
            .unwrap()
            .iter()
            .filter(|e| e.orig.protocol == 17 && e.reply.src.ip().to_string() == gone_ip)
            .count()
    };
    assert!(
        stale(&mut dump) >= 1,
        "the UDP flow has a conntrack entry to {first}"
    );

    // Partial sync: the endpoint goes from the dns and web Services.
    let mut yaml = CLUSTER.to_owned();
    // Remove `first` from the dns slice, and web-2 from the web slice.
    let dns_old = "ports: [{name: dns, port: 5353, protocol: UDP}]\nendpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n- {addresses: [10.244.2.12], nodeName: node-b}\n";
    let dns_new: String = dns_old
        .lines()
        .filter(|l| !l.contains(&gone_ip))
        .map(|l| format!("{l}\n"))
        .collect();
    yaml = yaml.replace(dns_old, &dns_new);
    let web_old = "metadata: {name: web-1, namespace: e2e, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n- {addresses: [10.244.2.12], nodeName: node-b}\n";
    yaml = yaml.replace(
        web_old,
        &web_old.replace("- {addresses: [10.244.2.12], nodeName: node-b}\n", ""),
    );
    assert_ne!(yaml, CLUSTER);
    let next = snapshot_of(&yaml, Some(&snap));
    let report = proxier.sync_to(&next).expect("partial sync");
    assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
    assert_eq!(report.service_ports_changed, 2);
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    assert_eq!(stale(&mut dump), 0);
    let rules = proxier.current_rules().unwrap();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]).expect("our rules parse");
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.10:80", 30),
        names(&["web-0", "web-1"])
    );
    match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
        Reached::Server(name, _) => {
            assert_ne!(name, first, "the UDP flow moved off the removed endpoint")
        }
        other => panic!("UDP after the endpoint left: {other:?}"),
    }

    // Someone flushes nat and deletes the canary: the next sync is full and repairs it.
    node.exec(iptables, &["-t", "nat", "-F"]);
    node.exec(iptables, &["-t", "mangle", "-X", "KUBE-PROXY-CANARY"]);
    // (The other owner puts its own rule back, as firewalld would.)
    node.exec(
        iptables,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "198.18.0.0/24",
            "-j",
            "RETURN",
        ],
    );
    assert!(matches!(
        tcp_connect(
            &env.topo.pods[env.client_pod].ns,
            None,
            sa("10.96.0.10:80"),
            TIMEOUT
        ),
        Reached::Refused | Reached::Timeout | Reached::Other(_)
    ));
    let report = proxier.sync_to(&next).expect("resync");
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(report.repaired, 1, "the flush is reported: {report}");
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.10:80", 30),
        names(&["web-0", "web-1"])
    );

    // Cleanup leaves the tables as they were.
    proxier.cleanup().expect("cleanup");
    assert_eq!(save_all(node, save), pristine);
    // And a second cleanup is a no-op.
    proxier.cleanup().expect("second cleanup");
    assert_eq!(save_all(node, save), pristine);
}

/// `--detect-local-mode`: each mode's rules in the kernel, with pods, the client and the
/// node connecting to a ClusterIP and a Local-policy load balancer.
#[test]
fn iptables_local_traffic_detection() {
    if require(
        "iptables_local_traffic_detection",
        &["ip", "iptables-restore", "iptables-save"],
    ) == E2e::Skip
    {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    let snap = snapshot_with_pod_cidrs(CLUSTER, &[NODE_POD_CIDR]);
    for case in local_traffic_cases() {
        let mut config = config();
        config.proxy.detect_local = case.mode.clone();
        let runner = SystemRunner::in_netns(node.name()).with_flavor(Flavor::System);
        let mut proxier = IptablesProxier::new(Renderer::new(config, false), runner);
        proxier.sync_to(&snap).expect("sync");
        let rules = proxier.current_rules().unwrap().clone();
        let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]).expect("our rules parse");
        run_local_traffic_case(&env, &trace, &case, Backend::Iptables);
        proxier.cleanup().expect("cleanup");
    }
}

/// kube-proxy's nfacct counters: created in the node's namespace, the kernel takes the
/// rules that count into them, and connections to a node port on localhost are counted.
#[test]
fn iptables_nfacct_counters() {
    if require(
        "iptables_nfacct_counters",
        &["ip", "iptables-restore", "iptables-save"],
    ) == E2e::Skip
    {
        return;
    }
    use service_proxy::nfacct::{CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORTS_ACCEPTED, Nfacct};
    let env = Env::new();
    let node = &env.topo.node;
    let mut nfacct = Nfacct::in_netns(&node.path()).expect("nfnetlink socket");
    assert_eq!(nfacct.get(LOCALHOST_NODEPORTS_ACCEPTED).unwrap(), None);
    let mut config = config();
    let failed = nfacct.ensure_kube_proxy_counters(&mut config);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(config.count_invalid_drops && config.count_localhost_nodeports);
    // Ensuring again keeps the counters (and their counts).
    assert!(nfacct.ensure_kube_proxy_counters(&mut config).is_empty());
    let runner = SystemRunner::in_netns(node.name()).with_flavor(Flavor::System);
    let mut proxier = IptablesProxier::new(Renderer::new(config, false), runner);
    let snap = snapshot_of(CLUSTER, None);
    proxier
        .sync_to(&snap)
        .expect("the kernel takes the counting rules");
    let saved = save_all(node, "iptables-save");
    // (iptables-save prints two spaces after `--nfacct-name`.)
    assert!(
        saved.contains("-d 127.0.0.0/8 -p tcp -m comment --comment \"e2e/np:http\" -m tcp --dport 30080 -m nfacct --nfacct-name  localhost_nps_accepted_pkts"),
        "{saved}"
    );
    let rules = proxier.current_rules().unwrap();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]).expect("our rules parse");
    let before = nfacct.get(LOCALHOST_NODEPORTS_ACCEPTED).unwrap().unwrap();
    assert_eq!(before.packets, 0);
    // Through the node port on the node's own address: not counted.
    check(&env, &trace, From::Node, "192.168.0.2:30080", 3);
    assert_eq!(
        nfacct
            .get(LOCALHOST_NODEPORTS_ACCEPTED)
            .unwrap()
            .unwrap()
            .packets,
        0
    );
    let seen = check(&env, &trace, From::NodeLoopback, "127.0.0.1:30080", 3);
    assert_eq!(
        seen,
        names(&["web-0", "web-2"])
            .intersection(&seen)
            .cloned()
            .collect()
    );
    let after = nfacct.get(LOCALHOST_NODEPORTS_ACCEPTED).unwrap().unwrap();
    // One first packet per connection goes through nat.
    assert_eq!(after.packets, 3, "{after:?}");
    assert!(nfacct.get(CT_STATE_INVALID_DROPPED).unwrap().is_some());
    proxier.cleanup().expect("cleanup");
}

#[test]
fn restore_accepts_every_fixture() {
    // The kernel's own parser accepts the full and the partial rule sets of every fixture,
    // in both families.
    if require(
        "restore_accepts_every_fixture",
        &["ip", "iptables-restore", "ip6tables-restore"],
    ) == E2e::Skip
    {
        return;
    }
    let node = Netns::new("parse");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let snap = fixtures::snapshot(&yaml, "node-a", &["192.168.0.2", "fd00::2"]);
        for ipv6 in [false, true] {
            let mut cfg = config();
            cfg.proxy
                .cluster_cidrs
                .push("fd00:10::/64".parse().unwrap());
            let mut proxier = IptablesProxier::new(
                Renderer::new(cfg, ipv6),
                SystemRunner::in_netns(node.name()),
            );
            proxier
                .sync_to(&snap)
                .unwrap_or_else(|e| panic!("{} (ipv6={ipv6}): {e}", path.display()));
            proxier.cleanup().unwrap();
        }
    }
    let saved: BTreeMap<&str, String> = [("filter", ""), ("nat", "")]
        .into_iter()
        .map(|(t, _)| (t, node.exec_text("iptables-save", &["-t", t])))
        .collect();
    for (t, text) in saved {
        assert!(
            !text.contains("KUBE-"),
            "{t} still has proxy chains:\n{text}"
        );
    }
}

/// `iptables-save` of our chains, per table and chain, rules in order, counters dropped.
fn kube_state(node: &Netns) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for table in ["filter", "nat", "mangle"] {
        for line in node.exec_text("iptables-save", &["-t", table]).lines() {
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                out.entry((table.to_owned(), name.to_owned())).or_default();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
                out.entry((table.to_owned(), chain.to_owned()))
                    .or_default()
                    .push(rule.to_owned());
            }
        }
    }
    out
}

#[test]
fn partial_syncs_match_a_full_restore_in_the_kernel() {
    if require(
        "partial_syncs_match_a_full_restore_in_the_kernel",
        &["ip", "iptables-restore", "iptables-save"],
    ) == E2e::Skip
    {
        return;
    }
    let node = Netns::new("psync");
    let mut proxier = IptablesProxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(node.name()),
    );
    let mut yaml = CLUSTER.to_owned();
    let mut snap = snapshot_of(&yaml, None);
    proxier.sync_to(&snap).unwrap();
    let edits: [(&str, &str); 6] = [
        (
            "- {addresses: [10.244.2.12], nodeName: node-b}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky",
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky",
        ),
        (
            "endpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n---",
            "endpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n- {addresses: [10.244.2.13], nodeName: node-b}\n---",
        ),
        ("  sessionAffinity: ClientIP\n", ""),
        ("  externalIPs: [192.0.2.10]\n", ""),
        (
            "metadata: {name: empty, namespace: e2e}",
            "metadata: {name: empty2, namespace: e2e}",
        ),
        (
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 30100\n",
            "",
        ),
    ];
    for (from, to) in edits {
        assert!(yaml.contains(from), "edit does not apply: {from}");
        yaml = yaml.replacen(from, to, 1);
        let next = snapshot_of(&yaml, Some(&snap));
        let report = proxier.sync_to(&next).unwrap();
        assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
        snap = next;
    }
    let fresh = Netns::new("psync-full");
    let mut full = IptablesProxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(fresh.name()),
    );
    assert_eq!(full.sync_to(&snap).unwrap().kind, SyncKind::Full);
    assert_eq!(kube_state(&node), kube_state(&fresh));
}
