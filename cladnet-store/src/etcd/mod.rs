//! The etcd backend: a client of an etcd v3 cluster (etcd 3.4 or newer).
//!
//! The etcd-client crate balances requests over all the listed endpoints and reconnects to
//! members that come back; a member that dies only fails the requests that were in flight on
//! it. On top of that this backend:
//!
//! - takes endpoints whose member is unreachable out of the balancer's rotation, and puts
//!   them back when they answer again (the `health` module);
//! - retries any request that failed to *connect* (it was never sent, so even a write is safe
//!   to retry), and retries idempotent reads ([`Store::get`], [`Store::range`], lease
//!   keep-alives) on any unavailability, so that they fail over to another member;
//! - never retries a write that may have reached a member (its connection broke, no leader,
//!   timeout): it may or may not have been applied, so it fails with [`Error::Unavailable`],
//!   which [`Error::is_retryable`] reports;
//! - resumes watch streams transparently (from the last delivered revision, skipping what was
//!   already delivered) when the member serving them goes away, for up to
//!   [`EtcdOptions::watch_reconnect_timeout`];
//! - asks for a leader on every request (`require_leader`), so that a member cut off from the
//!   cluster does not serve stale reads or silent watches.

mod health;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, PutOptions, TxnOpResponse,
};
use tonic::Code;

use crate::error::{
    Error, Op, Result, check_key, check_start_revision, key_target, lease_target, prefix_target,
    revision_target,
};
use crate::txn::{CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult, TxnResult};
use crate::types::{DeleteResult, KeyValue, LeaseId, RangeResult, Revision, WatchStream};
use crate::url::EtcdEndpoint;
use crate::{Store, prefix_end, ttl_seconds};

/// How often a request is retried on another endpoint (see [`EtcdStore::call`]).
const RETRIES: u32 = 4;

/// The largest etcd response read (range, transaction, watch message). gRPC's default of
/// 4 MiB is less than one network's records at about 5000 peers (a 5000-agent bench's range
/// was 4.3 MiB and failed with "decoded message length too large"); etcd itself sends
/// responses of any size. 256 MiB holds well over 100 000 peer records.
pub(crate) const MAX_RESPONSE: usize = 256 << 20;

/// Tuning of an [`EtcdStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Timeout of establishing a connection to one endpoint. Default: 5 s.
    pub connect_timeout: Duration,
    /// Timeout of one unary request (not of watch streams). Default: 10 s.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a connection whose ping is not answered within the
    /// same duration is considered dead. Default: 10 s.
    pub keep_alive: Duration,
    /// How long a watch keeps trying to resume after losing its stream before it yields
    /// [`Error::Unavailable`]. Default: 60 s.
    pub watch_reconnect_timeout: Duration,
    /// How often every endpoint is probed to keep unreachable members out of rotation (only
    /// with more than one endpoint). Default: 1 s.
    pub health_check_interval: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(10),
            watch_reconnect_timeout: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(1),
        }
    }
}

