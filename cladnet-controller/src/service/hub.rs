//! One store watch per network, shared by every Watch stream of that network, and the network's
//! peer table in memory.
//!
//! The hub of a network follows the store and keeps, at the revision it has reached, the
//! network record and every peer (decoded once, encoded once), plus a bounded history of the
//! recent changes as [`Frame`]s: each change is turned into its encoded `WatchEvent` once and
//! the same bytes go to every stream. New streams get a snapshot assembled from the cached peer
//! encodings; resumed streams (`fromRevision`) get the changes after their revision from the
//! history, streams that fell behind get them *merged* (the latest frame per peer, network,
//! command and test, in revision order), and either gets a snapshot only when the
//! history does not reach back far enough. So a controller holds one store watch per network,
//! whatever its streams do.
//!
//! Attaching a stream takes the history (or snapshot) and subscribes to the live frames under
//! the state lock the hub applies changes under: nothing falls between the two.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddrV4,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use cladnet_proto::v1::{self as pb, watch_event::Event};
use cladnet_store::{Error as StoreError, Revision, Store, Txn, TxnOp, TxnOpResult, WatchEvent};
use futures::StreamExt as _;
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};
use tokio::{
    sync::broadcast,
    time::{Duration, Instant},
};
use tracing::{debug, warn};

use crate::{
    error::{ControllerError, Result},
    keys::{self, KeyKind},
    model::{self, CommandRecord, NetworkRecord, PeerRecord, ProbeRecord, TestRecord},
};

/// Live frames a stream may fall behind before it catches up from the history.
const CAPACITY: usize = 4096;
/// Frames of history kept for resumed and lagging streams (at least).
const HISTORY: usize = 16_384;
/// Changes within this time of the last ones sent are held and sent together (the first change
/// after a quiet spell goes out at once): during a boot storm every stream wakes once per
/// linger with all changes since, which agents that take batches get as one message.
const LINGER: Duration = Duration::from_millis(50);
/// While changes keep coming (a flush carries more than one per [`Limits::linger`] it held
/// them), each flush doubles the linger up to this many times [`Limits::linger`], or
/// [`STORM_LINGER_PER_STREAM`] per stream if that is longer; a flush with fewer (changes as
/// sparse as the fan-out phase's, one per 100 ms), or a change after a quiet spell of this
/// many [`Limits::linger`]s, restores it. A flush wakes every
/// stream of the network and costs each a message, so in a boot storm of N agents fewer,
/// larger flushes save ≈ N messages per flush not made, at the price of holding a change up to
/// this long during the storm (never in a quiet network).
const STORM_LINGER_FACTOR: u32 = 4;
/// The storm linger per stream of the network: a flush costs ≈ 10 µs of CPU per stream, so
/// this keeps the flushes of a storm at about 5 % of a core whatever the network's size (200
/// ms at 1000 streams, as [`STORM_LINGER_FACTOR`] gives; 1 s at 5000).
const STORM_LINGER_PER_STREAM: Duration = Duration::from_micros(200);
/// The longest storm linger [`STORM_LINGER_PER_STREAM`] leads to.
const STORM_LINGER_MAX: Duration = Duration::from_secs(1);

/// `WatchEvent` field numbers (proto/cladnet/v1/cladnet.proto), for the events assembled from
/// cached encodings.
const REVISION_FIELD: u32 = 1;
const SNAPSHOT_FIELD: u32 = 2;
const PEER_UPSERTED_FIELD: u32 = 3;
/// `Snapshot` field numbers.
const SNAPSHOT_NETWORK_FIELD: u32 = 1;
const SNAPSHOT_PEERS_FIELD: u32 = 2;

/// One change of a network, encoded once for every stream.
#[derive(Debug)]
pub(super) struct Frame {
    /// Store revision of the change.
    pub(super) revision: Revision,
    /// What changed: frames of one kind and key supersede each other.
    pub(super) kind: Kind,
    /// The encoded `WatchEvent` as a gRPC message (after its [`GRPC_PREFIX`]).
    pub(super) bytes: Bytes,
    /// For a peer frame: SHA-256 (hex) of the node's session token in the record (`None`
    /// when the peer was removed): the node's streams opened with another session end.
    pub(super) session: Option<Vec<u8>>,
}

