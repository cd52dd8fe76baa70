//! The IPVS backend (feature `ipvs`): the objects, the plan a snapshot asks for
//! (kube-proxy's IPVS mode: virtual servers, real servers, bound addresses, ipsets, the
//! fixed iptables rules), the changes that bring a kernel's table to it (with graceful
//! termination of TCP real servers), and the IPVS generic-netlink encoding (byte for byte
//! as `ipvsadm` sends it) — all pure. With `apply`, [`IpvsProxier`] runs it on a kernel.

mod diff;
pub mod genl;
pub mod ipset;
mod model;
mod plan;
#[cfg(feature = "apply")]
mod proxier;
pub mod rules;
#[cfg(feature = "apply")]
mod socket;
mod trace;

pub use diff::{
    IpvsChange, KernelDest, KernelState, ServiceKey, applied, diff, draining, record, to_refresh,
};
pub use model::{
    FLAG_HASHED, FLAG_PERSISTENT, FLAG_SCHED1, FLAG_SCHED2, Forward, IpvsProtocol, RealServer,
    Scheduler, VirtualServer,
};
pub use plan::{DUMMY_DEVICE, IpSet, IpvsConfig, IpvsPlan};
#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub use proxier::{IpvsProxier, SYSCTLS};
pub use rules::ipvs_text;
#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub use socket::{IpvsError, IpvsSocket};

/// The IPVS backend's part of a [`crate::SyncReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpvsReport {
    /// Virtual servers in the plan.
    pub virtual_servers: usize,
    /// IPVS changes sent (virtual and real servers added, updated, deleted).
    pub changes: usize,
    /// Removed TCP real servers still draining (weight 0, connections left).
    pub draining: usize,
    /// Addresses bound to the dummy interface.
    pub bound: usize,
    /// Addresses removed from it.
    pub unbound: usize,
    /// Whether the ipsets and every virtual server's real servers were read (a full sync);
    /// otherwise only the real servers of virtual servers losing some were.
    pub read_all: bool,
}
