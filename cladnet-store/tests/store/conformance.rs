//! The conformance suite: what every [`Store`] backend must do, as generic async functions
//! taking a [`Fixture`] (a store factory). Each backend instantiates every case with
//! [`conformance_tests!`](crate::conformance_tests).
//!
//! Every case assumes it has the store to itself (a fresh store per case), so revisions are
//! predictable: a write that changes something creates exactly the next revision.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cladnet_store::{
    Compare, CompareOp, Error, KeyValue, Revision, Store, Txn, TxnOp, TxnOpResult, WatchEvent,
    WatchStream,
};
use tokio::time::timeout;
use tokio_stream::StreamExt;

use crate::Fixture;

/// How long a test waits for an event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The next event of a watch; panics on error, end of stream or timeout.
pub(crate) async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// The next `n` events of a watch.
pub(crate) async fn take_events(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(stream).await);
    }
    out
}

/// Asserts that the watch delivers nothing for `quiet`.
pub(crate) async fn assert_quiet(stream: &mut WatchStream, quiet: Duration) {
    if let Ok(item) = timeout(quiet, stream.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

fn put_event(
    key: &str,
    value: &[u8],
    create: Revision,
    modr: Revision,
    version: i64,
) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key: key.into(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: None,
    })
}

fn delete_event(key: &str, revision: Revision) -> WatchEvent {
    WatchEvent::Delete {
        key: key.into(),
        revision,
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn current_revision(store: &dyn Store) -> Revision {
    store.range("/nothing-here/").await.expect("range").revision
}

// ---------------------------------------------------------------------------------------------
// Cases

/// Create, read, update, delete; revision metadata of every key; empty keys rejected.
pub(crate) async fn crud(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    assert_eq!(s.get("/crud/a").await.unwrap(), None);

    let r1 = s.put("/crud/a", b"1".to_vec(), None).await.unwrap();
    let kv = s.get("/crud/a").await.unwrap().expect("key after put");
    assert_eq!(
        kv,
        KeyValue {
            key: "/crud/a".into(),
            value: b"1".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
            lease: None,
        }
    );

    let r2 = s.put("/crud/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = s.get("/crud/a").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"2"[..], r1, r2, 2)
    );

    let del = s.delete("/crud/a").await.unwrap();
    assert_eq!((del.deleted, del.revision), (1, r2 + 1));
    assert_eq!(s.get("/crud/a").await.unwrap(), None);

    // Deleting an absent key changes nothing and creates no revision.
    let del = s.delete("/crud/a").await.unwrap();
    assert_eq!((del.deleted, del.revision), (0, r2 + 1));

    // Re-creating starts a new life: new create_revision, version 1.
    let r4 = s.put("/crud/a", b"3".to_vec(), None).await.unwrap();
    assert_eq!(r4, r2 + 2);
    let kv = s.get("/crud/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r4, r4, 1)
    );

    // Binary values round-trip; empty values are values.
    let bytes = vec![0u8, 255, 10, 13, 0];
    s.put("/crud/bin", bytes.clone(), None).await.unwrap();
    assert_eq!(s.get("/crud/bin").await.unwrap().unwrap().value, bytes);
    s.put("/crud/empty", Vec::new(), None).await.unwrap();
    assert_eq!(
        s.get("/crud/empty").await.unwrap().unwrap().value,
        Vec::<u8>::new()
    );

    // Empty keys are rejected, naming the operation.
    let before = current_revision(&*s).await;
    for result in [
        s.get("").await.map(|_| ()),
        s.put("", b"x".to_vec(), None).await.map(|_| ()),
        s.delete("").await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::InvalidArgument { .. })),
            "{result:?}"
        );
    }
    assert_eq!(current_revision(&*s).await, before);
}

