//! The userspace engine's packet logic, without sockets: PLAIN framing, WireGuard sealing
//! and opening, cryptokey routing, counters.
//!
//! The IO driver ([`super::userspace`]) reads bytes from the TUN device and the UDP socket,
//! hands them here with the current time and performs what comes back. Which peers exist,
//! where they are and which link they use is the [`Node`](cladnet_core::node::Node)'s: the
//! router only applies its [`Command`]s ([`Router::apply`], the [`Engine`] trait) and looks
//! peers up in the last published [`Forwarding`] snapshot, with the same per-packet decisions
//! the Node makes ([`Forwarding::route`], [`Forwarding::classify`]). What the Node must decide
//! (a PLAIN datagram from an unknown endpoint) comes back as [`Inbound::ToNode`].
//!
//! Concurrency: the packet threads read one [`Routes`] snapshot per packet without locking
//! (arc-swap); commands build the next one. WireGuard is split as cladnet-wg splits it: each
//! SEALED peer's data side ([`PeerData`]: sessions, endpoint, the timers packets move) is in
//! the snapshot, and the packet threads seal and open transport messages through it with no
//! lock shared between peers or directions. The control side (the [`Device`]: handshakes,
//! timers, packets queued while no session exists) sits behind one mutex, taken on the packet
//! path only when no session can send. Handshake messages (the only ones costing
//! Diffie-Hellman) are not handled on the packet threads: the driver queues them for a thread
//! of their own ([`Router::handshake`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use cladnet_common::{plain, reflector, wire};
use cladnet_core::{
    node::{Command, Forwarding, PeerConfig, RouteMiss, Rx},
    policy::{LinkMode, PERSISTENT_KEEPALIVE},
};
use cladnet_wg::{
    Action, Device, Event, GateVerdict, HandshakeGate, MessageType, PeerData, PeerId, PrivateKey,
    PublicKey, WallClock,
};
use tracing::{debug, info, warn};

use super::{
    Engine, EngineError,
    counters::{Drop, DropCounters, PeerCounters, PeerTraffic},
};

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
    /// For the Node to decide (a PLAIN datagram from an endpoint that is no peer's: the peer's
    /// NAT may have moved it to another port); the driver hands it over.
    ToNode,
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
    /// A SEALED peer was heard from a new underlay address (roaming).
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
    /// The path MTU towards the peer, as the Node last reported it (filled in by the daemon).
    pub path_mtu: Option<PathMtuStatus>,
    /// How packets reach the peer: `direct`, `relay`, `connecting` or `unreachable` (filled
    /// in by the daemon from the relay paths; PLAIN links are always `direct`). `None` for a
    /// SEALED peer the paths have not looked at yet.
    pub path: Option<String>,
    /// The relay's node id while `path` is `relay`.
    pub via: Option<String>,
}

/// This engine's state for one peer (its counters and WireGuard peer), kept by the Node's
/// counter slot between a command and the next [`Command::Publish`].
struct SlotState {
    /// The peer's node id (its config is in the Node's snapshot).
    node_id: String,
    /// The WireGuard peer, the key it was made for and its data side (SEALED).
    wg: Option<(PeerId, [u8; 32], Arc<PeerData>)>,
    counters: Arc<PeerCounters>,
}

/// A peer as the packet threads see it: the Node's config and this engine's state.
struct Entry {
    config: Arc<PeerConfig>,
    wg: Option<PeerId>,
    /// The WireGuard peer's data side: its packets are sealed and opened through it.
    data: Option<Arc<PeerData>>,
    counters: Arc<PeerCounters>,
}

/// One published snapshot: the Node's forwarding indexes plus this engine's state per slot.
#[derive(Default)]
struct Routes {
    fwd: Arc<Forwarding>,
    by_slot: Vec<Option<Arc<Entry>>>,
    /// SEALED peers by WireGuard device slot (the receiver index of their transport
    /// messages names it, see [`cladnet_wg::receiver_slot`]).
    by_wg_slot: Vec<Option<Arc<Entry>>>,
}

