//! The Watch stream: a snapshot of a network, then its changes in revision order.
//!
//! Every stream is served by its network's hub (see [`super::hub`]): one store watch per
//! network, the peer table in memory, each change encoded once. A new stream gets a snapshot
//! from the hub's table; an agent that reconnects passes the last revision it processed and
//! gets the changes after it from the hub's history (merged: the latest state of each peer),
//! or a fresh snapshot if the history does not reach back that far. A stream that falls behind
//! the live changes catches up the same way.
//!
//! Items are encoded `WatchEvent`s as gRPC messages (with their 5-byte prefix, see
//! [`GRPC_PREFIX`]): the same bytes for every stream, which the gRPC layer sends as they are,
//! without a copy (see `crate::grpc`).

use std::{pin::Pin, sync::Arc};

use bytes::Bytes;
use cladnet_proto::v1 as pb;
use cladnet_store::Revision;
use futures::Stream;
use tokio::sync::broadcast;
use tracing::debug;

use super::{
    Controller,
    hub::{
        Attached, Frame, GRPC_PREFIX, Hub, Live, field_len, finish_message, put_bytes,
        start_message,
    },
};
use crate::{
    auth::sha256_hex,
    error::{ControllerError, Result},
    keys, validate,
};

/// Encoded `WatchEvent`s for one agent, each as a gRPC message (the 5-byte gRPC message prefix,
/// then the event: [`event_of`] takes the event); ends with an error or when the network is
/// deleted.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// The encoded `WatchEvent` of a [`WatchStream`] item (the item after its gRPC prefix).
pub fn event_of(item: &Bytes) -> Bytes {
    item.slice(GRPC_PREFIX.min(item.len())..)
}

impl Controller {
    /// Opens a Watch for node `hostId` of network `cladnetId`.
    pub async fn watch(&self, bearer: &str, req: pb::WatchRequest) -> Result<WatchStream> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::host_id("hostId", &req.host_id)?;
        if req.from_revision < 0 {
            return Err(ControllerError::invalid(
                "fromRevision",
                "must not be negative",
            ));
        }
        // Resuming starts at fromRevision + 1: refuse what cannot be resumed from rather
        // than overflow.
        if req.from_revision == i64::MAX {
            return Err(ControllerError::invalid(
                "fromRevision",
                "too large: no store revision is that high",
            ));
        }
        let session_revision = self
            .check_session(&req.cladnet_id, &req.host_id, bearer)
            .await?;
        let from = if req.from_revision == 0 {
            None
        } else {
            let current = self
                .store
                .range(&keys::peer(&req.cladnet_id, &req.host_id))
                .await?
                .revision;
            if req.from_revision > current {
                return Err(ControllerError::invalid(
                    "fromRevision",
                    format!(
                        "{} is ahead of the store (revision {current}); start from 0",
                        req.from_revision
                    ),
                ));
            }
            Some(req.from_revision)
        };
        let (hub, attached) = self.hubs.attach(&self.store, &req.cladnet_id, from).await?;
        // Checked again now that the hub delivers session changes to this stream: a re-join
        // or delete between the first check and the attachment is caught here.
        let session_revision = session_revision.max(
            self.check_session(&req.cladnet_id, &req.host_id, bearer)
                .await?,
        );
        let forwarder = Forwarder {
            hub,
            session: sha256_hex(bearer).into_bytes(),
            session_revision,
            net: req.cladnet_id,
            node: req.host_id,
            batches: req.batches,
            metrics: self.metrics().clone(),
            _connected: self.metrics().stream_opened(),
        };
        Ok(forwarder.into_stream(attached))
    }
}

/// Turns one stream's frames into its items. The gRPC task polls it directly: no task or
/// channel of its own between the hub and the connection.
struct Forwarder {
    hub: Arc<Hub>,
    /// SHA-256 (hex) of the session token the stream was opened with.
    session: Vec<u8>,
    /// Store revision the session was checked at (the peer record's): only later changes of
    /// the record revoke it (a resumed stream replays older ones).
    session_revision: Revision,
    net: String,
    node: String,
    /// The agent applies `WatchBatch`es (it said so in its request).
    batches: bool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Counts this stream as a connected agent while it lives.
    _connected: crate::metrics::StreamGuard,
}

