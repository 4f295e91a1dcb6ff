//! The hub's table and streams against the store: the table equals a fresh store read, every
//! stream (new, resumed, lagging) ends with the store's peers, one store watch at a time.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use cladnet_store::{DeleteResult, KeyValue, LeaseId, RangeResult, Txn, TxnOp, TxnResult};
use proptest::prelude::*;

use super::*;
use crate::{
    model::{PeerState, SCHEMA, SiteRecord},
    service::watch::{WatchStream, follow},
};

const NET: &str = "net";

fn network(description: &str) -> NetworkRecord {
    NetworkRecord {
        schema: SCHEMA,
        id: NET.into(),
        name: NET.into(),
        cidr: "10.9.0.0/24".parse().unwrap(),
        description: description.into(),
        rule_type: Default::default(),
        encryption: Default::default(),
        route_approval: Default::default(),
        exit_nodes: Default::default(),
        created_at: 1,
    }
}

fn peer(node: u8, port: u16) -> PeerRecord {
    PeerRecord {
        schema: SCHEMA,
        node_id: format!("n{node}"),
        host_name: format!("host-{node}"),
        overlay_ip: std::net::Ipv4Addr::new(10, 9, 0, node + 1),
        state: PeerState::Joining,
        public_key: format!("key-{node}"),
        public_endpoint: Some(SocketAddrV4::new([198, 18, 0, node].into(), port)),
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
        session_sha256: None,
    }
}

/// A store that counts its open watches and can commit writes at chosen moments of the hub's
/// start (a Join landing in a race window).
#[derive(Debug)]
struct Probe {
    inner: Arc<dyn Store>,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// Peers put right after `watch` returns, right before and right after the table read.
    inject: Mutex<[Option<u8>; 3]>,
}

impl Probe {
    fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            open: Arc::default(),
            most: Arc::default(),
            inject: Mutex::new([None; 3]),
        })
    }

    async fn inject(&self, at: usize) {
        let node = self.inject.lock().unwrap()[at].take();
        if let Some(node) = node {
            put_peer(self.inner.as_ref(), node, 9000).await;
        }
    }
}

/// Decrements the open-watch count when the stream is dropped.
struct Counted {
    inner: cladnet_store::WatchStream,
    open: Arc<AtomicUsize>,
}

