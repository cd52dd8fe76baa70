//! Turning a request into a response: the wire rules around [`ZoneView::lookup`] (rcodes,
//! SOA in negative answers, additional records, CNAME chasing inside the zone, EDNS,
//! truncation).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{
    self, CLASS_IN, CLASSIC_UDP_PAYLOAD, Data, MAX_UDP_PAYLOAD, Owner, ParsedRecord, Request,
    ResponseWriter, WireError, rcode, rtype,
};
use crate::zone::{Authority, Lookup, Rdata, ZoneView};

/// How the request arrived: UDP answers are limited in size, TCP ones are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// What to do after [`ZoneView::respond`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Send the response in the buffer.
    Answered,
    /// Not a name of ours: send the request to the upstream server (only returned when
    /// forwarding is enabled; otherwise the buffer holds REFUSED).
    Forward,
    /// The buffer holds an answer with a CNAME to `target`, outside the zone. Send it as
    /// is, or resolve `target` upstream and call [`ZoneView::respond_chased`].
    Chase {
        /// The CNAME target.
        target: String,
        /// The type asked for.
        qtype: u16,
    },
    /// Not a request: send nothing.
    Ignore,
}

const SOA_REFRESH: u32 = 7200;
const SOA_RETRY: u32 = 1800;
const SOA_EXPIRE: u32 = 86400;

fn apex_name(view: &ZoneView, authority: Authority) -> &str {
    match authority {
        Authority::Cluster => &view.config.zone,
        Authority::InAddr => "in-addr.arpa",
        Authority::Ip6 => "ip6.arpa",
    }
}

fn write_soa(w: &mut ResponseWriter<'_>, view: &ZoneView, authority: Authority) -> bool {
    let apex = apex_name(view, authority);
    let ttl = view.config.ttl;
    let mname = format!("ns.dns.{apex}");
    let rname = format!("hostmaster.{apex}");
    w.record(
        Owner::Name(apex),
        rtype::SOA,
        ttl.min(300),
        Data::Soa {
            mname: &mname,
            rname: &rname,
            serial: view.serial,
            refresh: SOA_REFRESH,
            retry: SOA_RETRY,
            expire: SOA_EXPIRE,
            minimum: ttl,
        },
    )
}

/// Writes one record; false when it did not fit.
fn write_rdata(w: &mut ResponseWriter<'_>, owner: Owner<'_>, ttl: u32, r: &Rdata) -> bool {
    match r {
        Rdata::A(ip) => w.record(owner, rtype::A, ttl, Data::A(*ip)),
        Rdata::Aaaa(ip) => w.record(owner, rtype::AAAA, ttl, Data::Aaaa(*ip)),
        Rdata::Cname(t) => w.record(owner, rtype::CNAME, ttl, Data::Name(t)),
        Rdata::Ptr(t) => w.record(owner, rtype::PTR, ttl, Data::Name(t)),
        Rdata::Ns(t) => w.record(owner, rtype::NS, ttl, Data::Name(t)),
        Rdata::Txt(t) => w.record(
            owner,
            rtype::TXT,
            crate::config::DNS_VERSION_TTL,
            Data::Txt(t),
        ),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => w.record(
            owner,
            rtype::SRV,
            ttl,
            Data::Srv {
                priority: *priority,
                weight: *weight,
                port: *port,
                target,
            },
        ),
    }
}

impl ZoneView {
    /// Answers one request into `out`. `forwarding` says whether names outside the zone
    /// (and reverse names the zone does not know) may be sent upstream.
    pub fn respond(
        &self,
        msg: &[u8],
        out: &mut Vec<u8>,
        transport: Transport,
        forwarding: bool,
    ) -> Outcome {
        self.respond_inner(msg, out, transport, forwarding, None)
    }

    /// Answers again after an upstream lookup of the CNAME target: the CNAME followed by
    /// `chased` (the upstream's A, AAAA and CNAME records for the target).
    pub fn respond_chased(
        &self,
        msg: &[u8],
        out: &mut Vec<u8>,
        transport: Transport,
        chased: &[ParsedRecord],
    ) {
        let _ = self.respond_inner(msg, out, transport, true, Some(chased));
    }

