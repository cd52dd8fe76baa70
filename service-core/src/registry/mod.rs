//! The Service registry: create, update and delete Services as the API server does,
//! allocating cluster IPs and node ports in the same transaction
//! (`pkg/registry/core/service/storage`).
//!
//! ```text
//! create(Service) ─► defaults ─► allocate (families, cluster IPs, node ports,
//!                                 health-check node port) ─► validate ─► Store::put(absent)
//!                        │ any failure: release what this call allocated
//!                        ▼ success: commit (deferred releases happen now)
//! ```
//!
//! - State lives in a [`Store`] (compare-and-swap on a version per key): one key per
//!   allocator holding its [`RangeAllocation`], one key per
//!   Service. Several registries (API server replicas) may share a store: every allocation
//!   is a read-modify-compare-and-swap of the allocator key, retried on conflict, as
//!   Kubernetes does.
//! - Allocations are made eagerly and released late: a failed call releases what it took,
//!   an update releases what the Service no longer uses only after the Service is written.
//!   A process that dies between the two, or a Service write whose outcome is unknown (the
//!   store failed after the request was sent), leaks instead: never double-allocates.
//!   [`Registry::repair`] frees a leak once it has found it unused for a grace period of
//!   time ([`RegistryConfig::with_leak_grace`], three minutes by default), however many
//!   passes ran meanwhile: a Service write still in flight keeps its values.
//! - A compare-and-swap that loses a race is retried after a pause that grows
//!   exponentially, with jitter ([`Retry`]); after the last attempt the call fails with
//!   [`Reason::ServerTimeout`] ("try again"), never with a half-done change.
//! - Errors are the API's: 422 `Invalid` with field errors (explicit values that cannot be
//!   allocated, validation), 500 `InternalError` (`failed to allocate a serviceIP: range is
//!   full`), 404, 409.
//!
//! The registry does no IO of its own and keeps no clock: `creationTimestamp` is left to
//! the caller, repair is given the time, and pauses are the store's
//! ([`Store::pause`]). Randomness (allocation, `uid`, `generateName`) comes from the generator it
//! is given.

mod addresses;
mod fields;
mod repair;
mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::random::{Random, SeededRandom};
use ipnet::IpNet;

use crate::alloc::{AllocError, IpAllocator, PortAllocator, PortRange, RangeAllocation};
use crate::defaults;
use crate::model::{IpFamily, Service, ServiceType, TrafficPolicy};
use crate::valid::{ServiceKey, ValidService};
use crate::validation::names::parse_ip_sloppy;
use crate::validation::{
    BadValue, FieldError, Path, ValidationError, validate_service, validate_service_update,
};

pub use repair::{RepairEvent, RepairReport};
pub use store::{MemoryStore, Precondition, Store, StoreError, Versioned};

/// Where the registry keeps its keys unless told otherwise.
///
/// Deliberately not the API server's `/registry`: a registry pointed at an etcd that a
/// Kubernetes cluster also uses must not overwrite that cluster's allocator state
/// (`/registry/ranges/serviceips`) or its Services.
pub const DEFAULT_PREFIX: &str = "/service-registry";

/// The cluster's service ranges, as the API server's flags give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryConfig {
    service_cidrs: Vec<IpNet>,
    node_ports: PortRange,
    prefix: String,
    leak_grace: Duration,
    retry: Retry,
    ip_addresses: bool,
}

/// How a compare-and-swap that lost a race is retried: up to `attempts` tries, pausing
/// between them for a delay that starts at `initial` and doubles up to `max`, each drawn
/// uniformly from its upper half (jitter, so that contending replicas spread out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Tries in all (at least one).
    pub attempts: u32,
    /// The first pause.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Default for Retry {
    /// 32 attempts, pauses from 1 ms up to 500 ms (about 10 s in all at worst).
    fn default() -> Self {
        Self {
            attempts: 32,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(500),
        }
    }
}

impl Retry {
    /// A policy.
    pub fn new(attempts: u32, initial: Duration, max: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            initial,
            max,
        }
    }

    /// The pause after the `attempt`-th lost race (0-based), jittered by `rng`.
    fn pause(&self, attempt: u32, rng: &mut impl Random) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = full / 2;
        let span = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
        let extra = if span == 0 {
            0
        } else {
            rng.below(usize::try_from(span.saturating_add(1)).unwrap_or(usize::MAX)) as u64
        };
        half + Duration::from_micros(extra)
    }
}

/// The API server's repair interval, and the default grace period before repair frees a
/// value it found unused (`pkg/registry/core/service/ipallocator/controller/repair.go`
/// runs every 3 minutes).
pub const DEFAULT_LEAK_GRACE: Duration = Duration::from_secs(180);

