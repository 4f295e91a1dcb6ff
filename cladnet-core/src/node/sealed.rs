//! SEALED links inside the Node: the WireGuard control side (a cladnet-wg [`Device`]:
//! handshakes, indexes, cookies, timers, roaming, packets queued until a session exists),
//! kept in step with the peer table by the same commands the engines get.
//!
//! A Node given a WireGuard key ([`super::Node::with_wireguard`]) owns its WireGuard peers:
//! it adds, keeps and removes them with the peer table, runs the handshakes and timers, and
//! takes what the packet threads cannot do alone (a packet while no session can send, an
//! initiation). Each peer's data side goes to the engines in [`Command::SealedPeer`]: the
//! agent's packet threads seal and open transport messages through it without the Node, and
//! the simulator lets the Node do that too (`handle_tun_packet`, `handle_datagram`).

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use cladnet_wg::{
    Action, CryptoRandom, Device, PeerData, PeerId, PrivateKey, PublicKey, ReadInitiation,
    WallClock,
};

use super::{Command, Dropped, Event, PeerConfig, Transmit, forward::Forwarding};
use crate::{
    policy::{LinkMode, PERSISTENT_KEEPALIVE},
    relay::{PeerObs, relay_node},
};

/// Largest datagram or inner packet handled.
const MAX_PACKET: usize = 65_535;

/// One SEALED peer's WireGuard peer, by the Node's counter slot.
#[derive(Debug)]
struct SealedPeer {
    id: PeerId,
    /// The key the WireGuard peer was made for: a new key makes a new peer.
    key: [u8; 32],
    /// The endpoint the config last named: only a change moves the WireGuard peer (which
    /// otherwise follows authenticated packets, roaming).
    endpoint: Option<SocketAddrV4>,
    node_id: String,
    overlay_ip: std::net::Ipv4Addr,
    node_index: u32,
}

/// The WireGuard control side of a Node.
#[derive(Debug)]
pub(super) struct Sealed {
    device: Device,
    peers: BTreeMap<u32, SealedPeer>,
    /// WireGuard peer → the Node's counter slot.
    slots: BTreeMap<PeerId, u32>,
    buf: Vec<u8>,
}

/// What a WireGuard datagram came to.
pub(super) enum Opened {
    /// Answer on the network.
    Reply(Transmit),
    /// Write this inner packet to the overlay device.
    Deliver(Vec<u8>),
    /// Absorbed (keepalive, cookie reply).
    Nothing,
}

impl Sealed {
    pub(super) fn new(key: PrivateKey, rng: impl CryptoRandom + 'static, wall: WallClock) -> Self {
        Self {
            device: Device::new(key, rng, wall),
            peers: BTreeMap::new(),
            slots: BTreeMap::new(),
            buf: vec![0; MAX_PACKET + 64],
        }
    }

    /// Keeps the WireGuard peers in step with a command for the engines; for a SEALED
    /// peer, the [`Command::SealedPeer`] that hands its data side to the engines.
    pub(super) fn apply(&mut self, now: Instant, command: &Command) -> Option<Command> {
        match command {
            Command::SetLocal(local) => self.device.set_tunnel_mtu(usize::try_from(local.mtu).ok()),
            Command::UpsertPeer(config) if config.mode == LinkMode::Sealed => {
                self.upsert(now, config);
                let id = self.peers.get(&config.slot)?.id;
                return Some(Command::SealedPeer {
                    slot: config.slot,
                    id,
                    data: self.device.peer_data(id)?,
                });
            }
            Command::UpsertPeer(PeerConfig { slot, .. }) | Command::RemovePeer { slot, .. } => {
                self.remove(*slot);
            }
            // Prefixes are routed by the snapshot; a route's MTU is the engines' (WireGuard
            // pads to the device's tunnel MTU only).
            Command::Publish(_)
            | Command::RemovePrefixes { .. }
            | Command::SetRouteMtu { .. }
            | Command::SealedPeer { .. } => {}
        }
        None
    }

    fn remove(&mut self, slot: u32) {
        if let Some(gone) = self.peers.remove(&slot) {
            self.device.remove_peer(gone.id);
            self.slots.remove(&gone.id);
        }
    }

