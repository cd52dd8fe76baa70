//! Repair: rebuilds the allocator state from the stored Services, as the API server's
//! repair controllers do every three minutes (`ipallocator/controller/repair.go`,
//! `portallocator/controller/repair.go`).
//!
//! - A Service's value missing from the bitmap is allocated again ("not allocated;
//!   repairing").
//! - Values two Services share, and values outside the range, are reported, not fixed:
//!   the owners must recreate one of the Services.
//! - A value allocated but used by no Service is suspected of having leaked (a crash
//!   between allocation and write, a release that failed). It stays allocated for two more
//!   passes and is freed by the third that still finds it unused, so an allocation racing
//!   with its Service's write is never taken away.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::random::Random;

use super::{
    ApiError, Precondition, Registry, Store, collect_node_ports, key_of, needs_health_check,
};
use crate::alloc::{AllocError, IpAllocator, PortAllocator, PortRange, RangeAllocation};
use crate::model::{IpFamily, Protocol, Service};
use crate::valid::ServiceKey;
use crate::validation::names::parse_ip_sloppy;

/// Passes a suspected leak must survive before it is freed (`numRepairsBeforeLeakCleanup`).
const PASSES_BEFORE_LEAK_CLEANUP: u8 = 3;

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

fn event(report: &mut RepairReport, svc: Option<&Service>, reason: &'static str, message: String) {
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

/// The leak bookkeeping of one pass: which stored values to keep, and the counters to
/// remember if the pass is written.
fn sweep_leaks<T: Copy + Eq + Hash>(
    stored: impl Iterator<Item = T>,
    leaks: &mut HashMap<T, u8>,
    mut keep: impl FnMut(T),
) -> (usize, Vec<T>) {
    let mut suspected = 0;
    let mut freed = Vec::new();
    for value in stored {
        let count = leaks
            .get(&value)
            .copied()
            .unwrap_or(PASSES_BEFORE_LEAK_CLEANUP - 1);
        if count > 0 {
            leaks.insert(value, count - 1);
            keep(value);
            suspected += 1;
        } else {
            leaks.remove(&value);
            freed.push(value);
        }
    }
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
    /// Allocated, used by no Service for three passes: freed.
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

/// A pass that was written: its findings and the leak counters to keep.
type Written<V> = (RepairReport, HashMap<V, u8>);

impl<S: Store, R: Random> Registry<S, R> {
    /// One repair pass over every allocator. Run it at start-up and periodically (the API
    /// server runs it every three minutes); the leak counters live in this registry, so run
    /// it from one long-lived registry.
    ///
    /// # Errors
    /// The store failed, a range is full, or stored state is unusable. Nothing is written
    /// then.
    pub fn repair(&mut self) -> Result<RepairReport, ApiError> {
        let mut report = RepairReport::default();
        for index in 0..self.ips.len() {
            self.repair_ips(index, &mut report)?;
        }
        self.repair_ports(&mut report)?;
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
    fn repair_range<A: Repairable>(
        &self,
        key: &str,
        range: A::Range,
        leaks: &HashMap<A::Value, u8>,
        mut held: impl FnMut(&Service, &mut RepairReport) -> Vec<A::Value>,
        text: impl Fn(Problem, A::Value) -> (&'static str, String),
    ) -> Result<Written<A::Value>, ApiError> {
        for _ in 0..super::MAX_ATTEMPTS {
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
            let (suspected, freed) = sweep_leaks(stored.values().into_iter(), &mut leaks, |v| {
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
        Err(ApiError::internal(format!(
            "repairing {range}: too many concurrent updates"
        )))
    }

    fn repair_ips(&mut self, index: usize, report: &mut RepairReport) -> Result<(), ApiError> {
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
        let (mut pass, leaks) = self.repair_range::<IpAllocator>(&key, cidr, &leaks, held, text)?;
        self.ips[index].version = None;
        self.ip_leaks = leaks;
        report.events.append(&mut pass.events);
        report.suspected_leaks += pass.suspected_leaks;
        report.freed += pass.freed;
        Ok(())
    }

    fn repair_ports(&mut self, report: &mut RepairReport) -> Result<(), ApiError> {
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
            self.repair_range::<PortAllocator>(&key, range, &leaks, held, text)?;
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
