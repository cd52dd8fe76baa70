//! nf_tables netlink encoding: a [`Transaction`] becomes one batch of `NFT_MSG_*` messages
//! (between `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`) that the kernel applies
//! atomically. Pure: the bytes are built in memory, sending them is [`super::apply`]'s job.
//!
//! The expressions are the ones `nft` 1.0.6 generates for the same rules (checked with
//! `nft --debug=netlink`), so `nft list table` prints our table exactly as if `nft -f` had
//! loaded the script. Constants come from `linux/netfilter/nf_tables.h`.
// The reading half (dumps of what the kernel holds) serves the kernel applier only.
#![cfg_attr(not(feature = "apply"), allow(dead_code))]

use std::net::{IpAddr, SocketAddr};

use super::model::{
    BaseHook, Data, Dir, Element, Family, FixedSet, Key, KeyShape, L4, Rule, Stmt, TABLE, Verdict,
};
use super::transaction::{Op, SetDecl, Transaction};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
/// Asks for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// The element ends an interval (the first index past it).
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFTA_BYTEORDER_SREG: u16 = 1;
const NFTA_BYTEORDER_DREG: u16 = 2;
const NFTA_BYTEORDER_OP: u16 = 3;
const NFTA_BYTEORDER_LEN: u16 = 4;
const NFTA_BYTEORDER_SIZE: u16 = 5;
const NFT_BYTEORDER_HTON: u32 = 1;

/// nft's datatype numbers (`enum datatypes` in nftables' `datatype.h`).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_VERDICT: u32 = 0xffff_ff00;
/// Bits per field in a concatenated type number.
const TYPE_BITS: u32 = 6;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_REG32_00: u32 = 8;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: u32 = -3i32 as u32;
const NFT_GOTO: u32 = -4i32 as u32;
const NFT_RETURN: u32 = -5i32 as u32;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
/// The kernel's interface name buffer, NUL included.
const IFNAMSIZ: usize = 16;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const NF_CT_STATE_NEW: u32 = 1 << 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_NG_RANDOM: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;

/// The largest number of elements put in one `NEWSETELEM` message (its element list is a
/// netlink attribute, whose length must fit 16 bits).
const ELEMENTS_PER_MESSAGE: usize = 256;

/// An nf_tables netlink batch under construction.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Offset of the last message's header (to ask for its acknowledgement).
    last: Option<usize>,
    messages: usize,
    set_id: u32,
    first_seq: u32,
}

/// A finished batch: the bytes to send in one `sendmsg`, and the sequence numbers used.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The sequence number of the batch-begin message.
    pub first_seq: u32,
    /// The sequence number of the last message in the batch (the one acknowledged on
    /// success; `None` for an empty batch).
    pub acked_seq: Option<u32>,
    /// The number of nf_tables messages (without begin and end).
    pub messages: usize,
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_ne_bytes());
}

fn pad(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

use crate::nlmsg::push_attr as attr;

fn attr_str(b: &mut Vec<u8>, ty: u16, s: &str) {
    let len = u16::try_from(5 + s.len()).unwrap_or(u16::MAX);
    put_u16(b, len);
    put_u16(b, ty);
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    pad(b);
}

fn attr_be32(b: &mut Vec<u8>, ty: u16, v: u32) {
    attr(b, ty, &v.to_be_bytes());
}

fn nest(b: &mut Vec<u8>, ty: u16) -> usize {
    let at = b.len();
    put_u16(b, 0);
    put_u16(b, ty | NLA_F_NESTED);
    at
}

fn end_nest(b: &mut [u8], at: usize) {
    let len = u16::try_from(b.len() - at).unwrap_or(u16::MAX);
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A data attribute holding a value.
fn data_value(b: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let n = nest(b, ty);
    attr(b, NFTA_DATA_VALUE, value);
    end_nest(b, n);
}

pub(crate) fn verdict_code(v: &Verdict) -> (u32, Option<&str>) {
    match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    }
}

/// A data attribute holding a verdict.
fn data_verdict(b: &mut Vec<u8>, ty: u16, v: &Verdict) {
    let n = nest(b, ty);
    let vn = nest(b, NFTA_DATA_VERDICT);
    let (code, chain) = verdict_code(v);
    attr_be32(b, NFTA_VERDICT_CODE, code);
    if let Some(c) = chain {
        attr_str(b, NFTA_VERDICT_CHAIN, c);
    }
    end_nest(b, vn);
    end_nest(b, n);
}

/// The 32-bit register `index` words after the start, as nft numbers it: the 16-byte
/// registers where a field starts on one, the 4-byte ones elsewhere.
fn reg32(index: u32) -> u32 {
    if index.is_multiple_of(4) {
        NFT_REG_1 + index / 4
    } else {
        NFT_REG32_00 + index
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

fn addr_offset(family: Family, dir: Dir) -> u32 {
    match (family, dir) {
        (Family::Ip, Dir::Saddr) => 12,
        (Family::Ip, Dir::Daddr) => 16,
        (Family::Ip6, Dir::Saddr) => 8,
        (Family::Ip6, Dir::Daddr) => 24,
    }
}

/// `addr . port` as map data: the port padded to 32 bits.
pub(crate) fn endpoint_bytes(a: &SocketAddr) -> Vec<u8> {
    let mut v = addr_bytes(&a.ip());
    let port = a.port().to_be_bytes();
    v.extend_from_slice(&[port[0], port[1], 0, 0]);
    v
}

/// The key bytes of a set element: fields padded to 32 bits. A range is its first index
/// and the index past its last, big-endian (as the interval map keeps its start and end
/// elements).
pub fn key_bytes(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    let proto_port = |out: &mut Vec<u8>, p: L4, port: u16| {
        out.extend_from_slice(&[p.number(), 0, 0, 0]);
        let be = port.to_be_bytes();
        out.extend_from_slice(&[be[0], be[1], 0, 0]);
    };
    match key {
        Key::Addr(ip) => out.extend(addr_bytes(ip)),
        Key::ProtoPort(p, port) => proto_port(&mut out, *p, *port),
        Key::AddrProtoPort(ip, p, port) => {
            out.extend(addr_bytes(ip));
            proto_port(&mut out, *p, *port);
        }
        Key::AddrPair(a, b) => {
            out.extend(addr_bytes(a));
            out.extend(addr_bytes(b));
        }
        Key::Range(first, last) => {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&last.saturating_add(1).to_be_bytes());
        }
    }
    out
}

/// The key [`key_bytes`] encoded, read back (`None` when the bytes do not have the shape).
pub fn parse_key(shape: KeyShape, family: Family, b: &[u8]) -> Option<Key> {
    let alen = addr_len(family) as usize;
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match family {
            Family::Ip => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
            Family::Ip6 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        }
    };
    let proto_port = |b: &[u8]| -> Option<(L4, u16)> {
        if b.len() != 8 {
            return None;
        }
        Some((L4::from_number(b[0])?, u16::from_be_bytes([b[4], b[5]])))
    };
    match shape {
        KeyShape::Addr => addr(b).map(Key::Addr),
        KeyShape::ProtoPort => proto_port(b).map(|(p, port)| Key::ProtoPort(p, port)),
        KeyShape::AddrProtoPort if b.len() == alen + 8 => {
            let (p, port) = proto_port(&b[alen..])?;
            Some(Key::AddrProtoPort(addr(&b[..alen])?, p, port))
        }
        KeyShape::AddrPair if b.len() == 2 * alen => {
            Some(Key::AddrPair(addr(&b[..alen])?, addr(&b[alen..])?))
        }
        KeyShape::IndexRange if b.len() == 8 => {
            let first = u32::from_be_bytes(b[..4].try_into().ok()?);
            let end = u32::from_be_bytes(b[4..].try_into().ok()?);
            (end > first).then(|| Key::Range(first, end - 1))
        }
        _ => None,
    }
}

fn key_type(family: Family, shape: KeyShape) -> (u32, u32) {
    let (addr, alen) = match family {
        Family::Ip => (TYPE_IPADDR, 4),
        Family::Ip6 => (TYPE_IP6ADDR, 16),
    };
    let pp = (TYPE_INET_PROTOCOL << TYPE_BITS) | TYPE_INET_SERVICE;
    match shape {
        KeyShape::Addr => (addr, alen),
        KeyShape::ProtoPort => (pp, 8),
        KeyShape::AddrProtoPort => ((addr << (2 * TYPE_BITS)) | pp, alen + 8),
        KeyShape::AddrPair => ((addr << TYPE_BITS) | addr, 2 * alen),
        KeyShape::IndexRange => (TYPE_INTEGER, 4),
    }
}

/// Expression writers.
struct Exprs<'a> {
    b: &'a mut Vec<u8>,
}