/// Largest batch a stream assembles: changes are added while the batch is below this size,
/// so a message stays far below gRPC's 4 MiB default limit (one change is a few hundred bytes).
pub(super) const BATCH_BYTES: usize = 256 << 10;

/// `WatchEvent` and `WatchBatch` field numbers (proto/cladnet/v1/cladnet.proto).
const REVISION_FIELD: u32 = 1;
const BATCH_FIELD: u32 = 9;
const BATCH_EVENTS_FIELD: u32 = 1;

/// A stream's position: what is left of its start, the live frames, and how far it got.
struct Position {
    attached: Attached,
    /// Every change up to this revision was sent (or was not for this node).
    done: Revision,
    /// The stream ends after the next item.
    ending: bool,
    /// An item that ended a batch, sent next.
    held: Option<Item>,
}

/// What a stream sends.
enum Item {
    /// A full snapshot (never batched: it replaces the agent's table).
    Snapshot(Bytes),
    /// One encoded change at its revision.
    Change(Revision, Bytes),
    /// The error that ends the stream.
    Error(ControllerError),
}

impl Item {
    fn into_result(self) -> Result<Bytes> {
        match self {
            Self::Snapshot(b) | Self::Change(_, b) => Ok(b),
            Self::Error(e) => Err(e),
        }
    }
}

impl Forwarder {
    fn into_stream(self, attached: Attached) -> WatchStream {
        let position = Position {
            done: attached.floor,
            attached,
            ending: false,
            held: None,
        };
        Box::pin(futures::stream::unfold(
            (self, position),
            |(this, mut position)| async move {
                let (item, events) = this.next(&mut position).await?;
                for _ in 0..events {
                    this.metrics.event_sent();
                }
                Some((item, (this, position)))
            },
        ))
    }

    /// The error that ends a stream whose session was replaced or removed.
    fn revoked(&self) -> ControllerError {
        debug!(network = %self.net, node = %self.node, "session revoked: ending its watch");
        ControllerError::Unauthenticated(format!(
            "session of peer {:?} was revoked or replaced; join again",
            self.node
        ))
    }

    /// The item for one frame, if this node gets one; sets `ending` when the stream ends.
    fn frame(&self, frame: &Frame, ending: &mut bool) -> Option<Item> {
        if frame.revokes(&self.node, &self.session, self.session_revision) {
            *ending = true;
            return Some(Item::Error(self.revoked()));
        }
        let bytes = frame.for_node(&self.node)?;
        *ending = frame.last();
        Some(Item::Change(frame.revision, bytes.clone()))
    }

    /// Takes one live message: its changes are queued for [`Self::ready`]; a failure is the item.
    fn live(&self, p: &mut Position, live: &Live) -> Option<Item> {
        match live {
            Live::Frames(frames) => {
                // Queued with the attachment's own frames, which `ready` takes first: the
                // whole flush is ready at once, so a batch holds all of it.
                let floor = p.attached.floor;
                p.attached
                    .frames
                    .extend(frames.iter().filter(|f| f.revision > floor).cloned());
                None
            }
            Live::Failed(reason) => {
                p.ending = true;
                Some(Item::Error(ControllerError::Aborted(format!(
                    "watch interrupted ({reason}); reconnect"
                ))))
            }
        }
    }

    /// A stream that fell behind attaches again after the last revision sent completely.
    fn catch_up(&self, p: &mut Position, missed: u64) {
        debug!(network = %self.net, node = %self.node, missed, "slow stream: catching up from the history");
        p.attached = self.hub.attach(Some(p.done), true);
        p.done = p.done.max(p.attached.floor);
    }

