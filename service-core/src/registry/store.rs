//! Where the registry keeps Services and allocator state: any key-value store with
//! compare-and-swap on a per-key version (etcd's `mod_revision`, a database row version,
//! or [`MemoryStore`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A stored value and its version. Versions only grow: every write gets a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versioned {
    /// The bytes.
    pub value: Vec<u8>,
    /// The version of this write.
    pub version: u64,
}

impl Versioned {
    /// A value at a version.
    pub fn new(value: Vec<u8>, version: u64) -> Self {
        Self { value, version }
    }
}

/// What must hold for a write to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precondition {
    /// The key does not exist.
    Absent,
    /// The key exists at exactly this version.
    Version(u64),
}

/// The store could not be reached or failed; the operation may or may not have happened
/// only where the store itself cannot tell (a timeout after sending a write).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            source: None,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// A versioned key-value store with compare-and-swap writes.
pub trait Store {
    /// The value of `key`, if any.
    ///
    /// # Errors
    /// The store failed.
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` if `precondition` holds; returns the new version, or `None` when the
    /// precondition did not hold (nothing was written).
    ///
    /// # Errors
    /// The store failed.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
    ) -> Result<Option<u64>, StoreError>;

    /// Deletes `key` if it is at `version`; false when it was not (nothing was deleted).
    ///
    /// # Errors
    /// The store failed.
    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError>;

    /// Every key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// The store failed.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Waits `delay` before the registry tries a compare-and-swap again after losing a race
    /// for a key (the registry picks the delay: exponential, with jitter, see
    /// [`Retry`](super::Retry)). A store shared over a network sleeps here, so that replicas
    /// contending for an allocator spread out; the default returns at once (right for
    /// [`MemoryStore`], whose winner has already finished by the time the loser sees it).
    fn pause(&self, delay: Duration) {
        let _ = delay;
    }
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
                (**self).get(key)
            }
            fn put(&self, key: &str, value: &[u8], p: Precondition) -> Result<Option<u64>, StoreError> {
                (**self).put(key, value, p)
            }
            fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
                (**self).delete(key, version)
            }
            fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
                (**self).list(prefix)
            }
            fn pause(&self, delay: Duration) {
                (**self).pause(delay)
            }
        }
    )*};
}

forward_store!(&S, Box<S>, Arc<S>);

/// A store in memory, shareable between registries (wrap it in an `Arc`): the default for
/// a single process, and the model the etcd store is tested against.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<String, Versioned>,
    revision: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry: every
        // mutation is a single map operation.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().map.get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8], p: Precondition) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        let current = inner.map.get(key).map(|v| v.version);
        let ok = match p {
            Precondition::Absent => current.is_none(),
            Precondition::Version(v) => current == Some(v),
        };
        if !ok {
            return Ok(None);
        }
        inner.revision += 1;
        let version = inner.revision;
        inner
            .map
            .insert(key.to_owned(), Versioned::new(value.to_vec(), version));
        Ok(Some(version))
    }

    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.map.get(key).map(|v| v.version) != Some(version) {
            return Ok(false);
        }
        inner.map.remove(key);
        inner.revision += 1;
        Ok(true)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap() {
        let s = MemoryStore::new();
        assert_eq!(s.put("a", b"1", Precondition::Version(1)).unwrap(), None);
        let v1 = s.put("a", b"1", Precondition::Absent).unwrap().unwrap();
        assert_eq!(s.put("a", b"2", Precondition::Absent).unwrap(), None);
        let v2 = s
            .put("a", b"2", Precondition::Version(v1))
            .unwrap()
            .unwrap();
        assert!(v2 > v1);
        assert_eq!(s.put("a", b"3", Precondition::Version(v1)).unwrap(), None);
        assert_eq!(s.get("a").unwrap().unwrap().value, b"2");
        assert!(!s.delete("a", v1).unwrap());
        assert!(s.delete("a", v2).unwrap());
        assert_eq!(s.get("a").unwrap(), None);
    }

    #[test]
    fn list_by_prefix() {
        let s = MemoryStore::new();
        for k in ["/a/1", "/a/2", "/b/1", "/a"] {
            s.put(k, b"", Precondition::Absent).unwrap();
        }
        let keys: Vec<String> = s.list("/a/").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["/a/1", "/a/2"]);
    }
}
