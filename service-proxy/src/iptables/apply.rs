//! Applying rule sets to the kernel with `iptables-restore --noflush` (and
//! `ip6tables-restore`), fed on stdin and never through a shell.
//!
//! - A full apply also reconciles the jump rules in the built-in chains, creates the
//!   `KUBE-PROXY-CANARY` chain in mangle, nat and filter, and deletes service chains the
//!   kernel holds that the rule set does not (left over from an earlier run).
//! - [`Applier::canary_present`] tells whether someone flushed the tables (firewalld, an
//!   `iptables -F`); the [`Proxier`] then forces a full resync.
//! - [`Applier::cleanup`] removes every jump rule and chain the proxy creates, and nothing
//!   else.
//!
//! All process execution goes through a [`Runner`]; [`SystemRunner`] runs the real tools
//! (optionally inside a named network namespace), [`FakeRunner`] records for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;

use super::model::{ChainName, FixedChain, RuleSet, Table};
use super::render::Renderer;
use super::{JumpRule, jump_rules};
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

/// Records restores and serves canned `iptables-save` output, for tests.
#[derive(Clone, Debug, Default)]
pub struct FakeRunner {
    /// Every restore input, in order.
    pub restores: Vec<String>,
    /// What `save` returns per (ipv6, table).
    pub saved: BTreeMap<(bool, Table), String>,
    /// Fail the next this-many restores.
    pub fail_restores: usize,
    /// Every `ipset` command line, with its input after a newline.
    pub ipset_calls: Vec<String>,
    /// What `ipset save` returns.
    pub ipset_saved: String,
}

impl Runner for FakeRunner {
    fn restore(&mut self, _ipv6: bool, input: &[&[u8]]) -> Result<(), ApplyError> {
        let input = input.concat();
        self.restores
            .push(String::from_utf8_lossy(&input).into_owned());
        if self.fail_restores > 0 {
            self.fail_restores -= 1;
            let stderr = "iptables-restore: line 1 failed".to_owned();
            return Err(ApplyError::Failed {
                program: "iptables-restore".into(),
                status: "exit status: 2".into(),
                input: excerpt(&input, &stderr),
                stderr,
            });
        }
        Ok(())
    }

    fn save(&mut self, ipv6: bool, table: Table) -> Result<String, ApplyError> {
        Ok(self.saved.get(&(ipv6, table)).cloned().unwrap_or_default())
    }

