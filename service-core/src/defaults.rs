//! Defaulting exactly as the API server applies it before validation
//! (`pkg/apis/core/v1/defaults.go`, `pkg/apis/discovery/v1/defaults.go`, and the Service
//! strategy's clusterIP/clusterIPs normalisation).

use crate::model::{
    ClientIpConfig, DEFAULT_CLIENT_IP_AFFINITY_SECONDS, DnsPolicy, EndpointSlice, Endpoints,
    IntOrString, LoadBalancerIpMode, Pod, Protocol, Service, ServiceType, SessionAffinity,
    SessionAffinityConfig, TrafficPolicy,
};

/// Applies Service defaults in place:
/// - `sessionAffinity` "" → `None`; `None` clears `sessionAffinityConfig`; `ClientIP` gets a
///   10800 s timeout when none is set;
/// - `type` "" → `ClusterIP`;
/// - each port: `protocol` → `TCP`, `targetPort` 0 or "" → `port`;
/// - `externalTrafficPolicy` → `Cluster` for externally accessible Services;
/// - `internalTrafficPolicy` → `Cluster` for ClusterIP, NodePort and LoadBalancer;
/// - LoadBalancer: `allocateLoadBalancerNodePorts` → true; ingress IPs get `ipMode: VIP`;
/// - a `clusterIP` without `clusterIPs` is copied into `clusterIPs` (Service strategy).
pub fn service(svc: &mut Service) {
    let spec = &mut svc.spec;
    match spec.session_affinity {
        None => spec.session_affinity = Some(SessionAffinity::None),
        Some(SessionAffinity::Other(ref s)) if s.is_empty() => {
            spec.session_affinity = Some(SessionAffinity::None);
        }
        _ => {}
    }
    match spec.session_affinity {
        Some(SessionAffinity::None) => spec.session_affinity_config = None,
        Some(SessionAffinity::ClientIp) => {
            let config = spec
                .session_affinity_config
                .get_or_insert_with(SessionAffinityConfig::default);
            let client_ip = config.client_ip.get_or_insert_with(ClientIpConfig::default);
            client_ip
                .timeout_seconds
                .get_or_insert(DEFAULT_CLIENT_IP_AFFINITY_SECONDS);
        }
        _ => {}
    }
    if spec.type_.is_none() || matches!(&spec.type_, Some(ServiceType::Other(s)) if s.is_empty()) {
        spec.type_ = Some(ServiceType::ClusterIp);
    }
    for port in &mut spec.ports {
        if port.protocol.is_none() {
            port.protocol = Some(Protocol::Tcp);
        }
        if port.target_port.as_ref().is_none_or(IntOrString::is_zero) {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    let type_ = spec.type_.clone();
    let externally_accessible = matches!(
        type_,
        Some(ServiceType::LoadBalancer | ServiceType::NodePort)
    ) || (type_ == Some(ServiceType::ClusterIp)
        && !spec.external_ips.is_empty());
    if externally_accessible && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if spec.internal_traffic_policy.is_none()
        && matches!(
            type_,
            Some(ServiceType::ClusterIp | ServiceType::NodePort | ServiceType::LoadBalancer)
        )
    {
        spec.internal_traffic_policy = Some(TrafficPolicy::Cluster);
    }
    if type_ == Some(ServiceType::LoadBalancer) {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
        if let Some(lb) = svc.status.as_mut().and_then(|s| s.load_balancer.as_mut()) {
            for ing in &mut lb.ingress {
                if ing.ip.as_deref().is_some_and(|ip| !ip.is_empty()) && ing.ip_mode.is_none() {
                    ing.ip_mode = Some(LoadBalancerIpMode::Vip);
                }
            }
        }
    }
    let spec = &mut svc.spec;
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty())
        && spec.cluster_ips.is_empty()
    {
        spec.cluster_ips = vec![ip.to_owned()];
    }
}

/// Applies `Endpoints` defaults: port protocol → `TCP`.
pub fn endpoints(ep: &mut Endpoints) {
    for subset in &mut ep.subsets {
        for port in &mut subset.ports {
            port.protocol.get_or_insert(Protocol::Tcp);
        }
    }
}

/// Applies `EndpointSlice` defaults: port name → "", port protocol → `TCP`.
pub fn endpoint_slice(slice: &mut EndpointSlice) {
    for port in &mut slice.ports {
        port.name.get_or_insert_with(String::new);
        port.protocol.get_or_insert(Protocol::Tcp);
    }
}

/// Applies the Pod defaults this library relies on: `enableServiceLinks` → true,
/// `dnsPolicy` → `ClusterFirst`, container port protocol → `TCP`.
pub fn pod(pod: &mut Pod) {
    pod.spec.enable_service_links.get_or_insert(true);
    pod.spec.dns_policy.get_or_insert(DnsPolicy::ClusterFirst);
    for c in pod
        .spec
        .containers
        .iter_mut()
        .chain(&mut pod.spec.init_containers)
    {
        for p in &mut c.ports {
            p.protocol.get_or_insert(Protocol::Tcp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceStatus};

    #[test]
    fn cluster_ip_service_defaults() {
        let mut svc = Service::new("ns", "web");
        svc.spec.ports.push(ServicePort {
            port: 80,
            ..ServicePort::default()
        });
        svc.spec.cluster_ip = Some("10.0.0.10".into());
        service(&mut svc);
        let s = &svc.spec;
        assert_eq!(s.type_, Some(ServiceType::ClusterIp));
        assert_eq!(s.session_affinity, Some(SessionAffinity::None));
        assert_eq!(s.ports[0].protocol, Some(Protocol::Tcp));
        assert_eq!(s.ports[0].target_port, Some(IntOrString::Int(80)));
        assert_eq!(s.internal_traffic_policy, Some(TrafficPolicy::Cluster));
        // Not externally accessible: no external policy.
        assert_eq!(s.external_traffic_policy, None);
        assert_eq!(s.cluster_ips, vec!["10.0.0.10".to_string()]);
        assert_eq!(s.allocate_load_balancer_node_ports, None);
    }

    #[test]
    fn external_ips_make_a_cluster_ip_service_externally_accessible() {
        let mut svc = Service::new("ns", "web");
        svc.spec.external_ips.push("192.0.2.1".into());
        service(&mut svc);
        assert_eq!(
            svc.spec.external_traffic_policy,
            Some(TrafficPolicy::Cluster)
        );
    }

    #[test]
    fn client_ip_affinity_gets_the_default_timeout() {
        let mut svc = Service::new("ns", "web");
        svc.spec.session_affinity = Some(SessionAffinity::ClientIp);
        service(&mut svc);
        let t = svc
            .spec
            .session_affinity_config
            .and_then(|c| c.client_ip)
            .and_then(|c| c.timeout_seconds);
        assert_eq!(t, Some(10800));
    }

    #[test]
    fn none_affinity_drops_the_config() {
        let mut svc = Service::new("ns", "web");
        svc.spec.session_affinity_config = Some(SessionAffinityConfig::default());
        service(&mut svc);
        assert_eq!(svc.spec.session_affinity_config, None);
    }

    #[test]
    fn load_balancer_defaults() {
        let mut svc = Service::new("ns", "lb");
        svc.spec.type_ = Some(ServiceType::LoadBalancer);
        svc.spec.ports.push(ServicePort {
            port: 443,
            target_port: Some(IntOrString::String(String::new())),
            ..ServicePort::default()
        });
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: vec![LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ..LoadBalancerIngress::default()
                }],
            }),
            ..ServiceStatus::default()
        });
        service(&mut svc);
        assert_eq!(svc.spec.allocate_load_balancer_node_ports, Some(true));
        assert_eq!(
            svc.spec.external_traffic_policy,
            Some(TrafficPolicy::Cluster)
        );
        assert_eq!(svc.spec.ports[0].target_port, Some(IntOrString::Int(443)));
        let ing = &svc.status.unwrap().load_balancer.unwrap().ingress[0];
        assert_eq!(ing.ip_mode, Some(LoadBalancerIpMode::Vip));
    }

    #[test]
    fn explicit_values_are_kept() {
        let mut svc = Service::new("ns", "np");
        svc.spec.type_ = Some(ServiceType::NodePort);
        svc.spec.external_traffic_policy = Some(TrafficPolicy::Local);
        svc.spec.ports.push(ServicePort {
            port: 53,
            protocol: Some(Protocol::Udp),
            target_port: Some(IntOrString::String("dns".into())),
            ..ServicePort::default()
        });
        service(&mut svc);
        assert_eq!(svc.spec.external_traffic_policy, Some(TrafficPolicy::Local));
        assert_eq!(svc.spec.ports[0].protocol, Some(Protocol::Udp));
        assert_eq!(
            svc.spec.ports[0].target_port,
            Some(IntOrString::String("dns".into()))
        );
    }
}
