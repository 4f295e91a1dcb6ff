//! Path MTU discovery towards every peer, as part of the [`Node`](super::Node): the searches
//! (one [`PathMtu`] per peer path), their probes and acknowledgements, the hints from outside
//! (ICMP "fragmentation needed" as the kernel's route cache shows it, EMSGSIZE on a probe) and
//! which peers carry traffic. What a search finds leaves as [`Command::SetRouteMtu`] (the
//! route MTU on the overlay device and the userspace engine's clamp) and as
//! [`Event::PathMtu`] (status and metrics).
//!
//! Probes leave the tunnel port like data (so they take the data's path and NAT mapping) and
//! the peer answers each with an acknowledgement never larger than the probe. A route follows
//! a path only once its first search completed (an optimistic start: connections opened
//! meanwhile advertise the full MSS), and from then on every change (a black hole found by a
//! lost confirmation, a hint, a raise).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use cladnet_common::{
    plain::DropReason,
    pmtu::{self as frame, MtuMessage, PROBE_IP_OVERHEAD},
    wire::PLAIN_OVERHEAD_V4,
};

use super::{Command, Dropped, Event, Forwarding, PeerConfig, Transmit, table::overlay_mtu};
use crate::{
    pmtu::{BASE_PLPMTU, PathMtu, State, Timing},
    policy::LinkMode,
};

/// How long a peer counts as busy after the engines last saw it send: confirmations of its
/// path MTU are then frequent (black holes found within about a second).
pub const BUSY_FOR: Duration = Duration::from_secs(2);

/// The path MTU of a relayed path: the base size less the relay header, so a relayed
/// datagram is never larger than the base size on either leg.
pub(super) const RELAYED_PATH_MTU: u32 = BASE_PLPMTU - cladnet_common::relay::RELAY_OVERHEAD as u32;

/// The searches run at most this often, however many peers have a probe due (probe timeouts
/// are at least 150 ms, so this costs no precision).
const MIN_TICK: Duration = Duration::from_millis(10);

/// A peer's path MTU as status and metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathMtuStatus {
    /// Largest outer IPv4 packet known to get through.
    pub path_mtu: u32,
    /// Largest inner packet routed to the peer (route MTU on the overlay device); `None`
    /// until the first search completed.
    pub route_mtu: Option<u32>,
    /// Search state: base, searching, search_complete, error.
    pub state: &'static str,
}

/// The largest inner packet a peer's link carries over a path of `path_mtu`: PLAIN adds
/// 36 bytes; SEALED adds 60 plus WireGuard's padding to 16 bytes, hence the rounding.
pub fn route_mtu(mode: LinkMode, path_mtu: u32) -> u32 {
    match mode {
        LinkMode::Plain => path_mtu.saturating_sub(PLAIN_OVERHEAD_V4 as u32),
        LinkMode::Sealed => overlay_mtu(path_mtu),
    }
}

/// One peer's search and what it has applied.
#[derive(Debug)]
struct Path {
    pm: PathMtu,
    /// Where the probes go (the peer's endpoint; for SEALED links the one its WireGuard
    /// session last authenticated).
    endpoint: SocketAddr,
    busy_until: Option<Instant>,
    /// A search completed at least once: until then the route is left alone.
    found: bool,
    /// The route this path has applied: overlay address, counter slot, route MTU.
    applied: Option<(Ipv4Addr, u32, u32)>,
    /// Last MTU the kernel's route cache reported (hints count only when it changes).
    last_hint: Option<u32>,
    /// Last status sent as an event.
    reported: Option<PathMtuStatus>,
}

/// Path MTU state of every peer. Off until [`PathMtus::enable`] (the simulator leaves it off).
#[derive(Debug, Default)]
pub(super) struct PathMtus {
    enabled: bool,
    /// splitmix64 state for probe nonces (seeded from outside: the Node reads no OS random).
    rng: u64,
    /// The first hop's MTU, which bounds every search.
    first_hop: u32,
    /// The overlay device's MTU (no route MTU goes above it); 0 until `SetLocal`.
    overlay: u32,
    paths: BTreeMap<String, Path>,
    /// Endpoints the userspace engine's WireGuard sessions moved SEALED peers to.
    roamed: BTreeMap<String, SocketAddr>,
    /// The searches are due no later than this (a lower bound: waking early is harmless).
    next_due: Option<Instant>,
}

