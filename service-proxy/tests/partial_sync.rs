//! Property: after any sequence of changes, applying the first full render and then every
//! partial render leaves the same rules as a full render of the final snapshot.
//!
//! `iptables-restore --noflush` is modelled in memory, strictly: a `:CHAIN` line creates or
//! flushes, `-A` appends to a chain that exists, `-X` deletes a chain only when it is empty
//! and nothing jumps to it, and a table commits only if every jump targets a chain that
//! exists. (The kernel test in `e2e_iptables.rs` checks the same against the real kernel.)

use std::collections::BTreeMap;

use proptest::prelude::*;

mod common;
use common::generated::{node, objects, svc_strategy};
use common::nft::canonical;
use service_core::snapshot::Snapshot;
use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};

type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Applies restore input to `tables` as `iptables-restore --noflush` would.
fn restore(tables: &mut Tables, input: &str) -> Result<(), String> {
    let mut staged = tables.clone();
    let mut current: Option<String> = None;
    for line in input.lines() {
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_owned());
            staged.entry(t.to_owned()).or_default();
            continue;
        }
        let table = current.as_ref().ok_or("rule outside a table")?;
        let chains = staged.get_mut(table).ok_or("no table")?;
        if let Some(rest) = line.strip_prefix(':') {
            let name = rest.split_whitespace().next().ok_or("bad chain line")?;
            chains.insert(name.to_owned(), Vec::new());
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').ok_or("bad rule")?;
            chains
                .get_mut(chain)
                .ok_or_else(|| format!("append to missing chain {chain}"))?
                .push(rule.to_owned());
        } else if let Some(chain) = line.strip_prefix("-X ") {
            let rules = chains
                .get(chain)
                .ok_or_else(|| format!("delete of missing chain {chain}"))?;
            if !rules.is_empty() {
                return Err(format!("delete of non-empty chain {chain}"));
            }
            let target = format!("-j {chain}");
            if chains.values().flatten().any(|r| r.ends_with(&target)) {
                return Err(format!("delete of referenced chain {chain}"));
            }
            chains.remove(chain);
        } else if line == "COMMIT" {
            let chains = &staged[table];
            for (c, rules) in chains {
                for r in rules {
                    if let Some(t) = r.rsplit_once("-j ").map(|(_, t)| t) {
                        let t = t.split_whitespace().next().unwrap_or_default();
                        if t.starts_with("KUBE-") && !chains.contains_key(t) {
                            return Err(format!("{c}: jump to missing chain {t}"));
                        }
                    }
                }
            }
            current = None;
        } else if !line.is_empty() {
            return Err(format!("unexpected line {line}"));
        }
    }
    *tables = staged;
    Ok(())
}

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    let mut c = IptablesConfig::new(proxy);
    // A low threshold so that sequences also cross into and out of large-cluster mode.
    c.large_cluster_threshold = 12;
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn partial_syncs_converge_to_a_full_render(
        initial in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..6),
        steps in proptest::collection::vec(
            (0usize..6, proptest::option::of(svc_strategy())),
            1..8,
        ),
    ) {
        let mut state = initial;
        let (services, slices) = objects(&state);
        let mut snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let mut renderer = Renderer::new(config(), false);
        let mut kernel = Tables::new();
        restore(&mut kernel, &renderer.full(&snap).to_restore_input()).unwrap();

        for (index, replacement) in steps {
            if index < state.len() {
                state[index] = replacement;
            } else {
                state.push(replacement);
            }
            let (services, slices) = objects(&state);
            let next = snap.rebuild(node(), &services, &slices, &[]).unwrap();
            let changed: Vec<_> = next.diff(&snap).ports.into_iter().map(|(k, _)| k).collect();
            let rules = renderer.partial(&next, &changed);
            restore(&mut kernel, &rules.to_restore_input())
                .map_err(|e| TestCaseError::fail(format!("restore failed: {e}\n{}", rules.to_restore_input())))?;
            snap = next;
        }

        let mut expected = Tables::new();
        restore(&mut expected, &Renderer::new(config(), false).full(&snap).to_restore_input()).unwrap();
        prop_assert_eq!(kernel, expected);
    }

    #[test]
    fn rendering_is_deterministic(
        svcs in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..8),
    ) {
        let (services, slices) = objects(&svcs);
        let snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let a = Renderer::new(config(), false).full(&snap).to_restore_input();
        let mut rev_services = services;
        rev_services.reverse();
        let mut rev_slices = slices;
        rev_slices.reverse();
        let snap2 = Snapshot::build(node(), &rev_services, &rev_slices, &[]).unwrap();
        let b = Renderer::new(config(), false).full(&snap2).to_restore_input();
        prop_assert_eq!(a, b);
    }
}

fn nft_config() -> service_proxy::nftables::NftablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    proxy.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    service_proxy::nftables::NftablesConfig::new(proxy)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The nftables backend: a cold start, then one incremental transaction per change
    /// (stale chains deleted one step later, as the proxier does), leaves a table that means
    /// the same as a cold start of the final snapshot, and every transaction is one the
    /// kernel accepts.
    #[test]
    fn nftables_updates_converge_to_a_fresh_table(
        initial in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..6),
        steps in proptest::collection::vec(
            (0usize..6, proptest::option::of(svc_strategy())),
            1..8,
        ),
        full_compare in any::<bool>(),
    ) {
        use service_proxy::nftables::{Family, MemoryTable, Op, Renderer as NftRenderer, Transaction};
        let mut state = initial;
        let (services, slices) = objects(&state);
        let mut snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let renderer = NftRenderer::new(nft_config(), false);
        let mut rules = renderer.render(&snap);
        let mut kernel = MemoryTable::new(Family::Ip);
        for tx in rules.create(5) {
            kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("cold start: {e}\n{tx}")))?;
        }
        let mut stale = Vec::new();
        for (index, replacement) in steps {
            if index < state.len() {
                state[index] = replacement;
            } else {
                state.push(replacement);
            }
            let (services, slices) = objects(&state);
            let next = snap.rebuild(node(), &services, &slices, &[]).unwrap();
            let changed: Vec<_> = next.diff(&snap).ports.into_iter().map(|(k, _)| k).collect();
            let update = renderer.update(&mut rules, &next, (!full_compare).then_some(&changed[..]));
            let mut tx = update.transaction;
            for s in std::mem::take(&mut stale) {
                let s: service_proxy::nftables::StaleChain = s;
                if !rules.port_has_chain(s.port.name(), &s.name) {
                    tx.ops.push(Op::DeleteChain(s.name.clone()));
                }
            }
            kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("update: {e}\n{tx}")))?;
            stale = update.stale;
            snap = next;
        }
        let mut tx = Transaction::new(rules.family);
        for s in stale {
            if !rules.port_has_chain(s.port.name(), &s.name) {
                tx.ops.push(Op::DeleteChain(s.name.clone()));
            }
        }
        kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("stale chains: {e}\n{tx}")))?;

        let mut fresh = MemoryTable::new(Family::Ip);
        for tx in NftRenderer::new(nft_config(), false).render(&snap).create(5) {
            fresh.apply(&tx).unwrap();
        }
        prop_assert_eq!(canonical(&kernel), canonical(&fresh));
    }
}