/// One global revision: +1 per change, one per transaction, none for no-op operations.
pub(crate) async fn revisions(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let base = current_revision(&*s).await;
    assert!(base >= 1, "revisions start at 1 or later, got {base}");

    let mut last = base;
    for i in 0..10 {
        let rev = s
            .put(&format!("/rev/k{i}"), b"v".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(rev, last + 1, "each put creates exactly the next revision");
        last = rev;
    }

    // One transaction = one revision for all its writes.
    let res = s
        .txn(Txn::new().and_then([
            TxnOp::put("/rev/k0", b"w"),
            TxnOp::put("/rev/new", b"w"),
            TxnOp::delete("/rev/k1"),
        ]))
        .await
        .unwrap();
    assert!(res.succeeded);
    assert_eq!(res.revision, last + 1);
    let kvs = s.range("/rev/").await.unwrap();
    assert_eq!(kvs.revision, last + 1);
    for key in ["/rev/k0", "/rev/new"] {
        let kv = kvs.kvs.iter().find(|kv| kv.key == key).expect(key);
        assert_eq!(kv.mod_revision, last + 1, "{key}");
    }
    assert!(kvs.kvs.iter().all(|kv| kv.key != "/rev/k1"));
    last += 1;

    // Operations that change nothing create no revision.
    let ro = s
        .txn(Txn::new().and_then([TxnOp::get("/rev/k0"), TxnOp::range("/rev/")]))
        .await
        .unwrap();
    assert_eq!(ro.revision, last);
    let noop = s
        .txn(Txn::new().and_then([TxnOp::delete("/rev/absent")]))
        .await
        .unwrap();
    assert_eq!(noop.revision, last);
    let del = s.delete_prefix("/nothing/").await.unwrap();
    assert_eq!((del.deleted, del.revision), (0, last));
    let failed = s
        .txn(
            Txn::new()
                .when([Compare::absent("/rev/k0")])
                .and_then([TxnOp::put("/rev/x", b"1")]),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, last);
    assert_eq!(s.get("/rev/x").await.unwrap(), None);

    assert_eq!(
        s.put("/rev/end", b"1".to_vec(), None).await.unwrap(),
        last + 1
    );
}

/// Prefixes are byte prefixes: `/a/` selects neither `/a` nor `/ab`, in range, delete and watch.
pub(crate) async fn prefix_isolation(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    for key in ["/p/a/1", "/p/a/2", "/p/ab", "/p/a", "/p/b/1"] {
        s.put(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    assert_eq!(
        keys(&s.range("/p/a/").await.unwrap().kvs),
        ["/p/a/1", "/p/a/2"]
    );
    assert_eq!(
        keys(&s.range("/p/a").await.unwrap().kvs),
        ["/p/a", "/p/a/1", "/p/a/2", "/p/ab"]
    );
    assert_eq!(keys(&s.range("/p/").await.unwrap().kvs).len(), 5);
    assert_eq!(
        keys(&s.range("").await.unwrap().kvs).len(),
        5,
        "empty prefix = every key"
    );
    assert!(s.range("/p/a/3").await.unwrap().kvs.is_empty());

    let mut w = s.watch("/p/a/", None).await.unwrap();
    s.put("/p/ab", b"x".to_vec(), None).await.unwrap();
    s.put("/p/a", b"x".to_vec(), None).await.unwrap();
    let r = s.put("/p/a/3", b"3".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut w).await, put_event("/p/a/3", b"3", r, r, 1));

    // delete_prefix removes exactly the prefix, in one revision, one event per key.
    let del = s.delete_prefix("/p/a/").await.unwrap();
    assert_eq!((del.deleted, del.revision), (3, r + 1));
    let events = take_events(&mut w, 3).await;
    assert_eq!(
        events,
        [
            delete_event("/p/a/1", r + 1),
            delete_event("/p/a/2", r + 1),
            delete_event("/p/a/3", r + 1)
        ]
    );
    assert_eq!(
        keys(&s.range("/p/").await.unwrap().kvs),
        ["/p/a", "/p/ab", "/p/b/1"]
    );
    assert_quiet(&mut w, Duration::from_millis(200)).await;
}

/// Compares on value, mod_revision, create_revision (0 = absent) and version.
pub(crate) async fn txn_compares(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let k = "/t/k";

    // Create-if-absent: the first succeeds, the second runs the failure branch.
    let create = || {
        Txn::new()
            .when([Compare::absent(k)])
            .and_then([TxnOp::put(k, b"v1")])
            .or_else([TxnOp::get(k)])
    };
    let first = s.txn(create()).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.results, [TxnOpResult::Put]);
    let second = s.txn(create()).await.unwrap();
    assert!(!second.succeeded);
    let [TxnOpResult::Get(Some(kv))] = second.results.as_slice() else {
        panic!("unexpected results {:?}", second.results)
    };
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.version),
        (&b"v1"[..], first.revision, 1)
    );

    let holds = |c: Compare| {
        let s = Arc::clone(&s);
        async move { s.txn(Txn::new().when([c])).await.unwrap().succeeded }
    };
    let rev = first.revision;
    // value
    assert!(holds(Compare::value(k, CompareOp::Equal, b"v1")).await);
    assert!(!holds(Compare::value(k, CompareOp::Equal, b"v2")).await);
    assert!(holds(Compare::value(k, CompareOp::NotEqual, b"v2")).await);
    assert!(holds(Compare::value(k, CompareOp::Greater, b"v0")).await);
    assert!(holds(Compare::value(k, CompareOp::Less, b"v2")).await);
    // A value compare on an absent key never holds.
    assert!(!holds(Compare::value("/t/none", CompareOp::NotEqual, b"x")).await);
    assert!(!holds(Compare::value("/t/none", CompareOp::Equal, b"")).await);
    // revisions and version
    assert!(holds(Compare::mod_revision(k, CompareOp::Equal, rev)).await);
    assert!(!holds(Compare::mod_revision(k, CompareOp::Greater, rev)).await);
    assert!(holds(Compare::create_revision(k, CompareOp::Equal, rev)).await);
    assert!(holds(Compare::present(k)).await);
    assert!(holds(Compare::absent("/t/none")).await);
    assert!(holds(Compare::mod_revision("/t/none", CompareOp::Equal, 0)).await);
    assert!(holds(Compare::version("/t/none", CompareOp::Equal, 0)).await);
    assert!(holds(Compare::version(k, CompareOp::Equal, 1)).await);
    assert!(holds(Compare::version(k, CompareOp::Less, 2)).await);

    // Swap on the value last read.
    let swapped = s
        .txn(
            Txn::new()
                .when([
                    Compare::value(k, CompareOp::Equal, b"v1"),
                    Compare::version(k, CompareOp::Equal, 1),
                ])
                .and_then([TxnOp::put(k, b"v2")]),
        )
        .await
        .unwrap();
    assert!(swapped.succeeded);
    assert_eq!(swapped.revision, rev + 1);
    // Stale mod_revision: every compare must hold.
    let stale = s
        .txn(
            Txn::new()
                .when([
                    Compare::present(k),
                    Compare::mod_revision(k, CompareOp::Equal, rev),
                ])
                .and_then([TxnOp::put(k, b"v3")])
                .or_else([TxnOp::get(k)]),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    let [TxnOpResult::Get(Some(kv))] = stale.results.as_slice() else {
        panic!("unexpected results {:?}", stale.results)
    };
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"v2"[..], rev + 1, 2)
    );
}

