//! The records of the cluster zone, built from a [`Snapshot`] and kept up to date from
//! snapshot diffs, and the lookup rules of the CoreDNS `kubernetes` plugin.
//!
//! Records live in an index from lowercase name to the parts each Service contributed
//! there (a PTR name may hold parts of several Services; `<ns>.svc.<zone>` holds an empty
//! part per Service of the namespace, which is what makes it exist). The index is split
//! into shards behind `Arc`s: a [`ZoneView`] is a cheap, immutable copy that readers keep
//! while [`Zone::update`] replaces only the shards a change touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use service_core::model::{Protocol, ServiceType};
use service_core::snapshot::{Change, ServiceInfo, Snapshot};
use service_core::valid::{ClusterIps, ServiceKey};

use crate::config::{DNS_SCHEMA_VERSION, DnsConfig, PodRecords};
use crate::record_type::RecordType;
use crate::wire::rtype;

/// Record data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rdata {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Alias target.
    Cname(Arc<str>),
    /// Service location.
    Srv {
        /// Priority (always 0).
        priority: u16,
        /// Weight: 100 divided by the number of records at the name.
        weight: u16,
        /// Port.
        port: u16,
        /// Target.
        target: Arc<str>,
    },
    /// Reverse pointer.
    Ptr(Arc<str>),
    /// Text.
    Txt(Arc<str>),
    /// Name server.
    Ns(Arc<str>),
}

impl Rdata {
    /// The record type.
    pub fn rtype(&self) -> RecordType {
        match self {
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::Aaaa,
            Self::Cname(_) => RecordType::Cname,
            Self::Srv { .. } => RecordType::Srv,
            Self::Ptr(_) => RecordType::Ptr,
            Self::Txt(_) => RecordType::Txt,
            Self::Ns(_) => RecordType::Ns,
        }
    }

    fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::A(v4),
            IpAddr::V6(v6) => Self::Aaaa(v6),
        }
    }
}

/// FNV-1a over bytes: picks a shard.
fn fnv(bytes: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize
}

/// A map split into shards behind `Arc`s: cloning it copies `N` pointers, and a write
/// copies only the shard it touches when a reader still holds that shard.
#[derive(Debug)]
struct Sharded<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
        }
    }
}

trait ShardKey {
    fn shard_hash(&self) -> usize;
}

impl ShardKey for Arc<str> {
    fn shard_hash(&self) -> usize {
        fnv(self.as_bytes())
    }
}

impl ShardKey for str {
    fn shard_hash(&self) -> usize {
        fnv(self.as_bytes())
    }
}

impl ShardKey for u32 {
    fn shard_hash(&self) -> usize {
        *self as usize
    }
}

