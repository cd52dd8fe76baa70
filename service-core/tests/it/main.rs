//! Integration tests of service-core: real-world manifests and property tests.

mod kubectl;
mod properties;
