//! Applying rule sets to the kernel with `iptables-restore --noflush` (and
//! `ip6tables-restore`), fed on stdin and never through a shell.
//!
//! - A full apply also reconciles the jump rules in the built-in chains, creates the
//!   `KUBE-PROXY-CANARY` chain in mangle, nat and filter, and deletes service chains the
//!   kernel holds that the rule set does not (left over from an earlier run).
//! - [`Applier::canary_present`] tells whether someone flushed the tables (firewalld, an
//!   `iptables -F`); the [`IptablesProxier`] then forces a full resync.
//! - [`Applier::cleanup`] removes every jump rule and chain the proxy creates, and nothing
//!   else.
//!
//! All process execution goes through a [`Runner`]; [`SystemRunner`] runs the real tools
//! (optionally inside a named network namespace); `service_testkit::FakeRunner` records
//! for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use service_core::model::IpFamily;

use super::model::{ChainName, FixedChain, RuleSet, Table};
use super::render::Renderer;
use super::{IptablesReport, JumpRule, jump_rules};
use crate::conntrack::{Cleanup, ConntrackCleaner, stale_filters};
use crate::proxier::{
    BackendReport, NoLocalEndpoints, Proxier, ProxyMode, SyncError, SyncErrorKind, SyncReport,
    SyncRequest, endpoints_changed,
};
use crate::sync::{SyncEngine, SyncKind};

/// Running `iptables-restore` or `iptables-save` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with an error.
    #[error("{program} failed ({status}): {stderr}{}", if input.is_empty() { String::new() } else { format!("\ninput near the failure:\n{input}") })]
    Failed {
        /// The program and its arguments.
        program: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
        /// The input lines around the one it reported (or the input's start).
        input: String,
    },
}

/// Runs the iptables programs.
pub trait Runner {
    /// Feeds `input` to `iptables-restore` (or `ip6tables-restore`) with `--noflush`.
    ///
    /// # Errors
    /// The program failed.
    /// The input is given as chunks written in order (the rule text is not copied into one
    /// buffer; a 10k-service rule set is ~30 MB).
    fn restore(&mut self, ipv6: bool, input: &[&[u8]]) -> Result<(), ApplyError>;

    /// Returns `iptables-save -t TABLE` (or `ip6tables-save`).
    ///
    /// # Errors
    /// The program failed.
    fn save(&mut self, ipv6: bool, table: Table) -> Result<String, ApplyError>;

    /// Whether a chain exists (`iptables -t TABLE -S CHAIN`, which lists that chain only:
    /// with iptables-nft much cheaper than saving the table).
    ///
    /// # Errors
    /// The program could not run, or failed for another reason than a missing chain.
    fn chain_exists(&mut self, ipv6: bool, table: Table, chain: &str) -> Result<bool, ApplyError>;

    /// Runs `ipset ARGS...` (the IPVS backend's sets), feeding `input` on stdin; returns
    /// what it printed.
    ///
    /// # Errors
    /// The program could not run or failed.
    fn ipset(&mut self, args: &[&str], input: Option<&[u8]>) -> Result<String, ApplyError>;
}

/// Which iptables implementation to run.
///
/// Hosts use one of the two: rules of the other are invisible to it, and packets traverse
/// both. Pick the one the host's other tools use ([`Flavor::detect`] guesses as kube-proxy's
/// `iptables-wrapper` does). Note that iptables-nft 1.8.9's `--noflush` restore does a
/// linear chain-name search per rule, so its cost grows with rules × chains (1k Services ×
/// 10 endpoints: ~4 s, 2k: ~34 s); iptables-legacy restores 10k × 10 in ~8 s. At that
/// scale prefer legacy, or the nftables backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// `iptables-restore`, whichever the system's alternative points to.
    #[default]
    System,
    /// `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-restore`.
    Legacy,
}

