//! The `proxy` daemon restarted under traffic, as an operator upgrades it: a client keeps
//! connecting through a ClusterIP (from a pod) and a NodePort (from outside the node)
//! while the daemon is stopped with SIGTERM and started again, several times; a second
//! daemon and a `--cleanup` are refused while one runs; the manifest is emptied behind the
//! daemon's back and then replaced atomically. Not one connection may fail.
//!
//! iptables and nftables in network namespaces; IPVS inside User-Mode Linux. Needs root;
//! skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use service_testkit::netns::{E2e, Reached, Topology, require, serve_tcp, tcp_connect};
use service_testkit::uml;

mod common;
use common::{Manifest, cleanup, eventually, spawn_with, terminate, try_cleanup};

const MANIFEST: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: restart}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: restart, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-a}
";

const CLUSTER_IP: &str = "10.96.0.10:80";
const NODE_PORT: &str = "192.168.0.2:30080";

/// What the traffic saw.
#[derive(Debug, Default)]
struct Tally {
    attempts: usize,
    failures: Vec<String>,
}

/// Connects through the ClusterIP (from the client pod) and the NodePort (from the external
/// client) in turn until `stop`, every `pause`.
fn traffic(topo: Arc<Topology>, stop: Arc<AtomicBool>, pause: Duration) -> Tally {
    let mut tally = Tally::default();
    let client_pod = topo.pod("client");
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (from, ns, dst) in [
            ("pod", &client_pod.ns, CLUSTER_IP),
            ("outside", &topo.client, NODE_PORT),
        ] {
            tally.attempts += 1;
            match tcp_connect(ns, None, dst.parse().unwrap(), Duration::from_secs(2)) {
                Reached::Server(name, _) if name.starts_with("web-") => {}
                other => tally.failures.push(format!(
                    "{:?} after start, {from} -> {dst}: {other:?}",
                    started.elapsed()
                )),
            }
        }
        std::thread::sleep(pause);
    }
    tally
}

fn reaches(topo: &Topology) -> bool {
    let ok = |ns, dst: &str| {
        matches!(
            tcp_connect(ns, None, dst.parse().unwrap(), Duration::from_millis(500)),
            Reached::Server(..)
        )
    };
    ok(&topo.pod("client").ns, CLUSTER_IP) && ok(&topo.client, NODE_PORT)
}

/// The whole scenario for one backend; `extra` are its daemon flags.
fn restarts_without_a_gap(backend: &str, extra: &[&str], restarts: usize, pause: Duration) {
    let mut topo = Topology::new(&[]);
    topo.add_pod("web-0", "10.244.1.10");
    topo.add_pod("web-1", "10.244.1.11");
    topo.add_pod("client", "10.244.1.50");
    for name in ["web-0", "web-1"] {
        serve_tcp(&topo.pod(name).ns, 8080, name);
    }
    let topo = Arc::new(topo);
    let node = &topo.node;
    let file = Manifest::with_text(&format!("restart-{backend}"), MANIFEST);
    let mut daemon = spawn_with(node, backend, file.path(), extra);
    eventually(
        "traffic through the first daemon's rules",
        || format!("{}", reaches(&topo)),
        |s| s == "true",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (topo, stop) = (topo.clone(), stop.clone());
        std::thread::spawn(move || traffic(topo, stop, pause))
    };
    let settle = || std::thread::sleep(Duration::from_millis(1500));
    settle();

    // A second daemon for the same family and namespace is refused at once, and so is a
    // cleanup: either would delete the running one's rules.
    let second = spawn_with(node, backend, file.path(), extra);
    let mut second = second;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the second daemon kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains("already runs for ipv4 in this network namespace"),
        "{log}"
    );
    let (ok, log) = try_cleanup(node, backend, extra);
    assert!(
        !ok && log.contains("already runs"),
        "cleanup under a daemon: {log}"
    );

    for i in 0..restarts {
        let (ok, log) = terminate(daemon);
        assert!(ok, "restart {i}: {log}");
        assert!(log.contains("stopped: the rules stay in place"), "{log}");
        daemon = spawn_with(node, backend, file.path(), extra);
        settle();
        assert!(
            daemon.log().contains("sync 1: full sync"),
            "restart {i}: {}",
            daemon.log()
        );
    }

    // The manifest emptied (a writer truncating it to rewrite it, then stalling): the rules
    // stay, for longer than the daemon retries; then the new content arrives atomically.
    file.truncate();
    std::thread::sleep(Duration::from_millis(2500));
    file.replace(&MANIFEST.replace("- {addresses: [10.244.1.11], nodeName: node-a}\n", ""));
    settle();

    stop.store(true, Ordering::SeqCst);
    let tally = load.join().expect("the traffic thread");
    let (ok, log) = terminate(daemon);
    assert!(ok, "{log}");
    assert!(
        log.contains("is empty (a writer may be rewriting it)"),
        "{log}"
    );
    assert!(
        log.contains("keeping its previous objects until it changes"),
        "{log}"
    );
    assert!(
        log.contains("files read: 1 objects changed") && log.contains(": partial sync"),
        "the replaced file was applied: {log}"
    );
    assert!(
        tally.failures.is_empty() && tally.attempts >= 50,
        "{} of {} connections failed:\n{}",
        tally.failures.len(),
        tally.attempts,
        tally.failures.join("\n")
    );
    eprintln!(
        "{backend}: {} connections, none failed, across {restarts} restarts",
        tally.attempts
    );
    cleanup(node, backend, extra);
    assert!(!reaches(&topo), "traffic after --cleanup");
}

#[test]
fn restart_without_a_gap_iptables() {
    if require(
        "restart_without_a_gap_iptables",
        &["ip", "iptables-restore", "iptables-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    restarts_without_a_gap("iptables", &[], 4, Duration::from_millis(10));
}

#[test]
fn restart_without_a_gap_nftables() {
    if require("restart_without_a_gap_nftables", &["ip", "nft", "kill"]) == E2e::Skip {
        return;
    }
    restarts_without_a_gap("nftables", &[], 4, Duration::from_millis(10));
}

#[test]
fn restart_without_a_gap_ipvs() {
    if uml::require(
        "restart_without_a_gap_ipvs",
        &["ip", "ipset", "ipvsadm", "iptables-legacy-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    let console = uml::run_inside(
        "restart_without_a_gap_ipvs_in_uml",
        Duration::from_secs(600),
    );
    for line in console
        .lines()
        .filter(|l| l.contains("connections, none failed"))
    {
        eprintln!("inside UML: {line}");
    }
}

#[test]
#[ignore = "runs inside User-Mode Linux, started by restart_without_a_gap_ipvs"]
fn restart_without_a_gap_ipvs_in_uml() {
    assert!(uml::inside(), "this test runs inside UML only");
    uml::load_modules(uml::IPVS_NODE_MODULES).expect("load the UML kernel modules");
    restarts_without_a_gap(
        "ipvs",
        &["--iptables-flavor", "legacy"],
        3,
        Duration::from_millis(20),
    );
}