/// What a path MTU input produced, for the Node's queues.
#[derive(Default)]
pub(super) struct Out {
    pub(super) commands: Vec<Command>,
    pub(super) transmits: Vec<Transmit>,
    pub(super) events: Vec<Event>,
}

impl PathMtus {
    pub(super) fn enable(&mut self, first_hop: u32, seed: u64) {
        self.enabled = true;
        self.first_hop = first_hop;
        self.rng = seed;
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.next_due.filter(|_| self.enabled)
    }

    fn wake(&mut self, at: Instant) {
        self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
    }

    /// Follows the commands the table just emitted: new and changed peers get a search (a
    /// new endpoint searches again), removed ones lose their route. `fwd` already reflects
    /// them. The route removals are placed right after their `RemovePeer`.
    pub(super) fn follow(
        &mut self,
        now: Instant,
        fwd: &Forwarding,
        cmds: Vec<Command>,
        out: &mut Out,
    ) {
        if !self.enabled {
            out.commands.extend(cmds);
            return;
        }
        for cmd in cmds {
            match &cmd {
                Command::SetLocal(local) => {
                    self.overlay = local.mtu;
                    self.wake(now);
                }
                Command::UpsertPeer(p) => self.sync(now, fwd, &p.node_id, out),
                Command::RemovePeer { node_id, .. } => {
                    let node_id = node_id.clone();
                    self.roamed.remove(&node_id);
                    let path = self.paths.remove(&node_id);
                    out.commands.push(cmd);
                    if let Some(path) = path {
                        self.gone(&node_id, path, out);
                    }
                    continue;
                }
                Command::Publish(_)
                | Command::SetRouteMtu { .. }
                | Command::RemovePrefixes { .. }
                | Command::SealedPeer { .. } => {}
            }
            out.commands.push(cmd);
        }
    }

    /// A SEALED peer's WireGuard session authenticated it at a new endpoint.
    pub(super) fn roamed(&mut self, now: Instant, fwd: &Forwarding, node_id: &str, to: SocketAddr) {
        self.roamed.insert(node_id.to_owned(), to);
        let mut out = Out::default();
        self.sync(now, fwd, node_id, &mut out);
        debug_assert!(out.commands.is_empty() && out.events.is_empty());
    }

    /// The path towards `node_id` after its config or endpoint changed.
    fn sync(&mut self, now: Instant, fwd: &Forwarding, node_id: &str, out: &mut Out) {
        let peer = fwd.peer(node_id);
        let endpoint = peer.and_then(|p| self.endpoint_of(p));
        let Some(endpoint) = endpoint else {
            if let Some(path) = self.paths.remove(node_id) {
                self.gone(node_id, path, out);
            }
            return;
        };
        // A relayed path (WireGuard moved the peer to a relay address) is not probed: probes
        // do not travel through relays. Its search is pinned at the base size, and its route
        // follows `RELAYED_PATH_MTU` (the base less the relay header).
        let max = if crate::relay::relay_node(endpoint).is_some() {
            BASE_PLPMTU
        } else {
            self.first_hop.max(BASE_PLPMTU)
        };
        let path = self
            .paths
            .entry(node_id.to_owned())
            .or_insert_with(|| Path {
                pm: PathMtu::new(now, max, Timing::default()),
                endpoint,
                busy_until: None,
                found: false,
                applied: None,
                last_hint: None,
                reported: None,
            });
        if path.endpoint != endpoint {
            // Another path (roaming, a new NAT mapping): search again; the route keeps the
            // old value until the new search completes.
            path.pm = PathMtu::new(now, max, Timing::default());
            path.endpoint = endpoint;
            path.last_hint = None;
            path.found = false;
        }
        self.wake(now);
    }

