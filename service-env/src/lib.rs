//! The environment variables a container gets from Services, exactly as kubelet computes
//! them (`pkg/kubelet/envvars`, `makeEnvironmentVariables` in `pkg/kubelet/kubelet_pods.go`).
//!
//! ```text
//! Snapshot.services ──services_for_pod──► service_env ─┐
//! Pod + Container (envFrom, env) + EnvSources ─────────┴─► for_container ─► [Variable]
//! ```
//!
//! ```
//! use service_core::cluster::Cluster;
//! use service_core::model::{Service, ServicePort};
//! use service_core::snapshot::NodeInfo;
//!
//! let mut cluster = Cluster::default();
//! cluster.add_service(
//!     Service::cluster_ip("shop", "redis-primary")
//!         .with_cluster_ip("10.96.0.11")
//!         .with_port(ServicePort::tcp("", 6379)),
//! )?;
//! let snapshot = cluster.snapshot(NodeInfo::default())?;
//! let vars = service_env::for_namespace(&snapshot, "shop", true);
//! assert_eq!(vars[0].to_string(), "REDIS_PRIMARY_SERVICE_HOST=10.96.0.11");
//! assert!(vars.iter().any(|v| v.to_string() == "REDIS_PRIMARY_PORT=tcp://10.96.0.11:6379"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules
//! - A pod sees the Services of its namespace when `enableServiceLinks` is true (the
//!   default), and always the `kubernetes` Service of the `default` namespace; a Service
//!   named `kubernetes` in the pod's namespace wins over the default one. Services without
//!   a cluster IP (headless, not yet allocated, `ExternalName`) are skipped.
//! - Per Service `P` (name upper-cased, `-` → `_`): `P_SERVICE_HOST`, `P_SERVICE_PORT`
//!   (first port), `P_SERVICE_PORT_<NAME>` per named port, then the Docker-link family
//!   `P_PORT`, `P_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`. The cluster IP is written as
//!   spelled in the Service; IPv6 addresses are bracketed inside URLs only.
//! - The container's own variables come first: `envFrom` sources in order (keys of one
//!   source in sorted order, optional prefix, later sources overwrite earlier ones), then
//!   `env` in declaration order, each `value` expanded with `$(VAR)` references to variables
//!   defined before it and to the service variables ([`expand`]). Service variables whose
//!   names the container defines itself are left out.
//!
//! # Order (kubelet's is a Go map's: random)
//! The container's variables in the order they were first defined, then the service
//! variables: Services sorted by name, each in kubelet's per-Service order. When two
//! Services generate the same name (possible only in contrived cases), the later one wins.
//!
//! # What this crate does not do
//! It does no IO: ConfigMap, Secret and `valueFrom` lookups go through [`EnvSources`].
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

pub use service_core as core;
use service_core::model::{Container, Pod};
use service_core::snapshot::{ServiceInfo, Snapshot};
use service_core::valid::{ClusterIps, ServiceKey};

/// One environment variable as the container sees it: a name and its final value (not to
/// be confused with [`service_core::model::EnvVar`], the container spec's `env` entry,
/// whose value may still hold `$(VAR)` references).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Variable {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

impl Variable {
    /// A variable.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }
}

/// `NAME=value`, as `env` prints it.
impl std::fmt::Display for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// kubelet's `makeEnvVariableName`: upper case, `-` → `_`.
pub fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// Whether a Service has a cluster IP (`IsServiceIPSet`: not `None`, not empty).
fn ip_set(svc: &ServiceInfo) -> bool {
    matches!(svc.cluster_ips, ClusterIps::Ips(_)) && !svc.cluster_ip_text.is_empty()
}

/// The variables of the given Services, in kubelet's per-Service order (`FromServices`),
/// Services in the order given. Services without a cluster IP or without ports are skipped.
pub fn service_env<'a>(services: impl IntoIterator<Item = &'a ServiceInfo>) -> Vec<Variable> {
    let mut out = Vec::new();
    for svc in services {
        push_service(svc, &mut out);
    }
    out
}

