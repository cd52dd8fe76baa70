//! What the kernel holds of our table ([`TableState`]), what it should hold
//! ([`Ruleset::expected_state`]), and the smallest transaction that brings the one to the
//! other ([`Ruleset::repair`]). Pure: the state is read by the applier
//! (`apply::NftSocket::read_state`, or an in-memory kernel in tests).
//!
//! Every rule we add carries a mark in its user data (a hash of its text, beside nft's
//! comment; `nft list` ignores it), so a chain's rules are compared by their marks without
//! decoding expressions: a rule deleted, added or changed behind our back shows as a
//! different sequence of marks. Set and map elements are compared by their key and data
//! bytes as the kernel stores them. Affinity sets' elements are runtime state and are not
//! compared; anonymous sets belong to their rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::model::{Chain, Data, Element, Family, FixedSet, Name, Rule};
use super::render::Ruleset;
use super::transaction::{Op, SetDecl, Transaction};
use super::wire::{self, ElemData};

/// The mark a rule carries: FNV-1a (64 bits) of its `nft` text. Stable across versions as
/// long as the rule's text is.
pub fn rule_mark(family: Family, rule: &Rule) -> u64 {
    let text = rule.display(family).to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One chain as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainState {
    /// Hook number and priority, for a base chain.
    pub hook: Option<(u32, i32)>,
    /// Each rule's mark, in order (`None` for a rule without ours).
    pub rules: Vec<Option<u64>>,
}

/// Our table as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableState {
    /// Chains by name.
    pub chains: BTreeMap<String, ChainState>,
    /// Named sets and maps by name, with their elements (key bytes to data); affinity
    /// sets are listed without elements.
    pub sets: BTreeMap<String, BTreeMap<Vec<u8>, ElemData>>,
}

impl TableState {
    /// Whether the table holds rules and none of them is ours: another program's table of
    /// the same name (kube-proxy's nftables mode uses `kube-proxy` too).
    pub fn is_foreign(&self) -> bool {
        let mut rules = self.chains.values().flat_map(|c| c.rules.iter());
        let mut any = false;
        for r in &mut rules {
            if r.is_some() {
                return false;
            }
            any = true;
        }
        any
    }
}

/// What a repair found and the transaction that fixes it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Repair {
    /// The operations (empty when the kernel holds exactly what it should).
    pub transaction: Transaction,
    /// How many objects differed: chains missing, extra or with other rules, sets missing
    /// or extra, elements missing, extra or with another value.
    pub differences: usize,
    /// Chains emptied because they should not exist, to delete once nothing refers to them.
    pub stale_chains: Vec<Name>,
}

pub(crate) fn data_of(data: Option<&Data>) -> ElemData {
    match data {
        None => ElemData::None,
        Some(Data::Endpoint(a)) => ElemData::Value(wire::endpoint_bytes(a)),
        Some(Data::Verdict(v)) => {
            let (code, chain) = wire::verdict_code(v);
            ElemData::Verdict(code, chain.map(str::to_owned))
        }
    }
}

/// An expected chain: its declaration and its rules' marks.
struct Expected {
    chain: Arc<Chain>,
    marks: Vec<Option<u64>>,
}

impl Ruleset {
    fn expected_chains(&self) -> BTreeMap<String, Expected> {
        let family = self.family;
        let mut out = BTreeMap::new();
        let mut add = |c: Arc<Chain>| {
            let marks = c.rules.iter().map(|r| Some(rule_mark(family, r))).collect();
            out.insert(c.name.to_string(), Expected { chain: c, marks });
        };
        for c in &self.fixed {
            add(c.clone());
        }
        for p in self.ports.values() {
            for c in &p.chains {
                add(c.clone());
            }
            for e in &p.endpoints {
                add(Arc::new(e.to_chain()));
            }
        }
        out
    }

    /// The named sets the table should hold: every fixed set and endpoint map declared,
    /// and each service port's affinity sets.
    fn expected_sets(&self) -> BTreeMap<String, Option<SetDecl>> {
        let mut out = BTreeMap::new();
        for s in FixedSet::ALL {
            out.insert(s.name().into_owned(), Some(SetDecl::Fixed(s)));
        }
        for &shard in self.shards() {
            let s = FixedSet::Endpoints(shard);
            out.insert(s.name().into_owned(), Some(SetDecl::Fixed(s)));
        }
        for p in self.ports.values() {
            for a in &p.affinity {
                out.insert(a.name.to_string(), Some(SetDecl::Affinity(a.clone())));
            }
        }
        out
    }

    /// What the kernel should hold when this ruleset is installed.
    pub fn expected_state(&self) -> TableState {
        let mut state = TableState::default();
        for (name, e) in self.expected_chains() {
            state.chains.insert(
                name,
                ChainState {
                    hook: e.chain.hook.map(|h| (h.hook.number(), h.priority)),
                    rules: e.marks,
                },
            );
        }
        for name in self.expected_sets().into_keys() {
            state.sets.insert(name, BTreeMap::new());
        }
        for e in self.elements() {
            state
                .sets
                .entry(e.set.name().into_owned())
                .or_default()
                .insert(wire::key_bytes(&e.key), data_of(e.data.as_ref()));
        }
        state
    }

