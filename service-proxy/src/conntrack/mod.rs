//! Clearing stale conntrack entries after a sync, as kube-proxy does, so that UDP clients
//! such as DNS resolvers are not blackholed:
//!
//! - when a UDP service port gets its first endpoint, entries created while it had none
//!   (rejected or unreplied) are deleted, so the next packet is DNATed afresh;
//! - when a UDP endpoint goes away, entries DNATed to it are deleted.
//!
//! Every proxier takes a [`ConntrackCleaner`] the same way (`with_conntrack`); the default
//! is [`NoConntrack`]. Deciding what to clear ([`stale_filters`]) is pure; with the `apply`
//! feature, [`Conntrack`] clears entries over netlink (ctnetlink). A cleanup that fails is
//! not lost: its filters are kept and retried with the next sync's until the kernel takes
//! them.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::{ServicePort, ServicePortName, Snapshot};

#[cfg(feature = "apply")]
mod netlink;
#[cfg(feature = "apply")]
pub use netlink::{Conntrack, encode_delete, encode_dump};

/// The IP protocol number of a service protocol.
pub fn protocol_number(p: &Protocol) -> u8 {
    match p {
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
        _ => 6,
    }
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Tuple {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// IP protocol number.
    pub protocol: u8,
}

/// A conntrack entry: original and reply directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Entry {
    /// As the client sent it.
    pub orig: Tuple,
    /// As the server answers (after NAT: the real endpoint is the reply's source).
    pub reply: Tuple,
}

/// Which entries to delete. Every set field must match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Filter {
    /// IP protocol number.
    pub protocol: u8,
    /// The original destination address (a service IP).
    pub orig_dst: Option<IpAddr>,
    /// The original destination port (a service port or node port).
    pub orig_dport: Option<u16>,
    /// The reply source address (the endpoint the entry was DNATed to).
    pub reply_src: Option<IpAddr>,
    /// The reply source port (the endpoint port).
    pub reply_sport: Option<u16>,
}

impl Filter {
    /// Whether an entry matches.
    pub fn matches(&self, e: &Entry) -> bool {
        e.orig.protocol == self.protocol
            && self.orig_dst.is_none_or(|ip| e.orig.dst.ip() == ip)
            && self.orig_dport.is_none_or(|p| e.orig.dst.port() == p)
            && self.reply_src.is_none_or(|ip| e.reply.src.ip() == ip)
            && self.reply_sport.is_none_or(|p| e.reply.src.port() == p)
    }
}

/// Removes conntrack entries; injected into every proxier with `with_conntrack`.
pub trait ConntrackCleaner: Send {
    /// Deletes the entries of `family` that match any filter; returns how many.
    ///
    /// # Errors
    /// Talking to the kernel failed (the proxier retries the filters with its next sync).
    fn clear(&mut self, family: &IpFamily, filters: &[Filter]) -> io::Result<usize>;
}

/// A cleaner that does nothing (when conntrack is not to be touched).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConntrack;

impl ConntrackCleaner for NoConntrack {
    fn clear(&mut self, _: &IpFamily, _: &[Filter]) -> io::Result<usize> {
        Ok(0)
    }
}

/// A proxier's cleaner and the filters it still owes the kernel.
#[cfg_attr(
    not(all(feature = "apply", any(feature = "iptables", feature = "nftables"))),
    allow(dead_code)
)]
pub(crate) struct Cleanup {
    cleaner: Box<dyn ConntrackCleaner>,
    pending: BTreeSet<Filter>,
}

impl std::fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanup")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Default for Cleanup {
    fn default() -> Self {
        Self::new(NoConntrack)
    }
}

/// What one cleanup did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "apply", any(feature = "iptables", feature = "nftables"))),
    allow(dead_code)
)]
pub(crate) struct CleanupOutcome {
    pub(crate) deleted: usize,
    /// Filters kept for the next sync, and why.
    pub(crate) failed: Option<(usize, String)>,
}

#[cfg_attr(
    not(all(feature = "apply", any(feature = "iptables", feature = "nftables"))),
    allow(dead_code)
)]
impl Cleanup {
    pub(crate) fn new(cleaner: impl ConntrackCleaner + 'static) -> Self {
        Self {
            cleaner: Box::new(cleaner),
            pending: BTreeSet::new(),
        }
    }

