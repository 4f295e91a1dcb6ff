//! Watch events → the Node: the controller's records decoded into [`WatchEvent`]s. A record
//! the agent cannot use is logged and counted, never fatal; only this node's deletion and
//! the network's end stop the agent.

use anyhow::bail;
use cladnet_core::node::WatchEvent;
use cladnet_proto::v1::{self as pb, watch_event::Event as WatchEv};
use tracing::{info, warn};

use std::sync::Mutex;

use super::{Agent, convert, status::AgentInfo};
use crate::engine::relay::CAPABILITY;

impl Agent {
    /// A Watch message: its event, or each event of a batch, handed to the Node, then the
    /// Node's commands applied once (a batch of changes costs one pass over the dataplane).
    pub(super) async fn on_event(&mut self, ev: pb::WatchEvent) -> anyhow::Result<()> {
        let mut events = Vec::new();
        match ev.event {
            Some(WatchEv::Batch(batch)) => {
                for ev in batch.events {
                    events.extend(self.take(ev)?);
                }
            }
            event => events.extend(self.take(pb::WatchEvent { event, ..ev })?),
        }
        if events.is_empty() {
            return Ok(());
        }
        self.node
            .with(|node, now| {
                for event in events {
                    node.handle_watch_event(now, event);
                }
            })
            .await
    }

    /// One Watch event: decoded into a [`WatchEvent`] for the Node. A record the agent cannot
    /// use is logged and counted, never fatal; only this node's deletion and the network's
    /// end stop the agent.
    fn take(&mut self, ev: pb::WatchEvent) -> anyhow::Result<Option<WatchEvent>> {
        let me = self.identity.node_id.clone();
        self.note_relays(&ev);
        let event = match ev.event {
            Some(WatchEv::Snapshot(s)) => {
                let mut local = None;
                let mut peers = Vec::new();
                for p in &s.peers {
                    if p.host_id == me {
                        local = self.accept(convert::self_record(p));
                    } else if let Some(r) = self.accept(convert::remote(p)) {
                        peers.push(r);
                    }
                }
                info!(peers = peers.len(), revision = ev.revision, "snapshot");
                if let Some(me) = &local {
                    self.note_self(me);
                }
                Some(WatchEvent::Snapshot {
                    policy: s.network.as_ref().map(convert::policy),
                    local,
                    peers,
                })
            }
            Some(WatchEv::PeerUpserted(p)) if p.host_id == me => {
                let me = self.accept(convert::self_record(&p));
                if let Some(me) = &me {
                    self.note_self(me);
                }
                me.map(WatchEvent::LocalUpdated)
            }
            Some(WatchEv::PeerUpserted(p)) => self
                .accept(convert::remote(&p))
                .map(WatchEvent::PeerUpserted),
            Some(WatchEv::PeerRemoved(id)) if id == me => {
                bail!(
                    "this peer was deleted from network {:?}; not rejoining on my own",
                    self.cfg.network
                )
            }
            Some(WatchEv::PeerRemoved(id)) => Some(WatchEvent::PeerRemoved(id)),
            Some(WatchEv::NetworkUpdated(n)) => {
                info!(
                    encryption = n.encryption,
                    rule = n.rule_type,
                    "network policy updated"
                );
                Some(WatchEvent::PolicyChanged(convert::policy(&n)))
            }
            Some(WatchEv::NetworkDeleted(id)) => bail!("network {id:?} was deleted"),
            Some(WatchEv::Command(c)) => self.on_command(&c),
            Some(WatchEv::ProbeRequested(p)) => {
                self.on_probe(&p);
                None
            }
            Some(WatchEv::TestRequested(t)) => {
                self.start_test(t);
                None
            }
            Some(WatchEv::Batch(_)) => {
                // The controller never nests batches: count it as an unusable record.
                self.accept::<()>(Err(convert::RecordError {
                    host_id: String::new(),
                    field: "batch",
                    reason: "a batch inside a batch".into(),
                }));
                None
            }
            None => None,
        };
        Ok(event)
    }

    /// Which peers offer to relay (their records' capabilities).
    fn note_relays(&self, ev: &pb::WatchEvent) {
        let relay = self.engine.router().relay();
        let note = |p: &pb::Peer| {
            let capable = p.capabilities.iter().any(|c| c == CAPABILITY);
            relay.set_capable(&p.host_id, p.node_index, capable);
        };
        match &ev.event {
            Some(WatchEv::Snapshot(s)) => s.peers.iter().for_each(note),
            Some(WatchEv::PeerUpserted(p)) => note(p),
            Some(WatchEv::PeerRemoved(id)) => relay.set_capable(id, 0, false),
            _ => {}
        }
    }

    fn accept<T>(&self, record: Result<T, convert::RecordError>) -> Option<T> {
        accept(&self.info, record)
    }
}

/// A decoded record, or `None` after logging and counting (in `info`, which the status
/// command and the metrics show) why it is unusable.
fn accept<T>(info: &Mutex<AgentInfo>, record: Result<T, convert::RecordError>) -> Option<T> {
    record
        .inspect_err(|error| {
            warn!(%error, "ignoring a Watch record");
            info.lock()
                .unwrap_or_else(|e| e.into_inner())
                .rejected_watch_records += 1;
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_record_is_counted_and_skipped() {
        let info = Mutex::new(AgentInfo::default());
        let bad = pb::Peer {
            host_id: "h1".into(),
            ip: "10.77.0".into(),
            ..pb::Peer::default()
        };
        assert!(accept(&info, convert::remote(&bad)).is_none());
        assert!(accept(&info, convert::self_record(&bad)).is_none());
        assert_eq!(info.lock().unwrap().rejected_watch_records, 2);
    }
}
