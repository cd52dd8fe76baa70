//! Repair: rebuilds the allocator state from the stored Services, as the API server's
//! repair controllers do every three minutes (`ipallocator/controller/repair.go`,
//! `portallocator/controller/repair.go`).
//!
//! - A Service's value missing from the bitmap is allocated again ("not allocated;
//!   repairing").
//! - Values two Services share, and values outside the range, are reported, not fixed:
//!   the owners must recreate one of the Services.
//! - A value allocated but used by no Service is suspected of having leaked (a crash
//!   between allocation and write, a release that failed). It stays allocated until a pass
//!   finds it still unused a grace period of time after the first pass that did
//!   ([`RegistryConfig::with_leak_grace`](super::RegistryConfig::with_leak_grace), three
//!   minutes by default), so an allocation racing with its Service's write is never taken
//!   away, however often repair runs. (Kubernetes counts passes instead —
//!   `numRepairsBeforeLeakCleanup = 3`, one pass every three minutes — which only means
//!   time when the passes are evenly spaced.)

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::random::Random;

use super::{
    ApiError, Precondition, Registry, Store, collect_node_ports, key_of, needs_health_check,
};
use crate::alloc::{AllocError, IpAllocator, PortAllocator, PortRange, RangeAllocation};
use crate::model::{IpFamily, Protocol, Service};
use crate::valid::ServiceKey;
use crate::validation::names::parse_ip_sloppy;

/// One finding of a repair pass. `reason` is the API server's event reason
/// (`ClusterIPNotAllocated`, `ClusterIPAlreadyAllocated`, `ClusterIPOutOfRange`,
/// `ClusterIPNotValid`, `ServiceCIDRFull`, `PortNotAllocated`, `PortAlreadyAllocated`,
/// `PortOutOfRange`, `PortRangeFull`), or `ClusterIPLeaked` / `PortLeaked` for a value this
/// pass freed (Kubernetes only logs those).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairEvent {
    /// The Service concerned, if any.
    pub service: Option<ServiceKey>,
    /// Event reason.
    pub reason: &'static str,
    /// Event message.
    pub message: String,
}

/// What a repair pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Findings, in the order found.
    pub events: Vec<RepairEvent>,
    /// Values allocated but unused, kept for now.
    pub suspected_leaks: usize,
    /// Values freed as leaks by this pass.
    pub freed: usize,
}

impl RepairReport {
    /// Events with this reason.
    pub fn count(&self, reason: &str) -> usize {
        self.events.iter().filter(|e| e.reason == reason).count()
    }
}

pub(super) fn event(
    report: &mut RepairReport,
    svc: Option<&Service>,
    reason: &'static str,
    message: String,
) {
    report.events.push(RepairEvent {
        service: svc.map(key_of),
        reason,
        message,
    });
}

