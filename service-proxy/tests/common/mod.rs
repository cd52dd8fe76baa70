//! Shared by the kernel end-to-end tests of every backend: the cluster, the namespaces
//! (node, client, pods), the connection check that compares the kernel with a backend's
//! tracer, and the flow table every backend must pass.
#![allow(dead_code, unreachable_pub)]

pub mod contract;
pub mod generated;
pub mod nft;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use service_core::cluster::Cluster;
use service_core::model::Protocol;
use service_core::snapshot::{NodeInfo, Snapshot};
use service_proxy::DetectLocal;
use service_proxy::trace::{Packet, Verdict};
use service_testkit::fixtures;
use service_testkit::netns::{Netns, Reached, Topology, tcp_connect};

/// A backend's tracer for the rules the kernel holds.
pub type Tracer<'a> = &'a dyn Fn(&Packet) -> Verdict;

/// The node's address, as the rules and tracers see it.
pub const NODE_IP: &str = "192.168.0.2";

pub const CLUSTER: &str = r"
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
metadata: {name: draining, namespace: e2e}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.18
  externalTrafficPolicy: Local
  healthCheckNodePort: 30101
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30083}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.12}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: draining-1, namespace: e2e, labels: {kubernetes.io/service-name: draining}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: proxied, namespace: e2e}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.19
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30084}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.13, ipMode: Proxy}, {ip: 198.51.100.14, ipMode: VIP}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: proxied-1, namespace: e2e, labels: {kubernetes.io/service-name: proxied}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: samenode, namespace: e2e}
spec:
  clusterIP: 10.96.0.22
  trafficDistribution: PreferSameNode
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: samenode-1, namespace: e2e, labels: {kubernetes.io/service-name: samenode}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a, zone: zone-a, hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a}]}}
- {addresses: [10.244.2.12], nodeName: node-b, zone: zone-b, hints: {forZones: [{name: zone-b}], forNodes: [{name: node-b}]}}
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

/// A Service (`e2e/echo`, 10.96.0.20:7) on these endpoints of `node-a`, port 9090: for
/// servers that keep connections open (line echo).
pub fn echo(endpoints: &[&str]) -> String {
    let mut yaml = String::from(
        "
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: e2e}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: echo, port: 7, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: e2e, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: echo, port: 9090, protocol: TCP}]
endpoints:
",
    );
    for ip in endpoints {
        yaml.push_str(&format!("- {{addresses: [{ip}], nodeName: node-a}}\n"));
    }
    yaml
}

pub const TIMEOUT: Duration = Duration::from_millis(700);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// [`snapshot_of`] for a node with pod CIDRs (`spec.podCIDRs`).
pub fn snapshot_with_pod_cidrs(yaml: &str, pod_cidrs: &[&str]) -> Snapshot {
    let c: Cluster = fixtures::cluster(yaml);
    let node = NodeInfo::new("node-a", vec![ip("192.168.0.2")])
        .with_pod_cidrs(pod_cidrs.iter().map(|c| c.parse().unwrap()).collect());
    c.snapshot(node).unwrap()
}

pub fn snapshot_of(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
    let c: Cluster = fixtures::cluster(yaml);
    let node = NodeInfo::new("node-a", vec![ip("192.168.0.2")]);
    match prev {
        Some(p) => p
            .rebuild(node, &c.services, &c.endpoint_slices, &[])
            .unwrap(),
        None => c.snapshot(node).unwrap(),
    }
}

pub struct Env {
    pub topo: Topology,
    pub client_pod: usize,
}

impl Env {
    pub fn new() -> Self {
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

    pub fn name_of(&self, addr: &SocketAddr) -> String {
        self.topo
            .pods
            .iter()
            .find(|p| p.ip == addr.ip())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| addr.to_string())
    }

    pub fn netns(&self, from: From) -> &Netns {
        match from {
            From::Client | From::ClientAs(_) => &self.topo.client,
            From::Node | From::NodeLoopback => &self.topo.node,
            From::Pod(name) => &self.topo.pod(name).ns,
            From::ClientPod => &self.topo.pods[self.client_pod].ns,
        }
    }