/// What the commands left for the next [`Command::Publish`]: every slot's state, and which
/// slots changed since the last one.
#[derive(Default)]
struct Staged {
    slots: BTreeMap<u32, Arc<SlotState>>,
    changed: BTreeSet<u32>,
}

/// Puts `entry` at `i`, growing the table.
fn put(table: &mut Vec<Option<Arc<Entry>>>, i: u32, entry: Arc<Entry>) {
    let i = i as usize;
    if table.len() <= i {
        table.resize(i + 1, None);
    }
    table[i] = Some(entry);
}

impl Routes {
    /// The snapshot after `self` for the Node's snapshot `fwd`: the entries of the slots that
    /// changed are rebuilt from `staged`, every other one is shared with `self` (the Node
    /// sends an `UpsertPeer` or `RemovePeer` for every peer it changes). The cost is the
    /// changed slots plus copying the tables' pointers, whatever the number of peers.
    fn next(&self, fwd: Arc<Forwarding>, staged: &Staged) -> Self {
        let mut routes = Self {
            fwd,
            by_slot: self.by_slot.clone(),
            by_wg_slot: self.by_wg_slot.clone(),
        };
        for &slot in &staged.changed {
            let old = routes.by_slot.get_mut(slot as usize).and_then(Option::take);
            if let Some(id) = old.as_ref().and_then(|e| e.wg)
                && let Some(held) = routes.by_wg_slot.get_mut(id.slot() as usize)
                && held
                    .as_ref()
                    .is_some_and(|h| old.as_ref().is_some_and(|o| Arc::ptr_eq(h, o)))
            {
                *held = None;
            }
            let Some(state) = staged.slots.get(&slot) else {
                continue;
            };
            let Some(config) = routes.fwd.peer(&state.node_id).filter(|c| c.slot == slot) else {
                continue;
            };
            let entry = Arc::new(Entry {
                config: config.clone(),
                wg: state.wg.as_ref().map(|(id, ..)| *id),
                data: state.wg.as_ref().map(|(.., data)| data.clone()),
                counters: state.counters.clone(),
            });
            if let Some(id) = entry.wg {
                put(&mut routes.by_wg_slot, id.slot(), entry.clone());
            }
            put(&mut routes.by_slot, slot, entry);
        }
        routes
    }

    /// The SEALED peer whose WireGuard peer is `id`.
    fn by_wg(&self, id: PeerId) -> Option<&Arc<Entry>> {
        self.by_wg_slot
            .get(id.slot() as usize)?
            .as_ref()
            .filter(|e| e.wg == Some(id))
    }

    fn entry(&self, config: &PeerConfig) -> Option<&Arc<Entry>> {
        self.by_slot.get(config.slot as usize)?.as_ref()
    }

    fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_slot.iter().flatten()
    }
}

/// The userspace engine's state: the published routes, WireGuard sessions and counters.
pub struct Router {
    routes: ArcSwap<Routes>,
    /// Per-slot state as the commands left it; the next `Publish` makes it visible.
    staged: Mutex<Staged>,
    wg: Mutex<Device>,
    /// The device's static key, for the handshake thread's gate (which reads initiations
    /// outside `wg`).
    key: PrivateKey,
    drops: DropCounters,
    /// Relayed paths (see [`crate::engine::relay`]).
    relay: super::relay::RelayIo,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("peers", &self.routes.load().fwd.peers().count())
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

impl Engine for Router {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn apply(&self, now: Instant, cmd: &Command) -> Result<(), EngineError> {
        match cmd {
            Command::SetLocal(local) => {
                // The device itself is configured by netconf; the MTU caps WireGuard padding.
                self.device()
                    .set_tunnel_mtu(usize::try_from(local.mtu).ok());
            }
            Command::UpsertPeer(config) => self.upsert(now, config),
            Command::RemovePeer { node_id, slot, .. } => {
                let gone = {
                    let mut staged = self.stage();
                    staged.changed.insert(*slot);
                    staged.slots.remove(slot)
                };
                if let Some((id, ..)) = gone.as_ref().and_then(|s| s.wg.as_ref()) {
                    self.device().remove_peer(*id);
                }
                info!(node_id, "peer removed");
            }
            // The snapshot holds the prefixes: the next `Publish` drops them.
            Command::RemovePrefixes { .. } => {}
            Command::SetRouteMtu { slot, mtu, .. } => self.set_route_mtu(*slot, *mtu),
            Command::Publish(fwd) => {
                let mut staged = self.stage();
                let routes = self.routes.load().next(fwd.clone(), &staged);
                staged.changed.clear();
                self.routes.store(Arc::new(routes));
            }
        }
        Ok(())
    }
}

impl Router {
    /// A router with this node's static key and no peers.
    pub fn new(key: PrivateKey) -> Self {
        let now = Instant::now();
        Self {
            routes: ArcSwap::default(),
            staged: Mutex::default(),
            wg: Mutex::new(Device::new(
                key.clone(),
                OsRandom,
                WallClock::new(now, SystemTime::now()),
            )),
            key,
            drops: DropCounters::default(),
            relay: super::relay::RelayIo::default(),
        }
    }

