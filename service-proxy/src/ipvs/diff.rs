//! What to change in the kernel's IPVS table to reach a plan (kube-proxy's `syncService`,
//! `syncEndpoint` and `gracefulDeleteRS`): virtual servers added, updated when their
//! scheduler, flags or timeout differ, deleted when no longer planned; real servers added,
//! re-weighted, and removed gracefully: a TCP real server with connections is drained
//! (weight 0) and deleted once they are gone; UDP and SCTP ones are deleted at once. Pure:
//! the kernel's state comes in as data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::model::{FLAG_HASHED, IpvsProtocol, RealServer, VirtualServer};
use super::plan::IpvsPlan;

/// A virtual server's identity: address, protocol and port.
pub type ServiceKey = (IpAddr, IpvsProtocol, u16);

/// A real server as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDest {
    /// The real server.
    pub server: RealServer,
    /// Active connections.
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
}

/// The kernel's virtual servers and their real servers.
pub type KernelState = BTreeMap<ServiceKey, (VirtualServer, Vec<KernelDest>)>;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsChange {
    /// `IPVS_CMD_NEW_SERVICE`.
    AddService(VirtualServer),
    /// `IPVS_CMD_SET_SERVICE`.
    UpdateService(VirtualServer),
    /// `IPVS_CMD_DEL_SERVICE` (its real servers go with it).
    DeleteService(VirtualServer),
    /// `IPVS_CMD_NEW_DEST`.
    AddDest(VirtualServer, RealServer),
    /// `IPVS_CMD_SET_DEST` (a new weight; weight 0 drains).
    UpdateDest(VirtualServer, RealServer),
    /// `IPVS_CMD_DEL_DEST`.
    DeleteDest(VirtualServer, RealServer),
}

fn key(vs: &VirtualServer) -> ServiceKey {
    (vs.addr, vs.protocol, vs.port)
}

/// Whether two virtual servers need no update (the kernel adds `HASHED` to every flag set).
fn same(a: &VirtualServer, b: &VirtualServer) -> bool {
    a.scheduler == b.scheduler
        && (a.flags & !FLAG_HASHED) == (b.flags & !FLAG_HASHED)
        && a.timeout == b.timeout
}

/// The changes that bring `kernel` to `plan`, in an order the kernel accepts: services
/// before their real servers, deletions last.
pub fn diff(plan: &IpvsPlan, kernel: &KernelState) -> Vec<IpvsChange> {
    let mut out = Vec::new();
    let mut deletes = Vec::new();
    for (vs, servers) in &plan.services {
        let current = kernel.get(&key(vs));
        match current {
            None => {
                out.push(IpvsChange::AddService(vs.clone()));
                out.extend(
                    servers
                        .iter()
                        .map(|rs| IpvsChange::AddDest(vs.clone(), rs.clone())),
                );
                continue;
            }
            Some((kvs, _)) if !same(kvs, vs) => out.push(IpvsChange::UpdateService(vs.clone())),
            Some(_) => {}
        }
        let dests = current.map(|(_, d)| d.as_slice()).unwrap_or_default();
        let have: BTreeMap<SocketAddr, &KernelDest> =
            dests.iter().map(|d| (d.server.addr, d)).collect();
        for rs in servers {
            match have.get(&rs.addr) {
                None => out.push(IpvsChange::AddDest(vs.clone(), rs.clone())),
                Some(d) if d.server.weight != rs.weight || d.server.forward != rs.forward => {
                    out.push(IpvsChange::UpdateDest(vs.clone(), rs.clone()));
                }
                Some(_) => {}
            }
        }
        let wanted: BTreeSet<SocketAddr> = servers.iter().map(|rs| rs.addr).collect();
        for d in dests.iter().filter(|d| !wanted.contains(&d.server.addr)) {
            let connections = d.active + d.inactive;
            if vs.protocol != IpvsProtocol::Tcp || connections == 0 {
                deletes.push(IpvsChange::DeleteDest(vs.clone(), d.server.clone()));
            } else if d.server.weight != 0 {
                let mut drained = d.server.clone();
                drained.weight = 0;
                out.push(IpvsChange::UpdateDest(vs.clone(), drained));
            }
        }
    }
    let planned: BTreeSet<ServiceKey> = plan.services.keys().map(key).collect();
    for (k, (vs, _)) in kernel {
        if !planned.contains(k) {
            deletes.push(IpvsChange::DeleteService(vs.clone()));
        }
    }
    out.extend(deletes);
    out
}

