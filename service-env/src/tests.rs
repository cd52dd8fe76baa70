use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use service_core::model::{
    Container, EnvFromSource, EnvSourceRef, EnvVar as SpecEnvVar, ObjectMeta, Pod,
};
use service_core::snapshot::Snapshot;
use service_testkit::fixtures;

use super::*;

fn pairs(vars: &[Variable]) -> Vec<(&str, &str)> {
    vars.iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect()
}

/// kubelet's `TestFromServices` (pkg/kubelet/envvars/envvars_test.go), case for case.
#[test]
fn kubelet_from_services() {
    let yaml = r"
apiVersion: v1
kind: Service
metadata: {name: foo-bar, namespace: ns}
spec: {selector: {bar: baz}, clusterIP: 1.2.3.4, ports: [{port: 8080, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: abc-123, namespace: ns}
spec:
  selector: {bar: baz}
  clusterIP: 5.6.7.8
  ports: [{name: u-d-p, port: 8081, protocol: UDP}, {name: t-c-p, port: 8081, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: q-u-u-x, namespace: ns}
spec:
  selector: {bar: baz}
  clusterIP: 9.8.7.6
  ports: [{name: '', port: 8082, protocol: TCP}, {name: '8083', port: 8083, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: svrc-clusterip-none, namespace: ns}
spec: {selector: {bar: baz}, clusterIP: None, ports: [{port: 8082, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: svrc-clusterip-empty, namespace: ns}
spec: {selector: {bar: baz}, clusterIP: '', ports: [{port: 8082, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: super-ipv6, namespace: ns}
spec:
  selector: {bar: baz}
  clusterIP: '2001:DB8::'
  ports: [{name: u-d-p, port: 8084, protocol: UDP}, {name: t-c-p, port: 8084, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: sctp-1, namespace: ns}
spec: {selector: {bar: sctp-sel}, clusterIP: 1.2.3.4, ports: [{port: 777, protocol: SCTP}]}
";
    // kubelet's test has an unnamed first port next to a named one, which validation
    // rejects for new objects; load the rest and add q-u-u-x through a lenient path.
    let yaml = yaml.replace(
        "[{name: '', port: 8082, protocol: TCP}, {name: '8083', port: 8083, protocol: TCP}]",
        "[{name: x, port: 8082, protocol: TCP}, {name: '8083', port: 8083, protocol: TCP}]",
    );
    let snap = fixtures::snapshot(&yaml, "n", &[]);
    let order = [
        "foo-bar",
        "abc-123",
        "q-u-u-x",
        "svrc-clusterip-none",
        "svrc-clusterip-empty",
        "super-ipv6",
        "sctp-1",
    ];
    let mut infos: Vec<ServiceInfo> = order
        .iter()
        .map(|n| {
            snap.services
                .values()
                .find(|s| s.key.name == *n)
                .unwrap()
                .as_ref()
                .clone()
        })
        .collect();
    // Restore kubelet's unnamed first port on q-u-u-x.
    infos[2].ports[0].name = String::new();
    let vars = service_env(&infos);
    let expected = [
        ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
        ("FOO_BAR_SERVICE_PORT", "8080"),
        ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
        ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
        ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
        ("ABC_123_SERVICE_HOST", "5.6.7.8"),
        ("ABC_123_SERVICE_PORT", "8081"),
        ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
        ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
        ("ABC_123_PORT", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
        ("ABC_123_PORT_8081_UDP_PORT", "8081"),
        ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
        ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
        ("ABC_123_PORT_8081_TCP_PORT", "8081"),
        ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
        ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
        ("Q_U_U_X_SERVICE_PORT", "8082"),
        ("Q_U_U_X_SERVICE_PORT_8083", "8083"),
        ("Q_U_U_X_PORT", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8082_TCP_PORT", "8082"),
        ("Q_U_U_X_PORT_8082_TCP_ADDR", "9.8.7.6"),
        ("Q_U_U_X_PORT_8083_TCP", "tcp://9.8.7.6:8083"),
        ("Q_U_U_X_PORT_8083_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8083_TCP_PORT", "8083"),
        ("Q_U_U_X_PORT_8083_TCP_ADDR", "9.8.7.6"),
        // The address is written as spelled in the Service, bracketed only in URLs.
        ("SUPER_IPV6_SERVICE_HOST", "2001:DB8::"),
        ("SUPER_IPV6_SERVICE_PORT", "8084"),
        ("SUPER_IPV6_SERVICE_PORT_U_D_P", "8084"),
        ("SUPER_IPV6_SERVICE_PORT_T_C_P", "8084"),
        ("SUPER_IPV6_PORT", "udp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_UDP", "udp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_UDP_PROTO", "udp"),
        ("SUPER_IPV6_PORT_8084_UDP_PORT", "8084"),
        ("SUPER_IPV6_PORT_8084_UDP_ADDR", "2001:DB8::"),
        ("SUPER_IPV6_PORT_8084_TCP", "tcp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_TCP_PROTO", "tcp"),
        ("SUPER_IPV6_PORT_8084_TCP_PORT", "8084"),
        ("SUPER_IPV6_PORT_8084_TCP_ADDR", "2001:DB8::"),
        ("SCTP_1_SERVICE_HOST", "1.2.3.4"),
        ("SCTP_1_SERVICE_PORT", "777"),
        ("SCTP_1_PORT", "sctp://1.2.3.4:777"),
        ("SCTP_1_PORT_777_SCTP", "sctp://1.2.3.4:777"),
        ("SCTP_1_PORT_777_SCTP_PROTO", "sctp"),
        ("SCTP_1_PORT_777_SCTP_PORT", "777"),
        ("SCTP_1_PORT_777_SCTP_ADDR", "1.2.3.4"),
    ];
    assert_eq!(pairs(&vars), expected);
}

/// Expansion cases of kubelet's expansion tests (third_party/forked/golang/expansion).
#[test]
fn expansion() {
    let vars: BTreeMap<&str, &str> = [
        ("VAR_A", "A"),
        ("VAR_B", "B"),
        ("VAR_C", "C"),
        ("VAR_REF", "$(VAR_A)"),
        ("VAR_EMPTY", ""),
    ]
    .into();
    let lookup = |n: &str| vars.get(n).map(|v| (*v).to_owned());
    for (input, want) in [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),
        ("$(VAR_REF)", "$(VAR_A)"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
        ("$$$$$$$(VAR_A)", "$$$A"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$(VAR_EMPTY)", ""),
        ("foo-$(VAR_EMPTY)", "foo-"),
        ("$", "$"),
        ("$$", "$"),
        ("$(", "$("),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("$(VAR_A)$", "A$"),
        ("$()", "$()"),
        ("(VAR_A)", "(VAR_A)"),
        ("$)", "$)"),
        ("n$é", "n$é"),
        ("", ""),
    ] {
        assert_eq!(expand(input, lookup), want, "{input:?}");
    }
}

const CLUSTER: &str = r"
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 1.2.3.1, ports: [{name: https, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: test, namespace: test1}
spec: {clusterIP: 1.2.3.3, ports: [{port: 8083}]}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: test2}
spec: {clusterIP: 1.2.3.4, ports: [{port: 8084}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: test1}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: test1}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: test3}
spec: {clusterIP: 1.2.3.9, ports: [{port: 9}]}
";

fn snap() -> Snapshot {
    fixtures::snapshot(CLUSTER, "n", &[])
}

fn pod(ns: &str, links: bool, env: Vec<SpecEnvVar>) -> Pod {
    let mut p = Pod::default();
    p.metadata = ObjectMeta::named(ns, "p");
    p.spec.enable_service_links = Some(links);
    let mut c = Container::default();
    c.name = "c".into();
    c.env = env;
    p.spec.containers.push(c);
    p
}

fn names(vars: &[Variable]) -> Vec<&str> {
    vars.iter().map(|v| v.name.as_str()).collect()
}

#[test]
fn which_services_a_pod_sees() {
    let s = snap();
    let p = pod("test1", true, vec![]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    // Its namespace (headless and ExternalName skipped) plus default/kubernetes.
    assert!(names(&vars).contains(&"TEST_SERVICE_HOST"));
    assert!(names(&vars).contains(&"KUBERNETES_SERVICE_HOST"));
    assert!(
        !names(&vars)
            .iter()
            .any(|n| n.starts_with("HEADLESS") || n.starts_with("EXT_") || n.starts_with("OTHER"))
    );
    assert_eq!(vars[0], Variable::new("KUBERNETES_SERVICE_HOST", "1.2.3.1"));
    // Without service links: only the API server's Service.
    let p = pod("test1", false, vec![]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert!(names(&vars).iter().all(|n| n.starts_with("KUBERNETES_")));
    assert_eq!(vars.len(), 8);
    // A `kubernetes` Service in the pod's namespace wins over default/kubernetes...
    let p = pod("test2", true, vec![]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert_eq!(vars[0], Variable::new("KUBERNETES_SERVICE_HOST", "1.2.3.4"));
    // ...but not without service links.
    let p = pod("test2", false, vec![]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert_eq!(vars[0], Variable::new("KUBERNETES_SERVICE_HOST", "1.2.3.1"));
    // enableServiceLinks unset means true.
    let mut p = pod("test1", true, vec![]);
    p.spec.enable_service_links = None;
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert!(names(&vars).contains(&"TEST_SERVICE_PORT"));
    // A pod of the default namespace sees the master service once.
    let p = pod("default", true, vec![]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    let hosts = names(&vars)
        .into_iter()
        .filter(|n| *n == "KUBERNETES_SERVICE_HOST")
        .count();
    assert_eq!(hosts, 1);
}

#[test]
fn container_env_expands_and_overrides() {
    let s = snap();
    // Cases from kubelet's TestMakeEnvironmentVariables ("api server = Y, kubelet = Y").
    let env = vec![
        SpecEnvVar::new("FOO", "BAR"),
        SpecEnvVar::new("TEST_SERVICE_HOST", "1.2.3.3"),
        SpecEnvVar::new("TEST_SERVICE_PORT", "8083"),
        SpecEnvVar::new("TEST_PORT", "tcp://1.2.3.3:8083"),
        SpecEnvVar::new("TEST_PORT_8083_TCP", "tcp://1.2.3.3:8083"),
        SpecEnvVar::new("TEST_PORT_8083_TCP_PROTO", "tcp"),
        SpecEnvVar::new("TEST_PORT_8083_TCP_PORT", "8083"),
        SpecEnvVar::new("TEST_PORT_8083_TCP_ADDR", "1.2.3.3"),
        // expansion cases
        SpecEnvVar::new(
            "SERVICE_URL",
            "http://$(TEST_SERVICE_HOST):$(TEST_SERVICE_PORT)",
        ),
        SpecEnvVar::new("COMPOSITE", "$(FOO)-$(KUBERNETES_SERVICE_PORT)"),
        SpecEnvVar::new("OUT_OF_ORDER_TEST", "$(OUT_OF_ORDER_TARGET)"),
        SpecEnvVar::new("OUT_OF_ORDER_TARGET", "FOO"),
        SpecEnvVar::new("EMPTY_VAR", ""),
        SpecEnvVar::new("EMPTY_TEST", "foo-$(EMPTY_VAR)"),
        SpecEnvVar::new("UNDEFINED_TEST", "$(UNDEFINED_VAR)"),
        SpecEnvVar::new("ESCAPED", "$$(FOO)"),
        SpecEnvVar::new("FOO", "OVERRIDDEN"),
    ];
    let p = pod("test1", true, env);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    let get = |n: &str| vars.iter().find(|v| v.name == n).map(|v| v.value.as_str());
    assert_eq!(get("SERVICE_URL"), Some("http://1.2.3.3:8083"));
    assert_eq!(get("COMPOSITE"), Some("BAR-443"));
    assert_eq!(get("OUT_OF_ORDER_TEST"), Some("$(OUT_OF_ORDER_TARGET)"));
    assert_eq!(get("EMPTY_TEST"), Some("foo-"));
    assert_eq!(get("UNDEFINED_TEST"), Some("$(UNDEFINED_VAR)"));
    assert_eq!(get("ESCAPED"), Some("$(FOO)"));
    // The later definition wins, at the position of the first.
    assert_eq!(get("FOO"), Some("OVERRIDDEN"));
    assert_eq!(vars[0].name, "FOO");
    // No duplicates: the container's TEST_* suppress the generated ones.
    let mut seen = HashSet::new();
    assert!(vars.iter().all(|v| seen.insert(v.name.clone())));
    // The container's variables first, then the service variables.
    let first_service = vars
        .iter()
        .position(|v| v.name == "KUBERNETES_SERVICE_HOST")
        .unwrap();
    assert!(vars[..first_service].iter().any(|v| v.name == "ESCAPED"));
}

struct Maps;

impl EnvSources for Maps {
    fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (ns == "test1" && name == "cm").then(|| {
            [
                ("REPLACE_ME", "cm"),
                ("FROM_CM", "1"),
                ("bad name", "x"),
                ("1BAD", "y"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        })
    }

    fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (ns == "test1" && name == "s")
            .then(|| [("REPLACE_ME".to_owned(), "secret".to_owned())].into())
    }

    fn value_from(
        &self,
        pod: &Pod,
        c: &Container,
        v: &serde_json::Value,
    ) -> Result<Option<String>, String> {
        PodFieldsOnly.value_from(pod, c, v)
    }
}

fn from(
    cm: Option<&str>,
    secret: Option<&str>,
    prefix: Option<&str>,
    optional: bool,
) -> EnvFromSource {
    let mut s = EnvFromSource::default();
    let r = |n: &str| {
        let mut r = EnvSourceRef::default();
        r.name = n.to_owned();
        r.optional = Some(optional);
        r
    };
    s.config_map_ref = cm.map(r);
    s.secret_ref = secret.map(r);
    s.prefix = prefix.map(str::to_owned);
    s
}

#[test]
fn env_from_sources() {
    let s = snap();
    let mut p = pod(
        "test1",
        false,
        vec![SpecEnvVar::new("USES_CM", "$(FROM_CM)-$(P_FROM_CM)")],
    );
    p.spec.containers[0].env_from = vec![
        from(Some("cm"), None, None, false),
        from(None, Some("s"), None, false),
        from(Some("cm"), None, Some("P_"), false),
        from(Some("missing"), None, None, true),
    ];
    let vars = for_container(&s, &p, &p.spec.containers[0], &Maps).unwrap();
    let get = |n: &str| vars.iter().find(|v| v.name == n).map(|v| v.value.as_str());
    // Later sources overwrite earlier ones; invalid names are skipped.
    assert_eq!(get("REPLACE_ME"), Some("secret"));
    assert_eq!(get("P_REPLACE_ME"), Some("cm"));
    assert_eq!(get("USES_CM"), Some("1-1"));
    assert_eq!(get("bad name"), None);
    assert_eq!(get("1BAD"), None);
    // A missing non-optional source stops the container.
    p.spec.containers[0].env_from = vec![from(Some("missing"), None, None, false)];
    let err = for_container(&s, &p, &p.spec.containers[0], &Maps).unwrap_err();
    assert_eq!(
        err.to_string(),
        "container \"c\": couldn't get configMap test1/missing"
    );
}

#[test]
fn value_from_field_refs() {
    let s = snap();
    let mut v = SpecEnvVar::default();
    v.name = "POD_NS".into();
    v.value_from = Some(serde_json::json!({"fieldRef": {"fieldPath": "metadata.namespace"}}));
    let p = pod("test1", false, vec![v]);
    let vars = for_container(&s, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert_eq!(vars[0], Variable::new("POD_NS", "test1"));
}

proptest! {
    #[test]
    // Names are quoted: unquoted `n` or `y` is a YAML 1.1 boolean, for kubectl as for us.
    fn names_are_valid_env_names(name in "[a-z]([-a-z0-9]{0,20}[a-z0-9])?", ports in proptest::collection::btree_set("[a-z]([-a-z0-9]{0,6}[a-z0-9])?", 1..4)) {
        let ports: Vec<String> = ports.into_iter().enumerate().map(|(i, n)| format!("{{name: '{n}', port: {}}}", 80 + i)).collect();
        let yaml = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: '{name}', namespace: ns}}\nspec: {{clusterIP: 10.0.0.1, ports: [{}]}}\n", ports.join(", "));
        let snap = fixtures::snapshot(&yaml, "n", &[]);
        for v in for_namespace(&snap, "ns", true) {
            prop_assert!(v.name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'), "{}", v.name);
            prop_assert!(v.name.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn env_name_never_panics_and_keeps_every_character(name in "\\PC{0,40}") {
        let out = env_name(&name);
        prop_assert_eq!(out.chars().count(), name.chars().count());
        prop_assert!(!out.contains('-'));
    }

    #[test]
    fn expansion_never_panics(input in "\\PC{0,40}", value in "\\PC{0,5}") {
        let _ = expand(&input, |n| (n.len() % 2 == 0).then(|| value.clone()));
    }
}

/// kubelet collects a pod's Services from a Go map, so when two of them generate the same
/// variable name (`getServiceEnvVarMap` in `pkg/kubelet/kubelet_services.go`) which value
/// wins is random there. Here the Service later by name always wins, and the name appears
/// once.
#[test]
fn colliding_names_resolve_deterministically() {
    let yaml = r"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 10.0.0.1, ports: [{name: x-service-host, port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: a-service-port-x, namespace: ns}
spec: {clusterIP: 10.0.0.2, ports: [{port: 82}]}
";
    let snap = fixtures::snapshot(yaml, "n", &[]);
    let vars = for_namespace(&snap, "ns", true);
    let hits: Vec<&Variable> = vars
        .iter()
        .filter(|v| v.name == "A_SERVICE_PORT_X_SERVICE_HOST")
        .collect();
    assert_eq!(
        hits,
        [&Variable::new("A_SERVICE_PORT_X_SERVICE_HOST", "10.0.0.2")]
    );
    let mut seen = HashSet::new();
    assert!(vars.iter().all(|v| seen.insert(&v.name)));
    // The same for a container.
    let p = pod("ns", true, vec![]);
    let all = for_container(&snap, &p, &p.spec.containers[0], &PodFieldsOnly).unwrap();
    assert_eq!(all, vars);
}
