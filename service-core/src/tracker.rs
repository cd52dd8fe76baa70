//! The change tracker: Service, EndpointSlice and Node events applied one at a time to the
//! node's [`Snapshot`], as kube-proxy's `ServiceChangeTracker` and
//! `EndpointsChangeTracker` do, so that a consumer never hands whole lists over again.
//!
//! ```text
//! Source (files, a live API server, your objects)
//!    │ Event + when it happened
//!    ▼
//! ChangeTracker::apply ──► current Snapshot (only the touched Service's entries rebuilt)
//!    │ checkout()
//!    ▼
//! (Snapshot, Changes { service ports, Services, node, trigger times }) ──► proxier / DNS
//! ```
//!
//! Each event re-derives only the entries of the Service it touches, so its cost does not
//! depend on the size of the cluster. [`ChangeTracker::checkout`] returns the snapshot and
//! exactly the service ports (and Services) whose entries differ from the previous checkout:
//! a port that changed and changed back is not in the set.
//!
//! ```
//! use std::time::SystemTime;
//! use service_core::manifest::{Object, load_str};
//! use service_core::snapshot::NodeInfo;
//! use service_core::tracker::{ChangeTracker, Event};
//!
//! let yaml = "
//! apiVersion: v1
//! kind: Service
//! metadata: {name: web, namespace: shop}
//! spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
//! ";
//! let mut tracker = ChangeTracker::new(NodeInfo::new("node-a", vec!["192.168.0.2".parse()?]));
//! for o in load_str("web.yaml", yaml)?.objects {
//!     if let Object::Service(s) = o.object {
//!         tracker.apply(Event::ServiceUpserted(s), SystemTime::now())?;
//!     }
//! }
//! let (snapshot, changes) = tracker.checkout();
//! assert_eq!(snapshot.ports.len(), 1);
//! assert_eq!(changes.ports.len(), 1);
//! // Nothing happened since: nothing changed.
//! assert!(tracker.checkout().1.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::cluster::Cluster;
use crate::controller::SliceChanges;
use crate::defaults;
use crate::model::{EndpointSlice, Endpoints, Node, Service};
use crate::snapshot::{
    Interner, NodeInfo, ServiceInfo, ServicePort, ServicePortName, Snapshot, service_entries,
};
use crate::valid::{ServiceKey, ValidService};
use crate::validation::{self, ValidationError};

/// Something that happened to the objects a node's proxy and DNS follow.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "an event is moved once, into the tracker; boxing would cost an allocation each"
)]
pub enum Event {
    /// A Service was created or updated (as the API server stores it: defaulted, with its
    /// cluster IPs allocated).
    ServiceUpserted(Service),
    /// A Service was deleted.
    ServiceDeleted(ServiceKey),
    /// An EndpointSlice was created or updated.
    EndpointSliceUpserted(EndpointSlice),
    /// An EndpointSlice was deleted (its namespace and name).
    EndpointSliceDeleted(ServiceKey),
    /// Legacy Endpoints were created or updated; they reach the Service as the mirroring
    /// controller's slices (Services without a selector only).
    EndpointsUpserted(Endpoints),
    /// Legacy Endpoints were deleted.
    EndpointsDeleted(ServiceKey),
    /// A Node changed. Only this node's (by name) is read: its zone label and pod CIDRs.
    NodeUpdated(Node),
}

/// An event and when it happened (for an EndpointSlice, its
/// `endpoints.kubernetes.io/last-change-trigger-time` when it has one).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TimedEvent {
    /// What happened.
    pub event: Event,
    /// When.
    pub at: SystemTime,
}

impl TimedEvent {
    /// An event at a time.
    pub fn new(event: Event, at: SystemTime) -> Self {
        Self { event, at }
    }
}

/// Where events come from: manifest files, a live API server, an embedder's own store.
///
/// A source never blocks in [`Source::poll_events`]: it returns what arrived since the last
/// call (possibly nothing). How it wakes its caller when something arrives is its own
/// business (a condition variable, a channel, an async waker) and part of its constructor.
pub trait Source {
    /// The events that arrived since the last call, oldest first.
    ///
    /// # Errors
    /// The source cannot go on (its caller should stop); a source recovers from passing
    /// trouble (an unreadable file, a broken watch) itself and keeps the last good state.
    fn poll_events(&mut self) -> Result<Vec<TimedEvent>, SourceError>;

