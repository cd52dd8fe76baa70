//! Applying nftables transactions to the kernel over netlink, and the incremental proxier.
//!
//! - [`NftSocket`] sends encoded batches on a `NETLINK_NETFILTER` socket and reads the
//!   kernel's answer: one acknowledgement for the batch's last message on success, the
//!   failing messages' errors otherwise (the kernel then applies nothing).
//! - [`NftProxier`] keeps the committed [`Ruleset`] in memory and sends only the changes.
//!   A start (or the first sync after a failure) adopts the table the kernel holds and
//!   sends the difference; without a table it builds one. Every sync is one transaction;
//!   stale chains are deleted once a delay has passed; cleanup deletes only our table.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;

use super::NftablesReport;
use super::model::Family;
use super::model::Name;
use super::render::{Renderer, Ruleset, StaleChain};
use super::state::TableState;
use super::transaction::{Op, Transaction};
use super::wire::{self, Dump};
use super::wire::{Batch, EncodedBatch};
use crate::conntrack::{Cleanup, ConntrackCleaner, stale_filters};
use crate::nlmsg::messages;
use crate::proxier::{
    BackendReport, NoLocalEndpoints, Proxier, ProxyMode, SyncError, SyncErrorKind, SyncReport,
    SyncRequest, endpoints_changed,
};
use crate::sync::{SyncEngine, SyncKind, SyncPlan};

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The socket failed.
    #[error("nf_tables netlink socket: {0}")]
    Io(#[from] io::Error),
    /// `nft -f` failed: nothing of the script was applied.
    #[error("nft -f failed ({status}): {stderr}")]
    Program {
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// Our table's name is taken by another program's table (kube-proxy's nftables mode
    /// uses `kube-proxy` too): nothing of it is ours to change.
    #[error(
        "table {family} {table} exists and was not made by this proxy (kube-proxy?): stop that program and remove its table (`nft delete table {family} {table}`) first"
    )]
    Foreign {
        /// `ip` or `ip6`.
        family: &'static str,
        /// The table.
        table: &'static str,
    },
    /// The kernel rejected the batch: nothing of it was applied.
    #[error(
        "the kernel rejected an nf_tables batch ({messages} messages): message {index} failed with {error}{}",
        describe(.op)
    )]
    Rejected {
        /// The first failing message's position in the batch (1-based, after batch begin).
        index: u32,
        /// The error.
        error: io::Error,
        /// The number of messages in the batch.
        messages: usize,
        /// What the failing message did, when known.
        op: Option<String>,
    },
}

fn describe(op: &Option<String>) -> String {
    op.as_ref().map(|o| format!(" ({o})")).unwrap_or_default()
}

/// What an applier can tell of the kernel's table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelView {
    /// It cannot read the kernel (the `nft` program fallback).
    Unreadable,
    /// The table does not exist.
    Absent,
    /// The table as the kernel holds it.
    Table(TableState),
}

/// Something that applies transactions atomically: the netlink socket, or the `nft`
/// program as a fallback.
pub trait Applier {
    /// Applies transactions as one atomic change.
    ///
    /// # Errors
    /// The kernel (or the program) refused them: nothing was applied.
    fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError>;

    /// Whether it can apply incremental transactions to a table it did not just create
    /// (otherwise every sync rebuilds the table, in one transaction).
    fn incremental(&self) -> bool {
        true
    }

    /// Reads our table of `family` from the kernel, for the proxier to adopt it when it
    /// starts and to verify (and repair) it on every full sync.
    ///
    /// # Errors
    /// The kernel could not be read.
    fn read_state(&mut self, family: Family) -> Result<KernelView, ApplyError> {
        let _ = family;
        Ok(KernelView::Unreadable)
    }
}

impl Applier for NftSocket {
    fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError> {
        Self::apply(self, txs)
    }

    fn read_state(&mut self, family: Family) -> Result<KernelView, ApplyError> {
        Self::read_state(self, family)
    }
}

