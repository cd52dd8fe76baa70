//! An nf_tables table in memory, as strict as the kernel: [`MemoryTable`]. Pure; the
//! proxier drives it through the [`Applier`](super::apply::Applier) trait (feature `apply`)
//! exactly as it drives the netlink socket, so tests and embedders can run a real
//! [`NftProxier`](super::NftProxier) without root — and break it on purpose: reject a
//! transaction, delete a rule, flush a chain, drop the table.
//!
//! What it enforces, as the kernel does when a transaction commits (and otherwise refuses
//! the whole transaction, changing nothing):
//! - objects are added to a table that exists, elements to declared sets, rules to
//!   declared chains; a chain cannot be declared again with another hook;
//! - an element whose key holds another value is refused; deleting a missing element,
//!   chain or set is refused;
//! - a chain is deleted only when it is empty and nothing jumps to it (rules or verdict
//!   map elements); a set only when no rule uses it;
//! - at commit, every jump, goto, verdict-map element and set reference resolves.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Data, Element, Family, FixedSet, Key, Rule, Stmt, Verdict};
use super::state::{ChainState, TableState, rule_mark};
use super::transaction::{Op, SetDecl, Transaction};
use super::wire;

/// A chain of a [`MemoryTable`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryChain {
    /// Hook number and priority, for a base chain.
    pub hook: Option<(u32, i32)>,
    /// Its rules; `None` stands for a rule someone else added (it carries no mark of ours).
    pub rules: Vec<Option<Rule>>,
}

/// A set or map of a [`MemoryTable`]: key to data (`None` for a plain set).
pub type MemorySet = BTreeMap<Key, Option<Data>>;

/// One family's `kube-proxy` table, in memory, as strict as the kernel: a transaction that
/// adds to a missing table, set or chain, re-declares a chain with another hook, adds an
/// element whose key holds another value, deletes something missing, deletes a chain that
/// is not empty or still referenced (or a set still used), or leaves a jump, goto, verdict
/// or set reference unresolved is refused whole, changing nothing. Drive it through the
/// proxier's applier trait (feature `apply`) to run a real `NftProxier` without root, and
/// tamper with it to test repairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryTable {
    family: Family,
    exists: bool,
    /// Chains by name.
    pub chains: BTreeMap<String, MemoryChain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, MemorySet>,
    /// Names of the affinity sets (their elements are runtime state, never compared).
    affinity: BTreeSet<String>,
}

/// Why a [`MemoryTable`] refused a transaction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MemoryError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, MemoryError> {
    Err(MemoryError(m.into()))
}

fn targets(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for s in &rule.stmts {
        match s {
            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => out.push(c.to_string()),
            Stmt::NumgenVmap(t) => out.extend(t.iter().map(|c| c.to_string())),
            _ => {}
        }
    }
    out
}

fn sets_used(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for s in &rule.stmts {
        match s {
            Stmt::AddrInSet { set, .. } | Stmt::UpdateSaddr(set) => out.push(set.to_string()),
            Stmt::VmapAddrProtoPort(m) | Stmt::VmapProtoPort(m) | Stmt::PairInSet(m) => {
                out.push(m.name().into_owned());
            }
            Stmt::DnatMap { shard, .. } => {
                out.push(FixedSet::Endpoints(*shard).name().into_owned());
            }
            _ => {}
        }
    }
    out
}

fn verdict_target(data: &Option<Data>) -> Option<&str> {
    match data {
        Some(Data::Verdict(Verdict::Goto(c) | Verdict::Jump(c))) => Some(c),
        _ => None,
    }
}

impl MemoryTable {
    /// A kernel without our table.
    pub fn new(family: Family) -> Self {
        Self {
            family,
            exists: false,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            affinity: BTreeSet::new(),
        }
    }

    /// The table's family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Deletes the table and everything in it (someone's `nft delete table`).
    pub fn delete_table(&mut self) {
        *self = Self::new(self.family);
    }

