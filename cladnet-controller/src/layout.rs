//! The store's key layout version, checked (and an old layout migrated) at controller start.
//!
//! The key `/cladnet/v1/layout` holds the version of the layout the store is in ([`LAYOUT`]).
//! [`ensure`] runs before a controller serves anything:
//!
//! * marker = this version: nothing to do;
//! * no marker and no key of the old layout: a fresh store; the marker is written;
//! * no marker, keys of layout 1 (everything of a network under `/cladnet/v1/networks/{net}`,
//!   sessions in keys of their own): migrated. Every key is copied to its new place (session
//!   hashes into their peer records) in transactions of at most [`CHUNK`] writes, each
//!   refused once a marker exists (so a copy never overwrites what a controller that finished
//!   the migration already serves). One transaction then commits the migration: it writes the
//!   marker, reads the old keys and deletes them. Keys an old controller changed while the
//!   copy ran (there should be none: stop old controllers before upgrading) are copied again
//!   from what that transaction read, so nothing is lost. Until the commit the old keys are
//!   untouched and the new ones unused (no controller of this version serves before the
//!   marker exists), so a migration cut off halfway is simply run again by the next start;
//! * any other marker (a newer controller wrote it): refused, naming the versions.
//!
//! Layout 1 → 2 (docs/store.md, "Key layout"; docs/operations.md, "Upgrades"):
//!
//! ```text
//! /cladnet/v1/networks/{net}                     → /cladnet/v1/watched/{net}/network
//! /cladnet/v1/networks/{net}/peers/{node}        → /cladnet/v1/watched/{net}/peers/{node}
//!                                                  (+ "session_sha256" from sessions/{node})
//! /cladnet/v1/networks/{net}/commands/{node}     → /cladnet/v1/watched/{net}/commands/{node}
//! /cladnet/v1/networks/{net}/tests/{id}          → /cladnet/v1/watched/{net}/tests/{id}
//! /cladnet/v1/networks/{net}/sessions/{node}     → (into the peer record)
//! /cladnet/v1/networks/{net}/{ipam/..., ipam-generation, routes-generation, pubkeys/...,
//!                            tokens/..., results/...} → /cladnet/v1/internal/{net}/...
//! ```

use std::collections::BTreeMap;

use cladnet_store::{Compare, KeyValue, Revision, Store, Txn, TxnOp, TxnOpResult};
use tracing::{info, warn};

use crate::keys::{self, LAYOUT};

/// Where layout 1 kept everything of every network.
pub const OLD_ROOT: &str = "/cladnet/v1/networks/";

/// Writes per copy transaction (the store refuses more than 128 operations per branch).
pub const CHUNK: usize = 100;

/// What [`ensure`] found.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// The store already has this layout.
    Current,
    /// A fresh store: the marker was written.
    Fresh,
    /// An old layout was migrated; the number of old keys.
    Migrated(usize),
}

/// Why the store's layout cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The store could not be read or written.
    #[error("store layout: {0}")]
    Store(#[from] cladnet_store::Error),
    /// The store answered with the wrong results.
    #[error("store layout: {0}")]
    Answer(String),
    /// The marker names a layout this controller does not know.
    #[error(
        "store layout: {key} says layout {found:?}, this controller writes layout {LAYOUT}: the \
         store was written by a newer controller; run that version (or newer), or restore a \
         backup taken before it ran"
    )]
    Unknown {
        /// The marker key.
        key: &'static str,
        /// Its value.
        found: String,
    },
    /// A key of the old layout that the migration does not know.
    #[error(
        "store layout: cannot migrate key {key:?} of layout 1 ({reason}); nothing was changed: \
         remove or fix the key (etcdctl del) and start the controller again"
    )]
    UnknownKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks the store's key layout and migrates an old one (see the module documentation).
/// Run it before serving; several controllers may run it at once.
pub async fn ensure(store: &dyn Store) -> Result<Outcome, LayoutError> {
    loop {
        if let Some(kv) = store.get(keys::layout()).await? {
            return match std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(LAYOUT) => Ok(Outcome::Current),
                _ => Err(LayoutError::Unknown {
                    key: keys::layout(),
                    found: String::from_utf8_lossy(&kv.value).into_owned(),
                }),
            };
        }
        let old = store.range(OLD_ROOT).await?;
        if old.kvs.is_empty() {
            let res = store
                .txn(
                    Txn::new()
                        .when([Compare::absent(keys::layout())])
                        .and_then([TxnOp::put(keys::layout(), LAYOUT.to_string().into_bytes())]),
                )
                .await?;
            if res.succeeded {
                info!(layout = LAYOUT, "fresh store: layout marker written");
                return Ok(Outcome::Fresh);
            }
            continue;
        }
        let copied = migrate_keys(&old.kvs, true)?;
        info!(
            keys = old.kvs.len(),
            revision = old.revision,
            "store in layout 1: migrating to layout {LAYOUT}"
        );
        let writes: Vec<_> = copied
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        if !write(store, &writes, true).await? {
            continue;
        }
        let res = store.txn(commit()).await?;
        if !res.succeeded {
            // Another controller committed the migration first.
            continue;
        }
        let Some(TxnOpResult::Range(last)) = res.results.into_iter().next() else {
            return Err(LayoutError::Answer(
                "the migration's commit returned no range of the old keys".into(),
            ));
        };
        catch_up(store, old.revision, &copied, &last).await?;
        info!(
            keys = old.kvs.len(),
            layout = LAYOUT,
            "store layout migrated"
        );
        return Ok(Outcome::Migrated(old.kvs.len()));
    }
}

