//! The userspace engine's packet logic, without sockets: which peer a packet goes to, PLAIN
//! framing and validation, WireGuard sealing and opening, cryptokey routing, counters.
//!
//! The IO driver ([`super::userspace`]) reads bytes from the TUN device and the UDP socket,
//! hands them here with the current time and performs what comes back. The peer set changes
//! only through [`Router::apply`], with the same [`Command`]s the eBPF engine consumes.
//!
//! Locking: lookups take a read lock on the peer maps (PLAIN traffic never contends);
//! WireGuard state sits behind one mutex, held only for the seal/open of one packet or the
//! processing of one handshake message. Handshake messages (the only ones costing
//! Diffie-Hellman) are not handled on the packet threads: the driver queues them for a thread
//! of their own ([`Router::handshake`]), which also decides when we are under load.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cladnet_common::{
    plain::{self, KnownPeer},
    rx,
    wire::{self, CladHeader, CladType, Demux},
};
use cladnet_core::{
    policy::LinkMode,
    reflector,
    table::{Command, PeerConfig},
};
use cladnet_wg::{
    Action, Device, Event, GateVerdict, HandshakeGate, MessageType, PeerId, PrivateKey, PublicKey,
    WallClock,
};
use tracing::{debug, info, warn};

use super::counters::{Drop, DropCounters, PeerCounters, PeerTraffic};

/// Keepalive interval for SEALED peers: keeps NAT mappings open in both directions.
pub const PERSISTENT_KEEPALIVE: Duration = Duration::from_secs(25);

/// A PLAIN peer's endpoint follows a new port of its address at most this often: anyone who
/// shares the address can send datagrams naming the peer, and each change takes the write
/// lock and makes an event.
pub const PORT_CHANGE_INTERVAL: Duration = Duration::from_secs(1);

/// Learnt endpoint changes kept for the timer thread to collect (a backstop: the rate limit
/// above already bounds them by the number of peers).
const MAX_LEARNED_EVENTS: usize = 1024;

/// What to do with a packet read from the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound<'a> {
    /// Send this datagram.
    Send {
        /// The UDP payload.
        datagram: &'a [u8],
        /// The peer's underlay endpoint.
        to: SocketAddr,
    },
    /// Held for a handshake (SEALED), nothing to send now beyond what timers produce.
    Queued,
    /// Too big for the peer's path: write this ICMP "fragmentation needed" to the TUN device
    /// (counted as a `too_big` drop).
    ToTun(&'a [u8]),
    /// Dropped (and counted).
    Dropped(Drop),
}

/// What to do with a datagram received on the tunnel port.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Write this inner packet to the TUN device.
    Deliver(&'a [u8]),
    /// Answer on the network (handshake response, cookie reply, first transport message).
    Reply {
        /// The UDP payload.
        datagram: &'a [u8],
        /// Where to.
        to: SocketAddr,
    },
    /// A reflector answer to one of our probes.
    Reflected {
        /// The probe's nonce.
        nonce: u64,
        /// Our endpoint as the reflector saw it.
        seen: SocketAddrV4,
    },
    /// Absorbed (keepalive, cookie reply, queued handshake state).
    Nothing,
    /// Dropped (and counted).
    Dropped(Drop),
}

/// Something the control loop may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A WireGuard session with this peer is up.
    HandshakeCompleted {
        /// Node id.
        node_id: String,
    },
    /// A SEALED peer was heard from a new underlay address (roaming), or a PLAIN peer from a
    /// new port of its address (see [`Router::learn_plain_port`]).
    EndpointChanged {
        /// Node id.
        node_id: String,
        /// Its new endpoint.
        endpoint: SocketAddr,
    },
    /// A handshake gave up after its retries.
    HandshakeTimedOut {
        /// Node id.
        node_id: String,
    },
}

/// A peer as the status command and metrics show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    /// Node id.
    pub node_id: String,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// "plain" or "sealed".
    pub mode: &'static str,
    /// Current underlay endpoint (for SEALED peers, where the last authenticated packet came
    /// from).
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last completed handshake (SEALED).
    pub handshake_age_secs: Option<u64>,
    /// Traffic.
    pub traffic: PeerTraffic,
    /// Which engine carries the peer's packets: `userspace`, or `ebpf` when the daemon finds
    /// the kernel carrying it.
    pub engine: &'static str,
    /// The path MTU towards the peer (path MTU discovery).
    pub path_mtu: Option<PathMtuStatus>,
}

