//! One store watch per network, shared by every Watch stream of that network.
//!
//! Each store event is decoded and turned into an API event once, then broadcast; streams only
//! filter (commands go to their target) and forward. With a thousand agents this replaces a
//! thousand store watches (and a thousand JSON decodes per change) by one.

use std::{collections::HashMap, sync::Arc};

use cladnet_proto::v1::watch_event::Event;
use cladnet_store::{Revision, Store, WatchEvent};
use futures::StreamExt as _;
use tokio::sync::{Mutex, broadcast};
use tracing::{debug, warn};

use crate::{
    error::Result,
    keys::{self, KeyKind},
    model::{self, CommandRecord, NetworkRecord, PeerRecord, TestRecord},
};

/// Events a slow stream may fall behind before it is resynchronised with a fresh snapshot.
const CAPACITY: usize = 4096;

/// One change, decoded once.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "events travel behind an Arc, created once each"
)]
pub(super) enum HubEvent {
    /// An API event at a store revision; `target` limits it to one node (commands).
    Change {
        /// Store revision.
        revision: Revision,
        /// The event.
        event: Event,
        /// Only for this node, if set.
        target: Option<String>,
        /// The network is gone: streams end after this.
        last: bool,
    },
    /// A node's session was replaced (it joined again) or removed (peer deleted): that
    /// node's open streams with another session end as Unauthenticated.
    Session {
        /// Store revision.
        revision: Revision,
        /// The node.
        node: String,
        /// SHA-256 (hex) of the node's session token now; `None` when removed.
        hash: Option<Vec<u8>>,
    },
    /// The store watch failed: streams end with an error and agents reconnect.
    Failed(String),
}

/// The hubs of all networks with open streams.
#[derive(Debug, Default)]
pub(super) struct Hubs {
    senders: Mutex<HashMap<String, broadcast::Sender<Arc<HubEvent>>>>,
}

impl Hubs {
    /// A receiver of network `net`'s changes, starting the network's hub if needed. Every
    /// change committed after this returns is delivered.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        net: &str,
    ) -> Result<broadcast::Receiver<Arc<HubEvent>>> {
        let mut senders = self.senders.lock().await;
        if let Some(tx) = senders.get(net) {
            return Ok(tx.subscribe());
        }
        let events = store.watch(&keys::network(net), None).await?;
        let (tx, rx) = broadcast::channel(CAPACITY);
        senders.insert(net.to_owned(), tx.clone());
        let hub = Hub {
            hubs: self.clone(),
            store: store.clone(),
            net: net.to_owned(),
            tx,
        };
        tokio::spawn(hub.run(events));
        Ok(rx)
    }
}

struct Hub {
    hubs: Arc<Hubs>,
    store: Arc<dyn Store>,
    net: String,
    tx: broadcast::Sender<Arc<HubEvent>>,
}

impl Hub {
    async fn run(self, mut events: cladnet_store::WatchStream) {
        let mut network: Option<NetworkRecord> =
            match self.store.get(&keys::network(&self.net)).await {
                Ok(kv) => kv.and_then(|kv| model::decode(&kv).ok()),
                Err(e) => return self.fail(e.to_string()).await,
            };
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => return self.fail(e.to_string()).await,
            };
            let mapped = match map(&self.net, network.as_mut(), &event) {
                Ok(m) => m,
                Err(e) => {
                    warn!(network = %self.net, key = event.key(), error = %e, "undecodable record skipped");
                    continue;
                }
            };
            let Some(change) = mapped else { continue };
            let last = matches!(&change, HubEvent::Change { last: true, .. });
            if self.tx.send(Arc::new(change)).is_err() && self.retire().await {
                return;
            }
            if last {
                self.retire_now().await;
                return;
            }
        }
        self.fail("store watch ended".into()).await;
    }

    /// Stops the hub if nobody listens (checked under the registry lock, so a stream
    /// subscribing at the same moment keeps it alive).
    async fn retire(&self) -> bool {
        let mut senders = self.hubs.senders.lock().await;
        if self.tx.receiver_count() == 0 {
            senders.remove(&self.net);
            debug!(network = %self.net, "watch hub stopped: no streams");
            true
        } else {
            false
        }
    }

    async fn retire_now(&self) {
        self.hubs.senders.lock().await.remove(&self.net);
    }

    async fn fail(&self, reason: String) {
        warn!(network = %self.net, %reason, "watch hub failed");
        self.retire_now().await;
        let _ = self.tx.send(Arc::new(HubEvent::Failed(reason)));
    }
}

