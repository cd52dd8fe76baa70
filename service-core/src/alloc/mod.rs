//! ClusterIP and NodePort allocators, exactly as the API server's bitmap allocators
//! (`pkg/registry/core/service/{allocator,ipallocator,portallocator}`).
//!
//! ```text
//! IpAllocator (CIDR ↔ offset) ─┐
//!                              ├─► Bitmap { static band [0, offset) │ dynamic band [offset, max) }
//! PortAllocator (range ↔ offset)┘          └─ snapshot/restore: RangeAllocation { range, data }
//! ```
//!
//! - Offset 0 of an IP range is the address after the network address; IPv4 ranges
//!   exclude the broadcast address; IPv6 ranges are capped at 65,535 addresses. A /31, /32,
//!   /127 or /128 has no usable address.
//! - The static band is `clamp(size / 16, 16, 256)` addresses (none for a /28 or smaller)
//!   and `clamp(size / 32, 16, 128)` ports (none for 16 ports or fewer): [`IpAllocator::allocate_next`]
//!   and [`PortAllocator::allocate_next`] take from it only when the dynamic band is full,
//!   so values users pin in the static band rarely collide.
//! - Snapshots are Kubernetes' `RangeAllocation`: the range as text and the bitmap bytes,
//!   so state moves between this crate and a real API server's.
//!
//! Randomness is injected ([`crate::random::Random`]); nothing here keeps global state.

mod bitmap;
pub mod cidrs;
mod ip;
mod port;

use std::fmt;

pub use bitmap::{Bitmap, OutOfRangeBits};
pub use cidrs::{IpRepair, ServiceCidrAllocator, ip_address_object};
pub use ip::IpAllocator;
pub use port::{PortAllocator, PortRange, PortRangeError};

/// What an allocator hands out; it words the error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// Cluster IPs.
    Ip,
    /// Node ports.
    Port,
}

/// An allocation that could not be made. The messages are the API server's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// `range is full`.
    #[error("range is full")]
    Full,
    /// `provided IP is already allocated` / `provided port is already allocated`.
    #[error("provided {} is already allocated", noun(*.0))]
    Allocated(Resource),
    /// `provided IP is not in the valid range. The range of valid IPs is 10.0.0.0/24`.
    #[error("provided {} is not in the valid range. The range of valid {}s is {valid}", noun(*resource), noun(*resource))]
    NotInRange {
        /// IP or port.
        resource: Resource,
        /// The range, as text.
        valid: String,
    },
    /// A snapshot of another range: `the provided network does not match the current range`
    /// / `the provided port range does not match the current port range`.
    #[error("{}", match .0 {
        Resource::Ip => "the provided network does not match the current range",
        Resource::Port => "the provided port range does not match the current port range",
    })]
    MismatchedRange(Resource),
    /// A snapshot whose range text does not parse or whose bitmap does not fit the range.
    #[error("invalid allocation snapshot: {0}")]
    BadSnapshot(String),
}

fn noun(r: Resource) -> &'static str {
    match r {
        Resource::Ip => "IP",
        Resource::Port => "port",
    }
}

/// An allocator's persisted state, Kubernetes' `RangeAllocation` (`core/v1`): the range as
/// text (`10.96.0.0/12`, `30000-32767`) and the bitmap (see [`Bitmap::to_bytes`]).
/// Serialized as the API object is, `data` in base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RangeAllocation {
    /// The range.
    pub range: String,
    /// The bitmap bytes.
    #[serde(with = "base64", default)]
    pub data: Vec<u8>,
}

impl RangeAllocation {
    /// A snapshot from its parts.
    pub fn new(range: &str, data: Vec<u8>) -> Self {
        Self {
            range: range.to_owned(),
            data,
        }
    }

    /// The JSON document stored for it (`{"range": ..., "data": base64}`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses [`RangeAllocation::to_json`] output.
    ///
    /// # Errors
    /// The bytes are not such a document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AllocError> {
        serde_json::from_slice(bytes).map_err(|e| AllocError::BadSnapshot(e.to_string()))
    }
}

impl fmt::Display for RangeAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.range, self.data.len())
    }
}

mod base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(data))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The static band size for a range of `size` values: `clamp(size / step, min, max)`, or 0
/// when `size <= min` (`calculateRangeOffset` in ipallocator and portallocator).
fn band_offset(size: u128, min: u128, max: u128, step: u128) -> usize {
    if size <= min {
        return 0;
    }
    (size / step).clamp(min, max) as usize
}