/// Every operation kind inside a transaction, reads seeing earlier writes, and rejected
/// transactions (conflicting writes) changing nothing.
pub(crate) async fn txn_operations(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    s.put("/o/z/1", b"z".to_vec(), None).await.unwrap();
    s.put("/o/z/2", b"z".to_vec(), None).await.unwrap();
    let res = s
        .txn(Txn::new().and_then([
            TxnOp::put("/o/a", b"a"),
            TxnOp::get("/o/a"),
            TxnOp::get("/o/missing"),
            TxnOp::delete("/o/missing"),
            TxnOp::delete_prefix("/o/z/"),
            TxnOp::range("/o/"),
        ]))
        .await
        .unwrap();
    assert!(res.succeeded);
    let rev = res.revision;
    let a = KeyValue {
        key: "/o/a".into(),
        value: b"a".to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: None,
    };
    assert_eq!(
        res.results,
        [
            TxnOpResult::Put,
            TxnOpResult::Get(Some(a.clone())),
            TxnOpResult::Get(None),
            TxnOpResult::Delete { deleted: 0 },
            TxnOpResult::Delete { deleted: 2 },
            TxnOpResult::Range(vec![a]),
        ]
    );

    let before = current_revision(&*s).await;
    let twice = Txn::new().and_then([TxnOp::put("/o/b", b"1"), TxnOp::put("/o/b", b"2")]);
    let r = s.txn(twice).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let overlap = Txn::new().and_then([TxnOp::delete_prefix("/o/"), TxnOp::put("/o/c", b"1")]);
    let r = s.txn(overlap).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    assert_eq!(current_revision(&*s).await, before);
    assert_eq!(s.get("/o/b").await.unwrap(), None);
}