/// The in-memory table: transactions apply all or nothing, as in the kernel. `messages`
/// counts operations; `bytes` stays 0.
impl Applier for super::MemoryTable {
    fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError> {
        let mut staged = self.clone();
        for (i, tx) in txs.iter().enumerate() {
            staged.apply(tx).map_err(|e| ApplyError::Rejected {
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                error: io::Error::new(io::ErrorKind::InvalidInput, e.0.clone()),
                messages: txs.iter().map(|t| t.ops.len()).sum(),
                op: Some(e.0),
            })?;
        }
        *self = staged;
        Ok(BatchStats {
            messages: txs.iter().map(|t| t.ops.len()).sum(),
            bytes: 0,
        })
    }

    fn read_state(&mut self, family: Family) -> Result<KernelView, ApplyError> {
        if family != self.family() {
            return Ok(KernelView::Absent);
        }
        Ok(self.state().map_or(KernelView::Absent, KernelView::Table))
    }
}

/// The fallback applier: `nft -f -` with the transactions' script on standard input (run
/// directly, never through a shell). Much slower at scale than [`NftSocket`] (`nft` 1.0.6
/// is quadratic in the number of chains), but it needs nothing from this crate's encoder.
///
/// It rebuilds the whole table, atomically, on every sync: `nft` 1.0.6 refuses to add a
/// rule that uses a `typeof` map it read back from the kernel ("conflicting protocols
/// specified"), while a script that declares the map itself loads fine.
#[derive(Clone, Debug, Default)]
pub struct NftProgram {
    netns: Option<String>,
}

impl NftProgram {
    /// `nft` in the current network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// `nft` inside the named network namespace (via `ip netns exec`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_owned()),
        }
    }
}

impl Applier for NftProgram {
    fn incremental(&self) -> bool {
        false
    }

    fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError> {
        use std::io::Write as _;
        let mut script = String::new();
        for tx in txs {
            script.push_str(&tx.to_string());
        }
        if script.is_empty() {
            return Ok(BatchStats::default());
        }
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nft", "-f", "-"]);
                c
            }
            None => {
                let mut c = std::process::Command::new("nft");
                c.args(["-f", "-"]);
                c
            }
        };
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // Write while nft runs, so that a chatty stderr cannot block it.
        let stdin = child.stdin.take();
        let out = std::thread::scope(|scope| {
            let writer = scope.spawn(|| match stdin {
                Some(mut s) => s.write_all(script.as_bytes()),
                None => Ok(()),
            });
            let out = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
            out.and_then(|o| written.map(|()| o))
        })?;
        if !out.status.success() {
            return Err(ApplyError::Program {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(BatchStats {
            messages: script.lines().count(),
            bytes: script.len(),
        })
    }
}

/// A netlink socket for nf_tables batches.
#[derive(Debug)]
pub struct NftSocket {
    socket: Socket,
    seq: u32,
    /// The send buffer size we last asked for.
    sndbuf: usize,
}

/// The send buffer asked for when the socket opens; larger batches raise it.
const SNDBUF: usize = 64 << 20;

impl NftSocket {
    /// Opens a socket in the current network namespace.
    ///
    /// # Errors
    /// Socket creation or binding failed.
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // Errors echo only the failing message's header, with the kernel's explanation.
        socket.set_cap_ack(true)?;
        socket.set_ext_ack(true)?;
        let fd = socket.as_fd();
        // Large batches go out in one sendmsg (root may exceed wmem_max; others keep
        // the default and rely on bounded transactions).
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBufForce, &SNDBUF);
        let _ =
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
        crate::nlmsg::set_timeouts(&socket)?;
        Ok(Self {
            socket,
            seq: 1,
            sndbuf: SNDBUF,
        })
    }

    /// Opens a socket inside the network namespace at `path` (e.g. `/run/netns/NAME`); the
    /// socket stays there, the calling thread does not move.
    ///
    /// # Errors
    /// The namespace cannot be entered or the socket not opened.
    pub fn in_netns(path: &Path) -> io::Result<Self> {
        crate::netns::open_in(path, Self::new)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The ruleset generation: it changes with every committed transaction.
    fn generation(&mut self, family: Family) -> Result<u32, ApplyError> {
        let seq = self.next_seq();
        let mut generation = None;
        crate::nlmsg::request_with(
            &self.socket,
            &wire::dump_request(family, Dump::Generation, seq),
            seq,
            |m| generation = generation.or_else(|| wire::parse_generation(m.body)),
        )?;
        generation.ok_or_else(|| io::Error::other("no generation in the answer").into())
    }

    /// Reads our table of `family`: its chains with their rules' marks, its named sets with
    /// their elements (affinity sets without). The reads are repeated until the ruleset
    /// generation is the same before and after them, so the view is of one moment.
    ///
    /// # Errors
    /// The socket failed, or the table kept changing while it was read.
    pub fn read_state(&mut self, family: Family) -> Result<KernelView, ApplyError> {
        for _ in 0..5 {
            let before = self.generation(family)?;
            let Some(state) = self.read_once(family)? else {
                return Ok(KernelView::Absent);
            };
            if self.generation(family)? == before {
                return Ok(KernelView::Table(state));
            }
        }
        Err(io::Error::other("our table kept changing while it was read").into())
    }

    fn read_once(&mut self, family: Family) -> Result<Option<TableState>, ApplyError> {
        let mut state = TableState::default();
        let socket = &self.socket;
        let seq = &mut self.seq;
        let mut next = || {
            *seq = seq.wrapping_add(1);
            *seq
        };
        let ours = |t: &str| t == super::TABLE;
        let dump = |what: Dump<'_>, next: &mut dyn FnMut() -> u32| {
            crate::nlmsg::dump_consistent(socket, next, |s| wire::dump_request(family, what, s))
        };
        // Chains; ENOENT: the table is not there.
        let bodies = match dump(Dump::Chains, &mut next) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
            other => other?,
        };
        for m in &bodies {
            if let Some((t, name, hook)) = wire::parse_chain(m.message().body)
                && ours(&t)
            {
                state.chains.insert(
                    name,
                    super::ChainState {
                        hook,
                        rules: Vec::new(),
                    },
                );
            }
        }
        // An empty table still has its base chains; none at all: ask for the table.
        if state.chains.is_empty() {
            let seq = next();
            let mut table = false;
            let probe =
                crate::nlmsg::request_with(socket, &wire::table_request(family, seq), seq, |_| {
                    table = true
                });
            match probe {
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
                other => other?,
            }
            if !table {
                return Ok(None);
            }
        }
        for m in dump(Dump::Rules, &mut next)? {
            if let Some((t, chain, mark)) = wire::parse_rule(m.message().body)
                && ours(&t)
            {
                state.chains.entry(chain).or_default().rules.push(mark);
            }
        }
        let mut sets = Vec::new();
        for m in dump(Dump::Sets, &mut next)? {
            if let Some((t, name, flags)) = wire::parse_set(m.message().body)
                && ours(&t)
                && !wire::is_anonymous(flags)
            {
                sets.push((name, wire::is_interval(flags)));
            }
        }
        for (set, interval) in sets {
            let mut raw = Vec::new();
            // Affinity sets hold runtime state: only their existence is compared.
            if !set.starts_with("affinity-") {
                for m in dump(Dump::Elements(&set), &mut next)? {
                    if let Some((_, els)) = wire::parse_elements(m.message().body) {
                        raw.extend(els);
                    }
                }
            }
            let elements = if interval {
                wire::pair_intervals(raw).into_iter().collect()
            } else {
                raw.into_iter().map(|(k, d, _)| (k, d)).collect()
            };
            state.sets.insert(set, elements);
        }
        Ok(Some(state))
    }

    /// Sends transactions as one atomic batch.
    ///
    /// # Errors
    /// The socket failed or the kernel rejected the batch.
    pub fn apply(&mut self, txs: &[&Transaction]) -> Result<BatchStats, ApplyError> {
        let mut batch = Batch::new(self.seq);
        for tx in txs {
            batch.push(tx);
        }
        let encoded = batch.finish();
        self.seq = encoded
            .first_seq
            .wrapping_add(u32::try_from(encoded.messages).unwrap_or(0))
            .wrapping_add(2);
        let stats = BatchStats {
            messages: encoded.messages,
            bytes: encoded.bytes.len(),
        };
        self.send(&encoded, txs)?;
        Ok(stats)
    }

    fn send(&mut self, batch: &EncodedBatch, txs: &[&Transaction]) -> Result<(), ApplyError> {
        let Some(acked) = batch.acked_seq else {
            return Ok(());
        };
        // A transaction is one batch, and a batch must arrive in one sendmsg: the kernel
        // refuses (EMSGSIZE) anything larger than the send buffer, so a cold load of a big
        // table (about 100 MB at 100k Services) raises it first. The kernel doubles the
        // value and caps it at INT_MAX; without CAP_NET_ADMIN this fails and the send
        // reports EMSGSIZE as before.
        let needed = batch.bytes.len().saturating_add(1 << 20);
        if needed > self.sndbuf {
            let want = needed.min(i32::MAX as usize / 2);
            if nix::sys::socket::setsockopt(
                &self.socket.as_fd(),
                nix::sys::socket::sockopt::SndBufForce,
                &want,
            )
            .is_ok()
            {
                self.sndbuf = want;
            }
        }
        let sent = self.socket.send(&batch.bytes, 0)?;
        if sent != batch.bytes.len() {
            return Err(io::Error::other("short netlink send").into());
        }
        // The kernel processes the batch inside sendmsg: its answers are already queued.
        let mut first_error: Option<(u32, i32)> = None;
        let mut acknowledged = false;
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        loop {
            buf.clear();
            match self.socket.recv_from(&mut buf, nix::libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
            for m in messages(&buf) {
                // The echoed header's sequence number says which message this answers.
                let (Some(errno), Some(seq)) = (m.errno(), m.answered_seq()) else {
                    continue;
                };
                if errno != 0 {
                    if first_error.is_none_or(|(s, _)| seq < s) {
                        first_error = Some((seq, errno));
                    }
                } else if seq == acked {
                    acknowledged = true;
                }
            }
        }
        if first_error.is_none() && !acknowledged {
            return Err(
                io::Error::other("the kernel did not acknowledge the nf_tables batch").into(),
            );
        }
        self.outcome(first_error, batch, txs)
    }

    fn outcome(
        &self,
        first_error: Option<(u32, i32)>,
        batch: &EncodedBatch,
        txs: &[&Transaction],
    ) -> Result<(), ApplyError> {
        match first_error {
            None => Ok(()),
            Some((seq, errno)) => {
                let index = seq.wrapping_sub(batch.first_seq);
                Err(ApplyError::Rejected {
                    index,
                    error: io::Error::from_raw_os_error(-errno),
                    messages: batch.messages,
                    op: describe_message(txs, index),
                })
            }
        }
    }
}

