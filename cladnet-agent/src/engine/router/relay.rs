//! What the relay hooks ([`crate::engine::relay`]) read from and do to the WireGuard
//! sessions. Lookups by node index scan the published peers: they run once per relay tick
//! (and per path action), never per packet.

use std::{net::SocketAddr, time::Instant};

use cladnet_core::relay::PeerObs;

use super::{Entry, Router};
use crate::engine::relay::{RelayIo, real};

impl Router {
    /// The relay hooks.
    pub fn relay(&self) -> &RelayIo {
        &self.relay
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

    /// Every SEALED peer's WireGuard session as the relay paths observe it.
    pub fn relay_observations(&self, now: Instant) -> Vec<PeerObs> {
        let routes = self.routes.load();
        let dev = self.device();
        routes
            .entries()
            .filter_map(|e| {
                let id = e.wg?;
                let stats = dev.stats(id)?;
                Some(PeerObs {
                    node: e.config.node_index,
                    configured: e.config.endpoint,
                    endpoint: real(dev.endpoint(id)),
                    rx_bytes: stats.rx_bytes,
                    handshake_age: stats
                        .last_handshake
                        .map(|t| now.saturating_duration_since(t)),
                })
            })
            .collect()
    }

    /// Points node `node`'s WireGuard peer at `endpoint` (a relay address or a direct one).
    pub fn set_peer_endpoint(&self, node: u32, endpoint: SocketAddr) {
        if let Some(Some(id)) = self.by_index(node, |e| e.wg) {
            let _ = self.device().set_endpoint(id, endpoint);
        }
    }

    /// Makes WireGuard send node `node` a keepalive (or a handshake) at its next timer tick.
    pub fn request_keepalive(&self, node: u32) {
        if let Some(Some(id)) = self.by_index(node, |e| e.wg) {
            self.device().request_keepalive(id);
        }
    }
}
