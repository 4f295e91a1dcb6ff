//! Tests of cladnet-store: one conformance suite run against both backends (the embedded store
//! in a temp dir, a real etcd process), plus backend-specific tests (embedded durability,
//! a 3-member etcd cluster losing a member).

mod conformance;
mod embedded;
mod etcd;
mod etcd_process;

use std::future::Future;
use std::sync::Arc;

use cladnet_store::Store;

/// A store under test: hands out connections ("clients") to one shared store.
pub(crate) trait Fixture: Send + Sync {
    /// A new handle to the store under test: a new client for etcd, another reference to the
    /// one open store for the embedded backend (its file cannot be opened twice).
    fn connect(&self) -> impl Future<Output = Arc<dyn Store>> + Send;
}

/// Generates one `#[tokio::test]` per conformance case, each with a fresh fixture from
/// `$setup` (an async fn returning `Option<fixture>`; `None` means skip).
macro_rules! conformance_tests {
    ($setup:path => $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(fixture) = $setup().await else {
                return;
            };
            crate::conformance::$case(&fixture).await;
        }
    )*};
}
pub(crate) use conformance_tests;