    /// The smallest transaction that turns `kernel` into this ruleset: missing sets and
    /// chains added, chains whose rules differ flushed and refilled, extra chains flushed
    /// (to delete later, once nothing refers to them), extra sets deleted, elements added,
    /// deleted or replaced. One transaction: the kernel applies all of it or nothing.
    pub fn repair(&self, kernel: &TableState) -> Repair {
        let mut adds_sets = Vec::new();
        let mut adds_chains = Vec::new();
        let mut flushes = Vec::new();
        let mut deletes_base = Vec::new();
        let mut refills = Vec::new();
        let mut stale_chains = Vec::new();
        let mut differences = 0;

        let expected = self.expected_chains();
        for (name, e) in &expected {
            match kernel.chains.get(name) {
                None => {
                    adds_chains.push(e.chain.clone());
                    refills.push(e.chain.clone());
                    differences += 1;
                }
                Some(k) => {
                    let hook = e.chain.hook.map(|h| (h.hook.number(), h.priority));
                    if k.hook != hook {
                        // A hook cannot change in place: delete the chain, declare it anew.
                        flushes.push(Name::from(name.as_str()));
                        deletes_base.push(Name::from(name.as_str()));
                        adds_chains.push(e.chain.clone());
                        refills.push(e.chain.clone());
                        differences += 1;
                    } else if k.rules != e.marks {
                        flushes.push(Name::from(name.as_str()));
                        refills.push(e.chain.clone());
                        differences += 1;
                    }
                }
            }
        }
        for (name, k) in &kernel.chains {
            if !expected.contains_key(name) {
                if !k.rules.is_empty() {
                    flushes.push(Name::from(name.as_str()));
                }
                stale_chains.push(Name::from(name.as_str()));
                differences += 1;
            }
        }

        let sets = self.expected_sets();
        for (name, decl) in &sets {
            if !kernel.sets.contains_key(name)
                && let Some(d) = decl
            {
                adds_sets.push(d.clone());
                differences += 1;
            }
        }
        let extra_sets: Vec<Name> = kernel
            .sets
            .keys()
            .filter(|n| !sets.contains_key(*n))
            .map(|n| Name::from(n.as_str()))
            .collect();
        differences += extra_sets.len();

        // Elements: by set, key bytes to the element and its data as the kernel keeps it.
        let mut want: BTreeMap<String, BTreeMap<Vec<u8>, (Element, ElemData)>> = BTreeMap::new();
        for e in self.elements() {
            let data = data_of(e.data.as_ref());
            want.entry(e.set.name().into_owned())
                .or_default()
                .insert(wire::key_bytes(&e.key), (e, data));
        }
        let mut element_adds = Vec::new();
        let mut element_deletes = Vec::new();
        for (set, elements) in &want {
            let have = kernel.sets.get(set);
            for (key, (e, data)) in elements {
                match have.and_then(|h| h.get(key)) {
                    Some(d) if d == data => {}
                    Some(_) => {
                        element_deletes.push(Op::DeleteElement(e.clone()));
                        element_adds.push(Op::AddElement(e.clone()));
                        differences += 1;
                    }
                    None => {
                        element_adds.push(Op::AddElement(e.clone()));
                        differences += 1;
                    }
                }
            }
        }
        for (set, have) in &kernel.sets {
            let Some(fixed) = fixed_set(set, self.shards()) else {
                continue;
            };
            let wanted = want.get(set);
            for key in have.keys() {
                if wanted.is_none_or(|w| !w.contains_key(key)) {
                    match wire::parse_key(fixed.key(), self.family, key) {
                        Some(k) => {
                            element_deletes.push(Op::DeleteElement(Element {
                                set: fixed,
                                key: k,
                                data: None,
                            }));
                            differences += 1;
                        }
                        // A key we cannot even read: the set is not what we declared.
                        None => differences += 1,
                    }
                }
            }
        }

        // The order the kernel needs: declarations, flushes (before anything that could
        // be refused for a reference they hold), element changes (verdicts need their
        // chains declared), rules (they need their sets), then set deletions.
        let mut tx = Transaction::new(self.family);
        tx.ops.extend(adds_sets.into_iter().map(Op::AddSet));
        tx.ops.extend(flushes.into_iter().map(Op::FlushChain));
        tx.ops.extend(deletes_base.into_iter().map(Op::DeleteChain));
        tx.ops.extend(adds_chains.into_iter().map(Op::AddChain));
        tx.ops.extend(element_deletes);
        tx.ops.extend(element_adds);
        tx.ops.extend(refills.into_iter().map(Op::AddRules));
        tx.ops.extend(extra_sets.into_iter().map(Op::DeleteSet));
        Repair {
            transaction: tx,
            differences,
            stale_chains,
        }
    }
}

/// The fixed set called `name` (an endpoint map of any shard included).
fn fixed_set(name: &str, shards: &BTreeSet<u16>) -> Option<FixedSet> {
    FixedSet::ALL
        .into_iter()
        .chain(shards.iter().map(|&s| FixedSet::Endpoints(s)))
        .find(|s| s.name() == name)
        .or_else(|| {
            name.strip_prefix("service-endpoints-")
                .and_then(|n| n.parse().ok())
                .map(FixedSet::Endpoints)
        })
}
