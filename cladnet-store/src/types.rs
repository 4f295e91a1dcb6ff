//! Plain data types exchanged with a [`Store`](crate::Store).

use std::pin::Pin;

use futures_core::Stream;

/// A store revision: one global, monotonically increasing counter, bumped once per change.
pub type Revision = i64;

/// The id of a lease.
pub type LeaseId = i64;

/// A key with its value and its revision metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last absent).
    pub create_revision: Revision,
    /// The revision that last wrote the key.
    pub mod_revision: Revision,
    /// How many times the key was put since it was created (1 after creation).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The answer to [`Store::range`](crate::Store::range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// The keys, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision of the snapshot that was read.
    pub revision: Revision,
}

/// The answer to [`Store::delete`](crate::Store::delete) and
/// [`Store::delete_prefix`](crate::Store::delete_prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    /// How many keys were deleted.
    pub deleted: u64,
    /// The store revision after the operation (unchanged if nothing was deleted).
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or updated; `kv.mod_revision` is the revision of the change.
    Put(KeyValue),
    /// A key was deleted (explicitly, or because its lease expired or was revoked).
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(kv) => &kv.key,
            Self::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Put(kv) => kv.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

/// The stream returned by [`Store::watch`](crate::Store::watch).
///
/// It ends after yielding an error; it also ends when dropped, which cancels the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = crate::Result<WatchEvent>> + Send + 'static>>;
