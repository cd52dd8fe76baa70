//! What an in-memory nf_tables table means, for comparing tables built different ways.

use std::collections::{BTreeMap, BTreeSet};

/// The meaning of a table: chains and their rules, sets and their elements.
pub type Meaning = (
    BTreeMap<String, Vec<String>>,
    BTreeMap<String, BTreeSet<String>>,
);

/// What a table means, whatever indexes the endpoint maps use: `numgen` DNAT statements
/// resolved to their endpoints, the endpoint maps left out.
pub fn canonical(t: &service_proxy::nftables::MemoryTable) -> Meaning {
    use service_proxy::nftables::{FixedSet, Key, Stmt};
    let chains = t
        .chains
        .iter()
        .map(|(name, chain)| {
            let rules = chain
                .rules
                .iter()
                .map(|r| {
                    let Some(r) = r else {
                        return "a foreign rule".to_owned();
                    };
                    r.stmts
                        .iter()
                        .map(|s| match s {
                            Stmt::DnatMap {
                                shard,
                                offset,
                                count,
                            } => {
                                let map = &t.sets[&*FixedSet::Endpoints(*shard).name()];
                                let end = u64::from(*offset) + u64::from(*count);
                                // Each endpoint's share of the block, wherever it sits.
                                let eps: Vec<String> = map
                                    .iter()
                                    .filter_map(|(k, d)| match k {
                                        Key::Range(first, last)
                                            if *first >= *offset && u64::from(*last) < end =>
                                        {
                                            Some(format!("{d:?} x{}", last - first + 1))
                                        }
                                        _ => None,
                                    })
                                    .collect();
                                format!("dnat-one-of {eps:?}")
                            }
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            (name.clone(), rules)
        })
        .collect();
    let sets = t
        .sets
        .iter()
        .filter(|(name, _)| !name.starts_with("service-endpoints-"))
        .map(|(name, s)| {
            (
                name.clone(),
                s.iter().map(|(k, d)| format!("{k} {d:?}")).collect(),
            )
        })
        .collect();
    (chains, sets)
}
