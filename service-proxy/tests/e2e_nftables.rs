//! Kernel end-to-end tests of the nftables backend: the table is sent over netlink into a
//! node network namespace, and real TCP and UDP connections from an external client and
//! from pod namespaces must reach the expected endpoints. The flow table is the one the
//! iptables backend passes (`common::flows`), with the differences kube-proxy's nftables
//! mode has by design; for every flow the tracer must agree with the kernel.
//!
//! Needs root; skips with a message otherwise (fails instead with `SERVICE_E2E=require`).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Backend, CLUSTER, Env, From, NODE_IP, NODE_POD_CIDR, TIMEOUT, check, ip, local_traffic_cases,
    names, run_flows, run_local_traffic_case, sa, snapshot_of, snapshot_with_pod_cidrs,
};
use service_proxy::ProxyConfig;
use service_proxy::conntrack::Conntrack;
use service_proxy::nftables::apply::{KernelView, NftProxier, NftSocket};
use service_proxy::nftables::{Family, NftablesConfig, Renderer, Stmt, TableState, endpoint_range};
use service_proxy::trace::Packet;
use service_proxy::{Proxier, SyncErrorKind, SyncKind};
use service_testkit::netns::{E2e, Netns, Reached, UdpClient, require, tcp_connect};

fn config() -> NftablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    proxy.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    proxy.local_addresses = vec![ip(NODE_IP)];
    NftablesConfig::new(proxy)
}

/// `--detect-local-mode`: each mode's rules in the kernel, with pods, the client and the
/// node connecting to a ClusterIP and a Local-policy load balancer.
#[test]
fn nftables_local_traffic_detection() {
    if require("nftables_local_traffic_detection", &["ip", "nft"]) == E2e::Skip {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    let snap = snapshot_with_pod_cidrs(CLUSTER, &[NODE_POD_CIDR]);
    for case in local_traffic_cases() {
        let mut config = config();
        config.proxy.detect_local = case.mode.clone();
        let socket = NftSocket::in_netns(&node.path()).expect("netlink socket");
        let mut proxier = NftProxier::new(Renderer::new(config, false), socket);
        proxier.sync_to(&snap).expect("sync");
        let rules = proxier.rules().unwrap().clone();
        let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]);
        run_local_traffic_case(&env, &trace, &case, Backend::Nftables);
        proxier.cleanup().expect("cleanup");
    }
}

fn proxier(node: &Netns) -> NftProxier {
    let socket = NftSocket::in_netns(&node.path()).expect("netlink socket in the node namespace");
    let conntrack = Conntrack::in_netns(&node.path()).expect("conntrack socket");
    NftProxier::new(Renderer::new(config(), false), socket).with_conntrack(conntrack)
}

/// The web Service's slice, with these endpoint lines.
const WEB_SLICE: &str = "metadata: {name: web-1, namespace: e2e, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n- {addresses: [10.244.2.12], nodeName: node-b}\n";

/// [`CLUSTER`] with the web Service's endpoints (and the sticky one's, which has ClientIP
/// affinity and so endpoint chains) restricted to these pod IPs.
fn with_web_endpoints(ips: &[&str]) -> String {
    let mut out = CLUSTER.to_owned();
    for slice in [WEB_SLICE.to_owned(), WEB_SLICE.replace("web", "sticky")] {
        let kept: String = slice
            .lines()
            .filter(|l| !l.starts_with("- {addresses") || ips.iter().any(|ip| l.contains(ip)))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(out.contains(&slice), "{slice}");
        out = out.replace(&slice, &kept);
    }
    out
}

fn ruleset(node: &Netns) -> String {
    node.exec_text("nft", &["list", "ruleset"])
}

