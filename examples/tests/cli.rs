//! The command-line contracts of DESIGN.md, run as a user runs them.

use std::path::PathBuf;
use std::process::{Command, Output};

fn demo() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/demo.yaml").to_owned()
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("spawn example")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A manifest written to a temporary file that is removed on drop.
struct TempManifest(PathBuf);

impl TempManifest {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}-{name}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempManifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn readme_render_command_prints_a_restore_input() {
    let out = stdout(&run(
        env!("CARGO_BIN_EXE_render"),
        &[
            "--backend",
            "iptables",
            "--node-name",
            "node-a",
            "--node-ip",
            "192.168.0.2",
            "--cluster-cidr",
            "10.244.0.0/16",
            &demo(),
        ],
    ));
    assert!(out.starts_with("*filter\n"), "{out}");
    assert!(out.contains("-A KUBE-SERVICES -m comment --comment \"shop/web:http cluster IP\""));
    assert!(out.trim_end().ends_with("COMMIT"));
}

#[test]
fn invalid_input_exits_2_and_names_the_field() {
    let bad = TempManifest::new(
        "bad",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n",
    );
    for bin in [
        env!("CARGO_BIN_EXE_validate"),
        env!("CARGO_BIN_EXE_envvars"),
    ] {
        let out = run(bin, &[bad.path()]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("spec.ports[0].port"), "{err}");
    }
}

#[test]
fn envvars_for_a_namespace() {
    let out = stdout(&run(
        env!("CARGO_BIN_EXE_envvars"),
        &["--namespace", "shop", &demo()],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"WEB_SERVICE_HOST=10.96.10.20"));
    assert!(lines.contains(&"WEB_SERVICE_PORT_METRICS=9090"));
    assert!(lines.contains(&"WEB_PORT_9090_TCP=tcp://10.96.10.20:9090"));
    assert!(lines.contains(&"KUBERNETES_SERVICE_HOST=10.96.0.1"));
    // Headless and ExternalName services have no variables; other namespaces neither.
    assert!(!out.contains("DB_SERVICE_HOST"), "{out}");
    assert!(!out.contains("PAYMENTS_"), "{out}");
    assert!(!out.contains("KUBE_DNS_"), "{out}");

    let out = stdout(&run(
        env!("CARGO_BIN_EXE_envvars"),
        &["--namespace", "shop", "--no-service-links", &demo()],
    ));
    assert!(out.lines().all(|l| l.starts_with("KUBERNETES_")), "{out}");
    assert_eq!(out.lines().count(), 8);
}

