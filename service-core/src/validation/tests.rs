//! One test per validation rule, valid and invalid, asserting the API server's messages.

use super::*;
use crate::defaults;
use crate::model::*;

fn base() -> Service {
    let mut svc = Service::new("ns", "web");
    svc.spec.cluster_ip = Some("10.0.0.10".into());
    svc.spec.selector = Some([("app".to_string(), "web".to_string())].into());
    svc.spec.ports.push(ServicePort::tcp("", 80));
    defaults::service(&mut svc);
    svc
}

fn errors(svc: &Service) -> Vec<String> {
    service_errors(svc)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn assert_errors(svc: &Service, expected: &[&str]) {
    assert_eq!(errors(svc), expected);
}

#[track_caller]
fn assert_one_error_containing(svc: &Service, needle: &str) {
    let errs = errors(svc);
    assert!(
        errs.len() == 1 && errs[0].contains(needle),
        "expected one error containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn a_defaulted_service_is_valid() {
    let v = validate_service(&base()).unwrap();
    assert_eq!(v.key.to_string(), "ns/web");
    assert_eq!(
        v.cluster_ips.ips(),
        &["10.0.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(v.ports[0].target_port, crate::valid::TargetPort::Number(80));
}

#[test]
fn service_name_must_be_a_dns1035_label() {
    let mut svc = base();
    svc.metadata.name = Some("1web".into());
    assert_one_error_containing(
        &svc,
        "metadata.name: Invalid value: \"1web\": a DNS-1035 label",
    );
    svc.metadata.name = None;
    assert_errors(
        &svc,
        &["metadata.name: Required value: name or generateName is required"],
    );
    svc.metadata.generate_name = Some("web-".into());
    assert_errors(&svc, &[]);
}

#[test]
fn namespace_labels_and_annotations() {
    let mut svc = base();
    svc.metadata.namespace = Some("Bad_NS".into());
    assert_one_error_containing(&svc, "metadata.namespace: Invalid value: \"Bad_NS\"");
    let mut svc = base();
    svc.metadata.labels = Some([("bad key!".to_string(), "v".to_string())].into());
    assert_one_error_containing(&svc, "metadata.labels: Invalid value: \"bad key!\"");
    let mut svc = base();
    svc.metadata.labels = Some([("k".to_string(), "-bad".to_string())].into());
    assert_one_error_containing(&svc, "metadata.labels: Invalid value: \"-bad\"");
    let mut svc = base();
    svc.metadata.annotations = Some([("a/b/c".to_string(), String::new())].into());
    assert_one_error_containing(&svc, "metadata.annotations: Invalid value: \"a/b/c\"");
}

#[test]
fn topology_annotations_must_agree() {
    let mut svc = base();
    svc.metadata.annotations = Some(
        [
            (TOPOLOGY_MODE_ANNOTATION.to_string(), "Auto".to_string()),
            (
                TOPOLOGY_AWARE_HINTS_ANNOTATION.to_string(),
                "auto".to_string(),
            ),
        ]
        .into(),
    );
    assert_errors(
        &svc,
        &[
            "metadata.annotations[service.kubernetes.io/topology-mode]: Invalid value: \"Auto\": must match annotations[service.kubernetes.io/topology-aware-hints] when both are specified",
        ],
    );
    svc.metadata.annotations = Some(
        [
            (TOPOLOGY_MODE_ANNOTATION.to_string(), "Auto".to_string()),
            (
                TOPOLOGY_AWARE_HINTS_ANNOTATION.to_string(),
                "Auto".to_string(),
            ),
        ]
        .into(),
    );
    assert_errors(&svc, &[]);
}

#[test]
fn ports_are_required_except_headless_and_external_name() {
    let mut svc = base();
    svc.spec.ports.clear();
    assert_errors(&svc, &["spec.ports: Required value"]);
    svc.spec.cluster_ip = Some("None".into());
    svc.spec.cluster_ips = vec!["None".into()];
    assert_errors(&svc, &[]);
}

#[test]
fn headless_is_not_allowed_for_node_port_and_load_balancer() {
    let mut svc = base();
    svc.spec.cluster_ip = Some("None".into());
    svc.spec.cluster_ips = vec!["None".into()];
    svc.spec.type_ = Some(ServiceType::NodePort);
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        ],
    );
    svc.spec.type_ = Some(ServiceType::LoadBalancer);
    svc.spec.allocate_load_balancer_node_ports = Some(true);
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services",
        ],
    );
}