/// A [`Store`] backed by an etcd cluster (see the [module docs](self)).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The endpoints as given, joined by commas, for errors and logs.
    endpoints: String,
    options: EtcdOptions,
    /// The endpoint health task, stopped when the last clone of the store is dropped.
    _health: Option<Arc<health::HealthTask>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to an etcd cluster through `endpoints` and checks that one of them answers
    /// (a maintenance status request). Endpoints that do not accept connections are left out
    /// of rotation until they do.
    pub async fn connect(endpoints: &[EtcdEndpoint], options: EtcdOptions) -> Result<Self> {
        let joined = endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let connect_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
            endpoints: joined.clone(),
            source,
        };
        if endpoints.is_empty() {
            return Err(connect_err("no endpoint given".into()));
        }
        let urls: Vec<String> = endpoints.iter().map(EtcdEndpoint::http_url).collect();
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(options.keep_alive, options.keep_alive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = Client::connect(&urls, Some(connect_options))
            .await
            .map_err(|e| connect_err(Box::new(e)))?;
        let health = if endpoints.len() > 1 {
            let mut rotation =
                health::Rotation::new(client.clone(), endpoints.to_vec(), options.connect_timeout);
            rotation.check().await;
            Some(Arc::new(rotation.spawn(options.health_check_interval)))
        } else {
            None
        };
        let store = Self {
            client,
            endpoints: joined.clone(),
            options,
            _health: health,
        };
        let status = store
            .call(true, || async {
                store
                    .client
                    .maintenance_client()
                    .status()
                    .await
                    .map_err(|e| store.error(Op::Connect, "status".into(), None, e))
            })
            .await
            .map_err(|e| match e {
                Error::Unavailable { source, .. } | Error::Backend { source, .. } => {
                    connect_err(source)
                }
                other => connect_err(Box::new(other)),
            })?;
        tracing::info!(
            endpoints = %store.endpoints,
            version = status.version(),
            revision = status.header().map(|h| h.revision()),
            "connected to etcd"
        );
        Ok(store)
    }

    /// Turns an etcd-client error into an [`Error`] that says what was attempted on what.
    fn error(
        &self,
        op: Op,
        target: String,
        lease: Option<LeaseId>,
        e: etcd_client::Error,
    ) -> Error {
        classify(op, target, lease, &self.endpoints, e)
    }

    /// Runs a request, retrying it (on another endpoint, as the balancer picks) when it could
    /// not be sent, or, if it is `idempotent`, when etcd was unavailable in any way.
    async fn call<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(e)
                    if tries < RETRIES && (never_sent(&e) || (idempotent && e.is_retryable())) =>
                {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "etcd request failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50) * tries).await;
                }
                other => return other,
            }
        }
    }
}

/// Whether the request failed before it could be sent (no connection to the member), so that
/// retrying it cannot apply it twice.
fn never_sent(e: &Error) -> bool {
    let Error::Unavailable { source, .. } = e else {
        return false;
    };
    let Some(etcd_client::Error::GRpcStatus(status)) = source.downcast_ref::<etcd_client::Error>()
    else {
        return matches!(
            source.downcast_ref::<etcd_client::Error>(),
            Some(etcd_client::Error::TransportError(_))
        );
    };
    if status.message().contains("tcp connect") {
        return true;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        if err.to_string().contains("tcp connect") {
            return true;
        }
        cause = err.source();
    }
    false
}

/// The etcd-client error kinds that mean "no endpoint could serve this now".
fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
            ) || (s.code() == Code::Unknown && s.message().contains("transport"))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

pub(crate) fn classify(
    op: Op,
    target: String,
    lease: Option<LeaseId>,
    endpoints: &str,
    e: etcd_client::Error,
) -> Error {
    if let etcd_client::Error::GRpcStatus(s) = &e {
        if let Some(lease) = lease.filter(|_| s.message().contains("lease not found")) {
            return Error::LeaseNotFound { op, target, lease };
        }
        if matches!(s.code(), Code::InvalidArgument | Code::OutOfRange) {
            return Error::InvalidArgument {
                op,
                target,
                reason: s.message().to_owned(),
            };
        }
    }
    if is_unavailable(&e) {
        return Error::Unavailable {
            op,
            target,
            endpoints: endpoints.to_owned(),
            source: Box::new(e),
        };
    }
    Error::Backend {
        op,
        target,
        backend: format!("etcd {endpoints}"),
        source: Box::new(e),
    }
}

/// The etcd key and range end selecting every key under `prefix` (all keys if empty).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    (
        key,
        prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]),
    )
}

