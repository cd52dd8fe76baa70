//! The `proxy` daemon as the node agent a cluster depends on, in network namespaces with
//! real HTTP clients (`curl`): health-check node ports for load balancers, `/healthz` and
//! `/livez`, `/metrics` checked by `promtool`, dual-stack in one process, the
//! configuration file and the conntrack settings it makes.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use std::time::{Duration, Instant};

use service_examples::kpconfig::KubeProxyConfiguration;
use service_testkit::netns::{
    E2e, Netns, Reached, Topology, require, serve_tcp, serve_tcp_at, tcp_connect,
};

mod common;
use common::{Manifest, eventually, spawn_env, spawn_with, terminate};

/// `curl -s -i URL` from `ns`: the status code, the headers and the body; `None` when
/// nothing listens.
fn curl(ns: &Netns, url: &str) -> Option<(u16, String)> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "curl",
            "-s",
            "-i",
            "--max-time",
            "3",
            url,
        ])
        .output()
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match ok() {
            Some(s) => return s,
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    panic!("timed out waiting for {what}");
}

const LOCAL: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: agent}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 30100
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: agent, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.1.11], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.2.12], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: agent}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
";

#[test]
fn health_check_node_ports_follow_the_local_endpoints() {
    if require(
        "health_check_node_ports_follow_the_local_endpoints",
        &["ip", "nft", "curl", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    let topo = Topology::new(&[]);
    let file = Manifest::with_text("hc", LOCAL);
    let daemon = spawn_with(&topo.node, "nftables", file.path(), &[]);
    let url = "http://192.168.0.2:30100/any/path";
    let ok = wait_for(
        "the health check node port",
        Duration::from_secs(10),
        || {
            curl(&topo.client, url)
                .filter(|(s, _)| *s == 200)
                .map(|(_, t)| t)
        },
    );
    // kube-proxy's answer: its headers and its tab-indented body; two local, ready endpoints.
    assert!(ok.contains("Content-Type: application/json"), "{ok}");
    assert!(ok.contains("X-Content-Type-Options: nosniff"), "{ok}");
    assert!(ok.contains("X-Load-Balancing-Endpoint-Weight: 2"), "{ok}");
    assert!(
        ok.ends_with("{\n\t\"service\": {\n\t\t\"namespace\": \"agent\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"),
        "{ok}"
    );
    // The last local endpoint stops being ready: 503 within a sync.
    file.replace(&LOCAL.replace("conditions: {ready: true}", "conditions: {ready: false}"));
    let down = wait_for("503", Duration::from_secs(5), || {
        curl(&topo.client, url)
            .filter(|(s, _)| *s == 503)
            .map(|(_, t)| t)
    });
    assert!(down.contains("\"localEndpoints\": 0"), "{down}");
    assert!(
        down.contains("X-Load-Balancing-Endpoint-Weight: 0"),
        "{down}"
    );
    // The Service goes: the port closes.
    let without = LOCAL.split("---").skip(2).collect::<Vec<_>>().join("---");
    file.replace(&without);
    wait_for("the port to close", Duration::from_secs(5), || {
        curl(&topo.client, url).is_none().then(String::new)
    });
    let (ok, log) = terminate(daemon);
    assert!(ok, "{log}");
    assert!(log.contains("health check node port 30100 open"), "{log}");
    assert!(log.contains("health check node port 30100 closed"), "{log}");
}

/// A wrapper for `iptables-restore` that fails while a flag file exists.
struct FailingRestore {
    dir: std::path::PathBuf,
}

impl FailingRestore {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("failing-restore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v iptables-restore"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let script = format!(
            "#!/bin/sh\nif [ -e '{}/fail' ]; then echo 'injected: iptables-restore fails' >&2; exit 1; fi\nexec {} \"$@\"\n",
            dir.display(),
            real.trim()
        );
        let path = dir.join("iptables-restore");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Self { dir }
    }

    fn fail(&self, on: bool) {
        let flag = self.dir.join("fail");
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

impl Drop for FailingRestore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn healthz_turns_unhealthy_when_syncs_stop_and_metrics_count_them() {
    if require(
        "healthz_turns_unhealthy_when_syncs_stop_and_metrics_count_them",
        &["ip", "iptables-restore", "curl", "promtool", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    let topo = Topology::new(&[]);
    let node_yaml = "
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
";
    let file = Manifest::with_text("healthz", &format!("{LOCAL}{node_yaml}"));
    let restore = FailingRestore::new();
    let daemon = spawn_env(
        &topo.node,
        "iptables",
        file.path(),
        &["--sync-period", "1s"],
        &[("PATH", restore.path())],
    );
    let healthz = "http://192.168.0.2:10256/healthz";
    let livez = "http://192.168.0.2:10256/livez";
    let ok = wait_for("/healthz", Duration::from_secs(10), || {
        curl(&topo.client, healthz)
            .filter(|(s, _)| *s == 200)
            .map(|(_, t)| t)
    });
    assert!(
        ok.contains("\"nodeEligible\":true,\"healthy\":true,\"status\":{\"IPv4\":{"),
        "{ok}"
    );
    assert!(ok.contains("X-Content-Type-Options: nosniff"), "{ok}");

    // The first sync has opened the health-check node port (/healthz is healthy from the
    // start, before any sync: waiting for it proves nothing about the port).
    wait_for(
        "the health-check node port",
        Duration::from_secs(10),
        || {
            curl(&topo.client, "http://192.168.0.2:30100/")
                .filter(|(s, _)| *s == 200)
                .map(|(_, t)| t)
        },
    );

    // Syncs fail from now on; a change makes one due. Twice the sync period later the
    // proxy is unhealthy.
    restore.fail(true);
    let failing_since = Instant::now();
    file.edit("10.244.2.12", "10.244.2.13");
    let down = wait_for("/healthz 503", Duration::from_secs(10), || {
        curl(&topo.client, healthz)
            .filter(|(s, _)| *s == 503)
            .map(|(_, t)| t)
    });
    assert!(failing_since.elapsed() >= Duration::from_secs(2), "{down}");
    assert!(down.contains("\"healthy\":false"), "{down}");
    assert_eq!(curl(&topo.client, livez).map(|(s, _)| s), Some(503));
    // The health-check node port says so too.
    let hc = curl(&topo.client, "http://192.168.0.2:30100/").unwrap();
    assert!(
        hc.0 == 503 && hc.1.contains("\"serviceProxyHealthy\": false"),
        "{}",
        hc.1
    );

    // Syncs work again: healthy after the next retry.
    restore.fail(false);
    wait_for("/healthz 200 again", Duration::from_secs(20), || {
        curl(&topo.client, healthz)
            .filter(|(s, _)| *s == 200)
            .map(|(_, t)| t)
    });

    // The autoscaler marks the node for deletion: /healthz fails, /livez does not.
    file.replace(&format!(
        "{LOCAL}{node_yaml}spec: {{taints: [{{key: ToBeDeletedByClusterAutoscaler, value: '1', effect: NoSchedule}}]}}\n"
    ));
    let ineligible = wait_for("an ineligible node", Duration::from_secs(5), || {
        curl(&topo.client, healthz)
            .filter(|(s, _)| *s == 503)
            .map(|(_, t)| t)
    });
    assert!(
        ineligible.contains("\"nodeEligible\":false,\"healthy\":true"),
        "{ineligible}"
    );
    assert_eq!(curl(&topo.client, livez).map(|(s, _)| s), Some(200));

    // The metrics: well formed for promtool, and the histograms count the syncs.
    let metrics = topo
        .node
        .exec_text("curl", &["-s", "http://127.0.0.1:10249/metrics"]);
    let check = std::process::Command::new("sh")
        .args(["-c", "promtool check metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // kube-proxy's own names break two of promtool's naming conventions (a gauge ending in
    // `_total`, counters named per code); anything else is an error.
    for line in lint.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("kubeproxy_sync_proxy_rules_no_local_endpoints_total")
                && line.contains("non-counter metrics should not have \"_total\" suffix"),
            "promtool: {line}\n{metrics}"
        );
    }
    assert_eq!(
        topo.node
            .exec_text("curl", &["-s", "http://127.0.0.1:10249/proxyMode"]),
        "iptables"
    );
    let (ok, log) = terminate(daemon);
    assert!(ok, "{log}");
    let synced = log.matches(": full sync").count() + log.matches(": partial sync").count();
    let failed = log.matches("failed (").count();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let counted = value("kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}");
    // The scrape came before the last syncs the log shows, not after.
    assert!(
        counted >= 3.0 && counted <= synced as f64,
        "{counted} of {synced}:\n{log}"
    );
    assert!(failed >= 1, "{log}");
    assert!(
        value("kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"}")
            >= 1.0,
        "{metrics}"
    );
    assert!(
        value("kubeproxy_proxy_healthz_total{code=\"503\"}") >= 1.0,
        "{metrics}"
    );
    assert!(value("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1.0);
    assert!(
        value("kubeproxy_sync_proxy_rules_iptables_last{ip_family=\"IPv4\",table=\"nat\"}") > 0.0,
        "{metrics}"
    );
    // kube-proxy's nfacct counters exist in the node's namespace, so their metrics do.
    assert_eq!(
        value("kubeproxy_iptables_localhost_nodeports_accepted_packets_total"),
        0.0
    );
    assert!(value("kubeproxy_iptables_ct_state_invalid_dropped_packets_total") >= 0.0);
}

const DUAL: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: dual}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: dual, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: dual, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['fd00:244::10'], nodeName: node-a}
- {addresses: ['fd00:244::11'], nodeName: node-a}
";

fn dual_stack(backend: &str) {
    let mut topo = Topology::new(&[]);
    topo.enable_ipv6();
    for (i, (name, v4, v6)) in [
        ("web-0", "10.244.1.10", "fd00:244::10"),
        ("web-1", "10.244.1.11", "fd00:244::11"),
        ("client", "10.244.1.50", "fd00:244::50"),
    ]
    .into_iter()
    .enumerate()
    {
        topo.add_pod(name, v4);
        topo.add_pod_ipv6(i, v6);
        if name != "client" {
            serve_tcp(&topo.pods[i].ns, 8080, name);
            serve_tcp_at(
                &topo.pods[i].ns,
                format!("[{v6}]:8080").parse().unwrap(),
                name,
            );
        }
    }
    // A second address on the node: kube-proxy's nftables mode serves node ports on the
    // primary node IP only (its default `--nodeport-addresses primary`), the iptables mode
    // on every local address.
    topo.node
        .ip(&["addr", "add", "192.168.0.3/24", "dev", "eth0"]);
    let file = Manifest::with_text(&format!("dual-{backend}"), DUAL);
    let daemon = spawn_with(
        &topo.node,
        backend,
        file.path(),
        &["--node-ip", "fd00:1::2", "--cluster-cidr", "fd00:244::/64"],
    );
    let pod = &topo.pod("client").ns;
    let reach = |ns: &Netns, dst: &str| -> Vec<String> {
        let mut seen: Vec<String> = (0..12)
            .map(
                |_| match tcp_connect(ns, None, dst.parse().unwrap(), Duration::from_secs(1)) {
                    Reached::Server(name, _) => name,
                    other => format!("{other:?}"),
                },
            )
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let both = vec!["web-0".to_owned(), "web-1".to_owned()];
    if std::env::var_os("DEBUG_DUAL").is_some() {
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("{}", daemon.log());
        eprintln!("{}", topo.node.exec_text("ip", &["-6", "addr"]));
        eprintln!("{}", topo.node.exec_text("ip", &["-6", "route"]));
        eprintln!("{}", pod.exec_text("ip", &["-6", "route"]));
        eprintln!("{:?}", reach(pod, "[fd00:244::10]:8080"));
        eprintln!("{:?}", reach(pod, "10.96.0.10:80"));
    }
    eventually(
        "IPv4 and IPv6 rules",
        || format!("{:?}", reach(pod, "[fd00:96::10]:80")),
        |s| s == format!("{both:?}"),
    );
    for (ns, dst) in [
        (pod, "10.96.0.10:80"),
        (pod, "[fd00:96::10]:80"),
        (&topo.client, "192.168.0.2:30080"),
        (&topo.client, "[fd00:1::2]:30080"),
    ] {
        assert_eq!(reach(ns, dst), both, "{backend}: {dst}");
    }
    let secondary = reach(&topo.client, "192.168.0.3:30080");
    if backend == "nftables" {
        assert!(
            !secondary.contains(&"web-0".to_owned()),
            "{backend}: {secondary:?}"
        );
    } else {
        assert_eq!(secondary, both, "{backend}: the secondary node IP");
    }
    let (ok, log) = terminate(daemon);
    assert!(ok, "{log}");
    assert!(log.contains("proxy for IPv4 and IPv6"), "{log}");
    common::cleanup(&topo.node, backend, &[]);
    assert_ne!(
        reach(pod, "[fd00:96::10]:80"),
        both,
        "rules left after --cleanup"
    );
}

#[test]
fn dual_stack_in_one_process_nftables() {
    if require("dual_stack_in_one_process_nftables", &["ip", "nft", "kill"]) == E2e::Skip {
        return;
    }
    dual_stack("nftables");
}

#[test]
fn dual_stack_in_one_process_iptables() {
    if require(
        "dual_stack_in_one_process_iptables",
        &["ip", "iptables-restore", "ip6tables-restore", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    dual_stack("iptables");
}

#[test]
fn the_configuration_file_sets_conntrack_in_the_namespace() {
    if require(
        "the_configuration_file_sets_conntrack_in_the_namespace",
        &["ip", "nft", "kill"],
    ) == E2e::Skip
    {
        return;
    }
    let ns = Netns::new("conntrack");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("agent-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
healthzBindAddress: 127.0.0.1:20256
conntrack: {tcpEstablishedTimeout: 2h0m0s, tcpCloseWaitTimeout: 5m0s}
",
    )
    .unwrap();
    let read = |ns: Option<&Netns>, file: &str| -> String {
        let path = format!("/proc/sys/net/netfilter/{file}");
        match ns {
            Some(ns) => ns.exec_text("cat", &[&path]).trim().to_owned(),
            None => std::fs::read_to_string(&path).unwrap().trim().to_owned(),
        }
    };
    let host_before = read(None, "nf_conntrack_tcp_timeout_established");
    let file = Manifest::with_text("conntrack", LOCAL);
    let daemon = spawn_with(
        &ns,
        "nftables",
        file.path(),
        &["--config", config.to_str().unwrap()],
    );
    eventually(
        "the conntrack timeouts",
        || {
            format!(
                "{} {}",
                read(Some(&ns), "nf_conntrack_tcp_timeout_established"),
                read(Some(&ns), "nf_conntrack_tcp_timeout_close_wait")
            )
        },
        |s| s == "7200 300",
    );
    // /healthz where the file said.
    eventually(
        "/healthz on 127.0.0.1:20256",
        || {
            ns.exec_text(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:20256/healthz",
                ],
            )
        },
        |s| s == "200",
    );
    let (ok, log) = terminate(daemon);
    assert!(ok, "{log}");
    assert_eq!(
        read(None, "nf_conntrack_tcp_timeout_established"),
        host_before,
        "the host's own"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The configuration file's contract, without root: what `--write-config-to` writes reads
/// back the same, flags win over the file, an unknown field fails with its path.
#[test]
fn write_config_to_and_config_round_trip() {
    let dir = std::env::temp_dir().join(format!("agent-write-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let written = dir.join("written.yaml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(args)
            .output()
            .expect("run proxy")
    };
    let out = run(&[
        "--backend",
        "nftables",
        "--sync-period",
        "45s",
        "--node-name",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--conntrack-max-per-core",
        "0",
        "--write-config-to",
        written.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&written).unwrap();
    let c = KubeProxyConfiguration::parse("written", &text).unwrap();
    assert_eq!(c.mode, "nftables");
    assert_eq!(c.nftables.sync_period.0, Duration::from_secs(45));
    assert_eq!(c.cluster_cidr, "10.244.0.0/16");
    assert_eq!(c.hostname_override, "node-a");
    assert_eq!(c.conntrack.max_per_core, Some(0));
    // Read back, then written again: the same file. A flag on the command line wins.
    let again = dir.join("again.yaml");
    let out = run(&[
        "--config",
        written.to_str().unwrap(),
        "--min-sync-period",
        "3s",
        "--write-config-to",
        again.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c2 =
        KubeProxyConfiguration::parse("again", &std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(c2.nftables.min_sync_period.0, Duration::from_secs(3));
    let mut c2_without_flag = c2;
    c2_without_flag.nftables.min_sync_period = c.nftables.min_sync_period;
    assert_eq!(c2_without_flag, c);
    // An unknown field: exit 2, the path named.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables: {syncPeriod: 1s, minSyncPerod: 1s}\n",
    )
    .unwrap();
    let out = run(&["--config", bad.to_str().unwrap(), "x.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("nftables.minSyncPerod") && err.contains("unknown field"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The systemd unit and configuration shipped as examples are what the daemon accepts.
#[test]
fn the_shipped_unit_and_configuration_are_accepted() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    let config = std::fs::read_to_string(format!("{dir}/config.yaml")).unwrap();
    let parsed = KubeProxyConfiguration::parse("config.yaml", &config).unwrap();
    assert_eq!(parsed.mode, "nftables");
    assert!(parsed.ignored().is_empty());
    let unit = std::fs::read_to_string(format!("{dir}/service-proxy.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let (args, matches) = service_examples::agent::ProxyArgs::try_parse_with_sources(&argv)
        .unwrap_or_else(|e| panic!("{exec}: {e}"));
    assert!(args.apply);
    let settings = args.settings(&matches, Some(&parsed)).unwrap();
    assert_eq!(settings.sync_period, Duration::from_secs(30));
}

/// `--nodeport-addresses`: every local address by default, the primary node IPs by
/// default in nftables mode (kube-proxy's `platformApplyDefaults` in
/// cmd/kube-proxy/app/server_linux.go sets `primary` there), `primary` resolved to the
/// first node IP of each family, `0.0.0.0/0` meaning every address again, and `primary`
/// mixed with CIDRs refused.
#[test]
fn nodeport_addresses_primary_and_the_nftables_default() {
    use service_core::model::IpFamily;
    use service_examples::agent::ProxyArgs;
    let settings = |extra: &[&str]| {
        let mut argv = vec![
            "proxy",
            "--node-name",
            "node-a",
            "--node-ip",
            "192.168.0.2",
            "--node-ip",
            "192.168.1.2",
            "--node-ip",
            "fd00::2",
        ];
        argv.extend_from_slice(extra);
        argv.push("x.yaml");
        let (args, matches) = ProxyArgs::try_parse_with_sources(&argv).expect("flags");
        args.settings(&matches, None)
    };
    let ips = |s: &service_examples::agent::Settings, f: IpFamily| {
        s.proxy
            .nodeport_ips(&f)
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let s = settings(&[]).expect("iptables");
    assert_eq!(ips(&s, IpFamily::Ipv4), None);
    let s = settings(&["--backend", "nftables"]).expect("nftables");
    assert_eq!(
        ips(&s, IpFamily::Ipv4),
        Some(vec!["192.168.0.2".to_owned()])
    );
    assert_eq!(ips(&s, IpFamily::Ipv6), Some(vec!["fd00::2".to_owned()]));
    let s = settings(&["--nodeport-addresses", "primary"]).expect("primary");
    assert_eq!(
        ips(&s, IpFamily::Ipv4),
        Some(vec!["192.168.0.2".to_owned()])
    );
    let s = settings(&["--backend", "nftables", "--nodeport-addresses", "0.0.0.0/0"]).expect("all");
    assert_eq!(ips(&s, IpFamily::Ipv4), None);
    // Only IPv4 ranges given: IPv6 node ports stay on every IPv6 address.
    let s = settings(&["--nodeport-addresses", "192.168.1.0/24"]).expect("cidr");
    assert_eq!(
        ips(&s, IpFamily::Ipv4),
        Some(vec!["192.168.1.2".to_owned()])
    );
    assert_eq!(ips(&s, IpFamily::Ipv6), None);
    let err = settings(&[
        "--nodeport-addresses",
        "primary",
        "--nodeport-addresses",
        "10.0.0.0/8",
    ])
    .expect_err("mixed");
    assert!(err.contains("\"primary\" must be the only value"), "{err}");
    let err = ProxyArgs::try_parse_with_sources(&["proxy", "--nodeport-addresses", "nope", "x"])
        .expect_err("not a CIDR")
        .to_string();
    assert!(err.contains("must be a valid CIDR"), "{err}");
}

/// `--detect-local-mode` and its companions, from flags and from the configuration file
/// (`detectLocalMode`, `detectLocal.bridgeInterface`, `detectLocal.interfaceNamePrefix`):
/// each mode resolves, an interface mode without its interface is refused naming the flag
/// or field, and `--write-config-to` writes the mode back.
#[test]
fn detect_local_mode_from_flags_and_file() {
    use service_examples::agent::ProxyArgs;
    use service_examples::kpconfig::KubeProxyConfiguration;
    use service_proxy::DetectLocal;
    let settings = |extra: &[&str], file: Option<&str>| {
        let mut argv = vec!["proxy", "--node-name", "node-a", "--node-ip", "192.168.0.2"];
        argv.extend_from_slice(extra);
        argv.push("x.yaml");
        let (args, matches) = ProxyArgs::try_parse_with_sources(&argv).expect("flags");
        let parsed = file.map(|f| KubeProxyConfiguration::parse("config.yaml", f).unwrap());
        args.settings(&matches, parsed.as_ref())
    };
    assert_eq!(
        settings(&[], None).unwrap().proxy.detect_local,
        DetectLocal::ClusterCidr
    );
    assert_eq!(
        settings(
            &[
                "--detect-local-mode",
                "NodeCIDR",
                "--pod-cidr",
                "10.244.1.0/24"
            ],
            None
        )
        .unwrap()
        .proxy
        .detect_local,
        DetectLocal::NodeCidr
    );
    let s = settings(
        &[
            "--detect-local-mode",
            "NodeCIDR",
            "--pod-cidr",
            "10.244.1.0/24",
        ],
        None,
    )
    .unwrap();
    assert_eq!(s.node.pod_cidrs, vec!["10.244.1.0/24".parse().unwrap()]);
    assert_eq!(
        settings(
            &[
                "--detect-local-mode",
                "InterfaceNamePrefix",
                "--pod-interface-name-prefix",
                "cali"
            ],
            None
        )
        .unwrap()
        .proxy
        .detect_local,
        DetectLocal::InterfaceNamePrefix("cali".into())
    );
    let err = settings(&["--detect-local-mode", "BridgeInterface"], None).unwrap_err();
    assert!(
        err.contains("--pod-bridge-interface") && err.contains("must not be empty"),
        "{err}"
    );
    let err = settings(
        &[
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "a-very-long-bridge0",
        ],
        None,
    )
    .unwrap_err();
    assert!(err.contains("no more than 15 bytes"), "{err}");
    // An unknown mode is refused by the flag parser.
    assert!(
        ProxyArgs::try_parse_with_sources(&["proxy", "--detect-local-mode", "Cluster", "x.yaml"])
            .is_err()
    );

    // The file: its values, unless a flag says otherwise.
    let file = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}\n";
    let s = settings(&[], Some(file)).unwrap();
    assert_eq!(
        s.proxy.detect_local,
        DetectLocal::BridgeInterface("cbr0".into())
    );
    let s = settings(&["--detect-local-mode", "ClusterCIDR"], Some(file)).unwrap();
    assert_eq!(s.proxy.detect_local, DetectLocal::ClusterCidr);
    let written = s.to_config();
    assert_eq!(written.detect_local_mode, "ClusterCIDR");
    let s = settings(&[], Some(file)).unwrap();
    let written = s.to_config();
    assert_eq!(written.detect_local_mode, "BridgeInterface");
    assert_eq!(written.detect_local.bridge_interface, "cbr0");
    assert!(written.ignored().is_empty(), "{:?}", written.ignored());
    let bad = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: InterfaceNamePrefix\n";
    let err = settings(&[], Some(bad)).unwrap_err();
    assert!(err.contains("detectLocal.interfaceNamePrefix"), "{err}");
    let bad = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\ndetectLocalMode: PodCIDR\n";
    let err = settings(&[], Some(bad)).unwrap_err();
    assert!(
        err.contains("detectLocalMode") && err.contains("PodCIDR"),
        "{err}"
    );
}
