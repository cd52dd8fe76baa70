//! Transactions: ordered operations on our table, printed as an `nft -f` script or encoded
//! as one nf_tables netlink batch ([`super::wire`]).

use std::fmt;
use std::sync::Arc;

use super::model::{
    AffinitySet, Chain, Element, EndpointChain, Family, FixedSet, KeyShape, Name, TABLE,
};
use super::render::PortObjects;

/// A set or map to declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetDecl {
    /// One of the fixed sets and maps.
    Fixed(FixedSet),
    /// A per-endpoint affinity set.
    Affinity(AffinitySet),
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the table if it is missing.
    AddTable,
    /// Delete the table (created first if missing, so that this never fails).
    DeleteTable,
    /// Declare a set or map.
    AddSet(SetDecl),
    /// Delete a set.
    DeleteSet(Name),
    /// Declare a chain (its hook, for a base chain), without its rules.
    AddChain(Arc<Chain>),
    /// Append the chain's rules.
    AddRules(Arc<Chain>),
    /// Declare a service port's affinity sets, chains and endpoint chains, then append
    /// their rules (its set elements are separate operations). What a cold start sends.
    AddPort(Arc<PortObjects>),
    /// Declare an endpoint chain.
    AddEndpoint(EndpointChain),
    /// Append an endpoint chain's rules.
    AddEndpointRules(EndpointChain),
    /// Remove every rule of a chain.
    FlushChain(Name),
    /// Delete an empty chain.
    DeleteChain(Name),
    /// Add a set element.
    AddElement(Element),
    /// Delete a set element (its value is ignored).
    DeleteElement(Element),
}

/// Operations on one family's table, applied atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The table's family.
    pub family: Family,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new(family: Family) -> Self {
        Self {
            family,
            ops: Vec::new(),
        }
    }

    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of rules it adds.
    pub fn rules_added(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::AddRules(c) => c.rules.len(),
                Op::AddEndpointRules(e) => 2 + usize::from(e.affinity.is_some()),
                Op::AddPort(p) => {
                    p.chains.iter().map(|c| c.rules.len()).sum::<usize>()
                        + p.endpoints
                            .iter()
                            .map(|e| 2 + usize::from(e.affinity.is_some()))
                            .sum::<usize>()
                }
                _ => 0,
            })
            .sum()
    }
}

fn key_type(family: Family, shape: KeyShape) -> String {
    match shape {
        KeyShape::Addr => family.addr_type().to_owned(),
        KeyShape::ProtoPort => "inet_proto . inet_service".to_owned(),
        KeyShape::AddrProtoPort => format!("{} . inet_proto . inet_service", family.addr_type()),
        KeyShape::AddrPair => format!("{0} . {0}", family.addr_type()),
        KeyShape::IndexRange => "integer".to_owned(),
    }
}

/// The `nft -f` script.
impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = self.family.as_str();
        let t = TABLE;
        for op in &self.ops {
            if let Op::AddPort(p) = op {
                let expanded = Self {
                    family: self.family,
                    ops: p.expand(),
                };
                write!(f, "{expanded}")?;
                continue;
            }
            match op {
                Op::AddTable => writeln!(f, "add table {fam} {t}")?,
                Op::DeleteTable => {
                    writeln!(f, "add table {fam} {t}")?;
                    writeln!(f, "delete table {fam} {t}")?;
                }
                Op::AddSet(SetDecl::Fixed(s @ FixedSet::Endpoints(_))) => writeln!(
                    f,
                    "add map {fam} {t} {} {{ typeof numgen random mod 1 : {fam} daddr . th dport ; flags interval ; }}",
                    s.name()
                )?,
                Op::AddSet(SetDecl::Fixed(s)) => {
                    let kind = if s.is_map() { "map" } else { "set" };
                    let data = if s.is_map() { " : verdict" } else { "" };
                    writeln!(
                        f,
                        "add {kind} {fam} {t} {} {{ type {}{data} ; }}",
                        s.name(),
                        key_type(self.family, s.key()),
                    )?;
                }
                Op::AddSet(SetDecl::Affinity(s)) => writeln!(
                    f,
                    "add set {fam} {t} {} {{ type {} ; flags dynamic,timeout ; timeout {}s ; }}",
                    s.name,
                    self.family.addr_type(),
                    s.timeout
                )?,
                Op::DeleteSet(n) => writeln!(f, "delete set {fam} {t} {n}")?,
                Op::AddChain(c) => match &c.hook {
                    Some(h) => writeln!(
                        f,
                        "add chain {fam} {t} {} {{ type {} hook {} priority {} ; }}",
                        c.name,
                        if h.nat { "nat" } else { "filter" },
                        h.hook.as_str(),
                        h.priority
                    )?,
                    None => writeln!(f, "add chain {fam} {t} {}", c.name)?,
                },
                Op::AddRules(c) => {
                    for r in &c.rules {
                        writeln!(
                            f,
                            "add rule {fam} {t} {} {}",
                            c.name,
                            r.display(self.family)
                        )?;
                    }
                }
                Op::AddPort(_) => {}
                Op::AddEndpoint(e) => writeln!(f, "add chain {fam} {t} {}", e.name)?,
                Op::AddEndpointRules(e) => {
                    for r in &e.rules() {
                        writeln!(
                            f,
                            "add rule {fam} {t} {} {}",
                            e.name,
                            r.display(self.family)
                        )?;
                    }
                }
                Op::FlushChain(n) => writeln!(f, "flush chain {fam} {t} {n}")?,
                Op::DeleteChain(n) => writeln!(f, "delete chain {fam} {t} {n}")?,
                Op::AddElement(e) => match &e.data {
                    Some(v) => writeln!(
                        f,
                        "add element {fam} {t} {} {{ {} : {v} }}",
                        e.set.name(),
                        e.key
                    )?,
                    None => writeln!(f, "add element {fam} {t} {} {{ {} }}", e.set.name(), e.key)?,
                },
                Op::DeleteElement(e) => writeln!(
                    f,
                    "delete element {fam} {t} {} {{ {} }}",
                    e.set.name(),
                    e.key
                )?,
            }
        }
        Ok(())
    }
}
