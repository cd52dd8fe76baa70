//! Netlink plumbing shared by every netlink user of the crate (conntrack, nf_tables, IPVS,
//! rtnetlink): splitting a datagram into messages and a payload into attributes, writing
//! an attribute (pure), and with `apply` the request and dump loops over a socket.
// Each backend feature uses a part of this module; with only some of them on, the rest
// is unused.
#![cfg_attr(
    not(all(feature = "apply", feature = "ipvs", feature = "nftables")),
    allow(dead_code)
)]

/// The type bits of an attribute (without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NLMSG_ERROR`: an acknowledgement or an error.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;

/// `NLM_F_DUMP_INTR`: the dump changed while it was read; its answers are inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// One message of a datagram.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Message<'a> {
    /// `nlmsg_type`.
    pub(crate) kind: u16,
    /// `nlmsg_flags`.
    pub(crate) flags: u16,
    /// `nlmsg_seq`.
    pub(crate) seq: u32,
    /// What follows the 16-byte header.
    pub(crate) body: &'a [u8],
}

impl Message<'_> {
    /// For `NLMSG_ERROR`: the errno (0 for an acknowledgement).
    pub(crate) fn errno(&self) -> Option<i32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        Some(i32::from_ne_bytes(self.body.get(..4)?.try_into().ok()?))
    }

    /// For `NLMSG_ERROR`: the sequence number of the message it answers (from the echoed
    /// header).
    #[cfg(feature = "apply")]
    pub(crate) fn answered_seq(&self) -> Option<u32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        Some(u32::from_ne_bytes(self.body.get(12..16)?.try_into().ok()?))
    }
}

/// The messages of a datagram; stops at the first malformed one.
pub(crate) fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        let m = Message {
            kind: u16::from_ne_bytes([data[4], data[5]]),
            flags: u16::from_ne_bytes([data[6], data[7]]),
            seq: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
            body: &data[16..len],
        };
        data = &data[((len + 3) & !3).min(data.len())..];
        Some(m)
    })
}

/// Appends one netlink attribute (`len`, `type`, payload, padding to 4 bytes).
pub(crate) fn push_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// Netlink attributes: `(type, payload)` pairs; stops at the first malformed one.
pub(crate) fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[((len + 3) & !3).min(data.len())..];
        Some((kind, payload))
    })
}

/// Sends one request that asks for an acknowledgement (`NLM_F_ACK`, sequence `seq`) and
/// waits for it; a negative errno becomes the error.
#[cfg(feature = "apply")]
pub(crate) fn request(socket: &netlink_sys::Socket, msg: &[u8], seq: u32) -> std::io::Result<()> {
    exchange(socket, msg, seq, false, |_| {})
}

/// As [`request`], handing the answers that come before the acknowledgement (a `GET`'s
/// reply) to `each`.
#[cfg(feature = "apply")]
pub(crate) fn request_with(
    socket: &netlink_sys::Socket,
    msg: &[u8],
    seq: u32,
    each: impl FnMut(Message<'_>),
) -> std::io::Result<()> {
    exchange(socket, msg, seq, false, each)
}

/// How long a netlink socket waits for the kernel's answer before giving up (a stuck reply
/// must not block the daemon, or its SIGTERM, for ever).
#[cfg(feature = "apply")]
pub(crate) const RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connected nfnetlink socket (conntrack, accounting objects) with the timeouts set.
///
/// # Errors
/// Socket creation, binding or an option failed.
#[cfg(feature = "apply")]
pub(crate) fn netfilter_socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    set_timeouts(&socket)?;
    Ok(socket)
}

/// Sets the receive and send timeouts of a netlink socket.
///
/// # Errors
/// The socket refused the option.
#[cfg(feature = "apply")]
pub(crate) fn set_timeouts(socket: &netlink_sys::Socket) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    let secs = i64::try_from(RECEIVE_TIMEOUT.as_secs()).unwrap_or(30);
    let tv = nix::sys::time::TimeVal::new(secs, 0);
    let fd = socket.as_fd();
    let err = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(err)?;
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SendTimeout, &tv).map_err(err)?;
    Ok(())
}

