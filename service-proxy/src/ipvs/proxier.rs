//! The IPVS backend on a kernel (features `ipvs` + `apply`): kube-proxy's IPVS proxier.
//! Starting checks that the kernel has IPVS and the scheduler, and sets IPVS mode's
//! sysctls; each sync binds the virtual addresses to `kube-ipvs0`, brings the ipsets and
//! the fixed iptables rules in step, then diffs the kernel's virtual servers against the
//! plan and sends only the differences (IPVS has no transactions: each change is its own
//! request). Ipset entries and real servers are read on the first sync and when forced;
//! in between, a sync trusts them as it left them and reads only the real servers that
//! decide a drain. Removed TCP real servers with connections are drained at weight 0 and
//! deleted by a later sync once their connections are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use service_core::snapshot::{ServicePortName, Snapshot};

use super::diff::{IpvsChange, KernelState, ServiceKey, diff, draining, record, to_refresh};
use super::ipset;
use super::model::VirtualServer;
use super::plan::{DUMMY_DEVICE, IpSet, IpvsConfig, IpvsPlan};
use super::rules::{self, JUMPS, Jump};
use super::socket::{IpvsError, IpvsSocket};
use crate::iptables::Table;
use service_core::model::IpFamily;

use super::IpvsReport;
use crate::conntrack::{Cleanup, ConntrackCleaner};
use crate::iptables::apply::Runner;
use crate::proxier::{
    BackendReport, NoLocalEndpoints, Proxier, ProxyMode, SyncError, SyncErrorKind, SyncReport,
    SyncRequest, endpoints_changed,
};
use crate::rtnl::Rtnl;
use crate::sync::SyncKind;

/// The sysctls kube-proxy's IPVS mode sets: IPVS keeps conntrack entries (needed by the
/// masquerade rules), drops connections whose real server is gone, lets persistence
/// templates of drained real servers expire, and the node forwards.
pub const SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
];

/// The IPVS backend bound to one network namespace and IP family.
#[derive(Debug)]
pub struct IpvsProxier<R: Runner> {
    config: IpvsConfig,
    ipv6: bool,
    ipvs: IpvsSocket,
    rtnl: Rtnl,
    runner: R,
    conntrack: Cleanup,
    no_local: NoLocalEndpoints,
    /// The last snapshot fully applied, for the conntrack filters of the next sync.
    last: Option<Snapshot>,
    /// What the last sync left in the kernel, when all of it went through: the next sync
    /// diffs against it instead of reading every real server and ipset entry. `None`
    /// makes the next sync read them all (see [`IpvsProxier::force_full`]).
    known: Option<Known>,
}

/// This family's IPVS table and ipsets as a sync left them.
#[derive(Debug)]
struct Known {
    table: KernelState,
    sets: BTreeMap<String, BTreeSet<String>>,
}

/// The sysctls of `IpvsConfig::strict_arp`.
const STRICT_ARP: [(&str, &str); 2] = [
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
];

