//! The Watch stream: a snapshot of a network, then its changes in revision order.
//!
//! One store watch per stream, on the network's key prefix. An agent that reconnects passes
//! the last revision it processed and gets exactly the changes after it; if the store has
//! compacted that far, it gets a fresh snapshot instead.

use std::pin::Pin;

use cladnet_proto::v1::{self as pb, watch_event::Event};
use cladnet_store::{Error as StoreError, KeyValue, Revision, Store, WatchEvent};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    keys::{self, KeyKind},
    model::{self, CommandRecord, NetworkRecord, PeerRecord, TestRecord},
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
        self.check_session(&req.cladnet_id, &req.host_id, bearer)
            .await?;
        let first = if req.from_revision == 0 {
            Start::Snapshot(Box::new(
                snapshot(self.store.as_ref(), &req.cladnet_id).await?,
            ))
        } else {
            Start::Resume(
                self.network(&req.cladnet_id).await?.0,
                req.from_revision + 1,
            )
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = Forwarder {
            store: self.store.clone(),
            net: req.cladnet_id,
            node: req.host_id,
            tx,
        };
        tokio::spawn(task.run(first));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

enum Start {
    Snapshot(Box<(pb::WatchEvent, NetworkRecord)>),
    Resume(NetworkRecord, Revision),
}

/// Reads a network and its peers at one revision.
async fn snapshot(store: &dyn Store, net: &str) -> Result<(pb::WatchEvent, NetworkRecord)> {
    // The network key is a prefix of everything in the network: one range, one revision.
    let range = store.range(&keys::network(net)).await?;
    let mut network = None;
    let mut peers: Vec<(PeerRecord, i64)> = Vec::new();
    for kv in &range.kvs {
        match keys::classify(net, &kv.key) {
            Some(KeyKind::Network) => network = Some(model::decode::<NetworkRecord>(kv)?),
            Some(KeyKind::Peer(_)) => peers.push((model::decode(kv)?, kv.mod_revision)),
            _ => {}
        }
    }
    let network = network.ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
    let event = pb::WatchEvent {
        revision: range.revision,
        event: Some(Event::Snapshot(pb::Snapshot {
            network: Some(network.to_proto(range.revision)),
            peers: peers
                .iter()
                .map(|(p, rev)| p.to_proto(&network, *rev))
                .collect(),
        })),
    };
    Ok((event, network))
}

/// Moves store events to one agent's stream.
struct Forwarder {
    store: std::sync::Arc<dyn Store>,
    net: String,
    node: String,
    tx: mpsc::Sender<Result<pb::WatchEvent>>,
}

impl Forwarder {
    async fn run(self, first: Start) {
        let (mut network, mut next) = match first {
            Start::Snapshot(first) => {
                let (event, network) = *first;
                let next = event.revision + 1;
                if self.tx.send(Ok(event)).await.is_err() {
                    return;
                }
                (network, next)
            }
            Start::Resume(network, next) => (network, next),
        };
        loop {
            match self.follow(&mut network, next).await {
                Ok(()) => return,
                Err(StoreError::Compacted { .. }) => {
                    debug!(network = %self.net, node = %self.node, "watch history compacted: sending a new snapshot");
                    match snapshot(self.store.as_ref(), &self.net).await {
                        Ok((event, n)) => {
                            next = event.revision + 1;
                            network = n;
                            if self.tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!(network = %self.net, node = %self.node, error = %e, "watch failed");
                    let _ = self.tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
    }

    /// Forwards events from revision `next` on; returns `Ok` when the stream should end (agent
    /// gone, network deleted), `Err` when the store watch failed.
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
            let (mapped, last) = match self.map(network, &event) {
                Ok(m) => m,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return Ok(());
                }
            };
            if let Some(mapped) = mapped
                && self.tx.send(Ok(mapped)).await.is_err()
            {
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The API event for a store event, if this agent cares; `true` when the stream ends.
    fn map(
        &self,
        network: &mut NetworkRecord,
        event: &WatchEvent,
    ) -> Result<(Option<pb::WatchEvent>, bool)> {
        let revision = event.revision();
        let wrap = |e: Event| {
            Some(pb::WatchEvent {
                revision,
                event: Some(e),
            })
        };
        Ok(match (keys::classify(&self.net, event.key()), event) {
            (Some(KeyKind::Network), WatchEvent::Put(kv)) => {
                *network = model::decode(kv)?;
                (
                    wrap(Event::NetworkUpdated(network.to_proto(revision))),
                    false,
                )
            }
            (Some(KeyKind::Network), WatchEvent::Delete { .. }) => {
                (wrap(Event::NetworkDeleted(self.net.clone())), true)
            }
            (Some(KeyKind::Peer(_)), WatchEvent::Put(kv)) => {
                let peer: PeerRecord = model::decode(kv)?;
                (
                    wrap(Event::PeerUpserted(peer.to_proto(network, revision))),
                    false,
                )
            }
            (Some(KeyKind::Peer(node)), WatchEvent::Delete { .. }) => {
                (wrap(Event::PeerRemoved(node.to_owned())), false)
            }
            (Some(KeyKind::Command(node)), WatchEvent::Put(kv)) if node == self.node => {
                let cmd: CommandRecord = model::decode(kv)?;
                let command = pb::Command {
                    command_type: cmd.command_type,
                    command_id: cmd.command_id,
                };
                (wrap(Event::Command(command)), false)
            }
            (Some(KeyKind::Test(_)), WatchEvent::Put(kv)) => {
                (wrap(Event::TestRequested(test(&self.net, kv)?)), false)
            }
            _ => (None, false),
        })
    }
}

fn test(net: &str, kv: &KeyValue) -> Result<pb::ConnectivityTest> {
    let record: TestRecord = model::decode(kv)?;
    Ok(super::commands::test_view(net, &record, Vec::new()))
}