    fn device(&self) -> MutexGuard<'_, Device> {
        self.wg.lock().unwrap_or_else(|e| e.into_inner())
    }

    // Only `apply` takes this lock (one writer, the daemon); a poisoned lock still holds a
    // consistent map (every update is one insert or remove).
    fn stage(&self) -> MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop counters.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    fn upsert(&self, now: Instant, config: &PeerConfig) {
        let old = {
            let mut staged = self.stage();
            staged.changed.insert(config.slot);
            staged.slots.get(&config.slot).cloned()
        };
        let old_wg = old.as_ref().and_then(|o| o.wg.clone());
        let wg = match config.mode {
            LinkMode::Plain => {
                if let Some((id, ..)) = old_wg {
                    self.device().remove_peer(id);
                }
                None
            }
            LinkMode::Sealed => match self.sealed_peer(now, config, old_wg) {
                Some(wg) => Some(wg),
                None => return,
            },
        };
        let counters = old.map(|o| o.counters.clone()).unwrap_or_default();
        let state = SlotState {
            node_id: config.node_id.clone(),
            wg,
            counters,
        };
        self.stage().slots.insert(config.slot, Arc::new(state));
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
        old: Option<(PeerId, [u8; 32], Arc<PeerData>)>,
    ) -> Option<(PeerId, [u8; 32], Arc<PeerData>)> {
        let published = self
            .routes
            .load()
            .fwd
            .peer(&config.node_id)
            .and_then(|p| p.endpoint);
        let mut dev = self.device();
        if let Some((id, key, _)) = &old {
            let (id, key) = (*id, *key);
            if key == config.public_key {
                if config.endpoint != published
                    && let Some(ep) = config.endpoint
                {
                    let _ = dev.set_endpoint(id, SocketAddr::V4(ep));
                }
                return old;
            }
            dev.remove_peer(id);
        }
        let mut wg = cladnet_wg::PeerConfig::new(PublicKey::from_bytes(config.public_key));
        wg.endpoint = config.endpoint.map(SocketAddr::V4);
        wg.persistent_keepalive = Some(PERSISTENT_KEEPALIVE);
        match dev.add_peer(now, wg) {
            Ok(id) => dev.peer_data(id).map(|data| (id, config.public_key, data)),
            Err(error) => {
                warn!(node_id = config.node_id, %error, "cannot add WireGuard peer");
                None
            }
        }
    }

