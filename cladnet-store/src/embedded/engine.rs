//! The embedded store's data model on redb: tables, snapshot reads and the write path.
//!
//! Tables:
//! - `kv`: key → record (see [`codec`](super::codec)).
//! - `meta`: `format_version`, `revision` (current store revision), `compacted` (oldest
//!   revision still in the history), `next_lease`.
//! - `history`: (revision, index within the revision) → event, for watches from a revision.
//! - `leases`: lease id → TTL in seconds.
//! - `lease_keys`: (lease id, key) → (), the keys attached to each lease.
//!
//! Every write runs in one redb write transaction that also appends its events to `history`
//! and bumps `revision`, so data, revision counter and history are always consistent on disk.

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::codec::{decode_event, decode_kv, encode_event, encode_kv};
use crate::error::{Error, Op, key_target, lease_target, revision_target};
use crate::txn::{Txn, TxnOp, TxnOpResult, TxnResult};
use crate::types::{KeyValue, LeaseId, RangeResult, Revision, WatchEvent};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const HISTORY: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("history");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");

const FORMAT_VERSION: i64 = 1;
const M_FORMAT: &str = "format_version";
const M_REVISION: &str = "revision";
const M_COMPACTED: &str = "compacted";
const M_NEXT_LEASE: &str = "next_lease";

/// A fresh store starts at revision 1, as etcd does; the first write creates revision 2.
const INITIAL_REVISION: Revision = 1;

/// Why an engine operation failed; turned into an [`Error`] with the operation's context by
/// [`Fail::into_error`].
#[derive(Debug)]
pub(super) enum Fail {
    /// redb failed.
    Db(redb::Error),
    /// A stored record could not be decoded.
    Corrupt(String),
    /// A store-level error (compacted, lease not found, invalid argument, ...).
    Store(Error),
}

macro_rules! fail_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
fail_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl Fail {
    /// Adds what was attempted on what, and which store.
    pub(super) fn into_error(self, op: Op, target: String, backend: &str) -> Error {
        match self {
            Self::Db(e) => Error::Backend {
                op,
                target,
                backend: backend.to_owned(),
                source: Box::new(e),
            },
            Self::Corrupt(reason) => Error::Corrupt {
                op,
                target,
                backend: backend.to_owned(),
                reason,
            },
            Self::Store(e) => e,
        }
    }
}

/// Creates missing tables and meta entries, and checks the file's format version.
pub(super) fn init(db: &Database) -> Result<(), Fail> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let format = meta.get(M_FORMAT)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(M_FORMAT, FORMAT_VERSION)?;
                meta.insert(M_REVISION, INITIAL_REVISION)?;
                meta.insert(M_COMPACTED, 0)?;
                meta.insert(M_NEXT_LEASE, 1)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(Fail::Corrupt(format!(
                    "file format version {other}, this build reads version {FORMAT_VERSION}"
                )));
            }
        }
        txn.open_table(KV)?;
        txn.open_table(HISTORY)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
    }
    txn.commit()?;
    Ok(())
}

fn meta_value(meta: &impl ReadableTable<&'static str, i64>, name: &str) -> Result<i64, Fail> {
    meta.get(name)?
        .map(|v| v.value())
        .ok_or_else(|| Fail::Corrupt(format!("meta entry {name:?} is missing")))
}

fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue, Fail> {
    decode_kv(key, bytes).map_err(Fail::Corrupt)
}

fn get_kv(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, Fail> {
    match kv.get(key)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn scan_prefix(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>, Fail> {
    let mut out = Vec::new();
    for entry in kv.range::<&str>(prefix..)? {
        let (k, v) = entry?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push(decode(key, v.value())?);
    }
    Ok(out)
}

/// Reads one key and the revision of the snapshot.
pub(super) fn get(db: &Database, key: &str) -> Result<(Option<KeyValue>, Revision), Fail> {
    let txn = db.begin_read()?;
    let revision = meta_value(&txn.open_table(META)?, M_REVISION)?;
    let kv = get_kv(&txn.open_table(KV)?, key)?;
    Ok((kv, revision))
}

/// Reads a prefix and the revision of the snapshot.
pub(super) fn range(db: &Database, prefix: &str) -> Result<RangeResult, Fail> {
    let txn = db.begin_read()?;
    let revision = meta_value(&txn.open_table(META)?, M_REVISION)?;
    let kvs = scan_prefix(&txn.open_table(KV)?, prefix)?;
    Ok(RangeResult { kvs, revision })
}

/// All leases in the file, with their TTL in seconds.
pub(super) fn leases(db: &Database) -> Result<Vec<(LeaseId, i64)>, Fail> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LEASES)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (id, ttl) = entry?;
        out.push((id.value(), ttl.value()));
    }
    Ok(out)
}

/// A slice of the event history, read from one snapshot.
#[derive(Debug)]
pub(super) struct HistoryChunk {
    /// The events under the prefix, in revision order.
    pub(super) events: Vec<WatchEvent>,
    /// The revision to continue from.
    pub(super) next: Revision,
    /// Whether the chunk reached the end of the history of its snapshot.
    pub(super) complete: bool,
}