#[test]
fn external_name_rules() {
    let mut svc = Service::new("ns", "ext");
    svc.spec.type_ = Some(ServiceType::ExternalName);
    svc.spec.external_name = Some("db.example.com.".into());
    defaults::service(&mut svc);
    let v = validate_service(&svc).unwrap();
    assert_eq!(v.external_name.as_deref(), Some("db.example.com"));
    assert_eq!(v.cluster_ips, crate::valid::ClusterIps::Unset);

    svc.spec.external_name = None;
    assert_errors(&svc, &["spec.externalName: Required value"]);
    svc.spec.external_name = Some("Not_A_Name".into());
    assert_one_error_containing(&svc, "spec.externalName: Invalid value: \"Not_A_Name\"");
    svc.spec.external_name = Some("db.example.com".into());
    svc.spec.cluster_ip = Some("10.0.0.1".into());
    svc.spec.cluster_ips = vec!["10.0.0.1".into()];
    svc.spec.ip_families = vec![IpFamily::Ipv4];
    svc.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
            "spec.ipFamilies: Forbidden: may not be set for ExternalName services",
            "spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services",
        ],
    );
}

#[test]
fn port_names() {
    let mut svc = base();
    svc.spec.ports.push(ServicePort::tcp("", 81));
    defaults::service(&mut svc);
    assert_errors(
        &svc,
        &[
            "spec.ports[0].name: Required value",
            "spec.ports[1].name: Required value",
        ],
    );
    svc.spec.ports[0].name = Some("http".into());
    svc.spec.ports[1].name = Some("http".into());
    assert_errors(&svc, &["spec.ports[1].name: Duplicate value: \"http\""]);
    svc.spec.ports[1].name = Some("HTTP".into());
    assert_one_error_containing(
        &svc,
        "spec.ports[1].name: Invalid value: \"HTTP\": a lowercase RFC 1123 label",
    );
    // Digit-only port names are valid DNS-1123 labels.
    svc.spec.ports[1].name = Some("8081".into());
    assert_errors(&svc, &[]);
}