    /// Whether the source has delivered its initial state (a full list), so that a sync
    /// built from it is complete. Sources that deliver everything up front are always synced.
    fn synced(&self) -> bool {
        true
    }
}

/// A source failed for good.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct SourceError {
    /// What happened.
    pub message: String,
}

impl SourceError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// An event the tracker refused; the state it would have replaced is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The object fails the API server's validation.
    #[error("{0}")]
    Invalid(ValidationError),
}

impl SliceChanges {
    /// The changes as tracker events: upserts for created and updated slices, deletes for
    /// the rest.
    pub fn into_events(self) -> Vec<Event> {
        let deleted = self.delete.into_iter().map(|s| {
            Event::EndpointSliceDeleted(ServiceKey::new(s.metadata.namespace(), s.metadata.name()))
        });
        self.create
            .into_iter()
            .chain(self.update)
            .map(Event::EndpointSliceUpserted)
            .chain(deleted)
            .collect()
    }
}

/// What changed between two checkouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// The node facts changed: every service port may render differently.
    pub node_changed: bool,
    /// Service ports whose entries differ (added, removed or changed).
    pub ports: BTreeSet<ServicePortName>,
    /// Services whose DNS/environment view differs.
    pub services: BTreeSet<ServiceKey>,
    /// When the endpoint changes behind this checkout happened, one per EndpointSlice
    /// event still relevant (kube-proxy's network-programming latency is measured from
    /// these to the moment the rules are in the kernel).
    pub trigger_times: Vec<SystemTime>,
    /// Service events since the previous checkout.
    pub service_events: usize,
    /// EndpointSlice and Endpoints events since the previous checkout.
    pub endpoint_events: usize,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.node_changed && self.ports.is_empty() && self.services.is_empty()
    }
}

/// Counters since the tracker was created (kube-proxy's `*_changes_total` metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackerStats {
    /// Service events applied.
    pub service_events: u64,
    /// EndpointSlice and Endpoints events applied.
    pub endpoint_events: u64,
    /// Service events since the last checkout.
    pub service_events_pending: u64,
    /// Endpoint events since the last checkout.
    pub endpoint_events_pending: u64,
}

/// Applies events to the node's snapshot. See the [module docs](self).
#[derive(Debug)]
pub struct ChangeTracker {
    /// The node as configured (name, IPs); the Node object adds zone and pod CIDRs.
    node_base: NodeInfo,
    services: HashMap<ServiceKey, ValidService>,
    slices: HashMap<ServiceKey, EndpointSlice>,
    /// The Service each slice belongs to (label `kubernetes.io/service-name`).
    slice_owner: HashMap<ServiceKey, ServiceKey>,
    slices_of: HashMap<ServiceKey, BTreeSet<String>>,
    legacy: HashMap<ServiceKey, Endpoints>,
    /// The service ports each Service has in the snapshot.
    ports_of: HashMap<ServiceKey, Vec<ServicePortName>>,
    interner: Interner,
    snapshot: Snapshot,
    /// Entries as of the last checkout, for those touched since.
    base_ports: BTreeMap<ServicePortName, Option<Arc<ServicePort>>>,
    base_services: BTreeMap<ServiceKey, Option<Arc<ServiceInfo>>>,
    base_node: Option<Arc<NodeInfo>>,
    trigger_times: BTreeMap<ServiceKey, Vec<SystemTime>>,
    stats: TrackerStats,
}

impl ChangeTracker {
    /// An empty tracker for the node `node` (its name decides which endpoints are local).
    pub fn new(node: NodeInfo) -> Self {
        Self {
            snapshot: Snapshot {
                node: Arc::new(node.clone()),
                ..Snapshot::default()
            },
            node_base: node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            slices_of: HashMap::new(),
            legacy: HashMap::new(),
            ports_of: HashMap::new(),
            interner: Interner::default(),
            base_ports: BTreeMap::new(),
            base_services: BTreeMap::new(),
            base_node: None,
            trigger_times: BTreeMap::new(),
            stats: TrackerStats::default(),
        }
    }

    /// The current snapshot (every event applied).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Whether something may have changed since the last checkout (cheap; a change that
    /// was undone still counts until [`ChangeTracker::checkout`] compares).
    pub fn has_pending(&self) -> bool {
        self.base_node.is_some() || !self.base_ports.is_empty() || !self.base_services.is_empty()
    }

