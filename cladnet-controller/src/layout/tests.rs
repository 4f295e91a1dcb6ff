//! The layout check and the migration of a layout-1 store, on the embedded backend.

use std::sync::Arc;

use cladnet_store::Store;

use super::{LayoutError, OLD_ROOT, Outcome, ensure};
use crate::{
    auth::{AdminAuth, sha256_hex},
    keys,
    model::{self, NetworkRecord, PeerRecord, PeerState, SCHEMA, SiteRecord, TokenRecord},
    service::Controller,
};

const SESSION: &str = "cns.0123456789abcdef";

async fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("embedded:{}", dir.path().join("s.redb").display());
    cladnet_store::connect(&url.parse().unwrap()).await.unwrap()
}

fn network() -> NetworkRecord {
    NetworkRecord {
        schema: SCHEMA,
        id: "net".into(),
        name: "net".into(),
        cidr: "10.9.0.0/24".parse().unwrap(),
        description: String::new(),
        rule_type: Default::default(),
        encryption: Default::default(),
        route_approval: Default::default(),
        exit_nodes: Default::default(),
        created_at: 1,
    }
}

fn peer(node: &str, ip: [u8; 4]) -> PeerRecord {
    PeerRecord {
        schema: SCHEMA,
        node_id: node.into(),
        host_name: node.into(),
        overlay_ip: ip.into(),
        state: PeerState::Up,
        public_key: "AAAA".into(),
        public_endpoint: Some("198.18.0.1:8055".parse().unwrap()),
        private_endpoint: None,
        host_private_cidr: None,
        interfaces: Vec::new(),
        capabilities: Vec::new(),
        site: SiteRecord::default(),
        dataplane: String::new(),
        dataplane_reason: String::new(),
        joined_at: 1,
        updated_at: 1,
        external: false,
        routes: Vec::new(),
        // Layout 1 kept sessions in keys of their own: the record had no such field.
        session_sha256: None,
    }
}

/// A store as a layout-1 controller left it: two networks (`net` and `net1`, whose keys
/// share a prefix without the separator), a peer with its session, address, generation,
/// key index, token, command, test and result; statistics and the join key (not moved).
async fn layout_1(store: &dyn Store) -> usize {
    let token = TokenRecord {
        schema: SCHEMA,
        id: "t1".into(),
        secret_sha256: sha256_hex("secret"),
        description: String::new(),
        created_at: 1,
        expires_at: 0,
        max_uses: 0,
        uses: 0,
    };
    let old: Vec<(&str, Vec<u8>)> = vec![
        ("/cladnet/v1/networks/net", model::encode(&network())),
        (
            "/cladnet/v1/networks/net/peers/a",
            model::encode(&peer("a", [10, 9, 0, 1])),
        ),
        (
            "/cladnet/v1/networks/net/sessions/a",
            sha256_hex(SESSION).into_bytes(),
        ),
        ("/cladnet/v1/networks/net/ipam/10.9.0.1", b"a".to_vec()),
        (
            "/cladnet/v1/networks/net/ipam-generation",
            b"10.9.0.1".to_vec(),
        ),
        ("/cladnet/v1/networks/net/routes-generation", b"a".to_vec()),
        ("/cladnet/v1/networks/net/pubkeys/000000", b"a".to_vec()),
        ("/cladnet/v1/networks/net/tokens/t1", model::encode(&token)),
        ("/cladnet/v1/networks/net/commands/a", b"{}".to_vec()),
        ("/cladnet/v1/networks/net/tests/x", b"{}".to_vec()),
        ("/cladnet/v1/networks/net/results/x/a", b"{}".to_vec()),
        (
            "/cladnet/v1/networks/net1",
            model::encode(&NetworkRecord {
                id: "net1".into(),
                name: "net1".into(),
                ..network()
            }),
        ),
        (
            "/cladnet/v1/networks/net1/peers/b",
            model::encode(&peer("b", [10, 9, 0, 1])),
        ),
    ];
    for (key, value) in &old {
        store.put(key, value.clone(), None).await.unwrap();
    }
    store
        .put("/cladnet/v1/stats/net/a", b"{}".to_vec(), None)
        .await
        .unwrap();
    store
        .put(keys::join_key(), b"k".to_vec(), None)
        .await
        .unwrap();
    old.len()
}

