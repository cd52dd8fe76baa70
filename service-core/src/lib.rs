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
//! ```
//! use service_core::cluster::Cluster;
//! use service_core::model::{Container, Pod, Service, ServicePort};
//! use service_core::random::SeededRandom;
//! use service_core::registry::{MemoryStore, Registry, RegistryConfig};
//! use service_core::snapshot::{NodeInfo, Snapshot};
//! use service_core::controller::{self, ControllerConfig};
//!
//! // The API server's part: allocate a cluster IP.
//! let config = RegistryConfig::new(&["10.96.0.0/16".parse()?], "30000-32767".parse()?)?;
//! let mut registry = Registry::new(config, MemoryStore::new(), SeededRandom::new(1))?;
//! let web = registry.create(
//!     Service::cluster_ip("shop", "web")
//!         .with_selector([("app", "web")])
//!         .with_port(ServicePort::tcp("http", 80).with_target_port("http")),
//! )?;
//! // The controller's part: EndpointSlices from the Pods the Service selects.
//! let pod = Pod::new("shop", "web-1")
//!     .with_labels([("app", "web")])
//!     .on_node("node-a")
//!     .with_container(Container::new("app").with_port("http", 8080))
//!     .with_ip("10.244.1.5")
//!     .with_ready(true);
//! let slices = controller::endpoint_slices(&web, &[pod], None, ControllerConfig::default());
//! // What node-a's proxy, DNS and env vars read.
//! let node = NodeInfo::new("node-a", vec!["192.168.0.2".parse()?]);
//! let snapshot = Snapshot::build(node, &[web], &slices, &[])?;
//! let port = snapshot.service_ports().next().unwrap();
//! assert_eq!(port.ipv4.as_ref().unwrap().endpoints[0].addr().to_string(), "10.244.1.5:8080");
//! # let _ = Cluster::default();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What this crate does not do
//! It does no IO: no files, sockets, threads, clocks or randomness of its own. Callers pass
//! text in, and time and random number generators as arguments. It does not talk to a
//! Kubernetes API server; feed it objects from `kubectl`, from `kube-rs` watchers (see the
//! `k8s-openapi` feature) or from your own store.
//!
//! `ipnet` is re-exported: CIDRs in this API are its `IpNet`.
//!
//! # Crate features
//! - `k8s-openapi`: conversions between this crate's model and `k8s-openapi` types. The final
//!   binary must enable one `k8s-openapi` version feature; this crate never picks one.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

pub use ipnet;

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
pub mod time;
pub mod tracker;
pub mod valid;
pub mod validation;
