use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use service_core::model::Protocol;
use service_core::snapshot::{ServicePortName, Snapshot};
use service_testkit::fixtures;

use super::*;
use crate::trace::{Packet, Verdict};
use crate::{DetectLocal, ProxyConfig};

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    proxy.local_addresses = vec!["192.168.0.2".parse().unwrap()];
    IptablesConfig::new(proxy)
}

fn render(snapshot: &Snapshot) -> RuleSet {
    Renderer::new(config(), false).full(snapshot)
}

fn lines(rules: &RuleSet) -> Vec<String> {
    rules
        .to_restore_input()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_has(rules: &RuleSet, line: &str) {
    let all = lines(rules);
    assert!(
        all.iter().any(|l| l == line),
        "missing line:\n{line}\nin:\n{}",
        all.join("\n")
    );
}

#[test]
fn kube_proxy_rule_shapes() {
    let rules = render(&fixtures::kube_proxy_snapshot());
    // Masquerade plumbing.
    for line in [
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    ] {
        assert_has(&rules, line);
    }
    // ClusterIP with two endpoints (svc4).
    for line in [
        "-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK",
        "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 -> 10.180.0.4:80\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
        "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 -> 10.180.0.5:80\" -j KUBE-SEP-C6EBXVWJJZMIWKLZ",
        "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80",
        "-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 external IP\" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK",
    ] {
        assert_has(&rules, line);
    }
    // ClientIP affinity (svc5).
    for line in [
        "-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 -> 10.180.0.3:80\" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN",
        "-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80",
    ] {
        assert_has(&rules, line);
    }
    // NodePort (svc3).
    for line in [
        "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK",
        "-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment \"masquerade traffic for ns3/svc3:p80 external destinations\" -j KUBE-MARK-MASQ",
        "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK",
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    ] {
        assert_has(&rules, line);
    }
    // Load balancer with source ranges (svc5).
    for line in [
        "-A KUBE-SERVICES -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C",
        "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C",
        "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL\"",
        "-A KUBE-PROXY-FIREWALL -m comment --comment \"ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C\" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP",
    ] {
        assert_has(&rules, line);
    }
    // externalTrafficPolicy Local without local endpoints (svc2).
    for line in [
        "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"masquerade LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
        "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP",
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP",
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP",
        "-A KUBE-NODEPORTS -m comment --comment \"ns2/svc2:p80 health check node port\" -m tcp -p tcp --dport 30000 -j ACCEPT",
    ] {
        assert_has(&rules, line);
    }
    assert!(
        !lines(&rules)
            .iter()
            .any(|l| l.starts_with(":KUBE-SVL-GNZBNJ2PO5MGZ6GT"))
    );
    // No endpoints at all (svc6): REJECT in filter, nothing in nat.
    assert_has(
        &rules,
        "-A KUBE-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT",
    );
    assert!(
        !lines(&rules)
            .iter()
            .any(|l| l.contains("ns6/svc6") && !l.contains("REJECT"))
    );
    // Forwarding and localhost firewall.
    for line in [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    ] {
        assert_has(&rules, line);
    }
}

/// Every `-j` to a proxy chain targets a chain the rule set defines (kube-proxy's
/// `checkIPTablesRuleJumps`), and every declared service chain is used.
fn check_jumps(rules: &RuleSet) {
    for t in [&rules.filter, &rules.nat] {
        let defined: BTreeSet<ChainName> = t.chains.iter().copied().collect();
        let mut used = BTreeSet::new();
        for (_, rule) in t.rules().unwrap() {
            if let Some(Target::Jump(c)) = rule.target {
                assert!(defined.contains(&c), "jump to undefined chain {c}");
                used.insert(c);
            }
        }
        for c in defined.iter().filter(|c| c.is_service_chain()) {
            assert!(used.contains(c), "chain {c} is never jumped to");
        }
    }
}

#[test]
fn every_jump_has_a_chain() {
    check_jumps(&render(&fixtures::kube_proxy_snapshot()));
    let demo = fixtures::snapshot(
        include_str!("../../../examples/manifests/demo.yaml"),
        "node-a",
        &["192.168.0.2"],
    );
    check_jumps(&render(&demo));
}

fn cluster_ip_services(n: usize, endpoints: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  clusterIP: 172.30.{}.{}\n  ports: [{{name: p, port: 80, targetPort: 80}}]\n",
            i / 250,
            i % 250 + 1
        );
        if endpoints > 0 {
            let _ = write!(
                yaml,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-x, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: p, port: 80, protocol: TCP}}]\nendpoints:\n"
            );
            for e in 0..endpoints {
                let _ = writeln!(yaml, "- addresses: [10.{}.{}.{}]", i / 250, i % 250, e + 1);
            }
        }
    }
    yaml
}

