//! Kernel end-to-end test of the iptables backend: the rendered rules are applied with
//! `iptables-restore` inside a node network namespace, and real TCP and UDP connections
//! from an external client and from pod namespaces must reach the expected endpoints.
//! For every flow, the tracer's verdict must agree with what the kernel did.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use service_core::cluster::Cluster;
use service_core::model::Protocol;
use service_core::snapshot::{NodeInfo, Snapshot};
use service_proxy::ProxyConfig;
use service_proxy::SyncKind;
use service_proxy::conntrack::Conntrack;
use service_proxy::iptables::apply::{Flavor, Proxier, SystemRunner};
use service_proxy::iptables::{IptablesConfig, Renderer, RuleSet};
use service_proxy::trace::{Packet, Verdict};
use service_testkit::fixtures;
use service_testkit::netns::{E2e, Netns, Reached, Topology, UdpClient, require, tcp_connect};

const CLUSTER: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: e2e, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: e2e}
spec:
  clusterIP: 10.96.0.11
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: e2e, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: e2e}
spec:
  type: NodePort
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: e2e, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: e2e}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.13
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: e2e, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: e2e}
spec:
  clusterIP: 10.96.0.14
  externalIPs: [192.0.2.10]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: e2e, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: e2e}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.15
  externalTrafficPolicy: Local
  healthCheckNodePort: 30100
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30082}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.11}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: e2e, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: self, namespace: e2e}
spec:
  clusterIP: 10.96.0.16
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: self-1, namespace: e2e, labels: {kubernetes.io/service-name: self}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: e2e}
spec:
  clusterIP: 10.96.0.17
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: e2e}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: e2e, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
";

const TIMEOUT: Duration = Duration::from_millis(700);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    proxy.local_addresses = vec![ip("192.168.0.2")];
    IptablesConfig::new(proxy)
}

fn snapshot_of(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
    let c: Cluster = fixtures::cluster(yaml);
    let node = NodeInfo::new("node-a", vec![ip("192.168.0.2")]);
    match prev {
        Some(p) => p
            .rebuild(node, &c.services, &c.endpoint_slices, &[])
            .unwrap(),
        None => c.snapshot(node).unwrap(),
    }
}

struct Env {
    topo: Topology,
    client_pod: usize,
}

impl Env {
    fn new() -> Self {
        let mut topo = Topology::new(&["203.0.113.2", "203.0.113.130"]);
        topo.add_pod("web-0", "10.244.1.10");
        topo.add_pod("web-1", "10.244.1.11");
        topo.add_pod("web-2", "10.244.2.12");
        let client_pod = topo.add_pod("client", "10.244.1.50");
        topo.serve_all(8080, 5353);
        // Without any proxy rules, pods reach each other and the client reaches pods.
        for (from, to) in [(client_pod, 0), (client_pod, 2), (0, 1)] {
            let dst = SocketAddr::new(topo.pods[to].ip, 8080);
            let got = tcp_connect(&topo.pods[from].ns, None, dst, TIMEOUT);
            assert_eq!(
                got,
                Reached::Server(topo.pods[to].name.clone(), topo.pods[from].ip),
                "pod network"
            );
        }
        let got = tcp_connect(
            &topo.client,
            None,
            SocketAddr::new(topo.pods[0].ip, 8080),
            TIMEOUT,
        );
        assert_eq!(
            got,
            Reached::Server("web-0".into(), topo.client_ip),
            "client to pod"
        );
        Self { topo, client_pod }
    }

