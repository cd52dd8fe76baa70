//! Kubernetes Service machinery as pure data.
//!
//! `service-core` holds the API objects ([`model`]), their defaulting ([`defaults`]) and
//! validation ([`validation`]) with the API server's rules and messages, manifest loading
//! ([`manifest`]), the ClusterIP and NodePort allocators ([`alloc`]) and the Service
//! [`registry`] that uses them, the endpoints controller ([`controller`]) and the proxy [`snapshot`]: the
//! one contract between the control-plane side and every consumer (service environment
//! variables, cluster DNS, the service proxy backends).
//!
//! ```text
//! manifests ──manifest::load──► model::{Service, EndpointSlice, Pod, ...}
//!     │ defaults + validation
//!     ▼
//! registry (create/update/delete: alloc + Store with compare-and-swap)
//!     │
//! valid::ValidService ──controller──► EndpointSlices
//!     │
//!     ▼
//! snapshot::Snapshot ──► service-env, service-dns, service-proxy (render → apply)
//! ```
//!
//! # What this crate does not do
//! It does no IO: no files, sockets, threads, clocks or randomness of its own. Callers pass
//! text in, and time and random number generators as arguments. It does not talk to a
//! Kubernetes API server; feed it objects from `kubectl`, from `kube-rs` watchers (see the
//! `k8s-openapi` feature) or from your own store.
//!
//! # Crate features
//! - `k8s-openapi`: conversions between this crate's model and `k8s-openapi` types. The final
//!   binary must enable one `k8s-openapi` version feature; this crate never picks one.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

pub mod alloc;
pub mod cluster;
pub mod controller;
pub mod defaults;
pub mod manifest;
pub mod model;
#[cfg(feature = "k8s-openapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "k8s-openapi")))]
pub mod openapi;
pub mod random;
pub mod registry;
pub mod snapshot;
pub mod tracker;
pub mod valid;
pub mod validation;
