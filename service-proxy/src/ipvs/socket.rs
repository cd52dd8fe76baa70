//! Talking to the kernel's IPVS over generic netlink (feature `apply`): opening the socket
//! resolves the `IPVS` family, which is also how the backend finds out whether the kernel
//! has IPVS at all (kube-proxy's `CanUseIPVSProxier`).

use std::io;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_GENERIC};

use super::genl;

const NLMSG_ERROR: u16 = 2;
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
            let mut rest = &data[..];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let body = &rest[16..len];
                if kind == NLMSG_ERROR && body.len() >= 4 {
                    let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if errno == -ENOENT {
                        return Err(IpvsError::Unavailable);
                    }
                    if errno != 0 {
                        return Err(IpvsError::Io(io::Error::from_raw_os_error(-errno)));
                    }
                } else if kind == genl::GENL_ID_CTRL && body.len() >= 4 {
                    // genlmsghdr, then attributes.
                    let mut attrs = &body[4..];
                    while attrs.len() >= 4 {
                        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                        if alen < 4 || alen > attrs.len() {
                            break;
                        }
                        if ty == CTRL_ATTR_FAMILY_ID && alen >= 6 {
                            return Ok(u16::from_ne_bytes([attrs[4], attrs[5]]));
                        }
                        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
                    }
                    return Err(IpvsError::Protocol("no family id in the reply".into()));
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
    }
}
