//! What the [`Node`](super::Node) tells the world: commands for the engines and netconf,
//! events for reports and logs, datagrams to send.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use ipnet::Ipv4Net;

use crate::policy::LinkMode;

use super::forward::Forwarding;

/// This node as the engines need it: one command carries what used to ride along every call
/// (`local_index`, `underlay_ip`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct LocalConfig {
    /// Node index (the sender id in CLAD headers).
    pub node_index: u32,
    /// Overlay address (the only inner destination PLAIN datagrams are delivered for).
    pub overlay_ip: Ipv4Addr,
    /// Network prefix length (the route to the whole network goes to the overlay device).
    pub prefix_len: u8,
    /// Overlay device MTU.
    pub mtu: u32,
    /// This host's underlay address (the source of PLAIN datagrams the kernel builds), when
    /// known.
    pub underlay_ip: Option<Ipv4Addr>,
    /// This node's approved prefixes (pods or a subnet behind it), sorted: received traffic
    /// for them is delivered here like traffic for `overlay_ip` (the kernel's LOCAL entries).
    pub prefixes: Vec<Ipv4Net>,
}

/// How the dataplane reaches one peer.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PeerConfig {
    /// Node id.
    pub node_id: String,
    /// Index carried in CLAD headers.
    pub node_index: u32,
    /// Overlay address (routes to it go through this peer).
    pub overlay_ip: Ipv4Addr,
    /// X25519 public key (SEALED links).
    pub public_key: [u8; 32],
    /// Underlay endpoint; `None` until known (SEALED peers may still answer from roaming).
    /// A PLAIN peer's port learnt from its packets is already in here: the Node owns it.
    pub endpoint: Option<SocketAddrV4>,
    /// PLAIN or SEALED.
    pub mode: LinkMode,
    /// The peer's approved prefixes, sorted (WireGuard AllowedIPs beyond its /32): packets
    /// to them go to this peer, and packets from this peer may come from them. Prefixes it no
    /// longer has are withdrawn with [`Command::RemovePrefixes`] first.
    pub prefixes: Vec<Ipv4Net>,
    /// The peer's counter slot, stable while it is installed and below
    /// [`cladnet_common::maps::MAX_PEERS_LIMIT`] (engines with smaller tables, such as the eBPF
    /// maps sized by `ebpf_max_peers`, leave peers above their size to the userspace engine); engines keep per-peer state of their own (counters,
    /// WireGuard sessions) by slot, never a copy of this config.
    pub slot: u32,
}

