//! The agent's sans-IO core: one [`Node`] that owns every fact about this node's peers.
//!
//! A `Node` holds the peer table (what the controller says), the link policy, the endpoints
//! learnt from packets, the counter slots and the forwarding indexes (overlay address → peer,
//! PLAIN endpoint → peer). Nothing else keeps a copy of that state: the engines (the userspace
//! engine's threads, the eBPF maps) and netconf only apply the [`Command`]s the Node emits, so
//! a fact that changes anywhere (a Watch event, a port learnt from a datagram, a policy flip)
//! changes in one place and reaches every engine the same way.
//!
//! An event about one peer (upserted, removed, a port learnt) recomputes only that peer's
//! desired state (O(log N) in a table of N peers), and the next forwarding snapshot is the
//! last one with that peer's entries swapped: its indexes are persistent maps, so the new
//! snapshot shares all but the changed paths with the last one (O(log N) too), and entries
//! are shared `Arc`s, never a copied peer config. This node's own record,
//! the policy and suspension change every peer and reconcile the whole table.
//!
//! The Node does no IO and reads no clock: every input takes `now`, and the caller polls the
//! outputs, in the manner of quinn-proto's `Connection` and firezone's snownet `Node`.
//!
//! Inputs:
//! - [`Node::handle_watch_event`]: the controller's Watch stream, converted to [`WatchEvent`]s.
//! - [`Node::handle_datagram`]: a datagram from the tunnel port that the engines' packet
//!   threads do not handle themselves (PLAIN from an unknown endpoint, reflector answers), or
//!   every datagram when the Node is the whole dataplane (the simulator).
//! - [`Node::handle_tun_packet`]: a packet read from the overlay device (PLAIN links).
//! - [`Node::handle_initiation`]: a WireGuard initiation a handshake gate read.
//! - [`Node::handle_timeout`]: at or after [`Node::poll_timeout`]: PLAIN keepalive probes,
//!   WireGuard timers.
//! - Relay paths: [`Node::relay_observations`], [`Node::set_sealed_endpoint`],
//!   [`Node::request_keepalive`].
//! - [`Node::punch`]: re-open every path now (our public address changed, the host resumed).
//! - Path MTU discovery (see [`Node::enable_path_mtu`]): [`Node::handle_peer_activity`],
//!   [`Node::handle_path_mtu_hint`], [`Node::handle_transmit_too_big`],
//!   [`Node::handle_peer_roamed`]; probes and acknowledgements come in through
//!   `handle_datagram` and leave through `poll_transmit`, routes as [`Command::SetRouteMtu`].
//!
//! Outputs, to drain after every input (order does not matter between them):
//! - [`Node::poll_command`]: for every engine and netconf; the userspace engine's packet
//!   threads look peers up in the [`Forwarding`] snapshot of the last [`Command::Publish`].
//! - [`Node::poll_transmit`]: datagrams to send from the tunnel port.
//! - [`Node::poll_tun_packet`]: inner packets to write to the overlay device.
//! - [`Node::poll_event`]: for reports and logs.
//! - [`Node::poll_timeout`]: when to call [`Node::handle_timeout`] next.
//!
//! The IO loop around it:
//!
//! ```text
//! loop {
//!     select! { watch event | datagram for the node | timer at poll_timeout() }
//!     node.handle_*(now, ..);
//!     while let Some(c) = node.poll_command()   { for e in engines { e.apply(&c) } }
//!     while let Some(t) = node.poll_transmit()  { socket.send_to(&t.payload, t.to) }
//!     while let Some(p) = node.poll_tun_packet() { tun.write(&p) }
//!     while let Some(e) = node.poll_event()     { report or log e }
//! }
//! ```
//!
//! SEALED (WireGuard) links: the Node chooses them and, given the WireGuard key
//! ([`Node::with_wireguard`]), owns their WireGuard peers (handshakes, timers, roaming,
//! packets queued until a session exists: `sealed.rs`). Each peer's data side goes to the
//! engines in [`Command::SealedPeer`]; the agent's packet threads seal and open transport
//! messages through it and hand the Node only what needs the control side: a packet while no
//! session can send ([`Node::handle_tun_packet`]), handshake messages
//! ([`Node::handle_datagram`], or [`Node::handle_initiation`] for an initiation its handshake
//! thread already read). The simulator lets the Node carry all SEALED traffic. Without a key
//! SEALED traffic comes back as [`Dropped::Sealed`].

