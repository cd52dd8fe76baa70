//! Kubernetes cluster DNS, as the [DNS specification 1.1.0] defines it and CoreDNS's
//! `kubernetes` plugin serves it, from a [`Snapshot`](service_core::snapshot::Snapshot).
//!
//! ```text
//! Snapshot ──Zone::from_snapshot──► Zone ──view()──► ZoneView ──respond(request bytes)──► response bytes
//!    │  next Snapshot                 ▲                    └─ lookup(name, type) ─► Lookup
//!    └────────── Zone::update(old, new): only the changed Services' names
//! ```
//!
//! # Records
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of every cluster IP, or of every ready endpoint of a
//!   headless Service (none ready: NXDOMAIN); CNAME of an ExternalName Service.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV per named port (the Service name as
//!   target), or per ready endpoint and named port of a headless Service (the endpoint's
//!   name as target, its port), weight 100 / count, addresses in the additional section.
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: the endpoint's `hostname`, else its dashed
//!   address (`10-244-1-5`, `fd00--1`).
//! - PTR under `in-addr.arpa` / `ip6.arpa` for cluster IPs and ready endpoint addresses.
//! - `dns-version.<zone>` TXT `1.1.0`; SOA and NS at the apex; pod records
//!   (`10-244-1-5.<ns>.pod.<zone>`) if enabled ([`PodRecords`]).
//!
//! Negative answers are CoreDNS's: NXDOMAIN when the name does not exist, NODATA
//! (NOERROR, no answer) when it exists without that type, both with the zone's SOA in the
//! authority section. Names match case-insensitively and answers echo the question's case.
//!
//! # Purity
//! Everything outside the `server` feature is pure: no IO, threads or clocks. The wire
//! format is this crate's own small codec ([`wire`]), fuzzed and checked against an
//! independent decoder in the tests.
//!
//! [DNS specification 1.1.0]: https://github.com/kubernetes/dns/blob/master/docs/specification.md
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use service_core as core;

mod answer;
mod config;
mod record_type;
pub mod resolv;
pub mod wire;
mod zone;

#[cfg(feature = "server")]
pub mod server;

pub use answer::{Outcome, Transport};
pub use config::{DNS_SCHEMA_VERSION, DNS_VERSION_TTL, DnsConfig, PodRecords};
pub use record_type::{RecordType, UnknownRecordType};
pub use zone::{
    Authority, Lookup, Rdata, Record, Records, Zone, ZoneView, dashed_ip, reverse_name,
};
