//! Parsing the rule lines this backend writes back into the typed model.
//!
//! Rendering writes each rule straight to text (a 10k-service rule set has ~330k rules, and
//! keeping them as values costs more than writing them); the tracer and the tests read the
//! text back. The grammar is exactly what [`super::model::Rule`] writes, and
//! `parse(write(rule)) == rule` is tested as a property.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::model::{Addr, ChainName, Comment, CtState, L4, Match, Phrase, Rule, Target};

/// A line that is not in this backend's rule grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse rule `{line}`: {reason}")]
#[non_exhaustive]
pub struct ParseError {
    /// The line.
    pub line: String,
    /// What is wrong.
    pub reason: String,
}

/// Splits on spaces, keeping `"quoted text"` together (without the quotes).
fn tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            out.push(&q[..end]);
            rest = q[(end + 1).min(q.len())..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

const STATIC_COMMENTS: &[&str] = &[
    "kubernetes service traffic requiring SNAT",
    "block incoming localnet connections",
    "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
    "kubernetes forwarding rules",
    "kubernetes forwarding conntrack rule",
    "kubernetes service portals",
    "kubernetes externally-visible service portals",
    "kubernetes health check service ports",
    "kubernetes load balancer firewall",
    "kubernetes postrouting rules",
];

fn comment(text: &str) -> Comment {
    if let Some(s) = STATIC_COMMENTS.iter().find(|s| **s == text) {
        return Comment::Static(s);
    }
    let svc = |s: &str| -> Arc<str> { Arc::from(s) };
    let prefixed: [(&str, &str, Phrase); 5] = [
        (
            "masquerade traffic for ",
            " external destinations",
            Phrase::MasqueradeExternal,
        ),
        (
            "pod traffic for ",
            " external destinations",
            Phrase::PodExternal,
        ),
        (
            "masquerade LOCAL traffic for ",
            " external destinations",
            Phrase::MasqueradeLocalExternal,
        ),
        (
            "route LOCAL traffic for ",
            " external destinations",
            Phrase::RouteLocalExternal,
        ),
        (
            "other traffic to ",
            " will be dropped by KUBE-PROXY-FIREWALL",
            Phrase::OtherTrafficDropped,
        ),
    ];
    for (before, after, phrase) in prefixed {
        if let Some(mid) = text
            .strip_prefix(before)
            .and_then(|t| t.strip_suffix(after))
        {
            return Comment::Service(svc(mid), phrase);
        }
    }
    if let Some((name, chain)) = text.split_once(" traffic not accepted by ")
        && let Some(c) = ChainName::parse(chain)
    {
        return Comment::NotAcceptedBy(svc(name), c);
    }
    if let Some((name, ep)) = text.split_once(" -> ")
        && let Ok(sa) = ep.parse::<SocketAddr>()
    {
        return Comment::Endpoint(svc(name), sa);
    }
    let suffixed: [(&str, Phrase); 6] = [
        (" cluster IP", Phrase::ClusterIp),
        (" external IP", Phrase::ExternalIp),
        (" loadbalancer IP", Phrase::LoadBalancerIp),
        (" has no endpoints", Phrase::NoEndpoints),
        (" has no local endpoints", Phrase::NoLocalEndpoints),
        (" health check node port", Phrase::HealthCheck),
    ];
    for (after, phrase) in suffixed {
        if let Some(name) = text.strip_suffix(after) {
            return Comment::Service(svc(name), phrase);
        }
    }
    Comment::Service(svc(text), Phrase::Bare)
}

fn addr(s: &str) -> Option<Addr> {
    if s.contains('/') {
        s.parse().ok().map(Addr::Net)
    } else {
        s.parse::<IpAddr>().ok().map(Addr::Ip)
    }
}

fn mark(s: &str) -> Option<u32> {
    let v = s.split('/').next()?;
    u32::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

fn ctstate(s: &str) -> Option<CtState> {
    Some(match s {
        "NEW" => CtState::New,
        "INVALID" => CtState::Invalid,
        "RELATED,ESTABLISHED" => CtState::RelatedEstablished,
        "RELATED,ESTABLISHED,DNAT" => CtState::RelatedEstablishedDnat,
        _ => return None,
    })
}

/// Parses one `-A CHAIN ...` line.
///
/// # Errors
/// The line is not in this backend's grammar.
pub fn parse_rule(line: &str) -> Result<(ChainName, Rule), ParseError> {
    let err = |reason: &str| ParseError {
        line: line.to_owned(),
        reason: reason.to_owned(),
    };
    let t = tokens(line);
    if t.first() != Some(&"-A") {
        return Err(err("expected -A"));
    }
    let chain = t
        .get(1)
        .and_then(|c| ChainName::parse(c))
        .ok_or_else(|| err("unknown chain"))?;
    let mut rule = Rule {
        comment: None,
        matches: Default::default(),
        target: None,
    };
    let mut i = 2;
    let mut negate = false;
    let get = |i: usize| t.get(i).copied().ok_or_else(|| err("truncated"));
    while i < t.len() {
        match t[i] {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-m" => {
                let module = get(i + 1)?;
                match module {
                    "comment" if get(i + 2)? == "--comment" => {
                        rule.comment = Some(comment(get(i + 3)?));
                        i += 4;
                    }
                    "tcp" | "udp" | "sctp" => {
                        if get(i + 2)? != "-p" || get(i + 3)? != module {
                            return Err(err("protocol match without -p"));
                        }
                        let p = match module {
                            "tcp" => L4::Tcp,
                            "udp" => L4::Udp,
                            _ => L4::Sctp,
                        };
                        rule.matches.push(Match::Protocol(p));
                        i += 4;
                    }
                    "addrtype" => {
                        let m = match (get(i + 2)?, get(i + 3)?) {
                            ("--src-type", "LOCAL") => Match::SrcTypeLocal,
                            ("--dst-type", "LOCAL") => Match::DstTypeLocal,
                            _ => return Err(err("addrtype")),
                        };
                        rule.matches.push(m);
                        i += 4;
                    }
                    "statistic" => {
                        let p: f64 = get(i + 5)?.parse().map_err(|_| err("probability"))?;
                        if p <= 0.0 {
                            return Err(err("probability"));
                        }
                        rule.matches
                            .push(Match::Probability((1.0 / p).round() as u32));
                        i += 6;
                    }
                    "recent" => {
                        let name =
                            ChainName::parse(get(i + 3)?).ok_or_else(|| err("recent name"))?;
                        if get(i + 4)? == "--set" {
                            rule.matches.push(Match::RecentSet(name));
                            i += 5;
                        } else {
                            let secs = get(i + 6)?.parse().map_err(|_| err("recent seconds"))?;
                            rule.matches.push(Match::RecentCheck(name, secs));
                            i += 8;
                        }
                    }
                    "mark" => {
                        let (neg, at) = if get(i + 2)? == "!" {
                            (true, i + 4)
                        } else {
                            (false, i + 3)
                        };
                        let m = mark(get(at)?).ok_or_else(|| err("mark"))?;
                        rule.matches.push(Match::Mark(m, neg));
                        i = at + 1;
                    }
                    "nfacct" if get(i + 2)? == "--nfacct-name" => {
                        rule.matches.push(Match::Nfacct(Arc::from(get(i + 3)?)));
                        i += 4;
                    }
                    "conntrack" => {
                        let (neg, at) = if get(i + 2)? == "!" {
                            (true, i + 4)
                        } else {
                            (false, i + 3)
                        };
                        let s = ctstate(get(at)?).ok_or_else(|| err("ctstate"))?;
                        rule.matches.push(Match::CtState(s, neg));
                        i = at + 1;
                    }
                    _ => return Err(err("unknown match module")),
                }
            }
            "-s" | "-d" => {
                let a = addr(get(i + 1)?).ok_or_else(|| err("address"))?;
                rule.matches.push(if t[i] == "-s" {
                    Match::Source(a, negate)
                } else {
                    Match::Destination(a, negate)
                });
                i += 2;
            }
            "-i" => {
                let name = get(i + 1)?;
                rule.matches
                    .push(Match::InInterface(Arc::from(name), negate));
                i += 2;
            }
            "--dport" => {
                let p = get(i + 1)?.parse().map_err(|_| err("port"))?;
                rule.matches.push(Match::DestPort(p));
                i += 2;
            }
            "-j" => {
                let target = get(i + 1)?;
                let (tg, used) = match target {
                    "ACCEPT" => (Target::Accept, 2),
                    "DROP" => (Target::Drop, 2),
                    "REJECT" => (Target::Reject, 2),
                    "RETURN" => (Target::Return, 2),
                    "DNAT" => {
                        let sa = get(i + 3)?.parse().map_err(|_| err("DNAT destination"))?;
                        (Target::Dnat(sa), 4)
                    }
                    "MARK" => {
                        let m = mark(get(i + 3)?).ok_or_else(|| err("mark"))?;
                        match get(i + 2)? {
                            "--or-mark" => (Target::MarkOr(m), 4),
                            "--xor-mark" => (Target::MarkXor(m), 4),
                            _ => return Err(err("MARK")),
                        }
                    }
                    "MASQUERADE" => {
                        let rf = t.get(i + 2) == Some(&"--random-fully");
                        (Target::Masquerade(rf), if rf { 3 } else { 2 })
                    }
                    chain => (
                        Target::Jump(ChainName::parse(chain).ok_or_else(|| err("unknown target"))?),
                        2,
                    ),
                };
                rule.target = Some(tg);
                i += used;
            }
            other => return Err(err(&format!("unexpected `{other}`"))),
        }
        negate = false;
    }
    Ok((chain, rule))
}
