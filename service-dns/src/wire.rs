//! The DNS wire format, as much as an authoritative server needs: the request header,
//! question and EDNS(0) OPT record in; header, question, resource records with name
//! compression, OPT and truncation out (RFC 1035, RFC 6891).
//!
//! Parsing never panics and never reads past the message; every malformed request is a
//! [`WireError`] that says whether it deserves a FORMERR answer or silence.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Resource record types this server knows.
pub mod rtype {
    /// Address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Alias.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Reverse pointer.
    pub const PTR: u16 = 12;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location.
    pub const SRV: u16 = 33;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Zone transfer.
    pub const AXFR: u16 = 252;
    /// Any type.
    pub const ANY: u16 = 255;
}

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Malformed request.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented (opcode).
    pub const NOTIMP: u16 = 4;
    /// Refused (not our zone, zone transfers).
    pub const REFUSED: u16 = 5;
    /// Unsupported EDNS version (extended: needs an OPT record).
    pub const BADVERS: u16 = 16;
}

/// The Internet class.
pub const CLASS_IN: u16 = 1;
/// The largest UDP payload this server advertises and answers with (the DNS flag day 2020
/// value: no fragmentation on common paths).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS, UDP answers are limited to 512 bytes.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

const HEADER: usize = 12;
const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// A request that cannot be answered normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than a header, or a response (QR set): no answer at all.
    #[error("not a DNS request")]
    Ignore,
    /// Malformed: answer FORMERR with this ID and flags.
    #[error("malformed DNS request")]
    FormErr {
        /// The request's ID.
        id: u16,
        /// The request's flags.
        flags: u16,
    },
}

/// EDNS(0) parameters of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Edns {
    /// The requester's UDP payload size (at least 512).
    pub udp_size: u16,
    /// EDNS version.
    pub version: u8,
    /// DNSSEC OK.
    pub dnssec_ok: bool,
}

/// The longest name in presentation form (253 characters) plus slack.
const NAME_MAX: usize = 255;

/// A parsed request: its header fields, the question (as received, and lowercased in
/// presentation form for lookups) and EDNS.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// ID.
    pub id: u16,
    /// Flags (opcode in bits 11-14, RD, CD...).
    pub flags: u16,
    /// The question name exactly as received (uncompressed labels and the root byte).
    pub qname_wire: &'a [u8],
    /// Lowercase presentation form without the trailing dot (`web.shop.svc.cluster.local`;
    /// empty for the root). Bytes that cannot be part of a host name (dots inside labels,
    /// non-ASCII) are replaced with `\x01`, so they match no stored name.
    qname: [u8; NAME_MAX],
    qname_len: usize,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// EDNS, if the request carries an OPT record.
    pub edns: Option<Edns>,
}

impl Request<'_> {
    /// The lowercase question name.
    pub fn qname(&self) -> &str {
        // Only ASCII bytes are ever written to the buffer.
        std::str::from_utf8(&self.qname[..self.qname_len]).unwrap_or("")
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Skips a (possibly compressed) name starting at `i`; returns the offset after it.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        match len {
            0 => return Some(i + 1),
            1..=63 => i += 1 + usize::from(len),
            0xc0..=0xff => {
                msg.get(i + 1)?;
                return Some(i + 2);
            }
            _ => return None,
        }
    }
}

