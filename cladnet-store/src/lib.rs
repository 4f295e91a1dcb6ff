//! CLADNet's key-value store abstraction.
//!
//! The controller keeps all of its state in a [`Store`]: an etcd-like key-value store with a
//! single global revision counter, prefix ranges, compare-and-swap transactions, watches that
//! can resume from any revision that was not compacted yet, and leases (keys that vanish when
//! their owner stops refreshing them).
//!
//! Two backends implement the trait and pass one conformance suite (`tests/store/`):
//!
//! - [`embedded::EmbeddedStore`]: a single-node store in one [redb](https://www.redb.org) file,
//!   durable across restarts, with its own event history for watches.
//! - [`etcd::EtcdStore`]: a client of an etcd v3 cluster (etcd 3.4 or newer), for highly
//!   available control planes.
//!
//! Pick one at run time with a [`StoreUrl`] (`embedded:PATH` or `etcd://HOST:PORT,...`) and
//! [`connect`]. The semantics are documented in `docs/store.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cladnet_store::Error> {
//! use cladnet_store::{Compare, StoreUrl, Txn, TxnOp};
//!
//! let url: StoreUrl = "embedded:/var/lib/cladnet/store.redb".parse()?;
//! let store = cladnet_store::connect(&url).await?;
//! let rev = store.put("/cladnet/v1/networks/n1", b"{}".to_vec(), None).await?;
//! // Create-if-absent: succeeds only for the first writer.
//! let res = store
//!     .txn(
//!         Txn::new()
//!             .when([Compare::absent("/cladnet/v1/networks/n1/ipam/10.0.0.2")])
//!             .and_then([TxnOp::put("/cladnet/v1/networks/n1/ipam/10.0.0.2", b"node-a".to_vec())]),
//!     )
//!     .await?;
//! assert!(res.revision >= rev);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod embedded;
mod error;
pub mod etcd;
mod txn;
mod types;
mod url;

use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Op, Result};
pub use txn::{Compare, CompareOp, CompareTarget, MAX_TXN_OPS, Txn, TxnOp, TxnOpResult, TxnResult};
pub use types::{DeleteResult, KeyValue, LeaseId, RangeResult, Revision, WatchEvent, WatchStream};
pub use url::{EtcdEndpoint, StoreUrl};

/// The key-value store the controller keeps its state in.
///
/// Semantics follow etcd's v3 API (see `docs/store.md` for the full contract):
///
/// - Every change of the data creates exactly one new store revision, a global, monotonically
///   increasing `i64`. A [`Txn`] is one change: all its writes share one revision. Operations
///   that change nothing (reads, deleting an absent key, a transaction whose branch only reads)
///   do not create a revision.
/// - Every [`KeyValue`] carries `create_revision`, `mod_revision` and `version` (number of puts
///   since the key was last created).
/// - Keys are non-empty UTF-8 strings; a *prefix* selects every key that starts with it (the
///   empty prefix selects every key). Prefixes are plain byte prefixes: `/a/` does not select
///   `/ab`, but `/a` does.
///
/// The trait is object safe: controllers hold an `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one key. `Ok(None)` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key that starts with `prefix`, sorted by key, together with the store
    /// revision the snapshot was taken at (watch from `revision + 1` to follow it without gap).
    async fn range(&self, prefix: &str) -> Result<RangeResult>;

    /// Writes `value` under `key`, attached to `lease` if given (the key is deleted when the
    /// lease expires or is revoked). Returns the new store revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Deletes one key. Deleting an absent key is not an error and creates no revision.
    async fn delete(&self, key: &str) -> Result<DeleteResult>;

    /// Deletes every key that starts with `prefix`, all in one revision.
    async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResult>;

    /// Runs a transaction atomically: if every compare holds, the `success` operations run,
    /// otherwise the `failure` operations; in order, reads seeing earlier writes of the same
    /// transaction. At most one new revision is created.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// Streams, in revision order, every change of a key under `prefix`: from `start_revision`
    /// (inclusive) if given, else from the revision after the one current when this call
    /// returns: a write committed after `watch` returns is always delivered, however late the
    /// stream is first polled.
    ///
    /// Events of one revision are delivered together, in the order they were made. If
    /// `start_revision` is older than the compacted history, the stream yields one
    /// [`Error::Compacted`] and ends. A consumer that loses its stream resumes without loss or
    /// duplicate by watching again from the revision after the last event it processed.
    async fn watch(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream>;

    /// Discards the event history before `revision`: watches may then start at `revision` or
    /// later only. Compacting at or below the current compaction point does nothing; compacting
    /// past the current revision is an [`Error::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Creates a lease that expires `ttl` after its last keep-alive (rounded up to whole
    /// seconds; etcd may raise very short TTLs to its minimum).
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refreshes a lease and returns its TTL. [`Error::LeaseNotFound`] if it expired or was
    /// revoked.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration>;

    /// Revokes a lease now, deleting every key attached to it in one revision.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;
}

/// Opens the store a [`StoreUrl`] names, with default options.
///
/// `embedded:PATH` opens (creating it if needed) the redb file at `PATH`; `etcd://...`
/// connects to the listed etcd endpoints and checks that at least one of them answers.
///
/// Must be called from within a Tokio runtime (the backends spawn background tasks).
pub async fn connect(url: &StoreUrl) -> Result<Arc<dyn Store>> {
    match url {
        StoreUrl::Embedded { path } => {
            let store =
                embedded::EmbeddedStore::open(path, embedded::EmbeddedOptions::default()).await?;
            Ok(Arc::new(store))
        }
        StoreUrl::Etcd { endpoints } => {
            let store = etcd::EtcdStore::connect(endpoints, etcd::EtcdOptions::default()).await?;
            Ok(Arc::new(store))
        }
    }
}

/// etcd's largest lease TTL, in seconds; both backends reject longer ones.
const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// A lease TTL in whole seconds: rounded up, at least 1.
pub(crate) fn ttl_seconds(ttl: Duration) -> Result<i64> {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .max(1);
    match i64::try_from(secs) {
        Ok(s) if s <= MAX_LEASE_TTL_SECS => Ok(s),
        _ => Err(Error::InvalidArgument {
            op: Op::LeaseGrant,
            target: format!("ttl {ttl:?}"),
            reason: format!("longer than etcd's maximum of {MAX_LEASE_TTL_SECS} s"),
        }),
    }
}

/// The end of the key range selected by `prefix` (etcd's `range_end`): the smallest byte
/// string greater than every string starting with `prefix`. `None` when no such bound exists
/// (empty prefix, or a prefix of only `0xff` bytes): the range is then open-ended.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{prefix_end, ttl_seconds};

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO).unwrap(), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)).unwrap(), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(15)).unwrap(), 15);
        assert!(ttl_seconds(Duration::from_secs(u64::MAX)).is_err());
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
