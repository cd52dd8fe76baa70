//! Kernel end-to-end test of the IPVS backend. The host kernel has no IPVS, so the test
//! boots User-Mode Linux (Debian's `user-mode-linux`, see
//! `../shared/reference/uml-ipvs-recipe.md`) and runs `ipvs_in_uml` inside it: the same
//! node, client and pod namespaces as the other backends' tests, our `IpvsProxier`
//! applying snapshots there (IPVS over generic netlink, `kube-ipvs0` over rtnetlink,
//! ipsets, iptables-legacy rules), and real TCP through the virtual servers.
//!
//! Needs root and UML; skips with a message otherwise (fails with `SERVICE_E2E=require`).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{
    Backend, CLUSTER, Env, NODE_POD_CIDR, echo, local_traffic_cases, names, run_flows,
    run_local_traffic_case, sa, snapshot_of, snapshot_with_pod_cidrs,
};
use service_proxy::conntrack::Conntrack;
use service_proxy::iptables::IptablesConfig;
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::ipvs::{
    DUMMY_DEVICE, FLAG_PERSISTENT, IpvsChange, IpvsConfig, IpvsError, IpvsPlan, IpvsProtocol,
    IpvsProxier, Scheduler,
};
use service_proxy::{Proxier, ProxyConfig};
use service_testkit::netns::{
    E2e, Netns, Reached, UdpClient, sctp_connect, serve_lines, serve_sctp, tcp_connect,
};
use service_testkit::uml;

/// Enough for a connection through UML, where every syscall is slow.
const WAIT: Duration = Duration::from_secs(5);

/// An IPv6 Service for the second proxier.
const V6: &str = "
apiVersion: v1
kind: Service
metadata: {name: web6, namespace: e2e}
spec:
  ipFamilies: [IPv6]
  clusterIP: fd00:10:96::10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web6-1, namespace: e2e, labels: {kubernetes.io/service-name: web6}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['fd00:10:244::10'], nodeName: node-a}
";

#[test]
fn ipvs_end_to_end() {
    if uml::require(
        "ipvs_end_to_end",
        &["ip", "ipset", "iptables-legacy-restore"],
    ) == E2e::Skip
    {
        return;
    }
    let console = uml::run_inside("ipvs_in_uml", Duration::from_secs(600));
    for l in console
        .lines()
        .filter(|l| l.starts_with("CHECK") || l.starts_with("test "))
    {
        println!("uml: {l}");
    }
    // The inner test reports each check it passed; all of them must be there.
    for check in [
        "flow table",
        "round robin",
        "persistence",
        "udp",
        "node port",
        "node to cluster IP",
        "ipvs filter",
        "load balancer from the node",
        "draining",
        "resync",
        "settings",
        "scheduler probe",
        "ipv6",
        "cleanup",
        "local traffic detection",
        "sctp ipvs",
        "sctp iptables",
    ] {
        assert!(
            console.contains(&format!("CHECK {check}: ok")),
            "check {check:?} did not pass; console:\n{console}"
        );
    }
}

fn reach(from: &Netns, dst: &str, tries: usize) -> Vec<String> {
    (0..tries)
        .map(|_| match tcp_connect(from, None, sa(dst), WAIT) {
            Reached::Server(name, _) => name,
            other => panic!("{dst}: {other:?}"),
        })
        .collect()
}

fn passed(check: &str) {
    println!("CHECK {check}: ok");
}