#[tokio::test]
async fn a_layout_1_store_is_migrated_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    let written = layout_1(store.as_ref()).await;

    assert_eq!(
        ensure(store.as_ref()).await.unwrap(),
        Outcome::Migrated(written)
    );
    assert!(store.range(OLD_ROOT).await.unwrap().kvs.is_empty());
    let marker = store.get(keys::layout()).await.unwrap().unwrap();
    assert_eq!(marker.value, b"2");
    let ip = std::net::Ipv4Addr::new(10, 9, 0, 1);
    for key in [
        keys::network("net"),
        keys::peer("net", "a"),
        keys::ipam_addr("net", ip),
        keys::alloc_generation("net"),
        keys::routes_generation("net"),
        keys::internal("net") + "pubkeys/000000",
        keys::token("net", "t1"),
        keys::command("net", "a"),
        keys::test("net", "x"),
        keys::result("net", "x", "a"),
        keys::network("net1"),
        keys::peer("net1", "b"),
        "/cladnet/v1/stats/net/a".to_owned(),
        keys::join_key().to_owned(),
    ] {
        assert!(store.get(&key).await.unwrap().is_some(), "{key} missing");
    }
    // Agent-visible records only under the watched prefix; nothing else of `net` there.
    let watched: Vec<String> = store
        .range(&keys::watched("net"))
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        watched,
        [
            keys::command("net", "a"),
            keys::network("net"),
            keys::peer("net", "a"),
            keys::test("net", "x"),
        ]
    );

    // A controller serves the migrated store: records, tokens, and the session an agent got
    // from the old controller.
    let ctl = Controller::new(store.clone(), AdminAuth::new("0123456789abcdef").unwrap());
    let nets = ctl.list_networks().await.unwrap().cladnet_specifications;
    assert_eq!(
        nets.iter()
            .map(|n| n.cladnet_id.as_str())
            .collect::<Vec<_>>(),
        ["net", "net1"]
    );
    assert_eq!(ctl.list_peers("net").await.unwrap().peers.len(), 1);
    assert_eq!(ctl.list_join_tokens("net").await.unwrap().tokens.len(), 1);
    ctl.check_session("net", "a", SESSION).await.unwrap();
    let wrong = ctl
        .check_session("net", "a", "cns.other")
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("invalid session token"),
        "{wrong}"
    );
    // Peer b of net1 had no session: it must join again.
    assert!(ctl.check_session("net1", "b", SESSION).await.is_err());

    assert_eq!(ensure(store.as_ref()).await.unwrap(), Outcome::Current);
}

#[tokio::test]
async fn concurrent_controllers_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    let written = layout_1(store.as_ref()).await;
    let (a, b) = tokio::join!(ensure(store.as_ref()), ensure(store.as_ref()));
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, Outcome::Migrated(_)));
    assert_eq!(outcomes, [Outcome::Current, Outcome::Migrated(written)]);
    assert!(store.range(OLD_ROOT).await.unwrap().kvs.is_empty());
    let peer: PeerRecord =
        model::decode(&store.get(&keys::peer("net", "a")).await.unwrap().unwrap()).unwrap();
    assert_eq!(peer.session_sha256, Some(sha256_hex(SESSION)));
}

#[tokio::test]
async fn a_fresh_store_gets_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    assert_eq!(ensure(store.as_ref()).await.unwrap(), Outcome::Fresh);
    assert_eq!(ensure(store.as_ref()).await.unwrap(), Outcome::Current);
}

#[tokio::test]
async fn a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    store
        .put(keys::layout(), b"3".to_vec(), None)
        .await
        .unwrap();
    let e = ensure(store.as_ref()).await.unwrap_err();
    assert!(matches!(e, LayoutError::Unknown { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("layout \"3\"") && text.contains("newer controller"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unknown_old_key_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    layout_1(store.as_ref()).await;
    store
        .put("/cladnet/v1/networks/net/mystery/1", b"?".to_vec(), None)
        .await
        .unwrap();
    let before = store.range("/").await.unwrap();
    let e = ensure(store.as_ref()).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("/cladnet/v1/networks/net/mystery/1") && text.contains("nothing was changed"),
        "{text}"
    );
    let after = store.range("/").await.unwrap();
    assert_eq!(before, after);
}

/// A store on which an old controller writes while the migration copies: before the commit
/// (the transaction that reads the old keys), it changes a peer record, adds a command and
/// deletes a test, all in layout 1.
#[derive(Debug)]
struct OldWriter {
    inner: Arc<dyn Store>,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for OldWriter {
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
        let commit = txn
            .success
            .iter()
            .any(|op| matches!(op, cladnet_store::TxnOp::Range { .. }));
        if commit && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let mut moved = peer("a", [10, 9, 0, 1]);
            moved.public_endpoint = Some("198.18.0.9:8055".parse().unwrap());
            self.inner
                .put(
                    "/cladnet/v1/networks/net/peers/a",
                    model::encode(&moved),
                    None,
                )
                .await?;
            self.inner
                .put("/cladnet/v1/networks/net/commands/b", b"{}".to_vec(), None)
                .await?;
            self.inner
                .delete("/cladnet/v1/networks/net/tests/x")
                .await?;
        }
        self.inner.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        start: Option<cladnet_store::Revision>,
    ) -> cladnet_store::Result<cladnet_store::WatchStream> {
        self.inner.watch(prefix, start).await
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

#[tokio::test]
async fn writes_of_an_old_controller_during_the_copy_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let inner = embedded(&dir).await;
    let written = layout_1(inner.as_ref()).await;
    let store = OldWriter {
        inner: inner.clone(),
        done: false.into(),
    };
    // The count is of the keys read before the copy.
    assert_eq!(ensure(&store).await.unwrap(), Outcome::Migrated(written));
    assert!(inner.range(OLD_ROOT).await.unwrap().kvs.is_empty());
    let a: PeerRecord =
        model::decode(&inner.get(&keys::peer("net", "a")).await.unwrap().unwrap()).unwrap();
    assert_eq!(a.public_endpoint, Some("198.18.0.9:8055".parse().unwrap()));
    // The session hash still comes with it.
    assert_eq!(a.session_sha256, Some(sha256_hex(SESSION)));
    assert!(
        inner
            .get(&keys::command("net", "b"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(inner.get(&keys::test("net", "x")).await.unwrap().is_none());
}