mod command;
mod forward;
mod pmtu;
mod sealed;
pub mod table;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use cladnet_common::{
    plain::DropReason,
    reflector,
    wire::{CladHeader, CladType},
};
pub use command::{Command, Event, LocalConfig, PeerConfig, Transmit};
pub use forward::{Forwarding, RouteMiss, Rx, ipv4_dst};
pub use pmtu::{BUSY_FOR, PathMtuStatus, route_mtu};
use table::{LocalNode, PeerTable, RemotePeer};

use crate::policy::{LinkMode, PeerView, Policy};

/// How often every PLAIN peer gets a keepalive probe: PLAIN has no keepalives of its own, and
/// NAT mappings on the way close after tens of seconds without traffic.
pub const PLAIN_KEEPALIVE: Duration = Duration::from_secs(10);

/// A PLAIN peer's endpoint follows a new port of its address at most this often: anyone who
/// shares the address can send datagrams naming the peer.
pub const PORT_CHANGE_INTERVAL: Duration = Duration::from_secs(1);

/// What the Node needs to know about this host before it joins.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (its own record in the Watch stream carries it).
    pub node_id: String,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// This host's underlay address, when known.
    pub underlay_ip: Option<std::net::Ipv4Addr>,
}

/// This node's own record, as the controller stores it.
#[derive(Clone, Debug)]
pub struct SelfRecord {
    /// Node index (CLAD header sender id).
    pub node_index: u32,
    /// Overlay address.
    pub overlay_ip: std::net::Ipv4Addr,
    /// Prefix length of the network.
    pub prefix_len: u8,
    /// Endpoints and site.
    pub view: PeerView,
    /// This node's approved prefixes (the controller's `routes` in state `approved`).
    pub prefixes: Vec<ipnet::Ipv4Net>,
}

/// A change of the network as the controller's Watch stream tells it, already decoded.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// The whole state: replaces everything known.
    Snapshot {
        /// The network's policy, if the snapshot carries the network.
        policy: Option<Policy>,
        /// This node's record, if present.
        local: Option<SelfRecord>,
        /// Every other peer.
        peers: Vec<RemotePeer>,
    },
    /// This node's own record changed.
    LocalUpdated(SelfRecord),
    /// A peer was added or changed.
    PeerUpserted(RemotePeer),
    /// A peer was deleted.
    PeerRemoved(String),
    /// The network's policy changed.
    PolicyChanged(Policy),
    /// A remote `down` (`true`) or `up` (`false`) command.
    Suspend(bool),
}

/// Why the Node did not take a datagram or packet.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Dropped {
    /// An invalid PLAIN datagram.
    Plain(DropReason),
    /// A PLAIN peer seen on yet another port within [`PORT_CHANGE_INTERVAL`].
    PortChangeLimited,
    /// Not IPv4, or no peer owns the destination.
    Route(RouteMiss),
    /// The PLAIN peer has no endpoint yet.
    NoEndpoint,
    /// A SEALED link or WireGuard message, and this Node has no WireGuard key: the userspace
    /// engine's WireGuard sessions handle it.
    Sealed,
    /// A WireGuard datagram or SEALED packet that WireGuard refused.
    WireGuard(cladnet_wg::Error),
    /// A SEALED packet whose inner source is not the sending peer's overlay address
    /// (cryptokey routing).
    SpoofedSource,
    /// Neither WireGuard, CLAD nor a reflector answer.
    UnknownMessage,
}

/// The sans-IO node. See the module documentation for the calling contract.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    table: PeerTable,
    /// When each PLAIN peer last moved to a learnt port.
    port_learned_at: BTreeMap<String, Instant>,
    next_keepalive: Option<Instant>,
    /// Path MTU discovery towards every peer.
    pmtu: pmtu::PathMtus,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    tun: VecDeque<Vec<u8>>,
    /// The WireGuard control side, when the Node seals SEALED links itself.
    sealed: Option<sealed::Sealed>,
}

