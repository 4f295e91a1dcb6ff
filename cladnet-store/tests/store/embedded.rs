//! The embedded backend: the conformance suite, plus durability across reopen, leases across a
//! restart, history retention, lagging watchers and closing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cladnet_store::embedded::{EmbeddedOptions, EmbeddedStore};
use cladnet_store::{Error, Revision, Store, StoreUrl, Txn, TxnOp, WatchEvent};
use tempfile::TempDir;
use tokio_stream::StreamExt;

use crate::conformance::{assert_quiet, next_event, take_events};
use crate::{Fixture, conformance_tests};

/// One embedded store in a temp dir; every "connection" is the same open store.
pub(crate) struct EmbeddedFixture {
    store: Arc<dyn Store>,
    _dir: TempDir,
}

impl Fixture for EmbeddedFixture {
    fn connect(&self) -> impl Future<Output = Arc<dyn Store>> + Send {
        let store = Arc::clone(&self.store);
        async move { store }
    }
}

async fn setup() -> Option<EmbeddedFixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path().join("store.redb"), EmbeddedOptions::default())
        .await
        .expect("open embedded store");
    Some(EmbeddedFixture {
        store: Arc::new(store),
        _dir: dir,
    })
}

mod conformance {
    super::conformance_tests!(super::setup =>
        crud,
        revisions,
        prefix_isolation,
        txn_compares,
        txn_operations,
        cas_race_single_winner,
        cas_counter_increments,
        watch_ordering,
        watch_from_now_sees_next_write,
        watch_from_revision_during_writes,
        watch_resume_after_reconnect,
        watch_compacted,
        lease_expiry,
        lease_keep_alive_and_revoke,
        large_range,
    );
}

async fn open(path: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(path, EmbeddedOptions::default())
        .await
        .expect("open embedded store")
}

fn revisions_of(events: &[WatchEvent]) -> Vec<Revision> {
    events.iter().map(WatchEvent::revision).collect()
}

/// Data, revision counter, history, compaction point and leases survive closing and reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/store.redb");

    let s = open(&path).await;
    s.put("/d/a", b"1".to_vec(), None).await.unwrap();
    let compact_at = s.put("/d/b", b"2".to_vec(), None).await.unwrap();
    s.txn(Txn::new().and_then([TxnOp::put("/d/a", b"3"), TxnOp::delete("/d/b")]))
        .await
        .unwrap();
    let lease = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    s.put("/d/leased", b"l".to_vec(), Some(lease))
        .await
        .unwrap();
    s.put("/d/c", b"4".to_vec(), None).await.unwrap();
    s.compact(compact_at).await.unwrap();
    let before = s.range("/d/").await.unwrap();
    let mut w = s.watch("/d/", Some(compact_at)).await.unwrap();
    let history = take_events(&mut w, 5).await;
    assert_eq!(history.last().unwrap().revision(), before.revision);
    drop(w);
    drop(s);

    let s = open(&path).await;
    assert_eq!(
        s.range("/d/").await.unwrap(),
        before,
        "data and revision survive"
    );
    let mut w = s.watch("/d/", Some(compact_at)).await.unwrap();
    assert_eq!(take_events(&mut w, 5).await, history, "history survives");
    assert_quiet(&mut w, Duration::from_millis(200)).await;
    let mut old = s.watch("/d/", Some(compact_at - 1)).await.unwrap();
    let item = old.next().await;
    assert!(
        matches!(item, Some(Err(Error::Compacted { compacted, .. })) if compacted == compact_at),
        "compaction point survives: {item:?}"
    );
    assert_eq!(
        s.put("/d/e", b"5".to_vec(), None).await.unwrap(),
        before.revision + 1
    );
    assert_eq!(
        s.lease_keep_alive(lease).await.unwrap(),
        Duration::from_secs(60)
    );
    let kv = s.get("/d/leased").await.unwrap().unwrap();
    assert_eq!(kv.lease, Some(lease));
    // The lease id counter survives too: a new lease gets a new id.
    assert_ne!(s.lease_grant(Duration::from_secs(5)).await.unwrap(), lease);
}

