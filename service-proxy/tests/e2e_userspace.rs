//! Kernel end-to-end test of the userspace backend: the portals run on a runtime inside a
//! node network namespace, the redirect rules are applied there with `iptables-restore`,
//! and real TCP and UDP clients in pod and client namespaces reach the endpoints through
//! ClusterIPs and node ports: round robin, affinity, a dead endpoint skipped by the dial
//! retries, UDP sessions, an established connection that outlives an endpoint change,
//! and cleanup.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{CLUSTER, Env, TIMEOUT, echo, names, sa, snapshot_of};
use service_proxy::Proxier;
use service_proxy::iptables::apply::SystemRunner;
use service_proxy::userspace::{UserspaceConfig, UserspaceProxier, UserspaceProxy};
use service_testkit::netns::{E2e, Netns, Reached, UdpClient, require, serve_lines, tcp_connect};

/// Answers each line with `NAME line` until the client closes, inside `ns`.
fn serve_echo(ns: &Netns, name: &'static str) {
    let listener = ns.run(|| TcpListener::bind(("0.0.0.0", 9090)).expect("bind echo"));
    serve_lines(listener, name);
}

fn reach(from: &Netns, dst: &str, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        match tcp_connect(from, None, sa(dst), Duration::from_secs(5)) {
            Reached::Server(name, _) => {
                seen.insert(name);
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
    seen
}

/// A line-oriented connection from a namespace.
fn connect_in(ns: &Netns, dst: SocketAddr) -> TcpStream {
    ns.run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect"))
}

#[test]
fn userspace_end_to_end() {
    if require(
        "userspace_end_to_end",
        &["ip", "iptables-restore", "iptables-save", "iptables"],
    ) == E2e::Skip
    {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    serve_echo(&env.topo.pod("web-0").ns, "web-0");
    serve_echo(&env.topo.pod("web-1").ns, "web-1");
    let yaml = format!("{CLUSTER}{}", echo(&["10.244.1.10", "10.244.1.11"]));
    let snap = snapshot_of(&yaml, None);

    // The runtime's workers live in the node namespace, and so do the portals.
    let rt = node.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    });
    let mut config = UserspaceConfig::default();
    config.udp_idle_timeout = Duration::from_secs(2);
    let mut proxier = UserspaceProxier::new(
        UserspaceProxy::new(config, rt.handle().clone()),
        SystemRunner::in_netns(node.name()),
    );
    let report = proxier.sync_to(&snap).expect("first sync");
    assert!(report.userspace().unwrap().rules > 0, "{report:?}");
    let pod = &env.topo.pods[env.client_pod].ns;

    // Round robin over every endpoint, from a pod and from outside through a node port.
    assert_eq!(
        reach(pod, "10.96.0.10:80", 6),
        names(&["web-0", "web-1", "web-2"])
    );
    assert_eq!(
        reach(&env.topo.client, "192.168.0.2:30080", 6),
        names(&["web-0", "web-2"])
    );
    // The node's own traffic to a ClusterIP.
    assert_eq!(reach(node, "10.96.0.10:80", 3).len(), 3);
    // ClientIP affinity.
    assert_eq!(reach(pod, "10.96.0.11:80", 10).len(), 1);

    // UDP: a session keeps the client on one endpoint.
    let resolver = UdpClient::new(pod);
    let first = match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
        Reached::Server(name, _) => name,
        other => panic!("UDP service: {other:?}"),
    };
    for _ in 0..5 {
        match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
            Reached::Server(name, _) => assert_eq!(name, first),
            other => panic!("UDP service: {other:?}"),
        }
    }

    // web-1 stops answering (its packets are dropped): the dial retries move every
    // connection on to the other endpoints.
    env.topo.pod("web-1").ns.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"],
    );
    assert_eq!(reach(pod, "10.96.0.10:80", 6), names(&["web-0", "web-2"]));

    // Established connections outlive an endpoint leaving the Service: twenty open
    // connections, each still answering after the change.
    let mut open: Vec<(TcpStream, BufReader<TcpStream>, String)> = (0..20)
        .map(|_| {
            let mut c = connect_in(pod, sa("10.96.0.20:7"));
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            c.write_all(b"hello\n").unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let who = l.split_whitespace().next().unwrap().to_owned();
            (c, r, who)
        })
        .collect();
    let mut conn = connect_in(pod, sa("10.96.0.20:7"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    conn.write_all(b"one\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let owner = line.split_whitespace().next().unwrap().to_owned();
    let other = if owner == "web-0" {
        "10.244.1.11"
    } else {
        "10.244.1.10"
    };
    let next = snapshot_of(&format!("{CLUSTER}{}", echo(&[other])), Some(&snap));
    let report = proxier.sync_to(&next).expect("endpoint change");
    assert_eq!(report.userspace().unwrap().portals.updated, 1, "{report:?}");
    conn.write_all(b"two\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("{owner} two"));
    for (c, r, who) in &mut open {
        c.write_all(b"still\n").unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), format!("{who} still"));
    }
    for _ in 0..4 {
        let mut c = connect_in(pod, sa("10.96.0.20:7"));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"x\n").unwrap();
        let mut l = String::new();
        BufReader::new(c).read_line(&mut l).unwrap();
        assert!(!l.starts_with(&owner), "{l}");
    }

    // A portal is reachable only as its service: its port on the node's address (from
    // outside) or on loopback (from the node) is dropped, while the service address works.
    let tcp_portals: Vec<u16> = proxier
        .proxy()
        .portals()
        .iter()
        .filter(|p| p.protocol == service_core::model::Protocol::Tcp)
        .map(|p| p.local.port())
        .collect();
    assert!(!tcp_portals.is_empty());
    for port in &tcp_portals {
        for (from, to) in [
            (&env.topo.client, format!("192.168.0.2:{port}")),
            (node, format!("127.0.0.1:{port}")),
        ] {
            let got = tcp_connect(from, None, sa(&to), Duration::from_millis(500));
            assert!(
                !matches!(got, Reached::Server(..)),
                "portal bypass at {to}: {got:?}"
            );
        }
    }
    assert_eq!(reach(pod, "10.96.0.10:80", 2).len(), 2);

    // Cleanup: no rules left, and the ClusterIP is no longer served.
    proxier.cleanup().expect("cleanup");
    let nat = node.exec_text("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("KUBE-"), "{nat}");
    let filter = node.exec_text("iptables-save", &["-t", "filter"]);
    assert!(!filter.contains("KUBE-PORTALS-GUARD"), "{filter}");
    assert!(!matches!(
        tcp_connect(pod, None, sa("10.96.0.10:80"), Duration::from_millis(700)),
        Reached::Server(..)
    ));
}