impl futures::Stream for Counted {
    type Item = cladnet_store::Result<WatchEvent>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Store for Probe {
    async fn get(&self, key: &str) -> cladnet_store::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> cladnet_store::Result<RangeResult> {
        self.inner.range(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> cladnet_store::Result<Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> cladnet_store::Result<DeleteResult> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> cladnet_store::Result<DeleteResult> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> cladnet_store::Result<TxnResult> {
        self.inject(1).await;
        let res = self.inner.txn(txn).await;
        self.inject(2).await;
        res
    }
    async fn watch(
        &self,
        prefix: &str,
        start: Option<Revision>,
    ) -> cladnet_store::Result<cladnet_store::WatchStream> {
        let inner = self.inner.watch(prefix, start).await?;
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(open, Ordering::SeqCst);
        self.inject(0).await;
        Ok(Box::pin(Counted {
            inner,
            open: self.open.clone(),
        }))
    }
    async fn compact(&self, revision: Revision) -> cladnet_store::Result<()> {
        self.inner.compact(revision).await
    }
    async fn lease_grant(&self, ttl: Duration) -> cladnet_store::Result<LeaseId> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> cladnet_store::Result<Duration> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> cladnet_store::Result<()> {
        self.inner.lease_revoke(id).await
    }
}

async fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("embedded:{}", dir.path().join("s.redb").display());
    cladnet_store::connect(&url.parse().unwrap()).await.unwrap()
}

async fn put_peer(store: &dyn Store, node: u8, port: u16) -> Revision {
    let record = peer(node, port);
    store
        .put(
            &keys::peer(NET, &record.node_id),
            model::encode(&record),
            None,
        )
        .await
        .unwrap()
}

/// An agent's view, kept from its stream as the agent does.
struct Agent {
    stream: WatchStream,
    /// It asked for batches (an old agent does not, and must never get one).
    batches: bool,
    revision: Revision,
    network: Option<pb::Network>,
    peers: BTreeMap<String, pb::Peer>,
}

impl Agent {
    fn new(stream: WatchStream, batches: bool) -> Self {
        Self {
            stream,
            batches,
            revision: 0,
            network: None,
            peers: BTreeMap::new(),
        }
    }

    fn apply(&mut self, bytes: &[u8]) {
        let event = pb::WatchEvent::decode(bytes).expect("a WatchEvent");
        if let Some(Event::Batch(batch)) = event.event {
            assert!(
                self.batches,
                "a batch for an agent that did not ask for one"
            );
            assert!(batch.events.len() > 1, "a batch of {}", batch.events.len());
            let last = batch.events.last().map(|e| e.revision);
            assert_eq!(
                Some(event.revision),
                last,
                "a batch's revision is its last change's"
            );
            for inner in batch.events {
                assert!(
                    !matches!(inner.event, Some(Event::Snapshot(_) | Event::Batch(_))),
                    "a batch holds changes only: {inner:?}"
                );
                self.apply(&inner.encode_to_vec());
            }
            return;
        }
        // Changes come in revision order (a snapshot replaces the view whatever its revision).
        assert!(
            event.revision >= self.revision || matches!(event.event, Some(Event::Snapshot(_))),
            "revision went back from {} to {}: {event:?}",
            self.revision,
            event.revision
        );
        self.revision = event.revision;
        match event.event.expect("an event") {
            Event::Snapshot(s) => {
                self.network = s.network;
                self.peers = s
                    .peers
                    .into_iter()
                    .map(|p| (p.host_id.clone(), p))
                    .collect();
            }
            Event::PeerUpserted(p) => {
                self.peers.insert(p.host_id.clone(), p);
            }
            Event::PeerRemoved(node) => {
                self.peers.remove(&node);
            }
            Event::NetworkUpdated(n) => self.network = Some(n),
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// Reads until the view equals `want` (or fails after 5 s).
    async fn settle(&mut self, want: &(pb::Network, BTreeMap<String, pb::Peer>)) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.network.as_ref() != Some(&want.0) || self.peers != want.1 {
            let item = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "the agent never caught up: has {:?}\nwants {:?}",
                        self.peers.values().collect::<Vec<_>>(),
                        want.1.values().collect::<Vec<_>>()
                    )
                })
                .expect("stream open")
                .expect("no error");
            self.apply(&unframe(&item));
        }
    }
}

/// What a fresh store read says an agent should hold.
async fn expected(store: &dyn Store) -> (Revision, pb::Network, BTreeMap<String, pb::Peer>) {
    let (network, network_revision, peers, revision) = read_table(store, NET).await.unwrap();
    let peers = peers
        .iter()
        .map(|kv| {
            let p: PeerRecord = model::decode(kv).unwrap();
            (p.node_id.clone(), p.to_proto(&network, kv.mod_revision))
        })
        .collect();
    (revision, network.to_proto(network_revision), peers)
}