#[test]
fn port_numbers_and_protocols() {
    let mut svc = base();
    svc.spec.ports[0].port = 0;
    assert_errors(
        &svc,
        &["spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"],
    );
    let mut svc = base();
    svc.spec.ports[0].port = 65536;
    assert_one_error_containing(&svc, "spec.ports[0].port: Invalid value: 65536");
    let mut svc = base();
    svc.spec.ports[0].protocol = Some(Protocol::Other("ICMP".into()));
    assert_errors(
        &svc,
        &[
            "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ],
    );
    svc.spec.ports[0].protocol = None;
    assert_errors(&svc, &["spec.ports[0].protocol: Required value"]);
}

#[test]
fn target_ports() {
    let mut svc = base();
    svc.spec.ports[0].target_port = Some(IntOrString::Int(70000));
    assert_errors(
        &svc,
        &["spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"],
    );
    svc.spec.ports[0].target_port = Some(IntOrString::String("metrics-http-port".into()));
    assert_errors(
        &svc,
        &[
            "spec.ports[0].targetPort: Invalid value: \"metrics-http-port\": must be no more than 15 characters",
        ],
    );
    svc.spec.ports[0].target_port = Some(IntOrString::String("8080".into()));
    assert_errors(
        &svc,
        &[
            "spec.ports[0].targetPort: Invalid value: \"8080\": must contain at least one letter (a-z)",
        ],
    );
    svc.spec.ports[0].target_port = Some(IntOrString::String("a--b".into()));
    assert_errors(
        &svc,
        &[
            "spec.ports[0].targetPort: Invalid value: \"a--b\": must not contain consecutive hyphens",
        ],
    );
    svc.spec.ports[0].target_port = Some(IntOrString::String("http".into()));
    let v = validate_service(&svc).unwrap();
    assert_eq!(
        v.ports[0].target_port,
        crate::valid::TargetPort::Name("http".into())
    );
}

#[test]
fn app_protocol_is_a_qualified_name() {
    let mut svc = base();
    svc.spec.ports[0].app_protocol = Some("kubernetes.io/h2c".into());
    assert_errors(&svc, &[]);
    svc.spec.ports[0].app_protocol = Some("bad/proto/x".into());
    assert_one_error_containing(
        &svc,
        "spec.ports[0].appProtocol: Invalid value: \"bad/proto/x\"",
    );
}

#[test]
fn selector_labels() {
    let mut svc = base();
    svc.spec.selector = Some([("app".to_string(), "bad value".to_string())].into());
    assert_one_error_containing(&svc, "spec.selector: Invalid value: \"bad value\"");
}

#[test]
fn session_affinity() {
    let mut svc = base();
    svc.spec.session_affinity = None;
    assert_errors(&svc, &["spec.sessionAffinity: Required value"]);
    svc.spec.session_affinity = Some(SessionAffinity::Other("Cookie".into()));
    assert_errors(
        &svc,
        &[
            "spec.sessionAffinity: Unsupported value: \"Cookie\": supported values: \"ClientIP\", \"None\"",
        ],
    );
    svc.spec.session_affinity = Some(SessionAffinity::None);
    svc.spec.session_affinity_config = Some(SessionAffinityConfig::default());
    assert_errors(
        &svc,
        &["spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"],
    );
    svc.spec.session_affinity = Some(SessionAffinity::ClientIp);
    svc.spec.session_affinity_config = None;
    assert_errors(
        &svc,
        &["spec.sessionAffinityConfig: Required value: when session affinity type is ClientIP"],
    );
    svc.spec.session_affinity_config = Some(SessionAffinityConfig::default());
    assert_errors(
        &svc,
        &[
            "spec.sessionAffinityConfig.clientIP: Required value: when session affinity type is ClientIP",
        ],
    );
    svc.spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIpConfig::default()),
    });
    assert_errors(
        &svc,
        &[
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Required value: when session affinity type is ClientIP",
        ],
    );
    for (t, ok) in [
        (0, false),
        (1, true),
        (86400, true),
        (86401, false),
        (-5, false),
    ] {
        svc.spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIpConfig {
                timeout_seconds: Some(t),
            }),
        });
        if ok {
            assert_eq!(
                validate_service(&svc).unwrap().session_affinity_timeout,
                Some(t as u32)
            );
        } else {
            assert_errors(
                &svc,
                &[&format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than 86400"
                )],
            );
        }
    }
}

#[test]
fn cluster_ip_and_cluster_ips_must_agree() {
    let mut svc = base();
    svc.spec.cluster_ips = vec!["10.0.0.11".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Invalid value: []string{\"10.0.0.11\"}: first value must match `clusterIP`",
        ],
    );
    svc.spec.cluster_ips.clear();
    assert_errors(&svc, &["spec.clusterIPs: Required value"]);
    svc.spec.cluster_ip = None;
    svc.spec.cluster_ips = vec!["10.0.0.11".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Invalid value: []string{\"10.0.0.11\"}: must be empty when `clusterIP` is not specified",
        ],
    );
    // Both empty: to be allocated.
    svc.spec.cluster_ips.clear();
    assert_eq!(
        validate_service(&svc).unwrap().cluster_ips,
        crate::valid::ClusterIps::Unset
    );
}

#[test]
fn cluster_ips_values() {
    let mut svc = base();
    svc.spec.cluster_ip = Some("None".into());
    svc.spec.cluster_ips = vec!["None".into(), "10.0.0.1".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Invalid value: []string{\"None\", \"10.0.0.1\"}: 'None' must be the first and only value",
        ],
    );
    svc.spec.cluster_ip = Some("10.0.0.300".into());
    svc.spec.cluster_ips = vec!["10.0.0.300".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs[0]: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ],
    );
    svc.spec.cluster_ip = Some("10.0.0.1".into());
    svc.spec.cluster_ips = vec!["10.0.0.1".into(), "10.0.0.2".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Invalid value: []string{\"10.0.0.1\", \"10.0.0.2\"}: may specify no more than one IP for each IP family",
        ],
    );
    svc.spec.cluster_ips = vec!["10.0.0.1".into(), "fd00::1".into(), "fd00::2".into()];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs: Invalid value: []string{\"10.0.0.1\", \"fd00::1\", \"fd00::2\"}: may only hold up to 2 values",
        ],
    );
    svc.spec.cluster_ips = vec!["10.0.0.1".into(), "fd00::1".into()];
    svc.spec.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
    svc.spec.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack);
    assert_eq!(validate_service(&svc).unwrap().cluster_ips.ips().len(), 2);
}