/// The real servers of `state` that `plan` does not want, with their (planned) virtual
/// server.
fn leaving<'a>(
    plan: &'a IpvsPlan,
    state: &'a KernelState,
) -> impl Iterator<Item = (&'a VirtualServer, &'a KernelDest)> {
    plan.services.iter().flat_map(move |(vs, servers)| {
        let dests = state.get(&key(vs)).map(|(_, d)| d.as_slice());
        dests
            .unwrap_or_default()
            .iter()
            .filter(|d| !servers.iter().any(|rs| rs.addr == d.server.addr))
            .map(move |d| (vs, d))
    })
}

/// The virtual servers of `known` (the table as the last sync left it) whose real servers
/// must be read again before diffing against `plan`: those with a real server the plan
/// does not want, as only the kernel's current connection counts tell whether to drain or
/// delete it. The counts of every other real server play no part in [`diff`].
pub fn to_refresh(plan: &IpvsPlan, known: &KernelState) -> BTreeSet<ServiceKey> {
    leaving(plan, known).map(|(vs, _)| key(vs)).collect()
}

/// Removed TCP real servers still in `state` (drained at weight 0, connections left) once
/// the changes of [`diff`] are in it.
pub fn draining(plan: &IpvsPlan, state: &KernelState) -> usize {
    leaving(plan, state)
        .filter(|(vs, _)| vs.protocol == IpvsProtocol::Tcp)
        .count()
}

/// Records in `state` a change the kernel accepted, as the kernel reports it afterwards
/// (virtual servers `HASHED`; new real servers without connections; a re-weighted one
/// keeps its counts).
pub fn record(state: &mut KernelState, change: &IpvsChange) {
    match change {
        IpvsChange::AddService(vs) => {
            let mut kvs = vs.clone();
            kvs.flags |= FLAG_HASHED;
            state.insert(key(vs), (kvs, Vec::new()));
        }
        IpvsChange::UpdateService(vs) => {
            if let Some((kvs, _)) = state.get_mut(&key(vs)) {
                *kvs = vs.clone();
                kvs.flags |= FLAG_HASHED;
            }
        }
        IpvsChange::DeleteService(vs) => {
            state.remove(&key(vs));
        }
        IpvsChange::AddDest(vs, rs) => {
            if let Some((_, dests)) = state.get_mut(&key(vs)) {
                dests.push(KernelDest {
                    server: rs.clone(),
                    active: 0,
                    inactive: 0,
                });
            }
        }
        IpvsChange::UpdateDest(vs, rs) => {
            if let Some((_, dests)) = state.get_mut(&key(vs)) {
                for d in dests.iter_mut().filter(|d| d.server.addr == rs.addr) {
                    d.server = rs.clone();
                }
            }
        }
        IpvsChange::DeleteDest(vs, rs) => {
            if let Some((_, dests)) = state.get_mut(&key(vs)) {
                dests.retain(|d| d.server.addr != rs.addr);
            }
        }
    }
}