    /// Routes a packet read from the TUN device. `out` must hold the packet plus the largest
    /// encapsulation overhead (see [`out_len`]).
    pub fn outbound<'a>(&self, now: Instant, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
        let routes = self.routes.load();
        let config = match routes.fwd.route(packet) {
            Ok(c) => c,
            Err(RouteMiss::NotIpv4) => return self.drop_out(Drop::NotIpv4),
            Err(RouteMiss::NoRoute) => return self.drop_out(Drop::NoRoute),
        };
        let Some(entry) = routes.entry(config) else {
            return self.drop_out(Drop::NoRoute);
        };
        // Larger than the peer's path carries (the route MTU was not applied yet, or the
        // packet bypassed it): tell a DF sender rather than losing it on the way.
        let limit = entry.counters.mtu_limit() as usize;
        if limit != 0 && packet.len() > limit {
            self.drops.add(Drop::TooBig);
            return match frag_needed(packet, limit as u32, config.overlay_ip, out) {
                Some(n) => Outbound::ToTun(&out[..n]),
                None => Outbound::Dropped(Drop::TooBig),
            };
        }
        match config.mode {
            LinkMode::Plain => {
                let Some(to) = config.endpoint else {
                    return self.drop_out(Drop::NoEndpoint);
                };
                let Some(len) = routes.fwd.encapsulate_plain(packet, out) else {
                    return self.drop_out(Drop::Plain(plain::DropReason::Truncated));
                };
                entry.counters.sent(packet.len());
                Outbound::Send {
                    datagram: &out[..len],
                    to: SocketAddr::V4(to),
                }
            }
            LinkMode::Sealed => {
                let (Some(id), Some(data)) = (entry.wg, &entry.data) else {
                    return self.drop_out(Drop::WgNoSession);
                };
                // The data side seals without the device; only when no session can send does
                // the device take the packet (queue it, start a handshake).
                let sealed = match data.encapsulate(now, packet, &mut *out) {
                    Action::WriteToNetwork { datagram, to } => Ok((datagram.len(), to)),
                    Action::Err(e) => Err(e),
                    Action::Done | Action::WriteToTunnel { .. } => {
                        Err(cladnet_wg::Error::NoSession)
                    }
                };
                let action = match sealed {
                    Ok((len, to)) => Action::WriteToNetwork {
                        datagram: &mut out[..len],
                        to,
                    },
                    Err(cladnet_wg::Error::NoSession) => {
                        self.device().encapsulate(now, id, packet, out)
                    }
                    Err(e) => Action::Err(e),
                };
                match action {
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
        let routes = self.routes.load();
        match routes.fwd.classify(from, datagram) {
            Rx::Deliver { peer, inner } => {
                if let Some(e) = routes.entry(peer) {
                    e.counters.received(inner.len(), unix_ms());
                }
                Inbound::Deliver(inner)
            }
            Rx::UnknownEndpoint { .. } => Inbound::ToNode,
            // Probes carry nothing to deliver; they keep NAT mappings warm.
            Rx::Probe => Inbound::Nothing,
            // The Node runs the searches (and answers the peers' probes).
            Rx::PathMtu => Inbound::ToNode,
            Rx::WireGuard => match cladnet_wg::receiver_slot(datagram) {
                // Transport data: opened on the peer's data side, without the device.
                Some(slot) => match routes
                    .by_wg_slot
                    .get(slot as usize)
                    .and_then(Option::as_ref)
                {
                    Some(e) => match e.data.as_ref() {
                        Some(data) => {
                            let action = data.decapsulate(now, from, datagram, out);
                            self.sealed_to(&routes, from, Some(e), action)
                        }
                        None => self.drop_in(Drop::WgInvalid),
                    },
                    None => self.drop_in(Drop::WgInvalid),
                },
                None => self.inbound_sealed(now, from, datagram, out),
            },
            Rx::Reflector => match reflector::parse_response(datagram) {
                Some((nonce, seen)) => Inbound::Reflected { nonce, seen },
                None => self.drop_in(Drop::UnknownMessage),
            },
            Rx::Unknown => self.drop_in(Drop::UnknownMessage),
            Rx::Drop(reason) => self.drop_in(Drop::Plain(reason)),
        }
    }

    /// Whether `datagram` is a WireGuard handshake message (initiation, response or cookie
    /// reply): the driver hands those to [`Router::handshake`] on a thread of their own.
    pub fn is_handshake(datagram: &[u8]) -> bool {
        !reflector::is_reflector(datagram)
            && matches!(wire::demux(datagram), wire::Demux::WireGuard(_))
            && matches!(
                cladnet_wg::message_type(datagram),
                Some(MessageType::Initiation | MessageType::Response | MessageType::CookieReply)
            )
    }

    /// A gate for the handshake thread: the checks made before any Diffie-Hellman (mac1;
    /// under load, cookies and per-source limits) and the Diffie-Hellman of reading an
    /// initiation, run without the WireGuard lock.
    pub fn handshake_gate(&self) -> HandshakeGate {
        HandshakeGate::with_private_key(&self.key, OsRandom)
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
            // An initiation is decrypted here, outside the lock: one that names nobody (a
            // flood's) never takes it.
            GateVerdict::Pass => match gate.read_initiation(datagram) {
                Some(Ok(initiation)) => {
                    let (id, action) = self.device().accept_initiation(now, from, initiation, out);
                    self.sealed_action(from, id, action)
                }
                Some(Err(e)) => self.drop_in(Drop::from_wg(e).unwrap_or(Drop::WgInvalid)),
                None => self.inbound_sealed(now, from, datagram, out),
            },
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
        self.sealed_action(from, id, action)
    }

    /// What a WireGuard datagram from `from` came to, with the cryptokey-routing check of
    /// decrypted packets.
    fn sealed_action<'a>(
        &self,
        from: SocketAddr,
        id: Option<PeerId>,
        action: Action<'a>,
    ) -> Inbound<'a> {
        let routes = self.routes.load();
        self.sealed_to(&routes, from, id.and_then(|id| routes.by_wg(id)), action)
    }