struct Entry {
    config: PeerConfig,
    wg: Option<PeerId>,
    counters: Arc<PeerCounters>,
    /// When a PLAIN datagram last moved this peer to another port ([`PORT_CHANGE_INTERVAL`]).
    port_learned_at: Option<Instant>,
}

#[derive(Default)]
struct Peers {
    by_id: HashMap<String, Arc<Entry>>,
    by_ip: HashMap<Ipv4Addr, Arc<Entry>>,
    /// PLAIN peers by underlay endpoint (the only way a PLAIN sender is identified).
    plain_by_endpoint: HashMap<SocketAddrV4, Arc<Entry>>,
    by_wg: HashMap<PeerId, Arc<Entry>>,
}

impl Peers {
    fn insert(&mut self, e: Arc<Entry>) {
        self.by_ip.insert(e.config.overlay_ip, e.clone());
        if e.config.mode == LinkMode::Plain
            && let Some(ep) = e.config.endpoint
        {
            self.plain_by_endpoint.insert(ep, e.clone());
        }
        if let Some(id) = e.wg {
            self.by_wg.insert(id, e.clone());
        }
        self.by_id.insert(e.config.node_id.clone(), e);
    }

    fn remove(&mut self, node_id: &str) -> Option<Arc<Entry>> {
        let e = self.by_id.remove(node_id)?;
        if self
            .by_ip
            .get(&e.config.overlay_ip)
            .is_some_and(|x| Arc::ptr_eq(x, &e))
        {
            self.by_ip.remove(&e.config.overlay_ip);
        }
        if let Some(ep) = e.config.endpoint
            && self
                .plain_by_endpoint
                .get(&ep)
                .is_some_and(|x| Arc::ptr_eq(x, &e))
        {
            self.plain_by_endpoint.remove(&ep);
        }
        if let Some(id) = e.wg {
            self.by_wg.remove(&id);
        }
        Some(e)
    }
}

/// The userspace engine's state: peers, WireGuard sessions and counters.
pub struct Router {
    /// This node's index, written into PLAIN headers.
    local_index: AtomicU32,
    /// This node's overlay address (0.0.0.0 until the interface is configured): the only
    /// inner destination PLAIN datagrams are decapsulated for.
    local_ip: AtomicU32,
    peers: RwLock<Peers>,
    wg: Mutex<Device>,
    drops: DropCounters,
    /// PLAIN endpoint changes learnt from packets, reported with the next timer events.
    learned: Mutex<Vec<PeerEvent>>,
    /// Path MTU discovery towards every peer.
    pmtu: pmtu::PathMtus,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("peers", &self.read_peers().by_id.len())
            .finish_non_exhaustive()
    }
}

/// The operating system's random source, for ephemeral keys and cookie secrets.
struct OsRandom;

impl cladnet_wg::CryptoRandom for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        getrandom::fill(dest).expect("the OS random source works");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Router {
    /// A router with this node's static key and no peers.
    pub fn new(key: PrivateKey) -> Self {
        let now = Instant::now();
        Self {
            local_index: AtomicU32::new(0),
            local_ip: AtomicU32::new(0),
            peers: RwLock::default(),
            wg: Mutex::new(Device::new(
                key,
                OsRandom,
                WallClock::new(now, SystemTime::now()),
            )),
            drops: DropCounters::default(),
            learned: Mutex::default(),
            pmtu: pmtu::PathMtus::default(),
        }
    }

    // A poisoned lock means a packet thread panicked mid-update; the maps are still
    // consistent (every update is a single insert/remove), so keep forwarding.
    fn read_peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn device(&self) -> MutexGuard<'_, Device> {
        self.wg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop counters.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Applies one peer-table command. `SetInterface` only records the node's index and the
    /// MTU (it caps WireGuard padding) here; the driver configures the device itself.
    pub fn apply(&self, now: Instant, local_index: u32, cmd: &Command) {
        match cmd {
            Command::SetInterface { mtu, ip, .. } => {
                self.local_index.store(local_index, Relaxed);
                self.local_ip.store(u32::from(*ip), Relaxed);
                self.pmtu.set_overlay(*mtu, *ip);
                self.device().set_tunnel_mtu(usize::try_from(*mtu).ok());
            }
            Command::UpsertPeer(config) => self.upsert(now, config),
            Command::RemovePeer { node_id, .. } => {
                let gone = self
                    .peers
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(node_id);
                if let Some(id) = gone.and_then(|e| e.wg) {
                    self.device().remove_peer(id);
                }
                info!(node_id, "peer removed");
            }
        }
    }

