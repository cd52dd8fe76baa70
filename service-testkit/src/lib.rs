//! PRIVATE test support for this workspace: fixtures that turn YAML into snapshots, and
//! (Linux, root) network namespaces with veth links for kernel end-to-end tests, and
//! User-Mode Linux for the tests that need a kernel with IPVS; a real etcd (plain or TLS) and
//! a throw-away certificate authority.

pub mod etcd;
pub mod fake;
pub mod fault_proxy;
pub mod fixtures;
pub mod netns;
pub mod pki;
pub mod uml;

pub use fake::FakeRunner;
