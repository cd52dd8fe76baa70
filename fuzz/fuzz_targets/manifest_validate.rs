//! Arbitrary bytes as a manifest file: loading, defaulting, validation, the endpoints
//! controller and snapshot building must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_core::cluster::Cluster;
use service_core::controller::ControllerConfig;
use service_core::manifest::load_str;
use service_core::snapshot::NodeInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = load_str("fuzz", text) else {
        return;
    };
    let (mut cluster, _invalid) = Cluster::from_objects(loaded.objects);
    cluster.derive_endpoint_slices(ControllerConfig::default());
    let node = NodeInfo::new("node-a", vec!["192.168.0.2".parse().unwrap()]);
    if let Ok(snapshot) = cluster.snapshot(node) {
        let _ = snapshot.diff(&snapshot);
    }
});