/// Converts an etcd key-value.
pub(crate) fn convert_kv(op: Op, endpoints: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key()).map_err(|_| Error::Corrupt {
        op,
        target: format!("key {:?}", String::from_utf8_lossy(kv.key())),
        backend: format!("etcd {endpoints}"),
        reason: "key is not UTF-8".into(),
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn convert_kvs(op: Op, endpoints: &str, kvs: &[etcd_client::KeyValue]) -> Result<Vec<KeyValue>> {
    kvs.iter().map(|kv| convert_kv(op, endpoints, kv)).collect()
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

fn compare_op(op: CompareOp) -> etcd_client::CompareOp {
    match op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    }
}

fn convert_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Get { key } => etcd_client::TxnOp::get(key, None),
        TxnOp::Range { prefix } => {
            let (key, end) = prefix_range(&prefix);
            etcd_client::TxnOp::get(key, Some(GetOptions::new().with_range(end)))
        }
        TxnOp::Put { key, value, lease } => {
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            etcd_client::TxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => {
            let (key, end) = prefix_range(&prefix);
            etcd_client::TxnOp::delete(key, Some(DeleteOptions::new().with_range(end)))
        }
    }
}

fn convert_txn(txn: Txn) -> etcd_client::Txn {
    let compares: Vec<etcd_client::Compare> = txn
        .compares
        .into_iter()
        .map(|c| {
            let op = compare_op(c.op);
            match c.target {
                CompareTarget::Value(v) => etcd_client::Compare::value(c.key, op, v),
                CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(c.key, op, r),
                CompareTarget::CreateRevision(r) => {
                    etcd_client::Compare::create_revision(c.key, op, r)
                }
                CompareTarget::Version(v) => etcd_client::Compare::version(c.key, op, v),
            }
        })
        .collect();
    let success: Vec<etcd_client::TxnOp> = txn.success.into_iter().map(convert_op).collect();
    let failure: Vec<etcd_client::TxnOp> = txn.failure.into_iter().map(convert_op).collect();
    etcd_client::Txn::new()
        .when(compares)
        .and_then(success)
        .or_else(failure)
}

/// The first lease a transaction attaches keys to, to name it if etcd says it is gone.
fn txn_lease(txn: &Txn) -> Option<LeaseId> {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            _ => None,
        })
}

