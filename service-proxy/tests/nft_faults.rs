//! The nftables proxier against an in-memory kernel that fails on purpose.
//!
//! Property: whatever fails — the k-th transaction rejected, reading the table failing,
//! the table tampered with (deleted, a chain flushed, a rule or an element deleted, a
//! foreign rule added), the proxier restarted — after every sync the kernel holds either
//! exactly what it held before (a refused sync applies nothing) or the new snapshot's
//! table (a successful one; stale chains waiting for their delay aside), never a mix; a
//! full sync after tampering repairs it and says so; a change the kernel keeps refusing
//! never tears anything down.
#![cfg(feature = "apply")]

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use service_core::snapshot::Snapshot;
use service_proxy::nftables::apply::{Applier, ApplyError, BatchStats, KernelView};
use service_proxy::nftables::{
    Family, MemoryTable, NftProxier, NftablesConfig, Renderer, Transaction,
};
use service_proxy::{Proxier, ProxyConfig, SyncErrorKind};

mod common;
use common::generated::{Svc, node, objects, svc_strategy};
use common::nft::{Meaning, canonical};

/// The in-memory kernel, with the calls to fail.
#[derive(Debug)]
struct Faulty {
    table: MemoryTable,
    fail_apply: BTreeSet<usize>,
    fail_read: BTreeSet<usize>,
    applies: usize,
    reads: usize,
}

impl Applier for Faulty {
    fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError> {
        self.applies += 1;
        if self.fail_apply.contains(&self.applies) {
            return Err(ApplyError::Io(std::io::Error::other(
                "injected: batch refused",
            )));
        }
        Applier::apply(&mut self.table, txs)
    }

    fn read_state(&mut self, family: Family) -> Result<KernelView, ApplyError> {
        self.reads += 1;
        if self.fail_read.contains(&self.reads) {
            return Err(ApplyError::Io(std::io::Error::other(
                "injected: dump failed",
            )));
        }
        Applier::read_state(&mut self.table, family)
    }
}

/// Something done between syncs.
#[derive(Clone, Debug)]
enum Step {
    /// A service replaced (or removed, or added), then a sync of the changes.
    Change(usize, Option<Svc>),
    /// Tampering behind the proxier's back, then a full sync.
    Tamper(Tampering),
    /// The proxier replaced by a new one (a daemon restart), which syncs.
    Restart,
}

#[derive(Clone, Copy, Debug)]
enum Tampering {
    DeleteTable,
    FlushChain(usize),
    DeleteRule(usize, usize),
    DeleteElement(usize, usize),
    ForeignRule(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..6, proptest::option::of(svc_strategy())).prop_map(|(i, s)| Step::Change(i, s)),
        2 => prop_oneof![
            Just(Tampering::DeleteTable),
            any::<usize>().prop_map(Tampering::FlushChain),
            (any::<usize>(), any::<usize>()).prop_map(|(c, r)| Tampering::DeleteRule(c, r)),
            (any::<usize>(), any::<usize>()).prop_map(|(s, e)| Tampering::DeleteElement(s, e)),
            any::<usize>().prop_map(Tampering::ForeignRule),
        ]
        .prop_map(Step::Tamper),
        1 => Just(Step::Restart),
    ]
}

impl Tampering {
    fn apply(self, t: &mut MemoryTable) {
        let nth = |n: usize, len: usize| (len > 0).then(|| n % len);
        match self {
            Self::DeleteTable => t.delete_table(),
            Self::FlushChain(c) => {
                if let Some(i) = nth(c, t.chains.len()) {
                    t.chains.values_mut().nth(i).unwrap().rules.clear();
                }
            }
            Self::DeleteRule(c, r) => {
                if let Some(i) = nth(c, t.chains.len()) {
                    let rules = &mut t.chains.values_mut().nth(i).unwrap().rules;
                    if let Some(j) = nth(r, rules.len()) {
                        rules.remove(j);
                    }
                }
            }
            Self::DeleteElement(s, e) => {
                if let Some(i) = nth(s, t.sets.len()) {
                    let set = t.sets.values_mut().nth(i).unwrap();
                    if let Some(j) = nth(e, set.len()) {
                        let key = *set.keys().nth(j).unwrap();
                        set.remove(&key);
                    }
                }
            }
            Self::ForeignRule(c) => {
                if let Some(i) = nth(c, t.chains.len()) {
                    t.chains.values_mut().nth(i).unwrap().rules.push(None);
                }
            }
        }
    }
}

fn nft_config() -> NftablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    proxy.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    NftablesConfig::new(proxy)
}

fn renderer() -> Renderer {
    Renderer::new(nft_config(), false)
}

fn proxier(kernel: Faulty, delay: Duration) -> NftProxier<Faulty> {
    let mut p = NftProxier::new(renderer(), kernel);
    p.chain_delete_delay = delay;
    p
}

/// What a table means (endpoint maps resolved, whatever slots they use), without the
/// empty chains the fresh table has no use for (stale chains waiting for their delay);
/// `None` without a table.
fn meaning(table: &MemoryTable, fresh: &MemoryTable) -> Option<Meaning> {
    if !table.exists() {
        return None;
    }
    let (mut chains, sets) = canonical(table);
    chains.retain(|name, rules| !rules.is_empty() || fresh.chains.contains_key(name));
    Some((chains, sets))
}

/// The table a cold start of `snap` builds.
fn fresh(snap: &Snapshot) -> MemoryTable {
    let mut t = MemoryTable::new(Family::Ip);
    t.apply(&renderer().render(snap).create_one())
        .expect("a fresh table loads");
    t
}