#[test]
fn rule_counts_match_kube_proxy() {
    // number_generated_rules_test.go: ClusterIP services with E endpoints give
    // nat = 5 + S·(2 + 3E) and filter = 3; without endpoints filter = 3 + S.
    for (s, e) in [(1, 1), (10, 10), (3, 2)] {
        let snap = fixtures::snapshot(&cluster_ip_services(s, e), "n", &["192.168.0.2"]);
        let rules = render(&snap);
        assert_eq!(rules.nat.rule_count(), 5 + s * (2 + 3 * e), "S={s} E={e}");
        assert_eq!(rules.filter.rule_count(), 3 + 1, "plus KUBE-FIREWALL");
    }
    let snap = fixtures::snapshot(&cluster_ip_services(4, 0), "n", &["192.168.0.2"]);
    let rules = render(&snap);
    assert_eq!(rules.nat.rule_count(), 5);
    assert_eq!(rules.filter.rule_count(), 3 + 1 + 4);
}

#[test]
fn large_cluster_mode_drops_endpoint_comments() {
    let snap = fixtures::snapshot(&cluster_ip_services(101, 10), "n", &["192.168.0.2"]);
    let rules = render(&snap);
    let text = rules.to_restore_input();
    assert!(!text.contains("-> 10."), "per-endpoint comments are gone");
    assert!(text.contains("-A KUBE-SERVICES -m comment --comment \"ns/s0:p cluster IP\""));
    let sep = lines(&rules)
        .into_iter()
        .find(|l| l.starts_with("-A KUBE-SEP-") && l.contains("DNAT"))
        .unwrap();
    assert!(!sep.contains("comment"), "{sep}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Flow {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    port: u16,
    want: &'static str,
    masq: bool,
}

fn run_flows(rules: &RuleSet, flows: &[Flow]) {
    let local = [ip("192.168.0.2")];
    for f in flows {
        let v = rules
            .trace(
                &Packet::new(ip(f.src), ip(f.dst), f.port, Protocol::Tcp),
                &local,
            )
            .unwrap();
        let got = match &v {
            Verdict::Endpoints(_) => v
                .endpoints()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        assert_eq!(got, f.want, "{}: {v}", f.name);
        if matches!(v, Verdict::Endpoints(_)) {
            assert_eq!(v.masquerade(), f.masq, "{}: masquerade", f.name);
        }
    }
}

#[test]
fn packet_flows() {
    // The flow table of kube-proxy's TestOverallIPTablesRules, on the same cluster.
    let rules = render(&fixtures::kube_proxy_snapshot());
    run_flows(
        &rules,
        &[
            Flow {
                name: "pod to cluster IP",
                src: "10.0.0.2",
                dst: "172.30.0.41",
                port: 80,
                want: "10.180.0.1:80",
                masq: false,
            },
            Flow {
                name: "external to cluster IP is masqueraded",
                src: "192.168.0.100",
                dst: "172.30.0.41",
                port: 80,
                want: "10.180.0.1:80",
                masq: true,
            },
            Flow {
                name: "cluster IP, wrong port",
                src: "10.0.0.2",
                dst: "172.30.0.41",
                port: 81,
                want: "not handled",
                masq: false,
            },
            Flow {
                name: "two endpoints",
                src: "10.0.0.2",
                dst: "172.30.0.44",
                port: 80,
                want: "10.180.0.4:80, 10.180.0.5:80",
                masq: false,
            },
            Flow {
                name: "hairpin",
                src: "10.180.0.1",
                dst: "172.30.0.41",
                port: 80,
                want: "10.180.0.1:80",
                masq: true,
            },
            Flow {
                name: "external IP from outside",
                src: "192.168.0.100",
                dst: "192.168.99.33",
                port: 80,
                want: "10.180.0.4:80, 10.180.0.5:80",
                masq: true,
            },
            Flow {
                name: "node port from outside",
                src: "192.168.0.100",
                dst: "192.168.0.2",
                port: 3003,
                want: "10.180.0.3:80",
                masq: true,
            },
            Flow {
                name: "node port from the node",
                src: "192.168.0.2",
                dst: "192.168.0.2",
                port: 3003,
                want: "10.180.0.3:80",
                masq: true,
            },
            Flow {
                name: "node port on localhost",
                src: "127.0.0.1",
                dst: "127.0.0.1",
                port: 3003,
                want: "10.180.0.3:80",
                masq: true,
            },
            Flow {
                name: "no endpoints: cluster IP rejected",
                src: "10.0.0.2",
                dst: "172.30.0.46",
                port: 80,
                want: "REJECT",
                masq: false,
            },
            Flow {
                name: "LB IP from allowed source",
                src: "203.0.113.2",
                dst: "5.6.7.8",
                port: 80,
                want: "10.180.0.3:80",
                masq: true,
            },
            Flow {
                name: "LB IP from blocked source",
                src: "203.0.113.130",
                dst: "5.6.7.8",
                port: 80,
                want: "DROP",
                masq: false,
            },
            Flow {
                name: "node port bypasses source ranges",
                src: "203.0.113.130",
                dst: "192.168.0.2",
                port: 3002,
                want: "10.180.0.3:80",
                masq: true,
            },
            Flow {
                name: "eTP=Local, external client, no local endpoints",
                src: "203.0.113.2",
                dst: "1.2.3.4",
                port: 80,
                want: "DROP",
                masq: false,
            },
            Flow {
                name: "eTP=Local, pod short-circuits to all endpoints",
                src: "10.0.0.2",
                dst: "1.2.3.4",
                port: 80,
                want: "10.180.0.2:80",
                masq: false,
            },
            Flow {
                name: "eTP=Local, node is masqueraded",
                src: "192.168.0.2",
                dst: "192.168.99.22",
                port: 80,
                want: "10.180.0.2:80",
                masq: true,
            },
            Flow {
                name: "eTP=Local node port from outside",
                src: "192.168.0.100",
                dst: "192.168.0.2",
                port: 3001,
                want: "DROP",
                masq: false,
            },
            Flow {
                name: "health check node port",
                src: "192.168.0.100",
                dst: "192.168.0.2",
                port: 30000,
                want: "ACCEPT",
                masq: false,
            },
        ],
    );
}

#[test]
fn local_policies_with_local_endpoints() {
    let yaml = r"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.50
  externalTrafficPolicy: Local
  healthCheckNodePort: 30001
  ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 1.2.3.5}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: ns, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: p, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.1.0.1], nodeName: test-node}
