//! The `proxy` daemon run as a user runs it, inside a network namespace: it installs the
//! rules, follows the manifest file as it changes (keeping the rules when a change is
//! invalid), leaves its rules in place on SIGTERM, and `--cleanup` removes them. Every
//! backend; IPVS inside User-Mode Linux (the host kernel has no IPVS).
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use std::time::{Duration, Instant};

use service_testkit::netns::{E2e, Netns, require};
use service_testkit::uml;

mod common;
use common::{Manifest, cleanup, eventually, spawn, spawn_with, terminate};

fn run_daemon(backend: &str, state: impl Fn(&Netns) -> String, web: &str, moved: &str) {
    let ns = Netns::new("proxyd");
    let file = Manifest::new(backend);
    let child = spawn(&ns, backend, file.path());
    eventually("the first sync", || state(&ns), |s| s.contains(web));
    // An endpoint of shop/web moves: the next sync follows.
    file.edit("10.244.2.10", "10.244.2.99");
    eventually("the endpoint change", || state(&ns), |s| s.contains(moved));
    // An invalid edit is refused; the rules stay.
    file.edit("clusterIP: 10.96.10.20", "clusterIP: 10.96.10.999");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        state(&ns).contains(moved),
        "rules kept after an invalid edit"
    );
    let (ok, log) = terminate(child);
    assert!(ok, "{log}");
    assert!(log.contains("sync 1: full sync"), "{log}");
    assert!(
        log.contains(": partial sync")
            && log.contains("sync in")
            && log.contains(": 2 service ports and "),
        "{log}"
    );
    assert!(
        log.contains("reload failed: keeping the previous objects"),
        "{log}"
    );
    // SIGTERM leaves the rules in place, as kube-proxy does; --cleanup removes them.
    assert!(log.contains("stopped: the rules stay in place"), "{log}");
    assert!(state(&ns).contains(moved), "rules kept after SIGTERM");
    cleanup(&ns, backend, &[]);
    assert!(
        !state(&ns).contains(moved),
        "rules left behind by --cleanup:\n{}",
        state(&ns)
    );
}

#[test]
fn proxy_daemon_nftables() {
    if require("proxy_daemon_nftables", &["ip", "nft", "kill"]) == E2e::Skip {
        return;
    }
    run_daemon(
        "nftables",
        |ns| ns.exec_text("nft", &["list", "ruleset"]),
        "10.96.10.20 . tcp . 80 : goto service-",
        "10.244.2.99 . 8080",
    );
}