    /// The next item available without waiting: the attachment's snapshot and frames, then
    /// live frames already received.
    fn ready(&self, p: &mut Position) -> Option<Item> {
        loop {
            if p.ending {
                return None;
            }
            if let Some(snapshot) = p.attached.snapshot.take() {
                return Some(Item::Snapshot(snapshot));
            }
            while let Some(frame) = p.attached.frames.pop_front() {
                // Other frames of this revision may still come.
                p.done = p.done.max(frame.revision - 1);
                if let Some(item) = self.frame(&frame, &mut p.ending) {
                    return Some(item);
                }
            }
            match p.attached.live.try_recv() {
                Ok(live) => {
                    if let Some(item) = self.live(p, &live) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => self.catch_up(p, missed),
                Err(_) => return None,
            }
        }
    }

    /// The next item, waiting for live frames when none is ready.
    async fn wait(&self, p: &mut Position) -> Option<Item> {
        loop {
            if let Some(item) = self.ready(p) {
                return Some(item);
            }
            if p.ending {
                return None;
            }
            match p.attached.live.recv().await {
                Ok(live) => {
                    if let Some(item) = self.live(p, &live) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => self.catch_up(p, missed),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next message and the number of changes in it. For an agent that takes batches,
    /// every change ready at that moment (up to [`BATCH_BYTES`]) goes into one message.
    async fn next(&self, p: &mut Position) -> Option<(Result<Bytes>, usize)> {
        let first = match p.held.take() {
            Some(item) => item,
            None => self.wait(p).await?,
        };
        let Item::Change(revision, bytes) = first else {
            let item = first.into_result();
            let events = usize::from(item.is_ok());
            return Some((item, events));
        };
        if !self.batches {
            return Some((Ok(bytes), 1));
        }
        let mut batch = Batch::new(revision, bytes);
        while batch.size < BATCH_BYTES {
            match self.ready(p) {
                Some(Item::Change(revision, bytes)) => batch.push(revision, bytes),
                Some(other) => {
                    p.held = Some(other);
                    break;
                }
                None => break,
            }
        }
        let events = batch.changes.len();
        Some((Ok(batch.encode()), events))
    }
}

/// Changes collected for one message.
struct Batch {
    revision: Revision,
    changes: Vec<Bytes>,
    size: usize,
}

impl Batch {
    fn new(revision: Revision, first: Bytes) -> Self {
        Self {
            revision,
            size: first.len(),
            changes: vec![first],
        }
    }

    fn push(&mut self, revision: Revision, change: Bytes) {
        self.revision = self.revision.max(revision);
        self.size += change.len() + 4;
        self.changes.push(change);
    }

    /// One change as it is; several as a `WatchEvent` holding a `WatchBatch` of them (the
    /// encoded changes are copied in as they are, once, into one buffer: nothing is encoded
    /// again).
    fn encode(mut self) -> Bytes {
        if self.changes.len() == 1 {
            return self.changes.pop().unwrap_or_default();
        }
        let inner = self
            .changes
            .iter()
            .map(|c| field_len(BATCH_EVENTS_FIELD, c.len().saturating_sub(GRPC_PREFIX)))
            .sum::<usize>();
        let mut event = start_message(inner + 24);
        prost::encoding::int64::encode(REVISION_FIELD, &self.revision, &mut event);
        prost::encoding::encode_key(
            BATCH_FIELD,
            prost::encoding::WireType::LengthDelimited,
            &mut event,
        );
        prost::encoding::encode_varint(inner as u64, &mut event);
        for change in &self.changes {
            let change = change.get(GRPC_PREFIX..).unwrap_or_default();
            put_bytes(BATCH_EVENTS_FIELD, change, &mut event);
        }
        finish_message(event)
    }
}

/// A stream of node `node` (which has no session in the store) fed by `attached` of `hub`, as
/// an agent's Watch is.
#[cfg(test)]
pub(super) fn follow(hub: Arc<Hub>, attached: Attached, node: &str, batches: bool) -> WatchStream {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let forwarder = Forwarder {
        hub,
        session: Vec::new(),
        session_revision: 0,
        net: "test".into(),
        node: node.to_owned(),
        batches,
        _connected: metrics.stream_opened(),
        metrics,
    };
    forwarder.into_stream(attached)
}
