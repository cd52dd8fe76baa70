//! Backend-neutral packet tracing: where a new connection goes, decided by evaluating a
//! backend's rendered rule model (no kernel involved).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use service_core::model::Protocol;

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The interface it came in on; empty for a packet the node sends itself (or when
    /// unknown). Only interface-based local-traffic detection looks at it.
    pub in_interface: String,
}

impl Packet {
    /// A packet from `src` to `dst:dport`.
    pub fn new(src: IpAddr, dst: IpAddr, dport: u16, protocol: Protocol) -> Self {
        Self {
            src,
            dst,
            dport,
            protocol,
            in_interface: String::new(),
        }
    }

    /// The same packet, arriving on interface `name`.
    #[must_use]
    pub fn on_interface(mut self, name: &str) -> Self {
        name.clone_into(&mut self.in_interface);
        self
    }
}

/// One possible fate of a packet: a DNAT destination (or none) and whether it leaves
/// masqueraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Destination {
    /// The endpoint it is DNATed to.
    pub endpoint: SocketAddr,
    /// Whether its source is masqueraded on the way.
    pub masquerade: bool,
}

/// Where a packet goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// DNATed to one of these endpoints (random choice among them), each with its
    /// masquerade decision.
    Endpoints(Vec<Destination>),
    /// Accepted for local delivery by a rule (health-check node ports).
    Accept,
    /// Rejected (ICMP unreachable / TCP reset): "connection refused".
    Reject,
    /// Dropped silently: "connection timed out".
    Drop,
    /// Not handled by the proxy: routed as the kernel would without our rules.
    NotHandled,
}

impl Verdict {
    /// What a tracer concludes from every branch a packet may take: the endpoints some
    /// branches DNAT it to, else the first other outcome (not handled when none).
    pub fn from_branches(mut dests: Vec<Destination>, other: Option<Self>) -> Self {
        if dests.is_empty() {
            return other.unwrap_or(Self::NotHandled);
        }
        dests.sort();
        dests.dedup();
        Self::Endpoints(dests)
    }

    /// The endpoints, if DNATed.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        match self {
            Self::Endpoints(d) => d.iter().map(|d| d.endpoint).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether every possible destination is masqueraded (`false` when not DNATed).
    pub fn masquerade(&self) -> bool {
        matches!(self, Self::Endpoints(d) if !d.is_empty() && d.iter().all(|d| d.masquerade))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoints(d) => {
                for (i, dest) in d.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", dest.endpoint)?;
                    if dest.masquerade {
                        f.write_str(" (masquerade)")?;
                    }
                }
                Ok(())
            }
            Self::Accept => f.write_str("ACCEPT"),
            Self::Reject => f.write_str("REJECT"),
            Self::Drop => f.write_str("DROP"),
            Self::NotHandled => f.write_str("not handled"),
        }
    }
}

/// Why a packet could not be traced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// Nothing has been synced yet: there are no rules to trace.
    #[error("nothing to trace: no sync has run yet")]
    NotSynced,
    /// The rule set is a partial one (the changed service ports only): its verdict for
    /// other Services would be wrong. Trace the whole state instead (a proxier's or dry
    /// run's `trace`, or a full render).
    #[error("a partial rule set cannot be traced: it holds only the service ports that changed")]
    Partial,
    /// The rule text does not parse (never for rule sets this crate renders).
    #[error("rule does not parse: {0}")]
    Parse(String),
}
