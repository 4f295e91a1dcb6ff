//! Real etcd processes for integration tests, shared with `cladnet-store`'s own tests (one
//! source file, included in both crates).

use std::sync::Arc;

use cladnet_store::{Store, StoreUrl};

#[path = "../../cladnet-store/tests/store/etcd_process.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "shared file; some helpers serve only the store tests"
)]
mod process;

/// An etcd cluster of one or more members on loopback; killed and removed on drop.
pub struct Etcd(process::EtcdCluster);

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Etcd(..)")
    }
}

impl Etcd {
    /// Starts `size` members for test `test`; `None` (after printing why) when etcd is not
    /// installed outside CI. Under `CI=true` a missing etcd panics.
    pub async fn start(test: &str, size: usize) -> Option<Self> {
        process::EtcdCluster::start(test, size).await.map(Self)
    }

    /// The `etcd://` URL listing every member.
    pub fn url(&self) -> StoreUrl {
        self.0.url()
    }

    /// A store client over every member.
    pub async fn client(&self) -> Arc<dyn Store> {
        self.0.client().await
    }

    /// Index of the current leader, if one is known.
    pub fn leader(&self) -> Option<usize> {
        self.0.leader()
    }

    /// SIGKILLs member `index`.
    pub fn kill(&mut self, index: usize) {
        self.0.kill(index);
    }
}
