//! The embedded backend: a single-node store in one redb file.
//!
//! - Data, the revision counter, the event history (bounded by
//!   [`EmbeddedOptions::history_retention`]) and the leases are written in one redb
//!   transaction per change, committed durably (fsync) before the call returns.
//! - Writes are serialized; after each commit its events are published in-process to the
//!   live watchers (a Tokio broadcast channel). A watcher first subscribes, then replays the
//!   history from its start revision, then follows the live events, skipping revisions it
//!   already replayed: no gap, no duplicate. A watcher that falls too far behind the live
//!   channel goes back to the history transparently.
//! - Leases (id, TTL, attached keys) are stored in the file; their deadlines are kept in
//!   memory and checked by a background task every
//!   [`EmbeddedOptions::lease_check_interval`]. When the file is opened, every lease found in
//!   it restarts its full TTL, as etcd does when a new leader takes over: a client that is
//!   still alive keeps it, and the keys of a client that is gone are deleted (with watch
//!   events) one TTL after the restart, never left behind.

mod codec;
mod engine;
mod lease;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redb::Database;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use self::engine::{Committed, Fail, Writer};
use self::lease::LeaseClock;
use crate::error::{
    Error, Op, Result, check_key, check_start_revision, key_target, lease_target, prefix_target,
    revision_target,
};
use crate::txn::{Txn, TxnOpResult, TxnResult};
use crate::types::{DeleteResult, KeyValue, LeaseId, RangeResult, Revision, WatchStream};
use crate::{Store, ttl_seconds};

/// How long [`EmbeddedStore::open`] waits for a previous handle of the same file (in this
/// process, e.g. one being dropped) to release it.
const OPEN_RETRY: Duration = Duration::from_secs(2);

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How many of the latest revisions the event history keeps for watches that start in the
    /// past (0: unbounded). Older history is compacted automatically. Default: 50 000.
    pub history_retention: u64,
    /// How many revisions a live watcher may lag behind before it falls back to reading the
    /// history from the file. Default: 1024.
    pub live_buffer: usize,
    /// How often lease deadlines are checked. Default: 100 ms.
    pub lease_check_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_retention: 50_000,
            live_buffer: 1024,
            lease_check_interval: Duration::from_millis(100),
        }
    }
}

/// The embedded single-node store (see the [module docs](self)).
///
/// Dropping the last handle closes the file, stops the lease task and ends the open watches
/// (with [`Error::Closed`]).
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    expiry: AbortHandle,
}

/// State shared by the store handle, its watchers and its lease task.
struct Inner {
    db: Database,
    path: PathBuf,
    /// `embedded store PATH`, for error messages.
    label: String,
    options: EmbeddedOptions,
    /// Serializes commits, so that events are published in revision order.
    write_lock: Mutex<()>,
    events: broadcast::Sender<Arc<Committed>>,
    leases: LeaseClock,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

impl EmbeddedStore {
    /// Opens the store in the redb file at `path`, creating the file (and its parent
    /// directories) if needed.
    ///
    /// Must be called within a Tokio runtime. Fails with [`Error::Open`] if the file is held by
    /// another open store (after waiting briefly for a handle being dropped to release it).
    pub async fn open(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let for_task = path.clone();
        let inner = tokio::task::spawn_blocking(move || Inner::open(for_task, options))
            .await
            .map_err(|e| Error::Open {
                path,
                reason: "open task failed".into(),
                source: Some(Box::new(e)),
            })??;
        let inner = Arc::new(inner);
        let expiry =
            lease::spawn_expiry(Arc::downgrade(&inner), inner.options.lease_check_interval)
                .abort_handle();
        tracing::info!(path = %inner.path.display(), "embedded store opened");
        Ok(Self { inner, expiry })
    }

    /// The redb file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a blocking thread and adds `op` and `target` to its errors.
    async fn run<T: Send + 'static>(
        &self,
        op: Op,
        target: String,
        f: impl FnOnce(&Inner) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(fail)) => Err(fail.into_error(op, target, &self.inner.label)),
            Err(e) => Err(Error::Backend {
                op,
                target,
                backend: self.inner.label.clone(),
                source: Box::new(e),
            }),
        }
    }

    async fn run_txn(&self, op: Op, target: String, txn: Txn) -> Result<TxnResult> {
        self.run(op, target, move |inner| inner.write(op, |w| w.txn(txn)))
            .await
    }
}