fn snapshot(services: &[Option<Svc>], prev: Option<&Snapshot>) -> Snapshot {
    let (services, slices) = objects(services);
    match prev {
        Some(p) => p.rebuild(node(), &services, &slices, &[]).unwrap(),
        None => Snapshot::build(node(), &services, &slices, &[]).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_kernel_holds_the_old_table_or_the_new_never_a_mix(
        initial in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..6),
        steps in proptest::collection::vec(step(), 1..12),
        fail_apply in proptest::collection::btree_set(1usize..40, 0..8),
        fail_read in proptest::collection::btree_set(1usize..20, 0..3),
        no_delay in any::<bool>(),
    ) {
        let delay = if no_delay { Duration::ZERO } else { Duration::from_secs(3600) };
        let mut state = initial;
        let mut snap = snapshot(&state, None);
        let kernel = Faulty {
            table: MemoryTable::new(Family::Ip),
            fail_apply,
            fail_read,
            applies: 0,
            reads: 0,
        };
        let mut p = proxier(kernel, delay);
        let mut outcome = p.sync_to(&snap);
        let mut healthy = false;
        for step in steps.into_iter().chain([Step::Restart]) {
            let want = fresh(&snap);
            // Where the last sync left the kernel.
            match &outcome {
                Ok(_) => prop_assert_eq!(meaning(p_table(&p), &want), meaning(&want, &want)),
                Err(e) => prop_assert_ne!(e.kind(), SyncErrorKind::Unavailable, "{}", e),
            }
            let mut tampered = false;
            let is_tamper = matches!(step, Step::Tamper(_));
            match step {
                Step::Change(index, replacement) => {
                    if index < state.len() {
                        state[index] = replacement;
                    } else {
                        state.push(replacement);
                    }
                    snap = snapshot(&state, Some(&snap));
                }
                Step::Tamper(t) => {
                    let mut table = p_table(&p).clone();
                    t.apply(&mut table);
                    tampered = meaning(&table, &want) != meaning(p_table(&p), &want);
                    *p_table_mut(&mut p) = table;
                    p.force_full();
                }
                Step::Restart => {
                    let old = std::mem::replace(p.socket_mut(), Faulty {
                        table: MemoryTable::new(Family::Ip),
                        fail_apply: BTreeSet::new(),
                        fail_read: BTreeSet::new(),
                        applies: 0,
                        reads: 0,
                    });
                    p = proxier(old, delay);
                }
            }
            let before = p_table(&p).clone();
            let want = fresh(&snap);
            outcome = p.sync_to(&snap);
            match &outcome {
                Ok(report) => {
                    prop_assert_eq!(
                        meaning(p_table(&p), &want),
                        meaning(&want, &want),
                        "{}",
                        report
                    );
                    if is_tamper && healthy {
                        if tampered {
                            prop_assert!(report.repaired > 0, "tampering not reported: {}", report);
                        } else {
                            prop_assert_eq!(report.repaired, 0, "nothing was tampered: {}", report);
                        }
                    }
                    healthy = true;
                }
                Err(e) => {
                    prop_assert_eq!(p_table(&p), &before, "a refused sync changed the kernel: {}", e);
                    healthy = false;
                }
            }
        }
        // With the faults gone, one full sync converges.
        p.socket_mut().fail_apply.clear();
        p.socket_mut().fail_read.clear();
        p.force_full();
        let report = p.sync_to(&snap).expect("a sync without faults");
        let want = fresh(&snap);
        prop_assert_eq!(meaning(p_table(&p), &want), meaning(&want, &want), "{}", report);
    }
}

fn p_table(p: &NftProxier<Faulty>) -> &MemoryTable {
    &p.socket().table
}

fn p_table_mut(p: &mut NftProxier<Faulty>) -> &mut MemoryTable {
    &mut p.socket_mut().table
}

/// A change the kernel refuses again and again (here: every transaction from the second
/// on) never takes down what is installed: every attempt fails, the kernel keeps the last
/// good table, and the first attempt after the refusals stop converges.
#[test]
fn a_change_refused_again_and_again_keeps_the_last_good_table() {
    let first = vec![Some(service(3))];
    let snap = snapshot(&first, None);
    let kernel = Faulty {
        table: MemoryTable::new(Family::Ip),
        fail_apply: (2..200).collect(),
        fail_read: BTreeSet::new(),
        applies: 0,
        reads: 0,
    };
    let mut p = proxier(kernel, Duration::ZERO);
    p.sync_to(&snap).expect("the first sync");
    let good = p_table(&p).clone();

    let next = snapshot(&[Some(service(3)), Some(service(5))], Some(&snap));
    for attempt in 0..20 {
        let err = p.sync_to(&next).expect_err("refused");
        assert_eq!(err.kind(), SyncErrorKind::Transient, "{err}");
        assert_eq!(p_table(&p), &good, "attempt {attempt} changed the kernel");
    }
    p.socket_mut().fail_apply.clear();
    let report = p.sync_to(&next).expect("accepted at last");
    assert!(report.wrote, "{report}");
    let want = fresh(&next);
    assert_eq!(meaning(p_table(&p), &want), meaning(&want, &want));
}

fn service(endpoints: u8) -> Svc {
    Svc {
        kind: 1,
        affinity: false,
        local: false,
        ranges: false,
        udp: false,
        endpoints: (1..=endpoints).map(|h| (h, true, true)).collect(),
    }
}
