//! Service proxy backends: a [`service_core::snapshot::Snapshot`] in, kernel rules out.
//!
//! ```text
//! Snapshot ──► <backend>::Renderer::full / ::partial ──► RuleSet ──► applier (kernel)
//!                                                            └──► trace(packet) → verdict
//! ```
//!
//! Rendering is pure: a renderer turns a snapshot into a rule set (a typed model with a
//! `Display` impl in the kernel tool's own input format) and remembers what it rendered so
//! that the next render after a small change can be partial. The [`SyncEngine`] decides
//! between full and partial syncs from snapshot diffs. Appliers (feature `apply`) are thin
//! IO layers that feed rule sets to the kernel; the tracer answers where a packet goes by
//! evaluating the rendered rule model, without a kernel.
//!
//! # What this crate does not do
//! It does not watch a Kubernetes API server or read manifests (see `service-core`), and
//! rendering never touches the kernel: only the modules behind the `apply` feature do IO.
//!
//! # Crate features
//! - `iptables` (default): render kube-proxy's iptables layout as `iptables-restore` input.
//! - `nftables` (default): render kube-proxy's nftables layout as typed transactions, printed
//!   as `nft -f` scripts or encoded as nf_tables netlink batches.
//! - `ipvs` (implies `iptables`): kube-proxy's IPVS plan (virtual and real servers,
//!   addresses, ipsets, the fixed iptables rules) and the IPVS generic-netlink encoding
//!   (pure); with `apply`, [`ipvs::IpvsProxier`] applies it.
//! - `userspace`: the userspace L4 proxy (tokio, `splice(2)`), as Kubernetes v1.0's.
//! - `apply`: kernel appliers (`iptables-restore`/`ip6tables-restore` and `ipset` on stdin,
//!   never through a shell; nf_tables, IPVS, rtnetlink and conntrack over netlink).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use service_core as core;

mod config;
#[cfg(feature = "apply")]
mod netns;
#[cfg(any(feature = "apply", feature = "ipvs", feature = "nftables"))]
mod nlmsg;
mod port_name;
#[cfg(all(feature = "apply", feature = "ipvs"))]
mod rtnl;
mod sync;
pub mod trace;

#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub mod conntrack;
#[cfg(feature = "iptables")]
#[cfg_attr(docsrs, doc(cfg(feature = "iptables")))]
pub mod iptables;
#[cfg(feature = "ipvs")]
#[cfg_attr(docsrs, doc(cfg(feature = "ipvs")))]
pub mod ipvs;
#[cfg(feature = "nftables")]
#[cfg_attr(docsrs, doc(cfg(feature = "nftables")))]
pub mod nftables;
#[cfg(feature = "userspace")]
#[cfg_attr(docsrs, doc(cfg(feature = "userspace")))]
pub mod userspace;

pub use config::ProxyConfig;
pub use port_name::PortName;
pub use sync::{SyncEngine, SyncKind, SyncPlan};