impl Inner {
    fn open(path: PathBuf, options: EmbeddedOptions) -> Result<Self> {
        let open_err =
            |reason: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>| Error::Open {
                path: path.clone(),
                reason: reason.to_owned(),
                source,
            };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err("cannot create the parent directory", Some(Box::new(e))))?;
        }
        let started = std::time::Instant::now();
        let db = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_RETRY => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(open_err(
                        "the file is in use by another store handle or process",
                        Some(Box::new(e)),
                    ));
                }
                Err(e) => {
                    return Err(open_err(
                        "cannot open or create the redb file",
                        Some(Box::new(e)),
                    ));
                }
            }
        };
        let label = format!("embedded store {}", path.display());
        let fail = |f: Fail| match f.into_error(Op::Open, "file".into(), &label) {
            Error::Backend { source, .. } => open_err("cannot initialize the file", Some(source)),
            Error::Corrupt { reason, .. } => open_err(&reason, None),
            other => other,
        };
        engine::init(&db).map_err(fail)?;
        let leases = LeaseClock::default();
        let stored = engine::leases(&db).map_err(fail)?;
        for (id, ttl) in &stored {
            leases.start(*id, Duration::from_secs(u64::try_from(*ttl).unwrap_or(1)));
        }
        if !stored.is_empty() {
            tracing::info!(
                path = %path.display(),
                leases = stored.len(),
                "embedded store: leases found in the file restart their full TTL"
            );
        }
        let (events, _) = broadcast::channel(options.live_buffer.max(1));
        Ok(Self {
            db,
            path,
            label,
            options,
            write_lock: Mutex::new(()),
            events,
            leases,
        })
    }

    /// Runs one write transaction, then publishes its events, both under the write lock.
    fn write<T>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        // A panic inside a write leaves no partial state: the redb transaction is dropped
        // (aborted) before anything is published, so a poisoned lock is still usable.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (out, committed) = engine::write(&self.db, op, self.options.history_retention, f)?;
        if let Some(committed) = committed {
            tracing::trace!(revision = committed.revision, events = committed.events.len(), %op, "embedded store: committed");
            // No receiver is not an error: nobody watches.
            let _ = self.events.send(Arc::new(committed));
        }
        Ok(out)
    }

    /// Revokes a lease whose deadline passed, unless it was refreshed meanwhile.
    fn expire_lease(&self, id: LeaseId) {
        let mut taken = None;
        let result = self.write(Op::LeaseExpire, |w| {
            taken = self.leases.take_if_expired(id, tokio::time::Instant::now());
            if taken.is_some() {
                w.revoke_lease(id)?;
            }
            Ok(w.revision())
        });
        match (result, taken) {
            (Ok(revision), Some(_)) => {
                tracing::debug!(lease = id, revision, "embedded store: lease expired");
            }
            (Ok(_), None) => {}
            (Err(fail), taken) => {
                if let Some(ttl) = taken {
                    self.leases.restore_expired(id, ttl);
                }
                let e = fail.into_error(Op::LeaseExpire, lease_target(id), &self.label);
                tracing::error!(error = %e, "embedded store: lease expiry failed, will retry");
            }
        }
    }
}

fn single_result(result: TxnResult) -> DeleteResult {
    let deleted = match result.results.first() {
        Some(TxnOpResult::Delete { deleted }) => *deleted,
        _ => 0,
    };
    DeleteResult {
        deleted,
        revision: result.revision,
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(Op::Get, key)?;
        let k = key.to_owned();
        self.run(Op::Get, key_target(key), move |inner| {
            engine::get(&inner.db, &k)
        })
        .await
        .map(|(kv, _)| kv)
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        let p = prefix.to_owned();
        self.run(Op::Range, prefix_target(prefix), move |inner| {
            engine::range(&inner.db, &p)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        check_key(Op::Put, key)?;
        let k = key.to_owned();
        self.run(Op::Put, key_target(key), move |inner| {
            inner.write(Op::Put, |w| {
                w.put(&k, value, lease)?;
                Ok(w.revision())
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<DeleteResult> {
        check_key(Op::Delete, key)?;
        let txn = Txn::new().and_then([crate::TxnOp::delete(key)]);
        self.run_txn(Op::Delete, key_target(key), txn)
            .await
            .map(single_result)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResult> {
        let txn = Txn::new().and_then([crate::TxnOp::delete_prefix(prefix)]);
        self.run_txn(Op::DeletePrefix, prefix_target(prefix), txn)
            .await
            .map(single_result)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        txn.validate()?;
        let target = match txn.compares.first() {
            Some(c) => format!("on {}", key_target(&c.key)),
            None => "without compares".into(),
        };
        self.run_txn(Op::Txn, target, txn).await
    }

    async fn watch(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream> {
        check_start_revision(prefix, start_revision)?;
        // "From now" must mean the revision current when this call returns, not when the
        // watch task first runs: resolve it here, so that a commit made right after `watch`
        // returns (between a caller's snapshot read and the task's subscription) is replayed
        // from the history instead of being skipped.
        let start = match start_revision {
            Some(rev) => rev,
            None => {
                let p = prefix.to_owned();
                self.run(Op::Watch, prefix_target(prefix), move |inner| {
                    engine::history(&inner.db, &p, None, 0).map(|chunk| chunk.next)
                })
                .await?
            }
        };
        Ok(watch::spawn(&self.inner, prefix.to_owned(), Some(start)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.run(Op::Compact, revision_target(revision), move |inner| {
            inner.write(Op::Compact, |w| w.compact(revision))
        })
        .await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl_seconds(ttl)?;
        self.run(Op::LeaseGrant, format!("ttl {secs}s"), move |inner| {
            let id = inner.write(Op::LeaseGrant, |w| w.grant_lease(secs))?;
            inner
                .leases
                .start(id, Duration::from_secs(secs.unsigned_abs()));
            Ok(id)
        })
        .await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        self.inner.leases.refresh(id).ok_or(Error::LeaseNotFound {
            op: Op::LeaseKeepAlive,
            target: lease_target(id),
            lease: id,
        })
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.run(Op::LeaseRevoke, lease_target(id), move |inner| {
            inner.write(Op::LeaseRevoke, |w| {
                if !w.revoke_lease(id)? {
                    return Err(engine::lease_error(Op::LeaseRevoke, id));
                }
                Ok(())
            })?;
            inner.leases.remove(id);
            Ok(())
        })
        .await
    }
}