- {addresses: [10.2.0.1], nodeName: other}
---
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: ns}
spec:
  clusterIP: 172.30.0.51
  internalTrafficPolicy: Local
  ports: [{name: p, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: itp-1, namespace: ns, labels: {kubernetes.io/service-name: itp}}
addressType: IPv4
ports: [{name: p, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.2.0.2], nodeName: other}
";
    let rules = render(&fixtures::snapshot(yaml, "test-node", &["192.168.0.2"]));
    check_jumps(&rules);
    run_flows(
        &rules,
        &[
            // External clients reach only the local endpoint, with their IP preserved.
            Flow {
                name: "LB from outside",
                src: "203.0.113.9",
                dst: "1.2.3.5",
                port: 80,
                want: "10.1.0.1:8080",
                masq: false,
            },
            Flow {
                name: "node port from outside",
                src: "203.0.113.9",
                dst: "192.168.0.2",
                port: 30080,
                want: "10.1.0.1:8080",
                masq: false,
            },
            // Pods and the node reach every endpoint.
            Flow {
                name: "pod to LB",
                src: "10.0.0.9",
                dst: "1.2.3.5",
                port: 80,
                want: "10.1.0.1:8080, 10.2.0.1:8080",
                masq: false,
            },
            Flow {
                name: "cluster IP",
                src: "10.0.0.9",
                dst: "172.30.0.50",
                port: 80,
                want: "10.1.0.1:8080, 10.2.0.1:8080",
                masq: false,
            },
            // internalTrafficPolicy Local without local endpoints: dropped.
            Flow {
                name: "iTP=Local without local endpoints",
                src: "10.0.0.9",
                dst: "172.30.0.51",
                port: 80,
                want: "DROP",
                masq: false,
            },
        ],
    );
    assert_has(
        &rules,
        "-A KUBE-SERVICES -m comment --comment \"ns/itp:p has no local endpoints\" -m tcp -p tcp -d 172.30.0.51 --dport 80 -j DROP",
    );
}