/// A lease live at shutdown restarts its full TTL on open: its keys are deleted one TTL after
/// the restart unless kept alive, with delete events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_expire_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let s = open(&path).await;
    let lease = s.lease_grant(Duration::from_secs(1)).await.unwrap();
    s.put("/x/a", b"a".to_vec(), Some(lease)).await.unwrap();
    s.put("/x/b", b"b".to_vec(), None).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let s = open(&path).await;
    assert!(
        s.get("/x/a").await.unwrap().is_some(),
        "lease restarted its TTL on open"
    );
    let mut w = s.watch("/x/", None).await.unwrap();
    let event = next_event(&mut w).await;
    assert!(
        matches!(&event, WatchEvent::Delete { key, .. } if key == "/x/a"),
        "{event:?}"
    );
    assert_eq!(s.get("/x/a").await.unwrap(), None);
    assert!(s.get("/x/b").await.unwrap().is_some());
}

/// The history keeps the configured number of revisions; older ones are compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_retention_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        history_retention: 10,
        ..EmbeddedOptions::default()
    };
    let s = EmbeddedStore::open(dir.path().join("s.redb"), options)
        .await
        .unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(
            s.put(&format!("/r/{i}"), b"v".to_vec(), None)
                .await
                .unwrap(),
        );
    }
    let mut w = s.watch("/r/", Some(revs[0])).await.unwrap();
    match w.next().await {
        Some(Err(Error::Compacted {
            requested,
            compacted,
        })) => {
            assert_eq!(requested, revs[0]);
            assert!(
                compacted > revs[30] && compacted <= revs[40],
                "compacted at {compacted}"
            );
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut w = s.watch("/r/", Some(revs[40])).await.unwrap();
    assert_eq!(revisions_of(&take_events(&mut w, 10).await), revs[40..]);
}

/// A watcher that falls behind the live channel catches up from the history, without gap or
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        live_buffer: 2,
        ..EmbeddedOptions::default()
    };
    let s = EmbeddedStore::open(dir.path().join("s.redb"), options)
        .await
        .unwrap();
    let mut w = s.watch("/lag/", None).await.unwrap();
    let mut revs = Vec::new();
    // More than the watch channel (256) plus the live buffer: the watcher must lag.
    for i in 0..400 {
        revs.push(
            s.put(&format!("/lag/{i}"), b"v".to_vec(), None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(revisions_of(&take_events(&mut w, 400).await), revs);
    assert_quiet(&mut w, Duration::from_millis(200)).await;
}

/// Dropping the store ends its watches with `Closed`, and releases the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = open(&path).await;
    let mut w = s.watch("/", None).await.unwrap();
    drop(s);
    let item = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(matches!(item, Some(Err(Error::Closed { .. }))), "{item:?}");
    assert!(w.next().await.is_none());
    drop(open(&path).await);
}

/// A file held by an open store cannot be opened again; the error names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_held_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let _held = open(&path).await;
    let err = EmbeddedStore::open(&path, EmbeddedOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("in use"),
        "{msg}"
    );

    let blocked = dir.path().join("file-not-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let err = EmbeddedStore::open(blocked.join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("file-not-dir"), "{err}");
}

/// `connect` opens the store an `embedded:` URL names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_embedded_url() {
    let dir = tempfile::tempdir().unwrap();
    let url: StoreUrl = format!("embedded:{}", dir.path().join("u.redb").display())
        .parse()
        .unwrap();
    let store = cladnet_store::connect(&url).await.unwrap();
    let rev = store.put("/u", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/u").await.unwrap().unwrap().mod_revision, rev);
    assert!(format!("{store:?}").contains("u.redb"));
}
