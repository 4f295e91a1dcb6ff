//! The Join path's store traffic: with the network's watch hub running and the caches warm,
//! a Join is one store round trip (one transaction) and one event for watchers.

use std::sync::Arc;

use base64::Engine as _;
use cladnet_proto::v1 as pb;

use crate::{auth::AdminAuth, keys, service::Controller};

const NET: &str = "net";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Store operations so far, by operation (the controller's `store_latency` counts).
fn store_ops(ctl: &Controller) -> std::collections::BTreeMap<String, u64> {
    ctl.metrics()
        .encode()
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("store_latency_seconds_count{op=\"")?.1;
            let (op, count) = rest.split_once("\"} ")?;
            Some((op.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

/// Joins node `i` to network `net` with a valid proof; returns the response.
async fn join_to(ctl: &Controller, net: &str, token: &str, i: u8) -> pb::JoinResponse {
    join_with_key(ctl, net, token, i, i + 1).await.unwrap()
}

/// Joins node `i` to network `net` with the key of seed `key` and a valid proof.
async fn join_with_key(
    ctl: &Controller,
    net: &str,
    token: &str,
    i: u8,
    key: u8,
) -> crate::error::Result<pb::JoinResponse> {
    let private = [key; 32];
    let public_key = b64().encode(cladnet_proto::join::public_key(&private));
    let challenge = ctl.join_challenge().await.unwrap();
    let controller: [u8; 32] = b64()
        .decode(&challenge.controller_public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let nonce = b64().decode(&challenge.nonce).unwrap();
    let host_id = format!("n{i}");
    let proof =
        cladnet_proto::join::proof(&private, &controller, &nonce, net, &host_id, &public_key)
            .unwrap();
    let req = pb::JoinRequest {
        cladnet_id: net.into(),
        host_id,
        public_key,
        public_endpoint: format!("198.18.0.{i}:8055"),
        listen_port: 8055,
        nonce: challenge.nonce,
        proof: b64().encode(proof),
        ..Default::default()
    };
    ctl.join(token, req).await
}

/// Joins node `i` of [`NET`]; returns its session token.
async fn join(ctl: &Controller, token: &str, i: u8) -> String {
    join_to(ctl, NET, token, i).await.session_token
}

/// A controller on a fresh embedded store (in `dir`) with network `net` (10.9.0.0/24, or
/// 10.8.0.0/24 for any other) and a join token for it, limited to `max_uses` joins.
async fn setup(
    dir: &tempfile::TempDir,
    nets: &[&str],
    max_uses: u32,
) -> (Arc<dyn cladnet_store::Store>, Arc<Controller>, Vec<String>) {
    let url = format!("embedded:{}", dir.path().join("s.redb").display());
    let store = cladnet_store::connect(&url.parse().unwrap()).await.unwrap();
    crate::layout::ensure(store.as_ref()).await.unwrap();
    let ctl = Arc::new(Controller::new(
        store.clone(),
        AdminAuth::new("0123456789abcdef").unwrap(),
    ));
    let mut tokens = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        ctl.create_network(pb::Network {
            cladnet_id: (*net).into(),
            ipv4_address_space: format!("10.{}.0.0/24", 9 - i),
            ..Default::default()
        })
        .await
        .unwrap();
        tokens.push(
            ctl.create_join_token(pb::CreateJoinTokenRequest {
                cladnet_id: (*net).into(),
                max_uses,
                ..Default::default()
            })
            .await
            .unwrap()
            .token,
        );
    }
    (store, ctl, tokens)
}

/// The store operations `f` makes, by operation (only those it makes).
async fn ops_of<F: Future<Output = T>, T>(ctl: &Controller, f: F) -> (Vec<(String, u64)>, T) {
    let before = store_ops(ctl);
    let out = f.await;
    let after = store_ops(ctl);
    let delta = after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    (delta, out)
}

/// Issue 16, item 2: what a Join writes that watchers see. The network's watch hub follows
/// `keys::watched(net)`; a Join (a new node with a counted token use, and a re-join) must be
/// one event there, and joins of another network (`net1`, a prefix of whose keys is `net`'s
/// without the separator) none. With layout 1 (everything under `/cladnet/v1/networks/{net}`,
/// watched without the separator) a new node's Join was 6 events (peer, session, address,
/// allocation generation, key index, token) and a re-join 2.
#[tokio::test]
async fn a_join_is_one_event_on_the_watched_prefix() {
    use futures::StreamExt as _;

    let dir = tempfile::tempdir().unwrap();
    let (store, ctl, tokens) = setup(&dir, &[NET, "net1"], 10).await;
    let start = store.range("/").await.unwrap().revision + 1;
    let mut events = store.watch(&keys::watched(NET), Some(start)).await.unwrap();

    let first = join_to(&ctl, NET, &tokens[0], 1).await;
    let again = join_to(&ctl, NET, &tokens[0], 1).await;
    join_to(&ctl, "net1", &tokens[1], 2).await;
    // The end of what the joins wrote, seen by the same watch.
    let sentinel = keys::test(NET, "sentinel");
    store.put(&sentinel, b"{}".to_vec(), None).await.unwrap();

    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("watch delivers")
            .expect("watch open")
            .unwrap();
        if event.key() == sentinel {
            break;
        }
        seen.push((event.revision(), event.key().to_owned()));
    }
    let peer = keys::peer(NET, "n1");
    let revisions = [first.peer.unwrap().revision, again.peer.unwrap().revision];
    assert_eq!(
        seen,
        [(revisions[0], peer.clone()), (revisions[1], peer)],
        "events on {} of two Joins (and one in another network)",
        keys::watched(NET)
    );
}

#[tokio::test]
async fn a_join_is_one_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, ctl, tokens) = setup(&dir, &[NET], 100).await;
    let token = &tokens[0];
    // The first Join fills the caches (network, token, allocations); its Watch starts the
    // network's hub.
    let session = join(&ctl, token, 1).await;
    let watch = pb::WatchRequest {
        cladnet_id: NET.into(),
        host_id: "n1".into(),
        ..Default::default()
    };
    let _stream = ctl.watch(&session, watch).await.unwrap();

    let txn = vec![("txn".to_owned(), 1)];
    let (ops, _) = ops_of(&ctl, join(&ctl, token, 2)).await;
    assert_eq!(ops, txn, "store operations of a new node's Join");
    let (ops, _) = ops_of(&ctl, join(&ctl, token, 3)).await;
    assert_eq!(ops, txn, "store operations of the next Join");
    // A re-join (a restarted agent) once the hub's table has the node.
    for _ in 0..200 {
        if ctl.hubs.join_view(NET, "n3", "").await.unwrap().0.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (ops, _) = ops_of(&ctl, join(&ctl, token, 3)).await;
    assert_eq!(ops, txn, "store operations of a re-join");
}

/// Another controller's allocation makes the cached view stale: the Join's transaction fails
/// on the allocation generation, the cache reloads, and the retry takes the next free
/// address.
#[tokio::test]
async fn another_controllers_allocation_reloads_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (store, one, tokens) = setup(&dir, &[NET], 0).await;
    let two = Controller::new(store, AdminAuth::new("0123456789abcdef").unwrap());
    let token = &tokens[0];
    let a = join_to(&one, NET, token, 1).await;
    // With a stream on `one`, its hub runs (the endpoint check reads its table).
    let watch = pb::WatchRequest {
        cladnet_id: NET.into(),
        host_id: "n1".into(),
        ..Default::default()
    };
    let _stream = one.watch(&a.session_token, watch).await.unwrap();
    let b = join_to(&two, NET, token, 2).await;
    // `one` cached .2 as the last allocation and would hand out .3 again.
    let (ops, c) = ops_of(&one, join_to(&one, NET, token, 3)).await;
    let ips: Vec<String> = [a, b, c].into_iter().map(|r| r.peer.unwrap().ip).collect();
    assert_eq!(ips, ["10.9.0.2", "10.9.0.3", "10.9.0.4"]);
    // The failed write (whose failure branch read the records again), the allocations'
    // reload, the write.
    assert_eq!(ops, [("txn".to_owned(), 3)]);
}

/// A store whose watches deliver nothing while the gate is closed (a watch hub falling
/// behind the store).
#[derive(Debug)]
struct Gated {
    inner: Arc<dyn cladnet_store::Store>,
    open: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl cladnet_store::Store for Gated {
    async fn get(&self, key: &str) -> cladnet_store::Result<Option<cladnet_store::KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> cladnet_store::Result<cladnet_store::RangeResult> {
        self.inner.range(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<cladnet_store::LeaseId>,
    ) -> cladnet_store::Result<cladnet_store::Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> cladnet_store::Result<cladnet_store::DeleteResult> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(
        &self,
        prefix: &str,
    ) -> cladnet_store::Result<cladnet_store::DeleteResult> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(
        &self,
        txn: cladnet_store::Txn,
    ) -> cladnet_store::Result<cladnet_store::TxnResult> {
        self.inner.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        start: Option<cladnet_store::Revision>,
    ) -> cladnet_store::Result<cladnet_store::WatchStream> {
        use futures::StreamExt as _;
        let events = self.inner.watch(prefix, start).await?;
        let gate = self.open.subscribe();
        Ok(Box::pin(futures::stream::unfold(
            (events, gate),
            |(mut events, mut gate)| async move {
                let next = events.next().await?;
                // Held while the gate is closed, wherever it closed.
                gate.wait_for(|open| *open).await.ok()?;
                Some((next, (events, gate)))
            },
        )))
    }
    async fn compact(&self, revision: cladnet_store::Revision) -> cladnet_store::Result<()> {
        self.inner.compact(revision).await
    }
    async fn lease_grant(
        &self,
        ttl: std::time::Duration,
    ) -> cladnet_store::Result<cladnet_store::LeaseId> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(
        &self,
        id: cladnet_store::LeaseId,
    ) -> cladnet_store::Result<std::time::Duration> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: cladnet_store::LeaseId) -> cladnet_store::Result<()> {
        self.inner.lease_revoke(id).await
    }
}

/// A Join works from the hub's table, which may lag the store: a peer deleted a moment ago
/// and joining again with a new key (a reinstalled host, after `cladnet peer delete`) is
/// admitted on a fresh read, not refused on the stale table; a takeover attempt (another key
/// for a registered node) is still refused.
#[tokio::test]
async fn a_lagging_hub_table_does_not_refuse_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, _, tokens) = setup(&dir, &[NET], 0).await;
    let (open, _) = tokio::sync::watch::channel(true);
    let store: Arc<dyn cladnet_store::Store> = Arc::new(Gated {
        inner,
        open: open.clone(),
    });
    let ctl = Controller::new(store, AdminAuth::new("0123456789abcdef").unwrap());
    let token = &tokens[0];
    let first = join_with_key(&ctl, NET, token, 1, 1).await.unwrap();
    let watch = pb::WatchRequest {
        cladnet_id: NET.into(),
        host_id: "n1".into(),
        ..Default::default()
    };
    let _stream = ctl.watch(&first.session_token, watch).await.unwrap();
    for _ in 0..200 {
        if ctl.hubs.join_view(NET, "n1", "").await.unwrap().0.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ctl.hubs.join_view(NET, "n1", "").await.unwrap().0.is_some());

    // A takeover attempt: refused (the table and the store agree).
    let takeover = join_with_key(&ctl, NET, token, 1, 9).await.unwrap_err();
    assert!(
        takeover.to_string().contains("another public key"),
        "{takeover}"
    );

    // The hub stops following; the node is deleted and joins with a new key.
    open.send_replace(false);
    ctl.delete_peer(NET, "n1").await.unwrap();
    assert!(ctl.hubs.join_view(NET, "n1", "").await.unwrap().0.is_some());
    let again = join_with_key(&ctl, NET, token, 1, 9).await.unwrap();
    assert_eq!(again.peer.unwrap().host_id, "n1");
    open.send_replace(true);
}
