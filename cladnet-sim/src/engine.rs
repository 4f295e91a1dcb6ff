//! Model engines: what a dataplane engine (the userspace engine's threads, the eBPF maps)
//! holds after applying what it was given. The staleness check compares every copy an engine
//! keeps against the Node, so a design in which some copy misses a change fails the check.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use cladnet_core::node::{
    Command, Event, Forwarding, LocalConfig, Node, NodeConfig, PeerConfig, WatchEvent,
};

/// A dataplane engine as the simulator models it.
pub trait Engine: std::fmt::Debug {
    /// A command from the Node.
    fn apply(&mut self, command: &Command);

    /// A Watch event as the agent received it at `now` (only the old design's engine reads
    /// these).
    fn watch(&mut self, _now: Instant, _event: &WatchEvent) {}

    /// An event from the Node (only the old design's engine reads these).
    fn event(&mut self, _event: &Event) {}

    /// Every copy of the installed peers this engine holds, by name.
    fn copies(&self) -> Vec<(&'static str, BTreeMap<String, PeerConfig>)>;

    /// This node's configuration as the engine has it.
    fn local(&self) -> Option<&LocalConfig>;
}

/// An engine of the Node design: it applies the Node's commands, nothing else.
#[derive(Debug, Default)]
pub struct ModelEngine {
    local: Option<LocalConfig>,
    peers: BTreeMap<String, PeerConfig>,
    slots: BTreeMap<u32, String>,
    published: Option<Arc<Forwarding>>,
}

impl Engine for ModelEngine {
    fn apply(&mut self, command: &Command) {
        match command {
            Command::SetLocal(l) => self.local = Some(l.clone()),
            Command::UpsertPeer(p) => {
                // A slot held by another peer would be a Node bug (two peers, one counter).
                if let Some(other) = self.slots.insert(p.slot, p.node_id.clone()) {
                    assert_eq!(other, p.node_id, "slot {} given twice", p.slot);
                }
                self.peers.insert(p.node_id.clone(), p.clone());
            }
            Command::RemovePeer { node_id, slot, .. } => {
                self.peers.remove(node_id);
                self.slots.remove(slot);
            }
            Command::Publish(f) => self.published = Some(f.clone()),
            // The simulator runs no path MTU discovery.
            Command::SetRouteMtu { .. } | Command::SealedPeer { .. } => {}
            Command::RemovePrefixes { .. } => {}
        }
    }

    fn copies(&self) -> Vec<(&'static str, BTreeMap<String, PeerConfig>)> {
        let snapshot = self
            .published
            .iter()
            .flat_map(|f| f.peers())
            .map(|p| (p.node_id.clone(), PeerConfig::clone(p)))
            .collect();
        vec![
            ("engine", self.peers.clone()),
            ("published snapshot", snapshot),
        ]
    }

    fn local(&self) -> Option<&LocalConfig> {
        self.local.as_ref()
    }
}

/// The old design (before issue 12), kept to show the staleness check catches it: the daemon
/// keeps its own peer table, fed by the Watch stream, and builds the kernel's peers from it;
/// when the router learns a port from a packet, the event makes the daemon patch the kernel
/// copy directly, skipping its table, which is then stale. Here the simulated Node plays the
/// router, and the daemon's table is a second Node that only ever sees the Watch stream.
#[derive(Debug)]
pub struct LegacyEngine {
    table: Node,
    local: Option<LocalConfig>,
    kernel: BTreeMap<String, PeerConfig>,
}

impl LegacyEngine {
    /// The old daemon of the node `config` describes.
    pub fn new(config: NodeConfig) -> Self {
        Self {
            table: Node::new(config),
            local: None,
            kernel: BTreeMap::new(),
        }
    }
}

impl Engine for LegacyEngine {
    fn apply(&mut self, _command: &Command) {}

    fn watch(&mut self, now: Instant, event: &WatchEvent) {
        self.table.handle_watch_event(now, event.clone());
        while let Some(c) = self.table.poll_command() {
            match c {
                Command::SetLocal(l) => self.local = Some(l),
                Command::UpsertPeer(p) => {
                    self.kernel.insert(p.node_id.clone(), p);
                }
                Command::RemovePeer { node_id, .. } => {
                    self.kernel.remove(&node_id);
                }
                Command::Publish(_)
                | Command::RemovePrefixes { .. }
                | Command::SetRouteMtu { .. }
                | Command::SealedPeer { .. } => {}
            }
        }
        // Its probes and packets go nowhere: only its table matters here.
        while self.table.poll_transmit().is_some() {}
    }

    fn event(&mut self, event: &Event) {
        // daemon/remote.rs before issue 12: read the router's config back and build an
        // UpsertPeer for the kernel, without telling the table.
        if let Event::EndpointLearned { node_id, endpoint } = event
            && let Some(p) = self.kernel.get_mut(node_id)
        {
            p.endpoint = Some(*endpoint);
        }
    }

    fn copies(&self) -> Vec<(&'static str, BTreeMap<String, PeerConfig>)> {
        vec![
            ("daemon table", self.table.table().installed().clone()),
            ("kernel", self.kernel.clone()),
        ]
    }

    fn local(&self) -> Option<&LocalConfig> {
        self.local.as_ref()
    }
}