impl Flavor {
    fn program(self, base: &str) -> String {
        match self {
            Self::System => base.to_owned(),
            Self::Nft => base.replacen("tables-", "tables-nft-", 1),
            Self::Legacy => base.replacen("tables-", "tables-legacy-", 1),
        }
    }

    /// Guesses the host's flavour as kube-proxy's `iptables-wrapper` does: legacy if the
    /// legacy tables hold more rules than the nft ones (they are not empty), else the
    /// system default.
    pub fn detect(runner: &SystemRunner) -> Self {
        let count = |flavor: Self| {
            let r = SystemRunner {
                netns: runner.netns.clone(),
                flavor,
            };
            r.run(&flavor.program("iptables-save"), &[], None)
                .map(|t| t.lines().filter(|l| l.starts_with("-A ")).count())
                .unwrap_or(0)
        };
        if count(Self::Legacy) > count(Self::Nft) {
            Self::Legacy
        } else {
            Self::System
        }
    }
}

/// Runs the real programs, optionally inside a network namespace (`ip netns exec NAME`).
#[derive(Clone, Debug, Default)]
pub struct SystemRunner {
    netns: Option<String>,
    flavor: Flavor,
}

impl SystemRunner {
    /// Runs the programs in the current network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the programs inside the named network namespace (via `ip netns exec`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_owned()),
            flavor: Flavor::System,
        }
    }

    /// Runs a given iptables flavour.
    #[must_use]
    pub fn with_flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[&[u8]]>,
    ) -> Result<String, ApplyError> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let display = format!("{program} {}", args.join(" "));
        let mut child = cmd.spawn().map_err(|source| ApplyError::Spawn {
            program: display.clone(),
            source,
        })?;
        // Write stdin from another thread while this one drains stdout and stderr, so a
        // large input cannot deadlock against a full output pipe.
        let out = std::thread::scope(|scope| {
            if let (Some(chunks), Some(mut stdin)) = (input, child.stdin.take()) {
                scope.spawn(move || {
                    for c in chunks {
                        // A failing write (the program died early) shows in its exit status.
                        if stdin.write_all(c).is_err() {
                            break;
                        }
                    }
                });
            }
            child.wait_with_output()
        });
        let out = out.map_err(|source| ApplyError::Spawn {
            program: display.clone(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(ApplyError::Failed {
                program: display,
                status: out.status.to_string(),
                input: excerpt(&input.unwrap_or_default().concat(), &stderr),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The input lines around the line an `iptables-restore` error names ("line 12 failed"),
/// or the first lines when it names none.
fn excerpt(input: &[u8], stderr: &str) -> String {
    let text = String::from_utf8_lossy(input);
    let line: Option<usize> = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let (from, to) = match line {
        Some(n) if n > 0 => (n.saturating_sub(3), n + 2),
        _ => (0, 5),
    };
    text.lines()
        .enumerate()
        .skip(from)
        .take(to - from)
        .map(|(i, l)| format!("{:>6}: {l}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Runner for SystemRunner {
    fn restore(&mut self, ipv6: bool, input: &[&[u8]]) -> Result<(), ApplyError> {
        let program = self.flavor.program(if ipv6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        });
        // -w: wait for the xtables lock instead of failing.
        self.run(
            &program,
            &["-w", "5", "--noflush", "--counters"],
            Some(input),
        )
        .map(|_| ())
    }

    fn save(&mut self, ipv6: bool, table: Table) -> Result<String, ApplyError> {
        let program = self.flavor.program(if ipv6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        });
        self.run(&program, &["-t", table.as_str()], None)
    }

    fn chain_exists(&mut self, ipv6: bool, table: Table, chain: &str) -> Result<bool, ApplyError> {
        let program = self
            .flavor
            .program(if ipv6 { "ip6tables-x" } else { "iptables-x" });
        let program = program.trim_end_matches("-x");
        match self.run(
            program,
            &["-w", "5", "-t", table.as_str(), "-S", chain],
            None,
        ) {
            Ok(_) => Ok(true),
            // Exit status 1: "No chain/target/match by that name" (legacy), "... is
            // incompatible, use 'nft' tool" (iptables-nft 1.8.9 on a deleted chain). Either
            // way the chain is not there as ours; a full resync recreates it.
            Err(ApplyError::Failed { status, .. }) if status.ends_with("status: 1") => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn ipset(&mut self, args: &[&str], input: Option<&[u8]>) -> Result<String, ApplyError> {
        let chunks: Option<[&[u8]; 1]> = input.map(|i| [i]);
        self.run("ipset", args, chunks.as_ref().map(|c| &c[..]))
    }
}

/// What `iptables-save` shows of one table.
#[derive(Debug, Default)]
struct Saved {
    chains: BTreeSet<String>,
    /// `-A CHAIN args` lines, in order.
    rules: Vec<(String, String)>,
}

fn parse_save(text: &str) -> Saved {
    let mut s = Saved::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                s.chains.insert(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
            s.rules.push((chain.to_owned(), args.to_owned()));
        }
    }
    s
}

/// The chain a saved rule jumps to (`-j NAME`).
fn jump_target(args: &str) -> Option<&str> {
    let mut it = args.split_whitespace();
    while let Some(w) = it.next() {
        if w == "-j" || w == "-g" {
            return it.next();
        }
    }
    None
}

const CANARY: &str = "KUBE-PROXY-CANARY";

fn is_ours(chain: &str) -> bool {
    ChainName::parse(chain).is_some_and(|c| match c {
        ChainName::Service(..) => true,
        ChainName::Fixed(f) => !matches!(
            f,
            FixedChain::Input
                | FixedChain::Output
                | FixedChain::Forward
                | FixedChain::Prerouting
                | FixedChain::Postrouting
        ),
    })
}

/// Applies rule sets of one IP family.
#[derive(Debug)]
pub struct Applier<R: Runner> {
    runner: R,
    ipv6: bool,
    localhost_nodeports: bool,
    /// Buffers for the chain lines of partial restores, reused across syncs.
    scratch: [Vec<u8>; 4],
}

impl<R: Runner> Applier<R> {
    /// An applier for one family.
    pub fn new(runner: R, ipv6: bool, localhost_nodeports: bool) -> Self {
        Self {
            runner,
            ipv6,
            localhost_nodeports,
            scratch: Default::default(),
        }
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// The runner, mutably (tests use this to script failures).
    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    fn jumps(&self) -> Vec<JumpRule> {
        jump_rules(self.ipv6, self.localhost_nodeports)
    }

    /// Whether the canary chain is still in the mangle table.
    ///
    /// # Errors
    /// `iptables-save` failed.
    pub fn canary_present(&mut self) -> Result<bool, ApplyError> {
        self.runner.chain_exists(self.ipv6, Table::Mangle, CANARY)
    }

    /// Applies a rule set. A full set also reconciles jump rules, creates the canary chains
    /// and deletes leftover service chains; a partial set is restored as is.
    ///
    /// # Errors
    /// `iptables-save` or `iptables-restore` failed; the kernel is unchanged by the failed
    /// restore (iptables-restore commits each table atomically).
    pub fn apply(&mut self, rules: &RuleSet) -> Result<(), ApplyError> {
        if !rules.full {
            let chunks = rules.restore_chunks(&mut self.scratch);
            return self.runner.restore(self.ipv6, &chunks);
        }
        // head and tail of each table around its borrowed segments.
        let mut heads: [Vec<u8>; 2] = Default::default();
        let mut tails: [Vec<u8>; 2] = Default::default();
        heads[0].extend_from_slice(b"*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
        let jumps = self.jumps();
        for (k, (table, t)) in [(Table::Filter, &rules.filter), (Table::Nat, &rules.nat)]
            .into_iter()
            .enumerate()
        {
            let saved = parse_save(&self.runner.save(self.ipv6, table)?);
            let text = &mut heads[k];
            text.push(b'*');
            text.extend_from_slice(table.as_str().as_bytes());
            text.push(b'\n');
            text.extend_from_slice(b":KUBE-PROXY-CANARY - [0:0]\n");
            let mut written: BTreeSet<String> = t
                .chains
                .iter()
                .chain(&t.deleted)
                .map(ToString::to_string)
                .collect();
            written.insert(CANARY.into());
            for c in t.chains.iter().chain(&t.deleted) {
                text.push(b':');
                c.write_to(text);
                text.extend_from_slice(b" - [0:0]\n");
            }
            // Leftover service chains from an earlier run: flush and delete.
            let leftovers: Vec<&String> = saved
                .chains
                .iter()
                .filter(|c| ChainName::parse(c).is_some_and(|n| n.is_service_chain()))
                .filter(|c| !written.contains(*c))
                .collect();
            for c in &leftovers {
                text.push(b':');
                text.extend_from_slice(c.as_bytes());
                text.extend_from_slice(b" - [0:0]\n");
            }
            // Jump rules: if a built-in chain does not hold exactly ours, in order, at
            // the top, delete ours and insert them again in order.
            let ours: Vec<&JumpRule> = jumps.iter().filter(|j| j.table == table).collect();
            let mut by_chain: BTreeMap<FixedChain, Vec<&JumpRule>> = BTreeMap::new();
            for j in &ours {
                by_chain.entry(j.from).or_default().push(j);
            }
            let mut jump_text = String::new();
            for (from, want) in by_chain {
                let present: Vec<&(String, String)> = saved
                    .rules
                    .iter()
                    .filter(|(c, a)| c == from.as_str() && jump_target(a).is_some_and(is_ours))
                    .collect();
                let want_targets: Vec<String> = want
                    .iter()
                    .map(|j| match j.rule.target {
                        Some(super::Target::Jump(c)) => c.to_string(),
                        _ => String::new(),
                    })
                    .collect();
                let leading: Vec<String> = saved
                    .rules
                    .iter()
                    .filter(|(c, _)| c == from.as_str())
                    .take(want.len())
                    .filter_map(|(_, a)| jump_target(a).map(str::to_owned))
                    .collect();
                if present.len() == want.len() && leading == want_targets {
                    continue;
                }
                for (c, a) in &present {
                    jump_text.push_str("-D ");
                    jump_text.push_str(c);
                    jump_text.push(' ');
                    jump_text.push_str(a);
                    jump_text.push('\n');
                }
                for (i, j) in want.iter().enumerate() {
                    jump_text.push_str(&format!("-I {} {} {}\n", from.as_str(), i + 1, j.args()));
                }
            }
            let text = &mut tails[k];
            text.extend_from_slice(jump_text.as_bytes());
            for c in t
                .deleted
                .iter()
                .map(ToString::to_string)
                .chain(leftovers.iter().map(|c| (*c).clone()))
            {
                text.extend_from_slice(b"-X ");
                text.extend_from_slice(c.as_bytes());
                text.push(b'\n');
            }
            text.extend_from_slice(b"COMMIT\n");
        }
        let mut chunks: Vec<&[u8]> = Vec::new();
        for (k, t) in [&rules.filter, &rules.nat].into_iter().enumerate() {
            chunks.push(&heads[k]);
            chunks.extend(t.segments.iter().map(|s| s.bytes()));
            chunks.push(&tails[k]);
        }
        self.runner.restore(self.ipv6, &chunks)
    }

    /// Removes every jump rule and chain the proxy creates (fixed, per-service, canary),
    /// and nothing else. `KUBE-FIREWALL` is kept if something else still jumps to it
    /// (kubelet maintains the same chain).
    ///
    /// # Errors
    /// `iptables-save` or `iptables-restore` failed.
    pub fn cleanup(&mut self) -> Result<(), ApplyError> {
        let mut input = String::new();
        for table in [Table::Filter, Table::Nat, Table::Mangle] {
            let saved = parse_save(&self.runner.save(self.ipv6, table)?);
            // Our jump rules as iptables-save prints them.
            let our_jumps: BTreeSet<(String, String)> = self
                .jumps()
                .iter()
                .filter(|j| j.table == table)
                .map(|j| (j.from.as_str().to_owned(), j.args()))
                .collect();
            // KUBE-FIREWALL is shared with kubelet: a jump to it is ours only if it is
            // exactly one of our jump rules; other jumps to it keep the chain alive.
            let is_firewall_jump = |a: &str| jump_target(a) == Some("KUBE-FIREWALL");
            let foreign_firewall = saved.rules.iter().any(|(c, a)| {
                !is_ours(c) && is_firewall_jump(a) && !our_jumps.contains(&(c.clone(), a.clone()))
            });
            let ours_jumps: Vec<&(String, String)> = saved
                .rules
                .iter()
                .filter(|(c, a)| !is_ours(c) && jump_target(a).is_some_and(is_ours))
                .filter(|(c, a)| {
                    !is_firewall_jump(a) || our_jumps.contains(&(c.clone(), a.clone()))
                })
                .collect();
            let mut chains: Vec<&String> = saved.chains.iter().filter(|c| is_ours(c)).collect();
            if foreign_firewall {
                chains.retain(|c| c.as_str() != "KUBE-FIREWALL");
            }
            if chains.is_empty() && ours_jumps.is_empty() {
                continue;
            }
            input.push('*');
            input.push_str(table.as_str());
            input.push('\n');
            for c in &chains {
                input.push(':');
                input.push_str(c);
                input.push_str(" - [0:0]\n");
            }
            for (c, a) in &ours_jumps {
                input.push_str("-D ");
                input.push_str(c);
                input.push(' ');
                input.push_str(a);
                input.push('\n');
            }
            for c in &chains {
                input.push_str("-X ");
                input.push_str(c);
                input.push('\n');
            }
            input.push_str("COMMIT\n");
        }
        if input.is_empty() {
            return Ok(());
        }
        self.runner.restore(self.ipv6, &[input.as_bytes()])
    }
}

/// The iptables proxy for one family: renders, applies, and keeps the kernel in sync.
#[derive(Debug)]
pub struct IptablesProxier<R: Runner> {
    renderer: Renderer,
    applier: Applier<R>,
    engine: SyncEngine,
    conntrack: Cleanup,
    no_local: NoLocalEndpoints,
    family: IpFamily,
}

impl<R: Runner> IptablesProxier<R> {
    /// A proxier from a renderer and the runner of its programs (same family).
    pub fn new(renderer: Renderer, runner: R) -> Self {
        let ipv6 = renderer.ipv6();
        let localhost = renderer.config().proxy.localhost_nodeports;
        Self {
            renderer,
            applier: Applier::new(runner, ipv6, localhost),
            engine: SyncEngine::new(),
            conntrack: Cleanup::default(),
            no_local: NoLocalEndpoints::default(),
            family: if ipv6 { IpFamily::Ipv6 } else { IpFamily::Ipv4 },
        }
    }

    /// Also clears stale UDP conntrack entries after each sync (see [`crate::conntrack`]).
    #[must_use]
    pub fn with_conntrack(mut self, cleaner: impl ConntrackCleaner + 'static) -> Self {
        self.conntrack = Cleanup::new(cleaner);
        self
    }

    /// The applier.
    pub fn applier_mut(&mut self) -> &mut Applier<R> {
        &mut self.applier
    }

    /// The full rule set the kernel should hold now (for tracing).
    pub fn current_rules(&mut self) -> Option<RuleSet> {
        let snap = self.engine.last()?.clone();
        Some(self.renderer.full(&snap))
    }
}

fn error(e: ApplyError) -> SyncError {
    let kind = match &e {
        ApplyError::Spawn { .. } => SyncErrorKind::Unavailable,
        ApplyError::Failed { .. } => SyncErrorKind::Rejected,
    };
    SyncError::new(ProxyMode::Iptables, kind, e)
}

impl<R: Runner> Proxier for IptablesProxier<R> {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Iptables
    }

    fn family(&self) -> IpFamily {
        self.family.clone()
    }

    /// Brings the kernel to the snapshot: a partial sync when possible, a full one first,
    /// after a failure, when asked, or when the canary chain is gone. A failed partial
    /// restore is retried at once as a full one.
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let snapshot = request.snapshot;
        if request.full {
            self.engine.force_full();
        }
        // Someone flushed our tables (firewalld, an administrator): the full sync repairs it.
        let flushed =
            self.engine.last().is_some() && !self.applier.canary_present().map_err(error)?;
        if flushed {
            self.engine.force_full();
        }
        let plan = self.engine.plan(snapshot, request.changed);
        let mut detail = IptablesReport::default();
        let (rules, mut kind) = match plan.kind {
            SyncKind::Full => (Some(self.renderer.full(snapshot)), SyncKind::Full),
            _ if plan.is_noop() => (None, SyncKind::Partial),
            _ => (
                Some(self.renderer.partial(snapshot, &plan.changed)),
                SyncKind::Partial,
            ),
        };
        if let Some(rules) = rules {
            if rules.full {
                kind = SyncKind::Full;
            }
            detail.filter_rules = rules.filter.rule_count();
            detail.nat_rules = rules.nat.rule_count();
            detail.rules = detail.filter_rules + detail.nat_rules;
            if let Err(e) = self.applier.apply(&rules) {
                if kind == SyncKind::Full {
                    self.engine.failed();
                    return Err(error(e));
                }
                // The kernel may not hold what the renderer believes: start over in full.
                self.renderer.reset();
                let full = self.renderer.full(snapshot);
                detail.filter_rules = full.filter.rule_count();
                detail.nat_rules = full.nat.rule_count();
                detail.rules = detail.filter_rules + detail.nat_rules;
                if let Err(e) = self.applier.apply(&full) {
                    self.engine.failed();
                    return Err(error(e));
                }
                kind = SyncKind::Full;
                detail.recovered = true;
            }
        }
        let wrote = detail.rules > 0 || kind == SyncKind::Full;
        let changed_set = (kind == SyncKind::Partial)
            .then(|| plan.changed_set())
            .flatten();
        let changed = changed_set.as_ref();
        let mut report = SyncReport::new(kind, BackendReport::Iptables(detail));
        report.wrote = wrote;
        report.repaired = usize::from(flushed) + usize::from(detail.recovered);
        report.service_ports_changed = match kind {
            SyncKind::Full => snapshot.ports.len(),
            _ => plan.changed.len(),
        };
        let last = self.engine.last();
        report.endpoints_changed = endpoints_changed(last, snapshot, &self.family, changed);
        let filters = stale_filters(last, snapshot, &self.family, changed);
        // Stale conntrack entries cost a retry, not correctness of the rules: a failure is
        // reported and the filters are retried with the next sync.
        let cleaned = self.conntrack.run(&self.family, filters);
        report.conntrack_deleted = cleaned.deleted;
        report.conntrack_failed = cleaned.failed;
        report.no_local_endpoints = self.no_local.update(snapshot, &self.family, changed);
        self.engine.committed(snapshot.clone());
        report.duration = start.elapsed();
        Ok(report)
    }

    fn force_full(&mut self) {
        self.engine.force_full();
    }

    /// Removes everything the proxy installed (see [`Applier::cleanup`]).
    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.renderer.reset();
        self.engine.force_full();
        self.applier.cleanup().map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_programs() {
        assert_eq!(
            Flavor::System.program("ip6tables-restore"),
            "ip6tables-restore"
        );
        assert_eq!(Flavor::Nft.program("iptables-save"), "iptables-nft-save");
        assert_eq!(
            Flavor::Legacy.program("ip6tables-restore"),
            "ip6tables-legacy-restore"
        );
    }
}
