//! The nftables backend: kube-proxy's nftables layout (one `kube-proxy` table per family,
//! verdict maps for service addresses and node ports, `numgen` endpoint selection, timed
//! affinity sets), kept in memory and updated incrementally.
//!
//! - [`Renderer::render`] renders a [`Snapshot`](service_core::snapshot::Snapshot) into a
//!   [`Ruleset`]; [`Ruleset::create`] turns it into bounded [`Transaction`]s that build the
//!   table from nothing.
//! - [`Renderer::update`] re-renders changed service ports and returns only the
//!   operations that bring the kernel along: map element adds and deletes, rewritten
//!   chains, new and stale chains.
//! - A [`Transaction`] prints as an `nft -f` script; [`wire`] encodes it as an nf_tables
//!   netlink batch, which [`apply`] (feature `apply`) sends without the `nft` program.
//! - [`Tracer`] answers where a packet goes by evaluating the model.
//! - [`MemoryTable`] is an nf_tables table in memory, as strict as the kernel, for tests
//!   and for running an [`NftProxier`] without root.
//!
//! # Departures from kube-proxy's layout
//! Same packet behaviour, fewer kernel features: a firewall chain holds one
//! `ip saddr RANGE return` rule per source range and a final `drop` (kube-proxy uses one
//! rule with an anonymous interval set), and set elements carry no comments.

mod memory;
mod model;
mod names;
mod render;
mod state;
mod trace;
mod transaction;
pub mod wire;

#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub mod apply;

#[cfg(feature = "apply")]
pub use apply::NftProxier;
pub use memory::{MemoryChain, MemoryError, MemorySet, MemoryTable};
pub use model::{
    AffinitySet, BaseHook, Chain, Data, Dir, ENDPOINT_SHARDS, ENDPOINT_SLOTS, Element,
    EndpointChain, Family, FixedSet, Hook, Key, KeyShape, L4, MARK_FOR_MASQUERADE, Name, Rule,
    Stmt, TABLE, Verdict, endpoint_shard,
};
pub use names::{NAME_MAX, endpoint_base, hash_and_truncate, service_base, service_base_name};
pub use render::{
    Block, NftablesConfig, PortName, PortObjects, Renderer, Ruleset, StaleChain, Update,
    endpoint_range,
};
pub use state::{ChainState, Repair, TableState, rule_mark};
pub use trace::Tracer;
pub use transaction::{Op, SetDecl, Transaction};
pub use wire::ElemData;

/// The nftables backend's part of a [`crate::SyncReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NftablesReport {
    /// Transactions sent (several only when a table is built from nothing).
    pub transactions: usize,
    /// nf_tables netlink messages sent.
    pub messages: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Stale chains deleted by this sync.
    pub chains_deleted: usize,
}