/// Waits for the hub to reach the store's revision, then checks its table against a read.
/// Changes agents do not consume never reach the hub (they are outside the watched prefix):
/// a command for a node no stream belongs to, written first, is the last revision, and the
/// hub must reach it.
async fn check_table(hub: &Hub, store: &dyn Store) {
    let sentinel = CommandRecord {
        schema: SCHEMA,
        command_type: "up".into(),
        command_id: "sentinel".into(),
        issued_at: 1,
        routes: Vec::new(),
    };
    store
        .put(
            &keys::command(NET, "sentinel"),
            model::encode(&sentinel),
            None,
        )
        .await
        .unwrap();
    let (network, _, peers, revision) = read_table(store, NET).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.table().0 < revision {
        assert!(Instant::now() < deadline, "hub stuck");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (seen, hub_network, hub_peers) = hub.table();
    assert_eq!(seen, revision);
    assert_eq!(model::encode(&hub_network), model::encode(&network));
    let want: Vec<_> = peers
        .iter()
        .map(|kv| (kv.value.clone(), kv.mod_revision))
        .collect();
    let have: Vec<_> = hub_peers
        .iter()
        .map(|(p, r)| (model::encode(p), *r))
        .collect();
    assert_eq!(
        have, want,
        "hub table differs from the store at revision {revision}"
    );
}

#[derive(Clone, Debug)]
enum Op {
    /// A peer record written (a Report).
    Upsert(u8, u16),
    /// A Join: peer (with its session) and address in one transaction.
    Join(u8, u16),
    /// A peer deleted with its address.
    Remove(u8),
    /// A key agents do not see.
    Other(u8),
    /// A peer of network `net0`, whose id starts with this network's: the hub's prefix ends
    /// with the separator, so the hub never sees it.
    Neighbour(u8, u16),
    /// The network record changed.
    Network(u8),
    /// A new stream.
    Attach,
    /// Agent `i` reconnects with the revision it processed last, minus `back`.
    Resume(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u16..60000).prop_map(|(n, p)| Op::Upsert(n, p)),
        3 => (0u8..6, 1u16..60000).prop_map(|(n, p)| Op::Join(n, p)),
        2 => (0u8..6).prop_map(Op::Remove),
        1 => (0u8..6).prop_map(Op::Other),
        1 => (0u8..6, 1u16..60000).prop_map(|(n, p)| Op::Neighbour(n, p)),
        1 => (0u8..4).prop_map(Op::Network),
        1 => Just(Op::Attach),
        2 => (0usize..4, 0i64..6).prop_map(|(i, b)| Op::Resume(i, b)),
    ]
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let inner = embedded(&dir).await;
    inner
        .put(&keys::network(NET), model::encode(&network("0")), None)
        .await
        .unwrap();
    put_peer(inner.as_ref(), 0, 1).await;
    let probe = Probe::new(inner.clone());
    let store: Arc<dyn Store> = probe.clone();
    // Tiny buffers: agents that are not read (streams are polled only when read, as the gRPC
    // task does) fall behind within a few changes, and the history is short enough that old
    // resumes need snapshots.
    // A short linger: changes are held and sent together now and then.
    let hubs = Arc::new(Hubs::new(Limits {
        capacity: 2,
        history: 3,
        linger: Duration::from_millis(2),
    }));
    // Agents alternate between taking batches and not (as old agents).
    let open = |from: Option<Revision>, batches: bool| {
        let (hubs, store) = (hubs.clone(), store.clone());
        async move {
            let (hub, attached) = hubs.attach(&store, NET, from).await.unwrap();
            let stream = follow(hub.clone(), attached, "watcher", batches);
            (hub, Agent::new(stream, batches))
        }
    };
    let (mut hub, first) = open(None, false).await;
    let mut agents = vec![first];
    for op in ops {
        match op {
            Op::Upsert(n, port) => {
                put_peer(inner.as_ref(), n, port).await;
            }
            Op::Join(n, port) => {
                let mut record = peer(n, port);
                record.session_sha256 = Some("h".into());
                inner
                    .txn(Txn::new().and_then([
                        TxnOp::put(keys::peer(NET, &record.node_id), model::encode(&record)),
                        TxnOp::put(
                            keys::ipam_addr(NET, record.overlay_ip),
                            record.node_id.into_bytes(),
                        ),
                    ]))
                    .await
                    .unwrap();
            }
            Op::Remove(n) => {
                let node = format!("n{n}");
                inner
                    .txn(Txn::new().and_then([
                        TxnOp::delete(keys::peer(NET, &node)),
                        TxnOp::delete(keys::ipam_addr(
                            NET,
                            std::net::Ipv4Addr::new(10, 9, 0, n + 1),
                        )),
                    ]))
                    .await
                    .unwrap();
            }
            Op::Other(n) => {
                inner
                    .put(&keys::token(NET, &n.to_string()), vec![n], None)
                    .await
                    .unwrap();
            }
            Op::Neighbour(n, port) => {
                inner
                    .put(
                        &keys::peer(&format!("{NET}0"), &format!("n{n}")),
                        model::encode(&peer(n, port)),
                        None,
                    )
                    .await
                    .unwrap();
            }
            Op::Network(d) => {
                inner
                    .put(
                        &keys::network(NET),
                        model::encode(&network(&d.to_string())),
                        None,
                    )
                    .await
                    .unwrap();
            }
            Op::Attach => {
                let (h, agent) = open(None, agents.len() % 2 == 1).await;
                hub = h;
                agents.push(agent);
            }
            Op::Resume(i, back) => {
                let i = i % agents.len();
                let from = (agents[i].revision - back).max(1);
                let (h, mut agent) = open(Some(from), agents[i].batches).await;
                hub = h;
                // The view it had; the stream brings it up to date from `from`.
                agent.revision = from;
                agent.network = agents[i].network.take();
                agent.peers = std::mem::take(&mut agents[i].peers);
                agents[i] = agent;
            }
        }
    }
    check_table(&hub, store.as_ref()).await;
    let (_, network, peers) = expected(store.as_ref()).await;
    let want = (network, peers);
    for agent in &mut agents {
        agent.settle(&want).await;
    }
    assert_eq!(
        probe.most.load(Ordering::SeqCst),
        1,
        "one store watch at a time"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// For random changes, new streams, resumes and lagging streams: the hub's table equals a
    /// fresh store read at the same revision, and every stream ends with the store's peers.
    #[test]
    fn table_and_streams_match_the_store(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}

/// Joins committed in every window of a hub's start (after its store watch opens, before and
/// after its table read) reach a stream attached during that start, and so do later ones:
/// the agents of the 2026-12-03 bench that never learned a peer lost exactly such a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_while_a_hub_starts_reach_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let inner = embedded(&dir).await;
    inner
        .put(&keys::network(NET), model::encode(&network("0")), None)
        .await
        .unwrap();
    let probe = Probe::new(inner.clone());
    *probe.inject.lock().unwrap() = [Some(1), Some(2), Some(3)];
    let store: Arc<dyn Store> = probe.clone();
    let hubs = Arc::new(Hubs::default());
    let (hub, attached) = hubs.attach(&store, NET, None).await.unwrap();
    let mut agent = Agent::new(follow(hub, attached, "watcher", true), true);
    put_peer(inner.as_ref(), 4, 1).await;
    let (_, network, peers) = expected(inner.as_ref()).await;
    assert_eq!(peers.len(), 4);
    agent.settle(&(network, peers)).await;
}

/// A stream resumed on a controller that has no hub yet gets exactly the changes after its
/// revision (not a snapshot), from the one store watch its hub opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_fresh_hub_replays_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    store
        .put(&keys::network(NET), model::encode(&network("0")), None)
        .await
        .unwrap();
    let from = put_peer(store.as_ref(), 0, 1).await;
    put_peer(store.as_ref(), 1, 1).await;
    put_peer(store.as_ref(), 0, 2).await;
    let hubs = Arc::new(Hubs::default());
    let (hub, attached) = hubs.attach(&store, NET, Some(from)).await.unwrap();
    assert!(attached.snapshot.is_none());
    let mut stream = follow(hub, attached, "watcher", false);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let bytes = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match pb::WatchEvent::decode(unframe(&bytes)).unwrap().event {
            Some(Event::PeerUpserted(p)) => seen.push((p.host_id, p.public_endpoint)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("n1".to_owned(), "198.18.0.1:1".to_owned()),
            ("n0".to_owned(), "198.18.0.0:2".to_owned())
        ]
    );
    assert_eq!(hubs.running().await, 1);
}

