//! The Watch stream: a snapshot of a network, then its changes in revision order.
//!
//! A new stream subscribes to its network's shared hub (one store watch per network, see
//! [`super::hub`]) and only then reads the snapshot, so nothing committed after the snapshot is
//! missed; hub events at or below the snapshot's revision are skipped. An agent that reconnects
//! passes the last revision it processed and gets exactly the changes after it from a store
//! watch of its own; if the store has compacted that far, it gets a fresh snapshot instead.

use std::{pin::Pin, sync::Arc};

use cladnet_proto::v1::{self as pb, watch_event::Event};
use cladnet_store::{Error as StoreError, Revision, Store};
use futures::{Stream, StreamExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::{
    Controller,
    hub::{self, HubEvent},
};
use crate::{
    auth::sha256_hex,
    error::{ControllerError, Result},
    keys,
    model::{self, NetworkRecord, PeerRecord},
    validate,
};

/// Events for one agent; ends with an error or when the network is deleted.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent>> + Send>>;

/// Events buffered per stream before the sender waits for the agent.
const BUFFER: usize = 256;

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
        let (tx, rx) = mpsc::channel(BUFFER);
        let forwarder = Forwarder {
            store: self.store.clone(),
            session: sha256_hex(bearer).into_bytes(),
            session_revision,
            net: req.cladnet_id,
            node: req.host_id,
            tx,
            metrics: self.metrics().clone(),
            _connected: self.metrics().stream_opened(),
        };
        if req.from_revision == 0 {
            let changes = self.hubs.subscribe(&self.store, &forwarder.net).await?;
            // Checked again now that the hub delivers session changes to this stream: a
            // re-join or delete between the first check and the subscription is caught here.
            self.check_session(&forwarder.net, &forwarder.node, bearer)
                .await?;
            let first = snapshot(self.store.as_ref(), &forwarder.net).await?;
            tokio::spawn(forwarder.run_shared(changes, first));
        } else {
            let current = self
                .store
                .range(&keys::session(&forwarder.net, &forwarder.node))
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
            let network = self.network(&forwarder.net).await?.0;
            tokio::spawn(forwarder.run_resumed(network, req.from_revision + 1));
        }
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Reads a network and its peers. The peers are read first and the snapshot carries their
/// read revision: a network change racing with the reads is in the snapshot, delivered after
/// it, or both (applying it twice is harmless).
async fn snapshot(store: &dyn Store, net: &str) -> Result<(pb::WatchEvent, NetworkRecord)> {
    let peers = store.range(&keys::peers(net)).await?;
    let kv = store
        .get(&keys::network(net))
        .await?
        .ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
    let network: NetworkRecord = model::decode(&kv)?;
    let list = peers
        .kvs
        .iter()
        .map(|kv| Ok(model::decode::<PeerRecord>(kv)?.to_proto(&network, kv.mod_revision)))
        .collect::<Result<Vec<_>>>()?;
    let event = pb::WatchEvent {
        revision: peers.revision,
        event: Some(Event::Snapshot(pb::Snapshot {
            network: Some(network.to_proto(kv.mod_revision)),
            peers: list,
        })),
    };
    Ok((event, network))
}

/// Moves events to one agent's stream.
struct Forwarder {
    store: Arc<dyn Store>,
    /// SHA-256 (hex) of the session token the stream was opened with.
    session: Vec<u8>,
    /// Store revision the session was written at: only later session changes revoke it (a
    /// resumed stream replays older ones).
    session_revision: Revision,
    net: String,
    node: String,
    tx: mpsc::Sender<Result<pb::WatchEvent>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Counts this stream as a connected agent while it lives.
    _connected: crate::metrics::StreamGuard,
}

impl Forwarder {
    /// Sends one item to the agent's stream (counted when it is an event).
    async fn emit(
        &self,
        item: Result<pb::WatchEvent>,
    ) -> std::result::Result<(), mpsc::error::SendError<Result<pb::WatchEvent>>> {
        let event = item.is_ok();
        self.tx.send(item).await?;
        if event {
            self.metrics.event_sent();
        }
        Ok(())
    }

    /// Ends the stream: its session was replaced or removed.
    async fn revoked(&self) {
        debug!(network = %self.net, node = %self.node, "session revoked: ending its watch");
        let e = ControllerError::Unauthenticated(format!(
            "session of peer {:?} was revoked or replaced; join again",
            self.node
        ));
        let _ = self.emit(Err(e)).await;
    }

    /// Snapshot, then the shared hub's changes after it.
    async fn run_shared(
        self,
        mut changes: broadcast::Receiver<Arc<HubEvent>>,
        first: (pb::WatchEvent, NetworkRecord),
    ) {
        let mut floor = first.0.revision;
        if self.emit(Ok(first.0)).await.is_err() {
            return;
        }
        loop {
            match changes.recv().await {
                Ok(change) => {
                    if let HubEvent::Failed(reason) = &*change {
                        let e = ControllerError::Aborted(format!(
                            "watch interrupted ({reason}); reconnect"
                        ));
                        let _ = self.emit(Err(e)).await;
                        return;
                    }
                    if change.revokes(&self.node, &self.session, floor.max(self.session_revision)) {
                        return self.revoked().await;
                    }
                    if let Some((event, last)) = change.for_node(&self.node, floor)
                        && (self.emit(Ok(event)).await.is_err() || last)
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(network = %self.net, node = %self.node, missed, "slow stream: sending a new snapshot");
                    match snapshot(self.store.as_ref(), &self.net).await {
                        Ok((event, _)) => {
                            floor = event.revision;
                            if self.emit(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = self.emit(Err(e)).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// A resumed stream: a store watch of its own from `next`.
    async fn run_resumed(self, mut network: NetworkRecord, mut next: Revision) {
        loop {
            match self.follow(&mut network, next).await {
                Ok(()) => return,
                Err(StoreError::Compacted { .. }) => {
                    debug!(network = %self.net, node = %self.node, "watch history compacted: sending a new snapshot");
                    match snapshot(self.store.as_ref(), &self.net).await {
                        Ok((event, n)) => {
                            next = event.revision + 1;
                            network = n;
                            if self.emit(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = self.emit(Err(e)).await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!(network = %self.net, node = %self.node, error = %e, "watch failed");
                    let _ = self.emit(Err(e.into())).await;
                    return;
                }
            }
        }
    }

    /// Forwards events from revision `next` on; `Ok` when the stream should end (agent gone,
    /// network deleted), `Err` when the store watch failed.
    async fn follow(
        &self,
        network: &mut NetworkRecord,
        next: Revision,
    ) -> std::result::Result<(), StoreError> {
        let mut events = self
            .store
            .watch(&keys::network(&self.net), Some(next))
            .await?;
        while let Some(event) = events.next().await {
            let event = event?;
            let change = match hub::map(&self.net, Some(network), &event) {
                Ok(Some(change)) => change,
                Ok(None) => continue,
                Err(e) => {
                    let _ = self.emit(Err(e)).await;
                    return Ok(());
                }
            };
            if change.revokes(
                &self.node,
                &self.session,
                (next - 1).max(self.session_revision),
            ) {
                self.revoked().await;
                return Ok(());
            }
            if let Some((event, last)) = change.for_node(&self.node, next - 1)
                && (self.emit(Ok(event)).await.is_err() || last)
            {
                return Ok(());
            }
        }
        Ok(())
    }
}
