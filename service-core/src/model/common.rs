//! Types shared by several API objects: string enumerations, `IntOrString`, object metadata.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a Kubernetes string enumeration with an `Other` catch-all variant, so that an
/// unknown value loads, round-trips, and is reported by validation instead of failing to parse.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this library does not know. It is kept as written so that it
            /// round-trips; validation reports it as unsupported.
            Other(String),
        }

        impl $name {
            /// Every value Kubernetes defines, spelled as Kubernetes spells it.
            pub const KNOWN: &'static [&'static str] = &[$($text),+];

            /// The value as Kubernetes spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(s) => s,
                }
            }

            /// Whether this is one of the values Kubernetes defines.
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::from(&*s))
            }
        }

    };
}
pub(crate) use string_enum;

string_enum! {
    /// Layer-4 protocol of a port (`TCP`, `UDP`, `SCTP`).
    pub enum Protocol {
        /// TCP.
        Tcp = "TCP",
        /// UDP.
        Udp = "UDP",
        /// SCTP.
        Sctp = "SCTP",
    }
}

impl Protocol {
    /// Lower-case spelling, as kube-proxy writes it in chain-name hashes, rules and env values.
    pub fn lower(&self) -> &str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Other(s) => s,
        }
    }
}

/// The default protocol, as the API server defaults it: TCP.
impl Default for Protocol {
    fn default() -> Self {
        Self::Tcp
    }
}

string_enum! {
    /// IP family of an address, a Service or an EndpointSlice.
    pub enum IpFamily {
        /// IPv4.
        Ipv4 = "IPv4",
        /// IPv6.
        Ipv6 = "IPv6",
    }
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Self::Ipv4 } else { Self::Ipv6 }
    }
}

/// A value that is either an integer or a string, as Kubernetes' `IntOrString`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum IntOrString {
    /// An integer, e.g. `targetPort: 8080`.
    Int(i32),
    /// A string, e.g. `targetPort: http`.
    String(String),
}

impl IntOrString {
    /// The zero value: integer 0 or the empty string, which defaulting replaces.
    pub fn is_zero(&self) -> bool {
        match self {
            Self::Int(i) => *i == 0,
            Self::String(s) => s.is_empty(),
        }
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(i) => serializer.serialize_i32(*i),
            Self::String(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in 32 bits")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in 32 bits")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Fields of an object this library does not model, kept so that objects round-trip.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// Standard object metadata (`metadata`), with the fields this library uses typed and every
/// other field kept in [`ObjectMeta::extra`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prefix for a server-generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// Namespace; empty means `default` for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Unique id assigned by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Opaque version for optimistic concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set when the object is being deleted (RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Owners of this object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Every other metadata field (`creationTimestamp`, `managedFields`, ...), kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ObjectMeta {
    /// Metadata with a namespace and a name.
    pub fn named(namespace: &str, name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Self::default()
        }
    }

    /// The name, or `""`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The namespace, with an unset namespace read as `default` (as `kubectl apply` does).
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            None | Some("") => "default",
            Some(ns) => ns,
        }
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A reference from an object to its owner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct OwnerReference {
    /// API version of the owner.
    #[serde(default)]
    pub api_version: String,
    /// Kind of the owner.
    #[serde(default)]
    pub kind: String,
    /// Name of the owner.
    #[serde(default)]
    pub name: String,
    /// UID of the owner.
    #[serde(default)]
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether deletion of the owner is blocked until this object is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// A reference to another object (`targetRef` of an endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ObjectReference {
    /// Kind, e.g. `Pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Resource version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_round_trip() {
        let p: Protocol = serde_json::from_str("\"ICMP\"").unwrap();
        assert_eq!(p, Protocol::Other("ICMP".into()));
        assert!(!p.is_known());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"ICMP\"");
        let p: Protocol = serde_json::from_str("\"SCTP\"").unwrap();
        assert_eq!(p, Protocol::Sctp);
        assert_eq!(p.lower(), "sctp");
    }

    #[test]
    fn int_or_string_parses_both_shapes() {
        assert_eq!(
            serde_json::from_str::<IntOrString>("8080").unwrap(),
            IntOrString::Int(8080)
        );
        assert_eq!(
            serde_json::from_str::<IntOrString>("\"http\"").unwrap(),
            IntOrString::String("http".into())
        );
        // A quoted number stays a string: Kubernetes treats it as a port name.
        assert_eq!(
            serde_json::from_str::<IntOrString>("\"8080\"").unwrap(),
            IntOrString::String("8080".into())
        );
        assert!(serde_json::from_str::<IntOrString>("4294967296").is_err());
        assert!(serde_json::from_str::<IntOrString>("[1]").is_err());
    }

    #[test]
    fn metadata_keeps_unknown_fields() {
        let json = r#"{"name":"a","namespace":"b","creationTimestamp":"2024-01-01T00:00:00Z","managedFields":[{"manager":"kubectl"}]}"#;
        let m: ObjectMeta = serde_json::from_str(json).unwrap();
        assert_eq!(m.name(), "a");
        assert!(m.extra.contains_key("managedFields"));
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn empty_namespace_reads_as_default() {
        let mut m = ObjectMeta::named("", "x");
        assert_eq!(m.namespace(), "default");
        m.namespace = None;
        assert_eq!(m.namespace(), "default");
    }
}