    /// Clears `filters` and whatever an earlier sync could not; on failure keeps them all.
    pub(crate) fn run(&mut self, family: &IpFamily, filters: Vec<Filter>) -> CleanupOutcome {
        self.pending.extend(filters);
        if self.pending.is_empty() {
            return CleanupOutcome::default();
        }
        let all: Vec<Filter> = self.pending.iter().copied().collect();
        match self.cleaner.clear(family, &all) {
            Ok(deleted) => {
                self.pending.clear();
                CleanupOutcome {
                    deleted,
                    failed: None,
                }
            }
            Err(e) => CleanupOutcome {
                deleted: 0,
                failed: Some((all.len(), e.to_string())),
            },
        }
    }
}

/// The entries to clear after moving from `old` to `new` for one family (kube-proxy's
/// UDP rules): for every UDP service port that gained its first endpoint, entries to its
/// service IPs and node port; for every UDP endpoint that went away, entries DNATed to it.
///
/// With `changed` (the service ports that differ between the two snapshots), only those are
/// looked at; without, every port is.
pub fn stale_filters(
    old: Option<&Snapshot>,
    new: &Snapshot,
    family: &IpFamily,
    changed: Option<&BTreeSet<ServicePortName>>,
) -> Vec<Filter> {
    let mut out = BTreeSet::new();
    let reachable = |sp: &ServicePort| -> BTreeSet<SocketAddr> {
        sp.family(family)
            .map(|p| p.reachable_endpoints().map(|e| e.addr()).collect())
            .unwrap_or_default()
    };
    let mut check = |name: &ServicePortName| {
        if name.protocol != Protocol::Udp {
            return;
        }
        let prev = old.and_then(|o| o.ports.get(name));
        let next = new.ports.get(name);
        // A UDP service port that gained its first endpoint.
        if let Some(sp) = next
            && let Some(plan) = sp.family(family)
        {
            let had = prev
                .and_then(|p| p.family(family))
                .is_some_and(|p| p.selection.has_any);
            if plan.selection.has_any && !had {
                let ips = std::iter::once(plan.cluster_ip)
                    .chain(plan.external_ips.iter().copied())
                    .chain(plan.load_balancer_ips.iter().copied());
                for ip in ips {
                    out.insert(Filter {
                        protocol: 17,
                        orig_dst: Some(ip),
                        orig_dport: Some(sp.port),
                        ..Filter::default()
                    });
                }
                if let Some(np) = sp.node_port {
                    out.insert(Filter {
                        protocol: 17,
                        orig_dport: Some(np),
                        ..Filter::default()
                    });
                }
            }
        }
        // Endpoints gone from it (or with the port itself).
        if let Some(sp) = prev {
            let after = next.map(|n| reachable(n)).unwrap_or_default();
            for ep in reachable(sp).difference(&after) {
                out.insert(Filter {
                    protocol: 17,
                    reply_src: Some(ep.ip()),
                    reply_sport: Some(ep.port()),
                    ..Filter::default()
                });
            }
        }
    };
    match changed {
        Some(names) => names.iter().for_each(&mut check),
        None => {
            new.ports.keys().for_each(&mut check);
            if let Some(old) = old {
                old.ports
                    .keys()
                    .filter(|n| !new.ports.contains_key(*n))
                    .for_each(&mut check);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(usize);

    impl ConntrackCleaner for Failing {
        fn clear(&mut self, _: &IpFamily, filters: &[Filter]) -> io::Result<usize> {
            if self.0 > 0 {
                self.0 -= 1;
                return Err(io::Error::other("netlink: no buffer space"));
            }
            Ok(filters.len())
        }
    }

    fn filter(port: u16) -> Filter {
        Filter {
            protocol: 17,
            orig_dport: Some(port),
            ..Filter::default()
        }
    }

    #[test]
    fn failed_cleanups_are_retried_with_the_next() {
        let mut c = Cleanup::new(Failing(1));
        let out = c.run(&IpFamily::Ipv4, vec![filter(53)]);
        assert_eq!(out.failed.as_ref().map(|f| f.0), Some(1));
        // The next sync's filters and the owed one go together.
        let out = c.run(&IpFamily::Ipv4, vec![filter(54)]);
        assert_eq!(out.deleted, 2, "{out:?}");
        assert!(out.failed.is_none());
        assert_eq!(
            c.run(&IpFamily::Ipv4, Vec::new()),
            CleanupOutcome::default()
        );
    }
}