    /// Applies one event that happened at `at`.
    ///
    /// # Errors
    /// [`TrackerError::Invalid`] when the object fails validation; the tracker then keeps
    /// the object's previous version.
    pub fn apply(&mut self, event: Event, at: SystemTime) -> Result<(), TrackerError> {
        match event {
            Event::ServiceUpserted(mut svc) => {
                defaults::service(&mut svc);
                let valid = validation::validate_service(&svc).map_err(TrackerError::Invalid)?;
                self.service_event();
                let key = valid.key.clone();
                self.services.insert(key.clone(), valid);
                self.refresh(&key);
            }
            Event::ServiceDeleted(key) => {
                self.service_event();
                self.services.remove(&key);
                self.refresh(&key);
            }
            Event::EndpointSliceUpserted(mut slice) => {
                defaults::endpoint_slice(&mut slice);
                validation::validate_endpoint_slice(&slice).map_err(TrackerError::Invalid)?;
                self.endpoint_event();
                let key = ServiceKey::new(slice.metadata.namespace(), slice.metadata.name());
                let owner = slice
                    .service_name()
                    .map(|s| ServiceKey::new(slice.metadata.namespace(), s));
                let before = self.unlink_slice(&key);
                self.slices.insert(key.clone(), slice);
                if let Some(owner) = &owner {
                    self.slice_owner.insert(key.clone(), owner.clone());
                    self.slices_of
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.name.clone());
                    self.trigger_times
                        .entry(owner.clone())
                        .or_default()
                        .push(at);
                    self.refresh(owner);
                }
                if let Some(before) = before.filter(|b| Some(b) != owner.as_ref()) {
                    self.refresh(&before);
                }
            }
            Event::EndpointSliceDeleted(key) => {
                self.endpoint_event();
                self.slices.remove(&key);
                if let Some(owner) = self.unlink_slice(&key) {
                    // kube-proxy drops the queued trigger times of a Service whose slice is
                    // deleted (`EndpointsChangeTracker.EndpointSliceUpdate`).
                    self.trigger_times.remove(&owner);
                    self.refresh(&owner);
                }
            }
            Event::EndpointsUpserted(mut ep) => {
                defaults::endpoints(&mut ep);
                validation::validate_endpoints(&ep).map_err(TrackerError::Invalid)?;
                self.endpoint_event();
                let key = ServiceKey::new(ep.metadata.namespace(), ep.metadata.name());
                self.legacy.insert(key.clone(), ep);
                self.refresh(&key);
            }
            Event::EndpointsDeleted(key) => {
                self.endpoint_event();
                self.legacy.remove(&key);
                self.refresh(&key);
            }
            Event::NodeUpdated(node) => self.node_updated(&node),
        }
        Ok(())
    }

    /// Applies events that all happened at `at`, in order.
    ///
    /// # Errors
    /// The first event the tracker refused (the rest are applied).
    pub fn apply_all(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        at: SystemTime,
    ) -> Result<(), TrackerError> {
        let mut first = None;
        for e in events {
            if let Err(err) = self.apply(e, at) {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Applies every Service, EndpointSlice, Endpoints and this node's Node of `cluster`
    /// as upserts that happened at `at` (a tracker's first state, e.g. after a full list).
    ///
    /// # Errors
    /// The first object the tracker refused (the rest are applied).
    pub fn load(&mut self, cluster: &Cluster, at: SystemTime) -> Result<(), TrackerError> {
        let events = cluster
            .services
            .iter()
            .map(|s| Event::ServiceUpserted(s.object.clone()))
            .chain(
                cluster
                    .endpoint_slices
                    .iter()
                    .cloned()
                    .map(Event::EndpointSliceUpserted),
            )
            .chain(
                cluster
                    .endpoints
                    .iter()
                    .cloned()
                    .map(Event::EndpointsUpserted),
            )
            .chain(cluster.nodes.iter().cloned().map(Event::NodeUpdated));
        self.apply_all(events.collect::<Vec<_>>(), at)
    }

    /// Replaces the node's configured facts (name, IPs, zone, pod CIDRs); every Service is
    /// re-derived.
    pub fn set_node(&mut self, node: NodeInfo) {
        self.node_base = node.clone();
        self.replace_node(node);
    }

    /// The snapshot and what changed since the previous checkout (the first checkout
    /// reports everything as changed).
    pub fn checkout(&mut self) -> (Snapshot, Changes) {
        let mut changes = Changes {
            node_changed: self
                .base_node
                .take()
                .is_some_and(|n| n != self.snapshot.node),
            service_events: usize::try_from(self.stats.service_events_pending)
                .unwrap_or(usize::MAX),
            endpoint_events: usize::try_from(self.stats.endpoint_events_pending)
                .unwrap_or(usize::MAX),
            ..Changes::default()
        };
        for (name, base) in std::mem::take(&mut self.base_ports) {
            if base.as_ref() != self.snapshot.ports.get(&name) {
                changes.ports.insert(name);
            }
        }
        for (key, base) in std::mem::take(&mut self.base_services) {
            if base.as_ref() != self.snapshot.services.get(&key) {
                changes.services.insert(key);
            }
        }
        changes.trigger_times = std::mem::take(&mut self.trigger_times)
            .into_values()
            .flatten()
            .collect();
        changes.trigger_times.sort_unstable();
        self.stats.service_events_pending = 0;
        self.stats.endpoint_events_pending = 0;
        (self.snapshot.clone(), changes)
    }

    fn service_event(&mut self) {
        self.stats.service_events += 1;
        self.stats.service_events_pending += 1;
    }

    fn endpoint_event(&mut self) {
        self.stats.endpoint_events += 1;
        self.stats.endpoint_events_pending += 1;
    }

    /// Forgets which Service a slice belonged to; returns that Service.
    fn unlink_slice(&mut self, slice: &ServiceKey) -> Option<ServiceKey> {
        let owner = self.slice_owner.remove(slice)?;
        if let Some(set) = self.slices_of.get_mut(&owner) {
            set.remove(&slice.name);
            if set.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        Some(owner)
    }

    fn node_updated(&mut self, node: &Node) {
        if node.metadata.name() != self.node_base.name {
            return;
        }
        let mut info = self.node_base.clone();
        if let Some(zone) = node.zone() {
            info.zone = Some(zone.to_owned());
        }
        let pod_cidrs: Vec<IpNet> = node
            .extra
            .get("spec")
            .and_then(|s| s.get("podCIDRs"))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if !pod_cidrs.is_empty() {
            info.pod_cidrs = pod_cidrs;
        }
        self.replace_node(info);
    }

    fn replace_node(&mut self, node: NodeInfo) {
        if *self.snapshot.node == node {
            return;
        }
        if self.base_node.is_none() {
            self.base_node = Some(self.snapshot.node.clone());
        }
        self.snapshot.node = Arc::new(node);
        let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        for key in keys {
            self.refresh(&key);
        }
    }

    /// Re-derives the entries of one Service (gone, if it no longer exists).
    fn refresh(&mut self, key: &ServiceKey) {
        let (info, ports) = match self.services.get(key) {
            None => (None, Vec::new()),
            Some(svc) => {
                let slices: Vec<&EndpointSlice> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|name| self.slices.get(&ServiceKey::new(&key.namespace, name)))
                    .collect();
                let (info, ports) = service_entries(
                    svc,
                    &slices,
                    self.legacy.get(key),
                    &self.snapshot.node,
                    &mut self.interner,
                );
                (Some(info), ports)
            }
        };
        // The Service's DNS/env view.
        let old = match &info {
            Some(new) => match self.snapshot.services.get(key) {
                Some(old) if old == new => None,
                _ => Some(self.snapshot.services.insert(key.clone(), new.clone())),
            },
            None => Some(self.snapshot.services.remove(key)),
        };
        if let Some(old) = old {
            self.base_services.entry(key.clone()).or_insert(old);
        }
        // Its service ports.
        let previous = self.ports_of.remove(key).unwrap_or_default();
        let mut names = Vec::with_capacity(ports.len());
        for port in ports {
            let name = port.name.clone();
            match self.snapshot.ports.get(&name) {
                Some(old) if *old == port => {}
                _ => {
                    let old = self.snapshot.ports.insert(name.clone(), port);
                    self.base_ports.entry(name.clone()).or_insert(old);
                }
            }
            names.push(name);
        }
        for name in previous {
            if !names.contains(&name) {
                let old = self.snapshot.ports.remove(&name);
                self.base_ports.entry(name).or_insert(old);
            }
        }
        if !names.is_empty() {
            self.ports_of.insert(key.clone(), names);
        }
    }
}

#[cfg(test)]
mod tests;