#[test]
fn envvars_for_a_pod() {
    let pod = TempManifest::new(
        "pod",
        r"apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  containers:
  - name: app
    image: busybox
    env:
    - {name: WEB_SERVICE_HOST, value: override}
    - {name: URL, value: 'http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/$(MISSING)'}
    - name: NS
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
",
    );
    let out = stdout(&run(
        env!("CARGO_BIN_EXE_envvars"),
        &[
            "--namespace",
            "shop",
            "--pod",
            "client",
            &demo(),
            pod.path(),
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "WEB_SERVICE_HOST=override",
            "URL=http://override:80/$(MISSING)",
            "NS=shop"
        ]
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("WEB_SERVICE_HOST="))
            .count(),
        1
    );
    assert!(lines.contains(&"WEB_SERVICE_PORT=80"));

    let out = run(
        env!("CARGO_BIN_EXE_envvars"),
        &["--namespace", "shop", "--pod", "nobody", &demo()],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn allocate_prints_what_each_service_got_or_its_error() {
    let m = TempManifest::new(
        "alloc",
        r"apiVersion: v1
kind: Service
metadata: {name: a}
spec: {type: NodePort, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {clusterIP: 10.0.0.10, ports: [{port: 80, nodePort: 30007}], type: NodePort}
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {clusterIP: 10.0.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: d}
spec: {ports: [{port: 80}]}
",
    );
    let out = run(
        env!("CARGO_BIN_EXE_allocate"),
        &[
            "--service-cidr",
            "10.0.0.0/28",
            "--node-port-range",
            "30000-30009",
            "--seed",
            "7",
            m.path(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("default/a: clusterIPs=10.0.0."),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "default/b: clusterIPs=10.0.0.10 ipFamilies=IPv4 nodePorts=80/TCP=30007"
    );
    assert!(
        lines[2].ends_with(r#"Service "c" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.0.10"}: failed to allocate IP 10.0.0.10: provided IP is already allocated"#),
        "{text}"
    );
    assert!(lines[2].starts_with("default/c: error 422"), "{text}");
    assert!(
        lines[3].starts_with("default/d: clusterIPs=10.0.0."),
        "{text}"
    );
}

fn node_flags() -> Vec<String> {
    [
        "--node-name",
        "node-a",
        "--node-ip",
        "192.168.0.2",
        "--cluster-cidr",
        "10.244.0.0/16",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `render --backend BACKEND` with [`node_flags`] on the demo manifests.
fn render_demo(backend: &str) -> String {
    let mut args: Vec<String> = vec!["--backend".into(), backend.into()];
    args.extend(node_flags());
    args.push(demo());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stdout(&run(env!("CARGO_BIN_EXE_render"), &args))
}

#[test]
fn render_ipvs_prints_the_plan_then_its_iptables_rules() {
    let out = render_demo("ipvs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "# ipvsadm -S -n");
    assert!(lines.contains(&"-A -t 10.96.10.20:80 -s rr"), "{out}");
    assert!(
        lines.contains(&"# ip addr add 10.96.10.20/32 dev kube-ipvs0"),
        "{out}"
    );
    assert!(
        lines.contains(&"# ipset add KUBE-CLUSTER-IP 10.96.10.20,tcp:80"),
        "{out}"
    );
    // Then the fixed rules, ready for `iptables-restore --noflush`.
    let rules = out
        .split_once("# iptables-restore --noflush\n")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        rules.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"),
        "{rules}"
    );
    assert!(rules.contains(
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT"
    ));
    assert!(rules.trim_end().ends_with("COMMIT"));
}

#[test]
fn render_nftables_prints_a_script_that_replaces_our_table() {
    let out = render_demo("nftables");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..3],
        &[
            "add table ip kube-proxy",
            "delete table ip kube-proxy",
            "add table ip kube-proxy"
        ]
    );
    // The web Service's ClusterIP goes to its service chain, named as kube-proxy names it.
    let web = lines
        .iter()
        .find(|l| {
            l.starts_with(
                "add element ip kube-proxy service-ips { 10.96.10.20 . tcp . 80 : goto service-",
            )
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert!(web.ends_with("-shop/web/tcp/http }"), "{web}");
}

#[test]
fn trace_agrees_between_backends_and_shows_their_differences() {
    let trace = |backend: &str, dst: &str| {
        let mut args: Vec<String> = vec![
            "--backend".into(),
            backend.into(),
            "--src".into(),
            "10.244.1.5".into(),
            "--dst".into(),
            dst.into(),
        ];
        args.extend(node_flags());
        args.push(demo());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout(&run(env!("CARGO_BIN_EXE_trace"), &args))
    };
    let expected = "10.244.1.5 -> 10.96.10.20:80 (TCP)\n  -> 10.244.1.10:8080 (source kept)\n  -> 10.244.2.10:8080 (source kept)\n";
    assert_eq!(trace("iptables", "10.96.10.20:80"), expected);
    assert_eq!(trace("nftables", "10.96.10.20:80"), expected);
    assert_eq!(trace("ipvs", "10.96.10.20:80"), expected);
    // A port the Service does not have: nftables and IPVS modes reject it, iptables mode
    // lets it by.
    assert!(trace("nftables", "10.96.10.20:81").ends_with("  REJECT\n"));
    assert!(trace("ipvs", "10.96.10.20:81").ends_with("  REJECT\n"));
    assert!(trace("iptables", "10.96.10.20:81").ends_with("  not handled\n"));
}

/// `--detect-local-mode InterfaceNamePrefix`: the rules match the pods' interfaces, and
/// `trace --in-interface` tells a pod's packet from one with the same address arriving on
/// the uplink. A mode without its interface is a usage error naming the flag.
#[test]
fn detect_local_by_interface_prefix() {
    let trace = |src: &str, iif: &str| {
        let mut args: Vec<String> = vec![
            "--backend".into(),
            "nftables".into(),
            "--src".into(),
            src.into(),
            "--dst".into(),
            "10.96.10.20:80".into(),
            "--in-interface".into(),
            iif.into(),
            "--detect-local-mode".into(),
            "InterfaceNamePrefix".into(),
            "--pod-interface-name-prefix".into(),
            "cali".into(),
        ];
        args.extend(node_flags());
        args.push(demo());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout(&run(env!("CARGO_BIN_EXE_trace"), &args))
    };
    assert!(trace("10.244.1.5", "cali12").contains("(source kept)"));
    assert!(!trace("10.244.1.5", "eth0").contains("(source kept)"));

    let mut args: Vec<String> = vec![
        "--backend".into(),
        "iptables".into(),
        "--detect-local-mode".into(),
        "InterfaceNamePrefix".into(),
        "--pod-interface-name-prefix".into(),
        "cali".into(),
    ];
    args.extend(node_flags());
    args.push(demo());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let rules = stdout(&run(env!("CARGO_BIN_EXE_render"), &argv));
    assert!(
        rules.contains("--dport 80 ! -i cali+ -j KUBE-MARK-MASQ"),
        "{rules}"
    );

    let out = run(
        env!("CARGO_BIN_EXE_render"),
        &[
            "--detect-local-mode",
            "BridgeInterface",
            "--node-name",
            "node-a",
            &demo(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--pod-bridge-interface"), "{err}");
}

/// Legacy Endpoints reach the proxy as the mirroring controller's slices: a Service
/// without a selector is served from its Endpoints; a Service with a selector ignores
/// them, as kube-proxy (which reads EndpointSlices only) does.
#[test]
fn legacy_endpoints_are_mirrored_for_services_without_a_selector() {
    let manifest = |selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.30\n{selector}  ports: [{{name: sql, port: 5432}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: db, namespace: shop}}\nsubsets:\n- addresses: [{{ip: 192.168.5.10}}]\n  ports: [{{name: sql, port: 5432}}]\n"
        )
    };
    let trace = |file: &TempManifest| {
        let mut args: Vec<String> = vec![
            "--src".into(),
            "10.244.1.5".into(),
            "--dst".into(),
            "10.96.0.30:5432".into(),
        ];
        args.extend(node_flags());
        args.push(file.path().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout(&run(env!("CARGO_BIN_EXE_trace"), &args))
    };
    let plain = TempManifest::new("mirror-plain", &manifest(""));
    assert!(
        trace(&plain).contains("-> 192.168.5.10:5432"),
        "{}",
        trace(&plain)
    );
    let selected = TempManifest::new("mirror-selector", &manifest("  selector: {app: db}\n"));
    let out = trace(&selected);
    assert!(!out.contains("192.168.5.10"), "{out}");
}

/// ServiceCIDRs in the files: `allocate` takes ClusterIPs from them as Kubernetes 1.33
/// does (a full default range continues in the next), and `validate` reports an invalid
/// one with the API server's message.
#[test]
fn allocate_and_validate_take_service_cidrs() {
    let m = TempManifest::new(
        "cidrs",
        r"apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: extra}
spec: {cidrs: [10.1.0.0/30]}
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {ports: [{port: 80}]}
",
    );
    let out = run(
        env!("CARGO_BIN_EXE_allocate"),
        &["--service-cidr", "10.0.0.0/30", "--seed", "3", m.path()],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "servicecidr/extra: 10.1.0.0/30", "{text}");
    // Two addresses in the default /30, then the extra range.
    let ips: Vec<&str> = lines[1..]
        .iter()
        .map(|l| {
            l.split("clusterIPs=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ips.iter().filter(|ip| ip.starts_with("10.0.0.")).count(),
        2,
        "{text}"
    );
    assert_eq!(
        ips.iter().filter(|ip| ip.starts_with("10.1.0.")).count(),
        1,
        "{text}"
    );

    let bad = TempManifest::new(
        "bad-cidr",
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: twice}\nspec: {cidrs: [10.0.0.0/24, 10.1.0.0/24]}\n",
    );
    let out = run(env!("CARGO_BIN_EXE_validate"), &[bad.path()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceCIDR \"twice\" is invalid: spec.cidrs: Invalid value: networking.ServiceCIDRSpec{CIDRs:[]string{\"10.0.0.0/24\", \"10.1.0.0/24\"}}: may specify no more than one IP for each IP family"),
        "{err}"
    );
}
