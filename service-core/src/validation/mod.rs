//! Validation with the API server's rules.
//!
//! Each validator returns every problem it finds as a [`FieldError`] with the field path,
//! the kind of problem and the API server's own message, collected in a
//! [`ValidationError`] that displays like the API server's 422 response.

mod endpoints;
mod field;
mod meta;
pub mod names;
mod networking;
mod pod;
mod service;

pub use endpoints::{
    endpoint_slice_errors, endpoints_errors, validate_endpoint_slice, validate_endpoints,
};
pub use field::{BadValue, ErrorKind, FieldError, Path, ValidationError};
pub use networking::{
    ip_address_errors, service_cidr_errors, validate_ip_address, validate_service_cidr,
};
pub use pod::{node_errors, pod_errors, validate_node, validate_pod};
pub(crate) use service::cluster_ips_related;
pub use service::{service_errors, validate_service, validate_service_update};

#[cfg(test)]
mod tests;
