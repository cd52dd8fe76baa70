//! Service proxy backends and the engine that drives them: cluster state in, kernel rules
//! out.
//!
//! ```text
//! events ──► ChangeTracker ──checkout──► (Snapshot, changed service ports)
//!                                              │
//! SyncScheduler (when: min-sync-period, ──────►│ SyncRequest
//!   sync-period, backoff; sans-IO)             ▼
//!                     Proxier::sync ── iptables::IptablesProxier ─► iptables-restore
//!                     (one trait,   ── nftables::NftProxier ──────► nf_tables netlink
//!                      every        ── ipvs::IpvsProxier ─────────► IPVS genl, ipset
//!                      backend)     ── userspace::UserspaceProxier ► portals + REDIRECT
//!                                   ── dry_run::DryRun ───────────► the text, no kernel
//!                          │
//!                          ▼
//!          SyncReport { kind, duration, changes, BackendReport } or SyncError { kind }
//! ```
//!
//! - [`Proxier`] is the one interface of every backend: sync a snapshot (with the service
//!   ports that changed), force the next sync full, clean up. One [`SyncReport`], one
//!   [`SyncError`] whose [`SyncErrorKind`] says what to do (fall back, resync, retry).
//! - [`ChangeTracker`] (from `service-core`) applies Service, EndpointSlice and Node
//!   events to the snapshot and hands out exactly the service ports that changed.
//! - [`SyncScheduler`] decides when to sync, kube-proxy's way, from the time it is given.
//! - [`Engine`] ties the three together for one or two IP families: what the `proxy`
//!   daemon runs, and what an embedder runs.
//!
//! Rendering is pure: a renderer turns a snapshot into a rule set (a typed model with a
//! `Display` impl in the kernel tool's own input format) and remembers what it rendered so
//! that the next render after a small change can be partial. Which endpoints each kind of
//! traffic reaches is derived once, on the snapshot's service port
//! ([`service_core::snapshot::Traffic`]), and read by every backend. Appliers (feature
//! `apply`) are thin IO layers that feed rule sets to the kernel; the tracers answer where
//! a packet goes by evaluating the rendered rule model, without a kernel.
//!
//! ```no_run
//! use std::time::{Instant, SystemTime};
//! use service_core::model::IpFamily;
//! use service_core::snapshot::NodeInfo;
//! use service_proxy::nftables::apply::{NftProxier, NftSocket};
//! use service_proxy::nftables::{NftablesConfig, Renderer};
//! use service_proxy::{ChangeTracker, Engine, ProxyConfig, SchedulerConfig};
//!
//! let renderer = Renderer::new(NftablesConfig::new(ProxyConfig::default()), false);
//! let proxier = NftProxier::new(renderer, NftSocket::new()?);
//! let node = NodeInfo::new("node-a", vec!["192.168.0.2".parse()?]);
//! let mut engine =
//!     Engine::new(ChangeTracker::new(node), SchedulerConfig::default(), vec![proxier], Instant::now());
//! loop {
//!     // engine.apply(event, when, Instant::now()) for each Service/EndpointSlice event...
//!     if let Some(sync) = engine.poll(Instant::now(), SystemTime::now()) {
//!         for (family, result) in &sync.results {
//!             println!("{family:?}: {result:?}");
//!         }
//!     }
//!     // ... then sleep until engine.poll_timeout() or the next event.
//! #   break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
pub mod dry_run;
pub mod engine;
pub mod health;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "apply")]
mod netns;
#[cfg(any(feature = "apply", feature = "ipvs", feature = "nftables"))]
mod nlmsg;
#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub mod node_setup;
mod port_name;
pub mod proxier;
#[cfg(all(feature = "apply", feature = "ipvs"))]
mod rtnl;
pub mod scheduler;
#[cfg(feature = "serve")]
#[cfg_attr(docsrs, doc(cfg(feature = "serve")))]
pub mod serve;
mod sync;
pub mod trace;

pub mod conntrack;
#[cfg(feature = "iptables")]
#[cfg_attr(docsrs, doc(cfg(feature = "iptables")))]
pub mod iptables;
#[cfg(feature = "ipvs")]
#[cfg_attr(docsrs, doc(cfg(feature = "ipvs")))]
pub mod ipvs;
#[cfg(feature = "iptables")]
#[cfg_attr(docsrs, doc(cfg(feature = "iptables")))]
pub mod nfacct;
#[cfg(feature = "nftables")]
#[cfg_attr(docsrs, doc(cfg(feature = "nftables")))]
pub mod nftables;
#[cfg(feature = "userspace")]
#[cfg_attr(docsrs, doc(cfg(feature = "userspace")))]
pub mod userspace;

pub use config::{DetectLocal, LocalTraffic, MAX_INTERFACE_NAME, NodeConfig, ProxyConfig};
pub use engine::{Engine, EngineSync};
pub use port_name::PortName;
pub use proxier::{
    BackendReport, Proxier, ProxyMode, SyncError, SyncErrorKind, SyncReport, SyncRequest,
};
pub use scheduler::{SchedulerConfig, SyncDue, SyncScheduler};
pub use service_core::tracker::{ChangeTracker, Changes, Event, Source, TimedEvent};
pub use sync::SyncKind;