/// One Service's variables. Every name and value is built in one exact-size allocation:
/// a namespace of 5,000 Services yields 40,000 variables per container.
fn push_service(svc: &ServiceInfo, out: &mut Vec<Variable>) {
    if !ip_set(svc) || svc.ports.is_empty() {
        return;
    }
    let prefix = env_name(&svc.key.name);
    let host = svc.cluster_ip_text.as_str();
    let join = |parts: &[&str]| {
        let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            s.push_str(p);
        }
        s
    };
    // net.JoinHostPort: brackets for IPv6 (any address with a colon).
    let (open, close) = if host.contains(':') {
        ("[", "]")
    } else {
        ("", "")
    };
    let url = |scheme: &str, port: &str| join(&[scheme, "://", open, host, close, ":", port]);
    let var = |name: String, value: String| Variable { name, value };

    let first = &svc.ports[0];
    let first_port = first.port.to_string();
    out.push(var(join(&[&prefix, "_SERVICE_HOST"]), host.to_owned()));
    out.push(var(join(&[&prefix, "_SERVICE_PORT"]), first_port.clone()));
    for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
        let name = join(&[&prefix, "_SERVICE_PORT_", &env_name(&p.name)]);
        out.push(var(name, p.port.to_string()));
    }
    out.push(var(
        join(&[&prefix, "_PORT"]),
        url(first.protocol.lower(), &first_port),
    ));
    for p in &svc.ports {
        let lower = p.protocol.lower();
        let port = p.port.to_string();
        let upper = env_name(p.protocol.as_str());
        let pp = join(&[&prefix, "_PORT_", &port, "_", &upper]);
        let (proto, port_name, addr) = (
            join(&[&pp, "_PROTO"]),
            join(&[&pp, "_PORT"]),
            join(&[&pp, "_ADDR"]),
        );
        out.push(var(pp, url(lower, &port)));
        out.push(var(proto, lower.to_owned()));
        out.push(var(port_name, port));
        out.push(var(addr, host.to_owned()));
    }
}

/// The Services whose variables a pod in `namespace` gets (`getServiceEnvVarMap`), sorted
/// by name.
pub fn services_for_pod<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    enable_service_links: bool,
) -> Vec<&'a ServiceInfo> {
    let mut out: Vec<&ServiceInfo> = Vec::new();
    if enable_service_links {
        // Keys sort by namespace then name: the namespace is one contiguous, sorted range.
        let from = ServiceKey::new(namespace, "");
        for (key, svc) in snapshot.services.range(from..) {
            if key.namespace != namespace {
                break;
            }
            if ip_set(svc) {
                out.push(svc);
            }
        }
    }
    // The master service, unless the pod's namespace has its own `kubernetes`.
    let master = snapshot
        .services
        .get(&ServiceKey::new("default", "kubernetes"))
        .filter(|s| ip_set(s));
    if let Some(master) = master
        && let Err(at) = out.binary_search_by(|s| s.key.name.as_str().cmp("kubernetes"))
    {
        out.insert(at, master);
    }
    out
}

/// kubelet's `$(VAR)` expansion (`third_party/forked/golang/expansion`): `$(NAME)` is
/// replaced by `lookup(NAME)` when that is defined and left as written otherwise; `$$`
/// is an escaped `$`; any other `$` is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                let _ = write!(out, "$({name})");
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // The operator and the next character, as written.
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..c]);
                    c
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// Where ConfigMaps, Secrets and `valueFrom` values come from.
pub trait EnvSources {
    /// The data of a ConfigMap, if it exists.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// The data of a Secret (decoded), if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// The value of an `env[].valueFrom` (field, resource, ConfigMap or Secret key).
    /// `Ok(None)` leaves the variable unset (an optional reference that is missing).
    ///
    /// # Errors
    /// The reference cannot be resolved and is not optional.
    fn value_from(
        &self,
        pod: &Pod,
        container: &Container,
        value_from: &serde_json::Value,
    ) -> Result<Option<String>, String>;
}

/// No ConfigMaps or Secrets; `valueFrom` resolves `fieldRef`s to the pod's name, namespace,
/// node and IPs, and nothing else.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodFieldsOnly;

impl EnvSources for PodFieldsOnly {
    fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    fn value_from(
        &self,
        pod: &Pod,
        _: &Container,
        value_from: &serde_json::Value,
    ) -> Result<Option<String>, String> {
        let Some(path) = value_from
            .get("fieldRef")
            .and_then(|f| f.get("fieldPath"))
            .and_then(serde_json::Value::as_str)
        else {
            return Err("only fieldRef values can be resolved here".into());
        };
        let ips = pod.ips();
        Ok(Some(match path {
            "metadata.name" => pod.metadata.name().to_owned(),
            "metadata.namespace" => pod.metadata.namespace().to_owned(),
            "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
            "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
            "status.podIP" => ips.first().map(|s| (*s).to_owned()).unwrap_or_default(),
            "status.podIPs" => ips.join(","),
            other => return Err(format!("unsupported fieldPath {other}")),
        }))
    }
}