#[test]
fn ip_families_and_policy() {
    let mut svc = base();
    svc.spec.ip_families = vec![IpFamily::Ipv6];
    assert_errors(
        &svc,
        &[
            "spec.clusterIPs[0]: Invalid value: \"10.0.0.10\": expected an IPv6 value as indicated by `ipFamilies[0]`",
        ],
    );
    svc.spec.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv4];
    assert_errors(&svc, &["spec.ipFamilies[1]: Duplicate value: \"IPv4\""]);
    svc.spec.ip_families = vec![IpFamily::Other("IPv5".into())];
    assert_errors(
        &svc,
        &["spec.ipFamilies[0]: Unsupported value: \"IPv5\": supported values: \"IPv4\", \"IPv6\""],
    );
    svc.spec.ip_families = vec![IpFamily::Ipv4];
    svc.spec.ip_family_policy = Some(IpFamilyPolicy::Other("Both".into()));
    assert_errors(
        &svc,
        &[
            "spec.ipFamilyPolicy: Unsupported value: \"Both\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
        ],
    );
}

#[test]
fn external_ips_reject_special_addresses_only() {
    let mut svc = base();
    svc.spec.external_ips = vec![
        "192.0.2.10".into(),
        "239.1.1.1".into(),
        "127.0.0.1".into(),
        "169.254.169.254".into(),
        "224.0.0.1".into(),
        "0.0.0.0".into(),
        "nope".into(),
    ];
    defaults::service(&mut svc);
    assert_errors(
        &svc,
        &[
            "spec.externalIPs[2]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            "spec.externalIPs[3]: Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
            "spec.externalIPs[4]: Invalid value: \"224.0.0.1\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
            "spec.externalIPs[5]: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
            "spec.externalIPs[6]: Invalid value: \"nope\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ],
    );
}

#[test]
fn service_type() {
    let mut svc = base();
    svc.spec.type_ = None;
    // Without a type, internalTrafficPolicy is not required either.
    assert_errors(&svc, &["spec.type: Required value"]);
    svc.spec.type_ = Some(ServiceType::Other("Magic".into()));
    assert_errors(
        &svc,
        &[
            "spec.type: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ],
    );
}

#[test]
fn node_ports() {
    let mut svc = base();
    svc.spec.ports[0].node_port = Some(30080);
    assert_errors(
        &svc,
        &["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
    );
    svc.spec.type_ = Some(ServiceType::NodePort);
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    svc.spec.ports[0].name = Some("a".into());
    let mut udp = ServicePort::tcp("b", 80);
    udp.protocol = Some(Protocol::Udp);
    udp.node_port = Some(30080);
    udp.target_port = Some(IntOrString::Int(80));
    svc.spec.ports.push(udp);
    // TCP and UDP may share a node port.
    assert_errors(&svc, &[]);
    let mut dup = ServicePort::tcp("c", 81);
    dup.node_port = Some(30080);
    dup.target_port = Some(IntOrString::Int(81));
    svc.spec.ports.push(dup);
    assert_errors(&svc, &["spec.ports[2].nodePort: Duplicate value: 30080"]);
}

#[test]
fn duplicate_protocol_and_port() {
    let mut svc = base();
    svc.spec.ports[0].name = Some("a".into());
    let mut second = ServicePort::tcp("b", 80);
    second.target_port = Some(IntOrString::Int(8080));
    svc.spec.ports.push(second);
    assert_errors(
        &svc,
        &[
            "spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
        ],
    );
    svc.spec.ports[1].protocol = Some(Protocol::Udp);
    assert_errors(&svc, &[]);
}

fn load_balancer() -> Service {
    let mut svc = base();
    svc.spec.type_ = Some(ServiceType::LoadBalancer);
    svc.spec.ports[0].node_port = Some(30080);
    defaults::service(&mut svc);
    svc
}

#[test]
fn load_balancer_source_ranges() {
    let mut svc = load_balancer();
    svc.spec.load_balancer_source_ranges = vec![" 203.0.113.0/25 ".into(), "10.0.0.1/8".into()];
    let v = validate_service(&svc).unwrap();
    assert_eq!(
        v.load_balancer_source_ranges,
        vec![
            "203.0.113.0/25".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap()
        ]
    );
    svc.spec
        .load_balancer_source_ranges
        .push("10.0.0.0/33".into());
    // The capital L is Kubernetes' own spelling.
    assert_errors(
        &svc,
        &[
            "spec.LoadBalancerSourceRanges[2]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ],
    );
    let mut svc = base();
    svc.spec.load_balancer_source_ranges = vec!["10.0.0.0/8".into()];
    assert_errors(
        &svc,
        &[
            "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'",
        ],
    );
    let mut svc = base();
    svc.metadata.annotations = Some(
        [(
            LB_SOURCE_RANGES_ANNOTATION.to_string(),
            "10.0.0.0/8, x".to_string(),
        )]
        .into(),
    );
    assert_errors(
        &svc,
        &[
            "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Invalid value: \"x\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ],
    );
}

#[test]
fn allocate_load_balancer_node_ports() {
    let mut svc = load_balancer();
    svc.spec.allocate_load_balancer_node_ports = None;
    // No `spec.` prefix: a Kubernetes quirk kept for fidelity.
    assert_errors(&svc, &["allocateLoadBalancerNodePorts: Required value"]);
    let mut svc = base();
    svc.spec.allocate_load_balancer_node_ports = Some(false);
    assert_errors(
        &svc,
        &[
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
        ],
    );
}

#[test]
fn load_balancer_class() {
    let mut svc = load_balancer();
    svc.spec.load_balancer_class = Some("example.com/internal".into());
    assert_errors(&svc, &[]);
    svc.spec.load_balancer_class = Some("bad class".into());
    assert_one_error_containing(&svc, "spec.loadBalancerClass: Invalid value: \"bad class\"");
    let mut svc = base();
    svc.spec.load_balancer_class = Some("example.com/internal".into());
    assert_errors(
        &svc,
        &[
            "spec.loadBalancerClass: Forbidden: may only be used when service type is 'LoadBalancer'",
        ],
    );
}

#[test]
fn external_traffic_policy_and_health_check_port() {
    let mut svc = base();
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    assert_errors(
        &svc,
        &[
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
        ],
    );
    let mut svc = load_balancer();
    svc.spec.external_traffic_policy = None;
    assert_errors(&svc, &["spec.externalTrafficPolicy: Required value"]);
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Other("Nearby".into()));
    assert_errors(
        &svc,
        &[
            "spec.externalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"",
        ],
    );
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    assert_errors(&svc, &["spec.healthCheckNodePort: Required value"]);
    svc.spec.health_check_node_port = Some(70000);
    assert_errors(
        &svc,
        &["spec.healthCheckNodePort: Invalid value: 70000: must be between 1 and 65535, inclusive"],
    );
    svc.spec.health_check_node_port = Some(30500);
    let v = validate_service(&svc).unwrap();
    assert!(v.needs_health_check());
    assert_eq!(v.health_check_node_port, Some(30500));
    svc.spec.external_traffic_policy = Some(TrafficPolicy::Cluster);
    assert_errors(
        &svc,
        &[
            "spec.healthCheckNodePort: Invalid value: 30500: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ],
    );
}

#[test]
fn internal_traffic_policy_and_distribution() {
    let mut svc = base();
    svc.spec.internal_traffic_policy = None;
    assert_errors(&svc, &["spec.internalTrafficPolicy: Required value"]);
    svc.spec.internal_traffic_policy = Some(TrafficPolicy::Other("Node".into()));
    assert_errors(
        &svc,
        &[
            "spec.internalTrafficPolicy: Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\"",
        ],
    );
    svc.spec.internal_traffic_policy = Some(TrafficPolicy::Local);
    svc.spec.traffic_distribution = Some(TrafficDistribution::Other("Anywhere".into()));
    assert_errors(
        &svc,
        &[
            "spec.trafficDistribution: Unsupported value: \"Anywhere\": supported values: \"PreferClose\", \"PreferSameNode\", \"PreferSameZone\"",
        ],
    );
    svc.spec.traffic_distribution = Some(TrafficDistribution::PreferSameZone);
    assert!(validate_service(&svc).unwrap().internal_traffic_local);
}

#[test]
fn load_balancer_status() {
    let mut svc = load_balancer();
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: vec![
                LoadBalancerIngress {
                    ip: Some("203.0.113.9".into()),
                    ip_mode: Some(LoadBalancerIpMode::Vip),
                    ..LoadBalancerIngress::default()
                },
                LoadBalancerIngress {
                    ip: Some("203.0.113.10".into()),
                    ip_mode: Some(LoadBalancerIpMode::Proxy),
                    ..LoadBalancerIngress::default()
                },
                LoadBalancerIngress {
                    hostname: Some("lb.example.com".into()),
                    ..LoadBalancerIngress::default()
                },
            ],
        }),
        ..ServiceStatus::default()
    });
    let v = validate_service(&svc).unwrap();
    assert_eq!(v.load_balancer_ingress.len(), 2);
    assert!(!v.load_balancer_ingress[0].proxy_mode);
    assert!(v.load_balancer_ingress[1].proxy_mode);

    let lb = svc.status.as_mut().unwrap().load_balancer.as_mut().unwrap();
    lb.ingress[0].ip = Some("x".into());
    lb.ingress[2].hostname = Some("10.1.1.1".into());
    lb.ingress[2].ip_mode = Some(LoadBalancerIpMode::Vip);
    assert_errors(
        &svc,
        &[
            "status.loadBalancer.ingress[0].ip: Invalid value: \"x\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "status.loadBalancer.ingress[2].ipMode: Forbidden: may not be specified when `ip` is not set",
            "status.loadBalancer.ingress[2].hostname: Invalid value: \"10.1.1.1\": must be a DNS name, not an IP address",
        ],
    );
}

#[test]
fn validation_error_names_the_object() {
    let mut svc = base();
    svc.spec.ports[0].port = 0;
    let err = validate_service(&svc).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service \"web\" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    );
    assert_eq!(err.errors[0].kind, ErrorKind::Invalid);
    assert_eq!(err.errors[0].path.as_str(), "spec.ports[0].port");
}

#[test]
fn update_rules() {
    let old = base();
    let mut new = old.clone();
    new.spec.cluster_ip = Some("10.0.0.11".into());
    new.spec.cluster_ips = vec!["10.0.0.11".into()];
    let err = validate_service_update(&new, &old).unwrap_err();
    assert_eq!(
        err.errors[0].to_string(),
        "spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.11\"}: may not change once set"
    );

    // Releasing the secondary family needs SingleStack.
    let mut old = base();
    old.spec.cluster_ips = vec!["10.0.0.10".into(), "fd00::10".into()];
    old.spec.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
    old.spec.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
    let mut new = old.clone();
    new.spec.cluster_ips.truncate(1);
    new.spec.ip_families.truncate(1);
    let msgs: Vec<String> = validate_service_update(&new, &old)
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        msgs,
        vec![
            "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be set to 'SingleStack' when releasing the secondary clusterIP",
            "spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be set to 'SingleStack' when releasing the secondary ipFamily",
        ]
    );
    new.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    assert!(validate_service_update(&new, &old).is_ok());

    // The health-check node port is immutable while both need it.
    let mut old = load_balancer();
    old.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    old.spec.health_check_node_port = Some(30500);
    let mut new = old.clone();
    new.spec.health_check_node_port = Some(30501);
    assert_eq!(
        validate_service_update(&new, &old).unwrap_err().errors[0].to_string(),
        "spec.healthCheckNodePort: Forbidden: field is immutable"
    );

    // The load-balancer class may not change once set.
    let mut old = load_balancer();
    old.spec.load_balancer_class = Some("a.example/x".into());
    let mut new = old.clone();
    new.spec.load_balancer_class = Some("b.example/x".into());
    assert_eq!(
        validate_service_update(&new, &old).unwrap_err().errors[0].to_string(),
        "spec.loadBalancerClass: Invalid value: \"b.example/x\": may not change once set"
    );

    // Changing to ExternalName drops the cluster IPs freely.
    let old = base();
    let mut new = Service::new("ns", "web");
    new.spec.type_ = Some(ServiceType::ExternalName);
    new.spec.external_name = Some("example.com".into());
    defaults::service(&mut new);
    assert!(validate_service_update(&new, &old).is_ok());
}