    fn respond_inner(
        &self,
        msg: &[u8],
        out: &mut Vec<u8>,
        transport: Transport,
        forwarding: bool,
        chased: Option<&[ParsedRecord]>,
    ) -> Outcome {
        let req = match wire::parse_request(msg) {
            Ok(r) => r,
            Err(WireError::Ignore) => return Outcome::Ignore,
            Err(WireError::FormErr { id, flags }) => {
                ResponseWriter::header_only(out, id, flags, rcode::FORMERR);
                return Outcome::Answered;
            }
        };
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => usize::from(
                req.edns
                    .map_or(CLASSIC_UDP_PAYLOAD, |e| e.udp_size.min(MAX_UDP_PAYLOAD)),
            ),
        };
        let udp = transport == Transport::Udp;
        let simple = |out: &mut Vec<u8>, code: u16, ext: u16| {
            let mut w = ResponseWriter::new(out, &req, code, false, forwarding);
            w.limit(limit, req.edns.is_some());
            if req.edns.is_some() {
                w.opt(ext);
            }
            w.finish(udp);
            Outcome::Answered
        };
        if req.opcode() != 0 {
            return simple(out, rcode::NOTIMP, 0);
        }
        if req.edns.is_some_and(|e| e.version > 0) {
            return simple(out, rcode::BADVERS & 0xf, rcode::BADVERS);
        }
        if req.qclass != CLASS_IN && req.qclass != rtype::ANY {
            return simple(out, rcode::REFUSED, 0);
        }
        let lookup = self.lookup_code(req.qname(), req.qtype);
        if lookup == Lookup::NotOurs {
            return if forwarding {
                Outcome::Forward
            } else {
                simple(out, rcode::REFUSED, 0)
            };
        }
        if matches!(req.qtype, rtype::AXFR | rtype::IXFR) {
            return simple(out, rcode::REFUSED, 0);
        }
        let ttl = self.config.ttl;
        let mut outcome = Outcome::Answered;
        let (code, body): (u16, Lookup) = match lookup {
            Lookup::NxDomain(a) if forwarding && a != Authority::Cluster => {
                return Outcome::Forward;
            }
            Lookup::NxDomain(a) => (rcode::NXDOMAIN, Lookup::NxDomain(a)),
            other => (rcode::NOERROR, other),
        };
        let mut w = ResponseWriter::new(out, &req, code, true, forwarding);
        w.limit(limit, req.edns.is_some());
        match &body {
            Lookup::Answer(recs, _) => {
                // The names SRV and NS records point at, once each, in order: their
                // addresses go in the additional section (of the records that fit).
                let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
                let mut targets: Vec<&str> = Vec::new();
                for r in recs {
                    if !write_rdata(&mut w, Owner::Question, ttl, r) {
                        break;
                    }
                    match r {
                        Rdata::Srv { target, .. } | Rdata::Ns(target) if seen.insert(target) => {
                            targets.push(target);
                        }
                        Rdata::Cname(target) if req.qtype != rtype::CNAME => {
                            self.chase(&mut w, &req, target, &mut outcome, chased);
                        }
                        _ => {}
                    }
                }
                if !targets.is_empty() && !w.is_full() {
                    w.section(2);
                    'additional: for name in targets {
                        for a in self.addresses(name) {
                            if !write_rdata(&mut w, Owner::Name(name), ttl, &a) {
                                break 'additional;
                            }
                        }
                    }
                }
            }
            Lookup::Soa(a) => {
                write_soa(&mut w, self, *a);
            }
            Lookup::NoData(a) | Lookup::NxDomain(a) => {
                w.section(1);
                write_soa(&mut w, self, *a);
            }
            Lookup::NotOurs => {}
        }
        if req.edns.is_some() {
            w.opt(0);
        }
        w.finish(udp);
        outcome
    }

    /// Follows a CNAME: inside the zone from our records (a few levels), outside from
    /// `chased` or by asking the caller to resolve it.
    fn chase(
        &self,
        w: &mut ResponseWriter<'_>,
        req: &Request<'_>,
        target: &str,
        outcome: &mut Outcome,
        chased: Option<&[ParsedRecord]>,
    ) {
        let zone = &self.config.zone;
        let in_zone = target == zone || target.ends_with(&format!(".{zone}"));
        if !in_zone {
            match chased {
                Some(records) => {
                    // Only records for the target, and for the names its CNAMEs lead to:
                    // an upstream answer naming anything else is not copied into ours.
                    let mut names = vec![target.to_ascii_lowercase()];
                    let mut written = vec![false; records.len()];
                    let mut progress = true;
                    while progress {
                        progress = false;
                        for (i, r) in records.iter().enumerate() {
                            if written[i] || !names.contains(&r.name) {
                                continue;
                            }
                            written[i] = true;
                            progress = true;
                            if r.rtype == rtype::CNAME
                                && let Ok(next) = std::str::from_utf8(&r.data)
                                && names.len() < 8
                            {
                                names.push(next.to_ascii_lowercase());
                            }
                        }
                    }
                    for (r, _) in records.iter().zip(&written).filter(|(_, w)| **w) {
                        let data = match r.rtype {
                            rtype::A => <[u8; 4]>::try_from(&r.data[..])
                                .ok()
                                .map(|b| Data::A(Ipv4Addr::from(b))),
                            rtype::AAAA => <[u8; 16]>::try_from(&r.data[..])
                                .ok()
                                .map(|b| Data::Aaaa(Ipv6Addr::from(b))),
                            rtype::CNAME => std::str::from_utf8(&r.data).ok().map(Data::Name),
                            _ => None,
                        };
                        if let Some(d) = data {
                            w.record(Owner::Name(&r.name), r.rtype, r.ttl, d);
                        }
                    }
                }
                None => {
                    *outcome = Outcome::Chase {
                        target: target.to_owned(),
                        qtype: req.qtype,
                    };
                }
            }
            return;
        }
        let mut name = target.to_owned();
        for _ in 0..8 {
            match self.lookup_code(&name, req.qtype) {
                Lookup::Answer(recs, _) => {
                    let mut next = None;
                    for r in &recs {
                        write_rdata(w, Owner::Name(&name), self.config.ttl, r);
                        if let Rdata::Cname(t) = r {
                            next = Some(t.to_string());
                        }
                    }
                    match next {
                        Some(n) if n != name => name = n,
                        _ => return,
                    }
                }
                _ => return,
            }
        }
    }
}