impl Exprs<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
        let e = nest(self.b, NFTA_LIST_ELEM);
        attr_str(self.b, NFTA_EXPR_NAME, name);
        let d = nest(self.b, NFTA_EXPR_DATA);
        body(self.b);
        end_nest(self.b, d);
        end_nest(self.b, e);
    }

    fn payload(&mut self, dreg: u32, base: u32, offset: u32, len: u32) {
        self.expr("payload", |b| {
            attr_be32(b, 1, dreg);
            attr_be32(b, 2, base);
            attr_be32(b, 3, offset);
            attr_be32(b, 4, len);
        });
    }

    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            attr_be32(b, 2, key);
            attr_be32(b, 1, dreg);
        });
    }

    fn meta_set(&mut self, key: u32, sreg: u32) {
        self.expr("meta", |b| {
            attr_be32(b, 2, key);
            attr_be32(b, 3, sreg);
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |b| {
            attr_be32(b, 1, NFT_REG_1);
            attr_be32(b, 2, op);
            data_value(b, 3, value);
        });
    }

    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            attr_be32(b, 1, NFT_REG_1);
            attr_be32(b, 2, NFT_REG_1);
            attr_be32(b, 3, u32::try_from(mask.len()).unwrap_or(0));
            data_value(b, 4, mask);
            data_value(b, 5, xor);
        });
    }

    fn lookup(&mut self, set: &str, set_id: Option<u32>, dreg: Option<u32>) {
        self.expr("lookup", |b| {
            attr_be32(b, 2, NFT_REG_1);
            attr_str(b, 1, set);
            if let Some(id) = set_id {
                attr_be32(b, 4, id);
            }
            if let Some(d) = dreg {
                attr_be32(b, 3, d);
            }
            attr_be32(b, 5, 0);
        });
    }

    fn immediate(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            attr_be32(b, 1, dreg);
            data_value(b, 2, value);
        });
    }

    fn verdict(&mut self, v: &Verdict) {
        self.expr("immediate", |b| {
            attr_be32(b, 1, NFT_REG_VERDICT);
            data_verdict(b, 2, v);
        });
    }

    /// `ip saddr/daddr [!=] net`, as nft writes it: a byte-aligned prefix compares only
    /// its bytes, another one masks the whole address first.
    fn addr(&mut self, family: Family, dir: Dir, ne: bool, net: &ipnet::IpNet) {
        let op = if ne { NFT_CMP_NEQ } else { NFT_CMP_EQ };
        let offset = addr_offset(family, dir);
        let bytes = addr_bytes(&net.network());
        let plen = u32::from(net.prefix_len());
        if plen % 8 == 0 {
            let n = plen / 8;
            self.payload(NFT_REG_1, NFT_PAYLOAD_NETWORK_HEADER, offset, n);
            self.cmp(op, &bytes[..n as usize]);
        } else {
            self.payload(
                NFT_REG_1,
                NFT_PAYLOAD_NETWORK_HEADER,
                offset,
                addr_len(family),
            );
            let mask = addr_bytes(&net.netmask());
            self.bitwise(&mask, &vec![0; mask.len()]);
            self.cmp(op, &bytes);
        }
    }

    /// Loads `ip daddr . meta l4proto . th dport` (or without the address) into
    /// consecutive registers starting at register 1.
    fn concat(&mut self, family: Option<Family>) {
        let mut word = 0;
        if let Some(f) = family {
            self.payload(
                reg32(0),
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(f, Dir::Daddr),
                addr_len(f),
            );
            word = addr_len(f) / 4;
        }
        self.meta_load(NFT_META_L4PROTO, reg32(word));
        self.payload(reg32(word + 1), NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Batch {
    /// An empty batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Self {
        let mut b = Self {
            buf: Vec::with_capacity(4096),
            seq: first_seq,
            last: None,
            messages: 0,
            set_id: 0,
            first_seq,
        };
        b.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.end_msg(0);
        b.messages = 0;
        b.last = None;
        b
    }

    /// Starts a message; returns its header's offset.
    fn begin_msg(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        put_u32(&mut self.buf, 0);
        let full_ty = if ty >= NFNL_MSG_BATCH_BEGIN && res_id != 0 {
            ty
        } else {
            (NFNL_SUBSYS_NFTABLES << 8) | ty
        };
        put_u16(&mut self.buf, full_ty);
        put_u16(&mut self.buf, flags);
        put_u32(&mut self.buf, self.seq);
        put_u32(&mut self.buf, 0);
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        at
    }

    fn end_msg(&mut self, at: usize) {
        let len = u32::try_from(self.buf.len() - at).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
        self.last = Some(at);
        self.messages += 1;
    }

    fn msg(&mut self, family: Family, ty: u16, flags: u16) -> usize {
        self.begin_msg(ty, NLM_F_REQUEST | flags, family.nfproto(), 0)
    }

    /// Appends a transaction's operations.
    pub fn push(&mut self, tx: &Transaction) {
        let family = tx.family;
        let mut i = 0;
        while i < tx.ops.len() {
            match &tx.ops[i] {
                Op::AddElement(first) | Op::DeleteElement(first) => {
                    // Consecutive element operations of one kind on one set share a message.
                    let add = matches!(tx.ops[i], Op::AddElement(_));
                    let set = first.set;
                    let mut group: Vec<&Element> = Vec::new();
                    while i < tx.ops.len() && group.len() < ELEMENTS_PER_MESSAGE {
                        match &tx.ops[i] {
                            Op::AddElement(e) if add && e.set == set => group.push(e),
                            Op::DeleteElement(e) if !add && e.set == set => group.push(e),
                            _ => break,
                        }
                        i += 1;
                    }
                    self.elements(family, set, add, &group);
                }
                op => {
                    self.op(family, op);
                    i += 1;
                }
            }
        }
    }

    fn table_msg(&mut self, family: Family, ty: u16, flags: u16) {
        let m = self.msg(family, ty, flags);
        attr_str(&mut self.buf, NFTA_TABLE_NAME, TABLE);
        self.end_msg(m);
    }

    fn op(&mut self, family: Family, op: &Op) {
        match op {
            Op::AddTable => self.table_msg(family, NFT_MSG_NEWTABLE, NLM_F_CREATE),
            Op::DeleteTable => {
                self.table_msg(family, NFT_MSG_NEWTABLE, NLM_F_CREATE);
                self.table_msg(family, NFT_MSG_DELTABLE, 0);
            }
            Op::AddSet(decl) => self.set(family, decl),
            Op::DeleteSet(name) => {
                let m = self.msg(family, NFT_MSG_DELSET, 0);
                attr_str(&mut self.buf, NFTA_SET_TABLE, TABLE);
                attr_str(&mut self.buf, NFTA_SET_NAME, name);
                self.end_msg(m);
            }
            Op::AddChain(c) => self.chain(family, &c.name, c.hook.as_ref()),
            Op::AddPort(p) => {
                for op in p.expand() {
                    self.op(family, &op);
                }
            }
            Op::AddEndpoint(e) => self.chain(family, &e.name, None),
            Op::AddEndpointRules(e) => {
                for r in &e.rules() {
                    self.rule(family, &e.name, r);
                }
            }
            Op::AddRules(c) => {
                for r in &c.rules {
                    self.rule(family, &c.name, r);
                }
            }
            Op::FlushChain(name) => {
                let m = self.msg(family, NFT_MSG_DELRULE, 0);
                attr_str(&mut self.buf, NFTA_RULE_TABLE, TABLE);
                attr_str(&mut self.buf, NFTA_RULE_CHAIN, name);
                self.end_msg(m);
            }
            Op::DeleteChain(name) => {
                let m = self.msg(family, NFT_MSG_DELCHAIN, 0);
                attr_str(&mut self.buf, NFTA_CHAIN_TABLE, TABLE);
                attr_str(&mut self.buf, NFTA_CHAIN_NAME, name);
                self.end_msg(m);
            }
            Op::AddElement(e) => self.elements(family, e.set, true, &[e]),
            Op::DeleteElement(e) => self.elements(family, e.set, false, &[e]),
        }
    }

    fn chain(&mut self, family: Family, name: &str, hook: Option<&BaseHook>) {
        let m = self.msg(family, NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        let b = &mut self.buf;
        attr_str(b, NFTA_CHAIN_TABLE, TABLE);
        attr_str(b, NFTA_CHAIN_NAME, name);
        if let Some(h) = hook {
            let n = nest(b, NFTA_CHAIN_HOOK);
            attr_be32(b, NFTA_HOOK_HOOKNUM, h.hook.number());
            attr_be32(b, NFTA_HOOK_PRIORITY, h.priority as u32);
            end_nest(b, n);
            attr_str(b, NFTA_CHAIN_TYPE, if h.nat { "nat" } else { "filter" });
        }
        self.end_msg(m);
    }

    fn set(&mut self, family: Family, decl: &SetDecl) {
        self.set_id += 1;
        let id = self.set_id;
        let m = self.msg(family, NFT_MSG_NEWSET, NLM_F_CREATE);
        let b = &mut self.buf;
        attr_str(b, NFTA_SET_TABLE, TABLE);
        match decl {
            SetDecl::Fixed(s @ FixedSet::Endpoints(_)) => {
                attr_str(b, NFTA_SET_NAME, &s.name());
                let (addr, alen, udata) = match family {
                    Family::Ip => (TYPE_IPADDR, 4, ENDPOINTS_USERDATA_IP),
                    Family::Ip6 => (TYPE_IP6ADDR, 16, ENDPOINTS_USERDATA_IP6),
                };
                attr_be32(b, NFTA_SET_FLAGS, NFT_SET_MAP | NFT_SET_INTERVAL);
                attr_be32(b, NFTA_SET_KEY_TYPE, TYPE_INTEGER);
                attr_be32(b, NFTA_SET_KEY_LEN, 4);
                attr_be32(
                    b,
                    NFTA_SET_DATA_TYPE,
                    (addr << TYPE_BITS) | TYPE_INET_SERVICE,
                );
                attr_be32(b, NFTA_SET_DATA_LEN, alen + 4);
                attr_be32(b, NFTA_SET_ID, id);
                attr(b, 13, udata);
            }
            SetDecl::Fixed(s) => {
                attr_str(b, NFTA_SET_NAME, &s.name());
                let (ty, len) = key_type(family, s.key());
                attr_be32(b, NFTA_SET_FLAGS, if s.is_map() { NFT_SET_MAP } else { 0 });
                attr_be32(b, NFTA_SET_KEY_TYPE, ty);
                attr_be32(b, NFTA_SET_KEY_LEN, len);
                if s.is_map() {
                    attr_be32(b, NFTA_SET_DATA_TYPE, TYPE_VERDICT);
                    attr_be32(b, NFTA_SET_DATA_LEN, 0);
                }
                attr_be32(b, NFTA_SET_ID, id);
                if let Some(u) = set_userdata(s.key()) {
                    attr(b, 13, u);
                }
            }
            SetDecl::Affinity(a) => {
                attr_str(b, NFTA_SET_NAME, &a.name);
                let (ty, len) = key_type(family, KeyShape::Addr);
                attr_be32(b, NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                attr_be32(b, NFTA_SET_KEY_TYPE, ty);
                attr_be32(b, NFTA_SET_KEY_LEN, len);
                attr_be32(b, NFTA_SET_ID, id);
                attr(
                    b,
                    NFTA_SET_TIMEOUT,
                    &(u64::from(a.timeout) * 1000).to_be_bytes(),
                );
                if let Some(u) = set_userdata(KeyShape::Addr) {
                    attr(b, 13, u);
                }
            }
        }
        self.end_msg(m);
    }

    fn elements(&mut self, family: Family, set: FixedSet, add: bool, elems: &[&Element]) {
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, 0)
        };
        let m = self.msg(family, ty, flags);
        let b = &mut self.buf;
        attr_str(b, NFTA_SET_ELEM_LIST_TABLE, TABLE);
        attr_str(b, NFTA_SET_ELEM_LIST_SET, &set.name());
        let list = nest(b, NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elems {
            let el = nest(b, NFTA_LIST_ELEM);
            let range_end = match e.key {
                // An interval is two elements: its start, holding the data, and the index
                // past its end, flagged as the end (nft sends the same).
                Key::Range(first, last) => {
                    data_value(b, NFTA_SET_ELEM_KEY, &first.to_be_bytes());
                    Some(last.saturating_add(1))
                }
                _ => {
                    data_value(b, NFTA_SET_ELEM_KEY, &key_bytes(&e.key));
                    None
                }
            };
            match (&e.data, add) {
                (Some(Data::Verdict(v)), true) => data_verdict(b, NFTA_SET_ELEM_DATA, v),
                (Some(Data::Endpoint(a)), true) => {
                    data_value(b, NFTA_SET_ELEM_DATA, &endpoint_bytes(a));
                }
                _ => {}
            }
            end_nest(b, el);
            if let Some(end) = range_end {
                let el = nest(b, NFTA_LIST_ELEM);
                data_value(b, NFTA_SET_ELEM_KEY, &end.to_be_bytes());
                attr_be32(b, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                end_nest(b, el);
            }
        }
        end_nest(b, list);
        self.end_msg(m);
    }

    /// The anonymous verdict map of a `numgen` rule: declared and filled before the rule
    /// that refers to it by id.
    fn anonymous_map(&mut self, family: Family, targets: &[super::model::Name]) -> u32 {
        self.set_id += 1;
        let id = self.set_id;
        let m = self.msg(family, NFT_MSG_NEWSET, NLM_F_CREATE);
        let b = &mut self.buf;
        attr_str(b, NFTA_SET_TABLE, TABLE);
        attr_str(b, NFTA_SET_NAME, "__map%d");
        attr_be32(
            b,
            NFTA_SET_FLAGS,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
        );
        attr_be32(b, NFTA_SET_KEY_TYPE, TYPE_INTEGER);
        attr_be32(b, NFTA_SET_KEY_LEN, 4);
        attr_be32(b, NFTA_SET_DATA_TYPE, TYPE_VERDICT);
        attr_be32(b, NFTA_SET_DATA_LEN, 0);
        let size = targets.len();
        let d = nest(b, NFTA_SET_DESC);
        attr_be32(
            b,
            NFTA_SET_DESC_SIZE,
            u32::try_from(size).unwrap_or(u32::MAX),
        );
        end_nest(b, d);
        attr_be32(b, NFTA_SET_ID, id);
        attr(b, 13, ANON_MAP_USERDATA);
        self.end_msg(m);
        for start in (0..size).step_by(ELEMENTS_PER_MESSAGE) {
            let end = (start + ELEMENTS_PER_MESSAGE).min(size);
            let m = self.msg(family, NFT_MSG_NEWSETELEM, NLM_F_CREATE);
            let b = &mut self.buf;
            attr_str(b, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            attr_str(b, NFTA_SET_ELEM_LIST_SET, "__map%d");
            attr_be32(b, NFTA_SET_ELEM_LIST_SET_ID, id);
            let list = nest(b, NFTA_SET_ELEM_LIST_ELEMENTS);
            for (k, target) in targets.iter().enumerate().take(end).skip(start) {
                let i = u32::try_from(k).unwrap_or(0);
                let el = nest(b, NFTA_LIST_ELEM);
                data_value(b, NFTA_SET_ELEM_KEY, &i.to_ne_bytes());
                data_verdict(b, NFTA_SET_ELEM_DATA, &Verdict::Goto(target.clone()));
                end_nest(b, el);
            }
            end_nest(b, list);
            self.end_msg(m);
        }
        id
    }

    fn rule(&mut self, family: Family, chain: &str, rule: &Rule) {
        // Anonymous maps come first, in their own messages.
        let mut anon = Vec::new();
        for s in &rule.stmts {
            if let Stmt::NumgenVmap(t) = s {
                anon.push(self.anonymous_map(family, t));
            }
        }
        let m = self.msg(family, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        attr_str(&mut self.buf, NFTA_RULE_TABLE, TABLE);
        attr_str(&mut self.buf, NFTA_RULE_CHAIN, chain);
        let list = nest(&mut self.buf, NFTA_RULE_EXPRESSIONS);
        let mut anon = anon.into_iter();
        let mut x = Exprs { b: &mut self.buf };
        for s in &rule.stmts {
            stmt(&mut x, family, s, &mut anon);
        }
        end_nest(&mut self.buf, list);
        attr(
            &mut self.buf,
            NFTA_RULE_USERDATA,
            &rule_userdata(family, rule),
        );
        self.end_msg(m);
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The number of nf_tables messages so far.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// The size so far, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Closes the batch. The last message asks for an acknowledgement, so that a
    /// successful batch answers exactly once (errors are always reported).
    pub fn finish(mut self) -> EncodedBatch {
        let acked_seq = self.last.map(|at| {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
            u32::from_ne_bytes([
                self.buf[at + 8],
                self.buf[at + 9],
                self.buf[at + 10],
                self.buf[at + 11],
            ])
        });
        let messages = self.messages;
        let m = self.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        let len = u32::try_from(self.buf.len() - m).unwrap_or(u32::MAX);
        self.buf[m..m + 4].copy_from_slice(&len.to_ne_bytes());
        EncodedBatch {
            bytes: self.buf,
            first_seq: self.first_seq,
            acked_seq,
            messages,
        }
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }
}

/// The type of our mark among a rule's user data TLVs. nft knows types 0 (comment) and 1
/// (eBPF id) and skips the others when it prints a rule, so the mark is invisible there.
const RULE_MARK_UDATA: u8 = 0x4b;

/// A rule's user data: nft's comment TLV (type 0, the NUL-terminated text) when it has one,
/// then our mark (see [`super::state::rule_mark`]).
fn rule_userdata(family: Family, rule: &Rule) -> Vec<u8> {
    let mut u = Vec::with_capacity(12);
    if let Some(c) = rule.comment {
        u.push(0);
        u.push(u8::try_from(c.len() + 1).unwrap_or(u8::MAX));
        u.extend_from_slice(c.as_bytes());
        u.push(0);
    }
    u.push(RULE_MARK_UDATA);
    u.push(8);
    u.extend_from_slice(&super::state::rule_mark(family, rule).to_le_bytes());
    u
}

/// Our mark in a rule's user data, if it carries one.
fn parse_rule_mark(mut u: &[u8]) -> Option<u64> {
    while u.len() >= 2 {
        let (ty, len) = (u[0], usize::from(u[1]));
        let value = u.get(2..2 + len)?;
        if ty == RULE_MARK_UDATA && len == 8 {
            return Some(u64::from_le_bytes(value.try_into().ok()?));
        }
        u = &u[2 + len..];
    }
    None
}

/// The data of a set element as the kernel keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ElemData {
    /// None (a set, not a map).
    None,
    /// A value (`addr . port` of the endpoint maps).
    Value(Vec<u8>),
    /// A verdict code and its chain.
    Verdict(u32, Option<String>),
}

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETGEN: u16 = 16;
const NLM_F_DUMP: u16 = 0x300;
const NFTA_GEN_ID: u16 = 1;

/// What a dump request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dump<'a> {
    /// Every chain of our table.
    Chains,
    /// Every rule of our table.
    Rules,
    /// Every set of our table.
    Sets,
    /// The elements of one set.
    Elements(&'a str),
    /// The ruleset generation (not a dump: one answer).
    Generation,
}

/// A request to dump part of our table (or to read the generation).
pub(crate) fn dump_request(family: Family, what: Dump<'_>, seq: u32) -> Vec<u8> {
    let (ty, flags) = match what {
        Dump::Chains => (NFT_MSG_GETCHAIN, NLM_F_DUMP),
        Dump::Rules => (NFT_MSG_GETRULE, NLM_F_DUMP),
        Dump::Sets => (NFT_MSG_GETSET, NLM_F_DUMP),
        Dump::Elements(_) => (NFT_MSG_GETSETELEM, NLM_F_DUMP),
        Dump::Generation => (NFT_MSG_GETGEN, NLM_F_ACK),
    };
    let mut b = Vec::with_capacity(64);
    put_u32(&mut b, 0);
    put_u16(&mut b, (NFNL_SUBSYS_NFTABLES << 8) | ty);
    put_u16(&mut b, NLM_F_REQUEST | flags);
    put_u32(&mut b, seq);
    put_u32(&mut b, 0);
    b.extend_from_slice(&[family.nfproto(), 0, 0, 0]);
    match what {
        // The table attribute has the same number for chains, rules and sets.
        Dump::Chains | Dump::Rules | Dump::Sets => attr_str(&mut b, 1, TABLE),
        Dump::Elements(set) => {
            attr_str(&mut b, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            attr_str(&mut b, NFTA_SET_ELEM_LIST_SET, set);
        }
        Dump::Generation => {}
    }
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// A request for our table (its answer says whether it exists).
pub(crate) fn table_request(family: Family, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    put_u32(&mut b, 0);
    put_u16(&mut b, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE);
    put_u16(&mut b, NLM_F_REQUEST | NLM_F_ACK);
    put_u32(&mut b, seq);
    put_u32(&mut b, 0);
    b.extend_from_slice(&[family.nfproto(), 0, 0, 0]);
    attr_str(&mut b, NFTA_TABLE_NAME, TABLE);
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

fn str_attr(p: &[u8]) -> Option<String> {
    let p = p.strip_suffix(&[0]).unwrap_or(p);
    String::from_utf8(p.to_vec()).ok()
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// The attributes of a dump answer, after its `nfgenmsg`.
fn answer_attrs(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    crate::nlmsg::attrs(body.get(4..).unwrap_or(&[]))
}

/// A base chain's hook: its number and priority.
pub(crate) type Hook = (u32, i32);

/// One element of a set as read back: its key bytes and its data.
pub(crate) type ElementBytes = (Vec<u8>, ElemData);

/// One element as the kernel lists it: key bytes, data, and whether it ends an interval.
pub(crate) type RawElement = (Vec<u8>, ElemData, bool);

/// A chain answer: its table, name and hook (`None` for a regular chain).
pub(crate) fn parse_chain(body: &[u8]) -> Option<(String, String, Option<Hook>)> {
    let (mut table, mut name, mut hook) = (None, None, None);
    for (ty, p) in answer_attrs(body) {
        match ty {
            NFTA_CHAIN_TABLE => table = str_attr(p),
            NFTA_CHAIN_NAME => name = str_attr(p),
            NFTA_CHAIN_HOOK => {
                let (mut num, mut prio) = (None, None);
                for (t, q) in crate::nlmsg::attrs(p) {
                    match t {
                        NFTA_HOOK_HOOKNUM => num = be32(q),
                        NFTA_HOOK_PRIORITY => prio = be32(q).map(|v| v as i32),
                        _ => {}
                    }
                }
                hook = num.zip(prio);
            }
            _ => {}
        }
    }
    Some((table?, name?, hook))
}

/// A rule answer: its table, chain and our mark (`None` without one).
pub(crate) fn parse_rule(body: &[u8]) -> Option<(String, String, Option<u64>)> {
    let (mut table, mut chain, mut mark) = (None, None, None);
    for (ty, p) in answer_attrs(body) {
        match ty {
            NFTA_RULE_TABLE => table = str_attr(p),
            NFTA_RULE_CHAIN => chain = str_attr(p),
            NFTA_RULE_USERDATA => mark = parse_rule_mark(p),
            _ => {}
        }
    }
    Some((table?, chain?, mark))
}

/// A set answer: its table, name and flags.
pub(crate) fn parse_set(body: &[u8]) -> Option<(String, String, u32)> {
    let (mut table, mut name, mut flags) = (None, None, 0);
    for (ty, p) in answer_attrs(body) {
        match ty {
            NFTA_SET_TABLE => table = str_attr(p),
            NFTA_SET_NAME => name = str_attr(p),
            NFTA_SET_FLAGS => flags = be32(p).unwrap_or(0),
            _ => {}
        }
    }
    Some((table?, name?, flags))
}

/// Whether a set of these flags holds intervals.
pub(crate) fn is_interval(flags: u32) -> bool {
    flags & NFT_SET_INTERVAL != 0
}

/// An interval set's elements as the kernel lists them (start elements with their data,
/// end elements flagged) paired into ranges, keyed as [`key_bytes`] keys a
/// [`Key::Range`]: the first index and the one past the last. A start without its end
/// (only a hand-edited set has one) becomes a range ending where the next element
/// starts, or at the top of the index space; an end without a start is dropped: neither
/// matches what we render, so a repair replaces them.
pub(crate) fn pair_intervals(mut raw: Vec<RawElement>) -> Vec<ElementBytes> {
    // By key; at equal keys the end of one interval before the start of the next.
    raw.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
    let mut out = Vec::with_capacity(raw.len() / 2);
    let mut open: Option<(Vec<u8>, ElemData)> = None;
    for (key, data, end) in raw {
        if let Some((first, d)) = open.take() {
            let mut k = first;
            k.extend_from_slice(&key);
            out.push((k, d));
        }
        if !end {
            open = Some((key, data));
        }
    }
    if let Some((mut first, d)) = open {
        first.extend_from_slice(&u32::MAX.to_be_bytes());
        out.push((first, d));
    }
    out
}

/// Whether a set of these flags is an anonymous one (bound to a rule).
pub(crate) fn is_anonymous(flags: u32) -> bool {
    flags & NFT_SET_ANONYMOUS != 0
}

/// An elements answer: the set and its elements (key bytes, data).
pub(crate) fn parse_elements(body: &[u8]) -> Option<(String, Vec<RawElement>)> {
    let (mut set, mut out) = (None, Vec::new());
    for (ty, p) in answer_attrs(body) {
        match ty {
            NFTA_SET_ELEM_LIST_SET => set = str_attr(p),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                for (_, el) in crate::nlmsg::attrs(p) {
                    let (mut key, mut data, mut end) = (None, ElemData::None, false);
                    for (t, q) in crate::nlmsg::attrs(el) {
                        match t {
                            NFTA_SET_ELEM_KEY => {
                                key = crate::nlmsg::attrs(q)
                                    .find(|(a, _)| *a == NFTA_DATA_VALUE)
                                    .map(|(_, v)| v.to_vec());
                            }
                            NFTA_SET_ELEM_DATA => data = parse_data(q),
                            NFTA_SET_ELEM_FLAGS => {
                                end = be32(q).is_some_and(|f| f & NFT_SET_ELEM_INTERVAL_END != 0);
                            }
                            _ => {}
                        }
                    }
                    out.push((key?, data, end));
                }
            }
            _ => {}
        }
    }
    Some((set?, out))
}

fn parse_data(p: &[u8]) -> ElemData {
    for (t, q) in crate::nlmsg::attrs(p) {
        match t {
            NFTA_DATA_VALUE => return ElemData::Value(q.to_vec()),
            NFTA_DATA_VERDICT => {
                let (mut code, mut chain) = (0, None);
                for (a, v) in crate::nlmsg::attrs(q) {
                    match a {
                        NFTA_VERDICT_CODE => code = be32(v).unwrap_or(0),
                        NFTA_VERDICT_CHAIN => chain = str_attr(v),
                        _ => {}
                    }
                }
                return ElemData::Verdict(code, chain);
            }
            _ => {}
        }
    }
    ElemData::None
}

/// The generation in a `NFT_MSG_NEWGEN` answer.
pub(crate) fn parse_generation(body: &[u8]) -> Option<u32> {
    answer_attrs(body)
        .find(|(t, _)| *t == NFTA_GEN_ID)
        .and_then(|(_, p)| be32(p))
}

/// nft's set user data (`NFTNL_UDATA_SET_*` TLVs), so that `nft list` prints our sets
/// exactly as those it creates itself: key byte order (and, for concatenations, each
/// field's type and byte order).
fn set_userdata(shape: KeyShape) -> Option<&'static [u8]> {
    match shape {
        // KEYBYTEORDER = big endian.
        KeyShape::Addr => Some(&[0, 4, 2, 0, 0, 0]),
        KeyShape::ProtoPort
        | KeyShape::AddrProtoPort
        | KeyShape::AddrPair
        | KeyShape::IndexRange => None,
    }
}

/// The user data nft gives `service-endpoints` (declared with `typeof numgen random mod 1 :
/// ip daddr . th dport`): the typeof expressions it prints the map with.
const ENDPOINTS_USERDATA_IP: &[u8] = &[
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
    0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
    0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00,
    0x00, 0x00, 0x01, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x0c, 0x00, 0x04, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
    0x00, 0x00, 0x00, 0x00,
];

/// The same for the `ip6` table (`ip6 daddr`).
const ENDPOINTS_USERDATA_IP6: &[u8] = &[
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
    0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
    0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0d, 0x00,
    0x00, 0x00, 0x01, 0x04, 0x09, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x0c, 0x00, 0x04, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
    0x00, 0x00, 0x00, 0x00,
];

/// The user data nft gives a `numgen` map: host-order integer keys.
const ANON_MAP_USERDATA: &[u8] = &[0, 4, 1, 0, 0, 0];

fn stmt(x: &mut Exprs<'_>, family: Family, s: &Stmt, anon: &mut impl Iterator<Item = u32>) {
    match s {
        Stmt::CtStateNew => {
            x.expr("ct", |b| {
                attr_be32(b, 2, NFT_CT_STATE);
                attr_be32(b, 1, NFT_REG_1);
            });
            x.bitwise(&NF_CT_STATE_NEW.to_ne_bytes(), &[0; 4]);
            x.cmp(NFT_CMP_NEQ, &[0; 4]);
        }
        Stmt::Addr { dir, ne, net } => x.addr(family, *dir, *ne, net),
        Stmt::Iifname { ne, name, prefix } => {
            x.meta_load(NFT_META_IIFNAME, NFT_REG_1);
            // As nft: a whole name is compared NUL-padded to IFNAMSIZ, a prefix by its bytes.
            let mut value = name.as_bytes().to_vec();
            if !*prefix {
                value.resize(IFNAMSIZ, 0);
            }
            x.cmp(if *ne { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &value);
        }
        Stmt::AddrInSet { dir, set } => {
            x.payload(
                NFT_REG_1,
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(family, *dir),
                addr_len(family),
            );
            x.lookup(set, None, None);
        }
        Stmt::FibLocal(dir) => {
            let flag = match dir {
                Dir::Saddr => NFTA_FIB_F_SADDR,
                Dir::Daddr => NFTA_FIB_F_DADDR,
            };
            x.expr("fib", |b| {
                attr_be32(b, 1, NFT_REG_1);
                attr_be32(b, 2, NFT_FIB_RESULT_ADDRTYPE);
                attr_be32(b, 3, flag);
            });
            x.cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
        }
        Stmt::MarkClear(m) => {
            x.meta_load(NFT_META_MARK, NFT_REG_1);
            x.bitwise(&m.to_ne_bytes(), &[0; 4]);
            x.cmp(NFT_CMP_EQ, &[0; 4]);
        }
        Stmt::L4Proto(p) => {
            x.meta_load(NFT_META_L4PROTO, NFT_REG_1);
            x.cmp(NFT_CMP_EQ, &[p.number()]);
        }
        Stmt::VmapAddrProtoPort(map) => {
            x.concat(Some(family));
            x.lookup(&map.name(), None, Some(NFT_REG_VERDICT));
        }
        Stmt::VmapProtoPort(map) => {
            x.concat(None);
            x.lookup(&map.name(), None, Some(NFT_REG_VERDICT));
        }
        Stmt::NumgenVmap(targets) => {
            let modulus = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            x.expr("numgen", |b| {
                attr_be32(b, 1, NFT_REG_1);
                attr_be32(b, 2, modulus);
                attr_be32(b, 3, NFT_NG_RANDOM);
                attr_be32(b, 4, 0);
            });
            let id = anon.next().unwrap_or(0);
            x.lookup("__map%d", Some(id), Some(NFT_REG_VERDICT));
        }
        Stmt::DnatMap {
            shard,
            offset,
            count,
        } => {
            x.expr("numgen", |b| {
                attr_be32(b, 1, NFT_REG_1);
                attr_be32(b, 2, *count);
                attr_be32(b, 3, NFT_NG_RANDOM);
                attr_be32(b, 4, *offset);
            });
            // An interval map compares keys as big-endian bytes.
            x.expr("byteorder", |b| {
                attr_be32(b, NFTA_BYTEORDER_SREG, NFT_REG_1);
                attr_be32(b, NFTA_BYTEORDER_DREG, NFT_REG_1);
                attr_be32(b, NFTA_BYTEORDER_OP, NFT_BYTEORDER_HTON);
                attr_be32(b, NFTA_BYTEORDER_LEN, 4);
                attr_be32(b, NFTA_BYTEORDER_SIZE, 4);
            });
            x.lookup(&FixedSet::Endpoints(*shard).name(), None, Some(NFT_REG_1));
            let port_reg = reg32(addr_len(family) / 4);
            x.expr("nat", |b| {
                attr_be32(b, 1, NFT_NAT_DNAT);
                attr_be32(b, 2, u32::from(family.nfproto()));
                attr_be32(b, 3, NFT_REG_1);
                attr_be32(b, 5, port_reg);
            });
        }
        Stmt::CtStatusDnat => {
            x.expr("ct", |b| {
                attr_be32(b, 2, NFT_CT_STATUS);
                attr_be32(b, 1, NFT_REG_1);
            });
            x.bitwise(&IPS_DST_NAT.to_ne_bytes(), &[0; 4]);
            x.cmp(NFT_CMP_NEQ, &[0; 4]);
        }
        Stmt::PairInSet(set) => {
            x.payload(
                NFT_REG_1,
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(family, Dir::Saddr),
                addr_len(family),
            );
            x.payload(
                reg32(addr_len(family) / 4),
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(family, Dir::Daddr),
                addr_len(family),
            );
            x.lookup(&set.name(), None, None);
        }
        Stmt::MarkOr(m) => {
            x.meta_load(NFT_META_MARK, NFT_REG_1);
            x.bitwise(&(!m).to_ne_bytes(), &m.to_ne_bytes());
            x.meta_set(NFT_META_MARK, NFT_REG_1);
        }
        Stmt::MarkXor(m) => {
            x.meta_load(NFT_META_MARK, NFT_REG_1);
            x.bitwise(&u32::MAX.to_ne_bytes(), &m.to_ne_bytes());
            x.meta_set(NFT_META_MARK, NFT_REG_1);
        }
        Stmt::Masquerade { fully_random } => x.expr("masq", |b| {
            if *fully_random {
                attr_be32(b, 1, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
            }
        }),
        Stmt::Dnat(sa) => {
            x.immediate(NFT_REG_1, &addr_bytes(&sa.ip()));
            x.immediate(NFT_REG_2, &sa.port().to_be_bytes());
            let fam = match sa {
                SocketAddr::V4(_) => Family::Ip,
                SocketAddr::V6(_) => Family::Ip6,
            };
            x.expr("nat", |b| {
                attr_be32(b, 1, NFT_NAT_DNAT);
                attr_be32(b, 2, u32::from(fam.nfproto()));
                attr_be32(b, 3, NFT_REG_1);
                attr_be32(b, 5, NFT_REG_2);
                attr_be32(b, 7, NF_NAT_RANGE_PROTO_SPECIFIED);
            });
        }
        Stmt::UpdateSaddr(set) => {
            x.payload(
                NFT_REG_1,
                NFT_PAYLOAD_NETWORK_HEADER,
                addr_offset(family, Dir::Saddr),
                addr_len(family),
            );
            x.expr("dynset", |b| {
                attr_str(b, 1, set);
                attr_be32(b, 3, NFT_DYNSET_OP_UPDATE);
                attr_be32(b, 4, NFT_REG_1);
            });
        }
        Stmt::Reject => {
            let code: u8 = match family {
                Family::Ip => 3,
                Family::Ip6 => 4,
            };
            x.expr("reject", |b| {
                attr_be32(b, 1, NFT_REJECT_ICMP_UNREACH);
                attr(b, 2, &[code]);
            });
        }
        Stmt::Verdict(v) => x.verdict(v),
    }
}

/// Encodes transactions as one batch.
pub fn encode(txs: &[&Transaction], first_seq: u32) -> EncodedBatch {
    let mut b = Batch::new(first_seq);
    for tx in txs {
        b.push(tx);
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_elements_pair_into_ranges() {
        let v = |d: u8| ElemData::Value(vec![d]);
        let k = |i: u32| i.to_be_bytes().to_vec();
        let range = |a: u32, end: u32| [k(a), k(end)].concat();
        // As the kernel may list them: any order, adjacent ranges sharing a key (the end
        // of one, the start of the next).
        let raw = vec![
            (k(100), v(2), false),
            (k(200), ElemData::None, true),
            (k(0), v(1), false),
            (k(100), ElemData::None, true),
        ];
        assert_eq!(
            pair_intervals(raw),
            vec![(range(0, 100), v(1)), (range(100, 200), v(2))]
        );
        // A start without its end runs to the top; an end without a start is dropped.
        let raw = vec![(k(5), ElemData::None, true), (k(7), v(3), false)];
        assert_eq!(pair_intervals(raw), vec![(range(7, u32::MAX), v(3))]);
        // What `key_bytes` writes for a range is what pairing produces.
        assert_eq!(key_bytes(&Key::Range(0, 99)), range(0, 100));
        assert_eq!(
            parse_key(KeyShape::IndexRange, Family::Ip, &range(0, 100)),
            Some(Key::Range(0, 99))
        );
        assert_eq!(
            parse_key(KeyShape::IndexRange, Family::Ip, &range(9, 9)),
            None
        );
    }

    #[test]
    fn registers_follow_nft() {
        // IPv4 concatenation: reg 1, 9, 10; IPv6: reg 1, 2, 13 (nft --debug=netlink).
        assert_eq!([reg32(0), reg32(1), reg32(2)], [1, 9, 10]);
        assert_eq!([reg32(0), reg32(4), reg32(5)], [1, 2, 13]);
    }

    #[test]
    fn key_bytes_pad_fields() {
        let k = Key::AddrProtoPort("172.30.0.44".parse().unwrap(), L4::Tcp, 80);
        assert_eq!(key_bytes(&k), [172, 30, 0, 44, 6, 0, 0, 0, 0, 80, 0, 0]);
        let k = Key::ProtoPort(L4::Tcp, 30080);
        assert_eq!(key_bytes(&k), [6, 0, 0, 0, 0x75, 0x80, 0, 0]);
        assert_eq!(key_type(Family::Ip, KeyShape::AddrProtoPort), (0x730d, 12));
        assert_eq!(key_type(Family::Ip6, KeyShape::AddrProtoPort).1, 24);
    }

    #[test]
    fn batch_is_framed_and_acks_its_last_message() {
        let mut tx = Transaction::new(Family::Ip);
        tx.ops.push(Op::AddTable);
        tx.ops.push(Op::FlushChain("services".into()));
        let enc = encode(&[&tx], 100);
        let b = &enc.bytes;
        // Begin: type 0x10, subsystem in res_id.
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x10);
        assert_eq!(&b[18..20], &10u16.to_be_bytes());
        assert_eq!(enc.messages, 2);
        assert_eq!(enc.acked_seq, Some(102));
        // Every message length adds up to the whole.
        let mut at = 0;
        let mut n = 0;
        while at < b.len() {
            let len = u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
            assert!(len >= 20 && len.is_multiple_of(4));
            at += len;
            n += 1;
        }
        assert_eq!(at, b.len());
        assert_eq!(n, 4);
    }
}
