//! The Service registry's [`Store`] on etcd v3, the way the API server keeps its
//! allocators: one key per allocator and per Service, every write a transaction that
//! compares the key's `mod_revision` (or its absence) and puts only if it matches.
//!
//! ```text
//! Registry ──Store (sync)──► EtcdStore ──JSON over HTTP/1.1 (TLS)──► etcd's gRPC gateway
//!                                         /v3/kv/range, /v3/kv/txn, /v3/auth/authenticate
//! ```
//!
//! [`EtcdStore`] is synchronous, like the registry, and can be used from any thread
//! (inside an async runtime, call it from `spawn_blocking`). It speaks to the gateway that
//! every etcd v3.4+ member serves on its client port, so building it needs no protobuf
//! compiler and no system library: see the README's "etcd" section for why this and not
//! gRPC.
//!
//! - TLS: the cluster's CA, and a client certificate and key when etcd runs with
//!   `--client-cert-auth` ([`EtcdTls`], the `--etcd-cafile`/`--etcd-certfile`/
//!   `--etcd-keyfile` flags of kube-apiserver).
//! - Authentication: a user name and password ([`EtcdAuth`]); the token etcd hands out is
//!   renewed when it expires.
//! - Several endpoints: a request goes to the one that answered last and fails over to the
//!   next while it could not be sent at all.
//!
//! A write whose answer is lost (timeout, connection reset) may or may not have happened;
//! the registry then keeps what it allocated rather than risk handing it out twice, and
//! its repair pass frees whatever really leaked.
//!
//! ```no_run
//! use service_core::registry::{Registry, RegistryConfig};
//! use service_core::random::SeededRandom;
//! use service_etcd::{EtcdOptions, EtcdStore, EtcdTls};
//!
//! let mut options = EtcdOptions::default();
//! options.tls = EtcdTls::from_files(
//!     Some("/etc/etcd/ca.crt".as_ref()),
//!     Some("/etc/etcd/client.crt".as_ref()),
//!     Some("/etc/etcd/client.key".as_ref()),
//! )?;
//! let store = EtcdStore::connect(&["https://10.0.0.1:2379".into()], options)?;
//! let config = RegistryConfig::new(&["10.96.0.0/12".parse()?], "30000-32767".parse()?)?;
//! let registry = Registry::new(config, store, SeededRandom::new(42))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod wire;

use std::path::Path;
use std::time::Duration;

use service_core::registry::{Precondition, Store, StoreError, Versioned};

use crate::client::{CallError, Gateway, Retry};
use crate::wire::{
    Compare, RangeRequest, RangeResponse, RequestOp, StatusResponse, TxnRequest, TxnResponse, b64,
};

/// Connection settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Timeout of each request, from sending it to the end of the answer.
    pub request_timeout: Duration,
    /// Timeout of opening a connection (TCP and TLS handshake) to one endpoint.
    pub connect_timeout: Duration,
    /// Keys per page when listing.
    pub page_size: i64,
    /// TLS settings for `https://` endpoints.
    pub tls: EtcdTls,
    /// User name and password, when etcd has authentication enabled.
    pub auth: Option<EtcdAuth>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            page_size: 500,
            tls: EtcdTls::default(),
            auth: None,
        }
    }
}

