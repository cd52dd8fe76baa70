//! The `proxy` daemon run as a user runs it, inside a network namespace: it installs the
//! rules, follows the manifest file as it changes (keeping the rules when a change is
//! invalid), leaves its rules in place on SIGTERM, and `--cleanup` removes them. Every
//! backend; IPVS inside User-Mode Linux (the host kernel has no IPVS).
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service_testkit::netns::{E2e, Netns, require};
use service_testkit::uml;

/// A copy of the demo manifests the test edits.
struct Manifest(PathBuf);

impl Manifest {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("proxy-{}-{tag}.yaml", std::process::id()));
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/demo.yaml"),
            &path,
        )
        .unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.0).unwrap();
        assert!(text.contains(from), "{from}");
        // A new modification time even within the same second as the last write.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&self.0, text.replace(from, to)).unwrap();
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spawn(ns: &Netns, backend: &str, file: &str) -> Child {
    spawn_with(ns, backend, file, &[])
}

/// `proxy --cleanup` in the namespace; returns its log.
fn cleanup(ns: &Netns, backend: &str, extra: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_proxy")])
        .args(["--backend", backend, "--cleanup"])
        .args(["--node-name", "node-a", "--node-ip", "192.168.0.2"])
        .args(extra)
        .output()
        .expect("run proxy --cleanup");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "proxy --cleanup failed:\n{log}");
    log
}

fn spawn_with(ns: &Netns, backend: &str, file: &str, extra: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_proxy")])
        .args([
            "--backend",
            backend,
            "--apply",
            "--min-sync-period",
            "100ms",
        ])
        .args(["--node-name", "node-a", "--node-ip", "192.168.0.2"])
        .args(extra)
        .args(["--cluster-cidr", "10.244.0.0/16", file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy")
}

/// Waits until `state()` satisfies `ok`, or fails with the last state.
fn eventually(what: &str, state: impl Fn() -> String, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state();
        if ok(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the proxy with SIGTERM; returns its exit status and log.
fn terminate(mut child: Child) -> (bool, String) {
    let pid = child.id().to_string();
    // `ip netns exec` runs the proxy in place (exec), so the pid is the proxy's.
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    (status.success(), log)
}

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