    fn chain_exists(&mut self, ipv6: bool, table: Table, chain: &str) -> Result<bool, ApplyError> {
        let text = self.saved.get(&(ipv6, table)).cloned().unwrap_or_default();
        Ok(text.lines().any(|l| {
            l.strip_prefix(':')
                .and_then(|r| r.split_whitespace().next())
                == Some(chain)
        }))
    }
    fn ipset(&mut self, args: &[&str], input: Option<&[u8]>) -> Result<String, ApplyError> {
        let mut call = args.join(" ");
        if let Some(input) = input {
            call.push('\n');
            call.push_str(&String::from_utf8_lossy(input));
        }
        self.ipset_calls.push(call);
        Ok(if args == ["save"] {
            self.ipset_saved.clone()
        } else {
            String::new()
        })
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

/// Removes stale conntrack entries after a sync.
pub trait ConntrackCleaner {
    /// Deletes entries matching any filter; returns how many.
    ///
    /// # Errors
    /// Talking to the kernel failed.
    fn clear(
        &mut self,
        family: &IpFamily,
        filters: &[crate::conntrack::Filter],
    ) -> std::io::Result<usize>;
}

impl ConntrackCleaner for crate::conntrack::Conntrack {
    fn clear(
        &mut self,
        family: &IpFamily,
        filters: &[crate::conntrack::Filter],
    ) -> std::io::Result<usize> {
        self.delete_matching(family, filters)
    }
}

/// A cleaner that does nothing (when conntrack is not to be touched).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConntrack;

impl ConntrackCleaner for NoConntrack {
    fn clear(&mut self, _: &IpFamily, _: &[crate::conntrack::Filter]) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Full or partial (a partial sync that failed and was redone in full reports `Full`).
    pub kind: SyncKind,
    /// Whether anything was written.
    pub wrote: bool,
    /// Service ports re-rendered (partial syncs).
    pub changed: usize,
    /// Rules in the restore input.
    pub rules: usize,
    /// How long the sync took, render to kernel.
    pub duration: Duration,
    /// Stale conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Whether a failed partial restore was retried in full.
    pub recovered: bool,
}

/// The iptables proxy for one family: renders, applies, and keeps the kernel in sync.
#[derive(Debug)]
pub struct Proxier<R: Runner, C: ConntrackCleaner = NoConntrack> {
    renderer: Renderer,
    applier: Applier<R>,
    engine: SyncEngine,
    conntrack: C,
    family: IpFamily,
}

impl<R: Runner, C: ConntrackCleaner> Proxier<R, C> {
    /// A proxier from a renderer and an applier of the same family.
    pub fn new(renderer: Renderer, runner: R, conntrack: C) -> Self {
        let ipv6 = renderer.ipv6();
        let localhost = renderer.config().proxy.localhost_nodeports;
        Self {
            renderer,
            applier: Applier::new(runner, ipv6, localhost),
            engine: SyncEngine::new(),
            conntrack,
            family: if ipv6 { IpFamily::Ipv6 } else { IpFamily::Ipv4 },
        }
    }

    /// The applier.
    pub fn applier_mut(&mut self) -> &mut Applier<R> {
        &mut self.applier
    }

    /// Forces the next sync to be full (e.g. periodically).
    pub fn force_full(&mut self) {
        self.engine.force_full();
    }

    /// The full rule set the kernel should hold now (for tracing).
    pub fn current_rules(&mut self) -> Option<RuleSet> {
        let snap = self.engine.last()?.clone();
        Some(self.renderer.full(&snap))
    }

    /// Brings the kernel to `snapshot`: a partial sync when possible, a full one first,
    /// after a failure, or when the canary chain is gone. A failed partial restore is
    /// retried at once as a full one.
    ///
    /// # Errors
    /// The sync failed even in full; the next sync will be full.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<SyncReport, ApplyError> {
        let start = Instant::now();
        if self.engine.last().is_some() && !self.applier.canary_present()? {
            self.engine.force_full();
        }
        let plan = self.engine.plan(snapshot);
        if plan.is_noop() {
            return Ok(SyncReport {
                kind: SyncKind::Partial,
                wrote: false,
                changed: 0,
                rules: 0,
                duration: start.elapsed(),
                conntrack_deleted: 0,
                recovered: false,
            });
        }
        let (rules, mut kind) = match plan.kind {
            SyncKind::Full => (self.renderer.full(snapshot), SyncKind::Full),
            _ => (
                self.renderer.partial(snapshot, &plan.changed),
                SyncKind::Partial,
            ),
        };
        if rules.full {
            kind = SyncKind::Full;
        }
        let mut recovered = false;
        let mut count = rules.filter.rule_count() + rules.nat.rule_count();
        if let Err(e) = self.applier.apply(&rules) {
            if kind == SyncKind::Full {
                self.engine.failed();
                return Err(e);
            }
            // The kernel may not hold what the renderer believes: start over in full.
            self.renderer.reset();
            let full = self.renderer.full(snapshot);
            count = full.filter.rule_count() + full.nat.rule_count();
            if let Err(e) = self.applier.apply(&full) {
                self.engine.failed();
                return Err(e);
            }
            kind = SyncKind::Full;
            recovered = true;
        }
        let filters = crate::conntrack::stale_filters(self.engine.last(), snapshot, &self.family);
        // Stale conntrack entries cost a retry, not correctness of the rules: a failure
        // here is reported in the count only.
        let conntrack_deleted = self.conntrack.clear(&self.family, &filters).unwrap_or(0);
        self.engine.committed(snapshot.clone());
        Ok(SyncReport {
            kind,
            wrote: true,
            changed: plan.changed.len(),
            rules: count,
            duration: start.elapsed(),
            conntrack_deleted,
            recovered,
        })
    }

    /// Removes everything the proxy installed.
    ///
    /// # Errors
    /// See [`Applier::cleanup`].
    pub fn cleanup(&mut self) -> Result<(), ApplyError> {
        self.renderer.reset();
        self.engine.force_full();
        self.applier.cleanup()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyConfig;
    use crate::iptables::IptablesConfig;
    use service_testkit::fixtures;

    fn proxier() -> Proxier<FakeRunner> {
        let mut proxy = ProxyConfig::default();
        proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        Proxier::new(
            Renderer::new(IptablesConfig::new(proxy), false),
            FakeRunner::default(),
            NoConntrack,
        )
    }

    fn canary(p: &mut Proxier<FakeRunner>) {
        p.applier_mut().runner_mut().saved.insert(
            (false, Table::Mangle),
            ":KUBE-PROXY-CANARY - [0:0]\n".into(),
        );
    }

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

    #[test]
    fn first_sync_is_full_and_installs_jumps_and_canary() {
        let mut p = proxier();
        let report = p.sync(&fixtures::kube_proxy_snapshot()).unwrap();
        assert_eq!(report.kind, SyncKind::Full);
        let input = &p.applier_mut().runner().restores[0];
        assert!(input.starts_with("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n*filter\n"));
        assert!(input.contains("-I INPUT 1 -j KUBE-FIREWALL\n"));
        assert!(input.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-I FORWARD 4 -m comment --comment \"kubernetes externally-visible service portals\" -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES\n"));
    }

    #[test]
    fn unchanged_snapshot_writes_nothing_and_a_change_is_partial() {
        let mut p = proxier();
        let snap = fixtures::kube_proxy_snapshot();
        p.sync(&snap).unwrap();
        canary(&mut p);
        let r = p.sync(&snap).unwrap();
        assert!(!r.wrote);
        assert_eq!(p.applier_mut().runner().restores.len(), 1);
        let yaml = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.9]");
        let c = fixtures::cluster(&yaml);
        let next = snap
            .rebuild(
                snap.node.as_ref().clone(),
                &c.services,
                &c.endpoint_slices,
                &[],
            )
            .unwrap();
        let r = p.sync(&next).unwrap();
        assert_eq!(r.kind, SyncKind::Partial);
        assert_eq!(r.changed, 1);
        let input = p.applier_mut().runner().restores.last().unwrap();
        assert!(!input.contains("*mangle"));
        assert!(input.contains("-X KUBE-SEP-SXIVWICOYRO3J4NJ"));
    }