#[test]
fn proxy_daemon_iptables() {
    if require(
        "proxy_daemon_iptables",
        &["ip", "iptables-restore", "iptables-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    run_daemon(
        "iptables",
        |ns| ns.exec_text("iptables-save", &["-t", "nat"]),
        "shop/web:http cluster IP",
        "10.244.2.99:8080",
    );
}

#[test]
fn proxy_daemon_userspace() {
    if require(
        "proxy_daemon_userspace",
        &["ip", "iptables-restore", "iptables-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    let ns = Netns::new("proxyd");
    let file = Manifest::new("userspace");
    let child = spawn(&ns, "userspace", file.path());
    let nat = |ns: &Netns| ns.exec_text("iptables-save", &["-t", "nat"]);
    // The web Service's ClusterIP is redirected to a portal.
    eventually(
        "the portal rules",
        || nat(&ns),
        |s| {
            s.lines().any(|l| {
                l.starts_with("-A KUBE-PORTALS-CONTAINER -d 10.96.10.20/32 -p tcp")
                    && l.contains("-j REDIRECT --to-ports")
            })
        },
    );
    // A Service moves to another ClusterIP: its rules follow.
    file.edit("10.96.10.20", "10.96.10.21");
    eventually(
        "the changed ClusterIP",
        || nat(&ns),
        |s| s.contains("-d 10.96.10.21/32") && !s.contains("-d 10.96.10.20/32"),
    );
    let (ok, log) = terminate(child);
    assert!(ok, "{log}");
    assert!(log.contains("portals opened"), "{log}");
    cleanup(&ns, "userspace", &[]);
    assert!(
        !nat(&ns).contains("KUBE-"),
        "rules left behind by --cleanup:\n{}",
        nat(&ns)
    );
}

#[test]
fn proxy_daemon_ipvs_falls_back_to_iptables_without_ipvs() {
    if require(
        "proxy_daemon_ipvs_falls_back_to_iptables_without_ipvs",
        &["ip", "iptables-restore", "iptables-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("this kernel has IPVS: the fallback does not apply");
        return;
    }
    let ns = Netns::new("proxyd");
    let file = Manifest::new("ipvs");
    let child = spawn(&ns, "ipvs", file.path());
    let nat = |ns: &Netns| ns.exec_text("iptables-save", &["-t", "nat"]);
    eventually(
        "the iptables rules",
        || nat(&ns),
        |s| s.contains("shop/web:http cluster IP"),
    );
    let (ok, log) = terminate(child);
    assert!(ok, "{log}");
    assert!(
        log.contains("the kernel has no IPVS")
            && log.contains("falling back to the iptables backend"),
        "{log}"
    );
    cleanup(&ns, "ipvs", &[]);
    assert!(!nat(&ns).contains("KUBE-"));
}

#[test]
fn proxy_daemon_ipvs() {
    if uml::require(
        "proxy_daemon_ipvs",
        &["ip", "ipset", "ipvsadm", "iptables-legacy-save", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    uml::run_inside("proxy_daemon_ipvs_in_uml", Duration::from_secs(600));
}

#[test]
#[ignore = "runs inside User-Mode Linux, started by proxy_daemon_ipvs"]
fn proxy_daemon_ipvs_in_uml() {
    assert!(
        uml::inside(),
        "this test runs inside UML only (see proxy_daemon_ipvs)"
    );
    uml::load_modules(uml::IPVS_NODE_MODULES).expect("load the UML kernel modules");
    let ns = Netns::new("proxyd");
    let file = Manifest::new("ipvs-uml");
    let legacy = ["--iptables-flavor", "legacy"];
    let child = spawn_with(&ns, "ipvs", file.path(), &legacy);
    let ipvs = |ns: &Netns| ns.exec_text("ipvsadm", &["-S", "-n"]);
    eventually(
        "the virtual servers",
        || ipvs(&ns),
        |s| s.contains("-a -t 10.96.10.20:80 -r 10.244.2.10:8080 -m -w 1"),
    );
    let addrs = ns.exec_text("ip", &["addr", "show", "kube-ipvs0"]);
    assert!(addrs.contains("inet 10.96.10.20/32"), "{addrs}");
    // An endpoint moves: the real servers follow.
    file.edit("10.244.2.10", "10.244.2.99");
    eventually(
        "the endpoint change",
        || ipvs(&ns),
        |s| s.contains("-r 10.244.2.99:8080") && !s.contains("-r 10.244.2.10:8080"),
    );
    let (ok, log) = terminate(child);
    assert!(ok, "{log}");
    assert!(log.contains("sync 1: full sync"), "{log}");
    // The endpoint change: a partial sync (the table as sync 1 left it, plus one dump).
    assert!(log.contains("sync 2: partial sync"), "{log}");
    assert!(log.contains("virtual servers"), "{log}");
    assert!(log.contains("stopped: the rules stay in place"), "{log}");
    assert!(
        ipvs(&ns).contains("-A"),
        "virtual servers kept after SIGTERM"
    );
    cleanup(&ns, "ipvs", &legacy);
    assert!(!ipvs(&ns).contains("-A"), "virtual servers left behind");
    let rules = ns.exec_text("iptables-legacy-save", &[]);
    assert!(!rules.contains("KUBE-"), "rules left behind:\n{rules}");

    // A scheduler the kernel lacks (ip_vs_sed is not loaded): the iptables backend instead.
    let child = spawn_with(
        &ns,
        "ipvs",
        file.path(),
        &["--iptables-flavor", "legacy", "--ipvs-scheduler", "sed"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let nat = || ns.exec_text("iptables-legacy-save", &["-t", "nat"]);
    while !nat().contains("shop/web:http cluster IP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let installed = nat().contains("shop/web:http cluster IP");
    let (ok, log) = terminate(child);
    assert!(
        installed,
        "the iptables backend did not install its rules:\n{log}"
    );
    assert!(ok, "{log}");
    assert!(
        log.contains("no IPVS scheduler \"sed\"")
            && log.contains("falling back to the iptables backend"),
        "{log}"
    );
    cleanup(
        &ns,
        "ipvs",
        &["--iptables-flavor", "legacy", "--ipvs-scheduler", "sed"],
    );
    assert!(!nat().contains("KUBE-"), "rules left behind by --cleanup");
}
