//! Transactions: compares, operations and results.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::error::{Error, Op, Result, key_target};
use crate::types::{KeyValue, LeaseId, Revision};

/// The most operations (and, separately, compares) one transaction branch may hold. etcd's
/// default `--max-txn-ops`; the embedded store enforces the same limit.
pub const MAX_TXN_OPS: usize = 128;

/// How a [`Compare`] compares the key's current state with its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// Current == operand.
    Equal,
    /// Current != operand.
    NotEqual,
    /// Current > operand.
    Greater,
    /// Current < operand.
    Less,
}

/// What a [`Compare`] looks at, with the operand to compare it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value (byte-wise comparison). A value compare on an absent key is always false,
    /// whatever the operator (etcd semantics).
    Value(Vec<u8>),
    /// The key's `mod_revision` (0 if absent).
    ModRevision(Revision),
    /// The key's `create_revision` (0 if absent: `CreateRevision(0)` + `Equal` means "absent").
    CreateRevision(Revision),
    /// The key's `version` (0 if absent).
    Version(i64),
}

/// One condition of a [`Txn`]: `key's target <op> operand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key to look at.
    pub key: String,
    /// The comparison.
    pub op: CompareOp,
    /// What to compare, and the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// Compares the key's value with `value`.
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    /// Compares the key's `mod_revision` with `revision`.
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// Compares the key's `create_revision` with `revision`.
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// Compares the key's `version` with `version`.
    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// Holds if the key does not exist (`create_revision == 0`).
    pub fn absent(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Equal, 0)
    }

    /// Holds if the key exists (`create_revision > 0`).
    pub fn present(key: impl Into<String>) -> Self {
        Self::create_revision(key, CompareOp::Greater, 0)
    }

    /// Evaluates the compare against the key's current state (`None` = absent), with etcd's
    /// semantics.
    pub(crate) fn holds(&self, current: Option<&KeyValue>) -> bool {
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Reads one key.
    Get {
        /// The key.
        key: String,
    },
    /// Reads every key under a prefix.
    Range {
        /// The prefix.
        prefix: String,
    },
    /// Writes a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Deletes one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Deletes every key under a prefix.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
}

impl TxnOp {
    /// A [`TxnOp::Get`].
    pub fn get(key: impl Into<String>) -> Self {
        Self::Get { key: key.into() }
    }

    /// A [`TxnOp::Range`].
    pub fn range(prefix: impl Into<String>) -> Self {
        Self::Range {
            prefix: prefix.into(),
        }
    }