/// Names the operation behind the `index`th message, for error reports (best effort:
/// element operations share messages, rules with `numgen` take several).
fn describe_message(txs: &[&Transaction], index: u32) -> Option<String> {
    let mut n = 0u32;
    for tx in txs {
        for op in &tx.ops {
            // About one message per line of the op's script.
            let one = Transaction {
                family: tx.family,
                ops: vec![op.clone()],
            };
            let text = one.to_string();
            let count = u32::try_from(text.lines().count()).unwrap_or(u32::MAX);
            if index > n && index <= n + count {
                let line = text.lines().nth((index - n - 1) as usize).unwrap_or("");
                return Some(line.trim().to_owned());
            }
            n += count;
        }
    }
    None
}

/// The size of a batch sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// nf_tables messages.
    pub messages: usize,
    /// Bytes.
    pub bytes: usize,
}

/// A chain emptied by a sync, to delete once nothing refers to it any more.
#[derive(Clone, Debug)]
enum Pending {
    /// It left a service port.
    Port(StaleChain),
    /// A repair found it where no chain should be.
    Orphan(Name),
}

impl Pending {
    fn name(&self) -> &Name {
        match self {
            Self::Port(s) => &s.name,
            Self::Orphan(n) => n,
        }
    }

    /// Whether the ruleset uses a chain of this name again.
    fn revived(&self, rules: &Ruleset) -> bool {
        match self {
            Self::Port(s) => rules.port_has_chain(s.port.name(), &s.name),
            Self::Orphan(n) => rules.chain(n).is_some(),
        }
    }
}