    #[test]
    fn missing_canary_forces_a_full_sync() {
        let mut p = proxier();
        let snap = fixtures::kube_proxy_snapshot();
        p.sync(&snap).unwrap();
        // No canary in the (fake) mangle table: someone flushed it.
        let r = p.sync(&snap).unwrap();
        assert_eq!(r.kind, SyncKind::Full);
        assert!(r.wrote);
    }

    #[test]
    fn failed_partial_restore_is_redone_in_full() {
        let mut p = proxier();
        let snap = fixtures::kube_proxy_snapshot();
        p.sync(&snap).unwrap();
        canary(&mut p);
        let yaml = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.9]");
        let c = fixtures::cluster(&yaml);
        let next = snap
            .rebuild(
                snap.node.as_ref().clone(),
                &c.services,
                &c.endpoint_slices,
                &[],
            )
            .unwrap();
        p.applier_mut().runner_mut().fail_restores = 1;
        let r = p.sync(&next).unwrap();
        assert!(r.recovered);
        assert_eq!(r.kind, SyncKind::Full);
        let restores = &p.applier_mut().runner().restores;
        assert_eq!(restores.len(), 3);
        assert!(restores[2].starts_with("*mangle"));
        // Both fail: the error surfaces and the next sync is full.
        p.applier_mut().runner_mut().fail_restores = 2;
        let again = fixtures::KUBE_PROXY_CLUSTER.replace("10.180.0.1]", "10.180.0.8]");
        let c = fixtures::cluster(&again);
        let third = next
            .rebuild(
                next.node.as_ref().clone(),
                &c.services,
                &c.endpoint_slices,
                &[],
            )
            .unwrap();
        assert!(p.sync(&third).is_err());
        let r = p.sync(&third).unwrap();
        assert_eq!(r.kind, SyncKind::Full);
    }

    #[test]
    fn leftover_chains_and_misplaced_jumps_are_reconciled() {
        let mut p = proxier();
        p.applier_mut().runner_mut().saved.insert(
            (false, Table::Nat),
            ":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n".into(),
        );
        p.sync(&fixtures::kube_proxy_snapshot()).unwrap();
        let input = &p.applier_mut().runner().restores[0];
        assert!(input.contains(":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n"));
        assert!(input.contains("-X KUBE-SVC-AAAAAAAAAAAAAAAA\n"));
        assert!(!input.contains("DOCKER"));
        // Ours was not first in PREROUTING: deleted and re-inserted at the top.
        assert!(input.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-I PREROUTING 1 "));
    }

    #[test]
    fn cleanup_removes_only_ours() {
        let mut runner = FakeRunner::default();
        runner.saved.insert(
            (false, Table::Nat),
            ":KUBE-SERVICES - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j DOCKER\n-A DOCKER -j RETURN\n".into(),
        );
        runner.saved.insert(
            (false, Table::Filter),
            ":KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -m comment --comment kubelet -j KUBE-FIREWALL\n".into(),
        );
        let mut a = Applier::new(runner, false, true);
        a.cleanup().unwrap();
        let input = &a.runner().restores[0];
        assert!(input.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-X KUBE-SERVICES\n"));
        assert!(input.contains("-X KUBE-SEP-AAAAAAAAAAAAAAAA\n"));
        assert!(!input.contains("DOCKER"));
        assert!(
            !input.contains("-X KUBE-FIREWALL"),
            "kept while another rule jumps to it:\n{input}"
        );
        assert!(input.contains("-D INPUT -j KUBE-FIREWALL\n"), "{input}");
        assert!(
            !input.contains("-D INPUT -m comment --comment kubelet"),
            "{input}"
        );
    }
}
