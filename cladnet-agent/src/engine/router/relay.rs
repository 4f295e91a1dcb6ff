//! What the relay hooks ([`crate::engine::relay`]) read from the published peers. Lookups by
//! node index scan them: they run once per relay tick (and per path action), never per
//! packet.

use std::sync::Arc;

use super::{Entry, Router};
use crate::engine::relay::RelayIo;

impl Router {
    /// The relay hooks.
    pub fn relay(&self) -> &RelayIo {
        &self.relay
    }

    /// The Node's last published forwarding snapshot.
    pub fn forwarding(&self) -> Arc<cladnet_core::node::Forwarding> {
        self.routes.load().fwd.clone()
    }

    /// This node's index (0 until the Node published one).
    pub fn local_index(&self) -> u32 {
        self.routes.load().fwd.local_index()
    }

    fn by_index<T>(&self, node: u32, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        let routes = self.routes.load();
        let entry = routes.entries().find(|e| e.config.node_index == node)?;
        Some(f(entry))
    }

    /// The node id of node index `node`.
    pub fn node_id(&self, node: u32) -> Option<String> {
        self.by_index(node, |e| e.config.node_id.clone())
    }

    /// The node index of node id `node_id`.
    pub fn node_index(&self, node_id: &str) -> Option<u32> {
        let routes = self.routes.load();
        let entry = routes.entries().find(|e| e.config.node_id == node_id)?;
        Some(entry.config.node_index)
    }
}