#[test]
fn endpoints_validation() {
    let mut ep = Endpoints {
        metadata: ObjectMeta::named("ns", "web"),
        subsets: vec![EndpointSubset {
            addresses: vec![EndpointAddress {
                ip: "10.1.0.5".into(),
                hostname: Some("web-0".into()),
                node_name: Some("node-a".into()),
                target_ref: None,
            }],
            not_ready_addresses: vec![],
            ports: vec![EndpointPort {
                name: None,
                port: Some(8080),
                protocol: Some(Protocol::Tcp),
                app_protocol: None,
            }],
        }],
        ..Endpoints::default()
    };
    assert!(validate_endpoints(&ep).is_ok());
    ep.subsets[0].addresses[0].ip = "127.0.0.1".into();
    ep.subsets[0].ports[0].port = Some(0);
    ep.subsets[0].ports.push(EndpointPort::default());
    let msgs: Vec<String> = endpoints_errors(&ep)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        msgs,
        vec![
            "subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            "subsets[0].ports[0].name: Required value",
            "subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "subsets[0].ports[1].name: Required value",
            "subsets[0].ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "subsets[0].ports[1].protocol: Required value",
        ]
    );
    ep.subsets[0].addresses.clear();
    ep.subsets[0].ports.clear();
    let msgs: Vec<String> = endpoints_errors(&ep)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        msgs,
        vec!["subsets[0]: Required value: must specify `addresses` or `notReadyAddresses`"]
    );
}