/// What a frame changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// A peer was upserted or removed.
    Peer(String),
    /// The network record changed.
    Network,
    /// The network is gone: streams end after this.
    NetworkDeleted,
    /// A command for one node.
    Command(String),
    /// A connectivity test request.
    Test(String),
    /// A coordinated-probe request for one node.
    Probe(String),
}

impl Kind {
    /// The key frames supersede each other by.
    fn key(&self) -> (u8, &str) {
        match self {
            Self::Peer(n) => (0, n),
            Self::Network => (1, ""),
            Self::NetworkDeleted => (2, ""),
            Self::Command(n) => (3, n),
            Self::Test(t) => (4, t),
            Self::Probe(n) => (6, n),
        }
    }
}

impl Frame {
    /// The bytes node `node` should get, if any.
    pub(super) fn for_node(&self, node: &str) -> Option<&Bytes> {
        match &self.kind {
            Kind::Command(target) | Kind::Probe(target) if target != node => None,
            _ => Some(&self.bytes),
        }
    }

    /// Whether the stream ends after this frame.
    pub(super) fn last(&self) -> bool {
        self.kind == Kind::NetworkDeleted
    }

    /// Whether this frame revokes the session with hash `session` of node `node`, for a stream
    /// whose own session was checked at revision `session_revision`: a later change of the
    /// node's peer record that carries another session (a re-join) or removes it.
    pub(super) fn revokes(&self, node: &str, session: &[u8], session_revision: Revision) -> bool {
        matches!(&self.kind, Kind::Peer(n)
            if self.revision > session_revision && n == node
                && self.session.as_deref() != Some(session))
    }
}

/// What goes through a hub's live channel.
#[derive(Debug)]
pub(super) enum Live {
    /// The changes of one flush (one linger's worth, or one change), in revision order. Sent
    /// as one message so that a stream takes them together: sent one by one, a stream on
    /// another thread woke at the first and sent it alone while the rest were still on their
    /// way (a batch split in two, even within one revision).
    Frames(Vec<Arc<Frame>>),
    /// The store watch failed: streams end with an error and agents reconnect.
    Failed(String),
}

/// A stream attached to a hub: what to send first, then the live frames.
pub(super) struct Attached {
    /// A full snapshot to send first, if the stream needs one.
    pub(super) snapshot: Option<Bytes>,
    /// Changes to send first (after the snapshot, if any), in revision order.
    pub(super) frames: VecDeque<Arc<Frame>>,
    /// Live frames at or below this revision are already covered by the above.
    pub(super) floor: Revision,
    /// The live frames.
    pub(super) live: broadcast::Receiver<Arc<Live>>,
}

/// The hubs of all networks with open streams.
#[derive(Debug)]
pub(super) struct Hubs {
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
    limits: Limits,
}

/// How far streams may fall behind, and how much history a hub keeps.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Live frames a stream may fall behind before it catches up from the history.
    pub(super) capacity: usize,
    /// Frames of history kept (at least; four per peer in larger networks).
    pub(super) history: usize,
    /// How long changes after a send are held to go out together ([`LINGER`]): the linger of
    /// a quiet network, which a storm stretches up to [`STORM_LINGER_FACTOR`] times.
    pub(super) linger: Duration,
}

impl Default for Hubs {
    fn default() -> Self {
        Self::new(Limits {
            capacity: CAPACITY,
            history: HISTORY,
            linger: LINGER,
        })
    }
}

