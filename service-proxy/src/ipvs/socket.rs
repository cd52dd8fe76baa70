//! Talking to the kernel's IPVS over generic netlink (feature `apply`): opening the socket
//! resolves the `IPVS` family, which is also how the backend finds out whether the kernel
//! has IPVS at all (kube-proxy's `CanUseIPVSProxier`).

use std::io;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_GENERIC};

use super::diff::{IpvsChange, KernelDest, KernelState};
use super::genl::{self, Command, Reply};
use super::model::{IpvsProtocol, Scheduler, VirtualServer};
use crate::nlmsg::{attrs, dump_consistent, request, request_with};

const CTRL_ATTR_FAMILY_ID: u16 = 1;
const ENOENT: i32 = 2;

/// Why the IPVS backend cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpvsError {
    /// The kernel has no IPVS (not built in, module not loaded or loadable).
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found): load ip_vs or use another backend"
    )]
    Unavailable,
    /// The netlink socket failed.
    #[error("generic netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered something unexpected.
    #[error("unexpected generic netlink answer: {0}")]
    Protocol(String),
    /// The kernel refused a scheduler (no `ip_vs_<name>` module).
    #[error("the kernel has no IPVS scheduler {scheduler:?} (module ip_vs_{scheduler}): {source}")]
    Scheduler {
        /// The scheduler's name.
        scheduler: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Some IPVS changes of a sync were refused (the rest were made).
    #[error("{failed} of {total} IPVS changes were refused; the first: {first}")]
    Incomplete {
        /// How many were refused.
        failed: usize,
        /// How many were sent.
        total: usize,
        /// The first refusal.
        first: Box<Self>,
    },
    /// Running `iptables-restore` or `ipset` failed.
    #[error(transparent)]
    Rules(#[from] crate::iptables::apply::ApplyError),
    /// The kernel refused a change.
    #[error("IPVS refused {change}: {source}")]
    Change {
        /// The change, as `ipvsadm` would write it.
        change: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// The virtual server kube-proxy's `CanUseIPVSProxier` adds and removes to check a
/// scheduler: `198.51.100.0:20000/TCP` (TEST-NET-2).
fn probe_server(scheduler: Scheduler) -> VirtualServer {
    VirtualServer {
        addr: std::net::Ipv4Addr::new(198, 51, 100, 0).into(),
        protocol: IpvsProtocol::Tcp,
        port: 20000,
        scheduler: scheduler.as_str().to_owned(),
        flags: scheduler.flags(),
        timeout: 0,
    }
}

/// A change as an `ipvsadm` command line, for error messages.
fn describe(change: &IpvsChange) -> String {
    match change {
        IpvsChange::AddService(vs) => format!("-A {}", vs.ipvsadm_target()),
        IpvsChange::UpdateService(vs) => format!("-E {}", vs.ipvsadm_target()),
        IpvsChange::DeleteService(vs) => format!("-D {}", vs.ipvsadm_target()),
        IpvsChange::AddDest(vs, rs) => format!("-a {} -r {}", vs.ipvsadm_target(), rs.addr),
        IpvsChange::UpdateDest(vs, rs) => {
            format!("-e {} -r {} -w {}", vs.ipvsadm_target(), rs.addr, rs.weight)
        }
        IpvsChange::DeleteDest(vs, rs) => format!("-d {} -r {}", vs.ipvsadm_target(), rs.addr),
    }
}

/// A generic-netlink socket bound to the IPVS family.
#[derive(Debug)]
pub struct IpvsSocket {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl IpvsSocket {
    /// Opens a socket in the current network namespace and resolves the IPVS family.
    ///
    /// # Errors
    /// [`IpvsError::Unavailable`] when the kernel has no IPVS; otherwise socket failures.
    pub fn open() -> Result<Self, IpvsError> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        crate::nlmsg::set_timeouts(&socket)?;
        let mut s = Self {
            socket,
            family: 0,
            seq: 1,
        };
        s.family = s.resolve()?;
        Ok(s)
    }

    /// Opens the socket inside the network namespace at `path`.
    ///
    /// # Errors
    /// As [`IpvsSocket::open`], or the namespace cannot be entered.
    pub fn in_netns(path: &Path) -> Result<Self, IpvsError> {
        crate::netns::open_in(path, || Ok(Self::open()))?
    }

    /// The family id the kernel gave IPVS.
    pub fn family(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        seq
    }

    /// The kernel's virtual servers (`ipvsadm -L -n` without real servers).
    ///
    /// # Errors
    /// The dump failed.
    pub fn services(&mut self) -> Result<Vec<VirtualServer>, IpvsError> {
        let family = self.family;
        let (socket, seq) = (&self.socket, &mut self.seq);
        let next = || {
            *seq = seq.wrapping_add(1);
            *seq
        };
        let all = dump_consistent(socket, next, |s| genl::dump_services(family, s))?;
        Ok(all
            .iter()
            .filter_map(|m| match genl::parse_reply(m.message(), family) {
                Reply::Service(vs) => Some(vs),
                _ => None,
            })
            .collect())
    }

    /// A virtual server's real servers with their connection counts.
    ///
    /// # Errors
    /// The dump failed (`ENOENT`-like errors when the virtual server is gone).
    pub fn dests(&mut self, vs: &VirtualServer) -> Result<Vec<KernelDest>, IpvsError> {
        let family = self.family;
        let (socket, seq) = (&self.socket, &mut self.seq);
        let next = || {
            *seq = seq.wrapping_add(1);
            *seq
        };
        let all = dump_consistent(socket, next, |s| genl::dump_dests(family, s, vs))?;
        Ok(all
            .iter()
            .filter_map(|m| match genl::parse_reply(m.message(), family) {
                Reply::Dest(d) => Some(d),
                _ => None,
            })
            .collect())
    }

    /// The virtual servers `keep` accepts, with their real servers (only those are asked
    /// for their real servers: one dump each).
    ///
    /// # Errors
    /// A dump failed.
    pub fn state(
        &mut self,
        keep: impl Fn(&VirtualServer) -> bool,
    ) -> Result<KernelState, IpvsError> {
        let mut state = KernelState::new();
        for vs in self.services()?.into_iter().filter(|vs| keep(vs)) {
            let dests = self.dests(&vs)?;
            state.insert((vs.addr, vs.protocol, vs.port), (vs, dests));
        }
        Ok(state)
    }

    /// Sends one change and waits for the kernel's answer.
    ///
    /// # Errors
    /// [`IpvsError::Change`] with the kernel's errno.
    pub fn apply(&mut self, change: &IpvsChange) -> Result<(), IpvsError> {
        let seq = self.next_seq();
        let f = self.family;
        let msg = match change {
            IpvsChange::AddService(vs) => genl::service_message(f, seq, Command::NewService, vs),
            IpvsChange::UpdateService(vs) => genl::service_message(f, seq, Command::SetService, vs),
            IpvsChange::DeleteService(vs) => genl::service_message(f, seq, Command::DelService, vs),
            IpvsChange::AddDest(vs, rs) => genl::dest_message(f, seq, Command::NewDest, vs, rs),
            IpvsChange::UpdateDest(vs, rs) => genl::dest_message(f, seq, Command::SetDest, vs, rs),
            IpvsChange::DeleteDest(vs, rs) => genl::dest_message(f, seq, Command::DelDest, vs, rs),
        };
        request(&self.socket, &msg, seq).map_err(|source| IpvsError::Change {
            change: describe(change),
            source,
        })
    }

    /// Deletes every virtual server (`ipvsadm -C`).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        let seq = self.next_seq();
        request(&self.socket, &genl::flush(self.family, seq), seq)?;
        Ok(())
    }

    /// Sets the TCP, TCP FIN and UDP timeouts in seconds (`ipvsadm --set`; 0 keeps one).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn set_timeouts(&mut self, tcp: u32, tcp_fin: u32, udp: u32) -> Result<(), IpvsError> {
        let seq = self.next_seq();
        let msg = genl::set_timeouts(self.family, seq, tcp, tcp_fin, udp);
        request(&self.socket, &msg, seq)?;
        Ok(())
    }

    /// Checks that the kernel has `scheduler`, as kube-proxy does: adds a virtual server
    /// with it at `198.51.100.0:20000/TCP` and deletes it again.
    ///
    /// # Errors
    /// [`IpvsError::Scheduler`] when the kernel refuses the scheduler.
    pub fn probe_scheduler(&mut self, scheduler: Scheduler) -> Result<(), IpvsError> {
        let vs = probe_server(scheduler);
        // A leftover from an interrupted probe would make the add fail with EEXIST.
        let _ = self.apply(&IpvsChange::DeleteService(vs.clone()));
        match self.apply(&IpvsChange::AddService(vs.clone())) {
            Ok(()) => self.apply(&IpvsChange::DeleteService(vs)),
            Err(IpvsError::Change { source, .. }) => Err(IpvsError::Scheduler {
                scheduler: scheduler.as_str().to_owned(),
                source,
            }),
            Err(e) => Err(e),
        }
    }

    fn resolve(&mut self) -> Result<u16, IpvsError> {
        let seq = self.next_seq();
        let mut id = None;
        let asked = request_with(&self.socket, &genl::get_family(seq), seq, |m| {
            if m.kind == genl::GENL_ID_CTRL && m.body.len() >= 4 && id.is_none() {
                // genlmsghdr, then attributes.
                id = attrs(&m.body[4..])
                    .find(|(ty, v)| *ty == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
                    .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]));
            }
        });
        match asked {
            Err(e) if e.raw_os_error() == Some(ENOENT) => Err(IpvsError::Unavailable),
            Err(e) => Err(IpvsError::Io(e)),
            Ok(()) => id.ok_or_else(|| IpvsError::Protocol("no family id in the reply".into())),
        }
    }
}
