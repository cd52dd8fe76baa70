//! ctnetlink: dump the conntrack table and delete entries by their original tuple. The
//! message encoding and parsing are pure and tested byte for byte; [`Conntrack`] is a thin
//! blocking socket layer. It needs `CAP_NET_ADMIN` in the network namespace it works on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use netlink_sys::Socket;
use service_core::model::IpFamily;

use super::{ConntrackCleaner, Entry, Filter, Tuple};
use crate::nlmsg::{NLMSG_DONE, NLMSG_ERROR, attrs};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn push_nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn header(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `finish`
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0 (big endian).
    buf.extend_from_slice(&[family, 0, 0, 0]);
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

fn family_byte(family: &IpFamily) -> u8 {
    if *family == IpFamily::Ipv6 {
        AF_INET6
    } else {
        AF_INET
    }
}

/// A request to dump every entry of a family.
pub fn encode_dump(family: &IpFamily, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(20);
    header(
        &mut buf,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family_byte(family),
    );
    finish(buf)
}

fn push_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) {
    push_nested(buf, kind, |buf| {
        push_nested(buf, CTA_TUPLE_IP, |buf| match (t.src.ip(), t.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                push_attr(buf, CTA_IP_V4_SRC, &s.octets());
                push_attr(buf, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                push_attr(buf, CTA_IP_V6_SRC, &v6(s).octets());
                push_attr(buf, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        push_nested(buf, CTA_TUPLE_PROTO, |buf| {
            push_attr(buf, CTA_PROTO_NUM, &[t.protocol]);
            push_attr(buf, CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
            push_attr(buf, CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
        });
    });
}

/// A request to delete the entry with this original tuple.
pub fn encode_delete(orig: &Tuple, seq: u32) -> Vec<u8> {
    let family = if orig.src.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let mut buf = Vec::with_capacity(96);
    header(
        &mut buf,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
    );
    push_tuple(&mut buf, CTA_TUPLE_ORIG, orig);
    finish(buf)
}

fn parse_tuple(data: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for (kind, payload) in attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, p) in attrs(payload) {
                    let ip = match (k, p.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            let b: [u8; 16] = p.try_into().ok()?;
                            IpAddr::V6(Ipv6Addr::from(b))
                        }
                        _ => continue,
                    };
                    if matches!(k, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(payload) {
                    match (k, p.len()) {
                        (CTA_PROTO_NUM, 1) => proto = Some(p[0]),
                        (CTA_PROTO_SRC_PORT, 2) => sport = u16::from_be_bytes([p[0], p[1]]),
                        (CTA_PROTO_DST_PORT, 2) => dport = u16::from_be_bytes([p[0], p[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: SocketAddr::new(src?, sport),
        dst: SocketAddr::new(dst?, dport),
        protocol: proto?,
    })
}

/// One parsed netlink message.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Entry(Entry),
    Done,
    /// An ACK (errno 0) or an error (negative errno).
    Ack(i32),
    Other,
}

/// Parses one message.
fn parse_message(m: &crate::nlmsg::Message<'_>) -> Reply {
    match m.kind {
        NLMSG_DONE => Reply::Done,
        NLMSG_ERROR => m.errno().map_or(Reply::Other, Reply::Ack),
        k if k >> 8 == NFNL_SUBSYS_CTNETLINK && m.body.len() >= 4 => {
            let (mut orig, mut reply) = (None, None);
            for (a, p) in attrs(&m.body[4..]) {
                match a {
                    CTA_TUPLE_ORIG => orig = parse_tuple(p),
                    CTA_TUPLE_REPLY => reply = parse_tuple(p),
                    _ => {}
                }
            }
            match (orig, reply) {
                (Some(orig), Some(reply)) => Reply::Entry(Entry { orig, reply }),
                _ => Reply::Other,
            }
        }
        _ => Reply::Other,
    }
}

/// Splits a datagram into netlink messages and parses each.
#[cfg(test)]
fn parse_datagram(data: &[u8]) -> Vec<Reply> {
    crate::nlmsg::messages(data)
        .map(|m| parse_message(&m))
        .collect()
}

/// A ctnetlink socket.
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    /// Opens a socket in the current network namespace.
    ///
    /// # Errors
    /// Socket creation or binding failed.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            socket: crate::nlmsg::netfilter_socket()?,
            seq: 1,
        })
    }

    /// Opens a socket inside the network namespace at `path` (e.g. `/run/netns/NAME`). The
    /// socket stays in that namespace; the calling thread does not move.
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

    /// Every entry of a family. A dump the kernel marks as interrupted (the table changed
    /// while it was read, common on a busy node) is read again, up to five times; the last
    /// one is used as it is (an entry missed is cleared by a later sync).
    ///
    /// # Errors
    /// The dump failed.
    pub fn dump(&mut self, family: &IpFamily) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for attempt in 0..5 {
            out.clear();
            let seq = self.next_seq();
            let result = crate::nlmsg::dump(&self.socket, &encode_dump(family, seq), seq, |m| {
                if let Reply::Entry(e) = parse_message(&m) {
                    out.push(e);
                }
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted && attempt < 4 => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(out),
                Err(e) => return Err(e),
                Ok(()) => return Ok(out),
            }
        }
        Ok(out)
    }

    /// Deletes one entry by its original tuple. An entry already gone is not an error.
    ///
    /// # Errors
    /// The kernel refused.
    pub fn delete(&mut self, orig: &Tuple) -> io::Result<()> {
        let seq = self.next_seq();
        match crate::nlmsg::request(&self.socket, &encode_delete(orig, seq), seq) {
            // ENOENT: already expired or deleted.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Deletes every entry of `family` matching any of `filters`; returns how many.
    ///
    /// # Errors
    /// The dump or a deletion failed.
    pub fn delete_matching(&mut self, family: &IpFamily, filters: &[Filter]) -> io::Result<usize> {
        if filters.is_empty() {
            return Ok(0);
        }
        let entries = self.dump(family)?;
        let mut n = 0;
        for e in entries
            .iter()
            .filter(|e| filters.iter().any(|f| f.matches(e)))
        {
            self.delete(&e.orig)?;
            n += 1;
        }
        Ok(n)
    }
}

impl ConntrackCleaner for Conntrack {
    fn clear(&mut self, family: &IpFamily, filters: &[Filter]) -> io::Result<usize> {
        self.delete_matching(family, filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: &str, dst: &str) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 17,
        }
    }

    #[test]
    fn dump_request_bytes() {
        let b = encode_dump(&IpFamily::Ipv4, 7);
        // nlmsghdr(len 20, type 0x0101, flags REQUEST|DUMP, seq 7, pid 0) + nfgenmsg(AF_INET).
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&0x0101u16.to_ne_bytes());
        want.extend_from_slice(&0x0301u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]);
        assert_eq!(b, want);
    }

    #[test]
    fn delete_request_round_trips_through_the_parser() {
        let t = tuple("10.0.0.1:5353", "10.96.0.10:53");
        let b = encode_delete(&t, 9);
        assert_eq!(
            u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0102);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_ACK);
        // The nested tuple parses back to the same values.
        let (kind, payload) = attrs(&b[20..]).next().unwrap();
        assert_eq!(kind, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(payload), Some(t));
        let t6 = tuple("[fd00::1]:40000", "[fd00:96::10]:53");
        let b6 = encode_delete(&t6, 1);
        assert_eq!(b6[16], AF_INET6);
        assert_eq!(parse_tuple(attrs(&b6[20..]).next().unwrap().1), Some(t6));
    }

    #[test]
    fn parses_a_dumped_entry_and_acks() {
        // A kernel NEW message carries both tuples (plus attributes we skip).
        let orig = tuple("10.244.1.9:41000", "10.96.0.10:53");
        let reply = tuple("10.244.2.2:53", "10.244.1.9:41000");
        let mut m = Vec::new();
        header(&mut m, 0, 0x2, 1, AF_INET);
        push_tuple(&mut m, CTA_TUPLE_ORIG, &orig);
        push_tuple(&mut m, CTA_TUPLE_REPLY, &reply);
        push_attr(&mut m, 7, &100u32.to_be_bytes()); // CTA_TIMEOUT, ignored
        let mut data = finish(m);
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0; 10]);
        done.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&done);
        let parsed = parse_datagram(&data);
        assert_eq!(
            parsed,
            vec![Reply::Entry(Entry { orig, reply }), Reply::Done]
        );
        let f = Filter {
            protocol: 17,
            reply_src: Some("10.244.2.2".parse().unwrap()),
            ..Filter::default()
        };
        assert!(f.matches(&Entry { orig, reply }));
        let f = Filter {
            protocol: 17,
            orig_dst: Some("10.96.0.11".parse().unwrap()),
            ..Filter::default()
        };
        assert!(!f.matches(&Entry { orig, reply }));
    }

    #[test]
    fn truncated_input_does_not_panic() {
        let b = encode_delete(&tuple("10.0.0.1:1", "10.0.0.2:2"), 1);
        for n in 0..b.len() {
            let _ = parse_datagram(&b[..n]);
            let _ = parse_tuple(&b[20.min(n)..n]);
        }
    }
}