/// A configuration the API server would refuse to start with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl RegistryConfig {
    /// `--service-cluster-ip-range` (one CIDR, or two of different families: the first is
    /// the cluster's default family) and `--service-node-port-range`. Keys live under
    /// [`DEFAULT_PREFIX`].
    ///
    /// # Errors
    /// No CIDR, more than two, two of the same family, or a range larger than the API
    /// server accepts (IPv4 shorter than /12, IPv6 shorter than /108).
    pub fn new(service_cidrs: &[IpNet], node_ports: PortRange) -> Result<Self, ConfigError> {
        match service_cidrs {
            [] => return Err(ConfigError("at least one service CIDR is required".into())),
            [a, b] if a.network().is_ipv4() == b.network().is_ipv4() => {
                return Err(ConfigError(format!(
                    "service CIDRs {a} and {b} must be of different IP families"
                )));
            }
            [_, _, _, ..] => {
                return Err(ConfigError(
                    "at most two service CIDRs (one per IP family) are allowed".into(),
                ));
            }
            _ => {}
        }
        for cidr in service_cidrs {
            // validateClusterIPFlags: at most 20 host bits.
            let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
            if host_bits > 20 {
                let (bits, min) = if cidr.network().is_ipv4() {
                    (32, 12)
                } else {
                    (128, 108)
                };
                return Err(ConfigError(format!(
                    "specified service CIDR {cidr} is too large; for {bits}-bit addresses, the mask must be >= {min}"
                )));
            }
        }
        Ok(Self {
            service_cidrs: service_cidrs.iter().map(IpNet::trunc).collect(),
            node_ports,
            prefix: DEFAULT_PREFIX.into(),
            leak_grace: DEFAULT_LEAK_GRACE,
            retry: Retry::default(),
            ip_addresses: false,
        })
    }

    /// As [`RegistryConfig::new`], with Kubernetes 1.33's ClusterIP allocator: the ranges
    /// become the default `ServiceCIDR` (`kubernetes`), more can be added at run time
    /// ([`Registry::create_service_cidr`]), and every ClusterIP is an `IPAddress` object
    /// in the store instead of a bit in a shared bitmap ([`crate::alloc::cidrs`]). Ranges
    /// are not limited to a /12; IPv6 ranges must be at least a /64.
    ///
    /// # Errors
    /// No CIDR, more than two, two of the same family, or an IPv6 range shorter than /64.
    pub fn with_ip_addresses(
        service_cidrs: &[IpNet],
        node_ports: PortRange,
    ) -> Result<Self, ConfigError> {
        // The size limit of `new` is the bitmap's; check the rest with small ranges.
        let small: Vec<IpNet> = service_cidrs
            .iter()
            .map(|c| IpNet::new(c.addr(), c.max_prefix_len() - 8).unwrap_or(*c))
            .collect();
        let mut config = Self::new(&small, node_ports)?;
        for cidr in service_cidrs {
            if let IpNet::V6(v6) = cidr
                && v6.prefix_len() < 64
            {
                return Err(ConfigError(format!(
                    "shortest allowed prefix length for service CIDR is 64, got {}",
                    v6.prefix_len()
                )));
            }
        }
        config.service_cidrs = service_cidrs.iter().map(IpNet::trunc).collect();
        config.ip_addresses = true;
        Ok(config)
    }

    /// Whether ClusterIPs are `IPAddress` objects ([`RegistryConfig::with_ip_addresses`])
    /// rather than bits of a bitmap.
    pub fn uses_ip_addresses(&self) -> bool {
        self.ip_addresses
    }

    /// How long repair waits, from the first pass that finds an allocated value unused by
    /// any Service, before freeing it ([`DEFAULT_LEAK_GRACE`] unless told). It must exceed
    /// the longest a Service write can take, or a value could be freed under a write still
    /// in flight.
    #[must_use]
    pub fn with_leak_grace(mut self, grace: Duration) -> Self {
        self.leak_grace = grace;
        self
    }

    /// The grace period before a leak is freed.
    pub fn leak_grace(&self) -> Duration {
        self.leak_grace
    }

    /// How lost compare-and-swap races are retried ([`Retry::default`] unless told).
    #[must_use]
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Keys under `prefix` instead of [`DEFAULT_PREFIX`].
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The service CIDRs, default family first.
    pub fn service_cidrs(&self) -> &[IpNet] {
        &self.service_cidrs
    }

    /// The node port range.
    pub fn node_ports(&self) -> PortRange {
        self.node_ports
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn default_family(&self) -> IpFamily {
        family_of_net(&self.service_cidrs[0])
    }

    fn range_key(&self, index: usize) -> String {
        if index == 0 {
            format!("{}/ranges/serviceips", self.prefix)
        } else {
            format!("{}/ranges/secondaryserviceips", self.prefix)
        }
    }

    fn service_cidrs_prefix(&self) -> String {
        format!("{}/servicecidrs/", self.prefix)
    }

    fn ip_addresses_prefix(&self) -> String {
        format!("{}/ipaddresses/", self.prefix)
    }

    fn ports_key(&self) -> String {
        format!("{}/ranges/servicenodeports", self.prefix)
    }

    fn services_prefix(&self) -> String {
        format!("{}/services/specs/", self.prefix)
    }

    fn service_key(&self, key: &ServiceKey) -> String {
        format!("{}{}/{}", self.services_prefix(), key.namespace, key.name)
    }
}

fn family_of_net(net: &IpNet) -> IpFamily {
    if net.network().is_ipv4() {
        IpFamily::Ipv4
    } else {
        IpFamily::Ipv6
    }
}

/// Why an API call failed, as the API server reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// 422: the object is invalid, or an explicitly requested value cannot be allocated.
    Invalid,
    /// 409: create of an existing Service.
    AlreadyExists,
    /// 409: update with a stale `resourceVersion`.
    Conflict,
    /// 404.
    NotFound,
    /// 500: dynamic allocation failed (`range is full`) or the store failed.
    InternalError,
    /// 500: the allocator state kept changing under the call (other replicas won every
    /// compare-and-swap); nothing was changed, the client should try again.
    ServerTimeout,
}

/// A failed API call: status code, reason and the API server's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason.
    pub reason: Reason,
    /// The message, e.g. `Internal error occurred: failed to allocate a serviceIP: range is full`.
    pub message: String,
    /// For [`Reason::Invalid`], the field errors.
    pub causes: Vec<FieldError>,
}

impl ApiError {
    fn invalid(name: &str, errors: Vec<FieldError>) -> Self {
        let v = ValidationError::new("Service", name, errors);
        Self {
            code: 422,
            reason: Reason::Invalid,
            message: v.to_string(),
            causes: v.errors,
        }
    }

    fn internal(err: impl fmt::Display) -> Self {
        Self {
            code: 500,
            reason: Reason::InternalError,
            message: format!("Internal error occurred: {err}"),
            causes: Vec::new(),
        }
    }

    fn not_found(name: &str) -> Self {
        Self {
            code: 404,
            reason: Reason::NotFound,
            message: format!("services {name:?} not found"),
            causes: Vec::new(),
        }
    }