/// Sends a dump request (sequence `seq`) and hands every answer message to `each` until
/// `NLMSG_DONE`; an error message ends the dump with its errno. A dump the kernel marks as
/// interrupted (its objects changed while it was read) ends with
/// [`std::io::ErrorKind::Interrupted`]: read it again.
#[cfg(feature = "apply")]
pub(crate) fn dump(
    socket: &netlink_sys::Socket,
    msg: &[u8],
    seq: u32,
    each: impl FnMut(Message<'_>),
) -> std::io::Result<()> {
    exchange(socket, msg, seq, true, each)
}

/// Sends `msg` and reads the answers with its sequence number (stale ones from earlier
/// requests are skipped) until the acknowledgement, or for a dump `NLMSG_DONE`.
/// A message kept after its datagram is gone.
#[cfg(feature = "apply")]
#[derive(Clone, Debug)]
pub(crate) struct Owned {
    kind: u16,
    seq: u32,
    body: Vec<u8>,
}

#[cfg(feature = "apply")]
impl Owned {
    /// The message.
    pub(crate) fn message(&self) -> Message<'_> {
        Message {
            kind: self.kind,
            flags: 0,
            seq: self.seq,
            body: &self.body,
        }
    }
}

/// As [`dump`], read again (up to five times) while the kernel says it was interrupted;
/// `make` builds the request for a sequence number `seq` hands out. Returns the messages of
/// a complete, consistent dump.
#[cfg(feature = "apply")]
pub(crate) fn dump_consistent(
    socket: &netlink_sys::Socket,
    mut seq: impl FnMut() -> u32,
    make: impl Fn(u32) -> Vec<u8>,
) -> std::io::Result<Vec<Owned>> {
    let mut last = None;
    for _ in 0..5 {
        let s = seq();
        let mut bodies = Vec::new();
        let keep = |m: Message<'_>| {
            bodies.push(Owned {
                kind: m.kind,
                seq: m.seq,
                body: m.body.to_vec(),
            });
        };
        match dump(socket, &make(s), s, keep) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => last = Some(e),
            Err(e) => return Err(e),
            Ok(()) => return Ok(bodies),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("dump interrupted")))
}

#[cfg(feature = "apply")]
fn exchange(
    socket: &netlink_sys::Socket,
    msg: &[u8],
    seq: u32,
    is_dump: bool,
    mut each: impl FnMut(Message<'_>),
) -> std::io::Result<()> {
    socket.send(msg, 0)?;
    let mut interrupted = false;
    loop {
        let (data, _) = socket.recv_from_full()?;
        for m in messages(&data) {
            // Answers to earlier requests (a timed-out one, say) are not ours.
            if m.seq != seq {
                continue;
            }
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match (m.kind, m.errno()) {
                (NLMSG_DONE, _) if is_dump && interrupted => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "the netlink dump was interrupted by a change",
                    ));
                }
                (NLMSG_DONE, _) if is_dump => return Ok(()),
                (_, Some(0)) if !is_dump => return Ok(()),
                (_, Some(0)) => {}
                (_, Some(e)) => return Err(std::io::Error::from_raw_os_error(-e)),
                _ => each(m),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_split_and_stop_at_garbage() {
        // Two messages: an ack for seq 7, then DONE; then three stray bytes.
        let mut data = Vec::new();
        data.extend_from_slice(&36u32.to_ne_bytes());
        data.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        data.extend_from_slice(&[0; 10]);
        data.extend_from_slice(&0i32.to_ne_bytes());
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&7u32.to_ne_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&16u32.to_ne_bytes());
        data.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        data.extend_from_slice(&[0; 10]);
        data.extend_from_slice(&[1, 2, 3]);
        let all: Vec<Message<'_>> = messages(&data).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].errno(), Some(0));
        #[cfg(feature = "apply")]
        assert_eq!(all[0].answered_seq(), Some(7));
        assert_eq!(all[1].errno(), None);
        assert_eq!(all[1].kind, NLMSG_DONE);
        // Attributes: a nested-flagged one, then a truncated one.
        let a = [8, 0, 0x01, 0x80, 1, 2, 3, 4, 9, 0, 2, 0];
        assert_eq!(
            attrs(&a).collect::<Vec<_>>(),
            vec![(1, &[1u8, 2, 3, 4][..])]
        );
    }
}