    /// The WireGuard peer for a SEALED config: kept when the key is unchanged (sessions
    /// survive endpoint and policy updates), re-created otherwise.
    fn upsert(&mut self, now: Instant, config: &PeerConfig) {
        if let Some(p) = self.peers.get_mut(&config.slot)
            && p.key == config.public_key
        {
            if p.endpoint != config.endpoint
                && let Some(ep) = config.endpoint
            {
                let _ = self.device.set_endpoint(p.id, SocketAddr::V4(ep));
                // Re-opens our NAT towards the new endpoint at once.
                self.device.request_keepalive(p.id);
            }
            p.endpoint = config.endpoint;
            p.node_id.clone_from(&config.node_id);
            p.overlay_ip = config.overlay_ip;
            p.node_index = config.node_index;
            return;
        }
        self.remove(config.slot);
        let mut wg = cladnet_wg::PeerConfig::new(PublicKey::from_bytes(config.public_key));
        wg.endpoint = config.endpoint.map(SocketAddr::V4);
        wg.persistent_keepalive = Some(PERSISTENT_KEEPALIVE);
        match self.device.add_peer(now, wg) {
            Ok(id) => {
                // A handshake at the next timeout: the link is up before the first packet,
                // and our NAT is open towards the peer when its initiation comes.
                self.device.request_keepalive(id);
                self.slots.insert(id, config.slot);
                self.peers.insert(
                    config.slot,
                    SealedPeer {
                        id,
                        key: config.public_key,
                        endpoint: config.endpoint,
                        node_id: config.node_id.clone(),
                        overlay_ip: config.overlay_ip,
                        node_index: config.node_index,
                    },
                );
            }
            Err(error) => {
                tracing::warn!(node_id = config.node_id, %error, "cannot add WireGuard peer");
            }
        }
    }

    /// Seals an inner packet for the peer in counter slot `slot`: the datagram to send, or
    /// `None` when it waits for a handshake (whose initiation is then the datagram).
    pub(super) fn encapsulate(
        &mut self,
        now: Instant,
        slot: u32,
        packet: &[u8],
    ) -> Result<Option<Transmit>, Dropped> {
        let id = self.peers.get(&slot).ok_or(Dropped::NoEndpoint)?.id;
        match self.device.encapsulate(now, id, packet, &mut self.buf) {
            Action::WriteToNetwork { datagram, to } => Ok(Some(Transmit {
                to,
                payload: datagram.to_vec(),
            })),
            Action::Done | Action::WriteToTunnel { .. } => Ok(None),
            Action::Err(e) => Err(Dropped::WireGuard(e)),
        }
    }