#[test]
fn nodeport_addresses_and_localhost() {
    let mut cfg = config();
    cfg.proxy.nodeport_addresses = vec!["192.168.0.0/24".parse().unwrap()];
    cfg.proxy.local_addresses = vec![ip("192.168.0.2"), ip("10.9.9.9")];
    let rules = Renderer::new(cfg, false).full(&fixtures::kube_proxy_snapshot());
    assert_has(
        &rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -d 192.168.0.2 -j KUBE-NODEPORTS",
    );
    assert!(
        !rules
            .to_restore_input()
            .contains("-d 10.9.9.9 -j KUBE-NODEPORTS")
    );
    let mut cfg = config();
    cfg.proxy.localhost_nodeports = false;
    let rules = Renderer::new(cfg, false).full(&fixtures::kube_proxy_snapshot());
    assert_has(
        &rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS",
    );
    assert!(!rules.to_restore_input().contains("KUBE-FIREWALL"));
    run_flows(
        &rules,
        &[Flow {
            name: "localhost node port refused",
            src: "127.0.0.1",
            dst: "127.0.0.1",
            port: 3003,
            want: "not handled",
            masq: false,
        }],
    );
}

#[test]
fn masquerade_all_and_no_detector() {
    let mut cfg = config();
    cfg.proxy.masquerade_all = true;
    let rules = Renderer::new(cfg, false).full(&fixtures::kube_proxy_snapshot());
    assert_has(
        &rules,
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ",
    );
    run_flows(
        &rules,
        &[Flow {
            name: "pod is masqueraded",
            src: "10.0.0.2",
            dst: "172.30.0.41",
            port: 80,
            want: "10.180.0.1:80",
            masq: true,
        }],
    );
    let mut cfg = config();
    cfg.proxy.cluster_cidrs.clear();
    let rules = Renderer::new(cfg, false).full(&fixtures::kube_proxy_snapshot());
    assert!(
        !rules
            .to_restore_input()
            .contains("-j KUBE-MARK-MASQ\n-A KUBE-SVC-XPGD")
    );
    run_flows(
        &rules,
        &[Flow {
            name: "no detector: external not masqueraded",
            src: "192.168.0.100",
            dst: "172.30.0.41",
            port: 80,
            want: "10.180.0.1:80",
            masq: false,
        }],
    );
}