/// Parses a request.
///
/// # Errors
/// See [`WireError`].
pub fn parse_request(msg: &[u8]) -> Result<Request<'_>, WireError> {
    if msg.len() < HEADER {
        return Err(WireError::Ignore);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & QR != 0 {
        return Err(WireError::Ignore);
    }
    let formerr = WireError::FormErr { id, flags };
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let ns = u16::from_be_bytes([msg[8], msg[9]]);
    let ar = u16::from_be_bytes([msg[10], msg[11]]);
    if qd != 1 {
        return Err(formerr);
    }
    // The question name: plain labels only (nothing precedes it to point to).
    let mut qname = [0u8; NAME_MAX];
    let mut qlen = 0usize;
    let mut i = HEADER;
    let mut wire_len = 0usize;
    loop {
        let len = usize::from(*msg.get(i).ok_or(formerr)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return Err(formerr);
        }
        let label = msg.get(i + 1..i + 1 + len).ok_or(formerr)?;
        wire_len += 1 + len;
        if wire_len > 255 {
            return Err(formerr);
        }
        if qlen > 0 {
            qname[qlen] = b'.';
            qlen += 1;
        }
        for &b in label {
            qname[qlen] = match b {
                b'A'..=b'Z' => b + 32,
                b'.' | 0x80..=0xff => 1,
                _ => b,
            };
            qlen += 1;
        }
        i += 1 + len;
    }
    let qname_wire = &msg[HEADER..i];
    let qtype = u16_at(msg, i).ok_or(formerr)?;
    let qclass = u16_at(msg, i + 2).ok_or(formerr)?;
    i += 4;
    // Skip answer and authority records; find OPT among the additional ones.
    let mut edns = None;
    for n in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let name_start = i;
        i = skip_name(msg, i).ok_or(formerr)?;
        let t = u16_at(msg, i).ok_or(formerr)?;
        let class = u16_at(msg, i + 2).ok_or(formerr)?;
        let ttl_hi = u16_at(msg, i + 4).ok_or(formerr)?;
        let ttl_lo = u16_at(msg, i + 6).ok_or(formerr)?;
        let rdlen = usize::from(u16_at(msg, i + 8).ok_or(formerr)?);
        i += 10;
        msg.get(i..i + rdlen).ok_or(formerr)?;
        i += rdlen;
        if t == rtype::OPT {
            let in_additional = n >= u32::from(an) + u32::from(ns);
            // One OPT, owned by the root, in the additional section (RFC 6891 6.1.1).
            if edns.is_some() || !in_additional || msg[name_start] != 0 {
                return Err(formerr);
            }
            edns = Some(Edns {
                udp_size: class.max(CLASSIC_UDP_PAYLOAD),
                version: (ttl_hi & 0xff) as u8,
                dnssec_ok: ttl_lo & 0x8000 != 0,
            });
        }
    }
    Ok(Request {
        id,
        flags,
        qname_wire,
        qname,
        qname_len: qlen,
        qtype,
        qclass,
        edns,
    })
}

/// Where a record's owner name comes from.
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    /// The question name, as the client spelled it (a pointer to the question).
    Question,
    /// A name in presentation form (lowercase, no trailing dot).
    Name(&'a str),
}