#[test]
fn endpoints_port_names_need_not_be_unique() {
    // Unlike Services and EndpointSlices, Endpoints do not check port-name uniqueness.
    let port = |p| EndpointPort {
        name: Some("http".into()),
        port: Some(p),
        protocol: Some(Protocol::Tcp),
        app_protocol: None,
    };
    let ep = Endpoints {
        metadata: ObjectMeta::named("ns", "web"),
        subsets: vec![EndpointSubset {
            addresses: vec![EndpointAddress {
                ip: "10.1.0.5".into(),
                ..EndpointAddress::default()
            }],
            not_ready_addresses: vec![],
            ports: vec![port(80), port(81)],
        }],
        ..Endpoints::default()
    };
    assert!(validate_endpoints(&ep).is_ok());
}

fn slice() -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta::named("ns", "web-abcde"),
        address_type: AddressType::Ipv4,
        endpoints: vec![Endpoint {
            addresses: vec!["10.1.0.5".into()],
            hostname: Some("web-0".into()),
            node_name: Some("node-a".into()),
            hints: Some(EndpointHints {
                for_zones: vec![ForZone {
                    name: "zone-a".into(),
                }],
                for_nodes: vec![],
            }),
            ..Endpoint::default()
        }],
        ports: vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some(Protocol::Tcp),
            app_protocol: None,
        }],
        ..EndpointSlice::default()
    }
}