/// `--detect-local-mode`: every mode's match lands where kube-proxy puts the detector
/// (`IfNotLocal` on the cluster-IP masquerade rule, `IfLocal` on the pod short-circuit of
/// an `externalTrafficPolicy: Local` Service), and the tracer follows it.
#[test]
fn local_traffic_detection_modes() {
    let node = "192.168.0.2";
    let node_info = service_core::snapshot::NodeInfo::new("test-node", vec![ip(node)])
        .with_pod_cidrs(vec!["10.0.1.0/24".parse().unwrap()]);
    let snap = fixtures::cluster(fixtures::KUBE_PROXY_CLUSTER)
        .snapshot(node_info)
        .unwrap();
    let masq = "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80";
    let pods = "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"pod traffic for ns2/svc2:p80 external destinations\"";
    let cases: [(DetectLocal, &str, &str); 4] = [
        (DetectLocal::ClusterCidr, "! -s 10.0.0.0/8", "-s 10.0.0.0/8"),
        (DetectLocal::NodeCidr, "! -s 10.0.1.0/24", "-s 10.0.1.0/24"),
        (
            DetectLocal::BridgeInterface("cbr0".into()),
            "! -i cbr0",
            "-i cbr0",
        ),
        (
            DetectLocal::InterfaceNamePrefix("veth".into()),
            "! -i veth+",
            "-i veth+",
        ),
    ];
    for (mode, not_local, local) in cases {
        let mut cfg = config();
        cfg.proxy.detect_local = mode.clone();
        let rules = Renderer::new(cfg, false).full(&snap);
        assert_has(&rules, &format!("{masq} {not_local} -j KUBE-MARK-MASQ"));
        assert_has(
            &rules,
            &format!("{pods} {local} -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
        );
        // The restore input parses back into the same matches.
        let tracer = Tracer::new(&rules, &[ip(node)]).unwrap();
        let masqueraded = |src: &str, iif: &str| {
            let p = Packet::new(ip(src), ip("172.30.0.41"), 80, Protocol::Tcp).on_interface(iif);
            let v = tracer.trace(&p);
            assert_eq!(v.endpoints().len(), 1, "{mode:?} {src} on {iif:?}: {v}");
            v.masquerade()
        };
        let (pod_if, other_if) = match &mode {
            DetectLocal::BridgeInterface(_) => ("cbr0", "cbr1"),
            _ => ("veth12ab", "eth0"),
        };
        // A pod of this node, on its interface: not masqueraded in every mode.
        assert!(!masqueraded("10.0.1.5", pod_if), "{mode:?}");
        // Traffic from outside, on the uplink: masqueraded in every mode.
        assert!(masqueraded("192.168.0.100", "eth0"), "{mode:?}");
        // The node's own packets have no input interface.
        assert!(masqueraded(node, ""), "{mode:?}");
        // A pod of another node: local to the cluster CIDR, not to this node's CIDR;
        // an interface detector only sees where the packet came in.
        let other_node_pod = masqueraded("10.0.2.5", other_if);
        let want = !matches!(mode, DetectLocal::ClusterCidr);
        assert_eq!(other_node_pod, want, "{mode:?}");
    }
}

/// kube-proxy's nfacct counters (1.30+): the INVALID drop and a localhost copy of each
/// node-port rule count into them, only when they exist, and only IPv4 has the localhost
/// rule (`pkg/proxy/iptables/proxier.go`).
#[test]
fn nfacct_counting_rules() {
    let snap = fixtures::kube_proxy_snapshot();
    let mut cfg = config();
    let plain = Renderer::new(cfg.clone(), false)
        .full(&snap)
        .to_restore_input();
    assert!(!plain.contains("nfacct"));
    assert!(plain.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"));
    cfg.count_invalid_drops = true;
    cfg.count_localhost_nodeports = true;
    let rules = Renderer::new(cfg.clone(), false).full(&snap);
    assert_has(
        &rules,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
    );
    assert_has(
        &rules,
        "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-GNZBNJ2PO5MGZ6GT",
    );
    // The counting rule comes right before the node port's own.
    let all = lines(&rules);
    let at = all
        .iter()
        .position(|l| l.contains("--dport 3001 -m nfacct"))
        .unwrap();
    assert_eq!(
        all[at + 1],
        "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    );
    // The tracer reads the rules back: localhost still reaches the node port.
    run_flows(
        &rules,
        &[Flow {
            name: "node port on localhost, counted",
            src: "127.0.0.1",
            dst: "127.0.0.1",
            port: 3003,
            want: "10.180.0.3:80",
            masq: true,
        }],
    );
    // No localhost node ports, or IPv6: no counting copy.
    cfg.proxy.localhost_nodeports = false;
    let rules = Renderer::new(cfg.clone(), false)
        .full(&snap)
        .to_restore_input();
    assert!(!rules.contains("localhost_nps_accepted_pkts"));
    cfg.proxy.localhost_nodeports = true;
    let rules = Renderer::new(cfg, true).full(&snap).to_restore_input();
    assert!(!rules.contains("localhost_nps_accepted_pkts"));
}

#[test]
fn ipv6_rules() {
    let yaml = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  clusterIP: 172.30.0.10
  clusterIPs: [172.30.0.10, fd00:30::10]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  type: NodePort
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ['fd00:10::5'], nodeName: test-node}]
";
    let snap = fixtures::snapshot(yaml, "test-node", &["192.168.0.2", "fd00::2"]);
    let mut cfg = config();
    cfg.proxy
        .cluster_cidrs
        .push("fd00:10::/64".parse().unwrap());
    let v6 = Renderer::new(cfg.clone(), true).full(&snap);
    check_jumps(&v6);
    let text = v6.to_restore_input();
    assert!(text.contains("-d fd00:30::10 --dport 80"), "{text}");
    assert!(
        text.contains("-j DNAT --to-destination [fd00:10::5]:8080"),
        "{text}"
    );
    assert!(
        text.contains("! -s fd00:10::/64 -j KUBE-MARK-MASQ"),
        "{text}"
    );
    assert!(
        text.contains("-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"),
        "{text}"
    );
    assert!(!text.contains("KUBE-FIREWALL"));
    assert!(!text.contains("172.30.0.10"));
    let v = v6.trace(
        &Packet::new(ip("fd00:10::9"), ip("fd00:30::10"), 80, Protocol::Tcp),
        &[ip("fd00::2")],
    );
    assert_eq!(
        v.unwrap().endpoints(),
        vec!["[fd00:10::5]:8080".parse().unwrap()]
    );
    // The IPv4 side has no endpoints for this port: rejected.
    let v4 = Renderer::new(cfg, false).full(&snap);
    assert!(v4.to_restore_input().contains(
        "\"ns/web:http has no endpoints\" -m tcp -p tcp -d 172.30.0.10 --dport 80 -j REJECT"
    ));
}

/// kube-proxy's test cluster as `test-node` sees it, then as it sees `yaml` instead, and the
/// service ports that differ.
fn change_to(yaml: &str) -> (Snapshot, Snapshot, Vec<ServicePortName>) {
    let before = fixtures::snapshot(fixtures::KUBE_PROXY_CLUSTER, "test-node", &["192.168.0.2"]);
    let cluster = fixtures::cluster(yaml);
    let after = before
        .rebuild(
            before.node.as_ref().clone(),
            &cluster.services,
            &cluster.endpoint_slices,
            &[],
        )
        .unwrap();
    let changed = after
        .diff(&before)
        .ports
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    (before, after, changed)
}

/// The line of kube-proxy's test cluster that gives svc4 its endpoint on other-node.
const SVC4_REMOTE_ENDPOINT: &str =
    "- addresses: [10.180.0.5]\n  conditions: {ready: true}\n  nodeName: other-node\n";

#[test]
fn partial_render_rewrites_only_changed_ports() {
    // svc4 loses an endpoint, svc1 is deleted.
    let (before, after, changed) = change_to(
        &fixtures::KUBE_PROXY_CLUSTER
            .replace(SVC4_REMOTE_ENDPOINT, "")
            .replace(
                "metadata: {name: svc1, namespace: ns1}",
                "metadata: {name: svc1gone, namespace: ns1}",
            ),
    );
    let mut r = Renderer::new(config(), false);
    r.full(&before);
    let names: Vec<String> = changed.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "ns1/svc1:p80/TCP",
            "ns1/svc1gone:p80/TCP",
            "ns4/svc4:p80/TCP"
        ]
    );
    let partial = r.partial(&after, &changed);
    assert!(!partial.full);
    let text = partial.to_restore_input();
    // Top-level chains are complete.
    assert!(text.contains("\"ns5/svc5:p80 loadbalancer IP\" -m tcp -p tcp -d 5.6.7.8"));
    // Unchanged services' own chains are not rewritten.
    assert!(!text.contains(":KUBE-SVC-NUKIZ6OKUXPJNT4C"));
    assert!(!text.contains("-A KUBE-SEP-I77PXRDZVX7PMWMN"));
    // The changed service is rewritten; its gone endpoint and the deleted service's chains
    // are flushed and deleted.
    assert!(text.contains(":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]"));
    assert!(text.contains("-X KUBE-SEP-C6EBXVWJJZMIWKLZ"));
    assert!(text.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O"));
    assert!(text.contains("-X KUBE-SEP-SXIVWICOYRO3J4NJ"));
    assert!(!text.contains("-X KUBE-SEP-UKSFD7AGPMPPLUHC"));
    // What the renderer now remembers equals a fresh full render of the new snapshot.
    let fresh = Renderer::new(config(), false).full(&after);
    let mut again = r;
    assert_eq!(
        again.full(&after).to_restore_input(),
        fresh.to_restore_input()
    );
}