    /// What a WireGuard datagram from `from` for the peer `entry` came to.
    fn sealed_to<'a>(
        &self,
        routes: &Routes,
        from: SocketAddr,
        entry: Option<&Arc<Entry>>,
        action: Action<'a>,
    ) -> Inbound<'a> {
        match action {
            Action::WriteToTunnel { packet, source } => match entry {
                Some(e)
                    if matches!(source, IpAddr::V4(src)
                        if routes.fwd.source_allowed(&e.config, src)) =>
                {
                    e.counters.received(packet.len(), unix_ms());
                    Inbound::Deliver(packet)
                }
                _ => {
                    debug!(%from, %source, "sealed packet with a source its peer does not own");
                    self.drop_in(Drop::WgSpoofedSource)
                }
            },
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
        let mut events = Vec::new();
        let routes = self.routes.load();
        while let Some((id, event)) = dev.poll_event() {
            let Some((node_id, node_index)) = routes
                .by_wg(id)
                .map(|e| (e.config.node_id.clone(), e.config.node_index))
            else {
                continue;
            };
            events.push(match event {
                Event::HandshakeCompleted { .. } => PeerEvent::HandshakeCompleted { node_id },
                Event::EndpointChanged { endpoint } => {
                    // A relayed peer's direct message: the path's evidence, which the next
                    // relayed message would hide from its tick.
                    self.relay.direct_seen(node_index, endpoint);
                    PeerEvent::EndpointChanged { node_id, endpoint }
                }
                Event::HandshakeTimedOut => PeerEvent::HandshakeTimedOut { node_id },
                _ => continue,
            });
        }
        events
    }

    /// Re-opens the paths to every SEALED peer at once (after our public address or a peer's
    /// endpoint changed): WireGuard keepalives (or handshakes) at the next timer tick. PLAIN
    /// peers get their probes from the Node.
    pub fn punch(&self) {
        let sealed: Vec<PeerId> = self.routes.load().entries().filter_map(|e| e.wg).collect();
        let mut dev = self.device();
        for id in sealed {
            dev.request_keepalive(id);
        }
    }

    /// The peers, sorted by overlay address.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let routes = self.routes.load_full();
        let peers: Vec<&Arc<Entry>> = routes.entries().collect();
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
                    path: None,
                    via: None,
                }
            })
            .collect();
        drop(dev);
        out.sort_by_key(|p| p.overlay_ip);
        out
    }
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

mod pmtu;
mod relay;
pub use cladnet_core::node::PathMtuStatus;
pub use pmtu::frag_needed;

#[cfg(test)]
mod tests;