/// The kernel state a plan leaves when fully applied (no connections): for tests and
/// benchmarks.
pub fn applied(plan: &IpvsPlan) -> KernelState {
    let mut state = KernelState::new();
    for change in diff(plan, &KernelState::new()) {
        record(&mut state, &change);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::model::FLAG_PERSISTENT;

    fn vs(addr: &str, protocol: IpvsProtocol) -> VirtualServer {
        VirtualServer {
            addr: addr.parse().unwrap(),
            protocol,
            port: 80,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
        }
    }

    fn rs(addr: &str) -> RealServer {
        RealServer::new(addr.parse().unwrap())
    }

    fn plan(entries: &[(VirtualServer, &[&str])]) -> IpvsPlan {
        let mut p = IpvsPlan::default();
        for (v, servers) in entries {
            p.services
                .insert(v.clone(), servers.iter().map(|s| rs(s)).collect());
        }
        p
    }

    #[test]
    fn a_plan_applied_needs_no_change() {
        let p = plan(&[(
            vs("10.0.0.1", IpvsProtocol::Tcp),
            &["10.1.0.1:80", "10.1.0.2:80"],
        )]);
        assert_eq!(diff(&p, &applied(&p)), vec![]);
        // From nothing: the service, then its real servers.
        let changes = diff(&p, &KernelState::new());
        assert!(matches!(changes[0], IpvsChange::AddService(_)));
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn removed_tcp_servers_drain_and_udp_ones_go_at_once() {
        let tcp = vs("10.0.0.1", IpvsProtocol::Tcp);
        let udp = vs("10.0.0.1", IpvsProtocol::Udp);
        let before = plan(&[
            (tcp.clone(), &["10.1.0.1:80", "10.1.0.2:80"]),
            (udp.clone(), &["10.1.0.1:80", "10.1.0.2:80"]),
        ]);
        let mut kernel = applied(&before);
        for (_, dests) in kernel.values_mut() {
            for d in dests.iter_mut() {
                d.active = 3;
            }
        }
        let after = plan(&[
            (tcp.clone(), &["10.1.0.1:80"]),
            (udp.clone(), &["10.1.0.1:80"]),
        ]);
        let changes = diff(&after, &kernel);
        let mut drained = rs("10.1.0.2:80");
        drained.weight = 0;
        assert_eq!(
            changes,
            vec![
                IpvsChange::UpdateDest(tcp.clone(), drained.clone()),
                IpvsChange::DeleteDest(udp, rs("10.1.0.2:80")),
            ]
        );
        // Draining: nothing more while connections remain, deletion once they are gone.
        let k = kernel.get_mut(&key(&tcp)).unwrap();
        k.1[1].server.weight = 0;
        assert_eq!(
            diff(&after, &kernel)
                .iter()
                .filter(|c| matches!(c, IpvsChange::UpdateDest(..) | IpvsChange::DeleteDest(..)))
                .count(),
            1
        );
        let k = kernel.get_mut(&key(&tcp)).unwrap();
        k.1[1].active = 0;
        assert!(diff(&after, &kernel).contains(&IpvsChange::DeleteDest(tcp, drained)));
    }

    #[test]
    fn changed_services_update_and_gone_ones_are_deleted() {
        let mut sticky = vs("10.0.0.1", IpvsProtocol::Tcp);
        let before = plan(&[
            (sticky.clone(), &["10.1.0.1:80"]),
            (vs("10.0.0.2", IpvsProtocol::Tcp), &[]),
        ]);
        let kernel = applied(&before);
        sticky.flags = FLAG_PERSISTENT;
        sticky.timeout = 10800;
        let after = plan(&[(sticky.clone(), &["10.1.0.1:80"])]);
        // The deletion names the kernel's virtual server (flags as the kernel reports them).
        let mut gone = vs("10.0.0.2", IpvsProtocol::Tcp);
        gone.flags = FLAG_HASHED;
        assert_eq!(
            diff(&after, &kernel),
            vec![
                IpvsChange::UpdateService(sticky),
                IpvsChange::DeleteService(gone)
            ]
        );
    }

    /// `record` models the kernel: the changes of a diff, recorded, leave a state the plan
    /// needs nothing more from; only virtual servers with real servers the plan does not
    /// want are read again.
    #[test]
    fn recorded_changes_reach_the_plan_and_only_leavers_are_read_again() {
        let (a, b, c) = (
            vs("10.0.0.1", IpvsProtocol::Tcp),
            vs("10.0.0.2", IpvsProtocol::Udp),
            vs("10.0.0.3", IpvsProtocol::Tcp),
        );
        let before = plan(&[
            (a.clone(), &["10.1.0.1:80", "10.1.0.2:80"]),
            (b.clone(), &["10.1.0.1:53"]),
        ]);
        let mut sticky = b;
        sticky.flags = FLAG_PERSISTENT;
        sticky.timeout = 60;
        let mut after = plan(&[
            (a.clone(), &["10.1.0.1:80"]),
            (sticky, &["10.1.0.1:53", "10.1.0.3:53"]),
            (c, &["10.1.0.4:80"]),
        ]);
        // A re-weighted real server, too.
        let servers = after.services.get_mut(&a).unwrap();
        let mut reweighted = servers.pop_first().unwrap();
        reweighted.weight = 5;
        servers.insert(reweighted);
        let mut state = applied(&before);
        assert_eq!(to_refresh(&after, &state), BTreeSet::from([key(&a)]));
        // The leaving TCP server has a connection: it drains, and stays to be read again.
        state.get_mut(&key(&a)).unwrap().1[1].active = 1;
        for change in diff(&after, &state) {
            record(&mut state, &change);
        }
        assert_eq!(diff(&after, &state), vec![]);
        assert_eq!(to_refresh(&after, &state), BTreeSet::from([key(&a)]));
        let dests = &state[&key(&a)].1;
        assert_eq!(
            (dests.len(), dests[0].server.weight, dests[1].server.weight),
            (2, 5, 0)
        );
        // Its connection gone, the next diff deletes it; then the state is the plan's.
        state.get_mut(&key(&a)).unwrap().1[1].active = 0;
        for change in diff(&after, &state) {
            record(&mut state, &change);
        }
        assert_eq!(state, applied(&after));
        assert_eq!(to_refresh(&after, &state), BTreeSet::new());
    }
}