/// Waits until the hub has seen revision `revision` and holds `peers` peers (the events of
/// one revision arrive one by one).
async fn reached(hub: &Hub, revision: Revision, peers: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.table().0 < revision || hub.table().2.len() < peers {
        assert!(
            Instant::now() < deadline,
            "the hub never reached {revision}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next message of `stream`, decoded.
async fn message(stream: &mut WatchStream) -> (usize, pb::WatchEvent) {
    let bytes = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message within 5 s")
        .expect("stream open")
        .expect("no error");
    (
        bytes.len(),
        pb::WatchEvent::decode(unframe(&bytes)).unwrap(),
    )
}

/// The `WatchEvent` in a stream item, after checking its gRPC prefix: not compressed, and the
/// length of the rest.
fn unframe(item: &Bytes) -> Bytes {
    assert!(item.len() >= GRPC_PREFIX, "{} bytes", item.len());
    assert_eq!(item[0], 0, "the compressed flag is set");
    let len = u32::from_be_bytes(item[1..GRPC_PREFIX].try_into().unwrap());
    assert_eq!(
        len as usize,
        item.len() - GRPC_PREFIX,
        "the prefix's length"
    );
    let event = crate::service::event_of(item);
    assert_eq!(event.len(), len as usize);
    event
}

/// Changes that are ready together reach an agent that takes batches as one message (each at
/// its revision, in order, the message bounded in size), and an agent that did not ask for
/// batches (an old agent) one by one, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_changes_go_in_one_batch_only_to_agents_that_take_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    store
        .put(&keys::network(NET), model::encode(&network("0")), None)
        .await
        .unwrap();
    // No linger: each change is sent as it comes; the stream is read only once all are in.
    let hubs = Arc::new(Hubs::new(Limits {
        capacity: CAPACITY,
        history: HISTORY,
        linger: Duration::ZERO,
    }));
    let (hub, attached) = hubs.attach(&store, NET, None).await.unwrap();
    let mut new = follow(hub.clone(), attached, "watcher", true);
    let (_, attached) = hubs.attach(&store, NET, None).await.unwrap();
    let mut old = follow(hub.clone(), attached, "watcher", false);
    for stream in [&mut new, &mut old] {
        assert!(matches!(
            message(stream).await.1.event,
            Some(Event::Snapshot(_))
        ));
    }

    // 30 changes, 30 revisions, none read yet.
    let mut last = 0;
    for port in 1..=30 {
        last = put_peer(store.as_ref(), (port % 6) as u8, port).await;
    }
    reached(&hub, last, 6).await;
    let (_, event) = message(&mut new).await;
    assert_eq!(event.revision, last);
    let Some(Event::Batch(batch)) = event.event else {
        panic!("not a batch: {event:?}");
    };
    let ports: Vec<_> = batch
        .events
        .iter()
        .map(|e| match &e.event {
            Some(Event::PeerUpserted(p)) => {
                p.public_endpoint.rsplit(':').next().unwrap().to_owned()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ports, (1..=30).map(|p| p.to_string()).collect::<Vec<_>>());
    assert!(
        batch
            .events
            .windows(2)
            .all(|w| w[0].revision < w[1].revision)
    );
    for port in 1..=30 {
        match message(&mut old).await.1.event {
            Some(Event::PeerUpserted(p)) => {
                assert!(p.public_endpoint.ends_with(&format!(":{port}")))
            }
            other => panic!("an old agent got {other:?}"),
        }
    }

    // More than one message's worth (32 transactions of 125): bounded messages, nothing lost.
    let mut revision = 0;
    for t in 0..32 {
        let ops = (0..125).map(|i| {
            let mut record = peer(1, 7);
            record.node_id = format!("m{t}-{i}");
            TxnOp::put(keys::peer(NET, &record.node_id), model::encode(&record))
        });
        revision = store.txn(Txn::new().and_then(ops)).await.unwrap().revision;
    }
    reached(&hub, revision, 4006).await;
    let (mut changes, mut messages, mut at) = (0, 0, 0);
    while changes < 4000 {
        let (size, event) = message(&mut new).await;
        assert!(
            size < super::super::watch::BATCH_BYTES + 1024,
            "a message of {size} bytes"
        );
        assert!(event.revision >= at);
        at = event.revision;
        changes += match event.event {
            Some(Event::Batch(b)) => b.events.len(),
            _ => 1,
        };
        messages += 1;
    }
    assert_eq!(at, revision);
    assert_eq!(changes, 4000);
    assert!(
        (2..=4).contains(&messages),
        "{messages} messages for 4000 changes"
    );
}

/// A change after a quiet spell goes out at once; changes coming faster than the linger are
/// held and reach a stream together, as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_the_linger_go_out_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    store
        .put(&keys::network(NET), model::encode(&network("0")), None)
        .await
        .unwrap();
    let hubs = Arc::new(Hubs::new(Limits {
        capacity: CAPACITY,
        history: HISTORY,
        linger: Duration::from_secs(1),
    }));
    let (hub, attached) = hubs.attach(&store, NET, None).await.unwrap();
    let mut stream = follow(hub, attached, "watcher", true);
    assert!(matches!(
        message(&mut stream).await.1.event,
        Some(Event::Snapshot(_))
    ));
    let start = Instant::now();
    put_peer(store.as_ref(), 0, 1).await;
    let (_, first) = message(&mut stream).await;
    assert!(
        matches!(first.event, Some(Event::PeerUpserted(_))),
        "{first:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "the first change was held"
    );
    // The next five changes in one transaction: written one by one, on a loaded machine the
    // five commits (an fsync each) took longer than the linger, and the batch rightly held
    // only those that had arrived by then.
    let puts = (2..=6_u16).map(|port| {
        let record = peer(port as u8, port);
        TxnOp::Put {
            key: keys::peer(NET, &record.node_id),
            value: model::encode(&record),
            lease: None,
        }
    });
    let last = store.txn(Txn::new().and_then(puts)).await.unwrap().revision;
    let (_, event) = message(&mut stream).await;
    assert!(
        start.elapsed() >= Duration::from_millis(990),
        "sent before the linger ended"
    );
    assert_eq!(event.revision, last);
    match event.event {
        Some(Event::Batch(b)) => assert_eq!(b.events.len(), 5, "{b:?}"),
        other => panic!("not one batch: {other:?}"),
    }
}

/// The snapshot and upsert events assembled from cached encodings are the messages prost
/// would encode.
#[test]
fn assembled_events_decode_as_built() {
    let (tx, _) = broadcast::channel(4);
    let mut state = State {
        network: network("d"),
        network_revision: 3,
        peers: BTreeMap::new(),
        index: Index::default(),
        complete: 7,
        seen: 7,
        history: VecDeque::new(),
        pending: Vec::new(),
        floor: 7,
        snapshot: None,
        tx,
        history_bound: 8,
    };
    state.insert_peer(peer(1, 5), 5);
    state.insert_peer(peer(2, 6), 6);
    let want = pb::WatchEvent {
        revision: 7,
        event: Some(Event::Snapshot(pb::Snapshot {
            network: Some(network("d").to_proto(3)),
            peers: vec![
                peer(1, 5).to_proto(&network("d"), 5),
                peer(2, 6).to_proto(&network("d"), 6),
            ],
        })),
    };
    assert_eq!(
        pb::WatchEvent::decode(unframe(&state.snapshot())).unwrap(),
        want
    );
    let kv = KeyValue {
        key: keys::peer(NET, "n3"),
        value: model::encode(&peer(3, 9)),
        create_revision: 8,
        mod_revision: 8,
        version: 1,
        lease: None,
    };
    let frame = state
        .apply(NET, &WatchEvent::Put(kv), true)
        .unwrap()
        .unwrap();
    assert_eq!(
        pb::WatchEvent::decode(unframe(&frame.bytes)).unwrap(),
        pb::WatchEvent {
            revision: 8,
            event: Some(Event::PeerUpserted(peer(3, 9).to_proto(&network("d"), 8))),
        }
    );
    assert_eq!(state.complete, 7);
}

/// A probe request, like a command, goes only to the node it is for.
#[test]
fn probe_requests_reach_only_their_node() {
    let frame = Frame {
        revision: 9,
        kind: Kind::Probe("a".into()),
        bytes: Bytes::from_static(b"x"),
        session: None,
    };
    assert!(frame.for_node("a").is_some());
    assert!(frame.for_node("b").is_none());
    assert_ne!(
        Kind::Probe("a".into()).key(),
        Kind::Command("a".into()).key(),
        "a probe request does not supersede a pending command"
    );
}

/// The linger doubles while flushes carry more than one change per base linger (a storm), up
/// to its bound (4 times the base, or 200 µs per stream up to 1 s if longer), and is back to
/// the base after a flush with fewer: one change, or changes as sparse as a fan-out's.
#[test]
fn linger_grows_in_a_storm_and_resets_when_quiet() {
    let base = Duration::from_millis(50);
    // Joins at 1000 per second: 50 per base linger.
    let storm = |streams: usize| {
        let mut linger = base;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let flushed = (linger.as_millis() as usize).max(1);
            linger = next_linger(base, linger, flushed, streams);
            seen.push(linger.as_millis());
        }
        (linger, seen)
    };
    let (linger, seen) = storm(10);
    assert_eq!(seen, [100, 200, 200, 200, 200, 200]);
    assert_eq!(next_linger(base, linger, 1, 10), base);
    assert_eq!(next_linger(base, linger, 0, 10), base);
    assert_eq!(storm(1000).1, [100, 200, 200, 200, 200, 200]);
    assert_eq!(storm(2500).1, [100, 200, 400, 500, 500, 500]);
    let (linger, seen) = storm(100_000);
    assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(next_linger(base, linger, 1, 100_000), base);
    // A change per 100 ms after a storm: 10 in a 1 s linger, fewer than one per base linger.
    assert_eq!(next_linger(base, linger, 10, 100_000), base);
    assert_eq!(next_linger(base, linger, 21, 100_000), linger);
    assert_eq!(
        next_linger(Duration::ZERO, Duration::ZERO, 9, 10),
        Duration::ZERO
    );
    // A long base keeps its own bound.
    let long = Duration::from_secs(1);
    assert_eq!(next_linger(long, long * 2, 3, 5000), long * 4);
}