/// Keeps one family's table in sync with snapshots, incrementally, through an [`Applier`]
/// (the netlink socket unless told otherwise).
///
/// - Starting, it adopts the table a previous run left: reads it, and sends the one
///   transaction that turns it into the current snapshot's (nothing is flushed, so traffic
///   flows throughout a restart). Without a table it builds one.
/// - Every full sync reads the table back and repairs what differs from what it holds (a
///   chain flushed or deleted, a rule or an element deleted, the whole table deleted) with
///   the smallest transaction; the report's `repaired` counts what was found.
/// - Every transaction is atomic: a rejected one leaves the kernel as it was, and the next
///   sync adopts the kernel's table again instead of tearing it down.
#[derive(Debug)]
pub struct NftProxier<A = NftSocket> {
    renderer: Renderer,
    socket: A,
    conntrack: Cleanup,
    no_local: NoLocalEndpoints,
    engine: SyncEngine,
    committed: Option<Ruleset>,
    pending: Vec<(Pending, Instant)>,
    /// How long a flushed chain waits before it is deleted (default one second).
    pub chain_delete_delay: Duration,
}

fn io_error(e: ApplyError) -> SyncError {
    let kind = match &e {
        ApplyError::Io(_) => SyncErrorKind::Transient,
        ApplyError::Foreign { .. } => SyncErrorKind::Unavailable,
        ApplyError::Program { .. } | ApplyError::Rejected { .. } => SyncErrorKind::Rejected,
    };
    SyncError::new(ProxyMode::Nftables, kind, e)
}

impl<A: Applier> NftProxier<A> {
    /// A proxier that applies `renderer`'s rules through `socket` (an [`NftSocket`], or an
    /// [`NftProgram`]).
    pub fn new(renderer: Renderer, socket: A) -> Self {
        Self {
            renderer,
            socket,
            conntrack: Cleanup::default(),
            no_local: NoLocalEndpoints::default(),
            engine: SyncEngine::new(),
            committed: None,
            pending: Vec::new(),
            chain_delete_delay: Duration::from_secs(1),
        }
    }

    /// Also clears stale UDP conntrack entries after each sync (see [`crate::conntrack`]).
    #[must_use]
    pub fn with_conntrack(mut self, cleaner: impl ConntrackCleaner + 'static) -> Self {
        self.conntrack = Cleanup::new(cleaner);
        self
    }

    /// The ruleset the kernel holds, after a successful sync.
    pub fn rules(&self) -> Option<&Ruleset> {
        self.committed.as_ref()
    }

    /// The renderer.
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The applier.
    pub fn socket(&self) -> &A {
        &self.socket
    }

    /// The applier, to change (a test's in-memory kernel, say). What the proxier believes
    /// installed stays as it is: the next full sync reads the kernel and converges.
    pub fn socket_mut(&mut self) -> &mut A {
        &mut self.socket
    }

    /// Stale chains waiting to be deleted.
    pub fn pending_chain_deletes(&self) -> usize {
        self.pending.len()
    }

    fn family_of(&self) -> IpFamily {
        match self.renderer.family() {
            Family::Ip => IpFamily::Ipv4,
            Family::Ip6 => IpFamily::Ipv6,
        }
    }

    /// Sends the changes from the committed ruleset to `snapshot` (of the changed service
    /// ports only, for a partial plan) as one transaction.
    fn update(
        &mut self,
        mut rules: Ruleset,
        request: &SyncRequest<'_>,
        plan: &SyncPlan,
    ) -> Result<(NftablesReport, SyncKind, usize), ApplyError> {
        let only = (plan.kind == SyncKind::Partial).then_some(&plan.changed[..]);
        let update = self.renderer.update(&mut rules, request.snapshot, only);
        let mut report = NftablesReport::default();
        if !update.transaction.is_empty() {
            let stats = self.socket.apply(&[&update.transaction])?;
            report.transactions = 1;
            report.messages = stats.messages;
            report.bytes = stats.bytes;
        }
        for s in update.stale {
            self.pending.retain(|(p, _)| *p.name() != s.name);
            self.pending.push((Pending::Port(s), request.now));
        }
        self.committed = Some(rules);
        Ok((report, plan.kind, update.changed))
    }

