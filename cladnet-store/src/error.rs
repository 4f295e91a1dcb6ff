//! The store's error type: every error names what was attempted and on which key, lease,
//! file or endpoint.

use std::fmt;
use std::path::PathBuf;

use crate::types::{LeaseId, Revision};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error of a backend library (redb, etcd-client), kept opaque so that the public API
/// does not depend on those crates' versions.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Opening an embedded store file.
    Open,
    /// Connecting to etcd.
    Connect,
    /// [`Store::get`](crate::Store::get).
    Get,
    /// [`Store::range`](crate::Store::range).
    Range,
    /// [`Store::put`](crate::Store::put).
    Put,
    /// [`Store::delete`](crate::Store::delete).
    Delete,
    /// [`Store::delete_prefix`](crate::Store::delete_prefix).
    DeletePrefix,
    /// [`Store::txn`](crate::Store::txn).
    Txn,
    /// [`Store::watch`](crate::Store::watch), including the stream it returned.
    Watch,
    /// [`Store::compact`](crate::Store::compact), or the embedded store's automatic compaction.
    Compact,
    /// [`Store::lease_grant`](crate::Store::lease_grant).
    LeaseGrant,
    /// [`Store::lease_keep_alive`](crate::Store::lease_keep_alive).
    LeaseKeepAlive,
    /// [`Store::lease_revoke`](crate::Store::lease_revoke).
    LeaseRevoke,
    /// The embedded store's background expiry of leases.
    LeaseExpire,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Connect => "connect",
            Self::Get => "get",
            Self::Range => "range",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::DeletePrefix => "delete prefix",
            Self::Txn => "txn",
            Self::Watch => "watch",
            Self::Compact => "compact",
            Self::LeaseGrant => "lease grant",
            Self::LeaseKeepAlive => "lease keep-alive",
            Self::LeaseRevoke => "lease revoke",
            Self::LeaseExpire => "lease expiry",
        })
    }
}

/// Errors of the store and of [`StoreUrl`](crate::StoreUrl) parsing.
///
/// `target` fields describe what the operation was applied to, e.g. `key "/a/b"`,
/// `prefix "/a/"` or `lease 7`; `backend` fields name the store (`embedded store PATH` or
/// `etcd [ENDPOINTS]`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store URL could not be parsed.
    #[error("invalid store URL {input:?}: {field}: {reason}")]
    InvalidUrl {
        /// The whole input.
        input: String,
        /// The part of the URL that is wrong (`scheme`, `path`, `endpoint 2 port`, ...).
        field: String,
        /// Why it is wrong.
        reason: String,
    },

    /// An argument was rejected before (or by) the backend: empty key, bad revision,
    /// conflicting writes in one transaction, ...
    #[error("{op} {target}: invalid argument: {reason}")]
    InvalidArgument {
        /// What was attempted.
        op: Op,
        /// On what.
        target: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The embedded store file could not be opened or created.
    #[error("open embedded store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// No connection to etcd could be established, or no endpoint answered the first request.
    #[error("connect to etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints that were tried.
        endpoints: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The backend failed to carry out an operation (I/O error, database error, error status
    /// from etcd).
    #[error("{op} {target} on {backend}: {source}")]
    Backend {
        /// What was attempted.
        op: Op,
        /// On what.
        target: String,
        /// Which store.
        backend: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// No etcd endpoint could serve the request (connection refused or lost, no leader,
    /// timeout). The operation may or may not have been applied; see [`Error::is_retryable`].
    #[error("{op} {target}: etcd unavailable at {endpoints}: {source}")]
    Unavailable {
        /// What was attempted.
        op: Op,
        /// On what.
        target: String,
        /// The endpoints the client was configured with.
        endpoints: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A watch asked for history that was already compacted.
    #[error("watch from revision {requested}: history before revision {compacted} is compacted")]
    Compacted {
        /// The start revision that was asked for.
        requested: Revision,
        /// The oldest revision that can still be watched from.
        compacted: Revision,
    },

    /// A revision newer than the store's current revision was given.
    #[error("{op}: revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// What was attempted.
        op: Op,
        /// The revision that was given.
        requested: Revision,
        /// The store's current revision (0 when the backend does not report it).
        current: Revision,
    },

    /// The lease does not exist (never granted, expired or revoked).
    #[error("{op} {target}: lease {lease} not found (expired or revoked)")]
    LeaseNotFound {
        /// What was attempted.
        op: Op,
        /// On what (the key being put, or the lease itself).
        target: String,
        /// The lease.
        lease: LeaseId,
    },

    /// Data read from the backend did not have the expected shape (corrupt file, non-UTF-8 key
    /// written by another etcd client, ...).
    #[error("{op} {target} on {backend}: unexpected data: {reason}")]
    Corrupt {
        /// What was attempted.
        op: Op,
        /// On what.
        target: String,
        /// Which store.
        backend: String,
        /// What was wrong.
        reason: String,
    },

    /// The store was closed (all handles of an embedded store dropped) while a watch was
    /// running, or etcd canceled a watch for a reason other than compaction.
    #[error("{op} {target}: {reason}")]
    Closed {
        /// What was attempted.
        op: Op,
        /// On what.
        target: String,
        /// Why it ended.
        reason: String,
    },
}

impl Error {
    /// Whether the same operation may succeed if retried later (the backend was unreachable).
    ///
    /// Note that a retried write may then be applied twice if the first attempt reached the
    /// server; use a [`Txn`](crate::Txn) with a compare to make retries safe.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Describes a key for error messages.
pub(crate) fn key_target(key: &str) -> String {
    format!("key {key:?}")
}

/// Describes a prefix for error messages.
pub(crate) fn prefix_target(prefix: &str) -> String {
    format!("prefix {prefix:?}")
}

/// Describes a lease for error messages.
pub(crate) fn lease_target(id: LeaseId) -> String {
    format!("lease {id}")
}

/// Describes a revision for error messages.
pub(crate) fn revision_target(rev: Revision) -> String {
    format!("revision {rev}")
}

/// Rejects an empty key, as etcd does.
pub(crate) fn check_key(op: Op, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument {
            op,
            target: key_target(key),
            reason: "key is empty".into(),
        });
    }
    Ok(())
}

/// Rejects a watch start revision below 1.
pub(crate) fn check_start_revision(prefix: &str, start: Option<Revision>) -> Result<()> {
    match start {
        Some(rev) if rev < 1 => Err(Error::InvalidArgument {
            op: Op::Watch,
            target: prefix_target(prefix),
            reason: format!("start revision {rev} must be at least 1 (use None for \"from now\")"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_operation_and_target() {
        let e = Error::LeaseNotFound {
            op: Op::Put,
            target: key_target("/a"),
            lease: 7,
        };
        assert_eq!(
            e.to_string(),
            "put key \"/a\": lease 7 not found (expired or revoked)"
        );
        let e = check_key(Op::Get, "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "get key \"\": invalid argument: key is empty"
        );
        assert!(!e.is_retryable());
        let e = Error::Compacted {
            requested: 3,
            compacted: 10,
        };
        assert_eq!(
            e.to_string(),
            "watch from revision 3: history before revision 10 is compacted"
        );
    }
}
