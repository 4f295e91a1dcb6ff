//! The controller's operations, independent of transport: gRPC and REST both call these.
//!
//! All state lives in the store; every change is a store transaction whose compares make it
//! safe with several controllers on one etcd (compare-and-swap on the records read).

mod agents;
mod alloc;
mod commands;
mod external;
mod hub;
mod identity;
mod networks;
mod peers;
pub mod probes;
mod routes;
mod stats;
mod tokens;
mod watch;

use std::{collections::HashMap, sync::Arc};

use cladnet_store::{Compare, CompareOp, KeyValue, Store, Txn, TxnOp};
use tokio::sync::Mutex;

pub use watch::{WatchStream, event_of};

use crate::{
    auth::AdminAuth,
    error::{ControllerError, Result},
    keys,
    model::{self, NetworkRecord, PeerRecord},
};

/// How often a transaction that lost a compare-and-swap race is retried before giving up.
const MAX_TXN_ATTEMPTS: usize = 64;

/// The controller: a store plus the admin credential. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Controller {
    store: Arc<dyn Store>,
    admin: AdminAuth,
    /// Serializes this process's address allocations per network, so concurrent joins on one
    /// controller do not fight over the same free address; other controllers are kept
    /// consistent by the store transaction.
    alloc_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Every network's address allocations as last known (see [`alloc`]).
    ipam_cache: alloc::IpamCache,
    /// Network and join-token records as last known, for Joins without a read.
    join_cache: agents::JoinCache,
    /// One shared store watch per network with open Watch streams.
    hubs: Arc<hub::Hubs>,
    /// The lease agents' traffic statistics are written with (see [`stats`]).
    stats_lease: stats::StatsLease,
    /// Which pairs were told to probe each other (see [`probes`]).
    probes: std::sync::Mutex<probes::Coordinator>,
    /// Prometheus metrics (the store is timed through them).
    metrics: Arc<crate::metrics::Metrics>,
    /// The join key, loaded from (or created in) the store on first use.
    join_key: tokio::sync::OnceCell<identity::JoinKey>,
    /// The pin of the certificate this controller serves (put into the join tokens it mints).
    tls_pin: Option<cladnet_proto::tls::Pin>,
}

impl Controller {
    /// A controller on `store`, accepting `admin` for admin calls.
    pub fn new(store: Arc<dyn Store>, admin: AdminAuth) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        Self {
            store: Arc::new(crate::metrics::TimedStore::new(store, metrics.clone())),
            metrics,
            admin,
            alloc_locks: Mutex::default(),
            ipam_cache: alloc::IpamCache::default(),
            join_cache: agents::JoinCache::default(),
            hubs: Arc::default(),
            stats_lease: stats::StatsLease::default(),
            probes: std::sync::Mutex::default(),
            join_key: tokio::sync::OnceCell::new(),
            tls_pin: None,
        }
    }

    /// Sets the pin of the certificate this controller serves: join tokens carry it, so an
    /// agent holding one trusts exactly this key.
    #[must_use]
    pub fn with_tls_pin(mut self, pin: Option<cladnet_proto::tls::Pin>) -> Self {
        self.tls_pin = pin;
        self
    }

    /// The pin of the served certificate, if the controller serves TLS.
    pub fn tls_pin(&self) -> Option<cladnet_proto::tls::Pin> {
        self.tls_pin
    }

    /// The controller's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks an admin bearer token.
    pub fn check_admin(&self, bearer: &str) -> Result<()> {
        self.admin.check(bearer)
    }

    async fn alloc_lock(&self, net: &str) -> Arc<Mutex<()>> {
        self.alloc_locks
            .lock()
            .await
            .entry(net.to_owned())
            .or_default()
            .clone()
    }

    /// The network record and its store revision.
    async fn network(&self, net: &str) -> Result<(NetworkRecord, KeyValue)> {
        let kv = self
            .store
            .get(&keys::network(net))
            .await?
            .ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
        Ok((model::decode(&kv)?, kv))
    }

    /// Every peer of a network with its store revision, sorted by node id.
    async fn peers(&self, net: &str) -> Result<Vec<(PeerRecord, i64)>> {
        let range = self.store.range(&keys::peers(net)).await?;
        range
            .kvs
            .iter()
            .map(|kv| Ok((model::decode::<PeerRecord>(kv)?, kv.mod_revision)))
            .collect()
    }

    /// One peer and its store key-value.
    async fn peer(&self, net: &str, node: &str) -> Result<(PeerRecord, KeyValue)> {
        let kv = self
            .store
            .get(&keys::peer(net, node))
            .await?
            .ok_or_else(|| {
                ControllerError::not_found(format!("peer {node:?} of network {net:?}"))
            })?;
        Ok((model::decode(&kv)?, kv))
    }
}

impl Controller {
    /// Retries `op` while it reports a lost compare-and-swap (`Ok(None)`).
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        for attempt in 0..MAX_TXN_ATTEMPTS {
            if let Some(v) = op().await? {
                return Ok(v);
            }
            // Back off a little, growing, so racing controllers spread out.
            let mut jitter = [0u8; 1];
            getrandom::fill(&mut jitter).expect("the OS random source works");
            let jitter = u64::from(jitter[0] % 8);
            tokio::time::sleep(std::time::Duration::from_millis(
                attempt.min(20) as u64 + jitter,
            ))
            .await;
        }
        Err(contention(what))
    }

    /// Read-modify-writes one peer record with compare-and-swap, retrying lost races.
    async fn update_peer(
        &self,
        what: &str,
        net: &str,
        node: &str,
        change: impl Fn(&mut PeerRecord),
    ) -> Result<i64> {
        self.retry(what, || async {
            let (mut peer, kv) = self.peer(net, node).await?;
            change(&mut peer);
            peer.updated_at = model::now_unix();
            let key = keys::peer(net, node);
            let res = self
                .store
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            &key,
                            CompareOp::Equal,
                            kv.mod_revision,
                        )])
                        .and_then([TxnOp::put(&key, model::encode(&peer))]),
                )
                .await?;
            Ok(res.succeeded.then_some(res.revision))
        })
        .await
    }
}

/// A transaction lost its compare-and-swap race `MAX_TXN_ATTEMPTS` times.
fn contention(what: &str) -> ControllerError {
    ControllerError::Aborted(format!("{what}: too much concurrent change, retry"))
}