fn write_sysctls(strict_arp: bool) -> io::Result<()> {
    let extra: &[(&str, &str)] = if strict_arp { &STRICT_ARP } else { &[] };
    for (key, value) in SYSCTLS.iter().chain(extra) {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

impl<R: Runner> IpvsProxier<R> {
    /// Starts the backend in the current network namespace: resolves IPVS, probes the
    /// scheduler, sets the sysctls.
    ///
    /// # Errors
    /// [`IpvsError::Unavailable`] without IPVS, [`IpvsError::Scheduler`] without the
    /// scheduler; other kernel failures.
    pub fn new(config: IpvsConfig, runner: R, ipv6: bool) -> Result<Self, IpvsError> {
        Self::start(config, runner, ipv6, None)
    }

    /// As [`IpvsProxier::new`], in the network namespace at `path` (`/run/netns/NAME`;
    /// give `runner` the same namespace).
    ///
    /// # Errors
    /// As [`IpvsProxier::new`].
    pub fn in_netns(
        config: IpvsConfig,
        runner: R,
        ipv6: bool,
        path: &Path,
    ) -> Result<Self, IpvsError> {
        Self::start(config, runner, ipv6, Some(path.to_owned()))
    }

    fn start(
        config: IpvsConfig,
        runner: R,
        ipv6: bool,
        netns: Option<PathBuf>,
    ) -> Result<Self, IpvsError> {
        let (mut ipvs, rtnl) = match &netns {
            None => (IpvsSocket::open()?, Rtnl::open()?),
            Some(p) => (IpvsSocket::in_netns(p)?, Rtnl::in_netns(p)?),
        };
        ipvs.probe_scheduler(config.scheduler)?;
        let strict_arp = config.strict_arp;
        match netns {
            None => write_sysctls(strict_arp)?,
            Some(p) => crate::netns::open_in(&p, move || write_sysctls(strict_arp))?,
        }
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let timeouts = (
            secs(config.tcp_timeout),
            secs(config.tcp_fin_timeout),
            secs(config.udp_timeout),
        );
        if timeouts != (0, 0, 0) {
            ipvs.set_timeouts(timeouts.0, timeouts.1, timeouts.2)?;
        }
        Ok(Self {
            config,
            ipv6,
            ipvs,
            rtnl,
            runner,
            conntrack: Cleanup::default(),
            no_local: NoLocalEndpoints::default(),
            last: None,
            known: None,
        })
    }

    /// Also clears stale UDP conntrack entries after each sync, as kube-proxy does: for a
    /// UDP service port that gained its first endpoint, entries to its addresses; for a UDP
    /// endpoint that went away, entries to it. (IPVS drops its own connection to a deleted
    /// real server on the next packet, with `expire_nodest_conn=1`.)
    #[must_use]
    pub fn with_conntrack(mut self, cleaner: impl ConntrackCleaner + 'static) -> Self {
        self.conntrack = Cleanup::new(cleaner);
        self
    }
}

impl<R: Runner> IpvsProxier<R> {
    /// The runner (its `iptables` and `ipset` programs).
    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    /// The IPVS socket, for reading the kernel's table.
    pub fn ipvs_mut(&mut self) -> &mut IpvsSocket {
        &mut self.ipvs
    }

    /// The kernel's virtual servers of this proxier's family.
    ///
    /// # Errors
    /// The dump failed.
    pub fn kernel_state(&mut self) -> Result<KernelState, IpvsError> {
        let ipv6 = self.ipv6;
        self.ipvs.state(|vs| vs.addr.is_ipv6() == ipv6)
    }

    fn jumps_present(&mut self) -> Result<Vec<&'static Jump>, IpvsError> {
        let nat = self.runner.save(self.ipv6, Table::Nat)?;
        let filter = self.runner.save(self.ipv6, Table::Filter)?;
        Ok(JUMPS
            .iter()
            .filter(|j| {
                let saved = match j.to.table() {
                    Table::Nat => &nat,
                    _ => &filter,
                };
                let line = format!("-A {} {}", j.from, j.args());
                saved.lines().any(|l| l == line)
            })
            .collect())
    }

    /// Brings the node to the plan for `snapshot`. Every step runs even when an IPVS
    /// change is refused; the error then names the first refusal (the next sync retries).
    ///
    /// The first sync reads everything: `ipset save`, the virtual servers, then each
    /// one's real servers (a dump each), as kube-proxy does on every sync. Later ones read
    /// the virtual servers, the addresses and the iptables rules (what others changed there
    /// is repaired at once) but take ipset entries and real servers from what the previous
    /// sync left, reading only the real servers of virtual servers that lose some (their
    /// connection counts decide between draining and deleting) or that it did not know:
    /// at 10k services one endpoint changed costs two dumps, not ten thousand and an
    /// `ipset save` of every entry. Ipset entries and real servers others changed are
    /// repaired by the next sync after [`IpvsProxier::force_full`], or after any failure.
    ///
    /// # Errors
    /// The dummy interface, ipsets or iptables rules could not be set up, or IPVS refused
    /// changes ([`IpvsError::Incomplete`]).
    fn sync_ipvs(
        &mut self,
        snapshot: &Snapshot,
        changed: Option<&BTreeSet<ServicePortName>>,
        outer: &mut SyncReport,
    ) -> Result<IpvsReport, IpvsError> {
        let plan = IpvsPlan::build(&self.config, snapshot, self.ipv6);
        let mut report = IpvsReport {
            virtual_servers: plan.services.len(),
            ..IpvsReport::default()
        };
        // A full read after a sync that succeeded: what differs from that sync's plan was
        // changed by someone else, and is counted as repaired.
        let before = match (&self.known, &self.last) {
            (None, Some(last)) => Some(IpvsPlan::build(&self.config, last, self.ipv6)),
            _ => None,
        };
        // Addresses first, so that the virtual servers are reachable as soon as they exist.
        let index = self.rtnl.ensure_dummy(DUMMY_DEVICE)?;
        let bound = self.rtnl.addresses(index, self.ipv6)?;
        if let Some(before) = &before {
            outer.repaired += before.addresses.difference(&bound).count();
        }
        for ip in plan.addresses.difference(&bound) {
            if self.rtnl.add_address(index, *ip)? {
                report.bound += 1;
            }
        }
        let (known_table, known_sets) = self.known.take().map(|k| (k.table, k.sets)).unzip();
        report.read_all = known_table.is_none();
        // ipsets before the rules that name them.
        let current = match known_sets {
            Some(sets) => sets,
            None => ipset::parse_save(&self.runner.ipset(&["save"], None)?),
        };
        let sets = ipset::wanted(&plan, self.ipv6);
        let input = ipset::restore_input(&sets, self.ipv6, &current);
        if !input.is_empty() {
            self.runner
                .ipset(&["-exist", "restore"], Some(input.as_bytes()))?;
        }
        let fixed = rules::render(&plan, &self.config, self.ipv6);
        let present = self.jumps_present()?;
        let missing: Vec<&Jump> = JUMPS.iter().filter(|j| !present.contains(j)).collect();
        let input = rules::restore_input(&fixed, &missing);
        self.runner.restore(self.ipv6, &[input.as_bytes()])?;
        // Virtual and real servers of this family; unplanned ones in the excluded ranges
        // are left alone (not even read).
        let planned: BTreeSet<ServiceKey> = plan
            .services
            .keys()
            .map(|vs| (vs.addr, vs.protocol, vs.port))
            .collect();
        let (ipv6, config) = (self.ipv6, &self.config);
        let keep = |vs: &VirtualServer| {
            vs.addr.is_ipv6() == ipv6
                && (planned.contains(&(vs.addr, vs.protocol, vs.port))
                    || !config.excluded(&vs.addr))
        };
        let mut state = match known_table {
            Some(known) => refresh(&mut self.ipvs, &plan, known, keep)?,
            None => self.ipvs.state(keep)?,
        };
        if let Some(before) = &before {
            // Draining real servers whose connections ended are deleted, not repaired.
            outer.repaired += diff(before, &state)
                .iter()
                .filter(|c| !matches!(c, IpvsChange::DeleteDest(_, rs) if rs.weight == 0))
                .count();
        }
        let changes = diff(&plan, &state);
        let mut failed = Vec::new();
        for change in &changes {
            match self.ipvs.apply(change) {
                Ok(()) => {
                    report.changes += 1;
                    record(&mut state, change);
                }
                Err(e) => failed.push(e),
            }
        }
        report.draining = draining(&plan, &state);
        if failed.is_empty() {
            self.known = Some(Known { table: state, sets });
        }
        let family = if self.ipv6 {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        };
        let filters =
            crate::conntrack::stale_filters(self.last.as_ref(), snapshot, &family, changed);
        // Stale entries cost a retry, not correctness: a failure is reported and retried.
        let cleaned = self.conntrack.run(&family, filters);
        outer.conntrack_deleted = cleaned.deleted;
        outer.conntrack_failed = cleaned.failed;
        outer.endpoints_changed = endpoints_changed(self.last.as_ref(), snapshot, &family, changed);
        outer.no_local_endpoints = self.no_local.update(snapshot, &family, changed);
        // Addresses no longer planned go last, after their virtual servers.
        let stale: BTreeSet<IpAddr> = bound.difference(&plan.addresses).copied().collect();
        for ip in stale {
            if self.rtnl.delete_address(index, ip)? {
                report.unbound += 1;
            }
        }
        match failed.len() {
            0 => {
                self.last = Some(snapshot.clone());
                Ok(report)
            }
            n => Err(IpvsError::Incomplete {
                failed: n,
                total: changes.len(),
                first: Box::new(failed.swap_remove(0)),
            }),
        }
    }

    /// Removes everything the backend set up for its family: its virtual servers (all
    /// but those in `exclude_cidrs`), its
    /// addresses on the dummy interface (and the interface once no family uses it), the
    /// iptables rules, then the ipsets. (kube-proxy's `--cleanup` flushes the whole IPVS
    /// table; this leaves the other family's proxier, and foreign virtual servers of
    /// the other family, alone.)
    ///
    /// # Errors
    /// A removal failed.
    fn cleanup_ipvs(&mut self) -> Result<(), IpvsError> {
        // What the last sync left is going: a later sync starts from the kernel again.
        self.known = None;
        for (vs, _) in self.kernel_state()?.into_values() {
            if !self.config.excluded(&vs.addr) {
                self.ipvs.apply(&IpvsChange::DeleteService(vs))?;
            }
        }
        if let Some(index) = self.rtnl.link_index(DUMMY_DEVICE)? {
            for ip in self.rtnl.addresses(index, self.ipv6)? {
                self.rtnl.delete_address(index, ip)?;
            }
            if self.rtnl.addresses(index, !self.ipv6)?.is_empty() {
                self.rtnl.delete_link(DUMMY_DEVICE)?;
            }
        }
        let present = self.jumps_present()?;
        let exists = [Table::Nat, Table::Filter]
            .into_iter()
            .map(|t| {
                let chain = if t == Table::Nat {
                    "KUBE-SERVICES"
                } else {
                    "KUBE-IPVS-FILTER"
                };
                self.runner.chain_exists(self.ipv6, t, chain)
            })
            .collect::<Result<Vec<bool>, _>>()?;
        if !present.is_empty() || exists.contains(&true) {
            let input = rules::cleanup_input(&present);
            self.runner.restore(self.ipv6, &[input.as_bytes()])?;
        }
        let saved = ipset::parse_save(&self.runner.ipset(&["save"], None)?);
        for set in IpSet::ALL {
            let name = set.name_for(self.ipv6);
            if saved.contains_key(&name) {
                self.runner.ipset(&["destroy", &name], None)?;
            }
        }
        Ok(())
    }
}

fn error(e: IpvsError) -> SyncError {
    let kind = match &e {
        IpvsError::Unavailable | IpvsError::Scheduler { .. } => SyncErrorKind::Unavailable,
        IpvsError::Io(_) => SyncErrorKind::Transient,
        IpvsError::Rules(crate::iptables::apply::ApplyError::Spawn { .. }) => {
            SyncErrorKind::Unavailable
        }
        _ => SyncErrorKind::Rejected,
    };
    SyncError::new(ProxyMode::Ipvs, kind, e)
}

impl<R: Runner> Proxier for IpvsProxier<R> {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ipvs
    }

    fn family(&self) -> IpFamily {
        if self.ipv6 {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        }
    }

    /// Brings the node to the plan for the snapshot (see [`IpvsProxier`]): every
    /// step runs even when an IPVS change is refused; the error then names the first
    /// refusal and the next sync reads everything again.
    ///
    /// The first sync reads everything: `ipset save`, the virtual servers, then each
    /// one's real servers (a dump each), as kube-proxy does on every sync. Later ones read
    /// the virtual servers, the addresses and the iptables rules (what others changed there
    /// is repaired at once) but take ipset entries and real servers from what the previous
    /// sync left, reading only the real servers of virtual servers that lose some (their
    /// connection counts decide between draining and deleting) or that it did not know:
    /// at 10k services one endpoint changed costs two dumps, not ten thousand and an
    /// `ipset save` of every entry. A full sync ([`SyncRequest::full`], or after
    /// [`Proxier::force_full`]) reads them all again, so it also repairs what others
    /// changed there.
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        if request.full {
            self.known = None;
        }
        let kind = if self.known.is_none() {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        let changed = (kind == SyncKind::Partial)
            .then_some(request.changed)
            .flatten();
        let mut report = SyncReport::new(kind, BackendReport::Ipvs(IpvsReport::default()));
        let result = self.sync_ipvs(request.snapshot, changed, &mut report);
        let detail = result.map_err(|e| {
            self.known = None;
            error(e)
        })?;
        report.wrote = detail.changes + detail.bound + detail.unbound > 0 || kind == SyncKind::Full;
        report.service_ports_changed = match (kind, request.changed) {
            (SyncKind::Partial, Some(c)) => c.len(),
            _ => request.snapshot.ports.len(),
        };
        report.detail = BackendReport::Ipvs(detail);
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Makes the next sync read every real server and ipset entry again, so that it also
    /// repairs what others changed there (the `proxy` daemon's periodic resync does, and so
    /// should a caller after changing real servers through [`IpvsProxier::ipvs_mut`]).
    /// Virtual servers, addresses and iptables rules are read by every sync.
    fn force_full(&mut self) {
        self.known = None;
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.cleanup_ipvs().map_err(error)
    }
}

/// The kernel's table for a sync after one that left `known`: the virtual servers as the
/// kernel lists them now (one dump: what others added, deleted or changed shows), with the
/// real servers `known` has for them, except where they must be read (the virtual servers
/// `known` lacks, and those losing real servers: their connection counts decide between
/// draining and deleting).
fn refresh(
    ipvs: &mut IpvsSocket,
    plan: &IpvsPlan,
    mut known: KernelState,
    keep: impl Fn(&VirtualServer) -> bool,
) -> Result<KernelState, IpvsError> {
    let reread = to_refresh(plan, &known);
    let mut state = KernelState::new();
    for vs in ipvs.services()?.into_iter().filter(|vs| keep(vs)) {
        let key = (vs.addr, vs.protocol, vs.port);
        let dests = match known.remove(&key) {
            Some((_, dests)) if !reread.contains(&key) => dests,
            _ => ipvs.dests(&vs)?,
        };
        state.insert(key, (vs, dests));
    }
    Ok(state)
}