#[test]
fn endpoint_slice_validation() {
    assert!(validate_endpoint_slice(&slice()).is_ok());

    let mut s = slice();
    s.address_type = AddressType::default();
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "addressType: Required value"
    );
    s.address_type = AddressType::Other("IPv5".into());
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "addressType: Unsupported value: \"IPv5\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
    );

    let mut s = slice();
    s.endpoints[0].addresses = vec!["fd00::1".into()];
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address"
    );
    s.endpoints[0].addresses.clear();
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "endpoints[0].addresses: Required value: must contain at least 1 address"
    );
    s.endpoints[0].addresses = vec!["169.254.0.1".into()];
    assert!(
        endpoint_slice_errors(&s)[0]
            .to_string()
            .contains("link-local range")
    );

    let mut s = slice();
    s.ports.push(s.ports[0].clone());
    s.ports[1].protocol = None;
    let msgs: Vec<String> = endpoint_slice_errors(&s)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        msgs,
        vec![
            "ports[1].name: Duplicate value: \"http\"",
            "ports[1].protocol: Required value",
        ]
    );

    let mut s = slice();
    s.endpoints[0]
        .hints
        .as_mut()
        .unwrap()
        .for_zones
        .push(ForZone {
            name: "zone-a".into(),
        });
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "endpoints[0].hints.forZones[1].name: Duplicate value: \"zone-a\""
    );

    let mut s = slice();
    s.endpoints = vec![s.endpoints[0].clone(); 1001];
    assert_eq!(
        endpoint_slice_errors(&s)[0].to_string(),
        "endpoints: Too many: 1001: must have at most 1000 items"
    );
}