    /// A [`TxnOp::Put`] without lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A [`TxnOp::Put`] attached to a lease.
    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    /// A [`TxnOp::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// A [`TxnOp::DeletePrefix`].
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Self::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// A transaction: if all `compares` hold, run `success`, else run `failure`.
///
/// ```
/// use cladnet_store::{Compare, CompareOp, Txn, TxnOp};
/// // Compare-and-swap on the revision last read.
/// let txn = Txn::new()
///     .when([Compare::mod_revision("/counter", CompareOp::Equal, 42)])
///     .and_then([TxnOp::put("/counter", b"8".to_vec())])
///     .or_else([TxnOp::get("/counter")]);
/// assert_eq!(txn.success.len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// The operations run when all compares hold.
    pub success: Vec<TxnOp>,
    /// The operations run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no compares: `success` runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds compares.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Checks the transaction as etcd does before running it: non-empty keys, at most
    /// [`MAX_TXN_OPS`] compares and ops per branch, and within a branch no key written twice
    /// (two puts, or a put of a key that a delete of the same branch also removes).
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |target: String, reason: String| Error::InvalidArgument {
            op: Op::Txn,
            target,
            reason,
        };
        if self.compares.len() > MAX_TXN_OPS
            || self.success.len() > MAX_TXN_OPS
            || self.failure.len() > MAX_TXN_OPS
        {
            return Err(invalid(
                "transaction".into(),
                format!("more than {MAX_TXN_OPS} compares or operations in one branch"),
            ));
        }
        for c in &self.compares {
            if c.key.is_empty() {
                return Err(invalid(
                    key_target(&c.key),
                    "compare on an empty key".into(),
                ));
            }
        }
        for branch in [&self.success, &self.failure] {
            let mut puts = HashSet::new();
            let mut deleted_keys = HashSet::new();
            let mut deleted_prefixes = Vec::new();
            for op in branch {
                match op {
                    TxnOp::Get { key } | TxnOp::Delete { key } | TxnOp::Put { key, .. }
                        if key.is_empty() =>
                    {
                        return Err(invalid(key_target(key), "key is empty".into()));
                    }
                    TxnOp::Put { key, .. } => {
                        if !puts.insert(key.as_str()) {
                            return Err(invalid(
                                key_target(key),
                                "duplicate key given in txn request (put twice)".into(),
                            ));
                        }
                    }
                    TxnOp::Delete { key } => {
                        deleted_keys.insert(key.as_str());
                    }
                    TxnOp::DeletePrefix { prefix } => deleted_prefixes.push(prefix.as_str()),
                    TxnOp::Get { .. } | TxnOp::Range { .. } => {}
                }
            }
            for key in puts {
                if deleted_keys.contains(key) || deleted_prefixes.iter().any(|p| key.starts_with(p))
                {
                    return Err(invalid(
                        key_target(key),
                        "duplicate key given in txn request (put and deleted)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The result of one operation of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    /// Result of [`TxnOp::Get`].
    Get(Option<KeyValue>),
    /// Result of [`TxnOp::Range`], sorted by key.
    Range(Vec<KeyValue>),
    /// Result of [`TxnOp::Put`].
    Put,
    /// Result of [`TxnOp::Delete`] or [`TxnOp::DeletePrefix`].
    Delete {
        /// How many keys were deleted.
        deleted: u64,
    },
}

/// The answer to [`Store::txn`](crate::Store::txn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether all compares held (and so `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction: the transaction's own revision if it wrote
    /// anything, else the revision it read at.
    pub revision: Revision,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &[u8], create: i64, modr: i64, version: i64) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: None,
        }
    }

    #[test]
    fn compares_follow_etcd_semantics() {
        let cur = kv(b"b", 2, 5, 3);
        assert!(Compare::value("k", CompareOp::Equal, b"b".to_vec()).holds(Some(&cur)));
        assert!(Compare::value("k", CompareOp::Greater, b"a".to_vec()).holds(Some(&cur)));
        assert!(Compare::value("k", CompareOp::Less, b"c".to_vec()).holds(Some(&cur)));
        // A value compare on an absent key is false even for NotEqual.
        assert!(!Compare::value("k", CompareOp::NotEqual, b"x".to_vec()).holds(None));
        assert!(Compare::absent("k").holds(None));
        assert!(!Compare::absent("k").holds(Some(&cur)));
        assert!(Compare::present("k").holds(Some(&cur)));
        assert!(Compare::mod_revision("k", CompareOp::Equal, 5).holds(Some(&cur)));
        assert!(Compare::mod_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(Compare::version("k", CompareOp::Greater, 2).holds(Some(&cur)));
        assert!(!Compare::version("k", CompareOp::Less, 3).holds(Some(&cur)));
        assert!(Compare::create_revision("k", CompareOp::NotEqual, 1).holds(Some(&cur)));
    }

    #[test]
    fn validate_rejects_conflicting_writes() {
        let ok = Txn::new()
            .and_then([TxnOp::put("/a", b"1".to_vec()), TxnOp::delete("/b")])
            .or_else([TxnOp::put("/a", b"2".to_vec())]);
        assert!(ok.validate().is_ok());
        let twice = Txn::new().and_then([
            TxnOp::put("/a", b"1".to_vec()),
            TxnOp::put("/a", b"2".to_vec()),
        ]);
        assert!(matches!(
            twice.validate(),
            Err(Error::InvalidArgument { .. })
        ));
        let put_deleted = Txn::new().or_else([
            TxnOp::delete_prefix("/a/"),
            TxnOp::put("/a/x", b"1".to_vec()),
        ]);
        assert!(matches!(
            put_deleted.validate(),
            Err(Error::InvalidArgument { .. })
        ));
        let empty = Txn::new().when([Compare::absent("")]);
        assert!(matches!(
            empty.validate(),
            Err(Error::InvalidArgument { .. })
        ));
        let too_many = Txn::new().and_then((0..=MAX_TXN_OPS).map(|i| TxnOp::get(format!("/k{i}"))));
        assert!(too_many.validate().is_err());
    }
}