    /// Handles a WireGuard datagram from `from`, with the cryptokey-routing check of what
    /// it decrypts to (the inner source must be the sending peer's overlay address or lie in
    /// its approved prefixes, as `fwd` routes them: WireGuard's AllowedIPs).
    pub(super) fn decapsulate(
        &mut self,
        now: Instant,
        fwd: &Forwarding,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Opened, Dropped> {
        let (id, action) = self.device.decapsulate(now, from, datagram, &mut self.buf);
        Self::opened(&self.peers, &self.slots, fwd, id, action)
    }

    /// Handles an initiation a [`cladnet_wg::HandshakeGate`] checked and read (its
    /// Diffie-Hellman done outside the Node): the answer is a handshake response.
    pub(super) fn accept_initiation(
        &mut self,
        now: Instant,
        fwd: &Forwarding,
        from: SocketAddr,
        initiation: ReadInitiation,
    ) -> Result<Opened, Dropped> {
        let (id, action) = self
            .device
            .accept_initiation(now, from, initiation, &mut self.buf);
        Self::opened(&self.peers, &self.slots, fwd, id, action)
    }

    fn opened(
        peers: &BTreeMap<u32, SealedPeer>,
        slots: &BTreeMap<PeerId, u32>,
        fwd: &Forwarding,
        id: Option<PeerId>,
        action: Action<'_>,
    ) -> Result<Opened, Dropped> {
        match action {
            Action::WriteToNetwork { datagram, to } => Ok(Opened::Reply(Transmit {
                to,
                payload: datagram.to_vec(),
            })),
            Action::WriteToTunnel { packet, source } => {
                let owner = id
                    .and_then(|id| slots.get(&id))
                    .and_then(|slot| peers.get(slot));
                match owner {
                    Some(p)
                        if matches!(source, IpAddr::V4(src)
                            if fwd.source_allowed_for(p.node_index, p.overlay_ip, src)) =>
                    {
                        Ok(Opened::Deliver(packet.to_vec()))
                    }
                    _ => Err(Dropped::SpoofedSource),
                }
            }
            Action::Done => Ok(Opened::Nothing),
            Action::Err(e) => Err(Dropped::WireGuard(e)),
        }
    }

    /// Runs due WireGuard timers (handshake retries, keepalives, rekeys, queued packets).
    pub(super) fn handle_timeout(&mut self, now: Instant, transmits: &mut VecDeque<Transmit>) {
        if self.device.poll_timeout().is_none_or(|at| at > now) {
            return;
        }
        loop {
            match self.device.update_timers(now, &mut self.buf) {
                (_, Action::WriteToNetwork { datagram, to }) => transmits.push_back(Transmit {
                    to,
                    payload: datagram.to_vec(),
                }),
                (_, Action::Done) => break,
                // Informative only (a peer without an endpoint yet).
                (_, _) => {}
            }
        }
    }

    /// What happened to the WireGuard peers since the last call (handshakes, roaming,
    /// timeouts; the packet threads' roaming included), as the Node's events.
    pub(super) fn poll_events(&mut self, events: &mut VecDeque<Event>) {
        while let Some((id, event)) = self.device.poll_event() {
            let Some(p) = self.slots.get(&id).and_then(|slot| self.peers.get(slot)) else {
                continue;
            };
            let node_id = p.node_id.clone();
            events.push_back(match event {
                cladnet_wg::Event::HandshakeCompleted { .. } => {
                    Event::HandshakeCompleted { node_id }
                }
                cladnet_wg::Event::EndpointChanged { endpoint } => Event::EndpointChanged {
                    node_id,
                    endpoint,
                    roamed: true,
                },
                cladnet_wg::Event::HandshakeTimedOut => Event::HandshakeTimedOut { node_id },
                other => {
                    tracing::debug!(node_id, event = ?other, "WireGuard event");
                    continue;
                }
            });
        }
    }

    /// Every SEALED peer's WireGuard session as the relay paths observe it.
    pub(super) fn observations(&self, now: Instant) -> Vec<PeerObs> {
        self.peers
            .values()
            .filter_map(|p| {
                let stats = self.device.stats(p.id)?;
                let endpoint = match self.device.endpoint(p.id) {
                    Some(SocketAddr::V4(ep)) if relay_node(SocketAddr::V4(ep)).is_none() => {
                        Some(ep)
                    }
                    _ => None,
                };
                Some(PeerObs {
                    node: p.node_index,
                    configured: p.endpoint,
                    endpoint,
                    rx_bytes: stats.rx_bytes,
                    handshake_age: stats
                        .last_handshake
                        .map(|t| now.saturating_duration_since(t)),
                })
            })
            .collect()
    }

    fn by_index(&self, node_index: u32) -> Option<PeerId> {
        self.peers
            .values()
            .find(|p| p.node_index == node_index)
            .map(|p| p.id)
    }

    /// Points the WireGuard peer of node `node_index` at `endpoint` (a relay address or a
    /// direct one): the peer's node id, or `None` for a node without a SEALED peer here.
    pub(super) fn set_endpoint(&mut self, node_index: u32, endpoint: SocketAddr) -> Option<String> {
        let p = self.peers.values().find(|p| p.node_index == node_index)?;
        self.device.set_endpoint(p.id, endpoint).ok()?;
        Some(p.node_id.clone())
    }

    /// Makes WireGuard send node `node_index` a keepalive (or a handshake) at the next
    /// timeout.
    pub(super) fn request_keepalive(&mut self, node_index: u32) -> bool {
        self.by_index(node_index)
            .is_some_and(|id| self.device.request_keepalive(id))
    }

    /// When [`Sealed::handle_timeout`] has work.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.device.poll_timeout()
    }

    /// Keepalives (or handshakes) to every SEALED peer at the next timeout.
    pub(super) fn punch(&mut self) {
        for p in self.peers.values() {
            self.device.request_keepalive(p.id);
        }
    }

    /// The data side of the SEALED peer in counter slot `slot`, for packet threads.
    pub(super) fn peer_data(&self, slot: u32) -> Option<Arc<PeerData>> {
        self.device.peer_data(self.peers.get(&slot)?.id)
    }

    /// Every SEALED peer's counter slot, public key and current endpoint, as the device
    /// holds them (for consistency checks).
    pub(super) fn peers(&self) -> impl Iterator<Item = (u32, [u8; 32], Option<SocketAddr>)> + '_ {
        self.peers
            .iter()
            .map(|(slot, p)| (*slot, p.key, self.device.endpoint(p.id)))
    }
}
