//! The few rtnetlink requests the IPVS backend needs (feature `apply`): find, create and
//! delete the dummy interface that holds the virtual addresses, and list, add and remove
//! its addresses — what kube-proxy does with `netlink.LinkAdd(&netlink.Dummy{..})`,
//! `AddrAdd` and `AddrDel`.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::nlmsg::{attrs, dump_consistent, push_attr as attr, request, request_with};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// `struct ifinfomsg` for `index`, then the interface name.
fn link_body(index: u32, name: Option<&str>) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    if let Some(name) = name {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        attr(&mut b, IFLA_IFNAME, &n);
    }
    b
}

/// `struct ifaddrmsg` for a host address on `index`, with `IFA_LOCAL` and `IFA_ADDRESS`.
fn addr_body(index: u32, ip: IpAddr) -> Vec<u8> {
    let (family, len, octets) = match ip {
        IpAddr::V4(v4) => (AF_INET, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (AF_INET6, 128, v6.octets().to_vec()),
    };
    let mut b = vec![family, len, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &octets);
    attr(&mut b, IFA_ADDRESS, &octets);
    b
}

/// An rtnetlink socket.
#[derive(Debug)]
pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in the current network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        crate::nlmsg::set_timeouts(&socket)?;
        Ok(Self { socket, seq: 1 })
    }

    /// A socket in the network namespace at `path`.
    pub(crate) fn in_netns(path: &Path) -> io::Result<Self> {
        crate::netns::open_in(path, Self::open)
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        seq
    }

    /// The index of the interface called `name`, if there is one.
    pub(crate) fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let seq = self.next_seq();
        let msg = message(
            RTM_GETLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            &link_body(0, Some(name)),
        );
        let mut index = None;
        let r = request_with(&self.socket, &msg, seq, |m| {
            if m.kind == RTM_NEWLINK && m.body.len() >= 8 {
                index = Some(u32::from_ne_bytes([
                    m.body[4], m.body[5], m.body[6], m.body[7],
                ]));
            }
        });
        match r {
            Ok(()) => Ok(index),
            Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a dummy interface called `name` unless it exists; returns its index.
    pub(crate) fn ensure_dummy(&mut self, name: &str) -> io::Result<u32> {
        if let Some(index) = self.link_index(name)? {
            return Ok(index);
        }
        let seq = self.next_seq();
        let mut body = link_body(0, Some(name));
        let mut info = Vec::new();
        attr(&mut info, IFLA_INFO_KIND, b"dummy");
        attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        let msg = message(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
            &body,
        );
        match request(&self.socket, &msg, seq) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(EEXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create dummy interface {name}: {e} (does the kernel have the dummy link type?)"
                    ),
                ));
            }
        }
        self.link_index(name)?.ok_or_else(|| {
            io::Error::other(format!("interface {name} vanished right after creation"))
        })
    }

    /// Deletes the interface called `name`; false if there was none.
    pub(crate) fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        let seq = self.next_seq();
        let msg = message(
            RTM_DELLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            &link_body(index, None),
        );
        match request(&self.socket, &msg, seq) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The addresses of one family on interface `index`.
    pub(crate) fn addresses(&mut self, index: u32, ipv6: bool) -> io::Result<BTreeSet<IpAddr>> {
        let family = if ipv6 { AF_INET6 } else { AF_INET };
        let mut out = BTreeSet::new();
        let (socket, seq) = (&self.socket, &mut self.seq);
        let next = || {
            *seq = seq.wrapping_add(1);
            *seq
        };
        let make = |s| {
            message(
                RTM_GETADDR,
                NLM_F_REQUEST | NLM_F_DUMP,
                s,
                &[family, 0, 0, 0, 0, 0, 0, 0],
            )
        };
        for owned in dump_consistent(socket, next, make)? {
            let m = owned.message();
            if m.kind != RTM_NEWADDR || m.body.len() < 8 || m.body[0] != family {
                continue;
            }
            if u32::from_ne_bytes([m.body[4], m.body[5], m.body[6], m.body[7]]) != index {
                continue;
            }
            let (mut local, mut address) = (None, None);
            for (kind, v) in attrs(&m.body[8..]) {
                let ip = match v.len() {
                    4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                    _ => None,
                };
                match kind {
                    IFA_LOCAL => local = ip,
                    IFA_ADDRESS => address = ip,
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.insert(ip);
            }
        }
        Ok(out)
    }

    /// Adds `ip` as a host address (/32 or /128) to interface `index`; false if it was there.
    pub(crate) fn add_address(&mut self, index: u32, ip: IpAddr) -> io::Result<bool> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.address(RTM_NEWADDR, flags, index, ip, EEXIST, "add")
    }

    /// Removes the host address `ip` from interface `index`; false if it was not there.
    pub(crate) fn delete_address(&mut self, index: u32, ip: IpAddr) -> io::Result<bool> {
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        self.address(RTM_DELADDR, flags, index, ip, EADDRNOTAVAIL, "remove")
    }

    /// One address request; `unchanged` is the errno meaning "already so" (false).
    fn address(
        &mut self,
        kind: u16,
        flags: u16,
        index: u32,
        ip: IpAddr,
        unchanged: i32,
        verb: &str,
    ) -> io::Result<bool> {
        let seq = self.next_seq();
        let msg = message(kind, flags, seq, &addr_body(index, ip));
        match request(&self.socket, &msg, seq) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(unchanged) => Ok(false),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot {verb} address {ip}: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_requests_carry_a_host_prefix_and_both_addresses() {
        let b = addr_body(7, "10.96.0.1".parse().unwrap());
        // ifaddrmsg: AF_INET, /32, flags 0, scope 0, index 7.
        assert_eq!(&b[..8], &[2, 32, 0, 0, 7, 0, 0, 0]);
        let a: Vec<(u16, &[u8])> = attrs(&b[8..]).collect();
        assert_eq!(
            a,
            vec![
                (IFA_LOCAL, &[10, 96, 0, 1][..]),
                (IFA_ADDRESS, &[10, 96, 0, 1][..])
            ]
        );
        let b = addr_body(1, "fd00::1".parse().unwrap());
        assert_eq!(&b[..2], &[10, 128]);
    }

    #[test]
    fn a_dummy_link_request_names_its_kind() {
        let m = message(
            RTM_NEWLINK,
            NLM_F_REQUEST,
            1,
            &link_body(0, Some("kube-ipvs0")),
        );
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        let a: Vec<(u16, &[u8])> = attrs(&m[32..]).collect();
        assert_eq!(a, vec![(IFLA_IFNAME, &b"kube-ipvs0\0"[..])]);
    }
}