    fn already_exists(name: &str) -> Self {
        Self {
            code: 409,
            reason: Reason::AlreadyExists,
            message: format!("services {name:?} already exists"),
            causes: Vec::new(),
        }
    }

    fn server_timeout(resource: &str) -> Self {
        Self {
            code: 500,
            reason: Reason::ServerTimeout,
            message: format!(
                "The operation could not be completed at this time: too many concurrent updates of {resource}; please try again"
            ),
            causes: Vec::new(),
        }
    }

    /// The API error for an allocator operation's failure: contention is
    /// [`Reason::ServerTimeout`], anything else is worded by `otherwise`.
    fn from_op(e: OpError, otherwise: impl FnOnce(OpError) -> Self) -> Self {
        match e {
            OpError::Contention(resource) => Self::server_timeout(resource),
            e => otherwise(e),
        }
    }

    fn conflict(name: &str) -> Self {
        Self {
            code: 409,
            reason: Reason::Conflict,
            message: format!(
                "Operation cannot be fulfilled on services {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
            causes: Vec::new(),
        }
    }

    fn from_validation(v: ValidationError) -> Self {
        Self {
            code: 422,
            reason: Reason::Invalid,
            message: v.to_string(),
            causes: v.errors,
        }
    }
}

/// A failure of one allocator operation through the store.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error(transparent)]
    Alloc(AllocError),
    #[error("cannot allocate resources of type {0} at this time")]
    NotInitialized(&'static str),
    #[error("stored {0} state is unusable: {1}")]
    Stored(&'static str, AllocError),
    #[error("too many concurrent updates of {0}")]
    Contention(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An allocator whose state is kept in the store.
trait Ranged {
    const RESOURCE: &'static str;
    fn snapshot(&self) -> RangeAllocation;
    fn restore(&mut self, snapshot: &RangeAllocation) -> Result<(), AllocError>;
}

impl Ranged for IpAllocator {
    const RESOURCE: &'static str = "serviceipallocations";
    fn snapshot(&self) -> RangeAllocation {
        Self::snapshot(self)
    }
    fn restore(&mut self, snapshot: &RangeAllocation) -> Result<(), AllocError> {
        Self::restore(self, snapshot)
    }
}

impl Ranged for PortAllocator {
    const RESOURCE: &'static str = "servicenodeportallocations";
    fn snapshot(&self) -> RangeAllocation {
        Self::snapshot(self)
    }
    fn restore(&mut self, snapshot: &RangeAllocation) -> Result<(), AllocError> {
        Self::restore(self, snapshot)
    }
}

/// An allocator and the store version its in-memory state reflects.
#[derive(Debug)]
struct Cached<A> {
    key: String,
    alloc: A,
    version: Option<u64>,
}

/// Runs `f` on the current state of the allocator and writes the result back with
/// compare-and-swap, retrying on conflict (`GuaranteedUpdate`) as `retry` says, with the
/// store pausing between attempts. `f` returns its value and whether it changed the
/// allocator; it must not change it when it fails.
fn guaranteed_update<A: Ranged, T, R: Random>(
    store: &impl Store,
    cached: &mut Cached<A>,
    retry: Retry,
    rng: &mut R,
    mut f: impl FnMut(&mut A, &mut R) -> Result<(T, bool), AllocError>,
) -> Result<T, OpError> {
    for attempt in 0..retry.attempts {
        if attempt > 0 {
            store.pause(retry.pause(attempt - 1, rng));
        }
        let current = store
            .get(&cached.key)?
            .ok_or(OpError::NotInitialized(A::RESOURCE))?;
        if cached.version != Some(current.version) {
            let snapshot = RangeAllocation::from_json(&current.value)
                .map_err(|e| OpError::Stored(A::RESOURCE, e))?;
            cached
                .alloc
                .restore(&snapshot)
                .map_err(|e| OpError::Stored(A::RESOURCE, e))?;
            cached.version = Some(current.version);
        }
        let (value, changed) = f(&mut cached.alloc, rng).map_err(OpError::Alloc)?;
        if !changed {
            return Ok(value);
        }
        let bytes = cached.alloc.snapshot().to_json();
        let put = store.put(&cached.key, &bytes, Precondition::Version(current.version));
        // The in-memory state now differs from what the store holds at that version:
        // unless the write is known to have happened, read the store again next time
        // (a failed write applied later by a stale cache would persist what the caller
        // was told did not happen).
        if !matches!(put, Ok(Some(_))) {
            cached.version = None;
        }
        match put? {
            Some(version) => {
                cached.version = Some(version);
                return Ok(value);
            }
            // Someone else wrote first: our in-memory state is ahead of the store.
            None => cached.version = None,
        }
    }
    Err(OpError::Contention(A::RESOURCE))
}

/// A value one call holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Ip(IpAddr),
    Port(u16),
}

/// What one call allocated (released on failure) and what it will release on success.
#[derive(Debug, Default)]
struct Txn {
    allocated: Vec<Held>,
    release_on_commit: Vec<Held>,
}

/// The Service registry over a [`Store`]. See the [module docs](self).
#[derive(Debug)]
pub struct Registry<S, R = SeededRandom> {
    config: RegistryConfig,
    store: S,
    rng: R,
    ips: Vec<Cached<IpAllocator>>,
    /// With [`RegistryConfig::with_ip_addresses`]: the ServiceCIDRs and IPAddresses as last
    /// read or written (the store decides; this only picks candidates).
    addresses: Option<crate::alloc::ServiceCidrAllocator>,
    ports: Cached<PortAllocator>,
    /// Allocated values repair found unused, and when it first did.
    ip_leaks: HashMap<IpAddr, Instant>,
    port_leaks: HashMap<u16, Instant>,
    /// With IPAddress objects: unused ones by address and store version, and when repair
    /// first found them unused.
    address_leaks: HashMap<(IpAddr, u64), Instant>,
}

fn node_port(p: &crate::model::ServicePort) -> i32 {
    p.node_port.unwrap_or(0)
}

fn is_type(svc: &Service, t: &ServiceType) -> bool {
    svc.spec.type_.as_ref() == Some(t)
}

fn needs_cluster_ip(svc: &Service) -> bool {
    !is_type(svc, &ServiceType::ExternalName)
}

fn needs_node_port(svc: &Service) -> bool {
    is_type(svc, &ServiceType::NodePort) || is_type(svc, &ServiceType::LoadBalancer)
}

/// `apiservice.NeedsHealthCheck`: LoadBalancer with `externalTrafficPolicy: Local`.
fn needs_health_check(svc: &Service) -> bool {
    is_type(svc, &ServiceType::LoadBalancer)
        && svc.spec.external_traffic_policy == Some(TrafficPolicy::Local)
}

fn should_allocate_node_ports(svc: &Service) -> bool {
    is_type(svc, &ServiceType::NodePort)
        || (is_type(svc, &ServiceType::LoadBalancer)
            && svc.spec.allocate_load_balancer_node_ports.unwrap_or(true))
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.cluster_ips.first().map(String::as_str) == Some("None")
}

/// Every non-zero node port of the Service's ports.
fn collect_node_ports(svc: &Service) -> Vec<u16> {
    svc.spec
        .ports
        .iter()
        .filter_map(|p| u16::try_from(node_port(p)).ok().filter(|&n| n != 0))
        .collect()
}

/// The Service a write addresses (an empty namespace is `default`) and the
/// `resourceVersion` it requires, if any.
fn write_target(svc: &Service) -> (ServiceKey, Option<String>) {
    let namespace = svc
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let key = ServiceKey::new(namespace, svc.metadata.name());
    let conditional = svc
        .metadata
        .resource_version
        .clone()
        .filter(|v| !v.is_empty());
    (key, conditional)
}

fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(svc.metadata.namespace(), svc.metadata.name())
}

/// A random RFC 4122 version 4 UUID.
fn uuid(rng: &mut impl Random) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `names.SimpleNameGenerator`: the prefix (cut to leave room) plus five characters.
fn generate_name(prefix: &str, rng: &mut impl Random) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut keep = prefix.len().min(63 - 5);
    while !prefix.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut name = prefix[..keep].to_owned();
    for _ in 0..5 {
        let i = rng.below(ALPHABET.len());
        name.push(char::from(ALPHABET[i]));
    }
    name
}

impl<S: Store, R: Random> Registry<S, R> {
    /// A registry over `store`. Creates the allocator keys if they do not exist yet (as
    /// the API server's repair controllers do on first start); existing state is kept.
    ///
    /// # Errors
    /// The store failed.
    pub fn new(config: RegistryConfig, store: S, rng: R) -> Result<Self, StoreError> {
        let bitmaps = if config.ip_addresses {
            &[][..]
        } else {
            &config.service_cidrs[..]
        };
        let ips: Vec<Cached<IpAllocator>> = bitmaps
            .iter()
            .enumerate()
            .map(|(i, cidr)| Cached {
                key: config.range_key(i),
                alloc: IpAllocator::new(*cidr),
                version: None,
            })
            .collect();
        let ports = Cached {
            key: config.ports_key(),
            alloc: PortAllocator::new(config.node_ports),
            version: None,
        };
        for (key, snapshot) in ips
            .iter()
            .map(|c| (&c.key, c.alloc.snapshot()))
            .chain([(&ports.key, ports.alloc.snapshot())])
        {
            // Absent only: never overwrite another replica's state.
            store.put(key, &snapshot.to_json(), Precondition::Absent)?;
        }
        let mut registry = Self {
            config,
            store,
            rng,
            ips,
            addresses: None,
            ports,
            ip_leaks: HashMap::new(),
            port_leaks: HashMap::new(),
            address_leaks: HashMap::new(),
        };
        if registry.config.ip_addresses {
            registry.init_addresses()?;
        }
        Ok(registry)
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn ip_index(&self, family: &IpFamily) -> Option<usize> {
        self.config
            .service_cidrs
            .iter()
            .position(|c| &family_of_net(c) == family)
    }

    fn configured(&self, family: &IpFamily) -> bool {
        self.ip_index(family).is_some()
    }

    /// The allocator state as stored now, per service CIDR, then the node ports.
    ///
    /// # Errors
    /// The store failed or holds unusable state.
    pub fn allocations(&self) -> Result<(Vec<IpAllocator>, PortAllocator), ApiError> {
        let read = |key: &str| -> Result<Option<RangeAllocation>, ApiError> {
            match self.store.get(key).map_err(ApiError::internal)? {
                None => Ok(None),
                Some(v) => RangeAllocation::from_json(&v.value)
                    .map(Some)
                    .map_err(ApiError::internal),
            }
        };
        let mut ips = Vec::new();
        for c in &self.ips {
            let mut a = IpAllocator::new(c.alloc.cidr());
            if let Some(s) = read(&c.key)? {
                a.restore(&s).map_err(ApiError::internal)?;
            }
            ips.push(a);
        }
        let mut ports = PortAllocator::new(self.config.node_ports);
        if let Some(s) = read(&self.ports.key)? {
            ports.restore(&s).map_err(ApiError::internal)?;
        }
        Ok((ips, ports))
    }

    // ---- allocator operations ------------------------------------------------------

    /// Before the `attempt`-th try of a write that lost its race: the store's pause.
    fn pause_before(&mut self, attempt: u32) {
        if attempt > 0 {
            let delay = self.config.retry.pause(attempt - 1, &mut self.rng);
            self.store.pause(delay);
        }
    }

    fn take_ip(
        &mut self,
        index: usize,
        ip: Option<IpAddr>,
        owner: &ServiceKey,
        txn: &mut Txn,
    ) -> Result<IpAddr, OpError> {
        if self.config.ip_addresses {
            let family = family_of_net(&self.config.service_cidrs[index]);
            let got = self.take_address(&family, ip, owner)?;
            txn.allocated.push(Held::Ip(got));
            return Ok(got);
        }
        let retry = self.config.retry;
        let got = guaranteed_update(
            &self.store,
            &mut self.ips[index],
            retry,
            &mut self.rng,
            |a, rng| match ip {
                Some(ip) => a.allocate(ip).map(|()| (ip, true)),
                None => a.allocate_next(rng).map(|ip| (ip, true)),
            },
        )?;
        txn.allocated.push(Held::Ip(got));
        Ok(got)
    }

    fn take_port(&mut self, port: Option<u16>, txn: &mut Txn) -> Result<u16, OpError> {
        let retry = self.config.retry;
        let got = guaranteed_update(
            &self.store,
            &mut self.ports,
            retry,
            &mut self.rng,
            |a, rng| match port {
                Some(p) => a.allocate(p).map(|()| (p, true)),
                None => a.allocate_next(rng).map(|p| (p, true)),
            },
        )?;
        txn.allocated.push(Held::Port(got));
        Ok(got)
    }

    /// Releases a value; Ok(false) when it was not allocated or its family is no longer
    /// configured.
    fn release(&mut self, held: Held) -> Result<bool, OpError> {
        let retry = self.config.retry;
        match held {
            Held::Ip(ip) if self.config.ip_addresses => self.release_address(ip),
            Held::Ip(ip) => {
                let Some(i) = self.ip_index(&IpFamily::of(&ip)) else {
                    return Ok(false);
                };
                guaranteed_update(
                    &self.store,
                    &mut self.ips[i],
                    retry,
                    &mut self.rng,
                    |a, _| {
                        let released = a.release(ip);
                        Ok((released, released))
                    },
                )
            }
            Held::Port(p) => guaranteed_update(
                &self.store,
                &mut self.ports,
                retry,
                &mut self.rng,
                |a, _| {
                    let released = a.release(p);
                    Ok((released, released))
                },
            ),
        }
    }

    /// Releases what a failed call allocated. Failures leak (repair frees them).
    fn revert(&mut self, txn: Txn) {
        for held in txn.allocated.into_iter().rev() {
            let _ = self.release(held);
        }
    }

    /// Releases what a successful call gave up. Failures leak (repair frees them).
    fn commit(&mut self, txn: Txn) {
        for held in txn.release_on_commit {
            let _ = self.release(held);
        }
    }

    // ---- reads ---------------------------------------------------------------------

    /// Reads the Service a write replaces: 404 when it is missing, 409 when it is not at
    /// the `resourceVersion` the write requires.
    fn read_for_write(
        &self,
        key: &ServiceKey,
        conditional: Option<&str>,
    ) -> Result<(Service, u64), ApiError> {
        let Some((old, version)) = self.read(key)? else {
            return Err(ApiError::not_found(&key.name));
        };
        if conditional.is_some_and(|rv| rv != version.to_string()) {
            return Err(ApiError::conflict(&key.name));
        }
        Ok((old, version))
    }

    fn read(&self, key: &ServiceKey) -> Result<Option<(Service, u64)>, ApiError> {
        let Some(v) = self
            .store
            .get(&self.config.service_key(key))
            .map_err(ApiError::internal)?
        else {
            return Ok(None);
        };
        let mut svc: Service = serde_json::from_slice(&v.value).map_err(|e| {
            ApiError::internal(format!("stored Service {key} does not decode: {e}"))
        })?;
        svc.metadata.resource_version = Some(v.version.to_string());
        Ok(Some((svc, v.version)))
    }

    /// The Service `namespace/name`.
    ///
    /// # Errors
    /// 404 when it does not exist; 500 when the store fails.
    pub fn get(&self, namespace: &str, name: &str) -> Result<Service, ApiError> {
        self.read(&ServiceKey::new(namespace, name))?
            .map(|(s, _)| s)
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// Every Service, by namespace and name.
    ///
    /// # Errors
    /// The store failed or holds an undecodable Service.
    pub fn list(&self) -> Result<Vec<Service>, ApiError> {
        let entries = self
            .store
            .list(&self.config.services_prefix())
            .map_err(ApiError::internal)?;
        entries
            .into_iter()
            .map(|(key, v)| {
                let mut svc: Service = serde_json::from_slice(&v.value).map_err(|e| {
                    ApiError::internal(format!("stored Service {key} does not decode: {e}"))
                })?;
                svc.metadata.resource_version = Some(v.version.to_string());
                Ok(svc)
            })
            .collect()
    }

    fn encode(svc: &Service) -> Vec<u8> {
        let mut stored = svc.clone();
        stored.metadata.resource_version = None;
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    // ---- create --------------------------------------------------------------------

    /// Creates a Service: defaults, allocates cluster IPs and node ports, validates and
    /// stores it. `status` is cleared, as on the API server.
    ///
    /// Returns the validated form, which is what the endpoints controller, the change
    /// tracker and the snapshot take; [`ValidService::object`] is the Service as stored
    /// (what the API server would answer, with its `resourceVersion`).
    ///
    /// # Errors
    /// 422 for an invalid Service or an explicit cluster IP or node port that is taken or
    /// out of range, 409 when it exists, 500 when a range is full or the store fails.
    /// Nothing stays allocated after an error.
    pub fn create(&mut self, mut svc: Service) -> Result<ValidService, ApiError> {
        if svc.metadata.name().is_empty()
            && let Some(prefix) = svc.metadata.generate_name.clone().filter(|p| !p.is_empty())
        {
            svc.metadata.name = Some(generate_name(&prefix, &mut self.rng));
        }
        if svc.metadata.namespace.as_deref().is_none_or(str::is_empty) {
            svc.metadata.namespace = Some("default".into());
        }
        defaults::service(&mut svc);
        // PrepareForCreate.
        svc.status = None;
        svc.metadata.resource_version = None;
        svc.metadata.uid = Some(uuid(&mut self.rng));

        let name = svc.metadata.name().to_owned();
        let mut txn = Txn::default();
        if let Err(e) = self.allocate_create(&mut svc, &mut txn) {
            self.revert(txn);
            return Err(e);
        }
        let mut valid = match validate_service(&svc) {
            Ok(v) => v,
            Err(e) => {
                self.revert(txn);
                return Err(ApiError::from_validation(e));
            }
        };
        let key = self.config.service_key(&key_of(&svc));
        match self
            .store
            .put(&key, &Self::encode(&svc), Precondition::Absent)
        {
            Ok(Some(version)) => {
                self.commit(txn);
                svc.metadata.resource_version = Some(version.to_string());
                valid.object = svc;
                Ok(valid)
            }
            Ok(None) => {
                self.revert(txn);
                Err(ApiError::already_exists(&name))
            }
            // The write may have happened (a lost answer): keep what we allocated
            // rather than risk handing it out twice; repair frees it if it leaked.
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    fn allocate_create(&mut self, svc: &mut Service, txn: &mut Txn) -> Result<(), ApiError> {
        self.init_ip_family_fields(svc, None)?;
        self.alloc_cluster_ips(svc, txn)?;
        if needs_node_port(svc) {
            self.init_node_ports(svc, txn)?;
        }
        if needs_health_check(svc) {
            self.alloc_health_check_node_port(svc, txn)?;
        }
        Ok(())
    }

    /// `allocIPs` for one family: `""` allocates the next free address.
    fn alloc_ip(
        &mut self,
        svc: &Service,
        family: &IpFamily,
        text: &str,
        txn: &mut Txn,
    ) -> Result<String, ApiError> {
        let Some(index) = self.ip_index(family) else {
            return Err(ApiError::internal(format!(
                "{family} is not configured on this cluster"
            )));
        };
        if text.is_empty() {
            return match self.take_ip(index, None, &key_of(svc), txn) {
                Ok(ip) => Ok(ip.to_string()),
                Err(e) => Err(ApiError::from_op(e, |e| {
                    ApiError::internal(format!("failed to allocate a serviceIP: {e}"))
                })),
            };
        }
        let invalid = |detail: String| {
            ApiError::invalid(
                svc.metadata.name(),
                vec![FieldError::invalid(
                    &Path::new("spec").child("clusterIPs"),
                    BadValue::StrList(svc.spec.cluster_ips.clone()),
                    &detail,
                )],
            )
        };
        let Some(ip) = parse_ip_sloppy(text) else {
            return Err(invalid(format!(
                "failed to allocate IP {text}: not a valid IP"
            )));
        };
        match self.take_ip(index, Some(ip), &key_of(svc), txn) {
            Ok(_) => Ok(text.to_owned()),
            Err(OpError::Alloc(e)) => Err(invalid(format!("failed to allocate IP {text}: {e}"))),
            Err(e) => Err(ApiError::from_op(e, ApiError::internal)),
        }
    }

    /// `allocClusterIPs`: one address per family, `""` markers for the ones to allocate.
    fn alloc_cluster_ips(&mut self, svc: &mut Service, txn: &mut Txn) -> Result<(), ApiError> {
        if !needs_cluster_ip(svc) || is_headless(svc) {
            return Ok(());
        }
        let families = svc.spec.ip_families.clone();
        while svc.spec.cluster_ips.len() < families.len() {
            svc.spec.cluster_ips.push(String::new());
        }
        for (i, family) in families.iter().enumerate() {
            let text = svc.spec.cluster_ips[i].clone();
            let ip = self.alloc_ip(svc, family, &text, txn)?;
            if i == 0 {
                svc.spec.cluster_ip = Some(ip.clone());
            }
            svc.spec.cluster_ips[i] = ip;
        }
        Ok(())
    }

    fn node_port_invalid(svc: &Service, index: usize, port: i32, e: &AllocError) -> ApiError {
        ApiError::invalid(
            svc.metadata.name(),
            vec![FieldError::invalid(
                &Path::new("spec")
                    .child("ports")
                    .index(index)
                    .child("nodePort"),
                port,
                &e.to_string(),
            )],
        )
    }

    fn take_node_port(
        &mut self,
        svc: &Service,
        index: usize,
        port: i32,
        txn: &mut Txn,
    ) -> Result<u16, ApiError> {
        let Ok(p) = u16::try_from(port) else {
            let e = AllocError::NotInRange {
                resource: crate::alloc::Resource::Port,
                valid: self.config.node_ports.to_string(),
            };
            return Err(Self::node_port_invalid(svc, index, port, &e));
        };
        match self.take_port(Some(p), txn) {
            Ok(p) => Ok(p),
            Err(OpError::Alloc(e)) => Err(Self::node_port_invalid(svc, index, port, &e)),
            Err(e) => Err(ApiError::from_op(e, ApiError::internal)),
        }
    }

    fn next_node_port(&mut self, txn: &mut Txn) -> Result<u16, ApiError> {
        self.take_port(None, txn).map_err(|e| {
            ApiError::from_op(e, |e| {
                ApiError::internal(format!("failed to allocate a nodePort: {e}"))
            })
        })
    }

    /// `initNodePorts`: ports with the same `port` number share one node port; an explicit
    /// node port on any of them is used for all.
    fn init_node_ports(&mut self, svc: &mut Service, txn: &mut Txn) -> Result<(), ApiError> {
        let mut by_port: HashMap<i32, i32> = HashMap::new();
        for i in 0..svc.spec.ports.len() {
            let (port, requested) = (svc.spec.ports[i].port, node_port(&svc.spec.ports[i]));
            if requested == 0 && !should_allocate_node_ports(svc) {
                continue;
            }
            match by_port.get(&port).copied() {
                None => {
                    let wanted = svc
                        .spec
                        .ports
                        .iter()
                        .map(node_port)
                        .zip(svc.spec.ports.iter().map(|p| p.port))
                        .find(|&(np, p)| p == port && np != 0)
                        .map_or(0, |(np, _)| np);
                    let got = if wanted != 0 {
                        self.take_node_port(svc, i, wanted, txn)?
                    } else {
                        self.next_node_port(txn)?
                    };
                    svc.spec.ports[i].node_port = Some(i32::from(got));
                    by_port.insert(port, i32::from(got));
                }
                Some(shared) if requested != shared => {
                    if requested == 0 {
                        svc.spec.ports[i].node_port = Some(shared);
                    } else {
                        self.take_node_port(svc, i, requested, txn)?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn alloc_health_check_node_port(
        &mut self,
        svc: &mut Service,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        let requested = svc.spec.health_check_node_port.unwrap_or(0);
        if requested != 0 {
            let res = u16::try_from(requested)
                .map_err(|_| {
                    OpError::Alloc(AllocError::NotInRange {
                        resource: crate::alloc::Resource::Port,
                        valid: self.config.node_ports.to_string(),
                    })
                })
                .and_then(|p| self.take_port(Some(p), txn));
            if let Err(e) = res {
                return Err(ApiError::from_op(e, |e| {
                    ApiError::internal(format!(
                        "failed to allocate requested HealthCheck NodePort {requested}: {e}"
                    ))
                }));
            }
        } else {
            match self.take_port(None, txn) {
                Ok(p) => svc.spec.health_check_node_port = Some(i32::from(p)),
                // Kubernetes prints the (zero) result here, not the request.
                Err(e) => {
                    return Err(ApiError::from_op(e, |e| {
                        ApiError::internal(format!(
                            "failed to allocate a HealthCheck NodePort 0: {e}"
                        ))
                    }));
                }
            }
        }
        Ok(())
    }

    // ---- update --------------------------------------------------------------------

    /// Replaces a Service's spec (and metadata): values allocated before are kept when the
    /// request omits them, type changes allocate or release cluster IPs and node ports,
    /// the update rules are validated. `status` is kept from the stored object (see
    /// [`Registry::update_status`]). With `metadata.resourceVersion` set, the update
    /// happens only if the Service is still at that version; without it, it applies to
    /// whatever is stored.
    ///
    /// # Errors
    /// 404, 409 (stale `resourceVersion`), 422, 500; values given up are released only
    /// after success.
    ///
    /// Returns the validated form, as [`Registry::create`] does.
    pub fn update(&mut self, svc: Service) -> Result<ValidService, ApiError> {
        let (key, conditional) = write_target(&svc);
        for attempt in 0..self.config.retry.attempts {
            self.pause_before(attempt);
            let (old, version) = self.read_for_write(&key, conditional.as_deref())?;
            let mut new = svc.clone();
            new.metadata.namespace = Some(key.namespace.clone());
            match self.try_update(&mut new, &old, version)? {
                Some(stored) => return Ok(stored),
                None if conditional.is_some() => return Err(ApiError::conflict(&key.name)),
                None => {}
            }
        }
        Err(ApiError::conflict(&key.name))
    }

    /// One update attempt against `old` at `version`; `None` when the Service changed
    /// under us (nothing is kept allocated then).
    fn try_update(
        &mut self,
        svc: &mut Service,
        old: &Service,
        version: u64,
    ) -> Result<Option<ValidService>, ApiError> {
        defaults::service(svc);
        // beginUpdate.
        fields::patch_allocated_values(svc, old);
        fields::normalize_cluster_ips(svc, old);
        let mut txn = Txn::default();
        if let Err(e) = self.allocate_update(svc, old, &mut txn) {
            self.revert(txn);
            return Err(e);
        }
        // PrepareForUpdate, then validation.
        svc.status.clone_from(&old.status);
        svc.metadata.uid.clone_from(&old.metadata.uid);
        fields::drop_type_dependent_fields(svc, old);
        let mut old_for_validation = old.clone();
        old_for_validation.metadata.resource_version = None;
        svc.metadata.resource_version = None;
        let mut valid = match validate_service_update(svc, &old_for_validation) {
            Ok(v) => v,
            Err(e) => {
                self.revert(txn);
                return Err(ApiError::from_validation(e));
            }
        };
        let key = self.config.service_key(&key_of(svc));
        match self
            .store
            .put(&key, &Self::encode(svc), Precondition::Version(version))
        {
            Ok(Some(v)) => {
                self.commit(txn);
                svc.metadata.resource_version = Some(v.to_string());
                valid.object = svc.clone();
                Ok(Some(valid))
            }
            Ok(None) => {
                self.revert(txn);
                Ok(None)
            }
            // The write may have happened (a lost answer): keep what we allocated
            // rather than risk handing it out twice; repair frees it if it leaked.
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    fn allocate_update(
        &mut self,
        svc: &mut Service,
        old: &Service,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        self.init_ip_family_fields(svc, Some(old))?;
        self.update_cluster_ips(svc, old, txn)?;
        self.update_node_ports(svc, old, txn)?;
        self.update_health_check_node_port(svc, old, txn)
    }

    /// `updateClusterIPs`: type changes to and from ExternalName, dual-stack upgrade and
    /// downgrade.
    fn update_cluster_ips(
        &mut self,
        svc: &mut Service,
        old: &Service,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        if fields::is_matching_prefer_dual_stack(svc, Some(old)) {
            return Ok(());
        }
        if !needs_cluster_ip(old) && needs_cluster_ip(svc) {
            return self.alloc_cluster_ips(svc, txn);
        }
        if is_headless(old) {
            return Ok(());
        }
        if needs_cluster_ip(old) && !needs_cluster_ip(svc) {
            for ip in old
                .spec
                .cluster_ips
                .iter()
                .filter_map(|s| parse_ip_sloppy(s))
            {
                txn.release_on_commit.push(Held::Ip(ip));
            }
            return Ok(());
        }
        let (before, after) = (old.spec.ip_families.len(), svc.spec.ip_families.len());
        if before == 1 && after == 2 {
            if svc.spec.cluster_ips.len() < 2 {
                svc.spec.cluster_ips.push(String::new());
            }
            let family = svc.spec.ip_families[1].clone();
            let text = svc.spec.cluster_ips[1].clone();
            let ip = self.alloc_ip(svc, &family, &text, txn)?;
            svc.spec.cluster_ips[1] = ip;
        } else if before == 2
            && after == 1
            && let Some(ip) = old.spec.cluster_ips.get(1).and_then(|s| parse_ip_sloppy(s))
        {
            txn.release_on_commit.push(Held::Ip(ip));
        }
        Ok(())
    }

    /// `txnUpdateNodePorts` / `updateNodePorts`.
    fn update_node_ports(
        &mut self,
        svc: &mut Service,
        old: &Service,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        let to_cluster_ip_or_external_name =
            is_type(svc, &ServiceType::ExternalName) || is_type(svc, &ServiceType::ClusterIp);
        if needs_node_port(old) && to_cluster_ip_or_external_name {
            for p in collect_node_ports(old) {
                txn.release_on_commit.push(Held::Port(p));
            }
        }
        if !needs_node_port(svc) {
            return Ok(());
        }
        let old_ports = collect_node_ports(old);
        let mut taken_now: Vec<i32> = Vec::new();
        let mut seen: Vec<(crate::model::Protocol, i32)> = Vec::new();
        for i in 0..svc.spec.ports.len() {
            let requested = node_port(&svc.spec.ports[i]);
            if requested == 0 && !should_allocate_node_ports(svc) {
                continue;
            }
            let value = if requested != 0 {
                let owned = u16::try_from(requested).is_ok_and(|p| old_ports.contains(&p));
                if !owned && !taken_now.contains(&requested) {
                    self.take_node_port(svc, i, requested, txn)?;
                    taken_now.push(requested);
                }
                requested
            } else {
                let got = i32::from(self.next_node_port(txn)?);
                svc.spec.ports[i].node_port = Some(got);
                got
            };
            let protocol = svc.spec.ports[i]
                .protocol
                .clone()
                .unwrap_or(crate::model::Protocol::Tcp);
            if seen.contains(&(protocol.clone(), value)) {
                return Err(ApiError::internal(format!(
                    "duplicate nodePort: {{{} {value}}}",
                    protocol.as_str()
                )));
            }
            seen.push((protocol, value));
        }
        let new_ports = collect_node_ports(svc);
        for p in old_ports {
            if !new_ports.contains(&p) {
                txn.release_on_commit.push(Held::Port(p));
            }
        }
        Ok(())
    }

    fn update_health_check_node_port(
        &mut self,
        svc: &mut Service,
        old: &Service,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        match (needs_health_check(old), needs_health_check(svc)) {
            (false, true) => self.alloc_health_check_node_port(svc, txn),
            (true, false) => {
                if let Some(p) = old
                    .spec
                    .health_check_node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                {
                    txn.release_on_commit.push(Held::Port(p));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Replaces a Service's `status` (what a load-balancer controller writes), leaving its
    /// spec alone.
    ///
    /// # Errors
    /// 404, 409 (stale `resourceVersion`), 422 (invalid status), 500.
    pub fn update_status(&mut self, svc: &Service) -> Result<Service, ApiError> {
        let (key, conditional) = write_target(svc);
        for attempt in 0..self.config.retry.attempts {
            self.pause_before(attempt);
            let (old, version) = self.read_for_write(&key, conditional.as_deref())?;
            let mut new = old.clone();
            new.status.clone_from(&svc.status);
            defaults::service(&mut new);
            new.metadata.resource_version = None;
            validate_service(&new).map_err(ApiError::from_validation)?;
            let stored_key = self.config.service_key(&key);
            match self
                .store
                .put(
                    &stored_key,
                    &Self::encode(&new),
                    Precondition::Version(version),
                )
                .map_err(ApiError::internal)?
            {
                Some(v) => {
                    new.metadata.resource_version = Some(v.to_string());
                    return Ok(new);
                }
                None if conditional.is_some() => return Err(ApiError::conflict(&key.name)),
                None => {}
            }
        }
        Err(ApiError::conflict(&key.name))
    }

    // ---- delete --------------------------------------------------------------------

    /// Deletes a Service and releases its cluster IPs, node ports and health-check node
    /// port. Returns the deleted object.
    ///
    /// # Errors
    /// 404, or 500 when the store fails. A release that fails after the delete is not an
    /// error: the value leaks until [`Registry::repair`] frees it, as in Kubernetes.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Result<Service, ApiError> {
        let key = ServiceKey::new(namespace, name);
        for attempt in 0..self.config.retry.attempts {
            self.pause_before(attempt);
            let Some((svc, version)) = self.read(&key)? else {
                return Err(ApiError::not_found(name));
            };
            if !self
                .store
                .delete(&self.config.service_key(&key), version)
                .map_err(ApiError::internal)?
            {
                continue;
            }
            let mut txn = Txn::default();
            if needs_cluster_ip(&svc) && !is_headless(&svc) {
                for ip in svc
                    .spec
                    .cluster_ips
                    .iter()
                    .filter_map(|s| parse_ip_sloppy(s))
                {
                    txn.release_on_commit.push(Held::Ip(ip));
                }
            }
            for p in collect_node_ports(&svc) {
                txn.release_on_commit.push(Held::Port(p));
            }
            if needs_health_check(&svc)
                && let Some(p) = svc
                    .spec
                    .health_check_node_port
                    .and_then(|p| u16::try_from(p).ok())
                && p != 0
            {
                txn.release_on_commit.push(Held::Port(p));
            }
            self.commit(txn);
            return Ok(svc);
        }
        Err(ApiError::conflict(name))
    }
}