    /// A full sync: reads the kernel's table and sends the one transaction that turns it
    /// into `snapshot`'s — whatever it holds: what we installed (nothing to send), what a
    /// previous run left (adopted, never flushed), or what someone changed behind our back
    /// (repaired). Builds the table when there is none. Returns the report and how many
    /// objects differed from what `previous` (the ruleset we believed installed) holds.
    fn converge(
        &mut self,
        previous: Option<&Ruleset>,
        snapshot: &Snapshot,
        now: Instant,
    ) -> Result<(NftablesReport, usize), ApplyError> {
        let family = self.renderer.family();
        let state = match self.socket.read_state(family)? {
            KernelView::Table(state) => state,
            KernelView::Absent => {
                let rules = self.renderer.render(snapshot);
                let report = self.create(&rules)?;
                self.pending.clear();
                self.committed = Some(rules);
                // A table we had installed is gone: that is one repair.
                return Ok((report, usize::from(previous.is_some())));
            }
            KernelView::Unreadable => {
                let rules = self.renderer.render(snapshot);
                let report = self.create(&rules)?;
                self.pending.clear();
                self.committed = Some(rules);
                return Ok((report, 0));
            }
        };
        if state.is_foreign() {
            return Err(ApplyError::Foreign {
                family: family.as_str(),
                table: super::TABLE,
            });
        }
        // What differs from what we installed, stale chains still waiting for their
        // delay aside: someone else's doing.
        let tampered = previous.map_or(0, |p| {
            let r = p.repair(&state);
            let waiting = r
                .stale_chains
                .iter()
                .filter(|n| {
                    self.pending.iter().any(|(p, _)| p.name() == *n)
                        && state.chains.get(&***n).is_some_and(|c| c.rules.is_empty())
                })
                .count();
            r.differences.saturating_sub(waiting)
        });
        let rules = self.renderer.render(snapshot);
        let repair = rules.repair(&state);
        let mut report = NftablesReport::default();
        if !repair.transaction.is_empty() {
            let stats = self.socket.apply(&[&repair.transaction])?;
            report.transactions = 1;
            report.messages = stats.messages;
            report.bytes = stats.bytes;
        }
        // Chains that should not exist wait for their delay; those already waiting keep
        // their time.
        self.pending
            .retain(|(p, _)| state.chains.contains_key(&**p.name()));
        for name in repair.stale_chains {
            if !self.pending.iter().any(|(p, _)| *p.name() == name) {
                self.pending.push((Pending::Orphan(name), now));
            }
        }
        self.committed = Some(rules);
        Ok((report, tampered))
    }

    /// Deletes the stale chains whose delay has passed, in a transaction of their own (a
    /// refusal there never holds up a sync): all at once, or one by one when the kernel
    /// refuses the batch; a chain it still refuses waits another delay.
    fn delete_stale_chains(&mut self, now: Instant, report: &mut NftablesReport) {
        let Some(rules) = self.committed.as_ref() else {
            return;
        };
        let mut due = Vec::new();
        let mut keep = Vec::new();
        for (stale, since) in std::mem::take(&mut self.pending) {
            if stale.revived(rules) {
                continue;
            }
            if now.saturating_duration_since(since) >= self.chain_delete_delay {
                due.push(stale);
            } else {
                keep.push((stale, since));
            }
        }
        let family = self.renderer.family();
        let tx_of = |names: &[&Pending]| {
            let mut tx = Transaction::new(family);
            tx.ops
                .extend(names.iter().map(|p| Op::DeleteChain(p.name().clone())));
            tx
        };
        let count = |report: &mut NftablesReport, stats: BatchStats, chains: usize| {
            report.transactions += 1;
            report.messages += stats.messages;
            report.bytes += stats.bytes;
            report.chains_deleted += chains;
        };
        if !due.is_empty() {
            match self
                .socket
                .apply(&[&tx_of(&due.iter().collect::<Vec<_>>())])
            {
                Ok(stats) => count(report, stats, due.len()),
                Err(_) => {
                    for stale in due {
                        match self.socket.apply(&[&tx_of(&[&stale])]) {
                            Ok(stats) => count(report, stats, 1),
                            Err(_) => keep.push((stale, now)),
                        }
                    }
                }
            }
        }
        self.pending = keep;
    }