impl ShardKey for IpAddr {
    fn shard_hash(&self) -> usize {
        match self {
            Self::V4(v4) => fnv(&v4.octets()),
            Self::V6(v6) => fnv(&v6.octets()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone + ShardKey, V: Clone> Sharded<K, V> {
    fn new(n: usize) -> Self {
        Self {
            shards: (0..n).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }

    fn index<Q: ShardKey + ?Sized>(&self, key: &Q) -> usize {
        // Shard counts are powers of two.
        key.shard_hash() & (self.shards.len() - 1)
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ShardKey + ?Sized,
    {
        self.shards[self.index(key)].get(key)
    }

    fn shard_mut(&mut self, key: &K) -> &mut HashMap<K, V> {
        let i = self.index(key);
        Arc::make_mut(&mut self.shards[i])
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// A Service as the zone holds it.
#[derive(Debug)]
struct Entry {
    id: u32,
    info: Arc<ServiceInfo>,
    /// `<svc>.<ns>.svc.<zone>`.
    base: Arc<str>,
    /// For a ClusterIP Service or one with many ready endpoints: what it answers at its
    /// name, and its endpoints' addresses by their names, built by the first query that
    /// needs them and shared by the rest, so that a query costs what its answer costs (a
    /// headless Service of thousands of pods is asked for often) while building or
    /// updating the zone costs nothing per Service nobody asks for.
    index: std::sync::OnceLock<Option<Index>>,
}

impl Entry {
    /// The index, built on first use.
    fn index(&self, config: &DnsConfig) -> Option<&Index> {
        self.index.get_or_init(|| index_of(self, config)).as_ref()
    }
}

#[derive(Debug)]
struct Index {
    /// The records at the Service's name, without duplicates: all of them, and by type
    /// (A, AAAA, SRV), so that a query takes its answer without filtering.
    records: Option<[Records; 4]>,
    /// Endpoint name (lowercase) → its addresses, for a Service with many ready endpoints
    /// (`None`: few enough to scan).
    labels: Option<HashMap<Box<str>, smallvec::SmallVec<[IpAddr; 2]>>>,
}

/// Ready endpoints from which a Service's endpoint names are indexed.
const INDEX_FROM: usize = 32;

/// What an address points back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    /// The Service's id.
    id: u32,
    /// The endpoint's index, or [`SERVICE`] for the Service name (a cluster IP).
    endpoint: u32,
}

/// [`Target::endpoint`] of a cluster IP.
const SERVICE: u32 = u32::MAX;

type Targets = smallvec::SmallVec<[Target; 1]>;

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0xf, byte >> 4] {
                    s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// CoreDNS's name for an endpoint without a hostname: its address with dashes.
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let s = v6.to_string().replace(':', "-");
            if s.ends_with('-') { s + "0" } else { s }
        }
    }
}

fn proto_label(p: &Protocol) -> String {
    format!("_{}", p.as_str().to_ascii_lowercase())
}

/// Names a Service contributes, each with its records (possibly none: existence only).
fn service_records(svc: &ServiceInfo, cfg: &DnsConfig) -> BTreeMap<String, Vec<Rdata>> {
    let zone = &cfg.zone;
    let ns = &svc.key.namespace;
    let mut out: BTreeMap<String, Vec<Rdata>> = BTreeMap::new();
    let base = format!("{}.{ns}.svc.{zone}", svc.key.name);
    let base_arc: Arc<str> = Arc::from(base.as_str());
    let ready: Vec<_> = svc.endpoints.iter().filter(|e| e.ready).collect();
    let ep_name = |e: &service_core::snapshot::ServiceEndpoint| endpoint_name(e, cfg);
    let srv_weight = |n: usize| (100 / n.max(1)).max(1) as u16;

    if svc.type_ == ServiceType::ExternalName {
        let target = svc
            .external_name
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('.');
        // An address is not a CNAME target: CoreDNS answers NXDOMAIN.
        if !target.is_empty() && target.parse::<IpAddr>().is_err() {
            out.insert(
                base,
                vec![Rdata::Cname(Arc::from(target.to_ascii_lowercase()))],
            );
        }
        return out;
    }
    match &svc.cluster_ips {
        ClusterIps::Ips(ips) => {
            let mut recs: Vec<Rdata> = ips.iter().map(|ip| Rdata::from_ip(*ip)).collect();
            let n = svc.ports.len();
            for p in &svc.ports {
                recs.push(Rdata::Srv {
                    priority: 0,
                    weight: srv_weight(n),
                    port: p.port,
                    target: base_arc.clone(),
                });
            }
            out.insert(base.clone(), recs);
            for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                let name = format!(
                    "_{}.{}.{base}",
                    p.name.to_ascii_lowercase(),
                    proto_label(&p.protocol)
                );
                out.entry(name).or_default().push(Rdata::Srv {
                    priority: 0,
                    weight: 100,
                    port: p.port,
                    target: base_arc.clone(),
                });
            }
            if cfg.reverse {
                for ip in ips {
                    out.entry(reverse_name(*ip))
                        .or_default()
                        .push(Rdata::Ptr(base_arc.clone()));
                }
            }
        }
        ClusterIps::Headless => {
            if !ready.is_empty() {
                let mut recs: Vec<Rdata> = ready.iter().map(|e| Rdata::from_ip(e.ip)).collect();
                // SRV at the Service name: every ready endpoint × every port of its slice.
                let all: Vec<(Arc<str>, u16)> = ready
                    .iter()
                    .flat_map(|e| {
                        let target: Arc<str> = Arc::from(format!("{}.{base}", ep_name(e)));
                        e.ports
                            .iter()
                            .map(move |(_, port, _)| (target.clone(), *port))
                    })
                    .collect();
                let mut seen = HashSet::new();
                let all: Vec<_> = all.into_iter().filter(|x| seen.insert(x.clone())).collect();
                for (target, port) in &all {
                    recs.push(Rdata::Srv {
                        priority: 0,
                        weight: srv_weight(all.len()),
                        port: *port,
                        target: target.clone(),
                    });
                }
                out.insert(base.clone(), recs);
                // SRV per named port.
                let mut per_port: BTreeMap<String, Vec<(Arc<str>, u16)>> = BTreeMap::new();
                for e in &ready {
                    let target: Arc<str> = Arc::from(format!("{}.{base}", ep_name(e)));
                    for (pname, port, proto) in e.ports.iter().filter(|(n, _, _)| !n.is_empty()) {
                        let name = format!(
                            "_{}.{}.{base}",
                            pname.to_ascii_lowercase(),
                            proto_label(proto)
                        );
                        let list = per_port.entry(name).or_default();
                        if !list.contains(&(target.clone(), *port)) {
                            list.push((target.clone(), *port));
                        }
                    }
                }
                for (name, list) in per_port {
                    let w = srv_weight(list.len());
                    out.insert(
                        name,
                        list.into_iter()
                            .map(|(target, port)| Rdata::Srv {
                                priority: 0,
                                weight: w,
                                port,
                                target,
                            })
                            .collect(),
                    );
                }
            }
        }
        _ => return out,
    }
    // Endpoint names (headless per the spec; ClusterIP Services too, as CoreDNS does) and
    // their reverse records.
    for e in &ready {
        let name = format!("{}.{base}", ep_name(e));
        let target: Arc<str> = Arc::from(name.as_str());
        let rec = Rdata::from_ip(e.ip);
        let list = out.entry(name).or_default();
        if !list.contains(&rec) {
            list.push(rec);
        }
        if cfg.reverse {
            let ptr = out.entry(reverse_name(e.ip)).or_default();
            let rec = Rdata::Ptr(target);
            if !ptr.contains(&rec) {
                ptr.push(rec);
            }
        }
    }
    out
}

/// An immutable view of the zone, cheap to clone; what the server answers from.
#[derive(Clone, Debug)]
pub struct ZoneView {
    pub(crate) config: Arc<DnsConfig>,
    pub(crate) serial: u32,
    /// `<svc>.<ns>` → the Service.
    services: Sharded<Arc<str>, Arc<Entry>>,
    /// The Services by id, for reverse lookups.
    by_id: Sharded<u32, Arc<Entry>>,
    /// Namespaces with at least one Service.
    namespaces: Arc<HashSet<Arc<str>>>,
    /// Address → what it points back to.
    reverse: Sharded<IpAddr, Targets>,
    /// Addresses of `ns.dns.<zone>`.
    glue: Arc<[IpAddr]>,
    /// `(namespace, address)` of known pods, for [`PodRecords::Verified`].
    pods: Arc<HashSet<(String, IpAddr)>>,
}

/// The zone, with the bookkeeping to update it incrementally.
#[derive(Clone, Debug)]
pub struct Zone {
    view: ZoneView,
    namespace_counts: HashMap<Arc<str>, usize>,
    free_ids: Vec<u32>,
    next_id: u32,
}

/// A record, for listing the zone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Record {
    /// Owner name, lowercase, without trailing dot.
    pub name: String,
    /// Data.
    pub data: Rdata,
}

const SERVICE_SHARDS: usize = 256;
const REVERSE_SHARDS: usize = 1024;

fn service_key(name: &str, namespace: &str) -> Arc<str> {
    Arc::from(format!("{name}.{namespace}"))
}

fn ready(entry: &Entry) -> impl Iterator<Item = (usize, &service_core::snapshot::ServiceEndpoint)> {
    ready_of(&entry.info)
}

fn ready_of(
    info: &ServiceInfo,
) -> impl Iterator<Item = (usize, &service_core::snapshot::ServiceEndpoint)> {
    info.endpoints.iter().enumerate().filter(|(_, e)| e.ready)
}

/// The records at a Service's name (`None`: the name does not exist), each once.
fn service_name_records(entry: &Entry, config: &DnsConfig) -> AtName {
    let info = &entry.info;
    if info.type_ == ServiceType::ExternalName {
        let target = info
            .external_name
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('.');
        if target.is_empty() || target.parse::<IpAddr>().is_ok() {
            return None;
        }
        return Some(vec![Rdata::Cname(Arc::from(target.to_ascii_lowercase()))]);
    }
    let weight = |n: usize| (100 / n.max(1)).max(1) as u16;
    match &info.cluster_ips {
        ClusterIps::Ips(ips) => {
            let mut recs: Vec<Rdata> = ips.iter().map(|ip| Rdata::from_ip(*ip)).collect();
            let n = info.ports.len();
            recs.extend(info.ports.iter().map(|p| Rdata::Srv {
                priority: 0,
                weight: weight(n),
                port: p.port,
                target: entry.base.clone(),
            }));
            dedup(&mut recs);
            Some(recs)
        }
        ClusterIps::Headless => {
            let mut recs: Vec<Rdata> = ready_of(info).map(|(_, e)| Rdata::from_ip(e.ip)).collect();
            if recs.is_empty() {
                return None;
            }
            dedup(&mut recs);
            let mut srv: Vec<(Arc<str>, u16)> = Vec::new();
            let mut seen: HashSet<(Arc<str>, u16)> = HashSet::new();
            for (_, e) in ready_of(info) {
                let target: Arc<str> =
                    Arc::from(format!("{}.{}", endpoint_name(e, config), entry.base));
                for (_, port, _) in e.ports.iter() {
                    if seen.insert((target.clone(), *port)) {
                        srv.push((target.clone(), *port));
                    }
                }
            }
            let n = srv.len();
            recs.extend(srv.into_iter().map(|(target, port)| Rdata::Srv {
                priority: 0,
                weight: weight(n),
                port,
                target,
            }));
            Some(recs)
        }
        _ => None,
    }
}

/// Removes repeated records, keeping the first of each (linear).
fn dedup(recs: &mut Vec<Rdata>) {
    if recs.len() <= 8 {
        let mut i = 0;
        while i < recs.len() {
            if recs[..i].contains(&recs[i]) {
                recs.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let mut seen = HashSet::with_capacity(recs.len());
    recs.retain(|r| seen.insert(r.clone()));
}

/// The [`Index`] of a Service: for every ClusterIP Service (its answers are then shared,
/// not built per query: the common case of a DNS lookup), and for any other with many
/// ready endpoints. ExternalName Services have none (their CNAME answers every type).
fn index_of(entry: &Entry, config: &DnsConfig) -> Option<Index> {
    if entry.info.type_ == ServiceType::ExternalName {
        return None;
    }
    let many = ready_of(&entry.info).nth(INDEX_FROM - 1).is_some();
    let cluster_ip = matches!(entry.info.cluster_ips, ClusterIps::Ips(_));
    if !many && !cluster_ip {
        return None;
    }
    let labels = many.then(|| {
        let mut labels: HashMap<Box<str>, smallvec::SmallVec<[IpAddr; 2]>> = HashMap::new();
        if matches!(
            entry.info.cluster_ips,
            ClusterIps::Ips(_) | ClusterIps::Headless
        ) {
            for (_, e) in ready_of(&entry.info) {
                let ips = labels
                    .entry(endpoint_name(e, config).into_boxed_str())
                    .or_default();
                if !ips.contains(&e.ip) {
                    ips.push(e.ip);
                }
            }
        }
        labels
    });
    let records = service_name_records(entry, config).map(|all| {
        // One allocation: each type's records are a range of the name's when contiguous
        // (a ClusterIP Service's always are).
        let all = Records::from(all);
        [
            all.of_type(RecordType::A),
            all.of_type(RecordType::Aaaa),
            all.of_type(RecordType::Srv),
            all,
        ]
    });
    Some(Index { records, labels })
}

/// The name an endpoint was given (its hostname, or with `endpoint_pod_names` its Pod's
/// name), when that name is a DNS label. A name that is not one (the API server rejects
/// such hostnames; a Pod name may hold dots) is ignored rather than encoded: the endpoint
/// falls back to its dashed address, as if unnamed.
fn named_endpoint<'a>(
    e: &'a service_core::snapshot::ServiceEndpoint,
    cfg: &DnsConfig,
) -> Option<&'a str> {
    let is_label = |s: &&str| is_dns_label(s);
    if let Some(h) = e.hostname.as_deref().filter(is_label) {
        return Some(h);
    }
    if cfg.endpoint_pod_names {
        return e.target_name.as_deref().filter(is_label);
    }
    None
}

/// Whether `s` is an RFC 1123 label, in any case: 1 to 63 letters, digits and dashes,
/// neither first nor last a dash.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The name of an endpoint (without the Service part).
fn endpoint_name(e: &service_core::snapshot::ServiceEndpoint, cfg: &DnsConfig) -> String {
    named_endpoint(e, cfg).map_or_else(|| dashed_ip(e.ip), str::to_ascii_lowercase)
}

/// The address a dashed label stands for, if it is the canonical dashed form of one.
fn undash(label: &str) -> Option<IpAddr> {
    let ip: IpAddr =
        if label.matches('-').count() == 3 && !label.contains("--") && !label.contains(':') {
            label.replace('-', ".").parse().ok()?
        } else {
            label.replace('-', ":").parse().ok()?
        };
    (dashed_ip(ip) == label).then_some(ip)
}

/// The address of a reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`), if it
/// is complete and canonical.
fn unreverse(qname: &str) -> Option<IpAddr> {
    if let Some(rest) = qname.strip_suffix(".in-addr.arpa") {
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        let mut o = [0u8; 4];
        for (i, p) in parts.iter().rev().enumerate() {
            let v: u8 = p.parse().ok()?;
            if v.to_string() != *p {
                return None;
            }
            o[i] = v;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = qname.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, n) in nibbles.iter().rev().enumerate() {
        if n.len() != 1 {
            return None;
        }
        let c = n.chars().next()?;
        if c.is_ascii_uppercase() {
            return None;
        }
        let v = c.to_digit(16)? as u8;
        bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

impl Zone {
    /// An empty zone: only the apex records (SOA, NS, `dns-version`).
    pub fn new(config: DnsConfig) -> Self {
        let serial = config.serial;
        let glue: Arc<[IpAddr]> = Arc::from(config.ns_ips.clone());
        Self {
            view: ZoneView {
                config: Arc::new(config),
                serial,
                services: Sharded::new(SERVICE_SHARDS),
                by_id: Sharded::new(SERVICE_SHARDS),
                namespaces: Arc::new(HashSet::new()),
                reverse: Sharded::new(REVERSE_SHARDS),
                glue,
                pods: Arc::new(HashSet::new()),
            },
            namespace_counts: HashMap::new(),
            free_ids: Vec::new(),
            next_id: 0,
        }
    }

    /// The zone of a snapshot.
    pub fn from_snapshot(config: DnsConfig, snapshot: &Snapshot) -> Self {
        let mut zone = Self::new(config);
        // Size the maps once instead of growing them shard by shard.
        for shard in &mut zone.view.services.shards {
            Arc::make_mut(shard).reserve(snapshot.services.len() / SERVICE_SHARDS + 8);
        }
        let mut buckets: Vec<Vec<(IpAddr, Target)>> = vec![Vec::new(); REVERSE_SHARDS];
        let mut add =
            |ip: IpAddr, t: Target| buckets[ip.shard_hash() & (REVERSE_SHARDS - 1)].push((ip, t));
        for svc in snapshot.services.values() {
            let v = &mut zone.view;
            Self::insert_entry(
                &v.config,
                &mut zone.free_ids,
                &mut zone.next_id,
                &mut v.by_id,
                &mut v.services,
                &mut zone.namespace_counts,
                &mut v.namespaces,
                svc,
                &mut add,
            );
        }
        for (shard, bucket) in zone.view.reverse.shards.iter_mut().zip(buckets) {
            let map = Arc::make_mut(shard);
            map.reserve(bucket.len());
            for (ip, t) in bucket {
                map.entry(ip).or_default().push(t);
            }
        }
        zone.refresh_glue(snapshot);
        zone
    }

    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.view.config
    }

    /// A view to answer from.
    pub fn view(&self) -> ZoneView {
        self.view.clone()
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        self.view.serial
    }

    fn refresh_glue(&mut self, snapshot: &Snapshot) {
        if !self.view.config.ns_ips.is_empty() {
            return;
        }
        let glue = match snapshot
            .services
            .get(&ServiceKey::new("kube-system", "kube-dns"))
            .map(|s| &s.cluster_ips)
        {
            Some(ClusterIps::Ips(ips)) => ips.clone(),
            _ => Vec::new(),
        };
        self.view.glue = Arc::from(glue);
    }

    fn insert_service(&mut self, svc: &Arc<ServiceInfo>) {
        let reverse = &mut self.view.reverse;
        let mut add = |ip: IpAddr, target: Target| {
            reverse.shard_mut(&ip).entry(ip).or_default().push(target);
        };
        Self::insert_entry(
            &self.view.config,
            &mut self.free_ids,
            &mut self.next_id,
            &mut self.view.by_id,
            &mut self.view.services,
            &mut self.namespace_counts,
            &mut self.view.namespaces,
            svc,
            &mut add,
        );
    }

    /// Adds a Service; its reverse entries go to `add` (the bulk build groups them by
    /// shard first: inserting 100,000 addresses in shard order instead of at random is
    /// what keeps a 10,000-Service build inside the cache).
    #[allow(clippy::too_many_arguments)]
    fn insert_entry(
        config: &DnsConfig,
        free_ids: &mut Vec<u32>,
        next_id: &mut u32,
        by_id: &mut Sharded<u32, Arc<Entry>>,
        services: &mut Sharded<Arc<str>, Arc<Entry>>,
        namespace_counts: &mut HashMap<Arc<str>, usize>,
        namespaces: &mut Arc<HashSet<Arc<str>>>,
        svc: &Arc<ServiceInfo>,
        add: &mut impl FnMut(IpAddr, Target),
    ) {
        let key = service_key(&svc.key.name, &svc.key.namespace);
        let id = free_ids.pop().unwrap_or_else(|| {
            *next_id += 1;
            *next_id - 1
        });
        let entry = Arc::new(Entry {
            id,
            info: svc.clone(),
            base: Arc::from(format!(
                "{}.{}.svc.{}",
                svc.key.name, svc.key.namespace, config.zone
            )),
            index: std::sync::OnceLock::new(),
        });
        if config.reverse {
            match &svc.cluster_ips {
                _ if svc.type_ == ServiceType::ExternalName => {}
                ClusterIps::Ips(ips) => {
                    for ip in ips {
                        add(
                            *ip,
                            Target {
                                id,
                                endpoint: SERVICE,
                            },
                        );
                    }
                    for (i, e) in svc.endpoints.iter().enumerate().filter(|(_, e)| e.ready) {
                        add(
                            e.ip,
                            Target {
                                id,
                                endpoint: i as u32,
                            },
                        );
                    }
                }
                ClusterIps::Headless => {
                    for (i, e) in svc.endpoints.iter().enumerate().filter(|(_, e)| e.ready) {
                        add(
                            e.ip,
                            Target {
                                id,
                                endpoint: i as u32,
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        by_id.shard_mut(&id).insert(id, entry.clone());
        services.shard_mut(&key).insert(key, entry);
        match namespace_counts.get_mut(svc.key.namespace.as_str()) {
            Some(count) => *count += 1,
            None => {
                let ns: Arc<str> = Arc::from(svc.key.namespace.as_str());
                namespace_counts.insert(ns.clone(), 1);
                Arc::make_mut(namespaces).insert(ns);
            }
        }
    }

    fn remove_service(&mut self, key: &ServiceKey) {
        let k = service_key(&key.name, &key.namespace);
        let Some(entry) = self.view.services.shard_mut(&k).remove(&k) else {
            return;
        };
        self.view.by_id.shard_mut(&entry.id).remove(&entry.id);
        self.free_ids.push(entry.id);
        if self.view.config.reverse {
            let info = &entry.info;
            let mut ips: Vec<IpAddr> = info
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.ip)
                .collect();
            if let ClusterIps::Ips(cluster) = &info.cluster_ips {
                ips.extend(cluster.iter().copied());
            }
            for ip in ips {
                let shard = self.view.reverse.shard_mut(&ip);
                if let Some(list) = shard.get_mut(&ip) {
                    list.retain(|t| t.id != entry.id);
                    if list.is_empty() {
                        shard.remove(&ip);
                    }
                }
            }
        }
        if let Some(count) = self.namespace_counts.get_mut(key.namespace.as_str()) {
            *count -= 1;
            if *count == 0 {
                self.namespace_counts.remove(key.namespace.as_str());
                Arc::make_mut(&mut self.view.namespaces).remove(key.namespace.as_str());
            }
        }
    }

    /// Replaces one Service's records (`None` removes them).
    pub fn set_service(&mut self, key: &ServiceKey, svc: Option<&Arc<ServiceInfo>>) {
        self.remove_service(key);
        if let Some(svc) = svc {
            self.insert_service(svc);
        }
        self.view.serial = self.view.serial.wrapping_add(1);
    }

    /// Applies the Service changes of a snapshot diff (`new.diff(old).services`), reading
    /// the changed Services from `new`: work proportional to the change, not to the
    /// cluster. Returns how many Services changed.
    pub fn apply(&mut self, new: &Snapshot, changes: &[(ServiceKey, Change)]) -> usize {
        let dns_key = ServiceKey::new("kube-system", "kube-dns");
        for (key, change) in changes {
            self.remove_service(key);
            if *change != Change::Removed
                && let Some(svc) = new.services.get(key)
            {
                self.insert_service(svc);
            }
        }
        if !changes.is_empty() {
            self.view.serial = self.view.serial.wrapping_add(1);
            if changes.iter().any(|(k, _)| *k == dns_key) {
                self.refresh_glue(new);
            }
        }
        changes.len()
    }

    /// Brings the zone from `old` (the snapshot it was last built or updated from) to
    /// `new`. Computes the diff itself; when several consumers share one diff, use
    /// [`Zone::apply`].
    pub fn update(&mut self, old: &Snapshot, new: &Snapshot) -> usize {
        let diff = new.diff(old);
        self.apply(new, &diff.services)
    }

    /// The pods, for [`PodRecords::Verified`]: `(namespace, address)`.
    pub fn set_pods(&mut self, pods: impl IntoIterator<Item = (String, IpAddr)>) {
        self.view.pods = Arc::new(pods.into_iter().collect());
    }

    /// Sets the SOA serial.
    pub fn set_serial(&mut self, serial: u32) {
        self.view.serial = serial;
    }

    /// Every record, sorted by name: what the lookups answer, spelled out (for tests and
    /// inspection; the zone itself synthesizes answers at query time).
    pub fn records(&self) -> Vec<Record> {
        let cfg = &self.view.config;
        let zone = &cfg.zone;
        let mut out: Vec<Record> = Vec::new();
        let mut push = |name: String, data: Rdata| out.push(Record { name, data });
        push(
            format!("dns-version.{zone}"),
            Rdata::Txt(Arc::from(DNS_SCHEMA_VERSION)),
        );
        push(zone.clone(), Rdata::Ns(Arc::from(format!("ns.dns.{zone}"))));
        for ip in self.view.glue.iter() {
            push(format!("ns.dns.{zone}"), Rdata::from_ip(*ip));
        }
        for shard in &self.view.services.shards {
            for entry in shard.values() {
                for (name, recs) in service_records(&entry.info, cfg) {
                    for r in recs {
                        push(name.clone(), r);
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Number of Services in the zone.
    pub fn len(&self) -> usize {
        self.view.services.len()
    }

    /// Whether the zone has no Services.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which zone a name is in; negative answers carry that zone's SOA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authority {
    /// The cluster zone.
    Cluster,
    /// `in-addr.arpa`.
    InAddr,
    /// `ip6.arpa`.
    Ip6,
}

/// The records of an answer: shared with the zone (a large answer is not copied per
/// query), read as a slice. The records of one type are often a range of a name's records,
/// sharing their allocation.
#[derive(Clone)]
pub struct Records {
    all: Arc<[Rdata]>,
    start: u32,
    end: u32,
}

impl std::ops::Deref for Records {
    type Target = [Rdata];
    fn deref(&self) -> &[Rdata] {
        &self.all[self.start as usize..self.end as usize]
    }
}

impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Records {}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<Vec<Rdata>> for Records {
    fn from(v: Vec<Rdata>) -> Self {
        let end = u32::try_from(v.len()).unwrap_or(u32::MAX);
        Self {
            all: Arc::from(v),
            start: 0,
            end,
        }
    }
}

impl<'a> IntoIterator for &'a Records {
    type Item = &'a Rdata;
    type IntoIter = std::slice::Iter<'a, Rdata>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Records {
    /// The records, copied out.
    pub fn to_vec(&self) -> Vec<Rdata> {
        self.iter().cloned().collect()
    }

    /// The records of type `t`: a range of these when they are contiguous (no copy), a
    /// copy otherwise.
    fn of_type(&self, t: RecordType) -> Self {
        let (mut first, mut last, mut count) = (usize::MAX, 0, 0);
        for (i, r) in self.iter().enumerate() {
            if r.rtype() == t {
                first = first.min(i);
                last = i;
                count += 1;
            }
        }
        if count == 0 || last + 1 - first == count {
            let (first, last) = if count == 0 {
                (0, 0)
            } else {
                (first, last + 1)
            };
            return Self {
                all: self.all.clone(),
                start: self.start + first as u32,
                end: self.start + last as u32,
            };
        }
        self.iter()
            .filter(|r| r.rtype() == t)
            .cloned()
            .collect::<Vec<_>>()
            .into()
    }
}

/// What the zone says about a name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// Records at the name (possibly a CNAME to follow), with the zone they are in.
    Answer(Records, Authority),
    /// The name exists without records of that type.
    NoData(Authority),
    /// The name does not exist.
    NxDomain(Authority),
    /// The SOA of a zone apex.
    Soa(Authority),
    /// Not a name of ours (forward it, or refuse).
    NotOurs,
}

/// The data of each answer, one per line as a zone file writes it, or the negative
/// outcome: `NXDOMAIN`, `NODATA`, `SOA`, `not in this zone`.
impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answer(recs, _) => {
                for (i, r) in recs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Self::NoData(_) => f.write_str("NODATA"),
            Self::NxDomain(_) => f.write_str("NXDOMAIN"),
            Self::Soa(_) => f.write_str("SOA"),
            Self::NotOurs => f.write_str("not in this zone"),
        }
    }
}

/// The record data as a zone file writes it: `10.96.0.10`, `0 50 80 web.shop.svc.cluster.local.`,
/// `"1.1.0"`.
impl fmt::Display for Rdata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::A(ip) => write!(f, "{ip}"),
            Self::Aaaa(ip) => write!(f, "{ip}"),
            Self::Cname(n) | Self::Ptr(n) | Self::Ns(n) => write!(f, "{n}."),
            Self::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}."),
            Self::Txt(t) => write!(f, "{t:?}"),
        }
    }
}

/// `name. IN TYPE data`, as a zone file (without TTL).
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}. IN {} {}", self.name, self.data.rtype(), self.data)
    }
}

/// Records at a name, before filtering by type: `None` when the name does not exist.
type AtName = Option<Vec<Rdata>>;

fn filter(at: AtName, qtype: u16, authority: Authority) -> Lookup {
    let Some(recs) = at else {
        return Lookup::NxDomain(authority);
    };
    // The records at a name come without duplicates.
    let out: Vec<Rdata> = if qtype == rtype::ANY {
        recs.clone()
    } else {
        recs.iter()
            .filter(|r| r.rtype().code() == qtype)
            .cloned()
            .collect()
    };
    if !out.is_empty() {
        return Lookup::Answer(out.into(), authority);
    }
    // A CNAME (ExternalName) answers A and AAAA; SRV and other types get NODATA, as in
    // CoreDNS.
    if matches!(qtype, rtype::A | rtype::AAAA) {
        let cname: Vec<Rdata> = recs
            .into_iter()
            .filter(|r| r.rtype() == RecordType::Cname)
            .collect();
        if !cname.is_empty() {
            return Lookup::Answer(cname.into(), authority);
        }
    }
    Lookup::NoData(authority)
}

impl ZoneView {
    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    fn entry(&self, name: &str, namespace: &str) -> Option<&Arc<Entry>> {
        // `name.namespace` on the stack: both are DNS labels, so it fits in 127 bytes.
        let mut key = [0u8; 128];
        let len = name.len() + 1 + namespace.len();
        if len > key.len() {
            return None;
        }
        key[..name.len()].copy_from_slice(name.as_bytes());
        key[name.len()] = b'.';
        key[name.len() + 1..len].copy_from_slice(namespace.as_bytes());
        self.services.get(std::str::from_utf8(&key[..len]).ok()?)
    }

    /// Records at `<svc>.<ns>.svc.<zone>`.
    fn at_service(&self, entry: &Entry) -> AtName {
        service_name_records(entry, &self.config)
    }

    /// The answer at `<svc>.<ns>.svc.<zone>`: from the index for a large Service (shared,
    /// not copied), computed otherwise.
    fn service_answer(&self, entry: &Entry, qtype: u16) -> Lookup {
        let cluster = Authority::Cluster;
        let Some(index) = entry.index(&self.config) else {
            return filter(self.at_service(entry), qtype, cluster);
        };
        let Some([a, aaaa, srv, all]) = &index.records else {
            return Lookup::NxDomain(cluster);
        };
        let recs = match qtype {
            rtype::A => a,
            rtype::AAAA => aaaa,
            rtype::SRV => srv,
            rtype::ANY => all,
            _ => return Lookup::NoData(cluster),
        };
        if recs.is_empty() {
            Lookup::NoData(cluster)
        } else {
            Lookup::Answer(recs.clone(), cluster)
        }
    }

    /// Records at `<endpoint>.<svc>.<ns>.svc.<zone>`.
    fn at_endpoint(&self, entry: &Entry, label: &str) -> AtName {
        let info = &entry.info;
        if info.type_ == ServiceType::ExternalName
            || !matches!(info.cluster_ips, ClusterIps::Ips(_) | ClusterIps::Headless)
        {
            return None;
        }
        if let Some(labels) = entry.index(&self.config).and_then(|i| i.labels.as_ref()) {
            return labels
                .get(label)
                .map(|ips| ips.iter().map(|ip| Rdata::from_ip(*ip)).collect());
        }
        let as_ip = undash(label);
        let mut out: Vec<Rdata> = Vec::new();
        for (_, e) in ready(entry) {
            let matches = match named_endpoint(e, &self.config) {
                Some(name) => name.eq_ignore_ascii_case(label),
                None => as_ip == Some(e.ip),
            };
            let rec = Rdata::from_ip(e.ip);
            if matches && !out.contains(&rec) {
                out.push(rec);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Records at `_<port>._<proto>.<svc>.<ns>.svc.<zone>`.
    fn at_port(&self, entry: &Entry, port: &str, proto: &str) -> AtName {
        let info = &entry.info;
        let proto_is = |p: &Protocol| p.as_str().eq_ignore_ascii_case(proto);
        match &info.cluster_ips {
            _ if info.type_ == ServiceType::ExternalName => None,
            ClusterIps::Ips(_) => {
                let recs: Vec<Rdata> = info
                    .ports
                    .iter()
                    .filter(|p| {
                        !p.name.is_empty()
                            && p.name.eq_ignore_ascii_case(port)
                            && proto_is(&p.protocol)
                    })
                    .map(|p| Rdata::Srv {
                        priority: 0,
                        weight: 100,
                        port: p.port,
                        target: entry.base.clone(),
                    })
                    .collect();
                (!recs.is_empty()).then_some(recs)
            }
            ClusterIps::Headless => {
                let mut list: Vec<(Arc<str>, u16)> = Vec::new();
                let mut seen: HashSet<(Arc<str>, u16)> = HashSet::new();
                for (_, e) in ready(entry) {
                    for (pname, p, pr) in e.ports.iter() {
                        if !pname.is_empty() && pname.eq_ignore_ascii_case(port) && proto_is(pr) {
                            let target: Arc<str> = Arc::from(format!(
                                "{}.{}",
                                endpoint_name(e, &self.config),
                                entry.base
                            ));
                            if seen.insert((target.clone(), *p)) {
                                list.push((target, *p));
                            }
                        }
                    }
                }
                let n = list.len();
                let w = (100 / n.max(1)).max(1) as u16;
                let recs: Vec<Rdata> = list
                    .into_iter()
                    .map(|(target, port)| Rdata::Srv {
                        priority: 0,
                        weight: w,
                        port,
                        target,
                    })
                    .collect();
                (!recs.is_empty()).then_some(recs)
            }
            _ => None,
        }
    }

    /// The A/AAAA records of a name in the zone (for the additional section).
    pub fn addresses(&self, name: &str) -> Vec<Rdata> {
        let mut out = Vec::new();
        for t in [rtype::A, rtype::AAAA] {
            if let Lookup::Answer(recs, _) = self.lookup_code(name, t) {
                out.extend(recs.iter().filter(|r| r.rtype().code() == t).cloned());
            }
        }
        out
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.namespaces.contains(ns)
    }

    /// Looks `name` up for `rtype` with the rules of the CoreDNS `kubernetes` plugin.
    /// Names match case-insensitively, with or without the final dot.
    ///
    /// ```
    /// use service_core::cluster::Cluster;
    /// use service_core::model::{Service, ServicePort};
    /// use service_core::snapshot::NodeInfo;
    /// use service_dns::{DnsConfig, Lookup, RecordType, Zone};
    ///
    /// let mut cluster = Cluster::default();
    /// cluster.add_service(
    ///     Service::cluster_ip("shop", "web")
    ///         .with_cluster_ip("10.96.0.10")
    ///         .with_port(ServicePort::tcp("http", 80)),
    /// )?;
    /// let zone = Zone::from_snapshot(DnsConfig::default(), &cluster.snapshot(NodeInfo::default())?);
    /// let answer = zone.view().lookup("Web.Shop.svc.cluster.local.", RecordType::A);
    /// assert_eq!(answer.to_string(), "10.96.0.10");
    /// let srv = zone.view().lookup("_http._tcp.web.shop.svc.cluster.local", RecordType::Srv);
    /// assert_eq!(srv.to_string(), "0 100 80 web.shop.svc.cluster.local.");
    /// assert!(matches!(zone.view().lookup("nope.shop.svc.cluster.local", RecordType::A), Lookup::NxDomain(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup(&self, name: &str, rtype: impl Into<RecordType>) -> Lookup {
        let name = name.strip_suffix('.').unwrap_or(name);
        let code = rtype.into().code();
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.lookup_code(&name.to_ascii_lowercase(), code)
        } else {
            self.lookup_code(name, code)
        }
    }

    /// [`ZoneView::lookup`] for a lowercase name without the final dot, by type number.
    pub(crate) fn lookup_code(&self, qname: &str, qtype: u16) -> Lookup {
        let zone = self.config.zone.as_str();
        let rel = if qname == zone {
            Some("")
        } else {
            qname.strip_suffix(zone).and_then(|r| r.strip_suffix('.'))
        };
        let Some(rel) = rel else {
            return self.lookup_reverse(qname, qtype);
        };
        let cluster = Authority::Cluster;
        if rel.is_empty() {
            if qtype == rtype::SOA {
                return Lookup::Soa(cluster);
            }
            return filter(
                Some(vec![Rdata::Ns(Arc::from(format!("ns.dns.{zone}")))]),
                qtype,
                cluster,
            );
        }
        let labels: smallvec::SmallVec<[&str; 8]> = rel.split('.').collect();
        match labels.as_slice() {
            ["dns-version"] => filter(
                Some(vec![Rdata::Txt(Arc::from(DNS_SCHEMA_VERSION))]),
                qtype,
                cluster,
            ),
            ["ns", "dns"] if !self.glue.is_empty() => filter(
                Some(self.glue.iter().map(|ip| Rdata::from_ip(*ip)).collect()),
                qtype,
                cluster,
            ),
            ["svc"] | ["pod"] => Lookup::NoData(cluster),
            [ns, "svc"] => filter(self.namespace_exists(ns).then(Vec::new), qtype, cluster),
            [svc, ns, "svc"] => match self.entry(svc, ns) {
                Some(e) => self.service_answer(e, qtype),
                None => Lookup::NxDomain(cluster),
            },
            [ep, svc, ns, "svc"] => filter(
                self.entry(svc, ns).and_then(|e| self.at_endpoint(e, ep)),
                qtype,
                cluster,
            ),
            [port, proto, svc, ns, "svc"] => {
                // Underscores optional, as CoreDNS strips them.
                let port = port.strip_prefix('_').unwrap_or(port);
                let proto = proto.strip_prefix('_').unwrap_or(proto);
                filter(
                    self.entry(svc, ns)
                        .and_then(|e| self.at_port(e, port, proto)),
                    qtype,
                    cluster,
                )
            }
            [.., "pod"] => self.lookup_pod(&labels, qtype),
            _ => Lookup::NxDomain(cluster),
        }
    }

    fn lookup_pod(&self, labels: &[&str], qtype: u16) -> Lookup {
        match labels.len() {
            2 if self.namespace_exists(labels[0]) => Lookup::NoData(Authority::Cluster),
            3 if self.config.pods != PodRecords::Disabled && self.namespace_exists(labels[1]) => {
                let dashed = labels[0];
                let ip: Option<IpAddr> =
                    if dashed.matches('-').count() == 3 && !dashed.contains("--") {
                        dashed.replace('-', ".").parse().ok()
                    } else {
                        dashed.replace('-', ":").parse().ok()
                    };
                let Some(ip) = ip else {
                    return Lookup::NxDomain(Authority::Cluster);
                };
                if self.config.pods == PodRecords::Verified
                    && !self.pods.contains(&(labels[1].to_owned(), ip))
                {
                    return Lookup::NxDomain(Authority::Cluster);
                }
                filter(Some(vec![Rdata::from_ip(ip)]), qtype, Authority::Cluster)
            }
            _ => Lookup::NxDomain(Authority::Cluster),
        }
    }

    fn lookup_reverse(&self, qname: &str, qtype: u16) -> Lookup {
        let authority = if qname == "in-addr.arpa" || qname.ends_with(".in-addr.arpa") {
            Authority::InAddr
        } else if qname == "ip6.arpa" || qname.ends_with(".ip6.arpa") {
            Authority::Ip6
        } else {
            return Lookup::NotOurs;
        };
        if !self.config.reverse {
            return Lookup::NotOurs;
        }
        if qtype == rtype::SOA && (qname == "in-addr.arpa" || qname == "ip6.arpa") {
            return Lookup::Soa(authority);
        }
        let Some(targets) = unreverse(qname).and_then(|ip| self.reverse.get(&ip)) else {
            return Lookup::NxDomain(authority);
        };
        let mut recs: Vec<Rdata> = Vec::new();
        for t in targets {
            let Some(e) = self.by_id.get(&t.id) else {
                continue;
            };
            let name: Arc<str> = if t.endpoint == SERVICE {
                e.base.clone()
            } else {
                match e.info.endpoints.get(t.endpoint as usize) {
                    Some(ep) => {
                        Arc::from(format!("{}.{}", endpoint_name(ep, &self.config), e.base))
                    }
                    None => continue,
                }
            };
            let rec = Rdata::Ptr(name);
            if !recs.contains(&rec) {
                recs.push(rec);
            }
        }
        filter(Some(recs), qtype, authority)
    }
}