/// An endpoint change leaves the top-level chains alone: the restore names only the
/// changed port's own chains (`--noflush` keeps the rest), so its size does not grow with
/// the cluster. kube-proxy rewrites KUBE-SERVICES on every sync; the kernel ends up the
/// same either way (the partial-sync property test checks it against full renders).
#[test]
fn an_endpoint_change_leaves_the_top_level_chains_out() {
    let (before, after, changed) =
        change_to(&fixtures::KUBE_PROXY_CLUSTER.replace(SVC4_REMOTE_ENDPOINT, ""));
    let mut r = Renderer::new(config(), false);
    r.full(&before);
    assert_eq!(changed.len(), 1);
    let text = r.partial(&after, &changed).to_restore_input();
    assert!(!text.contains("KUBE-SERVICES"), "{text}");
    assert!(!text.contains("KUBE-NODEPORTS"), "{text}");
    assert!(
        text.contains(":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]"),
        "{text}"
    );
    assert!(text.contains("-X KUBE-SEP-C6EBXVWJJZMIWKLZ"), "{text}");
    // (A Service coming or going rewrites the top level whole:
    // `partial_render_rewrites_only_changed_ports`.)
    let fresh = Renderer::new(config(), false).full(&after);
    let mut again = r;
    assert_eq!(
        again.full(&after).to_restore_input(),
        fresh.to_restore_input()
    );
}