/// The transaction that commits a migration: writes the marker if there is none, reads the
/// old layout's keys and deletes them in the same step.
fn commit() -> Txn {
    let mut ops = vec![TxnOp::range(OLD_ROOT)];
    ops.push(TxnOp::delete_prefix(OLD_ROOT));
    ops.push(TxnOp::put(keys::layout(), LAYOUT.to_string().into_bytes()));
    Txn::new()
        .when([Compare::absent(keys::layout())])
        .and_then(ops)
}

/// Writes `writes` (puts, or deletes for `None`) in transactions of [`CHUNK`]; if `guarded`,
/// each only while there is no marker, and `false` when a marker appeared (another controller
/// finished the migration).
async fn write(
    store: &dyn Store,
    writes: &[(String, Option<Vec<u8>>)],
    guarded: bool,
) -> Result<bool, LayoutError> {
    for chunk in writes.chunks(CHUNK) {
        let ops = chunk.iter().map(|(k, v)| match v {
            Some(v) => TxnOp::put(k, v.clone()),
            None => TxnOp::delete(k),
        });
        let guard = guarded.then(|| Compare::absent(keys::layout()));
        let res = store.txn(Txn::new().when(guard).and_then(ops)).await?;
        if !res.succeeded {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies again what old controllers changed between the read at `read` and the commit
/// (`last`: the old keys as the commit saw them; `copied`: what was copied from the read).
async fn catch_up(
    store: &dyn Store,
    read: Revision,
    copied: &BTreeMap<String, Vec<u8>>,
    last: &[KeyValue],
) -> Result<(), LayoutError> {
    // Already committed: a key layout 1 never had is left behind (logged), not fatal.
    let now = migrate_keys(last, false)?;
    if last.iter().all(|kv| kv.mod_revision <= read) && now == *copied {
        return Ok(());
    }
    let mut writes: Vec<(String, Option<Vec<u8>>)> = now
        .iter()
        .filter(|(k, v)| copied.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    writes.extend(
        copied
            .keys()
            .filter(|k| !now.contains_key(*k))
            .map(|k| (k.clone(), None)),
    );
    warn!(
        keys = writes.len(),
        "old-layout keys changed during the migration (was an old controller still running?): \
         copied again"
    );
    write(store, &writes, false).await?;
    Ok(())
}

/// The keys and values of layout 2 for the keys `old` of layout 1. A key layout 1 never had
/// is an error if `strict`, else skipped with a warning.
pub fn migrate_keys(
    old: &[KeyValue],
    strict: bool,
) -> Result<BTreeMap<String, Vec<u8>>, LayoutError> {
    let unknown = |kv: &KeyValue, reason: &str| LayoutError::UnknownKey {
        key: kv.key.clone(),
        reason: reason.into(),
    };
    let skip = |e: LayoutError| {
        if strict {
            return Err(e);
        }
        warn!(error = %e, "old-layout key left behind");
        Ok(())
    };
    let mut sessions = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut peers = Vec::new();
    for kv in old {
        let rest = kv.key.strip_prefix(OLD_ROOT).unwrap_or(&kv.key);
        let Some((net, path)) = rest.split_once('/') else {
            if rest.is_empty() {
                skip(unknown(kv, "no network id"))?;
                continue;
            }
            out.insert(keys::network(rest), kv.value.clone());
            continue;
        };
        let (family, name) = path.split_once('/').unwrap_or((path, ""));
        match family {
            "sessions" if !name.is_empty() => {
                sessions.insert((net, name), String::from_utf8_lossy(&kv.value).into_owned());
            }
            "peers" if !name.is_empty() => peers.push((net, name, kv)),
            "commands" | "tests" if !name.is_empty() => {
                out.insert(format!("{}{path}", keys::watched(net)), kv.value.clone());
            }
            "ipam" | "pubkeys" | "tokens" | "results" if !name.is_empty() => {
                out.insert(format!("{}{path}", keys::internal(net)), kv.value.clone());
            }
            "ipam-generation" | "routes-generation" if name.is_empty() => {
                out.insert(format!("{}{path}", keys::internal(net)), kv.value.clone());
            }
            _ => skip(unknown(kv, "not a key layout 1 has"))?,
        }
    }
    for (net, node, kv) in peers {
        let mut record: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_slice(&kv.value) {
                Ok(r) => r,
                Err(e) => {
                    skip(unknown(
                        kv,
                        &format!("peer record is not a JSON object: {e}"),
                    ))?;
                    continue;
                }
            };
        if let Some(hash) = sessions.get(&(net, node)) {
            record.insert("session_sha256".into(), hash.clone().into());
        }
        let value = serde_json::to_vec(&record).expect("JSON maps serialize");
        out.insert(keys::peer(net, node), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
