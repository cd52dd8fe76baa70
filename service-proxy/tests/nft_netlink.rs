//! The netlink encoder against the `nft` program: every fixture's table, loaded once with
//! `nft -f` from our script and once from our netlink batches, must list identically; and
//! incremental updates sent over netlink must leave the same table as a fresh load.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

use service_proxy::nftables::apply::NftSocket;
use service_proxy::nftables::{NftablesConfig, Renderer, Ruleset};
use service_proxy::{DetectLocal, Proxier, ProxyConfig};
use service_testkit::fixtures;
use service_testkit::netns::{E2e, Netns, require};

fn node_of(yaml: &str) -> (String, Vec<String>, Vec<String>) {
    let line = yaml.lines().next().unwrap_or_default();
    let w: Vec<&str> = line
        .trim_start_matches("# node:")
        .split_whitespace()
        .collect();
    (
        w[0].to_owned(),
        w[1].split(',').map(str::to_owned).collect(),
        w[3].split(',').map(str::to_owned).collect(),
    )
}

fn list(ns: &Netns, family: &str) -> String {
    ns.exec_text("nft", &["list", "table", family, "kube-proxy"])
}

fn load_with_nft(ns: &Netns, script: &str) {
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&path, script).unwrap();
    ns.exec("nft", &["-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
}

fn rulesets_detecting(yaml: &str, detect: DetectLocal) -> Vec<(Renderer, Ruleset)> {
    let (node, ips, cidrs) = node_of(yaml);
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let snapshot = fixtures::snapshot(yaml, &node, &ips);
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    proxy.detect_local = detect;
    proxy.local_addresses = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    proxy.service_cidrs = vec![
        "172.30.0.0/16".parse().unwrap(),
        "fd00:30::/108".parse().unwrap(),
    ];
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let r = Renderer::new(NftablesConfig::new(proxy.clone()), ipv6);
        let rules = r.render(&snapshot);
        out.push((r, rules));
    }
    out
}

#[test]
fn netlink_batches_list_like_nft_scripts() {
    if require("netlink_batches_list_like_nft_scripts", &["ip", "nft"]) == E2e::Skip {
        return;
    }
    let mut cases: Vec<(&str, DetectLocal)> =
        ["demo.yaml", "dual-stack.yaml", "kube-proxy-cluster.yaml"]
            .into_iter()
            .map(|f| (f, DetectLocal::ClusterCidr))
            .collect();
    // The interface detectors' `iifname` matches (whole name and prefix) too.
    cases.push((
        "kube-proxy-cluster.yaml",
        DetectLocal::BridgeInterface("cbr0".into()),
    ));
    cases.push((
        "kube-proxy-cluster.yaml",
        DetectLocal::InterfaceNamePrefix("veth".into()),
    ));
    for (fixture, detect) in cases {
        let yaml = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let iifname = match &detect {
            DetectLocal::BridgeInterface(name) => Some(format!("iifname != \"{name}\"")),
            DetectLocal::InterfaceNamePrefix(p) => Some(format!("iifname != \"{p}*\"")),
            _ => None,
        };
        for (renderer, rules) in rulesets_detecting(&yaml, detect.clone()) {
            let family = renderer.family().as_str();
            let by_nft = Netns::new("nftcmp");
            load_with_nft(&by_nft, &rules.create_one().to_string());
            let by_netlink = Netns::new("nftcmp");
            let mut socket = NftSocket::in_netns(&by_netlink.path()).unwrap();
            for tx in rules.create(7) {
                socket
                    .apply(&[&tx])
                    .unwrap_or_else(|e| panic!("{fixture} {family}: {e}\n{tx}"));
            }
            let listed = list(&by_netlink, family);
            assert!(
                listed.contains("chain services {")
                    && (rules.ports.is_empty() || listed.contains("elements = {")),
                "{fixture} {family}: {listed}"
            );
            if std::env::var("SHOW").is_ok() {
                eprintln!("{listed}");
            }
            if let Some(m) = iifname.as_ref().filter(|_| !rules.ports.is_empty()) {
                assert!(listed.contains(m.as_str()), "{fixture} {family}: {listed}");
            }
            assert_eq!(
                listed,
                list(&by_nft, family),
                "{fixture} {family} {detect:?}"
            );
        }
    }
}

