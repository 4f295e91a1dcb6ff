//! The controller as the Nodes see it: the store of node records and the network policy, and
//! the Watch stream it sends each connected node (a snapshot on connect, then upserts,
//! removals and policy changes). It can go down: every stream ends, nothing is pushed and
//! reports are refused until it is back and each node reconnects and gets a new snapshot.
//! Changes made to the store while it is down (an operator deleting a node) reach the nodes
//! only through that snapshot.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use cladnet_core::{
    node::{
        SelfRecord, WatchEvent,
        table::{PeerState, RemotePeer},
    },
    policy::{PeerView, Policy, Site},
};

/// The overlay prefix length.
pub const PREFIX_LEN: u8 = 16;

/// One node's record in the store.
#[derive(Clone, Debug)]
pub struct Record {
    /// Node id.
    pub node_id: String,
    /// Overlay address; its bits are the node index too.
    pub overlay_ip: Ipv4Addr,
    /// Endpoints and site.
    pub view: PeerView,
    /// Lifecycle state.
    pub state: PeerState,
    /// WireGuard static public key (SEALED links).
    pub public_key: [u8; 32],
}

impl Record {
    /// The CLAD node index.
    pub fn node_index(&self) -> u32 {
        u32::from(self.overlay_ip)
    }

    /// As the node itself receives it.
    pub fn as_self(&self) -> SelfRecord {
        SelfRecord {
            node_index: self.node_index(),
            overlay_ip: self.overlay_ip,
            prefix_len: PREFIX_LEN,
            view: self.view.clone(),
            prefixes: Vec::new(),
        }
    }

    /// As other nodes receive it.
    pub fn as_peer(&self) -> RemotePeer {
        RemotePeer {
            node_id: self.node_id.clone(),
            node_index: self.node_index(),
            overlay_ip: self.overlay_ip,
            public_key: self.public_key,
            view: self.view.clone(),
            state: self.state,
            prefixes: Vec::new(),
        }
    }
}

/// A Watch event for one node's stream.
#[derive(Clone, Debug)]
pub struct Push {
    /// The node whose stream carries it.
    pub to: String,
    /// The event.
    pub event: WatchEvent,
}

/// The controller model.
#[derive(Debug)]
pub struct Controller {
    up: bool,
    policy: Policy,
    records: BTreeMap<String, Record>,
    streams: BTreeSet<String>,
    next_host: u32,
}

impl Controller {
    /// A controller with `policy` and no nodes.
    pub fn new(policy: Policy) -> Self {
        Self {
            up: true,
            policy,
            records: BTreeMap::new(),
            streams: BTreeSet::new(),
            next_host: 1,
        }
    }

    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The network policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Every record by node id.
    pub fn records(&self) -> &BTreeMap<String, Record> {
        &self.records
    }

    /// Whether `node_id`'s Watch stream is open.
    pub fn connected(&self, node_id: &str) -> bool {
        self.streams.contains(node_id)
    }

    /// A node joins with its site and endpoints; `None` while down.
    pub fn join(
        &mut self,
        node_id: &str,
        site: Site,
        public: SocketAddrV4,
        private: SocketAddrV4,
        public_key: [u8; 32],
    ) -> Option<Vec<Push>> {
        if !self.up {
            return None;
        }
        if !self.records.contains_key(node_id) {
            let host = self.next_host;
            self.next_host += 1;
            let overlay_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)) + host);
            self.records.insert(
                node_id.to_owned(),
                Record {
                    node_id: node_id.to_owned(),
                    overlay_ip,
                    view: PeerView {
                        site,
                        public: None,
                        private: Some(private),
                        external: false,
                    },
                    state: PeerState::Joining,
                    public_key,
                },
            );
        }
        let r = self.records.get_mut(node_id)?;
        r.view.public = Some(public);
        r.state = PeerState::Up;
        Some(self.broadcast(node_id))
    }

    /// A node reports the public endpoint the reflector saw; `None` while down.
    pub fn report_public(&mut self, node_id: &str, public: SocketAddrV4) -> Option<Vec<Push>> {
        if !self.up {
            return None;
        }
        let r = self.records.get_mut(node_id)?;
        if r.view.public == Some(public) {
            return Some(Vec::new());
        }
        r.view.public = Some(public);
        Some(self.broadcast(node_id))
    }

    /// A node opens its Watch stream: its snapshot; `None` while down or before it joined.
    pub fn subscribe(&mut self, node_id: &str) -> Option<Push> {
        if !self.up {
            return None;
        }
        let me = self.records.get(node_id)?;
        let event = WatchEvent::Snapshot {
            policy: Some(self.policy),
            local: Some(me.as_self()),
            peers: self
                .records
                .values()
                .filter(|r| r.node_id != node_id)
                .map(Record::as_peer)
                .collect(),
        };
        self.streams.insert(node_id.to_owned());
        Some(Push {
            to: node_id.to_owned(),
            event,
        })
    }

    /// An operator deletes a node (works on the store while the controller is down; the
    /// streams then learn it from their next snapshot).
    pub fn remove(&mut self, node_id: &str) -> Vec<Push> {
        self.records.remove(node_id);
        self.streams.remove(node_id);
        self.to_others(node_id, || WatchEvent::PeerRemoved(node_id.to_owned()))
    }

    /// An operator changes a node's state (`released`, `down`, ...).
    pub fn set_state(&mut self, node_id: &str, state: PeerState) -> Vec<Push> {
        match self.records.get_mut(node_id) {
            Some(r) => {
                r.state = state;
                self.broadcast(node_id)
            }
            None => Vec::new(),
        }
    }

    /// An operator changes the policy.
    pub fn set_policy(&mut self, policy: Policy) -> Vec<Push> {
        self.policy = policy;
        self.to_others("", || WatchEvent::PolicyChanged(policy))
    }

    /// The controller goes down: every stream ends.
    pub fn go_down(&mut self) {
        self.up = false;
        self.streams.clear();
    }

    /// The controller is back; nodes reconnect on their own.
    pub fn come_up(&mut self) {
        self.up = true;
    }

    /// `node_id`'s record changed: its own stream gets `LocalUpdated`, the others an upsert.
    fn broadcast(&self, node_id: &str) -> Vec<Push> {
        let Some(r) = self.records.get(node_id) else {
            return Vec::new();
        };
        let mut out = self.to_others(node_id, || WatchEvent::PeerUpserted(r.as_peer()));
        if self.streams.contains(node_id) {
            out.push(Push {
                to: node_id.to_owned(),
                event: WatchEvent::LocalUpdated(r.as_self()),
            });
        }
        out
    }

    fn to_others(&self, except: &str, event: impl Fn() -> WatchEvent) -> Vec<Push> {
        if !self.up {
            return Vec::new();
        }
        self.streams
            .iter()
            .filter(|s| *s != except)
            .map(|s| Push {
                to: s.clone(),
                event: event(),
            })
            .collect()
    }
}
