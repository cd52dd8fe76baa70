//! The embedding walkthrough: what an orchestrator does with this library, in order.
//! Services and Pods built in code; the API server's allocation; the EndpointSlice
//! controller; the node's snapshot through the change tracker; the iptables and nftables
//! rules of one node (dry runs: nothing touches the kernel) and a traced packet; cluster
//! DNS; a container's environment; then one Pod's readiness change carried through
//! incrementally.
//!
//! `cargo run -p service-examples --example embed`
use std::time::{Instant, SystemTime};

use service_core::cluster::Cluster;
use service_core::controller::ControllerConfig;
use service_core::model::{Container, IpFamily, Pod, Protocol, Service, ServicePort};
use service_core::random::SeededRandom;
use service_core::registry::{MemoryStore, Registry, RegistryConfig};
use service_core::tracker::ChangeTracker;
use service_dns::{DnsConfig, RecordType, Zone};
use service_env::PodFieldsOnly;
use service_proxy::dry_run::DryRun;
use service_proxy::iptables::IptablesConfig;
use service_proxy::nftables::NftablesConfig;
use service_proxy::trace::Packet;
use service_proxy::{NodeConfig, Proxier as _, SyncRequest};

/// The eight steps; `pub` so that `tests/embed.rs` runs it.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Three Services: a ClusterIP one, a headless one and a NodePort one.
    let (http, sql) = (ServicePort::tcp("http", 80), ServicePort::tcp("sql", 5432));
    let services = [
        Service::cluster_ip("shop", "web").with_port(http.with_target_port("http")),
        Service::headless("shop", "db").with_port(sql),
        Service::node_port("shop", "api").with_port(ServicePort::tcp("https", 443)),
    ];
    // 2. The API server's part: cluster IPs and node ports allocated in a registry.
    let ranges = RegistryConfig::new(&["10.96.0.0/16".parse()?], "30000-32767".parse()?)?;
    let mut registry = Registry::new(ranges, MemoryStore::new(), SeededRandom::new(7))?;
    let mut cluster = Cluster::default();
    for svc in services {
        let app = if svc.metadata.name() == "db" {
            "db"
        } else {
            "web"
        };
        cluster
            .services
            .push(registry.create(svc.with_selector([("app", app)]))?);
    }
    // 3. Four Pods on two nodes; the EndpointSlice controller derives the slices.
    let container = Container::new("app").with_port("http", 8080);
    for (name, ip, node) in [
        ("web-1", "10.244.1.5", "node-a"),
        ("web-2", "10.244.2.5", "node-b"),
        ("db-1", "10.244.1.6", "node-a"),
        ("db-2", "10.244.2.6", "node-b"),
    ] {
        let app = name.split('-').next().unwrap_or(name);
        let pod = Pod::new("shop", name)
            .with_labels([("app", app)])
            .on_node(node);
        cluster.add_pod(
            pod.with_container(container.clone())
                .with_ip(ip)
                .with_ready(true),
        )?;
    }
    cluster.reconcile_endpoint_slices(ControllerConfig::default());
    // 4. node-a's snapshot, through a change tracker that will follow later changes.
    let node = NodeConfig::new("node-a").with_ip("192.168.0.2".parse()?);
    let node = node.with_cluster_cidr("10.244.0.0/16".parse()?);
    let mut tracker = ChangeTracker::new(node.node_info());
    tracker.load(&cluster, SystemTime::now())?;
    let (snapshot, _) = tracker.checkout();
    // 5. The node's iptables and nftables rules, and where web-2 reaches web's cluster IP.
    let mut ipt = DryRun::iptables(IptablesConfig::new(node.proxy_config()), IpFamily::Ipv4);
    let mut nft = DryRun::nftables(NftablesConfig::new(node.proxy_config()), IpFamily::Ipv4);
    let (ipt_report, nft_report) = (ipt.sync_to(&snapshot)?, nft.sync_to(&snapshot)?);
    println!("iptables: {ipt_report}\nnftables: {nft_report}");
    let web_ip = cluster.services[0].cluster_ips.ips()[0];
    let packet = Packet::new("10.244.2.5".parse()?, web_ip, 80, Protocol::Tcp);
    println!("web-2 -> {web_ip}:80 goes to {}", ipt.trace(&packet)?);
    // 6. Cluster DNS: A of the ClusterIP Service, SRV of the headless one.
    let mut zone = Zone::from_snapshot(DnsConfig::default(), &snapshot);
    let web_a = zone
        .view()
        .lookup("web.shop.svc.cluster.local", RecordType::A);
    let db_srv = zone
        .view()
        .lookup("_sql._tcp.db.shop.svc.cluster.local.", RecordType::Srv);
    println!("web A: {web_a}\ndb SRV:\n{db_srv}");
    // 7. The environment web-1's container gets.
    let pod = &cluster.pods[0];
    let app = &pod.spec.containers[0];
    let env = service_env::for_container(&snapshot, pod, app, &PodFieldsOnly)?;
    println!("{} variables, e.g. {}", env.len(), env[0]);
    // 8. web-2 fails its readiness probe: the controller updates web's slice, the tracker
    //    says which service port changed, and only that port is synced.
    cluster.set_pod_ready("shop", "web-2", false);
    let slices = cluster.reconcile_endpoint_slices(ControllerConfig::default());
    tracker.apply_all(slices.into_events(), SystemTime::now())?;
    let (next, changes) = tracker.checkout();
    let request = SyncRequest::new(&next, Instant::now()).with_changes(&changes.ports);
    println!("web-2 unready: {}\n{}", nft.sync(request)?, nft.last_text());
    println!("web-2 -> {web_ip}:80 now goes to {}", nft.trace(&packet)?);
    zone.update(&snapshot, &next);
    Ok(())
}