fn deleted_count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(Op::Get, key)?;
        self.call(true, || async {
            let resp = self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE)
                .get(key, None)
                .await
                .map_err(|e| self.error(Op::Get, key_target(key), None, e))?;
            resp.kvs()
                .first()
                .map(|kv| convert_kv(Op::Get, &self.endpoints, kv))
                .transpose()
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        let (key, end) = prefix_range(prefix);
        self.call(true, || async {
            let resp = self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE)
                .get(key.clone(), Some(GetOptions::new().with_range(end.clone())))
                .await
                .map_err(|e| self.error(Op::Range, prefix_target(prefix), None, e))?;
            Ok(RangeResult {
                kvs: convert_kvs(Op::Range, &self.endpoints, resp.kvs())?,
                revision: header_revision(resp.header()),
            })
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        check_key(Op::Put, key)?;
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let resp = self
            .call(false, || async {
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .put(key, value.clone(), options.clone())
                    .await
                    .map_err(|e| self.error(Op::Put, key_target(key), lease, e))
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    async fn delete(&self, key: &str) -> Result<DeleteResult> {
        check_key(Op::Delete, key)?;
        let resp = self
            .call(false, || async {
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .delete(key, None)
                    .await
                    .map_err(|e| self.error(Op::Delete, key_target(key), None, e))
            })
            .await?;
        Ok(DeleteResult {
            deleted: deleted_count(resp.deleted()),
            revision: header_revision(resp.header()),
        })
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResult> {
        let (key, end) = prefix_range(prefix);
        let resp = self
            .call(false, || async {
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .delete(
                        key.clone(),
                        Some(DeleteOptions::new().with_range(end.clone())),
                    )
                    .await
                    .map_err(|e| self.error(Op::DeletePrefix, prefix_target(prefix), None, e))
            })
            .await?;
        Ok(DeleteResult {
            deleted: deleted_count(resp.deleted()),
            revision: header_revision(resp.header()),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        txn.validate()?;
        let target = match txn.compares.first() {
            Some(c) => format!("on {}", key_target(&c.key)),
            None => "without compares".into(),
        };
        let lease = txn_lease(&txn);
        let request = convert_txn(txn.clone());
        let resp = self
            .call(false, || async {
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .txn(request.clone())
                    .await
                    .map_err(|e| self.error(Op::Txn, target.clone(), lease, e))
            })
            .await?;
        let ops = if resp.succeeded() {
            txn.success
        } else {
            txn.failure
        };
        let responses = resp.op_responses();
        if responses.len() != ops.len() {
            return Err(Error::Corrupt {
                op: Op::Txn,
                target,
                backend: format!("etcd {}", self.endpoints),
                reason: format!("{} results for {} operations", responses.len(), ops.len()),
            });
        }
        let mut results = Vec::with_capacity(ops.len());
        for (op, response) in ops.iter().zip(responses) {
            results.push(match (op, response) {
                (TxnOp::Get { .. }, TxnOpResponse::Get(r)) => TxnOpResult::Get(
                    r.kvs()
                        .first()
                        .map(|kv| convert_kv(Op::Txn, &self.endpoints, kv))
                        .transpose()?,
                ),
                (TxnOp::Range { .. }, TxnOpResponse::Get(r)) => {
                    TxnOpResult::Range(convert_kvs(Op::Txn, &self.endpoints, r.kvs())?)
                }
                (TxnOp::Put { .. }, TxnOpResponse::Put(_)) => TxnOpResult::Put,
                (TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. }, TxnOpResponse::Delete(r)) => {
                    TxnOpResult::Delete {
                        deleted: deleted_count(r.deleted()),
                    }
                }
                (op, _) => {
                    return Err(Error::Corrupt {
                        op: Op::Txn,
                        target,
                        backend: format!("etcd {}", self.endpoints),
                        reason: format!("unexpected result kind for {op:?}"),
                    });
                }
            });
        }
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
            results,
        })
    }

    async fn watch(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream> {
        check_start_revision(prefix, start_revision)?;
        watch::start(self, prefix, start_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let target = revision_target(revision);
        let result = self
            .call(false, || async {
                self.client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE)
                    .compact(revision, Some(CompactionOptions::new()))
                    .await
                    .map_err(|e| self.error(Op::Compact, target.clone(), None, e))
            })
            .await;
        match result {
            Ok(_) => {
                tracing::debug!(revision, endpoints = %self.endpoints, "etcd compacted");
                Ok(())
            }
            Err(Error::InvalidArgument { reason, .. })
                if reason.contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(Error::InvalidArgument { reason, .. }) if reason.contains("future revision") => {
                let current = self.range("\u{0}").await.map_or(0, |r| r.revision);
                Err(Error::FutureRevision {
                    op: Op::Compact,
                    requested: revision,
                    current,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl_seconds(ttl)?;
        let target = format!("ttl {secs}s");
        let resp = self
            .call(false, || async {
                self.client
                    .lease_client()
                    .grant(secs, None)
                    .await
                    .map_err(|e| self.error(Op::LeaseGrant, target.clone(), None, e))
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(Error::Backend {
                op: Op::LeaseGrant,
                target,
                backend: format!("etcd {}", self.endpoints),
                source: resp.error().to_owned().into(),
            });
        }
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration> {
        self.call(true, || async {
            match self.client.lease_client().keep_alive(id).await {
                Ok((_keeper, _stream)) => {}
                // etcd answers TTL 0 for an unknown lease; etcd-client reports that this way.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                    return Err(Error::LeaseNotFound {
                        op: Op::LeaseKeepAlive,
                        target: lease_target(id),
                        lease: id,
                    });
                }
                Err(e) => {
                    return Err(self.error(Op::LeaseKeepAlive, lease_target(id), Some(id), e));
                }
            }
            // The keep-alive was answered; read back the TTL the lease was granted with.
            let resp = self
                .client
                .lease_client()
                .time_to_live(id, None)
                .await
                .map_err(|e| self.error(Op::LeaseKeepAlive, lease_target(id), Some(id), e))?;
            if resp.ttl() <= 0 {
                return Err(Error::LeaseNotFound {
                    op: Op::LeaseKeepAlive,
                    target: lease_target(id),
                    lease: id,
                });
            }
            Ok(Duration::from_secs(resp.granted_ttl().unsigned_abs()))
        })
        .await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.call(false, || async {
            self.client
                .lease_client()
                .revoke(id)
                .await
                .map_err(|e| self.error(Op::LeaseRevoke, lease_target(id), Some(id), e))
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_range;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
    }
}
