//! Arbitrary bytes as a DNS request: the handler must never panic, and every answer it
//! produces must be a parseable message with the request's ID.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use service_core::cluster::Cluster;
use service_core::manifest::load_str;
use service_core::snapshot::NodeInfo;
use service_dns::{DnsConfig, Outcome, PodRecords, Transport, Zone, ZoneView};

const CLUSTER: &str = include_str!("../../service-dns/tests/fixtures/cluster.yaml");

fn view() -> &'static ZoneView {
    static VIEW: OnceLock<ZoneView> = OnceLock::new();
    VIEW.get_or_init(|| {
        let loaded = load_str("fuzz", CLUSTER).expect("fixture");
        let (mut cluster, _) = Cluster::from_objects(loaded.objects);
        cluster.derive_endpoint_slices(Default::default());
        let snap = cluster.snapshot(NodeInfo::new("n", Vec::new())).expect("snapshot");
        let mut cfg = DnsConfig::default();
        cfg.pods = PodRecords::Insecure;
        Zone::from_snapshot(cfg, &snap).view()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    for (transport, forwarding) in [(Transport::Udp, false), (Transport::Tcp, true)] {
        if view().respond(data, &mut out, transport, forwarding) == Outcome::Ignore {
            continue;
        }
        if out.is_empty() {
            continue;
        }
        assert!(out.len() >= 12);
        assert_eq!(&out[..2], &data[..2]);
        if transport == Transport::Udp {
            assert!(out.len() <= 1232);
        }
    }
});
