//! [`RecordType`]: the DNS record types by name.

use std::fmt;
use std::str::FromStr;

use crate::wire::rtype;

/// A DNS record (query) type.
///
/// ```
/// use service_dns::RecordType;
///
/// let t: RecordType = "srv".parse()?;
/// assert_eq!(t, RecordType::Srv);
/// assert_eq!(t.to_string(), "SRV");
/// assert_eq!(u16::from(t), 33);
/// assert_eq!(RecordType::from(65), RecordType::Other(65));
/// assert_eq!("TYPE65".parse::<RecordType>()?, RecordType::Other(65));
/// # Ok::<(), service_dns::UnknownRecordType>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias.
    Cname,
    /// Name server.
    Ns,
    /// Reverse pointer.
    Ptr,
    /// Start of authority.
    Soa,
    /// Service location.
    Srv,
    /// Text.
    Txt,
    /// Any type (a query only).
    Any,
    /// Any other type, by number.
    Other(u16),
}

const NAMES: [(RecordType, &str, u16); 9] = [
    (RecordType::A, "A", rtype::A),
    (RecordType::Aaaa, "AAAA", rtype::AAAA),
    (RecordType::Cname, "CNAME", rtype::CNAME),
    (RecordType::Ns, "NS", rtype::NS),
    (RecordType::Ptr, "PTR", rtype::PTR),
    (RecordType::Soa, "SOA", rtype::SOA),
    (RecordType::Srv, "SRV", rtype::SRV),
    (RecordType::Txt, "TXT", rtype::TXT),
    (RecordType::Any, "ANY", rtype::ANY),
];

impl RecordType {
    /// The type's number on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Other(n) => n,
            t => NAMES
                .iter()
                .find(|(k, ..)| *k == t)
                .map_or(0, |(_, _, code)| *code),
        }
    }
}

impl From<u16> for RecordType {
    fn from(code: u16) -> Self {
        NAMES
            .iter()
            .find(|(.., c)| *c == code)
            .map_or(Self::Other(code), |(t, ..)| *t)
    }
}

impl From<RecordType> for u16 {
    fn from(t: RecordType) -> Self {
        t.code()
    }
}

/// The name `dig` prints: `A`, `AAAA`, ..., `TYPE65` (RFC 3597) for others.
impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|(k, ..)| k == self) {
            Some((_, name, _)) => f.write_str(name),
            None => write!(f, "TYPE{}", self.code()),
        }
    }
}

/// A record type name that is neither known nor `TYPEnnn`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown DNS record type {0:?} (A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT, ANY or TYPEnnn)")]
#[non_exhaustive]
pub struct UnknownRecordType(pub String);

impl FromStr for RecordType {
    type Err = UnknownRecordType;

    /// Case-insensitive: `a`, `AAAA`, `Srv`, `TYPE65`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        if let Some((t, ..)) = NAMES.iter().find(|(_, name, _)| *name == upper) {
            return Ok(*t);
        }
        upper
            .strip_prefix("TYPE")
            .and_then(|n| n.parse::<u16>().ok())
            .map(Self::from)
            .ok_or_else(|| UnknownRecordType(s.to_owned()))
    }
}