/// Record data to write.
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// A name (CNAME, PTR, NS).
    Name(&'a str),
    /// SRV.
    Srv {
        /// Priority.
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target.
        target: &'a str,
    },
    /// One character-string of text (split in 255-byte chunks).
    Txt(&'a str),
    /// SOA.
    Soa {
        /// Primary name server.
        mname: &'a str,
        /// Responsible mailbox.
        rname: &'a str,
        /// Serial.
        serial: u32,
        /// Refresh.
        refresh: u32,
        /// Retry.
        retry: u32,
        /// Expire.
        expire: u32,
        /// Negative-caching TTL.
        minimum: u32,
    },
    /// Raw data, copied.
    Raw(&'a [u8]),
}

/// Builds a response in a caller-provided buffer (reused between requests).
///
/// Records are written until the message would exceed its limit ([`ResponseWriter::limit`]:
/// the client's UDP payload, or 65,535 bytes over TCP); a record that does not fit is left
/// out, and so is every record after it, so the work is bounded by the answer's size, not
/// by how many records the name has. Leaving out answer or authority records marks the
/// response truncated ([`ResponseWriter::finish`] sets TC over UDP; over TCP the client
/// gets the records that fit, without TC). Names are compressed against every name
/// written before, found through a map: linear in the answer's size.
#[derive(Debug)]
pub struct ResponseWriter<'b> {
    buf: &'b mut Vec<u8>,
    /// Where each (suffix of a) name written so far starts.
    names: Names,
    counts: [u16; 3],
    section: usize,
    limit: usize,
    /// Bytes kept free at the end (the OPT record).
    reserve: usize,
    /// A record did not fit: every later one is left out.
    full: bool,
    /// An answer or authority record was left out.
    truncated: bool,
}

/// The OPT record's size.
const OPT_LEN: usize = 11;

/// FNV-1a over a name's text, lowercase: the key names are found by.
#[derive(Clone, Copy)]
struct NameHash(u64);

impl NameHash {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn push(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(b.to_ascii_lowercase());
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The hash of a name's text (dot-separated, no trailing dot).
fn name_hash(text: &[u8]) -> u64 {
    let mut h = NameHash::new();
    h.push(text);
    h.0
}

/// Whether the name written at `at` in `msg` (labels, maybe ending in a pointer) spells
/// `text` (dot-separated, no trailing dot), ignoring case.
fn name_at_is(msg: &[u8], mut at: usize, text: &[u8]) -> bool {
    let mut p = 0;
    for _ in 0..128 {
        let Some(&len) = msg.get(at) else {
            return false;
        };
        match len {
            0 => return p == text.len(),
            1..=63 => {
                let len = usize::from(len);
                if p > 0 {
                    if text.get(p) != Some(&b'.') {
                        return false;
                    }
                    p += 1;
                }
                let (Some(label), Some(want)) =
                    (msg.get(at + 1..at + 1 + len), text.get(p..p + len))
                else {
                    return false;
                };
                if !label.eq_ignore_ascii_case(want) {
                    return false;
                }
                p += len;
                at += 1 + len;
            }
            0xc0..=0xff => {
                let Some(&lo) = msg.get(at + 1) else {
                    return false;
                };
                at = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return false,
        }
    }
    false
}

/// Where names written so far start, by the hash of their lowercase text (a hit is
/// confirmed against the message: a collision costs a missed compression, never a wrong
/// pointer). Small answers stay on the stack; large ones spill into a map.
#[derive(Debug, Default)]
struct Names {
    small: smallvec::SmallVec<[(u64, u16); 16]>,
    big: Option<std::collections::HashMap<u64, u16, std::hash::BuildHasherDefault<KeyIsHash>>>,
}

/// A hasher for keys that are hashes already.
#[derive(Debug, Default)]
struct KeyIsHash(u64);

impl std::hash::Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Names {
    fn get(&self, hash: u64) -> Option<u16> {
        match &self.big {
            Some(map) => map.get(&hash).copied(),
            None => self
                .small
                .iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, at)| *at),
        }
    }

    /// Where `text` was written, confirmed in `msg`.
    fn find(&self, msg: &[u8], hash: u64, text: &[u8]) -> Option<u16> {
        self.get(hash)
            .filter(|&at| name_at_is(msg, usize::from(at), text))
    }

    fn insert(&mut self, hash: u64, at: u16) {
        if self.get(hash).is_some() {
            return;
        }
        match &mut self.big {
            Some(map) => {
                map.insert(hash, at);
            }
            None if self.small.len() < self.small.inline_size() => self.small.push((hash, at)),
            None => {
                let mut map: std::collections::HashMap<_, _, _> = self.small.drain(..).collect();
                map.insert(hash, at);
                self.big = Some(map);
            }
        }
    }
}

impl<'b> ResponseWriter<'b> {
    /// Starts a response to `req`: its ID, QR and AA set, RD copied, and its question.
    /// The limit is 65,535 bytes until [`ResponseWriter::limit`] says otherwise.
    pub fn new(
        buf: &'b mut Vec<u8>,
        req: &Request<'_>,
        rcode: u16,
        authoritative: bool,
        recursion_available: bool,
    ) -> Self {
        buf.clear();
        let mut flags = QR | (req.flags & (0x7800 | RD | 0x0010)) | (rcode & 0xf);
        if authoritative {
            flags |= AA;
        }
        if recursion_available {
            flags |= RA;
        }
        buf.extend_from_slice(&req.id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(req.qname_wire);
        buf.extend_from_slice(&req.qtype.to_be_bytes());
        buf.extend_from_slice(&req.qclass.to_be_bytes());
        let mut names = Names::default();
        // Every label boundary of the question name, by its lowercase suffix text (unless
        // a label holds a dot or a non-ASCII byte: then its text names no name of ours).
        let wire = req.qname_wire;
        let mut starts: smallvec::SmallVec<[usize; 16]> = smallvec::SmallVec::new();
        let mut i = 0;
        let mut plain = true;
        while i < wire.len() && wire[i] != 0 {
            let len = usize::from(wire[i]);
            let Some(label) = wire.get(i + 1..i + 1 + len) else {
                plain = false;
                break;
            };
            plain &= label.iter().all(|b| b.is_ascii() && *b != b'.');
            starts.push(i);
            i += 1 + len;
        }
        if plain {
            // The hash of each suffix's text, straight from the wire: no copy.
            for &start in &starts {
                let mut h = NameHash::new();
                let mut j = start;
                while j < wire.len() && wire[j] != 0 {
                    let len = usize::from(wire[j]);
                    if j != start {
                        h.push(b".");
                    }
                    h.push(&wire[j + 1..j + 1 + len]);
                    j += 1 + len;
                }
                names.insert(h.0, (HEADER + start) as u16);
            }
        }
        Self {
            buf,
            names,
            counts: [0; 3],
            section: 0,
            limit: usize::from(u16::MAX),
            reserve: 0,
            full: false,
            truncated: false,
        }
    }

    /// Limits the message to `limit` bytes, keeping room for an OPT record when `edns`.
    pub fn limit(&mut self, limit: usize, edns: bool) {
        self.limit = limit;
        self.reserve = if edns { OPT_LEN } else { 0 };
    }

    /// A bare header answer without a question (FORMERR to an unparsable request).
    pub fn header_only(buf: &mut Vec<u8>, id: u16, flags: u16, rcode: u16) {
        buf.clear();
        let flags = QR | (flags & (0x7800 | RD)) | (rcode & 0xf);
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0; 8]);
    }

    /// Moves on to the authority (1) or additional (2) section.
    pub fn section(&mut self, section: usize) {
        debug_assert!(section >= self.section && section < 3);
        self.section = section;
    }

    /// Records written to the answer section so far.
    pub fn answer_count(&self) -> u16 {
        self.counts[0]
    }

    /// Whether a record was left out for want of room.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Writes `name`, compressed against the names written so far; the suffixes it
    /// introduces are returned, to be remembered once the record is kept.
    fn write_name(&mut self, name: &str, fresh: &mut smallvec::SmallVec<[(u64, u16); 8]>) {
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            self.buf.push(0);
            return;
        }
        let bytes = name.as_bytes();
        let mut start = 0;
        loop {
            let suffix = &bytes[start..];
            let hash = name_hash(suffix);
            // A suffix written by this very record is in `fresh`, not yet in `names`.
            let pending = fresh
                .iter()
                .find(|(h, at)| *h == hash && name_at_is(self.buf, usize::from(*at), suffix))
                .map(|(_, at)| *at);
            if let Some(at) = pending.or_else(|| self.names.find(self.buf, hash, suffix)) {
                self.buf.extend_from_slice(&(0xc000 | at).to_be_bytes());
                return;
            }
            let end = suffix
                .iter()
                .position(|&b| b == b'.')
                .map_or(bytes.len(), |d| start + d);
            let label = &bytes[start..end];
            let here = self.buf.len();
            if here < 0x3fff {
                fresh.push((hash, here as u16));
            }
            // Zone names are checked when they are built; a label too long for the wire
            // is cut rather than allowed to corrupt the message.
            let label = &label[..label.len().min(63)];
            self.buf.push(label.len() as u8);
            self.buf.extend_from_slice(label);
            if end >= bytes.len() {
                break;
            }
            start = end + 1;
        }
        self.buf.push(0);
    }

    /// Writes one record in the current section; false when it did not fit (it and every
    /// later record are left out).
    pub fn record(&mut self, owner: Owner<'_>, rtype: u16, ttl: u32, data: Data<'_>) -> bool {
        if self.full {
            if self.section < 2 {
                self.truncated = true;
            }
            return false;
        }
        let before = self.buf.len();
        let mut fresh: smallvec::SmallVec<[(u64, u16); 8]> = smallvec::SmallVec::new();
        match owner {
            Owner::Question => self.buf.extend_from_slice(&0xc00cu16.to_be_bytes()),
            Owner::Name(n) => self.write_name(n, &mut fresh),
        }
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        match data {
            Data::A(ip) => self.buf.extend_from_slice(&ip.octets()),
            Data::Aaaa(ip) => self.buf.extend_from_slice(&ip.octets()),
            Data::Name(n) => self.write_name(n, &mut fresh),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                self.buf.extend_from_slice(&priority.to_be_bytes());
                self.buf.extend_from_slice(&weight.to_be_bytes());
                self.buf.extend_from_slice(&port.to_be_bytes());
                // RFC 2782: the target is not compressed; later names may point into it.
                let target = target.trim_end_matches('.');
                let mut start = 0;
                for label in target.split('.').filter(|l| !l.is_empty()) {
                    let here = self.buf.len();
                    let suffix = target.as_bytes().get(start..).unwrap_or_default();
                    if here < 0x3fff {
                        fresh.push((name_hash(suffix), here as u16));
                    }
                    start += label.len() + 1;
                    let label = &label.as_bytes()[..label.len().min(63)];
                    self.buf.push(label.len() as u8);
                    self.buf.extend_from_slice(label);
                }
                self.buf.push(0);
            }
            Data::Txt(text) => {
                for chunk in text.as_bytes().chunks(255) {
                    self.buf.push(chunk.len() as u8);
                    self.buf.extend_from_slice(chunk);
                }
                if text.is_empty() {
                    self.buf.push(0);
                }
            }
            Data::Soa {
                mname,
                rname,
                serial,
                refresh,
                retry,
                expire,
                minimum,
            } => {
                self.write_name(mname, &mut fresh);
                self.write_name(rname, &mut fresh);
                for v in [serial, refresh, retry, expire, minimum] {
                    self.buf.extend_from_slice(&v.to_be_bytes());
                }
            }
            Data::Raw(bytes) => self.buf.extend_from_slice(bytes),
        }
        if self.buf.len() + self.reserve > self.limit {
            self.buf.truncate(before);
            self.full = true;
            if self.section < 2 {
                self.truncated = true;
            }
            return false;
        }
        let rdlen = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        self.counts[self.section] += 1;
        for (hash, at) in fresh {
            self.names.insert(hash, at);
        }
        true
    }

    /// Writes the OPT record (in the additional section) with our payload size and the
    /// upper bits of an extended rcode. Room for it is kept once a limit is set with EDNS.
    pub fn opt(&mut self, extended_rcode: u16) {
        self.section = 2;
        self.buf.push(0);
        self.buf.extend_from_slice(&rtype::OPT.to_be_bytes());
        self.buf.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
        self.buf.push((extended_rcode >> 4) as u8);
        self.buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        self.counts[2] += 1;
    }

    /// Finishes the message: writes the section counts, and over UDP (`udp`) sets TC when
    /// an answer or authority record was left out, so the client may retry over TCP. The
    /// records that fit are kept either way (musl's resolver before 1.2.4 never retries
    /// over TCP: an empty truncated answer would be an outage for it).
    pub fn finish(self, udp: bool) {
        let [an, ns, ar] = self.counts;
        let buf = self.buf;
        buf[6..8].copy_from_slice(&an.to_be_bytes());
        buf[8..10].copy_from_slice(&ns.to_be_bytes());
        buf[10..12].copy_from_slice(&ar.to_be_bytes());
        if udp && self.truncated {
            let flags = u16::from_be_bytes([buf[2], buf[3]]) | TC;
            buf[2..4].copy_from_slice(&flags.to_be_bytes());
        }
    }
}

