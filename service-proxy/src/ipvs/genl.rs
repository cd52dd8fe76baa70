//! IPVS generic-netlink messages (`include/uapi/linux/ip_vs.h`), encoded byte for byte as
//! `ipvsadm` 1.31 (libnl 3.7) sends them. Pure: sending is the applier's job. The family
//! id is resolved at runtime (`CTRL_CMD_GETFAMILY` for `"IPVS"`), so it is a parameter.

use std::net::IpAddr;

use super::model::{RealServer, VirtualServer};
use crate::nlmsg::{NLMSG_DONE, NLMSG_ERROR, attrs, messages, push_attr as attr};

/// The generic-netlink family name.
pub const FAMILY_NAME: &str = "IPVS";
/// The family's version.
pub const VERSION: u8 = 1;

/// `GENL_ID_CTRL`: the controller family.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// IPVS commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    /// Add a virtual server.
    NewService = 1,
    /// Change a virtual server.
    SetService = 2,
    /// Delete a virtual server.
    DelService = 3,
    /// Get (dump) virtual servers.
    GetService = 4,
    /// Add a real server.
    NewDest = 5,
    /// Change a real server.
    SetDest = 6,
    /// Delete a real server.
    DelDest = 7,
    /// Get (dump) a virtual server's real servers.
    GetDest = 8,
    /// Set the connection timeouts.
    SetConfig = 12,
    /// Delete every virtual server.
    Flush = 17,
}

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_TUN_TYPE: u16 = 13;
const DEST_ATTR_TUN_PORT: u16 = 14;
const DEST_ATTR_TUN_FLAGS: u16 = 15;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn nest(b: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let at = b.len();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    body(b);
    let len = u16::try_from(b.len() - at).unwrap_or(u16::MAX);
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn family(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
fn inet_addr(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

/// A message: header, then attributes written by `body`.
fn message(
    family_id: u16,
    seq: u32,
    cmd: u8,
    flags: u16,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut b = Vec::with_capacity(200);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&family_id.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[cmd, VERSION, 0, 0]);
    body(&mut b);
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// The service attribute. `with_scheduler` is false where ipvsadm leaves the name empty
/// (destination and delete commands, which only identify the service).
fn service(b: &mut Vec<u8>, vs: &VirtualServer, with_scheduler: bool) {
    nest(b, CMD_ATTR_SERVICE, |b| {
        attr(b, SVC_ATTR_AF, &family(&vs.addr).to_ne_bytes());
        attr(b, SVC_ATTR_PROTOCOL, &vs.protocol.number().to_ne_bytes());
        attr(b, SVC_ATTR_ADDR, &inet_addr(&vs.addr));
        attr(b, SVC_ATTR_PORT, &vs.port.to_be_bytes());
        let mut name = if with_scheduler {
            vs.scheduler.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        name.push(0);
        attr(b, SVC_ATTR_SCHED_NAME, &name);
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&vs.flags.to_ne_bytes());
        flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        attr(b, SVC_ATTR_FLAGS, &flags);
        attr(b, SVC_ATTR_TIMEOUT, &vs.timeout.to_ne_bytes());
        attr(b, SVC_ATTR_NETMASK, &vs.netmask().to_ne_bytes());
    });
}

fn dest(b: &mut Vec<u8>, rs: &RealServer) {
    nest(b, CMD_ATTR_DEST, |b| {
        attr(
            b,
            DEST_ATTR_ADDR_FAMILY,
            &family(&rs.addr.ip()).to_ne_bytes(),
        );
        attr(b, DEST_ATTR_ADDR, &inet_addr(&rs.addr.ip()));
        attr(b, DEST_ATTR_PORT, &rs.addr.port().to_be_bytes());
        attr(b, DEST_ATTR_FWD_METHOD, &rs.forward.number().to_ne_bytes());
        attr(b, DEST_ATTR_WEIGHT, &rs.weight.to_ne_bytes());
        attr(b, DEST_ATTR_TUN_TYPE, &[0]);
        attr(b, DEST_ATTR_TUN_PORT, &0u16.to_be_bytes());
        attr(b, DEST_ATTR_TUN_FLAGS, &0u16.to_ne_bytes());
        attr(b, DEST_ATTR_U_THRESH, &0u32.to_ne_bytes());
        attr(b, DEST_ATTR_L_THRESH, &0u32.to_ne_bytes());
    });
}

/// A virtual-server command: new, set (with its scheduler) or delete.
pub fn service_message(family_id: u16, seq: u32, cmd: Command, vs: &VirtualServer) -> Vec<u8> {
    let with_scheduler = matches!(cmd, Command::NewService | Command::SetService);
    message(family_id, seq, cmd as u8, NLM_F_REQUEST | NLM_F_ACK, |b| {
        service(b, vs, with_scheduler);
    })
}

/// A real-server command on `vs`: new, set or delete.
pub fn dest_message(
    family_id: u16,
    seq: u32,
    cmd: Command,
    vs: &VirtualServer,
    rs: &RealServer,
) -> Vec<u8> {
    message(family_id, seq, cmd as u8, NLM_F_REQUEST | NLM_F_ACK, |b| {
        service(b, vs, false);
        dest(b, rs);
    })
}

/// Dumps every virtual server.
pub fn dump_services(family_id: u16, seq: u32) -> Vec<u8> {
    message(
        family_id,
        seq,
        Command::GetService as u8,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        |_| {},
    )
}

/// Dumps the real servers of `vs`.
pub fn dump_dests(family_id: u16, seq: u32, vs: &VirtualServer) -> Vec<u8> {
    message(
        family_id,
        seq,
        Command::GetDest as u8,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        |b| service(b, vs, false),
    )
}

/// Deletes every virtual server.
pub fn flush(family_id: u16, seq: u32) -> Vec<u8> {
    message(
        family_id,
        seq,
        Command::Flush as u8,
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    )
}

/// Sets the TCP, TCP FIN and UDP connection timeouts (seconds; 0 leaves one unchanged).
pub fn set_timeouts(family_id: u16, seq: u32, tcp: u32, tcp_fin: u32, udp: u32) -> Vec<u8> {
    message(
        family_id,
        seq,
        Command::SetConfig as u8,
        NLM_F_REQUEST | NLM_F_ACK,
        |b| {
            attr(b, CMD_ATTR_TIMEOUT_TCP, &tcp.to_ne_bytes());
            attr(b, CMD_ATTR_TIMEOUT_TCP_FIN, &tcp_fin.to_ne_bytes());
            attr(b, CMD_ATTR_TIMEOUT_UDP, &udp.to_ne_bytes());
        },
    )
}

/// Asks the controller for the IPVS family's id.
pub fn get_family(seq: u32) -> Vec<u8> {
    message(
        GENL_ID_CTRL,
        seq,
        CTRL_CMD_GETFAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        |b| {
            let mut name = FAMILY_NAME.as_bytes().to_vec();
            name.push(0);
            attr(b, CTRL_ATTR_FAMILY_NAME, &name);
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::model::{FLAG_PERSISTENT, FLAG_SCHED2, Forward, IpvsProtocol};
    use super::*;

    /// The messages `ipvsadm` 1.31 sent for each command (family 0x1c, seq and pid zeroed),
    /// captured on a real IPVS kernel (`../shared/reference/ipvs-golden.txt`).
    const GOLDEN: &str = include_str!("testdata/ipvsadm-golden.txt");

    fn golden(command: &str) -> Vec<Vec<u8>> {
        let mut lines = GOLDEN.lines();
        let header = format!("### {command}  (rc=0)");
        lines
            .by_ref()
            .find(|l| *l == header)
            .unwrap_or_else(|| panic!("no golden entry {command}"));
        lines
            .take_while(|l| l.starts_with("type="))
            .map(|l| {
                let hex: String = l
                    .split("hex=")
                    .nth(1)
                    .unwrap()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    fn vs(
        addr: &str,
        protocol: IpvsProtocol,
        port: u16,
        sched: &str,
        flags: u32,
        timeout: u32,
    ) -> VirtualServer {
        VirtualServer {
            addr: addr.parse().unwrap(),
            protocol,
            port,
            scheduler: sched.into(),
            flags,
            timeout,
        }
    }

    fn rs(addr: &str, weight: u32, forward: Forward) -> RealServer {
        RealServer {
            addr: addr.parse().unwrap(),
            weight,
            forward,
        }
    }

    const FAMILY: u16 = 0x1c;

    #[test]
    fn services_encode_like_ipvsadm() {
        use IpvsProtocol::*;
        let cases = [
            (
                "ipvsadm -A -t 10.0.0.1:80 -s rr",
                Command::NewService,
                vs("10.0.0.1", Tcp, 80, "rr", 0, 0),
            ),
            (
                "ipvsadm -A -t 10.0.0.1:80 -s rr -p 10800",
                Command::NewService,
                vs("10.0.0.1", Tcp, 80, "rr", FLAG_PERSISTENT, 10800),
            ),
            (
                "ipvsadm -A -u 10.0.0.10:53 -s rr",
                Command::NewService,
                vs("10.0.0.10", Udp, 53, "rr", 0, 0),
            ),
            (
                "ipvsadm -A --sctp-service 10.0.0.2:9999 -s rr",
                Command::NewService,
                vs("10.0.0.2", Sctp, 9999, "rr", 0, 0),
            ),
            (
                "ipvsadm -A -t [fd00::1]:443 -s rr -p 10800",
                Command::NewService,
                vs("fd00::1", Tcp, 443, "rr", FLAG_PERSISTENT, 10800),
            ),
            (
                "ipvsadm -A -t 10.0.0.1:80 -s mh -b flag-2",
                Command::NewService,
                vs("10.0.0.1", Tcp, 80, "mh", FLAG_SCHED2, 0),
            ),
            (
                "ipvsadm -E -t 10.0.0.1:80 -s wrr",
                Command::SetService,
                vs("10.0.0.1", Tcp, 80, "wrr", 0, 0),
            ),
            (
                "ipvsadm -D -t 10.0.0.1:80",
                Command::DelService,
                vs("10.0.0.1", Tcp, 80, "rr", 0, 0),
            ),
        ];
        for (command, cmd, v) in cases {
            assert_eq!(
                service_message(FAMILY, 0, cmd, &v),
                golden(command)[0],
                "{command}"
            );
        }
    }

    #[test]
    fn destinations_and_the_rest_encode_like_ipvsadm() {
        let v4 = vs("10.0.0.1", IpvsProtocol::Tcp, 80, "rr", 0, 0);
        let v6 = vs("fd00::1", IpvsProtocol::Tcp, 443, "rr", 0, 0);
        let cases = [
            (
                "ipvsadm -a -t 10.0.0.1:80 -r 10.244.1.5:8080 -m -w 1",
                Command::NewDest,
                &v4,
                rs("10.244.1.5:8080", 1, Forward::Masquerade),
            ),
            (
                "ipvsadm -a -t [fd00::1]:443 -r [fd00:10:244::5]:8443 -m -w 1",
                Command::NewDest,
                &v6,
                rs("[fd00:10:244::5]:8443", 1, Forward::Masquerade),
            ),
            (
                "ipvsadm -e -t 10.0.0.1:80 -r 10.244.1.5:8080 -m -w 0",
                Command::SetDest,
                &v4,
                rs("10.244.1.5:8080", 0, Forward::Masquerade),
            ),
            // ipvsadm fills in its defaults (direct routing, weight 1); the kernel ignores them.
            (
                "ipvsadm -d -t 10.0.0.1:80 -r 10.244.1.5:8080",
                Command::DelDest,
                &v4,
                rs("10.244.1.5:8080", 1, Forward::DirectRoute),
            ),
        ];
        for (command, cmd, v, r) in cases {
            assert_eq!(
                dest_message(FAMILY, 0, cmd, v, &r),
                golden(command)[0],
                "{command}"
            );
        }
        assert_eq!(flush(FAMILY, 0), golden("ipvsadm -C")[0]);
        assert_eq!(
            set_timeouts(FAMILY, 0, 900, 120, 300),
            golden("ipvsadm --set 900 120 300")[0]
        );
        assert_eq!(dump_services(FAMILY, 0), golden("ipvsadm -S -n")[0]);
        let restore = golden(
            "ipvsadm -R <<< -A -t 10.0.0.1:80 -s rr;-a -t 10.0.0.1:80 -r 10.244.1.5:8080 -m -w 1;",
        );
        assert_eq!(
            service_message(FAMILY, 0, Command::NewService, &v4),
            restore[0]
        );
        assert_eq!(
            dest_message(
                FAMILY,
                0,
                Command::NewDest,
                &v4,
                &rs("10.244.1.5:8080", 1, Forward::Masquerade)
            ),
            restore[1]
        );
    }

    #[test]
    fn family_lookup_asks_the_controller_for_ipvs() {
        let m = get_family(7);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), GENL_ID_CTRL);
        assert_eq!(m[16], CTRL_CMD_GETFAMILY);
        assert!(m.windows(5).any(|w| w == b"IPVS\0"));
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
    }
}

/// What the kernel answered, message by message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A virtual server (dump of `GET_SERVICE`).
    Service(VirtualServer),
    /// A real server with its connection counts (dump of `GET_DEST`).
    Dest(super::diff::KernelDest),
    /// The end of a dump.
    Done,
    /// An acknowledgement (0) or an error (negative errno).
    Ack(i32),
    /// Anything else.
    Other,
}

fn u16_at(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

fn u32_at(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn be16_at(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn addr_of(af: u16, v: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => {
            let o: [u8; 4] = v.get(..4)?.try_into().ok()?;
            Some(IpAddr::from(o))
        }
        AF_INET6 => {
            let o: [u8; 16] = v.get(..16)?.try_into().ok()?;
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}

fn parse_service(v: &[u8]) -> Option<VirtualServer> {
    let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut sched, mut flags, mut timeout) = (String::new(), 0, 0);
    for (ty, value) in attrs(v) {
        match ty {
            SVC_ATTR_AF => af = u16_at(value),
            SVC_ATTR_PROTOCOL => proto = u16_at(value),
            SVC_ATTR_ADDR => addr = Some(value),
            SVC_ATTR_PORT => port = be16_at(value),
            SVC_ATTR_SCHED_NAME => {
                sched = String::from_utf8_lossy(value)
                    .trim_end_matches('\0')
                    .to_owned();
            }
            SVC_ATTR_FLAGS => flags = u32_at(value).unwrap_or(0),
            SVC_ATTR_TIMEOUT => timeout = u32_at(value).unwrap_or(0),
            _ => {}
        }
    }
    let protocol = match proto? {
        6 => super::model::IpvsProtocol::Tcp,
        17 => super::model::IpvsProtocol::Udp,
        132 => super::model::IpvsProtocol::Sctp,
        _ => return None,
    };
    Some(VirtualServer {
        addr: addr_of(af?, addr?)?,
        protocol,
        port: port?,
        scheduler: sched,
        flags,
        timeout,
    })
}

fn parse_dest(v: &[u8], service_af: Option<u16>) -> Option<super::diff::KernelDest> {
    let (mut af, mut addr, mut port, mut fwd, mut weight) = (service_af, None, None, 0, 0);
    let (mut active, mut inactive) = (0, 0);
    for (ty, value) in attrs(v) {
        match ty {
            DEST_ATTR_ADDR_FAMILY => af = u16_at(value),
            DEST_ATTR_ADDR => addr = Some(value),
            DEST_ATTR_PORT => port = be16_at(value),
            DEST_ATTR_FWD_METHOD => fwd = u32_at(value).unwrap_or(0) & 0x7,
            DEST_ATTR_WEIGHT => weight = u32_at(value).unwrap_or(0),
            DEST_ATTR_ACTIVE_CONNS => active = u32_at(value).unwrap_or(0),
            DEST_ATTR_INACT_CONNS => inactive = u32_at(value).unwrap_or(0),
            _ => {}
        }
    }
    let forward = match fwd {
        0 => super::model::Forward::Masquerade,
        2 => super::model::Forward::Tunnel,
        _ => super::model::Forward::DirectRoute,
    };
    Some(super::diff::KernelDest {
        server: RealServer {
            addr: std::net::SocketAddr::new(addr_of(af?, addr?)?, port?),
            weight,
            forward,
        },
        active,
        inactive,
    })
}

/// Splits a datagram from the kernel into replies. A malformed message is `Other`.
pub fn parse_replies(data: &[u8], family_id: u16) -> Vec<Reply> {
    messages(data).map(|m| parse_reply(m, family_id)).collect()
}

/// One message from the kernel as a reply.
pub(crate) fn parse_reply(m: crate::nlmsg::Message<'_>, family_id: u16) -> Reply {
    match m.kind {
        NLMSG_DONE => Reply::Done,
        NLMSG_ERROR => m.errno().map_or(Reply::Other, Reply::Ack),
        k if k == family_id && m.body.len() >= 4 => {
            let mut service = None;
            let mut dest = None;
            for (ty, value) in attrs(&m.body[4..]) {
                match ty {
                    CMD_ATTR_SERVICE => service = Some(value),
                    CMD_ATTR_DEST => dest = Some(value),
                    _ => {}
                }
            }
            match (m.body[0], service, dest) {
                (c, Some(s), None) if c == Command::NewService as u8 => {
                    parse_service(s).map_or(Reply::Other, Reply::Service)
                }
                (c, _, Some(d)) if c == Command::NewDest as u8 => {
                    let af = service.and_then(|s| {
                        attrs(s)
                            .find(|(t, _)| *t == SVC_ATTR_AF)
                            .and_then(|(_, v)| u16_at(v))
                    });
                    parse_dest(d, af).map_or(Reply::Other, Reply::Dest)
                }
                _ => Reply::Other,
            }
        }
        _ => Reply::Other,
    }
}

#[cfg(test)]
mod parse_tests {
    use super::super::model::{FLAG_HASHED, FLAG_PERSISTENT, Forward, IpvsProtocol};
    use super::*;

    #[test]
    fn services_and_destinations_read_back() {
        let vs = VirtualServer {
            addr: "fd00::1".parse().unwrap(),
            protocol: IpvsProtocol::Udp,
            port: 53,
            scheduler: "rr".into(),
            flags: FLAG_PERSISTENT | FLAG_HASHED,
            timeout: 10800,
        };
        // A kernel dump reply carries the same attributes as a NEW_SERVICE request.
        let mut data = service_message(0x1c, 1, Command::NewService, &vs);
        let rs = RealServer {
            addr: "[fd00::5]:5353".parse().unwrap(),
            weight: 0,
            forward: Forward::Masquerade,
        };
        data.extend(dest_message(0x1c, 2, Command::NewDest, &vs, &rs));
        let replies = parse_replies(&data, 0x1c);
        assert_eq!(replies[0], Reply::Service(vs));
        match &replies[1] {
            Reply::Dest(d) => assert_eq!(d.server, rs),
            other => panic!("{other:?}"),
        }
        // Truncated or foreign input does not panic.
        for cut in 0..data.len() {
            let _ = parse_replies(&data[..cut], 0x1c);
        }
        assert_eq!(parse_replies(&data, 0x1d), vec![Reply::Other, Reply::Other]);
    }
}
