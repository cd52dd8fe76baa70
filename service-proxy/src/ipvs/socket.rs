//! Talking to the kernel's IPVS over generic netlink (feature `apply`): opening the socket
//! resolves the `IPVS` family, which is also how the backend finds out whether the kernel
//! has IPVS at all (kube-proxy's `CanUseIPVSProxier`).

use std::io;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_GENERIC};

use super::genl;
use crate::nlmsg::{attrs, messages};

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

    fn resolve(&mut self) -> Result<u16, IpvsError> {
        let seq = self.seq;
        self.seq += 1;
        self.socket.send(&genl::get_family(seq), 0)?;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            for m in messages(&data) {
                match m.errno() {
                    Some(errno) if errno == -ENOENT => return Err(IpvsError::Unavailable),
                    Some(0) => {}
                    Some(errno) => return Err(IpvsError::Io(io::Error::from_raw_os_error(-errno))),
                    None if m.kind == genl::GENL_ID_CTRL && m.body.len() >= 4 => {
                        // genlmsghdr, then attributes.
                        return attrs(&m.body[4..])
                            .find(|(ty, v)| *ty == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
                            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
                            .ok_or_else(|| {
                                IpvsError::Protocol("no family id in the reply".into())
                            });
                    }
                    None => {}
                }
            }
        }
    }
}