    /// Sends the whole table (any old one deleted first) as one transaction: the kernel
    /// holds the old table or the new one, never a part (measured: 30 000 services of ten
    /// endpoints load in about 5 s, `benches/examples/nft_atomic_load.rs`).
    fn create(&mut self, rules: &Ruleset) -> Result<NftablesReport, ApplyError> {
        let tx = rules.create_one();
        let s = self.socket.apply(&[&tx])?;
        Ok(NftablesReport {
            transactions: 1,
            messages: s.messages,
            bytes: s.bytes,
            chains_deleted: 0,
        })
    }
}

impl<A: Applier> Proxier for NftProxier<A> {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn family(&self) -> IpFamily {
        self.family_of()
    }

    /// Brings the kernel to the snapshot: the first sync (and the first after a failure)
    /// adopts the kernel's table (or builds one); later ones send one transaction with the
    /// changes of the changed service ports (of every port, when full). A full sync then
    /// reads the table back and repairs what someone else changed.
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let snapshot = request.snapshot;
        if request.full {
            self.engine.force_full();
        }
        if !self.socket.incremental() {
            self.committed = None;
        }
        let first = self.committed.is_none();
        let plan = self.engine.plan(snapshot, request.changed);
        let full = plan.kind == SyncKind::Full;
        let result = match self.committed.take() {
            Some(rules) if !full => self
                .update(rules, &request, &plan)
                .map(|(r, kind, n)| (r, kind, n, 0)),
            previous => self
                .converge(previous.as_ref(), snapshot, request.now)
                .map(|(r, repaired)| (r, SyncKind::Full, snapshot.ports.len(), repaired)),
        };
        let (mut detail, kind, ports, repaired) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing of the refused transaction was applied: the next sync reads the
                // kernel's table and converges from there.
                self.engine.failed();
                self.committed = None;
                return Err(io_error(e));
            }
        };
        self.delete_stale_chains(request.now, &mut detail);
        let family = self.family_of();
        // The ports to look at for conntrack and reports: those the plan re-rendered
        // (named by the caller, or found by a diff that skips what the snapshots share).
        let changed_set = (kind == SyncKind::Partial)
            .then(|| plan.changed_set())
            .flatten();
        let changed = changed_set.as_ref();
        let mut report = SyncReport::new(kind, BackendReport::Nftables(detail));
        report.wrote = detail.transactions > 0;
        report.service_ports_changed = ports;
        report.repaired = repaired;
        let last = if first { None } else { self.engine.last() };
        report.endpoints_changed = endpoints_changed(last, snapshot, &family, changed);
        let filters = stale_filters(self.engine.last(), snapshot, &family, changed);
        let cleaned = self.conntrack.run(&family, filters);
        report.conntrack_deleted = cleaned.deleted;
        report.conntrack_failed = cleaned.failed;
        report.no_local_endpoints = self.no_local.update(snapshot, &family, changed);
        self.engine.committed(snapshot.clone());
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Forces the next sync to compare every service port (not to rebuild the table).
    fn force_full(&mut self) {
        self.engine.force_full();
    }

    /// Deletes our table (and nothing else). A kernel without nf_tables has no table to
    /// delete: that is a success.
    fn cleanup(&mut self) -> Result<(), SyncError> {
        let mut tx = Transaction::new(self.renderer.family());
        tx.ops.push(Op::DeleteTable);
        match self.socket.apply(&[&tx]) {
            Ok(_) => {}
            Err(ApplyError::Rejected { error, .. })
                if error.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {}
            Err(e) => return Err(io_error(e)),
        }
        self.committed = None;
        self.pending.clear();
        self.engine = SyncEngine::new();
        Ok(())
    }
}