/// A container's environment could not be built (kubelet would not start it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("container {container:?}: {reason}")]
#[non_exhaustive]
pub struct EnvError {
    /// The container.
    pub container: String,
    /// Why.
    pub reason: String,
}

/// `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`. kubelet skips `envFrom` keys that are not.
fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "-._".contains(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// The environment of one container of a pod, as kubelet builds it; see the crate docs for
/// the rules and the order.
///
/// # Errors
/// A non-optional ConfigMap, Secret or `valueFrom` reference cannot be resolved.
pub fn for_container(
    snapshot: &Snapshot,
    pod: &Pod,
    container: &Container,
    sources: &dyn EnvSources,
) -> Result<Vec<Variable>, EnvError> {
    let namespace = pod.metadata.namespace();
    let links = pod.spec.enable_service_links.unwrap_or(true);
    let service_vars = dedup_last_wins(service_env(services_for_pod(snapshot, namespace, links)));
    // Built on the first `$(VAR)` reference: most containers have none.
    let mut service_map: Option<HashMap<&str, &str>> = None;
    let err = |reason: String| EnvError {
        container: container.name.clone(),
        reason,
    };

    // Container variables: first-definition order, last value wins.
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    fn set(
        order: &mut Vec<String>,
        values: &mut HashMap<String, String>,
        name: String,
        value: String,
    ) {
        if !values.contains_key(&name) {
            order.push(name.clone());
        }
        values.insert(name, value);
    }

    for source in &container.env_from {
        let prefix = source.prefix.as_deref().unwrap_or("");
        let (kind, reference, data) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), _) => ("configMap", r, sources.config_map(namespace, &r.name)),
            (None, Some(r)) => ("secret", r, sources.secret(namespace, &r.name)),
            (None, None) => continue,
        };
        let Some(data) = data else {
            if reference.optional.unwrap_or(false) {
                continue;
            }
            return Err(err(format!(
                "couldn't get {kind} {namespace}/{}",
                reference.name
            )));
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if is_env_var_name(&name) {
                set(&mut order, &mut values, name, v);
            }
        }
    }

    for var in &container.env {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => {
                // References resolve against variables defined so far, then services.
                if v.contains("$(") {
                    let services = service_map.get_or_insert_with(|| {
                        service_vars
                            .iter()
                            .map(|v| (v.name.as_str(), v.value.as_str()))
                            .collect()
                    });
                    expand(v, |name| {
                        values
                            .get(name)
                            .map(String::as_str)
                            .or_else(|| services.get(name).copied())
                            .map(|s| (*s).to_owned())
                    })
                } else {
                    v.clone()
                }
            }
            (_, Some(from)) => match sources.value_from(pod, container, from) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => return Err(err(format!("env {}: {e}", var.name))),
            },
            _ => String::new(),
        };
        set(&mut order, &mut values, var.name.clone(), value);
    }

    let mut out: Vec<Variable> = order.iter().map(|n| Variable::new(n, &values[n])).collect();
    // Service variables the container does not define.
    drop(service_map);
    out.extend(
        service_vars
            .into_iter()
            .filter(|v| !values.contains_key(&v.name)),
    );
    Ok(out)
}

/// The service variables alone for a pod in `namespace` (what the `envvars` example
/// prints), de-duplicated with the later definition winning.
pub fn for_namespace(
    snapshot: &Snapshot,
    namespace: &str,
    enable_service_links: bool,
) -> Vec<Variable> {
    dedup_last_wins(service_env(services_for_pod(
        snapshot,
        namespace,
        enable_service_links,
    )))
}

/// Drops every variable that is defined again later (names can collide only in contrived
/// cases, such as Service `a` with port `x-service-host` and Service `a-service-port-x`).
fn dedup_last_wins(vars: Vec<Variable>) -> Vec<Variable> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(vars.len());
    let keep: Vec<bool> = vars
        .iter()
        .rev()
        .map(|v| seen.insert(v.name.as_str()))
        .collect();
    if keep.iter().all(|k| *k) {
        return vars;
    }
    drop(seen);
    vars.into_iter()
        .zip(keep.into_iter().rev())
        .filter_map(|(v, k)| k.then_some(v))
        .collect()
}

#[cfg(test)]
mod tests;
