//! Extended accounting objects (`nfacct`, the kernel's `nfnetlink_acct`): named packet and
//! byte counters that iptables rules add to with `-m nfacct --nfacct-name NAME`.
//!
//! kube-proxy's iptables mode creates two at start and counts in its rules what operators
//! need to know before moving to nftables mode: [`CT_STATE_INVALID_DROPPED`] (packets
//! KUBE-FORWARD drops because conntrack calls them INVALID) and
//! [`LOCALHOST_NODEPORTS_ACCEPTED`] (packets to node ports on `127.0.0.0/8`, which nftables
//! mode does not serve). The node agent exports them as
//! `kubeproxy_iptables_ct_state_invalid_dropped_packets_total` and
//! `kubeproxy_iptables_localhost_nodeports_accepted_packets_total`.
//!
//! Encoding is pure ([`encode_new`], [`encode_get`], [`parse_counter`]); [`Nfacct`] (feature
//! `apply`) is the socket.

/// The counter of packets dropped as conntrack-INVALID in KUBE-FORWARD.
pub const CT_STATE_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// The counter of packets accepted on node ports of `127.0.0.0/8`.
pub const LOCALHOST_NODEPORTS_ACCEPTED: &str = "localhost_nps_accepted_pkts";

const NFNL_SUBSYS_ACCT: u16 = 7;
const NFNL_MSG_ACCT_NEW: u16 = 0;
const NFNL_MSG_ACCT_GET: u16 = 1;
const NFACCT_NAME: u16 = 1;
const NFACCT_PKTS: u16 = 2;
const NFACCT_BYTES: u16 = 3;
/// The longest name the kernel keeps (`NFACCT_NAME_MAX` less the NUL).
pub const MAX_NAME: usize = 31;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