/// `IsServiceIPSet`.
fn ip_set(svc: &Service) -> bool {
    svc.spec
        .cluster_ip
        .as_deref()
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The node ports a Service holds, each as often as it is held by ports of one protocol
/// (TCP and UDP sharing a node port is one use; two TCP ports sharing one is a duplicate),
/// plus the health-check node port.
fn held_node_ports(svc: &Service) -> Vec<u16> {
    let mut uses: HashMap<u16, HashMap<Protocol, usize>> = HashMap::new();
    for p in &svc.spec.ports {
        if let Ok(n) = u16::try_from(super::node_port(p))
            && n != 0
        {
            let proto = p.protocol.clone().unwrap_or(Protocol::Tcp);
            *uses.entry(n).or_default().entry(proto).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for port in collect_node_ports(svc) {
        if out.contains(&port) {
            continue;
        }
        let times = uses
            .get(&port)
            .and_then(|m| m.values().max().copied())
            .unwrap_or(1);
        out.extend(std::iter::repeat_n(port, times));
    }
    if needs_health_check(svc)
        && let Some(p) = svc
            .spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
        && p != 0
    {
        out.push(p);
    }
    out
}

/// The leak bookkeeping of one pass at `now`: `stored` are the allocated values no Service
/// uses. Those first found unused at least `grace` ago are freed; the others are kept
/// (`keep`) and remembered with the time they were first found.
fn sweep_leaks<T: Copy + Eq + Hash>(
    stored: impl Iterator<Item = T>,
    leaks: &mut HashMap<T, Instant>,
    now: Instant,
    grace: Duration,
    mut keep: impl FnMut(T),
) -> (usize, Vec<T>) {
    let mut suspected = 0;
    let mut freed = Vec::new();
    let mut seen = HashMap::new();
    for value in stored {
        let since = leaks.get(&value).copied().unwrap_or(now);
        if now.saturating_duration_since(since) >= grace && since < now {
            freed.push(value);
        } else {
            seen.insert(value, since);
            keep(value);
            suspected += 1;
        }
    }
    // Values used again, or freed, are forgotten.
    *leaks = seen;
    (suspected, freed)
}

/// What a repair pass finds wrong with one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Problem {
    /// A Service holds it, the stored bitmap does not.
    NotAllocated,
    /// Two Services hold it.
    AlreadyAllocated,
    /// It is outside the range.
    OutOfRange,
    /// Allocated, used by no Service for the grace period: freed.
    Leaked,
}

/// What a repair pass needs of an allocator (ClusterIPs per service CIDR, node ports).
trait Repairable: Sized {
    type Value: Copy + Eq + Hash;
    type Range: Copy + fmt::Display;
    fn fresh(range: Self::Range) -> Self;
    fn restore(snapshot: &RangeAllocation) -> Result<Self, AllocError>;
    fn allocate(&mut self, value: Self::Value) -> Result<(), AllocError>;
    fn release(&mut self, value: Self::Value) -> bool;
    fn values(&self) -> Vec<Self::Value>;
    fn snapshot(&self) -> RangeAllocation;
}

impl Repairable for IpAllocator {
    type Value = IpAddr;
    type Range = IpNet;
    fn fresh(range: IpNet) -> Self {
        Self::new(range)
    }
    fn restore(snapshot: &RangeAllocation) -> Result<Self, AllocError> {
        Self::from_snapshot(snapshot)
    }
    fn allocate(&mut self, value: IpAddr) -> Result<(), AllocError> {
        self.allocate(value)
    }
    fn release(&mut self, value: IpAddr) -> bool {
        self.release(value)
    }
    fn values(&self) -> Vec<IpAddr> {
        self.iter().collect()
    }
    fn snapshot(&self) -> RangeAllocation {
        self.snapshot()
    }
}

impl Repairable for PortAllocator {
    type Value = u16;
    type Range = PortRange;
    fn fresh(range: PortRange) -> Self {
        Self::new(range)
    }
    fn restore(snapshot: &RangeAllocation) -> Result<Self, AllocError> {
        Self::from_snapshot(snapshot)
    }
    fn allocate(&mut self, value: u16) -> Result<(), AllocError> {
        self.allocate(value)
    }
    fn release(&mut self, value: u16) -> bool {
        self.release(value)
    }
    fn values(&self) -> Vec<u16> {
        self.iter().collect()
    }
    fn snapshot(&self) -> RangeAllocation {
        self.snapshot()
    }
}

/// A pass that was written: its findings and the suspected leaks to remember.
type Written<V> = (RepairReport, HashMap<V, Instant>);

impl<S: Store, R: Random> Registry<S, R> {
    /// One repair pass over every allocator, at `now` (a monotonic clock's reading: the
    /// registry keeps none). Run it at start-up and periodically (the API server runs it
    /// every three minutes); suspected leaks and when they were first found live in this
    /// registry, so run it from one long-lived registry.
    ///
    /// # Errors
    /// The store failed, a range is full, or stored state is unusable. Nothing is written
    /// then.
    pub fn repair(&mut self, now: Instant) -> Result<RepairReport, ApiError> {
        let mut report = RepairReport::default();
        for index in 0..self.ips.len() {
            self.repair_ips(index, now, &mut report)?;
        }
        if self.config.uses_ip_addresses() {
            self.repair_addresses(now, &mut report)?;
        }
        self.repair_ports(now, &mut report)?;
        Ok(report)
    }

    fn read_range(&self, key: &str) -> Result<(Option<RangeAllocation>, Precondition), ApiError> {
        match self.store.get(key).map_err(ApiError::internal)? {
            None => Ok((None, Precondition::Absent)),
            Some(v) => {
                let snap = RangeAllocation::from_json(&v.value).map_err(ApiError::internal)?;
                Ok((Some(snap), Precondition::Version(v.version)))
            }
        }
    }

    /// One allocator's pass, retried on concurrent writes: rebuild the bitmap from the
    /// values the Services hold (`held`, which may report invalid ones), compare with the
    /// stored bitmap, count and free leaks, write. `text` words each finding as the API
    /// server does.
    #[allow(clippy::too_many_arguments)]
    fn repair_range<A: Repairable>(
        &mut self,
        key: &str,
        range: A::Range,
        leaks: &HashMap<A::Value, Instant>,
        now: Instant,
        mut held: impl FnMut(&Service, &mut RepairReport) -> Vec<A::Value>,
        text: impl Fn(Problem, A::Value) -> (&'static str, String),
    ) -> Result<Written<A::Value>, ApiError> {
        let grace = self.config.leak_grace();
        for attempt in 0..self.config.retry().attempts {
            self.pause_before(attempt);
            let mut pass = RepairReport::default();
            // The range first, then the Services: an allocation made in between belongs to
            // a Service we may not see yet, and is only ever flagged, never freed, by this pass.
            let (snapshot, precondition) = self.read_range(key)?;
            let mut stored = match &snapshot {
                // A snapshot of a former range: its values are only leak candidates.
                Some(s) => A::restore(s).map_err(ApiError::internal)?,
                None => A::fresh(range),
            };
            let services = self.list()?;
            let mut rebuilt = A::fresh(range);
            let mut leaks = leaks.clone();
            for svc in &services {
                for value in held(svc, &mut pass) {
                    let problem = match rebuilt.allocate(value) {
                        Ok(()) => {
                            leaks.remove(&value);
                            if stored.release(value) {
                                continue;
                            }
                            Problem::NotAllocated
                        }
                        Err(AllocError::Allocated(_)) => Problem::AlreadyAllocated,
                        Err(AllocError::NotInRange { .. }) => Problem::OutOfRange,
                        Err(e) => {
                            return Err(ApiError::internal(format!("repairing {range}: {e}")));
                        }
                    };
                    let (reason, message) = text(problem, value);
                    event(&mut pass, Some(svc), reason, message);
                }
            }
            let unused = stored.values().into_iter();
            let (suspected, freed) = sweep_leaks(unused, &mut leaks, now, grace, |v| {
                // Out of the current range (a former range's value): nothing to keep.
                let _ = rebuilt.allocate(v);
            });
            for v in &freed {
                let (reason, message) = text(Problem::Leaked, *v);
                event(&mut pass, None, reason, message);
            }
            let written = self
                .store
                .put(key, &rebuilt.snapshot().to_json(), precondition)
                .map_err(ApiError::internal)?;
            if written.is_some() {
                pass.suspected_leaks = suspected;
                pass.freed = freed.len();
                return Ok((pass, leaks));
            }
        }
        Err(ApiError::server_timeout(&format!(
            "the allocations of {range}"
        )))
    }

    fn repair_ips(
        &mut self,
        index: usize,
        now: Instant,
        report: &mut RepairReport,
    ) -> Result<(), ApiError> {
        let cidr = self.ips[index].alloc.cidr();
        let family = if cidr.network().is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        };
        let configured: Vec<IpFamily> = [IpFamily::Ipv4, IpFamily::Ipv6]
            .into_iter()
            .filter(|f| self.configured(f))
            .collect();
        let key = self.ips[index].key.clone();
        let leaks = self.ip_leaks.clone();
        // Invalid addresses are reported once, by the first range's pass.
        let held = |svc: &Service, pass: &mut RepairReport| -> Vec<IpAddr> {
            let mut out = Vec::new();
            if !ip_set(svc) {
                return out;
            }
            for text in &svc.spec.cluster_ips {
                let Some(ip) = parse_ip_sloppy(text) else {
                    if index == 0 {
                        event(
                            pass,
                            Some(svc),
                            "ClusterIPNotValid",
                            format!("Cluster IP {text} is not a valid IP; please recreate service"),
                        );
                    }
                    continue;
                };
                let fam = IpFamily::of(&ip);
                if !configured.contains(&fam) {
                    if index == 0 {
                        event(
                            pass,
                            Some(svc),
                            "ClusterIPNotValid",
                            format!(
                                "Cluster IP {text} is of ip family that is no longer configured on cluster; please recreate service"
                            ),
                        );
                    }
                    continue;
                }
                if fam == family {
                    out.push(ip);
                }
            }
            out
        };
        let text = |problem: Problem, ip: IpAddr| match problem {
            Problem::NotAllocated => (
                "ClusterIPNotAllocated",
                format!("Cluster IP [{family}]:{ip} is not allocated; repairing"),
            ),
            Problem::AlreadyAllocated => (
                "ClusterIPAlreadyAllocated",
                format!(
                    "Cluster IP [{family}]:{ip} was assigned to multiple services; please recreate service"
                ),
            ),
            Problem::OutOfRange => (
                "ClusterIPOutOfRange",
                format!(
                    "Cluster IP [{family}]:{ip} is not within the service CIDR {cidr}; please recreate service"
                ),
            ),
            Problem::Leaked => (
                "ClusterIPLeaked",
                format!("the cluster IP {ip} appears to have leaked: cleaning up"),
            ),
        };
        let (mut pass, leaks) =
            self.repair_range::<IpAllocator>(&key, cidr, &leaks, now, held, text)?;
        self.ips[index].version = None;
        self.ip_leaks = leaks;
        report.events.append(&mut pass.events);
        report.suspected_leaks += pass.suspected_leaks;
        report.freed += pass.freed;
        Ok(())
    }

    fn repair_ports(&mut self, now: Instant, report: &mut RepairReport) -> Result<(), ApiError> {
        let range = self.config.node_ports;
        let key = self.ports.key.clone();
        let leaks = self.port_leaks.clone();
        let text = |problem: Problem, port: u16| match problem {
            Problem::NotAllocated => (
                "PortNotAllocated",
                format!("Port {port} is not allocated; repairing"),
            ),
            Problem::AlreadyAllocated => (
                "PortAlreadyAllocated",
                format!("Port {port} was assigned to multiple services; please recreate service"),
            ),
            Problem::OutOfRange => (
                "PortOutOfRange",
                format!(
                    "Port {port} is not within the port range {range}; please recreate service"
                ),
            ),
            Problem::Leaked => (
                "PortLeaked",
                format!("the node port {port} appears to have leaked: cleaning up"),
            ),
        };
        let held = |svc: &Service, _: &mut RepairReport| held_node_ports(svc);
        let (mut pass, leaks) =
            self.repair_range::<PortAllocator>(&key, range, &leaks, now, held, text)?;
        self.ports.version = None;
        self.port_leaks = leaks;
        report.events.append(&mut pass.events);
        report.suspected_leaks += pass.suspected_leaks;
        report.freed += pass.freed;
        Ok(())
    }
}

#[cfg(test)]
pub(super) fn held_node_ports_for_tests(svc: &Service) -> Vec<u16> {
    held_node_ports(svc)
}