    fn endpoint_of(&self, p: &PeerConfig) -> Option<SocketAddr> {
        let configured = p.endpoint.map(SocketAddr::V4);
        match p.mode {
            LinkMode::Plain => configured,
            LinkMode::Sealed => self.roamed.get(&p.node_id).copied().or(configured),
        }
    }

    fn gone(&mut self, node_id: &str, path: Path, out: &mut Out) {
        if let Some((overlay_ip, slot, _)) = path.applied {
            out.commands.push(Command::SetRouteMtu {
                node_id: node_id.to_owned(),
                overlay_ip,
                slot,
                mtu: None,
            });
        }
        if path.reported.is_some() {
            out.events.push(Event::PathMtu {
                node_id: node_id.to_owned(),
                status: None,
            });
        }
    }

    /// Runs the searches that are due: lost probes, new probes, route changes.
    pub(super) fn handle_timeout(&mut self, now: Instant, fwd: &Forwarding, out: &mut Out) {
        if !self.enabled || self.next_due.is_none_or(|d| now < d) {
            return;
        }
        let mut next: Option<Instant> = None;
        let overlay = self.overlay;
        for (node_id, path) in &mut self.paths {
            let Some(peer) = fwd.peer(node_id) else {
                continue;
            };
            let busy = path.busy_until.is_some_and(|t| now < t);
            if crate::relay::relay_node(path.endpoint).is_some() {
                // Relayed: the base size, applied at once (see `sync`).
                path.found = true;
                path.report(node_id, peer, overlay, out);
                continue;
            }
            if let Some(probe) = path.pm.poll(now, busy, splitmix64(&mut self.rng)) {
                let len = probe.size as usize - PROBE_IP_OVERHEAD;
                let mut buf = vec![0u8; len];
                if let Some(d) = frame::probe(fwd.local_index(), probe.nonce, len, &mut buf) {
                    let payload = d.to_vec();
                    out.transmits.push(Transmit {
                        to: path.endpoint,
                        payload,
                    });
                }
            }
            path.report(node_id, peer, overlay, out);
            let due = path.pm.poll_timeout(busy);
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.next_due = next.map(|n| n.max(now + MIN_TICK));
    }

    /// A path MTU probe or acknowledgement from `from`: probes of known peers get an
    /// acknowledgement (never larger than the probe), acknowledgements feed the search.
    pub(super) fn handle_datagram(
        &mut self,
        now: Instant,
        fwd: &Forwarding,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Out,
    ) -> Result<(), Dropped> {
        let msg = frame::decode(datagram).map_err(|_| Dropped::Plain(DropReason::BadHeader))?;
        let (MtuMessage::Probe { node_index, .. } | MtuMessage::Ack { node_index, .. }) = msg;
        let unknown = Dropped::Plain(DropReason::UnknownPeer);
        let peer = fwd
            .peers()
            .find(|p| p.node_index == node_index)
            .ok_or(unknown)?;
        let known = p_endpoint_is(peer, from)
            || self.roamed.get(&peer.node_id) == Some(&from)
            || self.paths.get(&peer.node_id).map(|p| p.endpoint) == Some(from);
        if !known {
            return Err(unknown);
        }
        match msg {
            MtuMessage::Probe { nonce, len, .. } => out.transmits.push(Transmit {
                to: from,
                payload: frame::ack(fwd.local_index(), nonce, len).to_vec(),
            }),
            MtuMessage::Ack { nonce, len, .. } => {
                if let Some(path) = self.paths.get_mut(&peer.node_id) {
                    path.pm.on_ack(now, nonce, len + PROBE_IP_OVERHEAD as u32);
                    self.wake(now);
                }
            }
        }
        Ok(())
    }

    /// A path MTU towards `ip` learnt outside the search (ICMP "fragmentation needed", as the
    /// kernel's route cache shows it). Counts only when it differs from the last report (a
    /// cached value outlives the path change it came from by minutes); only lowers.
    pub(super) fn handle_hint(&mut self, now: Instant, ip: Ipv4Addr, mtu: u32) {
        for path in self.paths.values_mut() {
            if path.endpoint.ip() != std::net::IpAddr::V4(ip) || path.last_hint == Some(mtu) {
                continue;
            }
            path.last_hint = Some(mtu);
            if mtu < path.pm.mtu() {
                path.pm.on_hint(now, mtu);
                path.found = true;
                self.next_due = Some(now);
            }
        }
    }

    /// Sending `len` bytes to `to` failed with EMSGSIZE: larger than the first hop carries
    /// (a hint, not a confirmation).
    pub(super) fn handle_too_big(&mut self, now: Instant, to: SocketAddr, len: usize) {
        let size = (len + PROBE_IP_OVERHEAD) as u32;
        for path in self.paths.values_mut().filter(|p| p.endpoint == to) {
            path.pm.on_hint(now, size - 1);
            self.next_due = Some(now);
        }
    }

    /// Peers (by overlay address) the engines saw send lately.
    pub(super) fn handle_activity(
        &mut self,
        now: Instant,
        fwd: &Forwarding,
        ips: &BTreeSet<Ipv4Addr>,
    ) {
        for p in fwd.peers().filter(|p| ips.contains(&p.overlay_ip)) {
            if let Some(path) = self.paths.get_mut(&p.node_id) {
                path.busy_until = Some(now + BUSY_FOR);
                let due = path.pm.poll_timeout(true);
                self.wake(due);
            }
        }
    }

    /// The underlay addresses probed (for the caller to look up ICMP-learnt path MTUs).
    pub(super) fn destinations(&self) -> BTreeSet<Ipv4Addr> {
        self.paths
            .values()
            .filter_map(|p| match p.endpoint {
                SocketAddr::V4(a) => Some(*a.ip()),
                SocketAddr::V6(_) => None,
            })
            .collect()
    }

    pub(super) fn status(&self, node_id: &str) -> Option<PathMtuStatus> {
        self.paths.get(node_id).and_then(|p| p.reported)
    }
}

/// splitmix64: a nonce only has to be unpredictable to whoever cannot see the probe.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn p_endpoint_is(p: &PeerConfig, from: SocketAddr) -> bool {
    p.endpoint.map(SocketAddr::V4) == Some(from)
}

