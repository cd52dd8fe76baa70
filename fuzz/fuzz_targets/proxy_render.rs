//! Arbitrary bytes as a manifest file, rendered by both proxy backends: the iptables rule
//! set and its tracer, the nftables ruleset, its script, its netlink batch, its tracer, and
//! an incremental update to an empty cluster and back must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_core::cluster::Cluster;
use service_core::manifest::load_str;
use service_core::model::Protocol;
use service_core::snapshot::{NodeInfo, Snapshot};
use service_proxy::ProxyConfig;
use service_proxy::trace::Packet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = load_str("fuzz", text) else {
        return;
    };
    let (cluster, _invalid) = Cluster::from_objects(loaded.objects);
    let node = NodeInfo::new("node-a", vec!["192.168.0.2".parse().unwrap()]);
    let Ok(snapshot) = cluster.snapshot(node.clone()) else {
        return;
    };
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    proxy.local_addresses = vec!["192.168.0.2".parse().unwrap()];
    let packets: Vec<Packet> = snapshot
        .ports
        .values()
        .flat_map(|sp| sp.family(&service_core::model::IpFamily::Ipv4))
        .map(|plan| Packet::new("10.1.2.3".parse().unwrap(), plan.cluster_ip, 80, Protocol::Tcp))
        .take(8)
        .collect();

    let ipt = service_proxy::iptables::Renderer::new(
        service_proxy::iptables::IptablesConfig::new(proxy.clone()),
        false,
    )
    .full(&snapshot);
    let _ = ipt.to_restore_input();
    for p in &packets {
        let _ = ipt.trace(p, &proxy.local_addresses);
    }

    let nft = service_proxy::nftables::Renderer::new(
        service_proxy::nftables::NftablesConfig::new(proxy.clone()),
        false,
    );
    let mut rules = nft.render(&snapshot);
    let _ = rules.create_one().to_string();
    for tx in rules.create(50) {
        let _ = service_proxy::nftables::wire::encode(&[&tx], 1);
    }
    for p in &packets {
        let _ = rules.trace(p, &proxy.local_addresses);
    }
    let empty = Snapshot::build(node, &[], &[], &[]).unwrap();
    let _ = nft.update(&mut rules, &empty, None);
    let back = nft.update(&mut rules, &snapshot, None);
    let _ = service_proxy::nftables::wire::encode(&[&back.transaction], 1);
});