/// An instruction for the engines (and netconf, for [`Command::SetLocal`]). Every engine
/// gets every command, in order; each applies what concerns it.
#[derive(Clone, Debug)]
pub enum Command {
    /// A new forwarding snapshot: what the packet threads look peers up in from now on.
    /// Published after the per-peer commands it reflects.
    Publish(Arc<Forwarding>),
    /// Remove a peer (sent before a peer with the same address is installed).
    RemovePeer {
        /// Node id.
        node_id: String,
        /// Its overlay address (to withdraw).
        overlay_ip: Ipv4Addr,
        /// Its counter slot (free again after this command).
        slot: u32,
    },
    /// Withdraw prefixes from the peer with node index `node_index` (or this node's own, when
    /// `node_index` is this node's): sent before the [`Command::UpsertPeer`] or
    /// [`Command::SetLocal`] without them, and before a peer's [`Command::RemovePeer`]. An
    /// engine removes an entry only while it still belongs to `node_index`.
    RemovePrefixes {
        /// The owner's node index.
        node_index: u32,
        /// Whether they are this node's own prefixes (no kernel route goes with them).
        local: bool,
        /// The prefixes.
        prefixes: Vec<Ipv4Net>,
    },
    /// Configure this node: overlay device address and MTU, CLAD sender id, underlay source.
    SetLocal(LocalConfig),
    /// Install or replace a peer.
    UpsertPeer(PeerConfig),
    /// What path MTU discovery found towards a peer: the route MTU on the overlay device
    /// (`<overlay_ip>/32 mtu <mtu>`, netconf) and the userspace engine's clamp (the counter
    /// slot's limit, above which a DF packet gets ICMP "fragmentation needed"). `None`
    /// removes the route (the peer went, or moved to another address or slot).
    SetRouteMtu {
        /// Node id.
        node_id: String,
        /// The peer's overlay address (the route's destination).
        overlay_ip: Ipv4Addr,
        /// The peer's counter slot.
        slot: u32,
        /// Largest inner packet towards the peer, or `None` to remove the route.
        mtu: Option<u32>,
    },
    /// The WireGuard data side carrying SEALED peer `slot` (sent by a Node that holds the
    /// WireGuard key, right after the [`Command::UpsertPeer`] that made or kept it): packet
    /// threads seal and open the peer's transport messages through it, without the Node.
    /// The same `Arc` for as long as the peer keeps its key.
    SealedPeer {
        /// The peer's counter slot.
        slot: u32,
        /// The WireGuard peer (its device slot names it in transport messages' receiver
        /// index, see [`cladnet_wg::receiver_slot`]).
        id: cladnet_wg::PeerId,
        /// Its data side.
        data: Arc<cladnet_wg::PeerData>,
    },
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Publish(a), Self::Publish(b)) => Arc::ptr_eq(a, b),
            (
                Self::RemovePeer {
                    node_id: a,
                    overlay_ip: b,
                    slot: c,
                },
                Self::RemovePeer {
                    node_id: x,
                    overlay_ip: y,
                    slot: z,
                },
            ) => (a, b, c) == (x, y, z),
            (
                Self::RemovePrefixes {
                    node_index: a,
                    local: b,
                    prefixes: c,
                },
                Self::RemovePrefixes {
                    node_index: x,
                    local: y,
                    prefixes: z,
                },
            ) => (a, b, c) == (x, y, z),
            (Self::SetLocal(a), Self::SetLocal(b)) => a == b,
            (Self::UpsertPeer(a), Self::UpsertPeer(b)) => a == b,
            (
                Self::SetRouteMtu {
                    node_id: a,
                    overlay_ip: b,
                    slot: c,
                    mtu: d,
                },
                Self::SetRouteMtu {
                    node_id: w,
                    overlay_ip: x,
                    slot: y,
                    mtu: z,
                },
            ) => (a, b, c, d) == (w, x, y, z),
            (
                Self::SealedPeer {
                    slot: a,
                    id: b,
                    data: c,
                },
                Self::SealedPeer {
                    slot: x,
                    id: y,
                    data: z,
                },
            ) => a == x && b == y && Arc::ptr_eq(c, z),
            _ => false,
        }
    }
}

/// Something the agent reports or logs.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// A PLAIN peer was heard from another port of its address: its endpoint follows (already
    /// sent to the engines as an [`Command::UpsertPeer`]).
    EndpointLearned {
        /// Node id.
        node_id: String,
        /// Its new endpoint.
        endpoint: SocketAddrV4,
    },
    /// A peer's path MTU search moved (`None`: the peer's path is gone), for status and
    /// metrics. Route changes go out as [`Command::SetRouteMtu`] as well.
    PathMtu {
        /// Node id.
        node_id: String,
        /// The search's state.
        status: Option<super::PathMtuStatus>,
    },
    /// A WireGuard handshake with a SEALED peer completed (a session is up).
    HandshakeCompleted {
        /// Node id.
        node_id: String,
    },
    /// A SEALED peer's WireGuard endpoint moved: an authenticated packet came from a new
    /// address (roaming), or the relay paths pointed it at a relay or back
    /// (see [`super::Node::set_sealed_endpoint`]).
    EndpointChanged {
        /// Node id.
        node_id: String,
        /// The new endpoint (a relay address while relayed, see
        /// [`crate::relay::relay_addr`]).
        endpoint: SocketAddr,
        /// `true` when an authenticated packet came from there (roaming: evidence of a
        /// working path), `false` when the relay paths chose it.
        roamed: bool,
    },
    /// A WireGuard handshake with a SEALED peer gave up after its retries.
    HandshakeTimedOut {
        /// Node id.
        node_id: String,
    },
    /// The controller's reflector answered one of our probes.
    Reflected {
        /// The probe's nonce.
        nonce: u64,
        /// Where the reflector saw the probe come from (our public endpoint).
        seen: SocketAddrV4,
    },
}

/// A datagram to send from the tunnel port.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}