/// TLS material for `https://` endpoints, in PEM. Without a CA, the server's certificate
/// must chain to a public (Mozilla) root.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdTls {
    /// The CA bundle that signs etcd's serving certificate (`--etcd-cafile`).
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain (`--etcd-certfile`).
    pub cert_pem: Option<Vec<u8>>,
    /// The client certificate's private key (`--etcd-keyfile`).
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .field("key", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EtcdTls {
    /// Reads the files kube-apiserver's `--etcd-cafile`, `--etcd-certfile` and
    /// `--etcd-keyfile` name. The PEM is checked when connecting.
    ///
    /// # Errors
    /// A file cannot be read (the error names it).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ConnectError> {
        let read = |p: Option<&Path>| -> Result<Option<Vec<u8>>, ConnectError> {
            p.map(|p| {
                std::fs::read(p).map_err(|e| ConnectError::Tls(format!("{}: {e}", p.display())))
            })
            .transpose()
        };
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    fn is_configured(&self) -> bool {
        self.ca_pem.is_some() || self.cert_pem.is_some() || self.key_pem.is_some()
    }
}

/// etcd's user name and password authentication.
#[derive(Clone)]
#[non_exhaustive]
pub struct EtcdAuth {
    /// The user.
    pub username: String,
    /// The password.
    pub password: String,
}

impl EtcdAuth {
    /// Credentials of `username`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why [`EtcdStore::connect`] failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// An endpoint is not an `http://` or `https://` URL, or does not fit the options.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS material cannot be read or used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// etcd refused the credentials.
    #[error("etcd authentication: {0}")]
    Auth(String),
    /// No endpoint answered.
    #[error("etcd: {0}")]
    Unreachable(String),
}

/// A [`Store`] on an etcd v3 cluster.
#[derive(Debug)]
pub struct EtcdStore {
    gateway: Gateway,
    options: EtcdOptions,
}

fn store_error(what: &str, e: CallError) -> StoreError {
    StoreError::new(format!("etcd {what}: {e}"))
}

/// A revision from an answer's header; an answer without one is not etcd's.
fn header_revision(what: &str, header: Option<wire::Header>) -> Result<u64, StoreError> {
    header
        .and_then(|h| u64::try_from(h.revision).ok())
        .filter(|&r| r > 0)
        .ok_or_else(|| StoreError::new(format!("etcd {what}: the answer has no revision header")))
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn revision(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://127.0.0.1:2379`, `https://etcd-0:2379`, ...):
    /// checks that one answers, and authenticates when [`EtcdOptions::auth`] is set.
    ///
    /// # Errors
    /// An endpoint or the TLS material is unusable, no endpoint answers, or etcd refuses
    /// the credentials.
    pub fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, ConnectError> {
        let gateway = Gateway::new(endpoints, &options)?;
        let check = |e: CallError| match e {
            CallError::Etcd { message, .. } if gateway.authenticates() => {
                ConnectError::Auth(message)
            }
            e => ConnectError::Unreachable(e.to_string()),
        };
        // A read proves the member answers and, with auth, that the credentials work.
        let _: RangeResponse = gateway
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: b64(b"\0"),
                    range_end: None,
                    limit: Some("1".into()),
                    revision: None,
                },
                Retry::Idempotent,
            )
            .map_err(check)?;
        Ok(Self { gateway, options })
    }

    /// The etcd server version of the member that answers (`3.4.23`).
    ///
    /// # Errors
    /// The store failed.
    pub fn server_version(&self) -> Result<String, StoreError> {
        let status: StatusResponse = self
            .gateway
            .call(
                "/v3/maintenance/status",
                &serde_json::json!({}),
                Retry::Idempotent,
            )
            .map_err(|e| store_error("status", e))?;
        header_revision("status", status.header)?;
        Ok(status.version)
    }

    fn txn(&self, what: &str, txn: &TxnRequest) -> Result<(bool, u64), StoreError> {
        let resp: TxnResponse = self
            .gateway
            .call("/v3/kv/txn", txn, Retry::Once)
            .map_err(|e| store_error(what, e))?;
        Ok((resp.succeeded, header_revision(what, resp.header)?))
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let resp: RangeResponse = self
            .gateway
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: b64(key.as_bytes()),
                    range_end: None,
                    limit: None,
                    revision: None,
                },
                Retry::Idempotent,
            )
            .map_err(|e| store_error("get", e))?;
        header_revision("get", resp.header)?;
        Ok(resp
            .kvs
            .into_iter()
            .next()
            .map(|kv| Versioned::new(kv.value, revision(kv.mod_revision))))
    }

    fn put(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
    ) -> Result<Option<u64>, StoreError> {
        let compare = match precondition {
            Precondition::Absent => Compare::absent(key),
            Precondition::Version(v) => {
                Compare::modified_at(key, i64::try_from(v).unwrap_or(i64::MAX))
            }
            // A future precondition this store does not know must not write blindly.
            #[allow(unreachable_patterns)]
            _ => return Err(StoreError::new("unsupported precondition")),
        };
        let txn = TxnRequest {
            compare: vec![compare],
            success: vec![RequestOp::Put {
                key: b64(key.as_bytes()),
                value: b64(value),
            }],
        };
        // The transaction's revision is the key's new mod_revision.
        let (succeeded, rev) = self.txn("put", &txn)?;
        Ok(succeeded.then_some(rev))
    }

    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
        let txn = TxnRequest {
            compare: vec![Compare::modified_at(
                key,
                i64::try_from(version).unwrap_or(i64::MAX),
            )],
            success: vec![RequestOp::Delete {
                key: b64(key.as_bytes()),
            }],
        };
        Ok(self.txn("delete", &txn)?.0)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let end = b64(&prefix_end(prefix.as_bytes()));
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        // Every page at the revision of the first, so the list is one consistent view.
        let mut at_revision = None;
        loop {
            let resp: RangeResponse = self
                .gateway
                .call(
                    "/v3/kv/range",
                    &RangeRequest {
                        key: b64(&from),
                        range_end: Some(end.clone()),
                        limit: Some(self.options.page_size.to_string()),
                        revision: at_revision.map(|r: u64| r.to_string()),
                    },
                    Retry::Idempotent,
                )
                .map_err(|e| store_error("list", e))?;
            let rev = header_revision("list", resp.header)?;
            at_revision.get_or_insert(rev);
            let more = resp.more;
            let mut last = None;
            for kv in resp.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                out.push((key, Versioned::new(kv.value, revision(kv.mod_revision))));
                last = Some(kv.key);
            }
            match last {
                Some(mut last) if more => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Sleeps: replicas that lost a compare-and-swap race spread out.
    fn pause(&self, delay: Duration) {
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