    /// The interface a connection from `from` enters the node on: the client's link, a
    /// pod's veth (`vpN`), none for the node's own.
    pub fn in_interface(&self, from: From) -> String {
        let pod = |name: &str| {
            let i = self
                .topo
                .pods
                .iter()
                .position(|p| p.name == name)
                .unwrap_or_else(|| panic!("no pod {name}"));
            format!("vp{i}")
        };
        match from {
            From::Client | From::ClientAs(_) => "eth0".into(),
            From::Node | From::NodeLoopback => String::new(),
            From::Pod(name) => pod(name),
            From::ClientPod => format!("vp{}", self.client_pod),
        }
    }

    /// The first packet of a TCP connection from `from` to `dst`, as the node sees it.
    pub fn packet(&self, from: From, dst: SocketAddr) -> Packet {
        Packet::new(self.source_ip(from), dst.ip(), dst.port(), Protocol::Tcp)
            .on_interface(&self.in_interface(from))
    }

    pub fn source_ip(&self, from: From) -> IpAddr {
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
pub enum From {
    Client,
    ClientAs(&'static str),
    Node,
    NodeLoopback,
    Pod(&'static str),
    ClientPod,
}

/// Connects `tries` times and checks the kernel against the tracer's verdict.
pub fn check(
    env: &Env,
    trace: Tracer<'_>,
    from: From,
    dst: &str,
    tries: usize,
) -> BTreeSet<String> {
    let dst = sa(dst);
    let src = env.source_ip(from);
    let verdict = trace(&env.packet(from, dst));
    let bind = match from {
        From::ClientAs(s) => Some(ip(s)),
        _ => None,
    };
    let mut seen = BTreeSet::new();
    // Inside User-Mode Linux every syscall is slow: wait longer there.
    let timeout = if service_testkit::uml::inside() {
        Duration::from_secs(3)
    } else {
        TIMEOUT
    };
    for _ in 0..tries {
        let got = tcp_connect(env.netns(from), bind, dst, timeout);
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

pub fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub fn save_all(node: &Netns, save: &str) -> String {
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

/// The backends the flow table distinguishes where their behaviour differs by design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// kube-proxy's iptables mode.
    Iptables,
    /// kube-proxy's nftables mode.
    Nftables,
    /// kube-proxy's IPVS mode.
    Ipvs,
}

/// What a flow must end in.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Spread over exactly these pods.
    Reach(&'static [&'static str]),
    /// Stuck to a single pod.
    OnePod,
    /// Connection refused.
    Refused,
    /// Dropped.
    Timeout,
    /// Not handled by the proxy (the tracer says so and no pod answers).
    NotHandled,
}

/// One row of the flow table.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// What the row shows.
    pub what: &'static str,
    /// Where the connection starts.
    pub from: From,
    /// Where it goes.
    pub dst: &'static str,
    /// How many connections to open.
    pub tries: usize,
    /// The outcome.
    pub expect: Expect,
}

/// The flow table of [`CLUSTER`], for a backend.
pub fn flows(backend: Backend) -> Vec<Flow> {
    use Expect::*;
    let nft = backend == Backend::Nftables;
    let ipvs = backend == Backend::Ipvs;
    let f = |what, from, dst, tries, expect| Flow {
        what,
        from,
        dst,
        tries,
        expect,
    };
    vec![
        f(
            "ClusterIP from a pod spreads over every endpoint",
            From::ClientPod,
            "10.96.0.10:80",
            40,
            Reach(&["web-0", "web-1", "web-2"]),
        ),
        f(
            "ClusterIP from outside the cluster",
            From::Client,
            "10.96.0.10:80",
            40,
            Reach(&["web-0", "web-1", "web-2"]),
        ),
        // kube-proxy's nftables mode rejects ports a ClusterIP does not serve, and so does
        // IPVS mode (KUBE-IPVS-FILTER, kubernetes#72236); iptables mode lets them through
        // unhandled.
        f(
            "a port the Service does not have",
            From::ClientPod,
            "10.96.0.10:81",
            1,
            if nft || ipvs { Refused } else { NotHandled },
        ),
        f(
            "ClientIP affinity sticks",
            From::ClientPod,
            "10.96.0.11:80",
            20,
            OnePod,
        ),
        f(
            "NodePort from outside",
            From::Client,
            "192.168.0.2:30080",
            30,
            Reach(&["web-0", "web-2"]),
        ),
        f(
            "NodePort from the node",
            From::Node,
            "192.168.0.2:30080",
            30,
            Reach(&["web-0", "web-2"]),
        ),
        // nftables mode never accepts node ports on localhost (no route_localnet); IPVS
        // mode has no virtual server there.
        f(
            "NodePort on localhost",
            From::NodeLoopback,
            "127.0.0.1:30080",
            30,
            if nft || ipvs {
                NotHandled
            } else {
                Reach(&["web-0", "web-2"])
            },
        ),
        f(
            "load-balancer source range allows",
            From::ClientAs("203.0.113.2"),
            "198.51.100.10:80",
            3,
            Reach(&["web-1"]),
        ),
        f(
            "load-balancer source range blocks",
            From::ClientAs("203.0.113.130"),
            "198.51.100.10:80",
            1,
            Timeout,
        ),
        f(
            "node ports bypass source ranges",
            From::ClientAs("203.0.113.130"),
            "192.168.0.2:30081",
            3,
            Reach(&["web-1"]),
        ),
        f(
            "external IP",
            From::Client,
            "192.0.2.10:80",
            3,
            Reach(&["web-2"]),
        ),
        f(
            "externalTrafficPolicy Local keeps the client address",
            From::ClientAs("203.0.113.2"),
            "198.51.100.11:80",
            20,
            Reach(&["web-0"]),
        ),
        f(
            "externalTrafficPolicy Local on the node port",
            From::Client,
            "192.168.0.2:30082",
            20,
            Reach(&["web-0"]),
        ),
        // IPVS mode has one virtual server per load-balancer IP, with the local endpoints
        // for everyone: pods get no short-circuit to the cluster's endpoints
        // (pkg/proxy/ipvs/proxier.go syncs it with the external policy's endpoints).
        f(
            "pods short-circuit Local policy to every endpoint",
            From::ClientPod,
            "198.51.100.11:80",
            30,
            if ipvs {
                Reach(&["web-0"])
            } else {
                Reach(&["web-0", "web-2"])
            },
        ),
        // A rolling update on a Local-policy load balancer: this node's only endpoint is
        // terminating but still serving, so external traffic keeps reaching it rather
        // than being dropped while the load balancer's health checks catch up
        // (ProxyTerminatingEndpoints, GA in 1.28: `CategorizeEndpoints` in
        // pkg/proxy/topology.go falls back to serving terminating endpoints).
        f(
            "Local policy: a terminating but serving local endpoint still takes load-balancer traffic",
            From::Client,
            "198.51.100.12:80",
            10,
            Reach(&["web-1"]),
        ),
        f(
            "Local policy: the same on the node port",
            From::Client,
            "192.168.0.2:30083",
            10,
            Reach(&["web-1"]),
        ),
        // The fallback is per traffic class: cluster traffic has a ready endpoint, so the
        // terminating one gets none of it.
        f(
            "the ClusterIP skips a terminating endpoint while a ready one exists",
            From::ClientPod,
            "10.96.0.18:80",
            20,
            Reach(&["web-2"]),
        ),
        // `ipMode: Proxy` (LoadBalancerIPMode, GA in 1.32): the load balancer delivers to
        // the node ports itself, so nodes must not capture its address; a `VIP` address
        // of the same Service still is.
        f(
            "ipMode Proxy: the load balancer's address is left alone",
            From::Client,
            "198.51.100.13:80",
            1,
            NotHandled,
        ),
        f(
            "ipMode VIP on the same Service is captured",
            From::Client,
            "198.51.100.14:80",
            5,
            Reach(&["web-2"]),
        ),
        // trafficDistribution PreferSameNode (1.33): the EndpointSlice controller gives
        // each endpoint a hint for its own node, and a proxy whose node has a hinted
        // endpoint uses those only (`topologyModeFromHints` in pkg/proxy/topology.go;
        // node hints need no zone label on the node, zone hints would).
        f(
            "PreferSameNode: only this node's endpoint",
            From::ClientPod,
            "10.96.0.22:80",
            20,
            Reach(&["web-0"]),
        ),
        f(
            "hairpin: a pod reaching itself is masqueraded",
            From::Pod("web-0"),
            "10.96.0.16:80",
            3,
            Reach(&["web-0"]),
        ),
        f(
            "no endpoints: refused",
            From::ClientPod,
            "10.96.0.17:80",
            1,
            Refused,
        ),
    ]
}

/// Runs every flow of the table against the kernel, comparing with the tracer too.
pub fn run_flows(env: &Env, trace: Tracer<'_>, backend: Backend) {
    for flow in flows(backend) {
        let seen = check(env, trace, flow.from, flow.dst, flow.tries);
        let ok = match flow.expect {
            Expect::Reach(pods) => seen == names(pods),
            Expect::OnePod => {
                seen.len() == 1 && !seen.iter().any(|s| s == "Refused" || s == "Timeout")
            }
            Expect::Refused => seen == names(&["Refused"]),
            Expect::Timeout => seen == names(&["Timeout"]),
            Expect::NotHandled => seen == names(&["not handled"]),
        };
        assert!(
            ok,
            "{backend:?}: {} ({:?} -> {}): saw {seen:?}, expected {:?}",
            flow.what, flow.from, flow.dst, flow.expect
        );
    }
}

/// This node's pod CIDR in [`local_traffic_cases`]: the client pod and web-0/web-1 are in
/// it, web-2 (10.244.2.12) stands for a pod of another node (it is declared on node-b).
pub const NODE_POD_CIDR: &str = "10.244.1.0/24";

/// One `--detect-local-mode` of the kernel tests, and connections to the `web` ClusterIP
/// with whether the endpoint must see them masqueraded (from the node's address).
pub struct LocalTrafficCase {
    pub mode: DetectLocal,
    pub flows: Vec<(From, bool)>,
}

/// Every local-traffic detection mode, with flows that tell it from the others: the
/// address-based modes by the source, the interface-based ones by the veth a pod's
/// packets come in on (`vpN` here, as `cali*` or `veth*` on a real node).
pub fn local_traffic_cases() -> Vec<LocalTrafficCase> {
    let case = |mode, flows| LocalTrafficCase { mode, flows };
    vec![
        case(
            DetectLocal::NodeCidr,
            vec![
                (From::ClientPod, false),
                (From::Pod("web-2"), true),
                (From::Client, true),
                (From::Node, true),
            ],
        ),
        // The client pod's veth is `vp3`: only it is "the bridge".
        // (Not web-2 from here on: it is declared on node-b, so IPVS mode has no hairpin
        // entry for it, and reaching itself unmasqueraded would fail.)
        case(
            DetectLocal::BridgeInterface("vp3".into()),
            vec![
                (From::ClientPod, false),
                (From::Pod("web-0"), true),
                (From::Client, true),
                (From::Node, true),
            ],
        ),
        case(
            DetectLocal::InterfaceNamePrefix("vp".into()),
            vec![
                (From::ClientPod, false),
                (From::Pod("web-0"), false),
                (From::Client, true),
                (From::Node, true),
            ],
        ),
    ]
}

/// Runs a [`LocalTrafficCase`] against the kernel: the tracer must predict the expected
/// masquerade for every flow, and the endpoints must see what the tracer predicts. Pods
/// also short-circuit an `externalTrafficPolicy: Local` load balancer to every endpoint
/// where the backend has that rule (not IPVS).
pub fn run_local_traffic_case(
    env: &Env,
    trace: Tracer<'_>,
    case: &LocalTrafficCase,
    backend: Backend,
) {
    assert_eq!(
        env.in_interface(From::ClientPod),
        "vp3",
        "the topology changed"
    );
    for (from, masq) in &case.flows {
        let dst = sa("10.96.0.10:80");
        let packet = env.packet(*from, dst);
        let verdict = trace(&packet);
        // A pod reaching itself is always masqueraded (hairpin): look at the others.
        let ok = match &verdict {
            Verdict::Endpoints(dests) => dests
                .iter()
                .filter(|d| d.endpoint.ip() != packet.src)
                .all(|d| d.masquerade == *masq),
            _ => false,
        };
        assert!(
            ok,
            "{:?}: {from:?} -> {dst}: tracer said {verdict}, expected masquerade {masq}",
            case.mode
        );
        let seen = check(env, trace, *from, "10.96.0.10:80", 20);
        assert!(
            seen.iter().all(|s| s.starts_with("web-")),
            "{:?}: {from:?}: {seen:?}",
            case.mode
        );
    }
    let expect = if backend == Backend::Ipvs {
        names(&["web-0"])
    } else {
        names(&["web-0", "web-2"])
    };
    assert_eq!(
        check(env, trace, From::ClientPod, "198.51.100.11:80", 30),
        expect,
        "{:?}: a local pod to a Local-policy load balancer",
        case.mode
    );
    // From outside, the same load balancer keeps to this node's endpoint.
    assert_eq!(
        check(env, trace, From::Client, "198.51.100.11:80", 10),
        names(&["web-0"]),
        "{:?}: a client to a Local-policy load balancer",
        case.mode
    );
}