impl HubEvent {
    /// The API event node `node` should get, if any, for a change after revision `floor`, and
    /// whether its stream ends after it. `None` for failures (see [`HubEvent::Failed`]).
    pub(super) fn for_node(
        &self,
        node: &str,
        floor: Revision,
    ) -> Option<(cladnet_proto::v1::WatchEvent, bool)> {
        match self {
            Self::Change {
                revision,
                event,
                target,
                last,
            } => {
                if *revision <= floor || target.as_deref().is_some_and(|t| t != node) {
                    return None;
                }
                Some((
                    cladnet_proto::v1::WatchEvent {
                        revision: *revision,
                        event: Some(event.clone()),
                    },
                    *last,
                ))
            }
            Self::Session { .. } | Self::Failed(_) => None,
        }
    }

    /// Whether this change revokes the session with hash `session` of node `node`, for a
    /// stream that has seen everything up to revision `floor`.
    pub(super) fn revokes(&self, node: &str, session: &[u8], floor: Revision) -> bool {
        match self {
            Self::Session {
                revision,
                node: n,
                hash,
            } => *revision > floor && n == node && hash.as_deref() != Some(session),
            _ => false,
        }
    }
}

/// The API change for a store event of network `net`, if any stream cares. `network` is the
/// current network record (updated by network events); used by the hub and by resumed streams.
pub(super) fn map(
    net: &str,
    network: Option<&mut NetworkRecord>,
    event: &WatchEvent,
) -> Result<Option<HubEvent>> {
    let revision = event.revision();
    let change = |event: Event, target: Option<String>, last: bool| {
        Some(HubEvent::Change {
            revision,
            event,
            target,
            last,
        })
    };
    Ok(match (keys::classify(net, event.key()), event, network) {
        (Some(KeyKind::Network), WatchEvent::Put(kv), Some(network)) => {
            *network = model::decode(kv)?;
            change(
                Event::NetworkUpdated(network.to_proto(revision)),
                None,
                false,
            )
        }
        (Some(KeyKind::Network), WatchEvent::Delete { .. }, _) => {
            change(Event::NetworkDeleted(net.to_owned()), None, true)
        }
        (Some(KeyKind::Peer(_)), WatchEvent::Put(kv), Some(network)) => {
            let peer: PeerRecord = model::decode(kv)?;
            change(
                Event::PeerUpserted(peer.to_proto(network, revision)),
                None,
                false,
            )
        }
        (Some(KeyKind::Peer(node)), WatchEvent::Delete { .. }, _) => {
            change(Event::PeerRemoved(node.to_owned()), None, false)
        }
        (Some(KeyKind::Command(node)), WatchEvent::Put(kv), _) => {
            let cmd: CommandRecord = model::decode(kv)?;
            let command = cladnet_proto::v1::Command {
                command_type: cmd.command_type,
                command_id: cmd.command_id,
            };
            change(Event::Command(command), Some(node.to_owned()), false)
        }
        (Some(KeyKind::Session(node)), WatchEvent::Put(kv), _) => Some(HubEvent::Session {
            revision,
            node: node.to_owned(),
            hash: Some(kv.value.clone()),
        }),
        (Some(KeyKind::Session(node)), WatchEvent::Delete { .. }, _) => Some(HubEvent::Session {
            revision,
            node: node.to_owned(),
            hash: None,
        }),
        (Some(KeyKind::Test(_)), WatchEvent::Put(kv), _) => {
            change(Event::TestRequested(test(net, kv)?), None, false)
        }
        _ => None,
    })
}

/// The API view of a stored test request.
fn test(net: &str, kv: &cladnet_store::KeyValue) -> Result<cladnet_proto::v1::ConnectivityTest> {
    let record: TestRecord = model::decode(kv)?;
    Ok(super::commands::test_view(net, &record, Vec::new()))
}
