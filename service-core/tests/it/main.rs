//! Integration tests of service-core: real-world manifests and property tests.

mod alloc;
mod kubectl;
mod properties;