/// Reads the history under `prefix` from revision `from` (`None`: nothing, just report
/// `current + 1`), scanning about `limit` entries; a chunk never splits a revision.
pub(super) fn history(
    db: &Database,
    prefix: &str,
    from: Option<Revision>,
    limit: usize,
) -> Result<HistoryChunk, Fail> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let current = meta_value(&meta, M_REVISION)?;
    let Some(from) = from else {
        return Ok(HistoryChunk {
            events: Vec::new(),
            next: current + 1,
            complete: true,
        });
    };
    let compacted = meta_value(&meta, M_COMPACTED)?;
    if from < compacted {
        return Err(Fail::Store(Error::Compacted {
            requested: from,
            compacted,
        }));
    }
    let table = txn.open_table(HISTORY)?;
    let mut events = Vec::new();
    let mut last = None;
    for (scanned, entry) in table.range((from, 0u32)..)?.enumerate() {
        let (k, v) = entry?;
        let (rev, _) = k.value();
        if scanned >= limit && last != Some(rev) {
            return Ok(HistoryChunk {
                events,
                next: rev,
                complete: false,
            });
        }
        last = Some(rev);
        let event = decode_event(rev, v.value()).map_err(Fail::Corrupt)?;
        if event.key().starts_with(prefix) {
            events.push(event);
        }
    }
    Ok(HistoryChunk {
        events,
        next: from.max(current + 1),
        complete: true,
    })
}

/// The events one committed write produced.
#[derive(Debug)]
pub(super) struct Committed {
    /// The new store revision.
    pub(super) revision: Revision,
    /// Its events, in the order they were made.
    pub(super) events: Vec<WatchEvent>,
}

/// Runs `f` in one write transaction and commits it if it changed anything. `retention` is
/// the number of revisions of history to keep (0: unbounded).
///
/// The caller serializes writes and publishes the returned events in commit order.
pub(super) fn write<T>(
    db: &Database,
    op: Op,
    retention: u64,
    f: impl FnOnce(&mut Writer<'_>) -> Result<T, Fail>,
) -> Result<(T, Option<Committed>), Fail> {
    let txn = db.begin_write()?;
    let (out, committed, dirty) = {
        let mut w = Writer::open(&txn, op)?;
        let out = f(&mut w)?;
        let committed = w.finish(retention)?;
        (out, committed, w.dirty)
    };
    if dirty {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok((out, committed))
}

/// The tables of one write transaction, and the events it made so far.
pub(super) struct Writer<'t> {
    op: Op,
    kv: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, i64>,
    history: Table<'t, (i64, u32), &'static [u8]>,
    leases: Table<'t, i64, i64>,
    lease_keys: Table<'t, (i64, &'static str), ()>,
    /// The store revision before this transaction.
    revision: Revision,
    compacted: Revision,
    events: Vec<WatchEvent>,
    dirty: bool,
}

impl<'t> Writer<'t> {
    fn open(txn: &'t WriteTransaction, op: Op) -> Result<Self, Fail> {
        let meta = txn.open_table(META)?;
        let revision = meta_value(&meta, M_REVISION)?;
        let compacted = meta_value(&meta, M_COMPACTED)?;
        Ok(Self {
            op,
            kv: txn.open_table(KV)?,
            meta,
            history: txn.open_table(HISTORY)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            revision,
            compacted,
            events: Vec::new(),
            dirty: false,
        })
    }

    /// The revision this transaction's writes get.
    fn write_revision(&self) -> Revision {
        self.revision + 1
    }

    /// The store revision as seen after the writes made so far.
    fn visible_revision(&self) -> Revision {
        if self.events.is_empty() {
            self.revision
        } else {
            self.write_revision()
        }
    }

    /// Reads one key, seeing this transaction's earlier writes.
    pub(super) fn get(&self, key: &str) -> Result<Option<KeyValue>, Fail> {
        get_kv(&self.kv, key)
    }

    /// Reads a prefix, seeing this transaction's earlier writes.
    pub(super) fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, Fail> {
        scan_prefix(&self.kv, prefix)
    }