fn pod_errs(pod: &Pod) -> Vec<String> {
    pod_errors(pod).iter().map(ToString::to_string).collect()
}

#[test]
fn pod_names_that_become_dns_names_are_dns_labels() {
    // A Pod's hostname and subdomain make `hostname.subdomain.ns.svc.cluster.local`; the
    // API server rejects ones that are not DNS-1123 labels (`ValidatePodSpec` in
    // pkg/apis/core/validation/validation.go), so they never reach a DNS encoder.
    let ok = Pod::new("ns", "web-0")
        .with_container(Container::new("app").with_port("http", 8080))
        .with_ip("10.1.0.1");
    assert!(validate_pod(&ok).is_ok());
    let mut pod = ok;
    pod.spec.hostname = Some("a..b".into());
    pod.spec.subdomain = Some("x".repeat(64));
    pod.spec.node_name = Some("Node_A".into());
    let errs = pod_errs(&pod);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "spec.hostname: Invalid value: \"a..b\": a lowercase RFC 1123 label must consist of"
        ),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("spec.subdomain: Invalid value:")
            && errs[1].contains("must be no more than 63 characters"),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].starts_with(
            "spec.nodeName: Invalid value: \"Node_A\": a lowercase RFC 1123 subdomain"
        ),
        "{}",
        errs[2]
    );
    let err = validate_pod(&pod).unwrap_err().to_string();
    assert!(err.starts_with("Pod \"web-0\" is invalid: "), "{err}");
}

#[test]
fn pod_containers_ports_and_ips() {
    let mut pod = Pod::new("ns", "p")
        .with_container(
            Container::new("app")
                .with_port("http", 0)
                .with_port("http", 70_000),
        )
        .with_container(Container::new("app"));
    pod.spec.containers[0].ports[0].host_port = Some(-1);
    let mut status = pod.status.clone().unwrap_or_default();
    status.pod_ip = Some("10.1.0.1".into());
    status.pod_ips = ["10.1.0.1", "10.1.0.2", "nope"]
        .iter()
        .map(|ip| PodIp { ip: (*ip).into() })
        .collect();
    pod.status = Some(status);
    assert_eq!(
        pod_errs(&pod),
        [
            "spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[0].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
            "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[1].name: Duplicate value: \"app\"",
            "status.podIPs[2].ip: Invalid value: \"nope\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "status.podIPs: Too many: 3: must have at most 2 items",
        ]
    );
    // Two addresses of one family.
    let mut pod = Pod::new("ns", "p").with_ip("10.1.0.1");
    if let Some(s) = pod.status.as_mut() {
        s.pod_ips.push(PodIp {
            ip: "10.1.0.2".into(),
        });
    }
    assert_eq!(
        pod_errs(&pod),
        [
            "status.podIPs: Invalid value: []string{\"10.1.0.1\", \"10.1.0.2\"}: may specify no more than one IP for each IP family"
        ]
    );
}

#[test]
fn nodes_are_cluster_scoped_dns_subdomains() {
    assert!(validate_node(&Node::new("node-a.example")).is_ok());
    let mut node = Node::new("Node A");
    node.metadata.namespace = Some("default".into());
    let errs: Vec<String> = node_errors(&node).iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("metadata.name: Invalid value: \"Node A\""),
        "{}",
        errs[0]
    );
    assert_eq!(
        errs[1],
        "metadata.namespace: Forbidden: not allowed on this type"
    );
}
