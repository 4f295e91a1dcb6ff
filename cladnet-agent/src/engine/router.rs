//! The userspace engine's packet logic, without sockets: PLAIN framing, WireGuard sealing
//! and opening, cryptokey routing, counters.
//!
//! The IO driver ([`super::userspace`]) reads bytes from the TUN device and the UDP socket,
//! hands them here with the current time and performs what comes back. Which peers exist,
//! where they are and which link they use is the [`Node`](cladnet_core::node::Node)'s: the
//! router only applies its [`Command`]s ([`Router::apply`], the [`Engine`] trait) and looks
//! peers up in the last published [`Forwarding`](cladnet_core::node::Forwarding) snapshot, with the same per-packet decisions
//! the Node makes ([`Forwarding::route`](cladnet_core::node::Forwarding::route), [`classify`](cladnet_core::node::Forwarding::classify)). What the Node must decide
//! (a PLAIN datagram from an unknown endpoint) comes back as [`Inbound::ToNode`].
//!
//! Concurrency: the packet threads read one `Routes` snapshot per packet without locking
//! (arc-swap); commands build the next one. WireGuard is split as cladnet-wg splits it: each
//! SEALED peer's data side ([`PeerData`](cladnet_wg::PeerData): sessions, endpoint, the timers packets move) comes
//! from the Node ([`Command::SealedPeer`]) into the snapshot, and the packet threads seal and
//! open transport messages through it with no lock shared between peers or directions. The
//! control side (the WireGuard device: handshakes, timers, packets queued while no session
//! exists) is the Node's: a packet no session can send goes to it ([`Outbound::ToNode`]), and
//! so do handshake messages, after a thread of their own checked them ([`Router::handshake`]:
//! mac1, cookies under load, and the Diffie-Hellman of reading an initiation).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use arc_swap::ArcSwap;
use cladnet_common::{plain, reflector, wire};
use cladnet_core::{
    node::{Command, PeerConfig, RouteMiss, Rx},
    policy::LinkMode,
};
use cladnet_wg::{
    Action, CryptoRandom, GateVerdict, HandshakeGate, MessageType, PrivateKey, ReadInitiation,
    WallClock,
};
use tracing::{debug, info};

use super::{
    Engine, EngineError,
    counters::{Drop, DropCounters, PeerTraffic},
};

/// What to do with a packet read from the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound<'a> {
    /// Send this datagram.
    Send {
        /// The UDP payload, always at the start of `out`: a driver that lends the free end of
        /// its send batch as `out` sends it in place.
        datagram: &'a [u8],
        /// The peer's underlay endpoint.
        to: SocketAddr,
    },
    /// No WireGuard session can send it (SEALED): hand the packet to the Node, which queues
    /// it and starts a handshake.
    ToNode,
    /// Too big for the peer's path: write this ICMP "fragmentation needed" to the TUN device
    /// (counted as a `too_big` drop).
    ToTun(&'a [u8]),
    /// Dropped (and counted).
    Dropped(Drop),
}

/// What to do with a datagram received on the tunnel port.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Write this inner packet to the TUN device. It is always at the start of `out`, so a
    /// driver that lends its TUN batch's buffer writes it in place.
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

/// What a handshake message from the handshake queue came to.
#[derive(Debug)]
pub enum Handshake<'a> {
    /// Answer at once (a cookie reply under load).
    Reply {
        /// The UDP payload.
        datagram: &'a [u8],
        /// Where to.
        to: SocketAddr,
    },
    /// An initiation that passed the gate and was read: for [`Node::handle_initiation`].
    ///
    /// [`Node::handle_initiation`]: cladnet_core::node::Node::handle_initiation
    Initiation(ReadInitiation),
    /// A response or cookie reply that passed the gate: for the Node's
    /// `handle_datagram`.
    ToNode,
    /// Dropped (and counted).
    Dropped(Drop),
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