    /// Applies a transaction: all of it, or nothing and the reason.
    ///
    /// # Errors
    /// The kernel would refuse it (see [`MemoryTable`] for what it checks).
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), MemoryError> {
        if tx.family != self.family {
            return err(format!(
                "a transaction for family {} sent to table {}",
                tx.family.as_str(),
                self.family.as_str()
            ));
        }
        let mut t = self.clone();
        for op in &tx.ops {
            t.apply_op(op)?;
        }
        t.check_references()?;
        *self = t;
        Ok(())
    }

    fn need_table(&self) -> Result<(), MemoryError> {
        if self.exists {
            Ok(())
        } else {
            err("no such table")
        }
    }

    fn declare_chain(&mut self, name: &str, hook: Option<(u32, i32)>) -> Result<(), MemoryError> {
        self.need_table()?;
        match self.chains.get(name) {
            Some(c) if c.hook != hook => err(format!("chain {name} exists with another hook")),
            Some(_) => Ok(()),
            None => {
                self.chains.insert(
                    name.to_owned(),
                    MemoryChain {
                        hook,
                        rules: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    fn append(
        &mut self,
        name: &str,
        rules: impl IntoIterator<Item = Rule>,
    ) -> Result<(), MemoryError> {
        self.need_table()?;
        match self.chains.get_mut(name) {
            Some(c) => {
                c.rules.extend(rules.into_iter().map(Some));
                Ok(())
            }
            None => err(format!("rules for missing chain {name}")),
        }
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), MemoryError> {
        match op {
            Op::AddPort(p) => {
                for op in p.expand() {
                    self.apply_op(&op)?;
                }
            }
            Op::AddTable => self.exists = true,
            Op::DeleteTable => self.delete_table(),
            Op::AddSet(decl) => {
                self.need_table()?;
                let name = match decl {
                    SetDecl::Fixed(s) => s.name().into_owned(),
                    SetDecl::Affinity(s) => {
                        self.affinity.insert(s.name.to_string());
                        s.name.to_string()
                    }
                };
                self.sets.entry(name).or_default();
            }
            Op::DeleteSet(name) => {
                self.need_table()?;
                let used = self
                    .chains
                    .values()
                    .flat_map(|c| c.rules.iter().flatten())
                    .any(|r| sets_used(r).iter().any(|s| s == &**name));
                if used {
                    return err(format!("delete of set {name} in use"));
                }
                if self.sets.remove(&**name).is_none() {
                    return err(format!("delete of missing set {name}"));
                }
                self.affinity.remove(&**name);
            }
            Op::AddChain(c) => {
                self.declare_chain(&c.name, c.hook.map(|h| (h.hook.number(), h.priority)))?;
            }
            Op::AddEndpoint(e) => self.declare_chain(&e.name, None)?,
            Op::AddRules(c) => self.append(&c.name, c.rules.iter().cloned())?,
            Op::AddEndpointRules(e) => self.append(&e.name, e.rules())?,
            Op::FlushChain(name) => {
                self.need_table()?;
                match self.chains.get_mut(&**name) {
                    Some(c) => c.rules.clear(),
                    None => return err(format!("flush of missing chain {name}")),
                }
            }
            Op::DeleteChain(name) => {
                self.need_table()?;
                let Some(c) = self.chains.get(&**name) else {
                    return err(format!("delete of missing chain {name}"));
                };
                if !c.rules.is_empty() {
                    return err(format!("delete of non-empty chain {name}"));
                }
                let by_rule = self
                    .chains
                    .values()
                    .flat_map(|c| c.rules.iter().flatten())
                    .any(|r| targets(r).iter().any(|t| t == &**name));
                let by_element = self
                    .sets
                    .values()
                    .flat_map(|s| s.values())
                    .any(|d| verdict_target(d) == Some(&**name));
                if by_rule || by_element {
                    return err(format!("delete of referenced chain {name}"));
                }
                self.chains.remove(&**name);
            }
            Op::AddElement(Element { set, key, data }) => {
                self.need_table()?;
                let name = set.name();
                let Some(s) = self.sets.get_mut(&*name) else {
                    return err(format!("element for missing set {name}"));
                };
                match s.get(key) {
                    Some(d) if d != data => {
                        return err(format!("{name} {key}: exists with another value"));
                    }
                    _ => {
                        s.insert(*key, data.clone());
                    }
                }
            }
            Op::DeleteElement(Element { set, key, .. }) => {
                self.need_table()?;
                let name = set.name();
                let Some(s) = self.sets.get_mut(&*name) else {
                    return err(format!("element of missing set {name}"));
                };
                if s.remove(key).is_none() {
                    return err(format!("delete of missing element {name} {key}"));
                }
            }
        }
        Ok(())
    }

    fn check_references(&self) -> Result<(), MemoryError> {
        for (c, chain) in &self.chains {
            for r in chain.rules.iter().flatten() {
                for target in targets(r) {
                    if !self.chains.contains_key(&target) {
                        return err(format!("{c}: jump to missing chain {target}"));
                    }
                }
                for set in sets_used(r) {
                    if !self.sets.contains_key(&set) {
                        return err(format!("{c}: missing set {set}"));
                    }
                }
            }
        }
        for (name, s) in &self.sets {
            for d in s.values() {
                if let Some(c) = verdict_target(d)
                    && !self.chains.contains_key(c)
                {
                    return err(format!("{name}: element to missing chain {c}"));
                }
            }
        }
        Ok(())
    }

    /// The table as a reader of the kernel sees it (what
    /// [`NftSocket::read_state`](super::apply::NftSocket::read_state) returns), or `None`
    /// without a table.
    pub fn state(&self) -> Option<TableState> {
        if !self.exists {
            return None;
        }
        let mut state = TableState::default();
        for (name, c) in &self.chains {
            state.chains.insert(
                name.clone(),
                ChainState {
                    hook: c.hook,
                    rules: c
                        .rules
                        .iter()
                        .map(|r| r.as_ref().map(|r| rule_mark(self.family, r)))
                        .collect(),
                },
            );
        }
        for (name, s) in &self.sets {
            let elements = if self.affinity.contains(name) {
                BTreeMap::new()
            } else {
                s.iter()
                    .map(|(k, d)| (wire::key_bytes(k), super::state::data_of(d.as_ref())))
                    .collect()
            };
            state.sets.insert(name.clone(), elements);
        }
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::{Chain, Name};
    use std::sync::Arc;

    fn tx(ops: Vec<Op>) -> Transaction {
        Transaction {
            family: Family::Ip,
            ops,
        }
    }

    #[test]
    fn a_refused_transaction_changes_nothing() {
        let mut t = MemoryTable::new(Family::Ip);
        let chain = Arc::new(Chain::new("a"));
        t.apply(&tx(vec![Op::AddTable, Op::AddChain(chain)]))
            .unwrap();
        let before = t.clone();
        let e = t
            .apply(&tx(vec![
                Op::FlushChain(Name::from("a")),
                Op::DeleteChain(Name::from("missing")),
            ]))
            .unwrap_err();
        assert!(e.0.contains("missing chain missing"), "{e}");
        assert_eq!(t, before);
    }

    #[test]
    fn objects_need_the_table() {
        let mut t = MemoryTable::new(Family::Ip);
        let e = t
            .apply(&tx(vec![Op::AddChain(Arc::new(Chain::new("a")))]))
            .unwrap_err();
        assert_eq!(e.0, "no such table");
        assert_eq!(t.state(), None);
    }
}