/// A listing with its sets and chains, and the elements of each set, in sorted order (the
/// kernel lists objects in creation order and elements in hash order, which depend on
/// history).
fn normalized(listing: &str) -> String {
    let mut blocks: Vec<String> = sorted_elements(listing)
        .split("\n\n")
        .map(|b| {
            b.trim_matches(|c| c == '\n' || c == '\t' || c == '}')
                .to_owned()
        })
        .collect();
    blocks.sort();
    blocks.join("\n\n")
}

fn sorted_elements(listing: &str) -> String {
    let mut out = String::new();
    let mut rest = listing;
    while let Some(at) = rest.find("elements = {") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "elements = {".len()..];
        let end = after.find('}').unwrap();
        let mut items: Vec<String> = after[..end]
            .split(',')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        items.sort();
        out.push_str(&format!("elements = {{ {} }}", items.join(", ")));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

mod common;

/// A ruleset's meaning, independent of where each Service's endpoints sit in the endpoint
/// map: every port's chains with `numgen` DNAT statements resolved to their endpoints, and
/// every element outside the endpoint map.
fn canonical(rules: &Ruleset) -> String {
    use service_proxy::nftables::{Data, FixedSet, Key, Stmt};
    let mut out = String::new();
    for (name, objs) in &rules.ports {
        out.push_str(&format!("port {}\n", name.name()));
        for c in &objs.chains {
            out.push_str(&format!("  chain {}\n", c.name));
            for r in &c.rules {
                let mut line = String::new();
                for s in &r.stmts {
                    match s {
                        Stmt::DnatMap {
                            shard,
                            offset,
                            count,
                        } => {
                            // Each endpoint's share of the block, wherever it sits.
                            let end = u64::from(*offset) + u64::from(*count);
                            let mut ranges: Vec<(u32, String)> = objs
                                .elements
                                .iter()
                                .filter_map(|e| match (e.set, e.key, &e.data) {
                                    (
                                        FixedSet::Endpoints(s),
                                        Key::Range(first, last),
                                        Some(Data::Endpoint(a)),
                                    ) if s == *shard
                                        && first >= *offset
                                        && u64::from(last) < end =>
                                    {
                                        Some((first, format!("{a} x{}", last - first + 1)))
                                    }
                                    _ => None,
                                })
                                .collect();
                            ranges.sort();
                            let targets: Vec<String> = ranges.into_iter().map(|(_, t)| t).collect();
                            line.push_str(&format!("dnat-one-of {targets:?} "));
                        }
                        other => line.push_str(&format!("{other:?} ")),
                    }
                }
                out.push_str(&format!("    {line}\n"));
            }
        }
        out.push_str(&format!(
            "  endpoints {:?}\n  affinity {:?}\n",
            objs.endpoints, objs.affinity
        ));
    }
    let mut elements: Vec<String> = rules
        .elements()
        .into_iter()
        .filter(|e| !matches!(e.set, FixedSet::Endpoints(_)))
        .map(|e| format!("{e:?}"))
        .collect();
    elements.sort();
    out.push_str(&elements.join("\n"));
    out
}