/// The userspace engine's state: the published routes, WireGuard data sides and counters.
pub struct Router {
    routes: ArcSwap<Routes>,
    /// Per-slot state as the commands left it; the next `Publish` makes it visible.
    staged: Mutex<Staged>,
    /// This node's static key, for the handshake thread's gate (mac1 checks, cookies and
    /// reading initiations; the WireGuard device with the same key is the Node's).
    key: PrivateKey,
    /// Converts the packet threads' `now` into the wall-clock time counters record (when a
    /// peer was last heard from): the router reads no clock of its own.
    wall: WallClock,
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

impl Engine for Router {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn apply(&self, _now: Instant, cmd: &Command) -> Result<(), EngineError> {
        match cmd {
            // The device is configured by netconf; WireGuard's padding by the Node.
            Command::SetLocal(_) => {}
            Command::UpsertPeer(config) => self.upsert(config),
            Command::SealedPeer { slot, id, data } => {
                let mut staged = self.stage();
                staged.changed.insert(*slot);
                if let Some(state) = staged.slots.get_mut(slot) {
                    let state = Arc::make_mut(state);
                    state.wg = Some((*id, data.clone()));
                }
            }
            Command::RemovePeer { node_id, slot, .. } => {
                let mut staged = self.stage();
                staged.changed.insert(*slot);
                staged.slots.remove(slot);
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
    /// A router with this node's static key (for the handshake gate) and no peers; `wall`
    /// dates what the counters record.
    pub fn new(key: PrivateKey, wall: WallClock) -> Self {
        Self {
            routes: ArcSwap::default(),
            staged: Mutex::default(),
            key,
            wall,
            drops: DropCounters::default(),
            relay: super::relay::RelayIo::default(),
        }
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

    fn upsert(&self, config: &PeerConfig) {
        let mut staged = self.stage();
        staged.changed.insert(config.slot);
        let counters = staged
            .slots
            .get(&config.slot)
            .map(|o| o.counters.clone())
            .unwrap_or_default();
        // A SEALED peer's data side follows in the Node's `SealedPeer` (before the `Publish`).
        let state = SlotState {
            node_id: config.node_id.clone(),
            wg: None,
            counters,
        };
        staged.slots.insert(config.slot, Arc::new(state));
        drop(staged);
        info!(
            node_id = config.node_id,
            overlay_ip = %config.overlay_ip,
            mode = config.mode.as_str(),
            endpoint = ?config.endpoint,
            "peer installed"
        );
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
                let Some(data) = &entry.data else {
                    return self.drop_out(Drop::WgNoSession);
                };
                // The data side seals without the Node; only when no session can send does
                // the Node take the packet (queue it, start a handshake).
                match data.encapsulate(now, packet, out) {
                    Action::WriteToNetwork { datagram, to } => {
                        entry.counters.sent(packet.len());
                        Outbound::Send { datagram, to }
                    }
                    Action::Err(cladnet_wg::Error::NoSession)
                    | Action::Done
                    | Action::WriteToTunnel { .. } => Outbound::ToNode,
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

    /// Handles a datagram received from `from` on the tunnel port. `out` must hold at least
    /// `datagram.len()` bytes.
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
                // Delivered from `out`, as an opened packet is: the driver lends its TUN
                // batch's buffer as `out`, so this is the packet's only copy.
                let Some(packet) = out.get_mut(..inner.len()) else {
                    return self.drop_in(Drop::Plain(plain::DropReason::Truncated));
                };
                packet.copy_from_slice(inner);
                if let Some(e) = routes.entry(peer) {
                    e.counters.received(inner.len(), self.unix_ms(now));
                }
                Inbound::Deliver(packet)
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
                            self.sealed_to(now, &routes, from, Some(e), action)
                        }
                        None => self.drop_in(Drop::WgInvalid),
                    },
                    None => self.drop_in(Drop::WgInvalid),
                },
                // Handshake messages went to the handshake queue (`is_handshake`).
                None => self.drop_in(Drop::WgInvalid),
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
    /// initiation, run on that thread rather than the Node's. `rng` makes its cookie secrets.
    pub fn handshake_gate(&self, rng: impl CryptoRandom + 'static) -> HandshakeGate {
        HandshakeGate::with_private_key(&self.key, rng)
    }

    /// `now` as Unix milliseconds.
    fn unix_ms(&self, now: Instant) -> u64 {
        u64::try_from(self.wall.unix_time(now).as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks a WireGuard handshake message taken from the driver's handshake queue with
    /// `gate` (see [`Router::handshake_gate`]): what passes goes to the Node, an initiation
    /// already read (so a flood's initiation naming nobody costs the Node a key lookup only).
    pub fn handshake<'a>(
        &self,
        now: Instant,
        gate: &mut HandshakeGate,
        under_load: bool,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Handshake<'a> {
        let dropped = |e: cladnet_wg::Error| {
            let reason = Drop::from_wg(e).unwrap_or(Drop::WgInvalid);
            self.drops.add(reason);
            Handshake::Dropped(reason)
        };
        match gate.check(now, under_load, from, datagram, out) {
            GateVerdict::Pass => match gate.read_initiation(datagram) {
                Some(Ok(initiation)) => Handshake::Initiation(initiation),
                Some(Err(e)) => dropped(e),
                None => Handshake::ToNode,
            },
            GateVerdict::CookieReply(len) => Handshake::Reply {
                datagram: &out[..len],
                to: from,
            },
            GateVerdict::Drop(e) => dropped(e),
            _ => dropped(cladnet_wg::Error::MalformedMessage),
        }
    }

    /// What a WireGuard datagram from `from` for the peer `entry` came to.
    fn sealed_to<'a>(
        &self,
        now: Instant,
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
                    e.counters.received(packet.len(), self.unix_ms(now));
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

    /// The peers, sorted by overlay address.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let routes = self.routes.load_full();
        let mut out: Vec<PeerStatus> = routes
            .entries()
            .map(|e| PeerStatus {
                node_id: e.config.node_id.clone(),
                overlay_ip: e.config.overlay_ip,
                mode: e.config.mode.as_str(),
                endpoint: match &e.data {
                    Some(data) => data.endpoint(),
                    None => e.config.endpoint.map(SocketAddr::V4),
                },
                handshake_age_secs: e
                    .data
                    .as_ref()
                    .and_then(|d| d.last_handshake())
                    .map(|t| now.saturating_duration_since(t).as_secs()),
                traffic: e.counters.snapshot(),
                engine: "userspace",
                path_mtu: None,
                path: None,
                via: None,
            })
            .collect();
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
mod routes;
pub use cladnet_core::node::PathMtuStatus;
pub use pmtu::frag_needed;
use routes::{Entry, Routes, SlotState, Staged};

#[cfg(test)]
pub(crate) mod tests;