    /// Writes a key.
    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), Fail> {
        if let Some(id) = lease
            && self.leases.get(id)?.is_none()
        {
            return Err(Fail::Store(Error::LeaseNotFound {
                op: self.op,
                target: key_target(key),
                lease: id,
            }));
        }
        let prev = self.get(key)?;
        let rev = self.write_revision();
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        let prev_lease = prev.and_then(|p| p.lease);
        if prev_lease != lease {
            if let Some(old) = prev_lease {
                self.lease_keys.remove((old, key))?;
            }
            if let Some(new) = lease {
                self.lease_keys.insert((new, key), ())?;
            }
        }
        self.kv.insert(key, encode_kv(&kv).as_slice())?;
        self.events.push(WatchEvent::Put(kv));
        self.dirty = true;
        Ok(())
    }

    /// Deletes a key; returns how many keys were deleted (0 or 1).
    pub(super) fn delete(&mut self, key: &str) -> Result<u64, Fail> {
        let prev = match self.kv.remove(key)? {
            Some(v) => decode(key, v.value())?,
            None => return Ok(0),
        };
        if let Some(lease) = prev.lease {
            self.lease_keys.remove((lease, key))?;
        }
        self.events.push(WatchEvent::Delete {
            key: key.to_owned(),
            revision: self.write_revision(),
        });
        self.dirty = true;
        Ok(1)
    }

    /// Deletes every key under a prefix.
    pub(super) fn delete_prefix(&mut self, prefix: &str) -> Result<u64, Fail> {
        let keys: Vec<String> = self.range(prefix)?.into_iter().map(|kv| kv.key).collect();
        let mut deleted = 0;
        for key in keys {
            deleted += self.delete(&key)?;
        }
        Ok(deleted)
    }

    /// Evaluates the compares and runs the branch they select.
    pub(super) fn txn(&mut self, txn: Txn) -> Result<TxnResult, Fail> {
        txn.validate().map_err(Fail::Store)?;
        let mut succeeded = true;
        for c in &txn.compares {
            if !c.holds(self.get(&c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Get { key } => TxnOpResult::Get(self.get(&key)?),
                TxnOp::Range { prefix } => TxnOpResult::Range(self.range(&prefix)?),
                TxnOp::Put { key, value, lease } => {
                    self.put(&key, value, lease)?;
                    TxnOpResult::Put
                }
                TxnOp::Delete { key } => TxnOpResult::Delete {
                    deleted: self.delete(&key)?,
                },
                TxnOp::DeletePrefix { prefix } => TxnOpResult::Delete {
                    deleted: self.delete_prefix(&prefix)?,
                },
            });
        }
        Ok(TxnResult {
            succeeded,
            revision: self.visible_revision(),
            results,
        })
    }

    /// The revision as seen after this transaction.
    pub(super) fn revision(&self) -> Revision {
        self.visible_revision()
    }

    /// Drops history before `revision` (explicit compaction).
    pub(super) fn compact(&mut self, revision: Revision) -> Result<(), Fail> {
        if revision > self.revision {
            return Err(Fail::Store(Error::FutureRevision {
                op: Op::Compact,
                requested: revision,
                current: self.revision,
            }));
        }
        self.compact_history(revision)
    }

    fn compact_history(&mut self, revision: Revision) -> Result<(), Fail> {
        if revision <= self.compacted {
            return Ok(());
        }
        self.history.retain_in(..(revision, 0u32), |_, _| false)?;
        self.meta.insert(M_COMPACTED, revision)?;
        tracing::debug!(revision, "embedded store: history compacted");
        self.compacted = revision;
        self.dirty = true;
        Ok(())
    }

    /// Records a new lease; returns its id.
    pub(super) fn grant_lease(&mut self, ttl_secs: i64) -> Result<LeaseId, Fail> {
        let id = meta_value(&self.meta, M_NEXT_LEASE)?;
        self.meta.insert(M_NEXT_LEASE, id + 1)?;
        self.leases.insert(id, ttl_secs)?;
        self.dirty = true;
        Ok(id)
    }

    /// Deletes a lease and every key attached to it (in this transaction's revision).
    /// Returns `false` if the lease does not exist.
    pub(super) fn revoke_lease(&mut self, id: LeaseId) -> Result<bool, Fail> {
        if self.leases.remove(id)?.is_none() {
            return Ok(false);
        }
        self.dirty = true;
        let mut keys = Vec::new();
        for entry in self.lease_keys.range((id, "")..)? {
            let (k, _) = entry?;
            let (lease, key) = k.value();
            if lease != id {
                break;
            }
            keys.push(key.to_owned());
        }
        for key in &keys {
            self.delete(key)?;
        }
        tracing::debug!(
            lease = id,
            keys = keys.len(),
            "embedded store: lease removed"
        );
        Ok(true)
    }

    /// Appends the events to the history, bumps the revision and applies the retention.
    fn finish(&mut self, retention: u64) -> Result<Option<Committed>, Fail> {
        if self.events.is_empty() {
            return Ok(None);
        }
        let revision = self.write_revision();
        for (i, event) in self.events.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| {
                Fail::Store(Error::InvalidArgument {
                    op: self.op,
                    target: revision_target(revision),
                    reason: "too many changes in one revision".into(),
                })
            })?;
            self.history
                .insert((revision, index), encode_event(event).as_slice())?;
        }
        self.meta.insert(M_REVISION, revision)?;
        self.revision = revision;
        if retention > 0 {
            let keep = i64::try_from(retention).unwrap_or(i64::MAX);
            let keep_from = revision.saturating_sub(keep) + 1;
            // Compact in steps of an eighth of the retention, not on every write.
            let step = (keep / 8).max(1);
            if keep_from - self.compacted >= step {
                self.compact_history(keep_from)?;
            }
        }
        Ok(Some(Committed {
            revision,
            events: std::mem::take(&mut self.events),
        }))
    }
}

/// Describes a lease for errors of this module's callers.
pub(super) fn lease_error(op: Op, id: LeaseId) -> Fail {
    Fail::Store(Error::LeaseNotFound {
        op,
        target: lease_target(id),
        lease: id,
    })
}