#[test]
fn incremental_updates_leave_the_table_a_fresh_load_would() {
    if require(
        "incremental_updates_leave_the_table_a_fresh_load_would",
        &["ip", "nft"],
    ) == E2e::Skip
    {
        return;
    }
    use common::{CLUSTER, snapshot_of};
    let web = "- {addresses: [10.244.2.12], nodeName: node-b}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky";
    let steps: Vec<String> = vec![
        CLUSTER.to_owned(),
        // An endpoint leaves the web Service.
        CLUSTER.replacen(
            web,
            &web.replacen("- {addresses: [10.244.2.12], nodeName: node-b}\n", "", 1),
            1,
        ),
        // The sticky Service loses affinity, the NodePort changes, a Service disappears.
        CLUSTER
            .replace("  sessionAffinity: ClientIP\n", "")
            .replace("nodePort: 30080", "nodePort: 30090")
            .replace(
                "metadata: {name: self, namespace: e2e}",
                "metadata: {name: self2, namespace: e2e}",
            ),
        // The web Service outgrows its block of the endpoint map (3 -> 5 endpoints).
        CLUSTER.replacen(web, &format!("- {{addresses: [10.244.3.1], nodeName: node-b}}\n- {{addresses: [10.244.3.2], nodeName: node-b}}\n{web}"), 1),
        // The sticky Service's affinity timeout changes: declaring its affinity sets again
        // with the new timeout updates them in place (this kernel does; the listing shows
        // it), keeping the clients they hold.
        CLUSTER.replace(
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        ),
        // Two Services claim the same external IP and port.
        CLUSTER.replace(
            "clusterIP: 10.96.0.16\n",
            "clusterIP: 10.96.0.16\n  externalIPs: [192.0.2.10]\n",
        ),
        CLUSTER.to_owned(),
    ];
    let node = Netns::new("nftinc");
    let mut socket = NftSocket::in_netns(&node.path()).unwrap();
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    proxy.local_addresses = vec!["192.168.0.2".parse().unwrap()];
    let renderer = Renderer::new(NftablesConfig::new(proxy), false);
    let mut snap = snapshot_of(&steps[0], None);
    let mut rules = renderer.render(&snap);
    for tx in rules.create(50) {
        socket.apply(&[&tx]).unwrap();
    }
    for (i, yaml) in steps.iter().enumerate().skip(1) {
        let next = snapshot_of(yaml, Some(&snap));
        let changed: Vec<_> = next.diff(&snap).ports.into_iter().map(|(n, _)| n).collect();
        assert!(!changed.is_empty(), "step {i} changes something");
        // Alternate partial updates and full comparisons.
        let only = (i % 2 == 1).then_some(&changed[..]);
        let update = renderer.update(&mut rules, &next, only);
        socket
            .apply(&[&update.transaction])
            .unwrap_or_else(|e| panic!("step {i}: {e}\n{}", update.transaction));
        // The updated model means what a fresh render means (the blocks of the endpoint
        // map may sit at other indexes).
        let fresh = renderer.render(&next);
        assert_eq!(
            canonical(&rules),
            canonical(&fresh),
            "step {i}: in-memory state"
        );
        // The kernel holds exactly the updated model (stale chains are flushed, so left
        // out).
        let other = Netns::new("nftinc");
        load_with_nft(&other, &rules.create_one().to_string());
        let mut ours = list(&node, "ip");
        for s in &update.stale {
            ours = ours.replace(&format!("\tchain {} {{\n\t}}\n\n", s.name), "");
            ours = ours.replace(&format!("\n\n\tchain {} {{\n\t}}", s.name), "");
        }
        assert_eq!(
            normalized(&ours),
            normalized(&list(&other, "ip")),
            "step {i}"
        );
        // Stale chains go in a later transaction.
        let mut tx = service_proxy::nftables::Transaction::new(rules.family);
        for s in &update.stale {
            tx.ops
                .push(service_proxy::nftables::Op::DeleteChain(s.name.clone()));
        }
        socket
            .apply(&[&tx])
            .unwrap_or_else(|e| panic!("step {i} stale: {e}"));
        snap = next;
    }
}

#[test]
fn nft_program_fallback_applies_the_same_table() {
    if require(
        "nft_program_fallback_applies_the_same_table",
        &["ip", "nft"],
    ) == E2e::Skip
    {
        return;
    }
    use common::{CLUSTER, snapshot_of};
    use service_proxy::nftables::apply::{NftProgram, NftProxier};
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    let renderer = || Renderer::new(NftablesConfig::new(proxy.clone()), false);
    let by_program = Netns::new("nftprog");
    let mut a = NftProxier::new(renderer(), NftProgram::in_netns(by_program.name()));
    let first = snapshot_of(CLUSTER, None);
    let next = snapshot_of(
        &CLUSTER.replace("  sessionAffinity: ClientIP\n", ""),
        Some(&first),
    );
    for snap in [&first, &next] {
        // Each sync rebuilds the table with nft, as a cold start over netlink builds it.
        let report = a.sync_to(snap).expect("nft -f");
        assert_eq!(report.nftables().unwrap().transactions, 1);
        let by_netlink = Netns::new("nftprog");
        let mut b = NftProxier::new(renderer(), NftSocket::in_netns(&by_netlink.path()).unwrap());
        b.sync_to(snap).expect("netlink");
        assert_eq!(
            normalized(&list(&by_program, "ip")),
            normalized(&list(&by_netlink, "ip"))
        );
    }
    // A script the kernel refuses is an error that says why.
    let mut broken = NftProgram::in_netns(by_program.name());
    let mut tx = service_proxy::nftables::Transaction::new(service_proxy::nftables::Family::Ip);
    tx.ops.push(service_proxy::nftables::Op::FlushChain(
        "no-such-chain".into(),
    ));
    let err = service_proxy::nftables::apply::Applier::apply(&mut broken, &[&tx]).unwrap_err();
    assert!(err.to_string().contains("no-such-chain"), "{err}");
    a.cleanup().unwrap();
    assert_eq!(by_program.exec_text("nft", &["list", "ruleset"]), "");
}