/// N clients compare-and-swap from the same read: exactly one wins.
pub(crate) async fn cas_race_single_winner(fixture: &impl Fixture) {
    const N: usize = 12;
    let s = fixture.connect().await;
    let rev = s.put("/cas/k", b"0".to_vec(), None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = fixture.connect().await;
        tasks.push(tokio::spawn(async move {
            let txn = Txn::new()
                .when([Compare::mod_revision("/cas/k", CompareOp::Equal, rev)])
                .and_then([TxnOp::put("/cas/k", format!("winner {i}"))]);
            (i, client.txn(txn).await.unwrap().succeeded)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let kv = s.get("/cas/k").await.unwrap().unwrap();
    assert_eq!(kv.value, format!("winner {}", winners[0]).into_bytes());
    assert_eq!((kv.mod_revision, kv.version), (rev + 1, 2));
}

/// N workers increment one counter K times each with a read / compare-and-swap loop: exactly
/// N*K swaps succeed and the counter ends at N*K, one revision per swap.
pub(crate) async fn cas_counter_increments(fixture: &impl Fixture) {
    const N: usize = 6;
    const K: usize = 8;
    let s = fixture.connect().await;
    let start = s.put("/cas/counter", b"0".to_vec(), None).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..N {
        let client = fixture.connect().await;
        tasks.push(tokio::spawn(async move {
            let (mut succeeded, mut failed) = (0usize, 0usize);
            while succeeded < K {
                let kv = client.get("/cas/counter").await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        "/cas/counter",
                        CompareOp::Equal,
                        kv.mod_revision,
                    )])
                    .and_then([TxnOp::put("/cas/counter", (n + 1).to_string())]);
                if client.txn(txn).await.unwrap().succeeded {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            (succeeded, failed)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().0;
    }
    assert_eq!(total, N * K);
    let kv = s.get("/cas/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, (N * K).to_string().into_bytes());
    let nk = i64::try_from(N * K).unwrap();
    assert_eq!((kv.version, kv.mod_revision), (nk + 1, start + nk));
}

/// A watch from now delivers every change under its prefix, in order, with full metadata.
pub(crate) async fn watch_ordering(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let mut w = s.watch("/w/", None).await.unwrap();
    let r1 = s.put("/w/a", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("/w/b", b"1".to_vec(), None).await.unwrap();
    let r3 = s
        .txn(Txn::new().and_then([TxnOp::put("/w/a", b"2"), TxnOp::delete("/w/b")]))
        .await
        .unwrap()
        .revision;
    s.put("/x/outside", b"1".to_vec(), None).await.unwrap();
    let r5 = s.put("/w/c", b"1".to_vec(), None).await.unwrap();
    let r6 = s.delete("/w/a").await.unwrap().revision;
    let events = take_events(&mut w, 6).await;
    assert_eq!(
        events,
        [
            put_event("/w/a", b"1", r1, r1, 1),
            put_event("/w/b", b"1", r2, r2, 1),
            put_event("/w/a", b"2", r1, r3, 2),
            delete_event("/w/b", r3),
            put_event("/w/c", b"1", r5, r5, 1),
            delete_event("/w/a", r6),
        ]
    );
    assert_eq!((r3, r5, r6), (r2 + 1, r2 + 3, r2 + 4));
    assert_quiet(&mut w, Duration::from_millis(200)).await;
}

/// A watch "from now" covers every commit made after `watch` returned, even one made before
/// the watch's own machinery (a task, a stream) first runs: the race a Watch handler meets
/// between its snapshot read and the stream's first event.
pub(crate) async fn watch_from_now_sees_next_write(fixture: &impl Fixture) {
    const ROUNDS: usize = 10;
    let s = fixture.connect().await;
    let writer = fixture.connect().await;
    let main = tokio::runtime::Handle::current();
    let worst_case = tokio::task::spawn_blocking(move || {
        // The watch is created on a runtime of its own that is not driven again until the
        // write has committed: nothing the watch spawned can run before the commit, the worst
        // case of a busy controller's scheduling.
        let paused = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for round in 0..ROUNDS {
            let prefix = format!("/now{round}/");
            let key = format!("{prefix}k");
            let mut stream = paused.block_on(s.watch(&prefix, None)).unwrap();
            let rev = main
                .block_on(writer.put(&key, b"v".to_vec(), None))
                .unwrap();
            let event = paused.block_on(async {
                match timeout(Duration::from_secs(2), stream.next()).await {
                    Ok(Some(Ok(event))) => event,
                    Ok(Some(Err(e))) => panic!("round {round}: watch failed: {e}"),
                    Ok(None) => panic!("round {round}: watch ended"),
                    Err(_) => panic!(
                        "round {round}: the put at revision {rev} made right after \
                         watch(None) returned never reached the watch"
                    ),
                }
            });
            assert_eq!(event.key(), key, "round {round}");
            assert_eq!(event.revision(), rev, "round {round}");
        }
    });
    worst_case.await.expect("watch-from-now rounds");
}

/// A watch started in the past while writes go on: history replay hands over to live events
/// without gap or duplicate.
pub(crate) async fn watch_from_revision_during_writes(fixture: &impl Fixture) {
    const BEFORE: usize = 40;
    const DURING: usize = 120;
    let s = fixture.connect().await;
    let mut expected = Vec::new();
    for i in 0..BEFORE {
        let rev = s
            .put(&format!("/h/k{i}"), b"v".to_vec(), None)
            .await
            .unwrap();
        expected.push((format!("/h/k{i}"), rev));
    }
    let writer = fixture.connect().await;
    let background = tokio::spawn(async move {
        let mut revs = Vec::new();
        for i in BEFORE..BEFORE + DURING {
            let key = format!("/h/k{i}");
            let rev = writer.put(&key, b"v".to_vec(), None).await.unwrap();
            revs.push((key, rev));
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        revs
    });
    // Start from the 10th revision while the writer runs.
    let from = expected[9].1;
    let mut w = s.watch("/h/", Some(from)).await.unwrap();
    expected.extend(background.await.unwrap());
    let want: Vec<(String, Revision)> = expected.into_iter().skip(9).collect();
    let got: Vec<(String, Revision)> = take_events(&mut w, want.len())
        .await
        .into_iter()
        .map(|e| (e.key().to_owned(), e.revision()))
        .collect();
    assert_eq!(got, want);
    assert_quiet(&mut w, Duration::from_millis(300)).await;
}

/// A consumer that loses its watch (and its connection) resumes from the revision after the
/// last event it processed, and sees every later change exactly once.
pub(crate) async fn watch_resume_after_reconnect(fixture: &impl Fixture) {
    let s1 = fixture.connect().await;
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            s1.put(&format!("/r/k{i}"), b"v".to_vec(), None)
                .await
                .unwrap(),
        );
    }
    let mut seen: Vec<(String, Revision)> = Vec::new();
    let mut w = s1.watch("/r/", Some(revs[1])).await.unwrap();
    for e in take_events(&mut w, 2).await {
        seen.push((e.key().to_owned(), e.revision()));
    }
    drop(w);
    drop(s1);

    let s2 = fixture.connect().await;
    let multi = s2
        .txn(Txn::new().and_then([TxnOp::put("/r/m1", b"v"), TxnOp::put("/r/m2", b"v")]))
        .await
        .unwrap()
        .revision;
    let last = s2.delete("/r/k0").await.unwrap().revision;
    let resume_from = seen.last().unwrap().1 + 1;
    let mut w = s2.watch("/r/", Some(resume_from)).await.unwrap();
    for e in take_events(&mut w, 4).await {
        seen.push((e.key().to_owned(), e.revision()));
    }
    let want: Vec<(String, Revision)> = vec![
        ("/r/k1".into(), revs[1]),
        ("/r/k2".into(), revs[2]),
        ("/r/k3".into(), revs[3]),
        ("/r/k4".into(), revs[4]),
        ("/r/m1".into(), multi),
        ("/r/m2".into(), multi),
        ("/r/k0".into(), last),
    ];
    assert_eq!(seen[..], want[..6]);
    // The 7th event is the delete; read it separately to check its kind.
    assert_eq!(next_event(&mut w).await, delete_event("/r/k0", last));
    assert_quiet(&mut w, Duration::from_millis(300)).await;
}

/// Compaction: watching from before it fails with `Compacted`, from it on works; compacting
/// backwards is a no-op, forwards past the current revision an error.
pub(crate) async fn watch_compacted(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let mut revs = Vec::new();
    for i in 0..8 {
        revs.push(
            s.put(&format!("/c/k{i}"), b"v".to_vec(), None)
                .await
                .unwrap(),
        );
    }
    s.compact(revs[4]).await.unwrap();

    let mut w = s.watch("/c/", Some(revs[1])).await.unwrap();
    match timeout(EVENT_TIMEOUT, w.next()).await {
        Ok(Some(Err(Error::Compacted {
            requested,
            compacted,
        }))) => {
            assert_eq!((requested, compacted), (revs[1], revs[4]));
        }
        other => panic!("expected a Compacted error, got {other:?}"),
    }
    assert!(
        matches!(timeout(EVENT_TIMEOUT, w.next()).await, Ok(None)),
        "stream ends after the error"
    );

    let mut w = s.watch("/c/", Some(revs[4])).await.unwrap();
    let got: Vec<Revision> = take_events(&mut w, 4)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(got, revs[4..]);

    s.compact(revs[2])
        .await
        .expect("compacting below the compaction point is a no-op");
    let current = *revs.last().unwrap();
    match s.compact(current + 100).await {
        Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, current + 100),
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    s.compact(current).await.unwrap();
    let r = s.watch("/c/", Some(0)).await;
    assert!(
        matches!(r, Err(Error::InvalidArgument { .. })),
        "start revision 0 is invalid"
    );
}

/// An expired lease deletes its keys (and only them), in one revision, visible to watches.
pub(crate) async fn lease_expiry(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let lease = s.lease_grant(Duration::from_secs(1)).await.unwrap();
    s.put("/l/a", b"a".to_vec(), Some(lease)).await.unwrap();
    s.txn(Txn::new().and_then([TxnOp::put_with_lease("/l/b", b"b", lease)]))
        .await
        .unwrap();
    s.put("/l/c", b"c".to_vec(), None).await.unwrap();
    assert_eq!(s.get("/l/a").await.unwrap().unwrap().lease, Some(lease));
    let mut w = s.watch("/l/", None).await.unwrap();

    let events = take_events(&mut w, 2).await;
    let deleted: BTreeSet<&str> = events.iter().map(WatchEvent::key).collect();
    assert_eq!(deleted, BTreeSet::from(["/l/a", "/l/b"]));
    assert!(
        events
            .iter()
            .all(|e| matches!(e, WatchEvent::Delete { .. })),
        "{events:?}"
    );
    assert_eq!(
        events[0].revision(),
        events[1].revision(),
        "one revision for the expiry"
    );
    assert_eq!(s.get("/l/a").await.unwrap(), None);
    assert_eq!(s.get("/l/b").await.unwrap(), None);
    assert!(s.get("/l/c").await.unwrap().is_some());

    let r = s.lease_keep_alive(lease).await;
    assert!(
        matches!(r, Err(Error::LeaseNotFound { lease: l, .. }) if l == lease),
        "{r:?}"
    );
    let r = s.put("/l/d", b"d".to_vec(), Some(lease)).await;
    assert!(matches!(r, Err(Error::LeaseNotFound { .. })), "{r:?}");
    let r = s
        .txn(Txn::new().and_then([TxnOp::put_with_lease("/l/d", b"d", lease)]))
        .await;
    assert!(matches!(r, Err(Error::LeaseNotFound { .. })), "{r:?}");
    assert_eq!(s.get("/l/d").await.unwrap(), None);
}

/// Keep-alives hold a lease past its TTL; revoking deletes its keys at once.
pub(crate) async fn lease_keep_alive_and_revoke(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    let lease = s.lease_grant(Duration::from_secs(2)).await.unwrap();
    s.put("/k/a", b"a".to_vec(), Some(lease)).await.unwrap();
    // Moving a key to no lease detaches it: it survives the revoke.
    s.put("/k/detached", b"x".to_vec(), Some(lease))
        .await
        .unwrap();
    s.put("/k/detached", b"y".to_vec(), None).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ttl = s.lease_keep_alive(lease).await.unwrap();
        assert_eq!(ttl, Duration::from_secs(2));
    }
    assert!(
        s.get("/k/a").await.unwrap().is_some(),
        "kept alive for 4 s with a 2 s TTL"
    );

    let mut w = s.watch("/k/", None).await.unwrap();
    s.lease_revoke(lease).await.unwrap();
    let event = next_event(&mut w).await;
    assert!(
        matches!(&event, WatchEvent::Delete { key, .. } if key == "/k/a"),
        "{event:?}"
    );
    assert_eq!(s.get("/k/a").await.unwrap(), None);
    assert!(s.get("/k/detached").await.unwrap().is_some());

    let r = s.lease_revoke(lease).await;
    assert!(matches!(r, Err(Error::LeaseNotFound { .. })), "{r:?}");
    let r = s.lease_keep_alive(lease).await;
    assert!(matches!(r, Err(Error::LeaseNotFound { .. })), "{r:?}");
    let r = s.lease_grant(Duration::from_secs(u64::MAX)).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    assert_quiet(&mut w, Duration::from_millis(200)).await;
}

/// A range larger than gRPC's default 4 MiB message limit is read whole, and so is a watch
/// event batch of that size: one network's records pass that size at about 5000 peers (a
/// 5000-agent bench failed reading 4.3 MiB from etcd with "decoded message length too large").
pub(crate) async fn large_range(fixture: &impl Fixture) {
    let s = fixture.connect().await;
    // Six values of 900 KiB: under etcd's 1.5 MiB request limit each, 5.3 MiB together.
    let value = vec![7u8; 900 << 10];
    let from = current_revision(s.as_ref()).await + 1;
    let mut watch = s.watch("/large/", Some(from)).await.expect("watch");
    for i in 0..6 {
        s.put(&format!("/large/{i}"), value.clone(), None)
            .await
            .expect("put 900 KiB");
    }
    let range = s.range("/large/").await.expect("range of 5.3 MiB");
    assert_eq!(range.kvs.len(), 6);
    assert!(range.kvs.iter().all(|kv| kv.value == value));
    let mut seen = 0;
    while seen < 6 {
        let event = timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch event in time")
            .expect("watch open")
            .expect("watch event");
        assert_eq!(event.key(), format!("/large/{seen}"));
        seen += 1;
    }
}
