//! The etcd backend against real etcd processes: the conformance suite (one single-member
//! etcd per case), connecting by URL, and a 3-member cluster losing its leader.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cladnet_store::etcd::{EtcdOptions, EtcdStore};
use cladnet_store::{
    Compare, CompareOp, Error, EtcdEndpoint, Revision, Store, Txn, TxnOp, WatchEvent, WatchStream,
};

use crate::conformance::{assert_quiet, next_event, take_events};
use crate::etcd_process::EtcdCluster;
use crate::{Fixture, conformance_tests};

/// One single-member etcd; every connection is a new client.
pub(crate) struct EtcdFixture {
    cluster: EtcdCluster,
}

impl Fixture for EtcdFixture {
    fn connect(&self) -> impl Future<Output = Arc<dyn Store>> + Send {
        self.cluster.client()
    }
}

async fn setup() -> Option<EtcdFixture> {
    let cluster = EtcdCluster::start("etcd conformance", 1).await?;
    Some(EtcdFixture { cluster })
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

/// `connect` reaches the etcd an `etcd://` URL names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_etcd_url() {
    let Some(cluster) = EtcdCluster::start("connect_etcd_url", 1).await else {
        return;
    };
    let url = cluster.url();
    let parsed = url.to_string().parse().unwrap();
    assert_eq!(url, parsed);
    let store = cladnet_store::connect(&parsed).await.unwrap();
    let rev = store.put("/u", b"1".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/u").await.unwrap().unwrap().mod_revision, rev);
    let endpoint = cluster.endpoints()[0].to_string();
    assert!(format!("{store:?}").contains(&endpoint));
}

/// Connecting to an endpoint where nothing listens fails, naming the endpoint (needs no etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_fails_clearly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = EtcdEndpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let options = EtcdOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        EtcdStore::connect(&[endpoint], options),
    )
    .await
    .expect("connect must give up by itself");
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// The etcd helper kills its processes and removes its files when the test panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_helper_cleans_up_on_panic() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let Some(cluster) = EtcdCluster::start("etcd_helper_cleans_up_on_panic", 1).await else {
            return;
        };
        let _ = tx.send((cluster.pids(), cluster.dir()));
        panic!("deliberate panic with a running etcd");
    });
    let joined = task.await;
    let Ok((pids, dir)) = rx.await else {
        assert!(joined.is_ok(), "skipped (no etcd) without panicking");
        return;
    };
    assert!(joined.is_err_and(|e| e.is_panic()), "the task panicked");
    assert!(!pids.is_empty());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still running"
        );
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

/// A watch survives the restart of the (only) member serving it: it resumes from the last
/// delivered revision, without gap or duplicate; the same client reads and writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_member_restart() {
    let Some(mut cluster) = EtcdCluster::start("watch_resumes_across_member_restart", 1).await
    else {
        return;
    };
    let store = cluster.client().await;
    let mut failures = 0;
    let first = store.put("/wr/k0", b"v".to_vec(), None).await.unwrap();
    for i in 1..5 {
        put_retrying(&*store, &format!("/wr/k{i}"), &mut failures).await;
    }
    let mut w = store.watch("/wr/", Some(first)).await.unwrap();
    let before = take_events(&mut w, 5).await;
    assert_eq!(before.last().unwrap().key(), "/wr/k4");

    cluster.kill(0);
    cluster.restart(0).await;
    for i in 5..10 {
        put_retrying(&*store, &format!("/wr/k{i}"), &mut failures).await;
    }
    let after: Vec<String> = take_events(&mut w, 5)
        .await
        .iter()
        .map(|e| e.key().to_owned())
        .collect();
    assert_eq!(
        after,
        (5..10).map(|i| format!("/wr/k{i}")).collect::<Vec<_>>()
    );
    assert_quiet(&mut w, Duration::from_millis(300)).await;
    assert_eq!(store.range("/wr/").await.unwrap().kvs.len(), 10);
}

/// Reads until the watch delivers the event at revision `end`.
async fn events_until(stream: &mut WatchStream, end: Revision) -> Vec<(String, Revision)> {
    let mut out = Vec::new();
    loop {
        let event = next_event(stream).await;
        assert!(matches!(event, WatchEvent::Put(_)), "{event:?}");
        let rev = event.revision();
        out.push((event.key().to_owned(), rev));
        if rev >= end {
            return out;
        }
    }
}

/// Puts a key, retrying while etcd is unavailable (e.g. during a leader election).
async fn put_retrying(store: &dyn Store, key: &str, failures: &mut usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.put(key, key.as_bytes().to_vec(), None).await {
            Ok(_) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                eprintln!("put {key} failed (will retry): {e}");
                *failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put {key} failed for good: {e}"),
        }
    }
}

/// A 3-member cluster loses its leader (SIGKILL): a client listing all endpoints keeps
/// reading and writing, watches opened before the kill deliver every event exactly once, and
/// a new client still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_member_kill() {
    let Some(mut cluster) = EtcdCluster::start("cluster_survives_member_kill", 3).await else {
        return;
    };
    let store = cluster.client().await;
    let mut failures = 0;
    for i in 0..10 {
        put_retrying(&*store, &format!("/ha/k{i:02}"), &mut failures).await;
    }
    let start = store.range("/ha/").await.unwrap().revision + 1;
    // Several clients, so that some watch streams are served by the member that dies.
    let mut watchers = Vec::new();
    for _ in 0..4 {
        let client = cluster.client().await;
        watchers.push(client.watch("/ha/", Some(start)).await.unwrap());
    }

    let leader = cluster.leader().expect("the cluster has a leader");
    eprintln!("killing member {leader} (the leader)");
    cluster.kill(leader);

    for i in 10..40 {
        put_retrying(&*store, &format!("/ha/k{i:02}"), &mut failures).await;
    }
    eprintln!("writes that failed over after the kill: {failures}");
    let all = store.range("/ha/").await.unwrap();
    assert_eq!(all.kvs.len(), 40);
    for kv in &all.kvs {
        assert_eq!(kv.value, kv.key.as_bytes());
    }
    for i in [0, 15, 39] {
        let key = format!("/ha/k{i:02}");
        assert!(store.get(&key).await.unwrap().is_some(), "{key}");
    }
    let cas = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    "/ha/k39",
                    CompareOp::Equal,
                    all.kvs[39].mod_revision,
                )])
                .and_then([TxnOp::put("/ha/k39", b"/ha/k39")]),
        )
        .await
        .unwrap();
    assert!(cas.succeeded);
    let end = cas.revision;

    // A new client listing every endpoint (one dead) connects and sees everything.
    let fresh = cluster.client().await;
    assert_eq!(fresh.range("/ha/").await.unwrap().kvs.len(), 40);
    let mut reference = fresh.watch("/ha/", Some(start)).await.unwrap();
    let want = events_until(&mut reference, end).await;
    assert!(want.len() >= 31, "{} events", want.len());
    for (i, w) in watchers.iter_mut().enumerate() {
        assert_eq!(events_until(w, end).await, want, "watcher {i}");
    }
}