impl Node {
    /// A node that knows only itself; it installs nothing before its own record arrives.
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config,
            table: PeerTable::default(),
            port_learned_at: BTreeMap::new(),
            next_keepalive: None,
            pmtu: pmtu::PathMtus::default(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            tun: VecDeque::new(),
            sealed: None,
        }
    }

    /// Turns on path MTU discovery towards every peer, bounded by the underlay MTU of
    /// [`NodeConfig`]; `seed` seeds the probe nonces (the Node reads no OS random source).
    pub fn enable_path_mtu(&mut self, seed: u64) {
        self.pmtu.enable(self.config.underlay_mtu, seed);
    }

    /// This Node with the WireGuard static `key`: it owns the WireGuard control side and
    /// seals and opens SEALED links itself. Randomness (ephemeral keys, cookies, jitter) comes
    /// from `rng`; handshake timestamps from `wall`.
    #[must_use]
    pub fn with_wireguard(
        mut self,
        key: cladnet_wg::PrivateKey,
        rng: impl cladnet_wg::CryptoRandom + 'static,
        wall: cladnet_wg::WallClock,
    ) -> Self {
        self.sealed = Some(sealed::Sealed::new(key, rng, wall));
        self
    }

    /// The WireGuard data side of the SEALED peer `node_id` (its sessions), for packet
    /// threads; `None` without a WireGuard key or for a PLAIN peer.
    pub fn peer_data(&self, node_id: &str) -> Option<Arc<cladnet_wg::PeerData>> {
        let slot = self.forwarding().peer(node_id)?.slot;
        self.sealed.as_ref()?.peer_data(slot)
    }

    /// Every SEALED peer the WireGuard control side holds, by node id: its public key and
    /// current endpoint (followed by authenticated packets). Empty without a WireGuard key.
    pub fn sealed_peers(&self) -> BTreeMap<String, ([u8; 32], Option<SocketAddr>)> {
        let Some(sealed) = &self.sealed else {
            return BTreeMap::new();
        };
        let by_slot: BTreeMap<u32, &str> = self
            .forwarding()
            .peers()
            .map(|p| (p.slot, p.node_id.as_str()))
            .collect();
        sealed
            .peers()
            .map(|(slot, key, ep)| {
                let id = by_slot
                    .get(&slot)
                    .map_or_else(|| format!("slot {slot}"), |s| (*s).to_owned());
                (id, (key, ep))
            })
            .collect()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The peer table (what the controller says, and what is installed).
    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// The current forwarding snapshot.
    pub fn forwarding(&self) -> &Arc<Forwarding> {
        self.table.forwarding()
    }

    /// Applies a change of the network.
    pub fn handle_watch_event(&mut self, now: Instant, event: WatchEvent) {
        let cmds = match event {
            WatchEvent::Snapshot {
                policy,
                local,
                peers,
            } => {
                let mut cmds = policy.map(|p| self.table.set_policy(p)).unwrap_or_default();
                if let Some(local) = local {
                    cmds.extend(self.set_self(local));
                }
                cmds.extend(self.table.replace_all(peers));
                cmds
            }
            WatchEvent::LocalUpdated(local) => self.set_self(local),
            WatchEvent::PeerUpserted(p) if p.node_id == self.config.node_id => Vec::new(),
            WatchEvent::PeerUpserted(p) => self.table.upsert(p),
            WatchEvent::PeerRemoved(id) => self.table.remove(&id),
            WatchEvent::PolicyChanged(p) => self.table.set_policy(p),
            WatchEvent::Suspend(down) => self.table.set_suspended(down),
        };
        self.push_commands(now, cmds);
    }

    fn set_self(&mut self, me: SelfRecord) -> Vec<Command> {
        self.table.set_local(LocalNode {
            node_id: self.config.node_id.clone(),
            node_index: me.node_index,
            overlay_ip: me.overlay_ip,
            prefix_len: me.prefix_len,
            underlay_mtu: self.config.underlay_mtu,
            underlay_ip: self.config.underlay_ip,
            view: me.view,
            prefixes: me.prefixes,
        })
    }

    fn push_commands(&mut self, now: Instant, mut cmds: Vec<Command>) {
        if let Some(sealed) = &mut self.sealed {
            // Each SEALED peer's data side goes to the engines right after its config.
            let mut with_data = Vec::with_capacity(cmds.len());
            for c in cmds {
                let data = sealed.apply(now, &c);
                with_data.push(c);
                with_data.extend(data);
            }
            cmds = with_data;
        }
        let new_peer = cmds.iter().any(|c| matches!(c, Command::UpsertPeer(_)));
        let mut out = pmtu::Out::default();
        let fwd = self.table.forwarding().clone();
        self.pmtu.follow(now, &fwd, cmds, &mut out);
        self.take(out);
        if self.next_keepalive.is_none() && self.table.local().is_some() {
            self.next_keepalive = Some(now + PLAIN_KEEPALIVE);
        }
        // A new or changed peer gets a probe at once: it opens our NAT towards it (a SEALED
        // one gets a WireGuard keepalive, or handshake, from `sealed`).
        if new_peer {
            self.probe_plain_peers();
        }
    }

    /// Handles a datagram received from `from` on the tunnel port.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Dropped> {
        let fwd = self.table.forwarding().clone();
        match fwd.classify(from, datagram) {
            Rx::Deliver { inner, .. } => {
                self.tun.push_back(inner.to_vec());
                Ok(())
            }
            Rx::UnknownEndpoint { node_index, probe } => {
                let SocketAddr::V4(from) = from else {
                    return Err(Dropped::Plain(DropReason::UnknownPeer));
                };
                self.learn_port(now, from, node_index)?;
                if probe {
                    return Ok(());
                }
                // Now from a known endpoint: the same checks as any PLAIN datagram.
                match self
                    .table
                    .forwarding()
                    .clone()
                    .classify(SocketAddr::V4(from), datagram)
                {
                    Rx::Deliver { inner, .. } => {
                        self.tun.push_back(inner.to_vec());
                        Ok(())
                    }
                    Rx::Drop(reason) => Err(Dropped::Plain(reason)),
                    _ => Err(Dropped::Plain(DropReason::UnknownPeer)),
                }
            }
            Rx::Reflector => match reflector::parse_response(datagram) {
                Some((nonce, seen)) => {
                    self.events.push_back(Event::Reflected { nonce, seen });
                    Ok(())
                }
                None => Err(Dropped::UnknownMessage),
            },
            Rx::PathMtu => {
                let mut out = pmtu::Out::default();
                let result = self
                    .pmtu
                    .handle_datagram(now, &fwd, from, datagram, &mut out);
                self.take(out);
                result
            }
            Rx::Probe => Ok(()),
            Rx::WireGuard => {
                let sealed = self.sealed.as_mut().ok_or(Dropped::Sealed)?;
                let opened = sealed.decapsulate(now, &fwd, from, datagram);
                self.take_opened(now, opened)
            }
            Rx::Unknown => Err(Dropped::UnknownMessage),
            Rx::Drop(reason) => Err(Dropped::Plain(reason)),
        }
    }

    /// A PLAIN datagram from an unknown endpoint whose *address* is a PLAIN peer's and whose
    /// header names that peer: its NAT gave this flow another public port than the reflector
    /// saw (a port-translating NAT picks another port when the one it prefers is taken). The
    /// peer's endpoint moves to that port, for every engine, so replies get through the NAT.
    /// Only the port can move this way: a new address comes from the controller, as PLAIN is
    /// unauthenticated. A peer moves at most once per [`PORT_CHANGE_INTERVAL`].
    fn learn_port(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        node_index: u32,
    ) -> Result<(), Dropped> {
        let Some(peer) = self
            .table
            .forwarding()
            .port_candidate(from, node_index)
            .cloned()
        else {
            return Err(Dropped::Plain(DropReason::UnknownPeer));
        };
        if self
            .port_learned_at
            .get(&peer.node_id)
            .is_some_and(|at| now.saturating_duration_since(*at) < PORT_CHANGE_INTERVAL)
        {
            return Err(Dropped::PortChangeLimited);
        }
        self.port_learned_at.insert(peer.node_id.clone(), now);
        let cmds = self.table.learn_port(&peer.node_id, from);
        self.push_commands(now, cmds);
        self.events.push_back(Event::EndpointLearned {
            node_id: peer.node_id.clone(),
            endpoint: from,
        });
        Ok(())
    }

    /// Routes a packet read from the overlay device.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), Dropped> {
        let fwd = self.table.forwarding().clone();
        let peer = fwd.route(packet).map_err(Dropped::Route)?;
        if peer.mode == LinkMode::Sealed {
            let sealed = self.sealed.as_mut().ok_or(Dropped::Sealed)?;
            let sealed = sealed.encapsulate(now, peer.slot, packet);
            self.sealed_events(now);
            if let Some(t) = sealed? {
                self.transmits.push_back(t);
            }
            return Ok(());
        }
        let to = peer.endpoint.ok_or(Dropped::NoEndpoint)?;
        let mut payload = vec![0u8; packet.len() + cladnet_common::wire::CLAD_HDR_LEN];
        let len = fwd
            .encapsulate_plain(packet, &mut payload)
            .ok_or(Dropped::Plain(DropReason::Truncated))?;
        payload.truncate(len);
        self.transmits.push_back(Transmit {
            to: SocketAddr::V4(to),
            payload,
        });
        Ok(())
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_keepalive.is_some_and(|at| at <= now) {
            self.probe_plain_peers();
            self.next_keepalive = Some(now + PLAIN_KEEPALIVE);
        }
        if let Some(sealed) = &mut self.sealed {
            sealed.handle_timeout(now, &mut self.transmits);
            self.sealed_events(now);
        }
        let mut out = pmtu::Out::default();
        let fwd = self.table.forwarding().clone();
        self.pmtu.handle_timeout(now, &fwd, &mut out);
        self.take(out);
    }

    /// Handles an initiation a [`cladnet_wg::HandshakeGate`] checked and read outside the
    /// Node (the agent's handshake thread does that Diffie-Hellman): the Node answers it if it
    /// names a SEALED peer.
    pub fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        initiation: cladnet_wg::ReadInitiation,
    ) -> Result<(), Dropped> {
        let fwd = self.table.forwarding().clone();
        let sealed = self.sealed.as_mut().ok_or(Dropped::Sealed)?;
        let opened = sealed.accept_initiation(now, &fwd, from, initiation);
        self.take_opened(now, opened)
    }

    fn take_opened(
        &mut self,
        now: Instant,
        opened: Result<sealed::Opened, Dropped>,
    ) -> Result<(), Dropped> {
        self.sealed_events(now);
        match opened? {
            sealed::Opened::Reply(t) => self.transmits.push_back(t),
            sealed::Opened::Deliver(inner) => self.tun.push_back(inner),
            sealed::Opened::Nothing => {}
        }
        Ok(())
    }

    /// Takes the WireGuard peers' events: a moved endpoint is searched for its path MTU there
    /// (a relayed one gets the relay's base size at once).
    fn sealed_events(&mut self, now: Instant) {
        let Some(sealed) = &mut self.sealed else {
            return;
        };
        let mut events = VecDeque::new();
        sealed.poll_events(&mut events);
        for event in events {
            if let Event::EndpointChanged {
                node_id, endpoint, ..
            } = &event
            {
                self.handle_peer_roamed(now, node_id, *endpoint);
            }
            self.events.push_back(event);
        }
    }

    /// Every SEALED peer's WireGuard session as the relay paths observe it (empty without a
    /// WireGuard key).
    pub fn relay_observations(&self, now: Instant) -> Vec<crate::relay::PeerObs> {
        self.sealed
            .as_ref()
            .map(|s| s.observations(now))
            .unwrap_or_default()
    }

    /// Points SEALED peer `node_index`'s WireGuard peer at `endpoint`: a relay address
    /// ([`crate::relay::relay_addr`]) or a direct endpoint, as the relay paths decide. Reported
    /// as [`Event::EndpointChanged`]; `false` for a node without a SEALED peer here.
    pub fn set_sealed_endpoint(
        &mut self,
        now: Instant,
        node_index: u32,
        endpoint: SocketAddr,
    ) -> bool {
        let Some(node_id) = self
            .sealed
            .as_mut()
            .and_then(|s| s.set_endpoint(node_index, endpoint))
        else {
            return false;
        };
        self.handle_peer_roamed(now, &node_id, endpoint);
        self.events.push_back(Event::EndpointChanged {
            node_id,
            endpoint,
            roamed: false,
        });
        true
    }

    /// Makes WireGuard send SEALED peer `node_index` a keepalive (or a handshake) at the
    /// next timeout; `false` for a node without a SEALED peer here.
    pub fn request_keepalive(&mut self, node_index: u32) -> bool {
        self.sealed
            .as_mut()
            .is_some_and(|s| s.request_keepalive(node_index))
    }

    fn take(&mut self, out: pmtu::Out) {
        self.commands.extend(out.commands);
        self.transmits.extend(out.transmits);
        self.events.extend(out.events);
    }

    /// Peers (by overlay address) the engines saw send lately: their path MTU is confirmed
    /// often while they stay busy (for [`BUSY_FOR`]), so a black hole is found within about
    /// a second.
    pub fn handle_peer_activity(
        &mut self,
        now: Instant,
        overlay_ips: &BTreeSet<std::net::Ipv4Addr>,
    ) {
        let fwd = self.table.forwarding().clone();
        self.pmtu.handle_activity(now, &fwd, overlay_ips);
    }

    /// A path MTU towards the underlay address `ip` learnt outside the search (ICMP
    /// "fragmentation needed", as the kernel's route cache shows it): lowers the paths to
    /// that address when it is new and smaller.
    pub fn handle_path_mtu_hint(&mut self, now: Instant, ip: std::net::Ipv4Addr, mtu: u32) {
        self.pmtu.handle_hint(now, ip, mtu);
    }

    /// Sending a [`Transmit`] of `len` bytes to `to` failed with EMSGSIZE: the first hop
    /// carries less than that.
    pub fn handle_transmit_too_big(&mut self, now: Instant, to: SocketAddr, len: usize) {
        self.pmtu.handle_too_big(now, to, len);
    }

    /// A SEALED peer's WireGuard session authenticated it at `endpoint` (roaming): its path
    /// MTU is searched there.
    pub fn handle_peer_roamed(&mut self, now: Instant, node_id: &str, endpoint: SocketAddr) {
        let fwd = self.table.forwarding().clone();
        self.pmtu.roamed(now, &fwd, node_id, endpoint);
    }

    /// The underlay addresses path MTU discovery probes (whose ICMP-learnt path MTUs the
    /// caller may report with [`Node::handle_path_mtu_hint`]).
    pub fn path_mtu_destinations(&self) -> BTreeSet<std::net::Ipv4Addr> {
        self.pmtu.destinations()
    }

    /// A peer's path MTU, once its search reported.
    pub fn path_mtu(&self, node_id: &str) -> Option<PathMtuStatus> {
        self.pmtu.status(node_id)
    }

    /// Re-opens the paths to every PLAIN peer at once (after our public address or a peer's
    /// endpoint changed, or a resume from suspend).
    pub fn punch(&mut self) {
        self.probe_plain_peers();
        if let Some(sealed) = &mut self.sealed {
            sealed.punch();
        }
    }

    /// A CLAD keepalive probe to every PLAIN peer: it keeps the NAT mappings on the way open
    /// and re-creates them after an address change.
    fn probe_plain_peers(&mut self) {
        let fwd = self.table.forwarding().clone();
        let probe = CladHeader::new(CladType::Probe, 0, fwd.local_index()).to_bytes();
        for p in fwd.peers().filter(|p| p.mode == LinkMode::Plain) {
            if let Some(ep) = p.endpoint {
                self.transmits.push_back(Transmit {
                    to: SocketAddr::V4(ep),
                    payload: probe.to_vec(),
                });
            }
        }
    }

    /// The next command for the engines and netconf.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next inner packet to write to the overlay device.
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.tun.pop_front()
    }

    /// The next event for reports and logs.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wg = self.sealed.as_ref().and_then(sealed::Sealed::poll_timeout);
        [self.next_keepalive, self.pmtu.poll_timeout(), wg]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod pmtu_tests;
#[cfg(test)]
mod tests;
