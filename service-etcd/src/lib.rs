//! The Service registry's [`Store`] on etcd v3, the way the API server keeps its
//! allocators: one key per allocator and per Service, every write a transaction that
//! compares the key's `mod_revision` (or its absence) and puts only if it matches.
//!
//! ```text
//! Registry ──Store (sync)──► EtcdStore ──job──► worker thread (tokio, current-thread)
//!                                                   └─ etcd-client (gRPC) ─► etcd
//! ```
//!
//! [`EtcdStore`] is synchronous, like the registry: each call hands its request to a
//! private worker thread that runs the gRPC client, and waits for the answer (bounded by
//! a timeout). It can therefore be used from any thread, including one that belongs to
//! somebody else's async runtime (where it blocks that thread for the round trip; use
//! `spawn_blocking` there).
//!
//! A write whose answer is lost (timeout, connection reset) may or may not have happened;
//! the registry then keeps what it allocated rather than risk handing it out twice, and
//! its repair pass frees whatever really leaked.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use service_core::registry::{Precondition, Store, StoreError, Versioned};

/// Connection settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Timeout of each request.
    pub request_timeout: Duration,
    /// Timeout of the initial connection.
    pub connect_timeout: Duration,
    /// Keys per page when listing.
    pub page_size: i64,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            page_size: 500,
        }
    }
}

/// A [`Store`] on an etcd v3 cluster.
pub struct EtcdStore {
    client: Client,
    handle: tokio::runtime::Handle,
    options: EtcdOptions,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn etcd_error(what: &str, e: etcd_client::Error) -> StoreError {
    StoreError::with_source(format!("etcd {what}: {e}"), e)
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
    /// Connects to `endpoints` (`http://127.0.0.1:2379`, ...).
    ///
    /// # Errors
    /// The worker thread cannot start or the connection fails.
    pub fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::with_source("etcd worker runtime", e))?;
        let handle = runtime.handle().clone();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("service-etcd".into())
            .spawn(move || {
                // Spawned requests run while this waits for the shutdown signal.
                let _ = runtime.block_on(stop);
            })
            .map_err(|e| StoreError::with_source("etcd worker thread", e))?;
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let endpoints = endpoints.to_vec();
        let client = run_on(&handle, options.connect_timeout * 2, async move {
            Client::connect(endpoints, Some(connect)).await
        })
        .map_err(|e| e.prefixed("connecting"))?;
        Ok(Self {
            client,
            handle,
            options,
            shutdown: Some(shutdown),
            worker: Some(worker),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        run_on(&self.handle, self.options.request_timeout, fut).map_err(|e| e.prefixed(what))
    }
}

/// A failed request, before it is worded as a [`StoreError`].
enum RunError {
    Etcd(etcd_client::Error),
    Timeout(Duration),
    Stopped,
}

impl RunError {
    fn prefixed(self, what: &str) -> StoreError {
        match self {
            Self::Etcd(e) => etcd_error(what, e),
            Self::Timeout(t) => StoreError::new(format!("etcd {what}: no answer within {t:?}")),
            Self::Stopped => StoreError::new(format!("etcd {what}: the client worker has stopped")),
        }
    }
}

fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, RunError> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let result = tokio::time::timeout(timeout, fut).await;
        let _ = tx.send(result);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(RunError::Etcd(e)),
        Ok(Err(_)) => Err(RunError::Timeout(timeout)),
        Err(_) => Err(RunError::Stopped),
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut client = self.client.clone();
        let key = key.to_owned();
        let resp = self.run("get", async move { client.get(key, None).await })?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| Versioned::new(kv.value().to_vec(), revision(kv.mod_revision()))))
    }

    fn put(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
    ) -> Result<Option<u64>, StoreError> {
        let compare = match precondition {
            Precondition::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
            Precondition::Version(v) => {
                Compare::mod_revision(key, CompareOp::Equal, i64::try_from(v).unwrap_or(i64::MAX))
            }
            // A future precondition this store does not know must not write blindly.
            #[allow(unreachable_patterns)]
            _ => return Err(StoreError::new("unsupported precondition")),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let mut client = self.client.clone();
        let resp = self.run("put", async move { client.txn(txn).await })?;
        if !resp.succeeded() {
            return Ok(None);
        }
        // The transaction's revision is the key's new mod_revision.
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok(Some(revision(rev)))
    }

    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                i64::try_from(version).unwrap_or(i64::MAX),
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut client = self.client.clone();
        let resp = self.run("delete", async move { client.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        // Every page at the revision of the first, so the list is one consistent view.
        let mut at_revision = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.options.page_size);
            if at_revision > 0 {
                opts = opts.with_revision(at_revision);
            }
            let mut client = self.client.clone();
            let key = from.clone();
            let resp = self.run("list", async move { client.get(key, Some(opts)).await })?;
            if at_revision == 0 {
                at_revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                out.push((
                    key,
                    Versioned::new(kv.value().to_vec(), revision(kv.mod_revision())),
                ));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
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