    fn upsert(&self, now: Instant, config: &PeerConfig) {
        let old = self
            .read_peers()
            .by_id
            .get(&config.node_id)
            .map(|e| (e.wg, e.config.clone(), e.counters.clone()));
        let counters = old.as_ref().map(|o| o.2.clone()).unwrap_or_default();
        let wg = match config.mode {
            LinkMode::Plain => {
                if let Some(id) = old.as_ref().and_then(|o| o.0) {
                    self.device().remove_peer(id);
                }
                None
            }
            LinkMode::Sealed => self.sealed_peer(now, config, old.as_ref().map(|o| (o.0, &o.1))),
        };
        if config.mode == LinkMode::Sealed && wg.is_none() {
            return;
        }
        let entry = Arc::new(Entry {
            config: config.clone(),
            wg,
            counters,
            port_learned_at: None,
        });
        // Install under the write lock in one step: readers see the old entry or the new
        // one, never a half-built peer.
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        peers.remove(&config.node_id);
        peers.insert(entry);
        drop(peers);
        info!(
            node_id = config.node_id,
            overlay_ip = %config.overlay_ip,
            mode = config.mode.as_str(),
            endpoint = ?config.endpoint,
            "peer installed"
        );
    }

    /// The WireGuard peer for a SEALED config: reused when the key is unchanged (sessions
    /// survive endpoint and policy updates), re-created otherwise.
    fn sealed_peer(
        &self,
        now: Instant,
        config: &PeerConfig,
        old: Option<(Option<PeerId>, &PeerConfig)>,
    ) -> Option<PeerId> {
        let mut dev = self.device();
        if let Some((Some(id), prev)) = old {
            if prev.public_key == config.public_key {
                if config.endpoint != prev.endpoint
                    && let Some(ep) = config.endpoint
                {
                    let _ = dev.set_endpoint(id, SocketAddr::V4(ep));
                }
                return Some(id);
            }
            dev.remove_peer(id);
        }
        let mut wg = cladnet_wg::PeerConfig::new(PublicKey::from_bytes(config.public_key));
        wg.endpoint = config.endpoint.map(SocketAddr::V4);
        wg.persistent_keepalive = Some(PERSISTENT_KEEPALIVE);
        match dev.add_peer(now, wg) {
            Ok(id) => Some(id),
            Err(error) => {
                warn!(node_id = config.node_id, %error, "cannot add WireGuard peer");
                None
            }
        }
    }

