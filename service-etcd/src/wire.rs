//! etcd v3's messages as its gRPC gateway speaks them: the protobuf JSON mapping, where
//! `bytes` are base64 and 64-bit integers are decimal strings, and fields at their default
//! value (`false`, `0`, empty lists) are left out of answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize};

/// Bytes as the gateway wants them.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    STANDARD.decode(s).map_err(serde::de::Error::custom)
}

/// An `int64` sent as a string (the mapping's form) or, leniently, as a number.
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// `RangeRequest`.
#[derive(Serialize, Debug)]
pub(crate) struct RangeRequest {
    pub(crate) key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) range_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) revision: Option<String>,
}

/// `ResponseHeader`. Every answer has one; its revision is the store's after the request.
#[derive(Deserialize, Debug, Clone, Copy)]
pub(crate) struct Header {
    #[serde(deserialize_with = "de_i64", default)]
    pub(crate) revision: i64,
}

/// `KeyValue`.
#[derive(Deserialize, Debug)]
pub(crate) struct KeyValue {
    #[serde(deserialize_with = "de_b64")]
    pub(crate) key: Vec<u8>,
    #[serde(deserialize_with = "de_b64", default)]
    pub(crate) value: Vec<u8>,
    #[serde(deserialize_with = "de_i64", default, alias = "modRevision")]
    pub(crate) mod_revision: i64,
}

/// `RangeResponse`.
#[derive(Deserialize, Debug)]
pub(crate) struct RangeResponse {
    pub(crate) header: Option<Header>,
    #[serde(default)]
    pub(crate) kvs: Vec<KeyValue>,
    #[serde(default)]
    pub(crate) more: bool,
}

/// One `Compare` of a transaction.
#[derive(Serialize, Debug)]
pub(crate) struct Compare {
    pub(crate) key: String,
    pub(crate) result: &'static str,
    pub(crate) target: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) create_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mod_revision: Option<String>,
}

impl Compare {
    /// The key does not exist (its create revision is 0).
    pub(crate) fn absent(key: &str) -> Self {
        Self {
            key: b64(key.as_bytes()),
            result: "EQUAL",
            target: "CREATE",
            create_revision: Some("0".into()),
            mod_revision: None,
        }
    }

    /// The key was last written at `revision`.
    pub(crate) fn modified_at(key: &str, revision: i64) -> Self {
        Self {
            key: b64(key.as_bytes()),
            result: "EQUAL",
            target: "MOD",
            create_revision: None,
            mod_revision: Some(revision.to_string()),
        }
    }
}

/// One `RequestOp` of a transaction.
#[derive(Serialize, Debug)]
pub(crate) enum RequestOp {
    #[serde(rename = "request_put")]
    Put { key: String, value: String },
    #[serde(rename = "request_delete_range")]
    Delete { key: String },
}

/// `TxnRequest` with only a success branch.
#[derive(Serialize, Debug)]
pub(crate) struct TxnRequest {
    pub(crate) compare: Vec<Compare>,
    pub(crate) success: Vec<RequestOp>,
}

/// `TxnResponse`.
#[derive(Deserialize, Debug)]
pub(crate) struct TxnResponse {
    pub(crate) header: Option<Header>,
    #[serde(default)]
    pub(crate) succeeded: bool,
}

/// `AuthenticateRequest`.
#[derive(Serialize, Debug)]
pub(crate) struct AuthenticateRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) password: &'a str,
}

/// `AuthenticateResponse`.
#[derive(Deserialize, Debug)]
pub(crate) struct AuthenticateResponse {
    pub(crate) token: String,
}

/// `StatusResponse` (what `connect` reads to see the member answer).
#[derive(Deserialize, Debug)]
pub(crate) struct StatusResponse {
    pub(crate) header: Option<Header>,
    #[serde(default)]
    pub(crate) version: String,
}

/// The gateway's error body: a gRPC status code and message.
#[derive(Deserialize, Debug, Default)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) code: i32,
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_as_etcd_3_4_prints_them() {
        // Captured from etcd 3.4.23's gateway (`curl .../v3/kv/range`).
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(r.header.unwrap().revision, 2);
        assert_eq!(r.kvs[0].key, b"/a");
        assert_eq!(r.kvs[0].value, b"hello");
        assert_eq!(r.kvs[0].mod_revision, 2);
        assert!(!r.more);
        // Absent key: no `kvs`; failed compare: no `succeeded`.
        let r: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(r.kvs.is_empty());
        let t: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(!t.succeeded);
        // A key written with an empty value has no `value`.
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"3"},"kvs":[{"key":"L2E=","mod_revision":"3"}],"more":true}"#,
        )
        .unwrap();
        assert!(r.kvs[0].value.is_empty() && r.more);
    }

    #[test]
    fn requests_use_the_gateways_names() {
        let t = TxnRequest {
            compare: vec![Compare::modified_at("/k", 5), Compare::absent("/n")],
            success: vec![RequestOp::Put {
                key: b64(b"/k"),
                value: b64(b"v"),
            }],
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"compare":[{"key":"L2s=","result":"EQUAL","target":"MOD","mod_revision":"5"},{"key":"L24=","result":"EQUAL","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"L2s=","value":"dg=="}}]}"#
        );
    }
}
