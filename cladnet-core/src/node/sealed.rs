//! SEALED links inside the Node: the WireGuard control side (a cladnet-wg [`Device`]:
//! handshakes, indexes, cookies, timers, roaming, packets queued until a session exists),
//! kept in step with the peer table by the same commands the engines get.
//!
//! A Node given a WireGuard key ([`super::Node::with_wireguard`]) seals and opens SEALED
//! traffic itself (`handle_tun_packet`, `handle_datagram`, `handle_timeout`); without one it
//! hands SEALED links to the engines ([`super::Dropped::Sealed`]), as the agent's userspace
//! engine still holds its own device.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Instant,
};

use cladnet_wg::{
    Action, CryptoRandom, Device, PeerData, PeerId, PrivateKey, PublicKey, WallClock,
};

use super::{Command, Dropped, PeerConfig, Transmit, forward::Forwarding};
use crate::policy::{LinkMode, PERSISTENT_KEEPALIVE};

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

    /// Keeps the WireGuard peers in step with a command for the engines.
    pub(super) fn apply(&mut self, now: Instant, command: &Command) {
        match command {
            Command::SetLocal(local) => self.device.set_tunnel_mtu(usize::try_from(local.mtu).ok()),
            Command::UpsertPeer(config) if config.mode == LinkMode::Sealed => {
                self.upsert(now, config);
            }
            Command::UpsertPeer(PeerConfig { slot, .. }) | Command::RemovePeer { slot, .. } => {
                self.remove(*slot);
            }
            // Prefixes are routed by the snapshot; a route's MTU is the engines' (WireGuard
            // pads to the device's tunnel MTU only).
            Command::Publish(_) | Command::RemovePrefixes { .. } | Command::SetRouteMtu { .. } => {}
        }
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
            }
            p.endpoint = config.endpoint;
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
                self.slots.insert(id, config.slot);
                self.peers.insert(
                    config.slot,
                    SealedPeer {
                        id,
                        key: config.public_key,
                        endpoint: config.endpoint,
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
        match action {
            Action::WriteToNetwork { datagram, to } => Ok(Opened::Reply(Transmit {
                to,
                payload: datagram.to_vec(),
            })),
            Action::WriteToTunnel { packet, source } => {
                let owner = id
                    .and_then(|id| self.slots.get(&id))
                    .and_then(|slot| self.peers.get(slot));
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
        while let Some((id, event)) = self.device.poll_event() {
            tracing::debug!(peer = %id, ?event, "WireGuard event");
        }
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