#[test]
fn nftables_end_to_end() {
    if require("nftables_end_to_end", &["ip", "nft"]) == E2e::Skip {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    // Somebody else's table, which must survive everything the proxy does.
    node.exec("nft", &["add", "table", "ip", "other"]);
    node.exec(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "other",
            "input",
            "{ type filter hook input priority 10 ; }",
        ],
    );
    node.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "other",
            "input",
            "ip saddr 198.18.0.1 counter",
        ],
    );
    let pristine = ruleset(node);

    let mut proxier = proxier(node);
    let snap = snapshot_of(CLUSTER, None);
    let report = proxier.sync_to(&snap).expect("first sync");
    assert_eq!(report.kind, SyncKind::Full);
    // A cold start is one transaction: the kernel holds no table or the whole one.
    assert_eq!(report.nftables().unwrap().transactions, 1, "{report:?}");
    let rules = proxier.rules().unwrap().clone();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]);
    run_flows(&env, &trace, Backend::Nftables);
    // nftables mode drops traffic to service addresses no Service has.
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.99:80", 1),
        names(&["Timeout"])
    );

    // UDP: a client keeps its flow on one endpoint (conntrack) until that endpoint goes.
    let resolver = UdpClient::new(&env.topo.pods[env.client_pod].ns);
    let first = match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
        Reached::Server(name, _) => name,
        other => panic!("UDP service: {other:?}"),
    };
    for _ in 0..5 {
        assert_eq!(
            resolver.ask(sa("10.96.0.53:53"), TIMEOUT),
            Reached::Server(first.clone(), ip("10.244.1.50"))
        );
    }
    let gone_ip = env.topo.pod(&first).ip.to_string();
    let dns_old = "ports: [{name: dns, port: 5353, protocol: UDP}]\nendpoints:\n- {addresses: [10.244.1.10], nodeName: node-a}\n- {addresses: [10.244.1.11], nodeName: node-a}\n- {addresses: [10.244.2.12], nodeName: node-b}\n";
    let dns_new: String = dns_old
        .lines()
        .filter(|l| !l.contains(&gone_ip))
        .map(|l| format!("{l}\n"))
        .collect();
    let yaml = with_web_endpoints(&["10.244.1.10", "10.244.1.11"]).replace(dns_old, &dns_new);
    let next = snapshot_of(&yaml, Some(&snap));
    let report = proxier.sync_to(&next).expect("partial sync");
    assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
    assert_eq!(
        report.service_ports_changed, 3,
        "web, sticky and dns: {report:?}"
    );
    assert_eq!(report.nftables().unwrap().transactions, 1);
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    let rules = proxier.rules().unwrap().clone();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]);
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.10:80", 30),
        names(&["web-0", "web-1"])
    );
    match resolver.ask(sa("10.96.0.53:53"), TIMEOUT) {
        Reached::Server(name, _) => assert_ne!(name, first, "the UDP flow moved off"),
        other => panic!("UDP after the endpoint left: {other:?}"),
    }
    // A sync without changes sends nothing.
    let report = proxier.sync_to(&next).expect("no-op sync");
    let d = report.nftables().unwrap();
    assert_eq!((d.transactions, d.messages), (0, 0), "{report:?}");
    assert!(!report.wrote);

    // Someone deletes our table: the next change fails, and the sync after it rebuilds.
    node.exec("nft", &["delete", "table", "ip", "kube-proxy"]);
    let again = snapshot_of(CLUSTER, Some(&next));
    assert!(
        proxier.sync_to(&again).is_err(),
        "a transaction on a missing table fails"
    );
    let report = proxier.sync_to(&again).expect("rebuild");
    assert_eq!(report.kind, SyncKind::Full);
    let rules = proxier.rules().unwrap().clone();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]);
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.10:80", 40),
        names(&["web-0", "web-1", "web-2"])
    );

    // Cleanup leaves the other table as it was, and a second cleanup is a no-op.
    proxier.cleanup().expect("cleanup");
    assert_eq!(ruleset(node), pristine);
    proxier.cleanup().expect("second cleanup");
    assert_eq!(ruleset(node), pristine);
}