    /// Routes a packet read from the TUN device. `out` must hold the packet plus the largest
    /// encapsulation overhead (see [`out_len`]).
    pub fn outbound<'a>(&self, now: Instant, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
        let Some(dst) = ipv4_dst(packet) else {
            return self.drop_out(Drop::NotIpv4);
        };
        let Some(entry) = self.read_peers().by_ip.get(&dst).cloned() else {
            return self.drop_out(Drop::NoRoute);
        };
        // Larger than the peer's path carries (the route MTU was not applied yet, or the
        // packet bypassed it): tell a DF sender rather than losing it on the way.
        let limit = entry.counters.mtu_limit() as usize;
        if limit != 0 && packet.len() > limit {
            self.drops.add(Drop::TooBig);
            return match frag_needed(packet, limit as u32, dst, out) {
                Some(n) => Outbound::ToTun(&out[..n]),
                None => Outbound::Dropped(Drop::TooBig),
            };
        }
        match entry.config.mode {
            LinkMode::Plain => {
                let Some(to) = entry.config.endpoint else {
                    return self.drop_out(Drop::NoEndpoint);
                };
                let Some(len) = plain::encapsulate(self.local_index.load(Relaxed), packet, out)
                else {
                    return self.drop_out(Drop::Plain(plain::DropReason::Truncated));
                };
                entry.counters.sent(packet.len());
                Outbound::Send {
                    datagram: &out[..len],
                    to: SocketAddr::V4(to),
                }
            }
            LinkMode::Sealed => {
                let Some(id) = entry.wg else {
                    return self.drop_out(Drop::WgNoSession);
                };
                match self.device().encapsulate(now, id, packet, out) {
                    Action::WriteToNetwork { datagram, to } => {
                        entry.counters.sent(packet.len());
                        Outbound::Send { datagram, to }
                    }
                    Action::Done | Action::WriteToTunnel { .. } => Outbound::Queued,
                    Action::Err(e) => self.drop_out(Drop::from_wg(e).unwrap_or(Drop::WgNoSession)),
                }
            }
        }
    }

    fn drop_out(&self, reason: Drop) -> Outbound<'static> {
        self.drops.add(reason);
        Outbound::Dropped(reason)
    }

    fn drop_in(&self, reason: Drop) -> Inbound<'static> {
        self.drops.add(reason);
        Inbound::Dropped(reason)
    }

    /// Handles a datagram received from `from` on the tunnel port.
    pub fn inbound<'a>(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
        out: &'a mut [u8],
    ) -> Inbound<'a> {
        if reflector::is_reflector(datagram) {
            return match reflector::parse_response(datagram) {
                Some((nonce, seen)) => Inbound::Reflected { nonce, seen },
                None => self.drop_in(Drop::UnknownMessage),
            };
        }
        match wire::demux(datagram) {
            Demux::WireGuard(_) => self.inbound_sealed(now, from, datagram, out),
            Demux::Clad if is_path_mtu(datagram) => self.inbound_mtu(now, from, datagram, out),
            Demux::Clad => self.inbound_plain(now, from, datagram),
            Demux::Unknown => self.drop_in(Drop::UnknownMessage),
        }
    }

    fn inbound_plain<'a>(&self, now: Instant, from: SocketAddr, datagram: &'a [u8]) -> Inbound<'a> {
        let SocketAddr::V4(from) = from else {
            return self.drop_in(Drop::Plain(plain::DropReason::UnknownPeer));
        };
        let header = CladHeader::decode(datagram).ok();
        // The read guard must be gone before learning takes the write lock.
        let known_here = self.read_peers().plain_by_endpoint.get(&from).cloned();
        let entry = match (known_here, header) {
            (Some(e), _) => Some(e),
            (None, Some(h)) => match self.learn_plain_port(now, from, h.node_id()) {
                Ok(e) => e,
                Err(limited) => return self.drop_in(limited),
            },
            (None, None) => None,
        };
        // Probes carry nothing to deliver; they keep NAT mappings warm (and may have taught us
        // the peer's port, above).
        if header.is_some_and(|h| h.ty() == Some(CladType::Probe)) {
            return Inbound::Nothing;
        }
        let known = entry.as_ref().map(|e| KnownPeer {
            node_index: e.config.node_index,
            overlay_ip: e.config.overlay_ip.octets(),
        });
        let local = Ipv4Addr::from(self.local_ip.load(Relaxed)).octets();
        let checked = plain::decapsulate(datagram, known).and_then(|inner| {
            let hdr = inner.first_chunk().expect("decapsulate checked 20 bytes");
            rx::check_destination(hdr, local).map(|()| inner)
        });
        match checked {
            Ok(inner) => {
                if let Some(e) = entry {
                    e.counters.received(inner.len(), unix_ms());
                }
                Inbound::Deliver(inner)
            }
            Err(reason) => self.drop_in(Drop::Plain(reason)),
        }
    }

    /// A PLAIN datagram from an unknown endpoint whose *address* is a PLAIN peer's and whose
    /// header names that peer: its NAT gave this flow another public port than the reflector
    /// saw (a port-translating NAT picks another port when the one it prefers is taken). The
    /// peer's endpoint moves to that port, so replies get through the NAT. Only the port can
    /// move this way: a new address comes from the controller, as PLAIN is unauthenticated.
    ///
    /// A peer moves at most once per [`PORT_CHANGE_INTERVAL`]; datagrams that would move it
    /// again sooner are dropped and counted (`Err`) without taking the write lock, so whoever
    /// shares the address cannot flap it at line rate.
    fn learn_plain_port(
        &self,
        now: Instant,
        from: SocketAddrV4,
        node_index: u32,
    ) -> Result<Option<Arc<Entry>>, Drop> {
        let candidate = |peers: &Peers| {
            peers
                .by_id
                .values()
                .find(|e| {
                    e.config.mode == LinkMode::Plain
                        && e.config.node_index == node_index
                        && e.config.endpoint.is_some_and(|ep| ep.ip() == from.ip())
                })
                .cloned()
        };
        let limited = |e: &Entry| {
            e.port_learned_at
                .is_some_and(|at| now.saturating_duration_since(at) < PORT_CHANGE_INTERVAL)
        };
        match candidate(&self.read_peers()) {
            None => return Ok(None),
            Some(e) if limited(&e) => {
                debug!(node_id = e.config.node_id, endpoint = %from, "PLAIN peer port changed again within a second; dropped");
                return Err(Drop::PlainPortChangeLimited);
            }
            Some(_) => {}
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        // Looked up again: the peer may have changed between the two locks.
        let Some(old) = candidate(&peers) else {
            return Ok(None);
        };
        if limited(&old) {
            return Err(Drop::PlainPortChangeLimited);
        }
        let mut config = old.config.clone();
        config.endpoint = Some(from);
        let entry = Arc::new(Entry {
            config,
            wg: None,
            counters: old.counters.clone(),
            port_learned_at: Some(now),
        });
        peers.remove(&old.config.node_id);
        peers.insert(entry.clone());
        drop(peers);
        // Debug only: the daemon logs the resulting endpoint change (at most once a second per
        // peer).
        debug!(node_id = old.config.node_id, endpoint = %from, "PLAIN peer seen on another port of its address; following it");
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if learned.len() < MAX_LEARNED_EVENTS {
            learned.push(PeerEvent::EndpointChanged {
                node_id: old.config.node_id.clone(),
                endpoint: SocketAddr::V4(from),
            });
        }
        Ok(Some(entry))
    }

    /// Whether `datagram` is a WireGuard handshake message (initiation, response or cookie
    /// reply): the driver hands those to [`Router::handshake`] on a thread of their own.
    pub fn is_handshake(datagram: &[u8]) -> bool {
        !reflector::is_reflector(datagram)
            && matches!(wire::demux(datagram), Demux::WireGuard(_))
            && matches!(
                cladnet_wg::message_type(datagram),
                Some(MessageType::Initiation | MessageType::Response | MessageType::CookieReply)
            )
    }

    /// A gate for the handshake thread: the checks made before any Diffie-Hellman (mac1;
    /// under load, cookies and per-source limits), run without the WireGuard lock.
    pub fn handshake_gate(&self) -> HandshakeGate {
        HandshakeGate::new(&self.device().public_key(), OsRandom)
    }

    /// Handles a WireGuard handshake message taken from the driver's handshake queue, after
    /// `gate` (see [`Router::handshake_gate`]) let it through or answered it: only messages
    /// that passed take the WireGuard lock for their Diffie-Hellman.
    pub fn handshake<'a>(
        &self,
        now: Instant,
        gate: &mut HandshakeGate,
        under_load: bool,
        from: SocketAddr,
        datagram: &'a [u8],
        out: &'a mut [u8],
    ) -> Inbound<'a> {
        match gate.check(now, under_load, from, datagram, out) {
            GateVerdict::Pass => self.inbound_sealed(now, from, datagram, out),
            GateVerdict::CookieReply(len) => Inbound::Reply {
                datagram: &out[..len],
                to: from,
            },
            GateVerdict::Drop(e) => self.drop_in(Drop::from_wg(e).unwrap_or(Drop::WgInvalid)),
            _ => self.drop_in(Drop::WgInvalid),
        }
    }

    fn inbound_sealed<'a>(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
        out: &'a mut [u8],
    ) -> Inbound<'a> {
        let (id, action) = self.device().decapsulate(now, from, datagram, out);
        match action {
            Action::WriteToTunnel { packet, source } => {
                let entry = id.and_then(|id| self.read_peers().by_wg.get(&id).cloned());
                match entry {
                    Some(e) if source == IpAddr::V4(e.config.overlay_ip) => {
                        e.counters.received(packet.len(), unix_ms());
                        Inbound::Deliver(packet)
                    }
                    _ => {
                        debug!(%from, %source, "sealed packet with a source its peer does not own");
                        self.drop_in(Drop::WgSpoofedSource)
                    }
                }
            }
            Action::WriteToNetwork { datagram, to } => Inbound::Reply { datagram, to },
            Action::Done => Inbound::Nothing,
            Action::Err(e) => self.drop_in(Drop::from_wg(e).unwrap_or(Drop::WgInvalid)),
        }
    }

    /// Runs due WireGuard timers, calling `send` for every datagram they produce, and returns
    /// the events that happened since the last call.
    pub fn timers(
        &self,
        now: Instant,
        out: &mut [u8],
        mut send: impl FnMut(&[u8], SocketAddr),
    ) -> Vec<PeerEvent> {
        let mut dev = self.device();
        if dev.poll_timeout().is_some_and(|at| at <= now) {
            loop {
                match dev.update_timers(now, out) {
                    (_, Action::WriteToNetwork { datagram, to }) => send(datagram, to),
                    (_, Action::Done) => break,
                    (_, _) => {}
                }
            }
        }
        let mut events =
            std::mem::take(&mut *self.learned.lock().unwrap_or_else(|e| e.into_inner()));
        while let Some((id, event)) = dev.poll_event() {
            let Some(node_id) = self
                .read_peers()
                .by_wg
                .get(&id)
                .map(|e| e.config.node_id.clone())
            else {
                continue;
            };
            events.push(match event {
                Event::HandshakeCompleted { .. } => PeerEvent::HandshakeCompleted { node_id },
                Event::EndpointChanged { endpoint } => {
                    PeerEvent::EndpointChanged { node_id, endpoint }
                }
                Event::HandshakeTimedOut => PeerEvent::HandshakeTimedOut { node_id },
                _ => continue,
            });
        }
        events
    }

    /// Sends a CLAD probe to every PLAIN peer: it keeps the NAT mappings on the way open (PLAIN
    /// has no keepalives of its own) and re-creates them after an address change.
    pub fn probe_plain_peers(&self, mut send: impl FnMut(&[u8], SocketAddr)) {
        let probe = CladHeader::new(CladType::Probe, 0, self.local_index.load(Relaxed)).to_bytes();
        let endpoints: Vec<SocketAddrV4> = self
            .read_peers()
            .by_id
            .values()
            .filter(|e| e.config.mode == LinkMode::Plain)
            .filter_map(|e| e.config.endpoint)
            .collect();
        for ep in endpoints {
            send(&probe, SocketAddr::V4(ep));
        }
    }

    /// Re-opens the paths to every peer at once (after our public address or a peer's
    /// endpoint changed): PLAIN probes now, WireGuard keepalives (or handshakes) at the next
    /// timer tick.
    pub fn punch(&self, send: impl FnMut(&[u8], SocketAddr)) {
        self.probe_plain_peers(send);
        let sealed: Vec<PeerId> = self.read_peers().by_wg.keys().copied().collect();
        let mut dev = self.device();
        for id in sealed {
            dev.request_keepalive(id);
        }
    }

    /// The configuration a peer is installed with now (with any endpoint learnt from packets).
    pub fn peer_config(&self, node_id: &str) -> Option<PeerConfig> {
        self.read_peers()
            .by_id
            .get(node_id)
            .map(|e| e.config.clone())
    }

    /// The peers, sorted by overlay address.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let peers: Vec<Arc<Entry>> = self.read_peers().by_id.values().cloned().collect();
        let dev = self.device();
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .map(|e| {
                let stats = e.wg.and_then(|id| dev.stats(id));
                PeerStatus {
                    node_id: e.config.node_id.clone(),
                    overlay_ip: e.config.overlay_ip,
                    mode: e.config.mode.as_str(),
                    endpoint: match e.wg {
                        Some(id) => dev.endpoint(id),
                        None => e.config.endpoint.map(SocketAddr::V4),
                    },
                    handshake_age_secs: stats
                        .and_then(|s| s.last_handshake)
                        .map(|t| now.saturating_duration_since(t).as_secs()),
                    traffic: e.counters.snapshot(),
                    engine: "userspace",
                    path_mtu: None,
                }
            })
            .collect();
        drop(dev);
        for p in &mut out {
            p.path_mtu = self.path_mtu(&p.node_id);
        }
        out.sort_by_key(|p| p.overlay_ip);
        out
    }
}

/// A CLAD path MTU probe or acknowledgement (whatever the link mode).
fn is_path_mtu(datagram: &[u8]) -> bool {
    CladHeader::decode(datagram)
        .is_ok_and(|h| matches!(h.ty(), Some(CladType::MtuProbe | CladType::MtuAck)))
}

/// Output buffer size for a packet of `len` bytes: room for the larger encapsulation.
pub const fn out_len(len: usize) -> usize {
    let sealed = cladnet_wg::constants::encapsulate_buffer_len(len);
    let plain = len + wire::CLAD_HDR_LEN;
    if sealed > plain {
        if sealed > cladnet_wg::constants::MIN_BUFFER_LEN {
            sealed
        } else {
            cladnet_wg::constants::MIN_BUFFER_LEN
        }
    } else {
        plain
    }
}

fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    match packet {
        [
            v,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            a,
            b,
            c,
            d,
            ..,
        ] if v >> 4 == 4 => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

mod pmtu;
pub use pmtu::{PathMtuChange, PathMtuStatus, frag_needed, route_mtu};

#[cfg(test)]
mod tests;
