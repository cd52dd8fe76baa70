//! Random small clusters for property tests: services of every kind and option with
//! their endpoint slices.

use proptest::prelude::*;
use service_core::defaults;
use service_core::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString,
    LoadBalancerIngress, LoadBalancerStatus, Protocol, Service, ServicePort, ServiceStatus,
    ServiceType, SessionAffinity, TrafficPolicy,
};
use service_core::snapshot::NodeInfo;
use service_core::validation::validate_service;

/// A generated service: its kind (ClusterIP, NodePort, LoadBalancer), options, and
/// endpoints (host byte, ready, on this node).
#[derive(Clone, Debug)]
pub struct Svc {
    pub kind: u8,
    pub affinity: bool,
    pub local: bool,
    pub ranges: bool,
    pub udp: bool,
    pub endpoints: Vec<(u8, bool, bool)>,
}

/// The Services and slices of a list of generated services (`None` is a gap).
pub fn objects(
    svcs: &[Option<Svc>],
) -> (Vec<service_core::valid::ValidService>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        let Some(s) = s else { continue };
        let mut svc = Service::new("ns", &format!("s{i}"));
        svc.spec.cluster_ip = Some(format!("172.30.0.{}", i + 1));
        let mut port = ServicePort::tcp("p", 80);
        port.target_port = Some(IntOrString::Int(8080));
        if s.udp {
            port.protocol = Some(Protocol::Udp);
        }
        match s.kind % 3 {
            1 => {
                svc.spec.type_ = Some(ServiceType::NodePort);
                port.node_port = Some(30000 + i as i32);
            }
            2 => {
                svc.spec.type_ = Some(ServiceType::LoadBalancer);
                port.node_port = Some(30000 + i as i32);
                if s.ranges {
                    svc.spec.load_balancer_source_ranges =
                        vec!["203.0.113.0/25".into(), "192.168.0.0/24".into()];
                }
                let mut ing = LoadBalancerIngress::default();
                ing.ip = Some(format!("198.51.100.{}", i + 1));
                let mut lb = LoadBalancerStatus::default();
                lb.ingress = vec![ing];
                let mut status = ServiceStatus::default();
                status.load_balancer = Some(lb);
                svc.status = Some(status);
                if s.local {
                    svc.spec.external_traffic_policy = Some(TrafficPolicy::Local);
                    svc.spec.health_check_node_port = Some(31000 + i as i32);
                }
            }
            _ => {
                if s.local {
                    svc.spec.internal_traffic_policy = Some(TrafficPolicy::Local);
                }
            }
        }
        if s.affinity {
            svc.spec.session_affinity = Some(SessionAffinity::ClientIp);
        }
        svc.spec.ports.push(port);
        defaults::service(&mut svc);
        services.push(validate_service(&svc).unwrap());
        let mut slice = EndpointSlice::new(
            "ns",
            &format!("s{i}-x"),
            &format!("s{i}"),
            AddressType::Ipv4,
        );
        slice.ports = vec![EndpointPort::new(
            "p",
            8080,
            if s.udp { Protocol::Udp } else { Protocol::Tcp },
        )];
        for &(host, ready, local) in &s.endpoints {
            let mut ep = Endpoint::new(&format!("10.1.{i}.{host}"));
            ep.conditions = Some(EndpointConditions::new(ready, true, !ready));
            ep.node_name = Some(if local { "node-a" } else { "node-b" }.into());
            slice.endpoints.push(ep);
        }
        slices.push(slice);
    }
    (services, slices)
}

/// Any generated service.
pub fn svc_strategy() -> impl Strategy<Value = Svc> {
    (
        any::<u8>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::btree_map(1u8..12, (any::<bool>(), any::<bool>()), 0..5),
    )
        .prop_map(|(kind, affinity, local, ranges, udp, eps)| Svc {
            kind,
            affinity,
            local,
            ranges,
            udp,
            endpoints: eps.into_iter().map(|(h, (r, l))| (h, r, l)).collect(),
        })
}

/// The node the generated clusters are proxied on.
pub fn node() -> NodeInfo {
    NodeInfo::new("node-a", vec!["192.168.0.2".parse().unwrap()])
}
