//! The IPVS backend (feature `ipvs`), pure parts so far: the objects, the plan a snapshot
//! asks for (kube-proxy's IPVS mode: virtual servers, real servers, bound addresses,
//! ipsets), and the IPVS generic-netlink encoding (byte for byte as `ipvsadm` sends it).
//! Applying the plan to a kernel is not built yet.

pub mod genl;
mod model;
mod plan;

pub use model::{
    FLAG_HASHED, FLAG_PERSISTENT, FLAG_SCHED1, FLAG_SCHED2, Forward, IpvsProtocol, RealServer,
    Scheduler, VirtualServer,
};
pub use plan::{DUMMY_DEVICE, IpSet, IpvsConfig, IpvsPlan};