#[test]
fn endpoints_change_under_traffic_without_misrouting() {
    if require(
        "endpoints_change_under_traffic_without_misrouting",
        &["ip", "nft"],
    ) == E2e::Skip
    {
        return;
    }
    let env = Arc::new(Env::new());
    let node = &env.topo.node;
    let mut proxier = proxier(node);
    proxier.chain_delete_delay = Duration::from_millis(300);
    let steps: [&[&str]; 7] = [
        &["10.244.1.10", "10.244.1.11", "10.244.2.12"],
        &["10.244.1.10", "10.244.1.11"],
        &["10.244.2.12"],
        &["10.244.1.10", "10.244.2.12"],
        &["10.244.1.11"],
        &["10.244.1.10", "10.244.1.11", "10.244.2.12"],
        &["10.244.1.10"],
    ];
    let pod_names = |ips: &[&str]| -> BTreeSet<String> {
        ips.iter()
            .map(|i| {
                env.topo
                    .pods
                    .iter()
                    .find(|p| p.ip == ip(i))
                    .unwrap()
                    .name
                    .clone()
            })
            .collect()
    };
    let expected: Vec<BTreeSet<String>> = steps.iter().map(|s| pod_names(s)).collect();
    let mut snap = snapshot_of(&with_web_endpoints(steps[0]), None);
    proxier.sync_to(&snap).expect("first sync");

    // Clients connect continuously; each connection records the sync epoch around it.
    let epoch = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (env, epoch, stop) = (env.clone(), epoch.clone(), stop.clone());
        // Test clients: a thread each, joined below.
        #[allow(clippy::disallowed_methods)]
        clients.push(std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let before = epoch.load(Ordering::SeqCst);
                let got = tcp_connect(
                    &env.topo.pods[env.client_pod].ns,
                    None,
                    sa("10.96.0.10:80"),
                    Duration::from_secs(2),
                );
                let after = epoch.load(Ordering::SeqCst);
                seen.push((before, after, got));
            }
            seen
        }));
    }
    let mut deleted = 0;
    for (i, step) in steps.iter().enumerate().skip(1) {
        std::thread::sleep(Duration::from_millis(400));
        snap = snapshot_of(&with_web_endpoints(step), Some(&snap));
        let report = proxier.sync_to(&snap).expect("sync under traffic");
        assert_eq!(report.kind, SyncKind::Partial);
        deleted += report.nftables().unwrap().chains_deleted;
        epoch.store(i, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        for (before, after, got) in c.join().unwrap() {
            total += 1;
            // The connection may have met any state from the one before it started to
            // the one being installed when it ended.
            let last = (after + 1).min(steps.len() - 1);
            let allowed: BTreeSet<String> =
                expected[before..=last].iter().flatten().cloned().collect();
            match &got {
                Reached::Server(name, _) => assert!(
                    allowed.contains(name),
                    "epochs {before}..{after}: reached {name}, allowed {allowed:?}"
                ),
                other => panic!("epochs {before}..{after}: connection failed: {other:?}"),
            }
        }
    }
    assert!(total > 20, "only {total} connections");
    // Endpoint chains that left were deleted after the delay, and none is left over.
    std::thread::sleep(Duration::from_millis(350));
    deleted += proxier
        .sync_to(&snap)
        .unwrap()
        .nftables()
        .unwrap()
        .chains_deleted;
    assert!(deleted >= 3, "stale chains deleted: {deleted}");
    assert_eq!(proxier.pending_chain_deletes(), 0);
    let chains = node.exec_text("nft", &["list", "chains", "ip"]);
    let endpoint_chains = chains.matches("chain endpoint-").count();
    let live: usize = proxier
        .rules()
        .unwrap()
        .ports
        .values()
        .map(|p| p.endpoints.len())
        .sum();
    assert_eq!(endpoint_chains, live, "{chains}");
}

/// What the kernel holds of our table, read back over netlink.
fn kernel_state(node: &Netns) -> TableState {
    let mut socket = NftSocket::in_netns(&node.path()).expect("netlink socket");
    match socket.read_state(Family::Ip).expect("read the table") {
        KernelView::Table(state) => state,
        other => panic!("no table: {other:?}"),
    }
}