impl Hubs {
    /// No hubs yet.
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            hubs: tokio::sync::Mutex::default(),
            limits,
        }
    }

    /// Attaches a stream to network `net`'s hub, starting the hub if needed: a snapshot when
    /// `from` is `None`, else every change after revision `from` (a snapshot if the history
    /// does not reach back that far).
    pub(super) async fn attach(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        net: &str,
        from: Option<Revision>,
    ) -> Result<(Arc<Hub>, Attached)> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(net) {
            let attached = hub.attach(from, false);
            return Ok((hub.clone(), attached));
        }
        let hub = Hub::start(self.clone(), store, net, from).await?;
        let attached = hub.attach(from, false);
        hubs.insert(net.to_owned(), hub.clone());
        Ok((hub, attached))
    }

    /// The peers of network `net` whose public or private endpoint is one of `endpoints`, in
    /// node order, if its hub is running (the table may be a few changes behind the store),
    /// else `None`. Found through the table's index, not by a scan of every peer.
    pub(super) async fn endpoint_holders(
        &self,
        net: &str,
        endpoints: &[SocketAddrV4],
    ) -> Option<Vec<PeerRecord>> {
        let hub = self.hubs.lock().await.get(net)?.clone();
        let state = hub.lock();
        let nodes: BTreeSet<&String> = endpoints
            .iter()
            .filter_map(|e| state.index.endpoints.get(e))
            .flatten()
            .collect();
        Some(
            nodes
                .into_iter()
                .filter_map(|n| state.peers.get(n))
                .map(|e| e.record.clone())
                .collect(),
        )
    }

    /// What network `net`'s table says about a joining node, if its hub runs: the node's peer
    /// record and its revision, and the node holding public key `public_key` (as the key
    /// index's value). The table may be behind the store: a Join compares both.
    pub(super) async fn join_view(
        &self,
        net: &str,
        node: &str,
        public_key: &str,
    ) -> Option<(Option<(PeerRecord, Revision)>, Option<Vec<u8>>)> {
        let hub = self.hubs.lock().await.get(net)?.clone();
        let state = hub.lock();
        let peer = state
            .peers
            .get(node)
            .map(|e| (e.record.clone(), e.revision));
        let holder = match &peer {
            Some((p, _)) if p.public_key == public_key => Some(node.as_bytes().to_vec()),
            // The first holder in node order, as a scan of the table would find it.
            _ => state
                .index
                .keys
                .get(public_key)
                .and_then(|nodes| nodes.first())
                .map(|n| n.clone().into_bytes()),
        };
        Some((peer, holder))
    }

    /// The number of running hubs (one store watch each).
    #[cfg(test)]
    pub(super) async fn running(&self) -> usize {
        self.hubs.lock().await.len()
    }
}

/// One network's shared watch and peer table.
#[derive(Debug)]
pub(super) struct Hub {
    net: String,
    state: Mutex<State>,
}

/// The table's peers by public key and by endpoint (public and private alike), so that a Join's
/// checks look up the few peers concerned instead of scanning all of them (which made a boot
/// storm O(N²)). Node ids are kept sorted: lookups find peers in node order, as a scan did.
#[derive(Debug, Default)]
struct Index {
    keys: HashMap<String, BTreeSet<String>>,
    endpoints: HashMap<SocketAddrV4, BTreeSet<String>>,
}

impl Index {
    fn add(&mut self, peer: &PeerRecord) {
        let node = &peer.node_id;
        self.keys
            .entry(peer.public_key.clone())
            .or_default()
            .insert(node.clone());
        for e in [peer.public_endpoint, peer.private_endpoint]
            .into_iter()
            .flatten()
        {
            self.endpoints.entry(e).or_default().insert(node.clone());
        }
    }

    fn remove(&mut self, peer: &PeerRecord) {
        fn take<K: Eq + std::hash::Hash>(map: &mut HashMap<K, BTreeSet<String>>, k: &K, n: &str) {
            if let Some(nodes) = map.get_mut(k) {
                nodes.remove(n);
                if nodes.is_empty() {
                    map.remove(k);
                }
            }
        }
        take(&mut self.keys, &peer.public_key, &peer.node_id);
        for e in [peer.public_endpoint, peer.private_endpoint]
            .into_iter()
            .flatten()
        {
            take(&mut self.endpoints, &e, &peer.node_id);
        }
    }
}

/// A peer in the table.
#[derive(Debug)]
struct Entry {
    record: PeerRecord,
    revision: Revision,
    /// The encoded `pb::Peer`.
    bytes: Bytes,
}

#[derive(Debug)]
struct State {
    network: NetworkRecord,
    network_revision: Revision,
    peers: BTreeMap<String, Entry>,
    /// `peers` by public key and endpoint.
    index: Index,
    /// The table holds every change up to this revision (and possibly some of the next one's:
    /// the events of one revision arrive one by one).
    complete: Revision,
    /// The revision of the last event the store watch delivered.
    seen: Revision,
    /// Recent frames in revision order: every frame with a revision above `floor` that was
    /// sent live.
    history: VecDeque<Arc<Frame>>,
    /// Frames not sent yet (held for the linger), in revision order; then into `history`.
    pending: Vec<Arc<Frame>>,
    floor: Revision,
    /// The last snapshot assembled, and the revision it is at.
    snapshot: Option<(Revision, Bytes)>,
    tx: broadcast::Sender<Arc<Live>>,
    history_bound: usize,
}