    fn name_of(&self, addr: &SocketAddr) -> String {
        self.topo
            .pods
            .iter()
            .find(|p| p.ip == addr.ip())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| addr.to_string())
    }

    fn netns(&self, from: From) -> &Netns {
        match from {
            From::Client | From::ClientAs(_) => &self.topo.client,
            From::Node | From::NodeLoopback => &self.topo.node,
            From::Pod(name) => &self.topo.pod(name).ns,
            From::ClientPod => &self.topo.pods[self.client_pod].ns,
        }
    }

    fn source_ip(&self, from: From) -> IpAddr {
        match from {
            From::Client => self.topo.client_ip,
            From::ClientAs(s) => ip(s),
            From::Node => self.topo.node_ip,
            From::NodeLoopback => ip("127.0.0.1"),
            From::Pod(name) => self.topo.pod(name).ip,
            From::ClientPod => self.topo.pods[self.client_pod].ip,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum From {
    Client,
    ClientAs(&'static str),
    Node,
    NodeLoopback,
    Pod(&'static str),
    ClientPod,
}

/// Connects `tries` times and checks the kernel against the tracer's verdict.
fn check(env: &Env, rules: &RuleSet, from: From, dst: &str, tries: usize) -> BTreeSet<String> {
    let dst = sa(dst);
    let src = env.source_ip(from);
    let verdict = rules
        .trace(
            &Packet::new(src, dst.ip(), dst.port(), Protocol::Tcp),
            &[ip("192.168.0.2")],
        )
        .expect("our rules parse");
    let bind = match from {
        From::ClientAs(s) => Some(ip(s)),
        _ => None,
    };
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let got = tcp_connect(env.netns(from), bind, dst, TIMEOUT);
        match (&verdict, &got) {
            (Verdict::Endpoints(dests), Reached::Server(name, peer)) => {
                let d = dests
                    .iter()
                    .find(|d| env.name_of(&d.endpoint) == *name)
                    .unwrap_or_else(|| {
                        panic!("{from:?} -> {dst}: kernel reached {name}, tracer said {verdict}")
                    });
                // Masqueraded packets arrive from the node's address, others keep their
                // source. (For the node's own packets the two coincide.)
                let expected = if d.masquerade { env.topo.node_ip } else { src };
                assert_eq!(
                    *peer, expected,
                    "{from:?} -> {dst}: {name} saw {peer}, tracer said {verdict}"
                );
                seen.insert(name.clone());
            }
            (Verdict::Reject, Reached::Refused)
            | (Verdict::Drop, Reached::Timeout)
            | (Verdict::Accept, Reached::Refused) => {
                seen.insert(format!("{got:?}"));
            }
            (Verdict::NotHandled, r) if !matches!(r, Reached::Server(..)) => {
                seen.insert("not handled".into());
            }
            _ => panic!("{from:?} -> {dst}: kernel {got:?}, tracer {verdict}"),
        }
        if !matches!(verdict, Verdict::Endpoints(_)) {
            break;
        }
    }
    seen
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn save_all(node: &Netns, save: &str) -> String {
    let mut out = String::new();
    for table in ["filter", "nat", "mangle"] {
        let text = node.exec_text(save, &["-t", table]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // Counters change with traffic; compare rules and chains only.
            let line = match line.find(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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
    let mut proxier = Proxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(node.name()).with_flavor(flavor),
        conntrack,
    );
    let snap = snapshot_of(CLUSTER, None);
    let report = proxier.sync(&snap).expect("first sync");
    assert_eq!(report.kind, SyncKind::Full);
    let rules = proxier.current_rules().unwrap();

    // Spread across all endpoints; pods keep their source, outsiders are masqueraded.
    assert_eq!(
        check(&env, &rules, From::ClientPod, "10.96.0.10:80", 40),
        names(&["web-0", "web-1", "web-2"])
    );
    assert_eq!(
        check(&env, &rules, From::Client, "10.96.0.10:80", 40),
        names(&["web-0", "web-1", "web-2"])
    );
    // A port the Service does not have is not handled.
    check(&env, &rules, From::ClientPod, "10.96.0.10:81", 1);
    // Affinity: one client sticks to one endpoint.
    assert_eq!(
        check(&env, &rules, From::ClientPod, "10.96.0.11:80", 20).len(),
        1
    );
    // NodePort from an external client, from the node, and on localhost.
    assert_eq!(
        check(&env, &rules, From::Client, "192.168.0.2:30080", 30),
        names(&["web-0", "web-2"])
    );
    assert_eq!(
        check(&env, &rules, From::Node, "192.168.0.2:30080", 30),
        names(&["web-0", "web-2"])
    );
    assert_eq!(
        check(&env, &rules, From::NodeLoopback, "127.0.0.1:30080", 30),
        names(&["web-0", "web-2"])
    );
    // Load-balancer source ranges: allowed and blocked.
    assert_eq!(
        check(
            &env,
            &rules,
            From::ClientAs("203.0.113.2"),
            "198.51.100.10:80",
            3
        ),
        names(&["web-1"])
    );
    assert_eq!(
        check(
            &env,
            &rules,
            From::ClientAs("203.0.113.130"),
            "198.51.100.10:80",
            1
        ),
        names(&["Timeout"])
    );
    // ...but node ports bypass them.
    assert_eq!(
        check(
            &env,
            &rules,
            From::ClientAs("203.0.113.130"),
            "192.168.0.2:30081",
            3
        ),
        names(&["web-1"])
    );
    // External IPs.
    assert_eq!(
        check(&env, &rules, From::Client, "192.0.2.10:80", 3),
        names(&["web-2"])
    );
    // externalTrafficPolicy Local: external clients reach only the local endpoint, with
    // their address preserved (check() asserts the peer address).
    assert_eq!(
        check(
            &env,
            &rules,
            From::ClientAs("203.0.113.2"),
            "198.51.100.11:80",
            20
        ),
        names(&["web-0"])
    );
    assert_eq!(
        check(&env, &rules, From::Client, "192.168.0.2:30082", 20),
        names(&["web-0"])
    );
    // Pods short-circuit to every endpoint.
    assert_eq!(
        check(&env, &rules, From::ClientPod, "198.51.100.11:80", 30),
        names(&["web-0", "web-2"])
    );
    // Hairpin: a pod reaching itself through its Service is masqueraded.
    assert_eq!(
        check(&env, &rules, From::Pod("web-0"), "10.96.0.16:80", 3),
        names(&["web-0"])
    );
    // No endpoints: connection refused.
    assert_eq!(
        check(&env, &rules, From::ClientPod, "10.96.0.17:80", 1),
        names(&["Refused"])
    );

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
    let report = proxier.sync(&next).expect("partial sync");
    assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
    assert_eq!(report.changed, 2);
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    assert_eq!(stale(&mut dump), 0);
    let rules = proxier.current_rules().unwrap();
    assert_eq!(
        check(&env, &rules, From::ClientPod, "10.96.0.10:80", 30),
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
    let report = proxier.sync(&next).expect("resync");
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(
        check(&env, &rules, From::ClientPod, "10.96.0.10:80", 30),
        names(&["web-0", "web-1"])
    );

    // Cleanup leaves the tables as they were.
    proxier.cleanup().expect("cleanup");
    assert_eq!(save_all(node, save), pristine);
    // And a second cleanup is a no-op.
    proxier.cleanup().expect("second cleanup");
    assert_eq!(save_all(node, save), pristine);
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
            let mut proxier = Proxier::new(
                Renderer::new(cfg, ipv6),
                SystemRunner::in_netns(node.name()),
                service_proxy::iptables::apply::NoConntrack,
            );
            proxier
                .sync(&snap)
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
    let mut proxier = Proxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(node.name()),
        service_proxy::iptables::apply::NoConntrack,
    );
    let mut yaml = CLUSTER.to_owned();
    let mut snap = snapshot_of(&yaml, None);
    proxier.sync(&snap).unwrap();
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
        let report = proxier.sync(&next).unwrap();
        assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
        snap = next;
    }
    let fresh = Netns::new("psync-full");
    let mut full = Proxier::new(
        Renderer::new(config(), false),
        SystemRunner::in_netns(fresh.name()),
        service_proxy::iptables::apply::NoConntrack,
    );
    assert_eq!(full.sync(&snap).unwrap().kind, SyncKind::Full);
    assert_eq!(kube_state(&node), kube_state(&fresh));
}