/// Length of the question section of a message with one question (`None`: malformed).
fn question_len(buf: &[u8]) -> Option<usize> {
    let end = skip_name(buf, HEADER)?;
    (buf.len() >= end + 4).then(|| end + 4 - HEADER)
}

/// Whether `reply` answers `query`: a response (QR) with its ID and exactly its question
/// (the name compared without regard to case). An upstream answer that fails this is
/// ignored: whoever sent it did not see our query.
pub fn reply_matches(reply: &[u8], query: &[u8]) -> bool {
    let (Some(qlen), Some(rlen)) = (question_len(query), question_len(reply)) else {
        return false;
    };
    let flags = u16_at(reply, 2).unwrap_or(0);
    reply.len() >= HEADER
        && query.len() >= HEADER
        && reply[..2] == query[..2]
        && flags & QR != 0
        && u16_at(reply, 4) == Some(1)
        && qlen == rlen
        && reply[HEADER..HEADER + rlen].eq_ignore_ascii_case(&query[HEADER..HEADER + qlen])
}

/// Makes an upstream `reply` fit a client's `limit`: when longer, it becomes its header and
/// question with TC set (and an OPT record when the client spoke EDNS), so the client asks
/// again over TCP.
pub fn fit_reply(reply: &mut Vec<u8>, limit: usize, edns: bool) {
    if reply.len() <= limit {
        return;
    }
    let opt = if edns { OPT_LEN } else { 0 };
    let Some(q) = question_len(reply).filter(|q| HEADER + q + opt <= limit) else {
        // No question, or one too long to echo (a name past 255 bytes from an upstream):
        // the header alone, TC set, nothing counted.
        reply.truncate(HEADER.min(reply.len()));
        if reply.len() == HEADER {
            let flags = u16::from_be_bytes([reply[2], reply[3]]) | TC;
            reply[2..4].copy_from_slice(&flags.to_be_bytes());
            reply[4..12].fill(0);
        }
        return;
    };
    reply.truncate(HEADER + q);
    let flags = u16::from_be_bytes([reply[2], reply[3]]) | TC;
    reply[2..4].copy_from_slice(&flags.to_be_bytes());
    reply[6..12].fill(0);
    if edns {
        reply.push(0);
        reply.extend_from_slice(&rtype::OPT.to_be_bytes());
        reply.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        reply[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
}

/// The UDP payload a request's sender accepts: its EDNS size (at most ours), else 512.
pub fn client_limit(req: &Request<'_>) -> usize {
    usize::from(
        req.edns
            .map_or(CLASSIC_UDP_PAYLOAD, |e| e.udp_size.min(MAX_UDP_PAYLOAD)),
    )
}

/// A record read from an upstream answer, with its names decompressed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParsedRecord {
    /// Owner, lowercase presentation form.
    pub name: String,
    /// Type.
    pub rtype: u16,
    /// TTL.
    pub ttl: u32,
    /// Data: addresses as bytes, names (CNAME) decompressed to presentation form.
    pub data: Vec<u8>,
}

/// Reads a possibly compressed name at `i` in presentation form (lowercase); returns it and
/// the offset after it in the original position.
pub fn read_name(msg: &[u8], mut i: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(i)?;
        match len {
            0 => return Some((out, end.unwrap_or(i + 1))),
            1..=63 => {
                let label = msg.get(i + 1..i + 1 + usize::from(len))?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                if out.len() > 255 {
                    return None;
                }
                i += 1 + usize::from(len);
            }
            0xc0..=0xff => {
                let lo = *msg.get(i + 1)?;
                end.get_or_insert(i + 2);
                i = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return None,
        }
    }
    None
}

/// The answer-section records of an upstream response to our query `id` (A, AAAA and
/// CNAME only), or `None` when it is not a usable answer.
pub fn parse_answers(msg: &[u8], id: u16) -> Option<Vec<ParsedRecord>> {
    if msg.len() < HEADER || u16_at(msg, 0)? != id {
        return None;
    }
    let flags = u16_at(msg, 2)?;
    if flags & QR == 0 || flags & 0xf != rcode::NOERROR {
        return None;
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut i = HEADER;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (name, after) = read_name(msg, i)?;
        i = after;
        let t = u16_at(msg, i)?;
        let ttl = (u32::from(u16_at(msg, i + 4)?) << 16) | u32::from(u16_at(msg, i + 6)?);
        let rdlen = usize::from(u16_at(msg, i + 8)?);
        i += 10;
        let rdata = msg.get(i..i + rdlen)?;
        let data = match t {
            rtype::A if rdlen == 4 => rdata.to_vec(),
            rtype::AAAA if rdlen == 16 => rdata.to_vec(),
            rtype::CNAME => read_name(msg, i)?.0.into_bytes(),
            _ => {
                i += rdlen;
                continue;
            }
        };
        i += rdlen;
        out.push(ParsedRecord {
            name,
            rtype: t,
            ttl,
            data,
        });
    }
    Some(out)
}

/// A query for `name`/`qtype` with `id`, recursion desired, as bytes.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&RD.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        q.push(label.len() as u8);
        q.extend_from_slice(label);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_query_with_edns() {
        let mut q = build_query(0x1234, "Web.Shop.SVC.cluster.local", rtype::A);
        // OPT: root, type 41, payload 4096, ext-rcode 0, version 0, DO.
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        q[11] = 1;
        let r = parse_request(&q).unwrap();
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.qname(), "web.shop.svc.cluster.local");
        assert_eq!((r.qtype, r.qclass), (rtype::A, CLASS_IN));
        assert_eq!(
            r.edns,
            Some(Edns {
                udp_size: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
    }

    #[test]
    fn rejects_what_it_must() {
        assert_eq!(parse_request(&[0; 5]).unwrap_err(), WireError::Ignore);
        let mut q = build_query(7, "a", rtype::A);
        q[2] |= 0x80;
        assert_eq!(parse_request(&q).unwrap_err(), WireError::Ignore);
        let mut q = build_query(7, "a", rtype::A);
        q[5] = 2;
        assert!(matches!(
            parse_request(&q),
            Err(WireError::FormErr { id: 7, .. })
        ));
        let mut q = build_query(7, "a", rtype::A);
        q.truncate(q.len() - 1);
        assert!(matches!(parse_request(&q), Err(WireError::FormErr { .. })));
        // A compression pointer in the question has nothing to point to.
        let q = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert!(matches!(parse_request(&q), Err(WireError::FormErr { .. })));
    }

    #[test]
    fn odd_bytes_never_match_a_name() {
        let q = [
            0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'.', 0xc3, 0, 0, 1, 0, 1,
        ];
        let r = parse_request(&q).unwrap();
        assert_eq!(r.qname(), "a\u{1}\u{1}");
    }

    #[test]
    fn names_are_compressed_against_the_question() {
        let q = build_query(1, "_http._tcp.web.shop.svc.cluster.local", rtype::SRV);
        let req = parse_request(&q).unwrap();
        let mut buf = Vec::new();
        let mut w = ResponseWriter::new(&mut buf, &req, rcode::NOERROR, true, false);
        w.limit(512, false);
        w.record(
            Owner::Question,
            rtype::PTR,
            30,
            Data::Name("web.shop.svc.cluster.local"),
        );
        w.finish(true);
        // The PTR target is a pointer to "web..." inside the question (offset 12 + 11).
        let tail = &buf[buf.len() - 2..];
        assert_eq!(tail, [0xc0, 23]);
        let (name, _) = read_name(&buf, buf.len() - 2).unwrap();
        assert_eq!(name, "web.shop.svc.cluster.local");
    }

    /// Many distinct names (past the inline table, into the map), each written twice, in
    /// mixed case: the second time is a pointer to the first, and every name reads back.
    #[test]
    fn compression_scales_past_the_inline_table_and_ignores_case() {
        let q = build_query(1, "Big.X.svc.cluster.local", rtype::SRV);
        let req = parse_request(&q).unwrap();
        let mut buf = Vec::new();
        let mut w = ResponseWriter::new(&mut buf, &req, rcode::NOERROR, true, false);
        let names: Vec<String> = (0..40)
            .map(|i| format!("ep-{i}.big.x.svc.cluster.local"))
            .collect();
        let mut firsts = Vec::new();
        for n in &names {
            let at = w.buf.len();
            w.record(Owner::Name(n), rtype::A, 30, Data::A([10, 0, 0, 1].into()));
            firsts.push(at);
        }
        // The first name's suffix "big.x.svc.cluster.local" points into the question,
        // whatever its case.
        let first = &buf_of(&w)[firsts[0]..];
        assert_eq!(&first[..7], [4, b'e', b'p', b'-', b'0', 0xc0, 12]);
        for (n, at) in names.iter().zip(&firsts) {
            let before = w.buf.len();
            w.record(
                Owner::Name(&n.to_ascii_uppercase()),
                rtype::A,
                30,
                Data::A([10, 0, 0, 2].into()),
            );
            // Two bytes of pointer, then type, class, TTL, length, address.
            assert_eq!(w.buf.len() - before, 2 + 10 + 4, "{n}");
            let ptr = u16::from_be_bytes([w.buf[before], w.buf[before + 1]]);
            assert_eq!(usize::from(ptr & 0x3fff), *at, "{n}");
        }
        w.finish(false);
        for at in firsts {
            let (name, _) = read_name(&buf, at).unwrap();
            assert!(
                name.starts_with("ep-") && name.ends_with(".big.x.svc.cluster.local"),
                "{name}"
            );
        }
    }

    fn buf_of<'a>(w: &'a ResponseWriter<'_>) -> &'a [u8] {
        w.buf
    }

    /// Found by the `dns_upstream_reply` fuzz target: an upstream reply whose question name
    /// runs past 500 bytes used to be trimmed to header + question, still over the client's
    /// 512 bytes. Now it becomes a bare header with TC set.
    #[test]
    fn an_oversized_upstream_question_is_not_echoed() {
        let mut reply = vec![0xf7, 0xef, 0x9a, 0x00, 0x00, 0x41, 0x03, 0x02, 0, 0, 0, 0];
        for _ in 0..9 {
            reply.push(60);
            reply.extend_from_slice(&[b'a'; 60]);
        }
        reply.extend_from_slice(&[0, 0, 1, 0, 1]);
        reply.extend_from_slice(&[0u8; 100]);
        for (limit, edns) in [(512, false), (1232, true)] {
            let mut r = reply.clone();
            fit_reply(&mut r, limit, edns);
            assert!(r.len() <= limit, "{} > {limit}", r.len());
        }
        let mut r = reply.clone();
        fit_reply(&mut r, 512, false);
        assert_eq!(r.len(), HEADER);
        assert_ne!(u16::from_be_bytes([r[2], r[3]]) & TC, 0);
    }
}