impl Hub {
    /// Opens the store watch (from `from + 1` when a resumed stream starts the hub, so that
    /// its history reaches back that far), then reads the table, and starts following.
    async fn start(
        hubs: Arc<Hubs>,
        store: &Arc<dyn Store>,
        net: &str,
        from: Option<Revision>,
    ) -> Result<Arc<Self>> {
        let prefix = keys::watched(net);
        let events = store.watch(&prefix, from.map(|r| r + 1)).await?;
        let (network, network_revision, peers, revision) = read_table(store.as_ref(), net).await?;
        let (tx, _) = broadcast::channel(hubs.limits.capacity);
        let mut state = State {
            network,
            network_revision,
            peers: BTreeMap::new(),
            index: Index::default(),
            complete: revision,
            seen: from.unwrap_or(revision),
            history: VecDeque::new(),
            pending: Vec::new(),
            floor: from.unwrap_or(revision),
            snapshot: None,
            tx,
            history_bound: hubs.limits.history,
        };
        for kv in peers {
            state.insert_peer(model::decode(&kv)?, kv.mod_revision);
        }
        let hub = Arc::new(Self {
            net: net.to_owned(),
            state: Mutex::new(state),
        });
        tokio::spawn(hub.clone().run(hubs, store.clone(), events, revision));
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream's start: a snapshot (`from` = `None`, or history not reaching back to
    /// `from`), else the changes after `from` (`merge`: only the latest per key); and the live
    /// frames after them.
    pub(super) fn attach(&self, from: Option<Revision>, merge: bool) -> Attached {
        let mut state = self.lock();
        let live = state.tx.subscribe();
        match from {
            Some(from) if from >= state.floor => Attached {
                snapshot: None,
                frames: if merge {
                    merged(&state.history, from).into()
                } else {
                    let start = state.history.partition_point(|f| f.revision <= from);
                    state.history.range(start..).cloned().collect()
                },
                floor: from,
                live,
            },
            _ => {
                let floor = state.complete;
                Attached {
                    snapshot: Some(state.snapshot()),
                    frames: VecDeque::new(),
                    floor,
                    live,
                }
            }
        }
    }

    /// Follows the store: applies each event to the table, records and broadcasts its frame
    /// (held for the linger if frames were sent less than that ago). Events at or below
    /// `read` (the table read) only fill the history.
    async fn run(
        self: Arc<Self>,
        hubs: Arc<Hubs>,
        store: Arc<dyn Store>,
        mut events: cladnet_store::WatchStream,
        read: Revision,
    ) {
        let base = hubs.limits.linger;
        let mut linger = base;
        let mut sent: Option<Instant> = None;
        let mut due: Option<Instant> = None;
        // The last change: one after a quiet spell ([`STORM_LINGER_FACTOR`] base lingers; a
        // storm of 5000 joins had gaps of one base linger every few joins) ends a storm at once.
        let quiet = base * STORM_LINGER_FACTOR;
        let mut changed: Option<Instant> = None;
        loop {
            let next = match due {
                Some(at) => tokio::select! {
                    event = events.next() => Some(event),
                    () = tokio::time::sleep_until(at) => None,
                },
                None => Some(events.next().await),
            };
            let Some(next) = next else {
                let mut state = self.lock();
                let flushed = state.flush();
                linger = next_linger(base, linger, flushed, state.tx.receiver_count());
                drop(state);
                (sent, due) = (Some(Instant::now()), None);
                continue;
            };
            let reason = match next {
                Some(Ok(event)) => {
                    let (frame, idle) = {
                        let mut state = self.lock();
                        let frame = state.apply(&self.net, &event, event.revision() > read);
                        let frame = match frame {
                            Ok(f) => f,
                            Err(e) => {
                                warn!(network = %self.net, key = event.key(), error = %e, "undecodable record skipped");
                                None
                            }
                        };
                        if let Some(f) = &frame {
                            state.pending.push(f.clone());
                            let now = Instant::now();
                            if changed.is_some_and(|t| now >= t + quiet) {
                                linger = base;
                            }
                            changed = Some(now);
                            let last = f.last();
                            if last
                                || due.is_some_and(|at| now >= at)
                                || sent.is_none_or(|t| now >= t + linger)
                            {
                                let flushed = state.flush();
                                let streams = state.tx.receiver_count();
                                linger = next_linger(base, linger, flushed, streams);
                                (sent, due) = (Some(now), None);
                            } else if due.is_none() {
                                due = sent.map(|t| t + linger);
                            }
                        }
                        (frame, state.tx.receiver_count() == 0)
                    };
                    if frame.as_ref().is_some_and(|f| f.last()) {
                        self.retire(&hubs, true).await;
                        return;
                    }
                    if idle && self.retire(&hubs, false).await {
                        return;
                    }
                    continue;
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    // A resumed stream started this hub from a revision the store has
                    // compacted: follow from the table read instead; streams attached with
                    // older revisions get snapshots when they next attach.
                    match store.watch(&keys::watched(&self.net), Some(read + 1)).await {
                        Ok(e) => {
                            events = e;
                            let mut state = self.lock();
                            state.flush();
                            state.floor = state.floor.max(read);
                            state.seen = state.seen.max(read);
                            let _ = state
                                .tx
                                .send(Arc::new(Live::Failed("history compacted".into())));
                            continue;
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Some(Err(e)) => e.to_string(),
                None => "store watch ended".into(),
            };
            warn!(network = %self.net, %reason, "watch hub failed");
            self.retire(&hubs, true).await;
            let mut state = self.lock();
            state.flush();
            let _ = state.tx.send(Arc::new(Live::Failed(reason)));
            return;
        }
    }

    /// Removes the hub from the registry; unless `now`, only if no stream listens (checked
    /// under the registry lock, so a stream attaching at the same moment keeps it alive).
    async fn retire(self: &Arc<Self>, hubs: &Hubs, now: bool) -> bool {
        let mut registry = hubs.hubs.lock().await;
        if !now && self.lock().tx.receiver_count() > 0 {
            return false;
        }
        if registry
            .get(&self.net)
            .is_some_and(|h| Arc::ptr_eq(h, self))
        {
            registry.remove(&self.net);
        }
        debug!(network = %self.net, "watch hub stopped");
        true
    }

    /// The table as a fresh read would give it: the network record and every peer record.
    /// Checks that the table's index is the one its peers make.
    #[cfg(test)]
    pub(super) fn table(&self) -> (Revision, NetworkRecord, Vec<(PeerRecord, Revision)>) {
        let state = self.lock();
        let mut index = Index::default();
        for e in state.peers.values() {
            index.add(&e.record);
        }
        assert_eq!(index.keys, state.index.keys, "the public-key index");
        assert_eq!(index.endpoints, state.index.endpoints, "the endpoint index");
        let peers = state
            .peers
            .values()
            .map(|e| (e.record.clone(), e.revision))
            .collect();
        (state.seen, state.network.clone(), peers)
    }
}

impl State {
    fn insert_peer(&mut self, record: PeerRecord, revision: Revision) -> Bytes {
        let bytes = Bytes::from(record.to_proto(&self.network, revision).encode_to_vec());
        if let Some(old) = self.peers.get(&record.node_id) {
            self.index.remove(&old.record);
        }
        self.index.add(&record);
        self.peers.insert(
            record.node_id.clone(),
            Entry {
                record,
                revision,
                bytes: bytes.clone(),
            },
        );
        bytes
    }

    /// Sends the pending frames live, all at once (streams woken by the first find the others
    /// ready too), and appends them to the history (dropping the oldest beyond its bound).
    /// Returns how many frames went out.
    fn flush(&mut self) -> usize {
        let bound = self.history_bound.max(4 * self.peers.len());
        let frames = std::mem::take(&mut self.pending);
        if frames.is_empty() {
            return 0;
        }
        let count = frames.len();
        for frame in &frames {
            while self.history.len() >= bound {
                if let Some(old) = self.history.pop_front() {
                    self.floor = self.floor.max(old.revision);
                }
            }
            self.history.push_back(frame.clone());
        }
        let _ = self.tx.send(Arc::new(Live::Frames(frames)));
        count
    }

    /// The frame of store event `event`; the table changes only if `apply` (events at or below
    /// the table's read revision are only recorded).
    fn apply(&mut self, net: &str, event: &WatchEvent, apply: bool) -> Result<Option<Arc<Frame>>> {
        let revision = event.revision();
        if revision > self.seen {
            if apply {
                self.complete = self.complete.max(self.seen).max(revision - 1);
            }
            self.seen = revision;
        }
        let encode = |event: Event| message(&watch_event(revision, event));
        let frame = |kind: Kind, bytes: Bytes| {
            Ok(Some(Arc::new(Frame {
                revision,
                kind,
                bytes,
                session: None,
            })))
        };
        match (keys::classify(net, event.key()), event) {
            (Some(KeyKind::Network), WatchEvent::Put(kv)) => {
                let network: NetworkRecord = model::decode(kv)?;
                let bytes = encode(Event::NetworkUpdated(network.to_proto(revision)));
                if apply {
                    self.network = network;
                    self.network_revision = revision;
                    // Peers carry the network's address space: encode them again.
                    let peers = std::mem::take(&mut self.peers);
                    self.index = Index::default();
                    for e in peers.into_values() {
                        self.insert_peer(e.record, e.revision);
                    }
                    self.snapshot = None;
                }
                frame(Kind::Network, bytes)
            }
            (Some(KeyKind::Network), WatchEvent::Delete { .. }) => frame(
                Kind::NetworkDeleted,
                encode(Event::NetworkDeleted(net.to_owned())),
            ),
            (Some(KeyKind::Peer(node)), WatchEvent::Put(kv)) => {
                let record: PeerRecord = model::decode(kv)?;
                let session = record.session_sha256.clone().map(String::into_bytes);
                let peer = if apply {
                    self.snapshot = None;
                    self.insert_peer(record, revision)
                } else {
                    Bytes::from(record.to_proto(&self.network, revision).encode_to_vec())
                };
                let mut bytes = start_message(peer.len() + 16);
                prost::encoding::int64::encode(REVISION_FIELD, &revision, &mut bytes);
                put_bytes(PEER_UPSERTED_FIELD, &peer, &mut bytes);
                Ok(Some(Arc::new(Frame {
                    revision,
                    kind: Kind::Peer(node.to_owned()),
                    bytes: finish_message(bytes),
                    session,
                })))
            }
            (Some(KeyKind::Peer(node)), WatchEvent::Delete { .. }) => {
                if apply && let Some(old) = self.peers.remove(node) {
                    self.index.remove(&old.record);
                    self.snapshot = None;
                }
                frame(
                    Kind::Peer(node.to_owned()),
                    encode(Event::PeerRemoved(node.to_owned())),
                )
            }
            (Some(KeyKind::Command(node)), WatchEvent::Put(kv)) => {
                let cmd: CommandRecord = model::decode(kv)?;
                frame(
                    Kind::Command(node.to_owned()),
                    encode(Event::Command(cmd.to_proto())),
                )
            }
            (Some(KeyKind::Probe(node)), WatchEvent::Put(kv)) => {
                let probe: ProbeRecord = model::decode(kv)?;
                frame(
                    Kind::Probe(node.to_owned()),
                    encode(Event::ProbeRequested(probe.to_proto())),
                )
            }
            (Some(KeyKind::Test(id)), WatchEvent::Put(kv)) => {
                let record: TestRecord = model::decode(kv)?;
                let test = super::commands::test_view(net, &record, Vec::new());
                frame(
                    Kind::Test(id.to_owned()),
                    encode(Event::TestRequested(test)),
                )
            }
            _ => Ok(None),
        }
    }

    /// The snapshot at `complete` as a gRPC message, assembled from the cached peer encodings
    /// in one buffer (the `Snapshot`'s length is computed first, so nothing is copied twice).
    fn snapshot(&mut self) -> Bytes {
        if let Some((revision, bytes)) = &self.snapshot
            && *revision == self.complete
        {
            return bytes.clone();
        }
        let network = self.network.to_proto(self.network_revision).encode_to_vec();
        let size = field_len(SNAPSHOT_NETWORK_FIELD, network.len())
            + self
                .peers
                .values()
                .map(|e| field_len(SNAPSHOT_PEERS_FIELD, e.bytes.len()))
                .sum::<usize>();
        let mut event = start_message(size + 24);
        prost::encoding::int64::encode(REVISION_FIELD, &self.complete, &mut event);
        encode_key(SNAPSHOT_FIELD, WireType::LengthDelimited, &mut event);
        encode_varint(size as u64, &mut event);
        put_bytes(SNAPSHOT_NETWORK_FIELD, &network, &mut event);
        for e in self.peers.values() {
            put_bytes(SNAPSHOT_PEERS_FIELD, &e.bytes, &mut event);
        }
        let bytes = finish_message(event);
        self.snapshot = Some((self.complete, bytes.clone()));
        bytes
    }
}

/// The linger after a flush of `flushed` frames to `streams` streams, held for `linger`:
/// doubled (up to [`STORM_LINGER_FACTOR`] times `base`, or [`STORM_LINGER_PER_STREAM`] per
/// stream up to [`STORM_LINGER_MAX`] if that is longer) while more than one change came per
/// `base`, else `base` again: a long linger must not outlast the storm, or a network's
/// ordinary changes (say one every 100 ms) would keep it and each wait for it.
fn next_linger(base: Duration, linger: Duration, flushed: usize, streams: usize) -> Duration {
    let flushed = u32::try_from(flushed).unwrap_or(u32::MAX);
    if flushed > 1 && base.saturating_mul(flushed) > linger {
        let per_stream =
            STORM_LINGER_PER_STREAM.saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
        let cap = (base * STORM_LINGER_FACTOR).max(per_stream.min(STORM_LINGER_MAX));
        (linger * 2).min(cap)
    } else {
        base
    }
}

/// Appends a length-delimited field `tag` holding `bytes`.
pub(super) fn put_bytes(tag: u32, bytes: &[u8], buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// The encoded size of a length-delimited field `tag` of `len` bytes.
pub(super) fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of the prefix of a gRPC message: a compression flag (0: not compressed) and the
/// message's length (big-endian `u32`). Every frame, snapshot and batch is built with it in
/// front, so that the gRPC layer sends the shared bytes as they are (`crate::grpc`).
pub(super) const GRPC_PREFIX: usize = 5;

/// A buffer for one gRPC message of about `capacity` bytes, its prefix left to
/// [`finish_message`].
pub(super) fn start_message(capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(GRPC_PREFIX + capacity);
    buf.put_bytes(0, GRPC_PREFIX);
    buf
}

/// The message begun by [`start_message`], with its prefix: not compressed, and its length
/// (messages stay far below 4 GiB: batches are bounded, and a snapshot of that size would be
/// refused by every client anyway).
pub(super) fn finish_message(mut buf: BytesMut) -> Bytes {
    let len = u32::try_from(buf.len() - GRPC_PREFIX).unwrap_or(u32::MAX);
    buf[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// `msg` encoded as a gRPC message.
fn message(msg: &impl Message) -> Bytes {
    let mut buf = start_message(msg.encoded_len());
    // Cannot fail: a BytesMut grows as needed (and has the room already).
    msg.encode_raw(&mut buf);
    finish_message(buf)
}

fn watch_event(revision: Revision, event: Event) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        event: Some(event),
    }
}

/// The frames after revision `from`, the latest per key, in revision order.
fn merged(history: &VecDeque<Arc<Frame>>, from: Revision) -> Vec<Arc<Frame>> {
    let start = history.partition_point(|f| f.revision <= from);
    let mut latest: HashMap<(u8, &str), usize> = HashMap::new();
    for (i, f) in history.iter().enumerate().skip(start) {
        latest.insert(f.kind.key(), i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| history[i].clone()).collect()
}

/// Reads a network record and its peers in one transaction (one revision).
async fn read_table(
    store: &dyn Store,
    net: &str,
) -> Result<(
    NetworkRecord,
    Revision,
    Vec<cladnet_store::KeyValue>,
    Revision,
)> {
    let res = store
        .txn(Txn::new().and_then([
            TxnOp::get(keys::network(net)),
            TxnOp::range(keys::peers(net)),
        ]))
        .await?;
    let mut results = res.results.into_iter();
    let (Some(TxnOpResult::Get(network)), Some(TxnOpResult::Range(peers))) =
        (results.next(), results.next())
    else {
        return Err(ControllerError::Aborted(
            "store answered a read with the wrong results".into(),
        ));
    };
    let kv = network.ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
    Ok((model::decode(&kv)?, kv.mod_revision, peers, res.revision))
}

#[cfg(test)]
mod tests;