/// A restarted proxier adopts the table without sending anything, and every kind of
/// tampering is found and repaired by the next full sync (the periodic resync), with
/// traffic flowing again.
#[test]
fn tampering_is_repaired_and_a_restart_adopts_the_table() {
    if require(
        "tampering_is_repaired_and_a_restart_adopts_the_table",
        &["ip", "nft"],
    ) == E2e::Skip
    {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    let snap = snapshot_of(CLUSTER, None);
    let mut first = proxier(node);
    first.sync_to(&snap).expect("first sync");
    let expected = first.rules().unwrap().expected_state();
    assert_eq!(kernel_state(node), expected, "the table as we sent it");
    drop(first);

    // A restart: the new proxier reads the table and finds nothing to change.
    let mut restarted = proxier(node);
    let report = restarted.sync_to(&snap).expect("adopting sync");
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(report.repaired, 0, "{report}");
    assert_eq!(report.nftables().unwrap().transactions, 0, "{report}");
    assert_eq!(kernel_state(node), expected);

    let rules = restarted.rules().unwrap().clone();
    let trace = |p: &Packet| rules.trace(p, &[ip(NODE_IP)]);
    let web = names(&["web-0", "web-1", "web-2"]);
    assert_eq!(
        check(&env, &trace, From::ClientPod, "10.96.0.10:80", 30),
        web
    );

    // Each tampering, then the periodic full sync.
    let handle = |chain: &str| {
        let listing = node.exec_text("nft", &["-a", "list", "chain", "ip", "kube-proxy", chain]);
        // The chain's own line carries a handle too; rules are the other lines.
        listing
            .lines()
            .filter(|l| !l.trim_start().starts_with("chain "))
            .find_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().to_owned()))
            .unwrap_or_else(|| panic!("no rule in {chain}:\n{listing}"))
    };
    let service_chain = expected
        .chains
        .keys()
        .find(|c| c.starts_with("service-") && c.contains("e2e/web/tcp/http"))
        .expect("web's service chain")
        .clone();
    // Where the web Service's endpoints sit in the endpoint maps: its map, and the range
    // of its first endpoint.
    let (shard, first, last) = rules
        .ports
        .values()
        .flat_map(|p| p.chains.iter())
        .filter(|c| c.name.as_ref() == service_chain.as_str())
        .flat_map(|c| c.rules.iter())
        .flat_map(|r| r.stmts.iter())
        .find_map(|s| match s {
            Stmt::DnatMap {
                shard,
                offset,
                count,
            } => {
                let (first, last) = endpoint_range(*offset, *count, 0, 3);
                Some((*shard, first, last))
            }
            _ => None,
        })
        .expect("web's DNAT rule");
    let endpoint_map = format!("service-endpoints-{shard}");
    // Each command is computed when its turn comes.
    type Command<'a> = Box<dyn Fn() -> String + 'a>;
    let fixed = |c: &str| -> Command<'static> {
        let c = c.to_owned();
        Box::new(move || c.clone())
    };
    let tamperings: Vec<(&str, Command<'_>)> = vec![
        (
            "a base chain flushed",
            fixed("flush chain ip kube-proxy nat-prerouting"),
        ),
        (
            "the dispatch chain flushed",
            fixed("flush chain ip kube-proxy services"),
        ),
        (
            "a service chain's rule deleted",
            // The handle as it is now: repairs re-add rules under new handles.
            Box::new(|| {
                format!(
                    "delete rule ip kube-proxy {service_chain} handle {}",
                    handle(&service_chain)
                )
            }),
        ),
        (
            "a map element deleted",
            fixed("delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }"),
        ),
        (
            "an endpoint's range deleted from the interval map",
            fixed(&format!(
                "delete element ip kube-proxy {endpoint_map} {{ {first}-{last} }}"
            )),
        ),
        (
            "a range nobody owns added to the interval map",
            fixed(&format!(
                "add element ip kube-proxy {endpoint_map} {{ 4294967000-4294967100 : 10.9.9.9 . 80 }}"
            )),
        ),
        (
            "a foreign rule added",
            fixed("add rule ip kube-proxy services ip daddr 10.96.0.10 drop"),
        ),
        ("the table deleted", fixed("delete table ip kube-proxy")),
    ];
    for (what, command) in tamperings {
        let c = command();
        let out = node.exec("nft", &[c.as_str()]);
        assert!(
            out.status.success(),
            "{what}: nft {c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        restarted.force_full();
        let report = restarted
            .sync_to(&snap)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(report.repaired > 0, "{what}: nothing repaired: {report}");
        assert_eq!(kernel_state(node), expected, "{what}: not repaired");
        assert_eq!(
            check(&env, &trace, From::ClientPod, "10.96.0.10:80", 30),
            web,
            "{what}: traffic after the repair"
        );
    }
    // A table of the same name that is not ours (kube-proxy's) is left alone.
    restarted.cleanup().expect("cleanup");
    for c in [
        "add table ip kube-proxy",
        "add chain ip kube-proxy input { type filter hook input priority 0 ; }",
        "add rule ip kube-proxy input counter",
    ] {
        node.exec("nft", &[c]);
    }
    let mut newcomer = proxier(node);
    let err = newcomer.sync_to(&snap).expect_err("a foreign table");
    assert_eq!(err.kind(), SyncErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains("was not made by this proxy"),
        "{err}"
    );
}