fn line(conn: &mut BufReader<TcpStream>, text: &str) -> String {
    conn.get_mut()
        .write_all(format!("{text}\n").as_bytes())
        .expect("send a line");
    let mut answer = String::new();
    conn.read_line(&mut answer).expect("read the answer");
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The node's settings, as the other backends' tests use them.
fn node_config(env: &Env, scheduler: Scheduler) -> IpvsConfig {
    let mut proxy = ProxyConfig::default();
    proxy.local_addresses = vec![env.topo.node_ip];
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    let mut config = IpvsConfig::new(proxy);
    config.scheduler = scheduler;
    config.exclude_cidrs = vec!["172.16.0.0/16".parse().unwrap()];
    config.strict_arp = true;
    config.tcp_timeout = Duration::from_secs(3600);
    config.tcp_fin_timeout = Duration::from_secs(60);
    config.udp_timeout = Duration::from_secs(120);
    config
}

fn start_backend(env: &Env, scheduler: Scheduler) -> Result<IpvsProxier<SystemRunner>, IpvsError> {
    let config = node_config(env, scheduler);
    let runner = SystemRunner::in_netns(env.topo.node.name()).with_flavor(Flavor::Legacy);
    IpvsProxier::in_netns(config, runner, false, &env.topo.node.path())
}

#[test]
#[ignore = "runs inside User-Mode Linux, started by ipvs_end_to_end"]
fn ipvs_in_uml() {
    assert!(
        uml::inside(),
        "this test runs inside UML only (see ipvs_end_to_end)"
    );
    uml::load_modules(uml::IPVS_NODE_MODULES).expect("load the UML kernel modules");
    let env = Env::new();
    let node = &env.topo.node;
    let pod = &env.topo.pods[env.client_pod].ns;
    for p in ["web-0", "web-1"] {
        let ns = &env.topo.pod(p).ns;
        let listener = ns.run(|| TcpListener::bind(("0.0.0.0", 9090)).expect("bind echo"));
        serve_lines(listener, p);
    }
    let yaml = format!("{CLUSTER}{}", echo(&["10.244.1.10", "10.244.1.11"]));
    let snap = snapshot_of(&yaml, None);
    let conntrack = Conntrack::in_netns(&node.path()).expect("conntrack socket");
    let mut proxier = start_backend(&env, Scheduler::Rr)
        .expect("start the IPVS backend")
        .with_conntrack(conntrack);
    let report = proxier.sync_to(&snap).expect("first sync");
    let d = report.ipvs().unwrap();
    assert!(d.changes > 0 && d.bound > 0, "{report:?}");
    let again = proxier.sync_to(&snap).expect("second sync");
    assert_eq!(
        again.ipvs().unwrap().changes,
        0,
        "a sync with nothing new changes nothing"
    );

    // The flow table every backend passes, the tracer checked against the kernel on each.
    let config = node_config(&env, Scheduler::Rr);
    let plan = IpvsPlan::build(&config, &snap, false);
    run_flows(&env, &|p| plan.trace(&config, p), Backend::Ipvs);
    passed("flow table");

    // Round robin over the three endpoints, in turn.
    let got = reach(pod, "10.96.0.10:80", 6);
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        names(&["web-0", "web-1", "web-2"])
    );
    assert_eq!(got[..3], got[3..], "rr repeats the same order: {got:?}");
    passed("round robin");

    // ClientIP affinity is IPVS persistence: one endpoint for every connection.
    let state = proxier.kernel_state().unwrap();
    let (sticky, _) = &state[&(common::ip("10.96.0.11"), IpvsProtocol::Tcp, 80)];
    assert_eq!(sticky.flags & FLAG_PERSISTENT, FLAG_PERSISTENT);
    assert_eq!(sticky.timeout, 10800);
    let got = reach(pod, "10.96.0.11:80", 6);
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 1, "{got:?}");
    passed("persistence");

    // UDP: each new client socket is a new IPVS connection, scheduled in turn.
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        match UdpClient::new(pod).ask(sa("10.96.0.53:53"), WAIT) {
            Reached::Server(name, _) => seen.insert(name),
            other => panic!("UDP: {other:?}"),
        };
    }
    assert_eq!(seen, names(&["web-0", "web-1", "web-2"]));
    // A client that keeps its socket moves on when its endpoint goes away: the UDP real
    // server is deleted at once and its conntrack entries are cleared.
    let client = UdpClient::new(pod);
    let Reached::Server(first, _) = client.ask(sa("10.96.0.53:53"), WAIT) else {
        panic!("UDP before the change");
    };
    let gone = env.topo.pod(&first).ip.to_string();
    let (head, dns) = yaml.split_at(yaml.find("metadata: {name: dns-1").unwrap());
    let gone_line = format!("- {{addresses: [{gone}], nodeName: ");
    let dns: String = dns
        .lines()
        .filter(|l| !l.starts_with(&gone_line))
        .map(|l| format!("{l}\n"))
        .collect();
    let snap_udp = snapshot_of(&format!("{head}{dns}"), Some(&snap));
    let report = proxier
        .sync_to(&snap_udp)
        .expect("sync without a UDP endpoint");
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    let mut answers = Vec::new();
    for _ in 0..3 {
        if let Reached::Server(name, _) = client.ask(sa("10.96.0.53:53"), WAIT) {
            answers.push(name);
        }
    }
    assert!(!answers.is_empty(), "no answer after the change");
    assert!(
        !answers.contains(&first),
        "{first} still answers: {answers:?}"
    );
    proxier.sync_to(&snap).expect("the endpoint back");
    passed("udp");

    // A node port on the node's address, from outside; masqueraded (KUBE-NODE-PORT-TCP).
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        match tcp_connect(&env.topo.client, None, sa("192.168.0.2:30080"), WAIT) {
            Reached::Server(name, src) => {
                assert_ne!(src, env.topo.client_ip, "node port traffic is masqueraded");
                seen.insert(name);
            }
            other => panic!("node port: {other:?}"),
        }
    }
    assert_eq!(seen, names(&["web-0", "web-2"]));
    passed("node port");

    // The node's own connection to a cluster IP (source: the address on kube-ipvs0,
    // masqueraded by the KUBE-CLUSTER-IP src,dst rule).
    match tcp_connect(node, None, sa("10.96.0.12:80"), WAIT) {
        Reached::Server(name, _) => assert!(["web-0", "web-2"].contains(&name.as_str())),
        other => panic!("node to cluster IP: {other:?}"),
    }
    passed("node to cluster IP");

    // A port that is no Service on a virtual address is rejected, even though the node
    // listens on it (kubernetes#72236).
    let listener = node.run(|| TcpListener::bind(("0.0.0.0", 9999)).expect("bind"));
    serve_lines(listener, "node");
    assert_eq!(
        tcp_connect(pod, None, sa("10.96.0.10:9999"), WAIT),
        Reached::Refused
    );
    passed("ipvs filter");

    // The node's own connection to a load balancer whose source ranges leave the node out
    // is dropped (KUBE-IPVS-OUT-FILTER, kubernetes#119656); a pod outside the ranges too.
    assert_eq!(
        tcp_connect(node, None, sa("198.51.100.10:80"), WAIT),
        Reached::Timeout
    );
    passed("load balancer from the node");

    // Draining: an established connection keeps its endpoint when the endpoint goes away;
    // the real server stays at weight 0 and new connections avoid it.
    let dst: SocketAddr = sa("10.96.0.20:7");
    let conn = pod.run(move || TcpStream::connect_timeout(&dst, WAIT).expect("connect"));
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut conn = BufReader::new(conn);
    let first = line(&mut conn, "hello");
    let (gone_ip, kept) = if first == "web-0" {
        ("10.244.1.10", "10.244.1.11")
    } else {
        ("10.244.1.11", "10.244.1.10")
    };
    let without = format!("{CLUSTER}{}", echo(&[kept]));
    let snap2 = snapshot_of(&without, Some(&snap));
    let report = proxier.sync_to(&snap2).expect("sync without the endpoint");
    assert_eq!(report.ipvs().unwrap().draining, 1, "{report:?}");
    let state = proxier.kernel_state().unwrap();
    let (_, dests) = &state[&(common::ip("10.96.0.20"), IpvsProtocol::Tcp, 7)];
    let drained = dests
        .iter()
        .find(|d| d.server.addr.ip() == common::ip(gone_ip))
        .expect("the drained real server stays while it has connections");
    assert_eq!(drained.server.weight, 0);
    assert!(drained.active >= 1, "{drained:?}");
    assert_eq!(line(&mut conn, "still there"), first);
    for _ in 0..4 {
        let dst: SocketAddr = sa("10.96.0.20:7");
        let c = pod.run(move || TcpStream::connect_timeout(&dst, WAIT).expect("connect"));
        c.set_read_timeout(Some(WAIT)).unwrap();
        let name = line(&mut BufReader::new(c), "new");
        assert_ne!(name, first, "a new connection reached the drained endpoint");
    }
    // Once its connection is gone (reset: IPVS forgets a closed connection after 10 s, a
    // TIME_WAIT one after 2 min), a later sync deletes the real server.
    let conn = conn.into_inner();
    nix::sys::socket::setsockopt(
        &conn,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("SO_LINGER");
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let report = proxier.sync_to(&snap2).expect("sync while draining");
        if report.ipvs().unwrap().draining == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still draining: {report:?}"
        );
    }
    let state = proxier.kernel_state().unwrap();
    let (_, dests) = &state[&(common::ip("10.96.0.20"), IpvsProtocol::Tcp, 7)];
    assert_eq!(dests.len(), 1, "{dests:?}");
    assert_eq!(dests[0].server.addr.ip(), common::ip(kept));
    passed("draining");

    // Between full syncs a sync reads only what decides a drain: nothing, here.
    let report = proxier.sync_to(&snap2).expect("sync");
    assert!(
        !report.ipvs().unwrap().read_all && report.ipvs().unwrap().changes == 0,
        "{report:?}"
    );
    // A virtual server deleted behind our back is restored by the next sync.
    let state = proxier.kernel_state().unwrap();
    let (web, _) = state[&(common::ip("10.96.0.10"), IpvsProtocol::Tcp, 80)].clone();
    proxier
        .ipvs_mut()
        .apply(&IpvsChange::DeleteService(web))
        .expect("delete a virtual server");
    assert_ne!(
        tcp_connect(pod, None, sa("10.96.0.10:80"), WAIT),
        Reached::Server("web-0".into(), env.topo.pods[env.client_pod].ip)
    );
    let report = proxier.sync_to(&snap2).expect("resync");
    assert!(!report.ipvs().unwrap().read_all, "{report:?}");
    assert_eq!(
        report.ipvs().unwrap().changes,
        4,
        "the service and its three real servers: {report:?}"
    );
    assert_eq!(reach(pod, "10.96.0.10:80", 3).len(), 3);
    // A real server and an ipset entry deleted behind our back are restored by the next
    // full sync.
    let state = proxier.kernel_state().unwrap();
    let (web, dests) = state[&(common::ip("10.96.0.10"), IpvsProtocol::Tcp, 80)].clone();
    proxier
        .ipvs_mut()
        .apply(&IpvsChange::DeleteDest(web, dests[0].server.clone()))
        .expect("delete a real server");
    let entry = ["KUBE-CLUSTER-IP", "10.96.0.10,tcp:80"];
    node.exec_text("ipset", &["del", entry[0], entry[1]]);
    let in_set = || {
        node.exec_text("ipset", &["list", entry[0]])
            .contains(entry[1])
    };
    assert!(!in_set());
    proxier.force_full();
    let report = proxier.sync_to(&snap2).expect("full resync");
    assert!(
        report.ipvs().unwrap().read_all && report.ipvs().unwrap().changes == 1,
        "{report:?}"
    );
    assert_eq!(
        report.repaired, 1,
        "the deleted real server is reported: {report}"
    );
    assert!(in_set(), "the ipset entry is back");
    assert_eq!(reach(pod, "10.96.0.10:80", 3).len(), 3);
    passed("resync");

    // Settings: timeouts and strict ARP applied at start; virtual servers in an excluded
    // range survive syncs and cleanup, others that no Service asks for do not.
    let timeouts = node.exec_text("ipvsadm", &["-L", "--timeout"]);
    assert!(timeouts.contains("3600 60 120"), "{timeouts}");
    let arp = node.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/arp_ignore"));
    assert_eq!(arp.unwrap().trim(), "1");
    let foreign = |addr: &str| service_proxy::ipvs::VirtualServer {
        addr: common::ip(addr),
        protocol: IpvsProtocol::Tcp,
        port: 80,
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
    };
    for addr in ["172.16.0.1", "10.200.0.1"] {
        proxier
            .ipvs_mut()
            .apply(&IpvsChange::AddService(foreign(addr)))
            .expect("add a foreign virtual server");
    }
    let report = proxier
        .sync_to(&snap2)
        .expect("sync with foreign virtual servers");
    assert_eq!(
        report.ipvs().unwrap().changes,
        1,
        "only the unexcluded one is deleted: {report:?}"
    );
    let state = proxier.kernel_state().unwrap();
    assert!(state.contains_key(&(common::ip("172.16.0.1"), IpvsProtocol::Tcp, 80)));
    assert!(!state.contains_key(&(common::ip("10.200.0.1"), IpvsProtocol::Tcp, 80)));
    passed("settings");

    // Starting with a scheduler the kernel lacks (ip_vs_sed is not loaded, and UML has
    // no modprobe to load it) is a typed error.
    match start_backend(&env, Scheduler::Sed) {
        Err(IpvsError::Scheduler { scheduler, .. }) => assert_eq!(scheduler, "sed"),
        other => panic!("expected a scheduler error, got {:?}", other.map(|_| ())),
    }
    passed("scheduler probe");

    // IPv6: a second proxier for the other family in the same node. The kernel takes
    // our IPv6 encodings and reads back what we planned; each family's cleanup leaves the
    // other's virtual servers alone.
    let snap6 = snapshot_of(V6, None);
    let mut config = IpvsConfig::new(ProxyConfig::default());
    config.scheduler = Scheduler::Rr;
    let runner = SystemRunner::in_netns(node.name()).with_flavor(Flavor::Legacy);
    let mut proxier6 =
        IpvsProxier::in_netns(config, runner, true, &node.path()).expect("start for IPv6");
    let report = proxier6.sync_to(&snap6).expect("IPv6 sync");
    assert_eq!(
        report.ipvs().unwrap().changes,
        2,
        "a virtual server and its real server: {report:?}"
    );
    assert_eq!(
        proxier6
            .sync_to(&snap6)
            .expect("IPv6 resync")
            .ipvs()
            .unwrap()
            .changes,
        0
    );
    let state6 = proxier6.kernel_state().unwrap();
    assert_eq!(state6.len(), 1, "{state6:?}");
    let (vs6, dests6) = &state6[&(common::ip("fd00:10:96::10"), IpvsProtocol::Tcp, 80)];
    assert_eq!(vs6.scheduler, "rr");
    assert_eq!(dests6[0].server.addr, sa("[fd00:10:244::10]:8080"));
    let addrs = node.exec_text("ip", &["-6", "addr", "show", DUMMY_DEVICE]);
    assert!(addrs.contains("fd00:10:96::10/128"), "{addrs}");
    let sets = node.exec_text("ipset", &["list", "-n"]);
    assert!(
        sets.contains("KUBE-6-CLUSTER-IP") && sets.contains("KUBE-CLUSTER-IP"),
        "{sets}"
    );
    let rules6 = node.exec_text("ip6tables-legacy-save", &[]);
    assert!(
        rules6.contains("-A KUBE-SERVICES -s ::1/128 -j RETURN"),
        "{rules6}"
    );
    proxier6.cleanup().expect("IPv6 cleanup");
    assert!(proxier6.kernel_state().unwrap().is_empty());
    assert!(
        !proxier.kernel_state().unwrap().is_empty(),
        "IPv4 left alone"
    );
    assert_eq!(reach(pod, "10.96.0.10:80", 1).len(), 1);
    let rules6 = node.exec_text("ip6tables-legacy-save", &[]);
    assert!(!rules6.contains("KUBE-"), "{rules6}");
    passed("ipv6");

    // Cleanup removes virtual servers, the dummy interface, rules and sets.
    proxier.cleanup().expect("cleanup");
    let left: Vec<_> = proxier.kernel_state().unwrap().into_keys().collect();
    assert_eq!(
        left,
        [(common::ip("172.16.0.1"), IpvsProtocol::Tcp, 80)],
        "only the excluded virtual server is left"
    );
    let links = node.exec_text("ip", &["link", "show"]);
    assert!(!links.contains(DUMMY_DEVICE), "{links}");
    let sets = node.exec_text("ipset", &["list", "-n"]);
    assert!(!sets.contains("KUBE-"), "{sets}");
    let rules = node.exec_text("iptables-legacy-save", &[]);
    assert!(!rules.contains("KUBE-"), "{rules}");
    // A sync after cleanup starts from the kernel again and brings everything back.
    let report = proxier.sync_to(&snap2).expect("sync after cleanup");
    assert!(report.ipvs().unwrap().read_all, "{report:?}");
    assert_eq!(reach(pod, "10.96.0.10:80", 3).len(), 3);
    proxier.cleanup().expect("cleanup again");
    passed("cleanup");

    // `--detect-local-mode`: each mode's KUBE-SERVICES masquerade rule in the kernel.
    let snap = snapshot_with_pod_cidrs(CLUSTER, &[NODE_POD_CIDR]);
    for case in local_traffic_cases() {
        let mut config = node_config(&env, Scheduler::Rr);
        config.proxy.detect_local = case.mode.clone();
        let runner = SystemRunner::in_netns(node.name()).with_flavor(Flavor::Legacy);
        let mut proxier = IpvsProxier::in_netns(config.clone(), runner, false, &node.path())
            .expect("start the IPVS backend");
        proxier.sync_to(&snap).expect("sync");
        let plan = IpvsPlan::build(&config, &snap, false);
        run_local_traffic_case(&env, &|p| plan.trace(&config, p), &case, Backend::Ipvs);
        proxier.cleanup().expect("cleanup");
    }
    passed("local traffic detection");

    // SCTP through the kernel, on IPVS and then on the iptables backend in the same
    // kernel (the host's kernel has no SCTP; this one has, though no nftables NAT).
    uml::load_modules(&["sctp", "xt_sctp"]).expect("the SCTP modules");
    for p in ["web-0", "web-2"] {
        let ns = &env.topo.pod(p).ns;
        // Listening needs the cookie HMAC, whose crypto modules UML lacks.
        ns.sysctl("net/sctp/cookie_hmac_alg", "none");
        serve_sctp(ns, 9132, p);
    }
    let snap = snapshot_of(SCTP, None);
    let sctp_reach = |from: &Netns, dst: &str| {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            match sctp_connect(from, sa(dst), WAIT) {
                Reached::Server(name, _) => {
                    seen.insert(name);
                }
                other => panic!("SCTP to {dst}: {other:?}"),
            }
        }
        seen
    };
    let config = node_config(&env, Scheduler::Rr);
    let runner = || SystemRunner::in_netns(node.name()).with_flavor(Flavor::Legacy);
    let ipvs = IpvsProxier::in_netns(config.clone(), runner(), false, &node.path())
        .expect("start the IPVS backend");
    let iptables = IptablesProxier::new(
        service_proxy::iptables::Renderer::new(IptablesConfig::new(config.proxy), false),
        runner(),
    );
    let backends: [(&str, Box<dyn Proxier>); 2] =
        [("ipvs", Box::new(ipvs)), ("iptables", Box::new(iptables))];
    for (name, mut proxier) in backends {
        proxier.sync_to(&snap).expect("sync the SCTP Service");
        assert_eq!(
            sctp_reach(pod, "10.96.0.40:132"),
            names(&["web-0", "web-2"]),
            "{name}"
        );
        assert_eq!(
            sctp_reach(&env.topo.client, "192.168.0.2:30132"),
            names(&["web-0", "web-2"]),
            "{name}"
        );
        proxier.cleanup().expect("cleanup");
        passed(&format!("sctp {name}"));
    }
}

/// An SCTP NodePort Service on two of the pods.
const SCTP: &str = r"
apiVersion: v1
kind: Service
metadata: {name: sctp, namespace: e2e}
spec:
  type: NodePort
  clusterIP: 10.96.0.40
  ports: [{name: assoc, port: 132, protocol: SCTP, targetPort: 9132, nodePort: 30132}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sctp-1, namespace: e2e, labels: {kubernetes.io/service-name: sctp}}
addressType: IPv4
ports: [{name: assoc, port: 9132, protocol: SCTP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.2.12], nodeName: node-b}
";