#[test]
fn jump_rule_text() {
    let rules = jump_rules(false, true);
    let args: Vec<String> = rules.iter().map(JumpRule::args).collect();
    assert!(args.contains(&"-m comment --comment \"kubernetes service portals\" -m conntrack --ctstate NEW -j KUBE-SERVICES".to_string()));
    assert!(args.contains(&"-j KUBE-FIREWALL".to_string()));
    assert_eq!(jump_rules(true, true).len(), rules.len() - 2);
}

mod roundtrip {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::model::Probabilities;
    use super::super::*;

    fn chain() -> impl Strategy<Value = ChainName> {
        prop_oneof![
            proptest::sample::select(vec![
                FixedChain::KubeServices,
                FixedChain::KubeNodePorts,
                FixedChain::KubeMarkMasq,
                FixedChain::KubeFirewall,
                FixedChain::Input,
            ])
            .prop_map(ChainName::Fixed),
            (
                proptest::sample::select(vec![
                    ServiceChain::Svc,
                    ServiceChain::Svl,
                    ServiceChain::Ext,
                    ServiceChain::Fw,
                    ServiceChain::Sep
                ]),
                "[A-Z2-7]{16}",
            )
                .prop_map(|(k, h)| ChainName::Service(k, h.as_bytes().try_into().unwrap())),
        ]
    }

    fn addr() -> impl Strategy<Value = Addr> {
        prop_oneof![
            any::<std::net::IpAddr>().prop_map(Addr::Ip),
            (any::<std::net::Ipv4Addr>(), 0u8..=32)
                .prop_map(|(ip, l)| Addr::Net(ipnet::Ipv4Net::new(ip, l).unwrap().trunc().into())),
            (any::<std::net::Ipv6Addr>(), 0u8..=128)
                .prop_map(|(ip, l)| Addr::Net(ipnet::Ipv6Net::new(ip, l).unwrap().trunc().into())),
        ]
    }

    fn matcher() -> impl Strategy<Value = Match> {
        prop_oneof![
            proptest::sample::select(vec![L4::Tcp, L4::Udp, L4::Sctp]).prop_map(Match::Protocol),
            (addr(), any::<bool>()).prop_map(|(a, n)| Match::Source(a, n)),
            ("[a-z][a-z0-9.-]{0,13}\\+?", any::<bool>())
                .prop_map(|(i, n)| Match::InInterface(i.as_str().into(), n)),
            "[a-z_]{1,31}".prop_map(|n| Match::Nfacct(n.as_str().into())),
            (addr(), any::<bool>()).prop_map(|(a, n)| Match::Destination(a, n)),
            any::<u16>().prop_map(Match::DestPort),
            Just(Match::SrcTypeLocal),
            Just(Match::DstTypeLocal),
            (2u32..20000).prop_map(Match::Probability),
            (chain(), any::<u32>()).prop_map(|(c, s)| Match::RecentCheck(c, s)),
            chain().prop_map(Match::RecentSet),
            (any::<u32>(), any::<bool>()).prop_map(|(m, n)| Match::Mark(m, n)),
            (
                proptest::sample::select(vec![
                    CtState::New,
                    CtState::Invalid,
                    CtState::RelatedEstablished,
                    CtState::RelatedEstablishedDnat
                ]),
                any::<bool>(),
            )
                .prop_map(|(s, n)| Match::CtState(s, n)),
        ]
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            chain().prop_map(Target::Jump),
            Just(Target::Accept),
            Just(Target::Drop),
            Just(Target::Reject),
            Just(Target::Return),
            any::<SocketAddr>().prop_map(|sa| Target::Dnat(match sa {
                SocketAddr::V6(v6) => SocketAddr::new(std::net::IpAddr::V6(*v6.ip()), v6.port()),
                v4 => v4,
            })),
            any::<u32>().prop_map(Target::MarkOr),
            any::<u32>().prop_map(Target::MarkXor),
            any::<bool>().prop_map(Target::Masquerade),
        ]
    }

    fn comment() -> impl Strategy<Value = Comment> {
        let svc = "[a-z0-9-]{1,10}/[a-z0-9-]{1,10}(:[a-z0-9-]{1,8})?"
            .prop_map(|s| Arc::<str>::from(s.as_str()));
        prop_oneof![
            Just(Comment::Static("kubernetes forwarding rules")),
            (
                svc.clone(),
                proptest::sample::select(vec![
                    Phrase::Bare,
                    Phrase::ClusterIp,
                    Phrase::ExternalIp,
                    Phrase::LoadBalancerIp,
                    Phrase::NoEndpoints,
                    Phrase::NoLocalEndpoints,
                    Phrase::HealthCheck,
                    Phrase::MasqueradeExternal,
                    Phrase::PodExternal,
                    Phrase::MasqueradeLocalExternal,
                    Phrase::RouteLocalExternal,
                    Phrase::OtherTrafficDropped,
                ])
            )
                .prop_map(|(s, p)| Comment::Service(s, p)),
            (svc.clone(), any::<std::net::SocketAddrV4>())
                .prop_map(|(s, sa)| Comment::Endpoint(s, SocketAddr::V4(sa))),
            (svc, chain()).prop_map(|(s, c)| Comment::NotAcceptedBy(s, c)),
        ]
    }

    proptest! {
        #[test]
        fn parse_of_write_is_identity(
            c in chain(),
            comment in proptest::option::of(comment()),
            matches in proptest::collection::vec(matcher(), 0..4),
            target in proptest::option::of(target()),
        ) {
            let rule = Rule { comment, matches: matches.into_iter().collect(), target };
            let mut text = Vec::new();
            rule.write(&c, &mut Probabilities::default(), &mut text);
            let text = String::from_utf8(text).unwrap();
            let (pc, parsed) = parse_rule(text.trim_end()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(pc, c);
            prop_assert_eq!(parsed, rule);
        }
    }
}