/// [`CLUSTER`] with only the web Service's endpoints restricted to these pod IPs (the
/// sticky Service, whose ClientIP affinity needs a chain per endpoint, keeps all three).
fn with_web_only(ips: &[&str]) -> String {
    let kept: String = WEB_SLICE
        .lines()
        .filter(|l| !l.starts_with("- {addresses") || ips.iter().any(|ip| l.contains(ip)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(CLUSTER.contains(WEB_SLICE));
    CLUSTER.replace(WEB_SLICE, &kept)
}

/// Pearson's chi-squared statistic of `counts` against an even spread.
fn chi_squared(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn endpoint_count_changes_touch_only_map_elements_and_spread_evenly() {
    if require(
        "endpoint_count_changes_touch_only_map_elements_and_spread_evenly",
        &["ip", "nft"],
    ) == E2e::Skip
    {
        return;
    }
    let env = Env::new();
    let node = &env.topo.node;
    let mut proxier = proxier(node);
    let all = ["10.244.1.10", "10.244.1.11", "10.244.2.12"];
    let mut snap = snapshot_of(&with_web_only(&all), None);
    proxier.sync_to(&snap).expect("first sync");
    let before = kernel_state(node);

    // Endpoints leave and join: the number behind the web Service's `numgen` changes each
    // time, yet no rule or chain may change: only the endpoint map's (and the hairpin
    // set's) elements.
    let steps: [&[&str]; 4] = [
        &["10.244.1.10"],
        &["10.244.1.10", "10.244.2.12"],
        &["10.244.1.11", "10.244.2.12"],
        &all,
    ];
    let mut prev = before.clone();
    for step in steps {
        snap = snapshot_of(&with_web_only(step), Some(&snap));
        let report = proxier.sync_to(&snap).expect("endpoint change");
        assert_eq!(report.kind, SyncKind::Partial, "{report:?}");
        let now = kernel_state(node);
        assert_eq!(
            now.chains, before.chains,
            "{step:?}: chains or rules changed"
        );
        let changed: BTreeSet<&String> = now
            .sets
            .iter()
            .filter(|(name, elements)| prev.sets.get(*name) != Some(*elements))
            .map(|(name, _)| name)
            .collect();
        assert!(
            changed
                .iter()
                .all(|n| n.starts_with("service-endpoints-") || *n == "hairpin-ips"),
            "{step:?}: {changed:?}"
        );
        assert!(!changed.is_empty(), "{step:?}: nothing changed");
        // The kernel's view of the map matches the ruleset's.
        assert_eq!(now, proxier.rules().unwrap().expected_state(), "{step:?}");
        prev = now;
    }

    // New connections spread evenly over the three endpoints: Pearson's test at a
    // significance of 0.1% (2 degrees of freedom: 13.82), so that a fair spread fails
    // once in a thousand runs while a skew of a third or more fails nearly always.
    let client = &env.topo.pods[env.client_pod].ns;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..600 {
        match tcp_connect(client, None, sa("10.96.0.10:80"), TIMEOUT) {
            Reached::Server(name, _) => *counts.entry(name).or_default() += 1,
            other => panic!("connection failed: {other:?}"),
        }
    }
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["web-0", "web-1", "web-2"])
    );
    let c: Vec<usize> = counts.values().copied().collect();
    assert!(chi_squared(&c) < 13.82, "uneven spread: {counts:?}");
}
