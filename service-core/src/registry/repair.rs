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
use std::hash::Hash;
use std::net::IpAddr;

use rand_core::RngCore;

use super::{
    ApiError, Precondition, Registry, Store, collect_node_ports, key_of, needs_health_check,
};
use crate::alloc::{AllocError, IpAllocator, PortAllocator, RangeAllocation};
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

impl<S: Store, R: RngCore> Registry<S, R> {
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

    fn repair_ips(&mut self, index: usize, report: &mut RepairReport) -> Result<(), ApiError> {
        let cidr = self.ips[index].alloc.cidr();
        let family = if cidr.network().is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        };
        let key = self.ips[index].key.clone();
        for _ in 0..super::MAX_ATTEMPTS {
            let mut pass = RepairReport::default();
            // The range first, then the Services: an allocation made in between belongs to
            // a Service we may not see yet, and is only ever flagged, never freed, by this pass.
            let (snapshot, precondition) = self.read_range(&key)?;
            let mut stored = match &snapshot {
                // A snapshot of a former range: its addresses are only leak candidates.
                Some(s) => IpAllocator::from_snapshot(s).map_err(ApiError::internal)?,
                None => IpAllocator::new(cidr),
            };
            let services = self.list()?;
            let mut rebuilt = IpAllocator::new(cidr);
            let mut leaks = self.ip_leaks.clone();
            for svc in services.iter().filter(|s| ip_set(s)) {
                for text in &svc.spec.cluster_ips {
                    let Some(ip) = parse_ip_sloppy(text) else {
                        if index == 0 {
                            event(
                                &mut pass,
                                Some(svc),
                                "ClusterIPNotValid",
                                format!(
                                    "Cluster IP {text} is not a valid IP; please recreate service"
                                ),
                            );
                        }
                        continue;
                    };
                    let fam = IpFamily::of(&ip);
                    if !self.configured(&fam) {
                        if index == 0 {
                            event(
                                &mut pass,
                                Some(svc),
                                "ClusterIPNotValid",
                                format!(
                                    "Cluster IP {text} is of ip family that is no longer configured on cluster; please recreate service"
                                ),
                            );
                        }
                        continue;
                    }
                    if fam != family {
                        continue;
                    }
                    match rebuilt.allocate(ip) {
                        Ok(()) => {
                            if !stored.release(ip) {
                                event(
                                    &mut pass,
                                    Some(svc),
                                    "ClusterIPNotAllocated",
                                    format!(
                                        "Cluster IP [{family}]:{ip} is not allocated; repairing"
                                    ),
                                );
                            }
                            leaks.remove(&ip);
                        }
                        Err(AllocError::Allocated(_)) => event(
                            &mut pass,
                            Some(svc),
                            "ClusterIPAlreadyAllocated",
                            format!(
                                "Cluster IP [{family}]:{ip} was assigned to multiple services; please recreate service"
                            ),
                        ),
                        Err(AllocError::NotInRange { .. }) => event(
                            &mut pass,
                            Some(svc),
                            "ClusterIPOutOfRange",
                            format!(
                                "Cluster IP [{family}]:{ip} is not within the service CIDR {cidr}; please recreate service"
                            ),
                        ),
                        Err(e) => {
                            event(
                                &mut pass,
                                Some(svc),
                                "ServiceCIDRFull",
                                format!(
                                    "Service CIDR {cidr} is full; you must widen the CIDR in order to create new services for Cluster IP [{family}]:{ip}"
                                ),
                            );
                            return Err(ApiError::internal(format!("repairing {cidr}: {e}")));
                        }
                    }
                }
            }
            let leftover: Vec<IpAddr> = stored.iter().collect();
            let (suspected, freed) = sweep_leaks(leftover.into_iter(), &mut leaks, |ip| {
                // Out of the current range (a former range's address): nothing to keep.
                let _ = rebuilt.allocate(ip);
            });
            for ip in &freed {
                event(
                    &mut pass,
                    None,
                    "ClusterIPLeaked",
                    format!("the cluster IP {ip} appears to have leaked: cleaning up"),
                );
            }
            let written = self
                .store
                .put(&key, &rebuilt.snapshot().to_json(), precondition)
                .map_err(ApiError::internal)?;
            if written.is_some() {
                self.ips[index].version = None;
                self.ip_leaks = leaks;
                report.events.append(&mut pass.events);
                report.suspected_leaks += suspected;
                report.freed += freed.len();
                return Ok(());
            }
        }
        Err(ApiError::internal(format!(
            "repairing {cidr}: too many concurrent updates"
        )))
    }

    fn repair_ports(&mut self, report: &mut RepairReport) -> Result<(), ApiError> {
        let range = self.config.node_ports;
        let key = self.ports.key.clone();
        for _ in 0..super::MAX_ATTEMPTS {
            let mut pass = RepairReport::default();
            let (snapshot, precondition) = self.read_range(&key)?;
            let mut stored = match &snapshot {
                Some(s) => PortAllocator::from_snapshot(s).map_err(ApiError::internal)?,
                None => PortAllocator::new(range),
            };
            let services = self.list()?;
            let mut rebuilt = PortAllocator::new(range);
            let mut leaks = self.port_leaks.clone();
            for svc in &services {
                for port in held_node_ports(svc) {
                    match rebuilt.allocate(port) {
                        Ok(()) => {
                            if !stored.release(port) {
                                event(
                                    &mut pass,
                                    Some(svc),
                                    "PortNotAllocated",
                                    format!("Port {port} is not allocated; repairing"),
                                );
                            }
                            leaks.remove(&port);
                        }
                        Err(AllocError::Allocated(_)) => event(
                            &mut pass,
                            Some(svc),
                            "PortAlreadyAllocated",
                            format!(
                                "Port {port} was assigned to multiple services; please recreate service"
                            ),
                        ),
                        Err(AllocError::NotInRange { .. }) => event(
                            &mut pass,
                            Some(svc),
                            "PortOutOfRange",
                            format!(
                                "Port {port} is not within the port range {range}; please recreate service"
                            ),
                        ),
                        Err(e) => {
                            event(
                                &mut pass,
                                Some(svc),
                                "PortRangeFull",
                                format!(
                                    "Port range {range} is full; you must widen the port range in order to create new services"
                                ),
                            );
                            return Err(ApiError::internal(format!("repairing {range}: {e}")));
                        }
                    }
                }
            }
            let leftover: Vec<u16> = stored.iter().collect();
            let (suspected, freed) = sweep_leaks(leftover.into_iter(), &mut leaks, |p| {
                let _ = rebuilt.allocate(p);
            });
            for p in &freed {
                event(
                    &mut pass,
                    None,
                    "PortLeaked",
                    format!("the node port {p} appears to have leaked: cleaning up"),
                );
            }
            let written = self
                .store
                .put(&key, &rebuilt.snapshot().to_json(), precondition)
                .map_err(ApiError::internal)?;
            if written.is_some() {
                self.ports.version = None;
                self.port_leaks = leaks;
                report.events.append(&mut pass.events);
                report.suspected_leaks += suspected;
                report.freed += freed.len();
                return Ok(());
            }
        }
        Err(ApiError::internal(format!(
            "repairing {range}: too many concurrent updates"
        )))
    }
}

#[cfg(test)]
pub(super) fn held_node_ports_for_tests(svc: &Service) -> Vec<u16> {
    held_node_ports(svc)
}
