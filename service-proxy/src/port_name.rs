//! [`PortName`]: how renderers key what they remember per service port.

use std::sync::Arc;

use service_core::snapshot::{ServicePort, ServicePortName};

/// The snapshot's own service port, compared, ordered and looked up by name, so that
/// keeping it as a key costs a reference count rather than a copy of its name.
#[derive(Clone, Debug)]
pub struct PortName(Arc<ServicePort>);

impl PortName {
    /// Keys `port` by its name.
    pub fn new(port: Arc<ServicePort>) -> Self {
        Self(port)
    }

    /// The service port's name.
    pub fn name(&self) -> &ServicePortName {
        &self.0.name
    }

    /// The service port.
    pub fn port(&self) -> &Arc<ServicePort> {
        &self.0
    }
}

impl PartialEq for PortName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for PortName {}

impl PartialOrd for PortName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PortName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

impl std::borrow::Borrow<ServicePortName> for PortName {
    fn borrow(&self) -> &ServicePortName {
        &self.0.name
    }
}