fn message(msg: u16, flags: u16, seq: u32, name: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&((NFNL_SUBSYS_ACCT << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    buf.extend_from_slice(&[0, 0, 0, 0]);
    let mut value = name.as_bytes()[..name.len().min(MAX_NAME)].to_vec();
    value.push(0);
    crate::nlmsg::push_attr(&mut buf, NFACCT_NAME, &value);
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// A request that creates the counter `name` (failing with `EEXIST` when it exists).
pub fn encode_new(name: &str, seq: u32) -> Vec<u8> {
    message(
        NFNL_MSG_ACCT_NEW,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        name,
    )
}

/// A request for the counter `name` (failing with `ENOENT` when it does not exist).
pub fn encode_get(name: &str, seq: u32) -> Vec<u8> {
    message(NFNL_MSG_ACCT_GET, NLM_F_REQUEST | NLM_F_ACK, seq, name)
}

/// One counter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counter {
    /// Its name.
    pub name: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// The counter in the body (after the netlink header) of an answer to [`encode_get`].
pub fn parse_counter(body: &[u8]) -> Option<Counter> {
    // Skip nfgenmsg.
    let mut c = Counter {
        name: String::new(),
        packets: 0,
        bytes: 0,
    };
    let be64 = |p: &[u8]| Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?));
    let mut named = false;
    for (kind, payload) in crate::nlmsg::attrs(body.get(4..)?) {
        match kind {
            NFACCT_NAME => {
                let end = payload
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(payload.len());
                c.name = String::from_utf8_lossy(&payload[..end]).into_owned();
                named = true;
            }
            NFACCT_PKTS => c.packets = be64(payload)?,
            NFACCT_BYTES => c.bytes = be64(payload)?,
            _ => {}
        }
    }
    named.then_some(c)
}

#[cfg(feature = "apply")]
pub use socket::Nfacct;

#[cfg(feature = "apply")]
mod socket {
    use std::io;
    use std::path::Path;

    use netlink_sys::Socket;

    use super::{Counter, encode_get, encode_new, parse_counter};

    /// An nfnetlink socket for accounting objects.
    #[derive(Debug)]
    pub struct Nfacct {
        socket: Socket,
        seq: u32,
    }

    impl Nfacct {
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

        /// Opens a socket inside the network namespace at `path`.
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

        /// The counter `name`, or `None` when it does not exist.
        ///
        /// # Errors
        /// The kernel refused (no `nfnetlink_acct`: `EOPNOTSUPP` or `EPROTONOSUPPORT`).
        pub fn get(&mut self, name: &str) -> io::Result<Option<Counter>> {
            let seq = self.next_seq();
            let mut found = None;
            let result =
                crate::nlmsg::request_with(&self.socket, &encode_get(name, seq), seq, |m| {
                    if let Some(c) = parse_counter(m.body) {
                        found = Some(c);
                    }
                });
            match result {
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(None),
                Err(e) => Err(e),
                Ok(()) => Ok(found),
            }
        }

        /// Creates kube-proxy's two counters ([`super::CT_STATE_INVALID_DROPPED`],
        /// [`super::LOCALHOST_NODEPORTS_ACCEPTED`]) and turns on, in `config`, the rules
        /// that count into each one that exists; returns the counters that could not be
        /// created, with why (their rules are written without the count, as kube-proxy
        /// does).
        pub fn ensure_kube_proxy_counters(
            &mut self,
            config: &mut crate::iptables::IptablesConfig,
        ) -> Vec<(&'static str, io::Error)> {
            let mut failed = Vec::new();
            for name in [
                super::CT_STATE_INVALID_DROPPED,
                super::LOCALHOST_NODEPORTS_ACCEPTED,
            ] {
                let ok = match self.ensure(name) {
                    Ok(()) => true,
                    Err(e) => {
                        failed.push((name, e));
                        false
                    }
                };
                if name == super::CT_STATE_INVALID_DROPPED {
                    config.count_invalid_drops = ok;
                } else {
                    config.count_localhost_nodeports = ok;
                }
            }
            failed
        }

        /// Makes sure the counter `name` exists (kube-proxy's `Ensure`): created when
        /// missing, left with its counts when present.
        ///
        /// # Errors
        /// The kernel refused.
        pub fn ensure(&mut self, name: &str) -> io::Result<()> {
            if self.get(name)?.is_some() {
                return Ok(());
            }
            let seq = self.next_seq();
            match crate::nlmsg::request(&self.socket, &encode_new(name, seq), seq) {
                // Created by someone else in between.
                Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
                other => other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_nfnetlink_acct_messages_with_a_nul_terminated_name() {
        let m = encode_new(CT_STATE_INVALID_DROPPED, 9);
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 7 << 8);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
        let (kind, name) = crate::nlmsg::attrs(&m[20..]).next().unwrap();
        assert_eq!(kind, NFACCT_NAME);
        assert_eq!(name, b"ct_state_invalid_dropped_pkts\0");
        let g = encode_get(LOCALHOST_NODEPORTS_ACCEPTED, 3);
        assert_eq!(u16::from_ne_bytes([g[4], g[5]]), (7 << 8) | 1);
    }

    #[test]
    fn a_counter_parses_from_its_attributes() {
        let mut body = vec![0, 0, 0, 0];
        crate::nlmsg::push_attr(&mut body, NFACCT_NAME, b"localhost_nps_accepted_pkts\0");
        crate::nlmsg::push_attr(&mut body, NFACCT_PKTS, &7u64.to_be_bytes());
        crate::nlmsg::push_attr(&mut body, NFACCT_BYTES, &420u64.to_be_bytes());
        assert_eq!(
            parse_counter(&body),
            Some(Counter {
                name: LOCALHOST_NODEPORTS_ACCEPTED.into(),
                packets: 7,
                bytes: 420,
            })
        );
        assert_eq!(parse_counter(&[0, 0, 0, 0]), None);
        assert_eq!(parse_counter(&[]), None);
    }
}