impl Path {
    /// The route and status after the search moved: a route once found (or lowered by a
    /// black hole or a hint since), capped at the overlay device's MTU; an event when the
    /// status changed.
    fn report(&mut self, node_id: &str, peer: &PeerConfig, overlay: u32, out: &mut Out) {
        let state = self.pm.state();
        self.found |= state == State::SearchComplete;
        // A relayed datagram carries the relay header too: the base size must hold both.
        let path_mtu = if crate::relay::relay_node(self.endpoint).is_some() {
            RELAYED_PATH_MTU
        } else {
            self.pm.mtu()
        };
        if self.found {
            let mut route = route_mtu(peer.mode, path_mtu);
            if overlay > 0 {
                route = route.min(overlay);
            }
            // While a search above the size in use runs, the size in use stays.
            let next = (peer.overlay_ip, peer.slot, route);
            if self.applied != Some(next) {
                if let Some((ip, slot, _)) = self.applied.filter(|a| (a.0, a.1) != (next.0, next.1))
                {
                    // The peer moved to another address or slot: the old route goes.
                    out.commands.push(Command::SetRouteMtu {
                        node_id: node_id.to_owned(),
                        overlay_ip: ip,
                        slot,
                        mtu: None,
                    });
                }
                self.applied = Some(next);
                out.commands.push(Command::SetRouteMtu {
                    node_id: node_id.to_owned(),
                    overlay_ip: peer.overlay_ip,
                    slot: peer.slot,
                    mtu: Some(route),
                });
            }
        }
        let status = PathMtuStatus {
            path_mtu,
            route_mtu: self.applied.map(|a| a.2),
            state: state.name(),
        };
        if self.reported != Some(status) {
            self.reported = Some(status);
            out.events.push(Event::PathMtu {
                node_id: node_id.to_owned(),
                status: Some(status),
            });
        }
    }
}