mod fast_paths {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::model::{Probabilities, SegmentBuilder};
    use super::super::*;

    fn sep() -> impl Strategy<Value = ChainName> {
        "[A-Z2-7]{16}"
            .prop_map(|h| ChainName::Service(ServiceChain::Sep, h.as_bytes().try_into().unwrap()))
    }

    fn comment() -> impl Strategy<Value = Option<Comment>> {
        proptest::option::of(prop_oneof![
            (
                "[a-z]{1,5}/[a-z]{1,5}:[a-z]{1,3}",
                any::<std::net::SocketAddrV4>()
            )
                .prop_map(|(s, a)| Comment::Endpoint(Arc::from(s.as_str()), SocketAddr::V4(a))),
            "[a-z]{1,5}/[a-z]{1,5}"
                .prop_map(|s| Comment::Service(Arc::from(s.as_str()), Phrase::Bare)),
        ])
    }

    fn text(b: SegmentBuilder) -> String {
        b.finish().text().into_owned()
    }

    proptest! {
        /// The per-endpoint writers produce exactly what `Rule::write` produces.
        #[test]
        fn fast_paths_match_rule_write(
            chain in sep(), target in sep(), c in comment(), n in proptest::option::of(2u32..500),
            ip in any::<IpAddr>(), port in any::<u16>(), set in any::<bool>(),
            proto in proptest::sample::select(vec![L4::Tcp, L4::Udp, L4::Sctp]),
        ) {
            let mut p = Probabilities::default();
            let mut fast = SegmentBuilder::default();
            fast.push_dispatch(chain, c.as_ref(), n, target, &mut p);
            fast.push_hairpin(chain, c.as_ref(), ip);
            fast.push_dnat(chain, c.as_ref(), set, proto, SocketAddr::new(ip, port));
            let mut slow = SegmentBuilder::default();
            let mut dispatch = Rule::to(Target::Jump(target));
            dispatch.comment = c.clone();
            if let Some(n) = n {
                dispatch.matches.push(Match::Probability(n));
            }
            slow.push(chain, dispatch, &mut p);
            let mut hairpin = Rule::to(Target::Jump(ChainName::Fixed(FixedChain::KubeMarkMasq)))
                .when(Match::Source(Addr::Ip(ip), false));
            hairpin.comment = c.clone();
            slow.push(chain, hairpin, &mut p);
            let mut dnat = Rule::to(Target::Dnat(SocketAddr::new(ip, port)));
            dnat.comment = c;
            if set {
                dnat.matches.push(Match::RecentSet(chain));
            }
            dnat.matches.push(Match::Protocol(proto));
            slow.push(chain, dnat, &mut p);
            prop_assert_eq!(text(fast), text(slow));
        }
    }
}
