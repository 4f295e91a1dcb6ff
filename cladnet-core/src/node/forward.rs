//! The forwarding snapshot: the Node's peer indexes in a read-only form that packet threads
//! share, and the per-packet decisions made on it. The Node uses the same functions for the
//! packets it handles itself, so each decision has one implementation.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use imbl::{HashMap, OrdMap};

use cladnet_common::{
    plain::{self, DropReason, KnownPeer},
    reflector::MAGIC as REFLECTOR_MAGIC,
    rx::{self, INNER_HDR_LEN, InnerFit, Owner, Reject},
    wire::{self, CLAD_HDR_LEN, CladHeader, CladType, Demux},
};
use ipnet::Ipv4Net;

use super::command::PeerConfig;
use crate::policy::LinkMode;

/// The installed peers, indexed for the packet path. Immutable once published: the Node
/// derives the next one from the last with [`Forwarding::apply`] and publishes it with
/// [`Command::Publish`](super::Command::Publish). The indexes are persistent maps (`imbl`:
/// a B-tree and hash array mapped tries), so the next snapshot shares every node but the
/// changed paths with the last one: O(log N) per changed peer, never a copy of an index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forwarding {
    /// This node's index and overlay address, once configured.
    local: Option<(u32, Ipv4Addr)>,
    by_id: OrdMap<Arc<str>, Arc<PeerConfig>>,
    by_ip: Index<Ipv4Addr>,
    /// PLAIN peers by underlay endpoint: the only way a PLAIN sender is identified.
    plain_by_endpoint: Index<SocketAddrV4>,
    /// Peers' approved prefixes by (length, network address): looked up longest first.
    prefixes: Index<(u8, u32)>,
    /// How many prefixes of each length [`Self::prefixes`] holds (holders counted), so a
    /// lookup tries only the lengths in use.
    prefix_lens: BTreeMap<u8, u32>,
    /// This node's own approved prefixes: traffic for them is delivered here.
    local_prefixes: Vec<Ipv4Net>,
}

/// The [`Forwarding::prefixes`] key of a prefix.
fn prefix_key(n: &Ipv4Net) -> (u8, u32) {
    (n.prefix_len(), u32::from(n.network()))
}

/// `ip` with the bits past `len` cleared.
fn masked(ip: Ipv4Addr, len: u8) -> u32 {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask
}

/// A key → peer index where, as in a table built in node id order, the greatest node id
/// holding a key wins. Keys held by more than one peer (an address moving between peers
/// across two Watch events) are counted, so removing the winner finds the next holder
/// without scanning the peers unless the key really is shared.
#[derive(Clone, Debug)]
struct Index<K> {
    map: HashMap<K, Arc<PeerConfig>>,
    /// Holders beyond the first, for the (rare) shared keys only.
    extra: HashMap<K, u32>,
}

impl<K: Eq + std::hash::Hash> PartialEq for Index<K> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map && self.extra == other.extra
    }
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            extra: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> Index<K> {
    fn insert(&mut self, key: K, p: &Arc<PeerConfig>) {
        match self.map.get_mut(&key) {
            Some(held) => {
                *self.extra.entry(key).or_default() += 1;
                if held.node_id < p.node_id {
                    *held = p.clone();
                }
            }
            None => {
                self.map.insert(key, p.clone());
            }
        }
    }

    /// Removes `p`'s hold on `key`; `holders` lists the peers still holding it.
    fn remove<'a>(
        &mut self,
        key: K,
        p: &PeerConfig,
        holders: impl Iterator<Item = &'a Arc<PeerConfig>>,
    ) {
        let Some(n) = self.extra.get_mut(&key) else {
            self.map.remove(&key);
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.extra.remove(&key);
        }
        if self.map.get(&key).is_some_and(|h| h.node_id == p.node_id)
            && let Some(next) = holders.max_by(|a, b| a.node_id.cmp(&b.node_id))
        {
            self.map.insert(key, next.clone());
        }
    }
}

/// The key a PLAIN peer is known by in `Forwarding::plain_by_endpoint`.
fn plain_endpoint(p: &PeerConfig) -> Option<SocketAddrV4> {
    p.endpoint.filter(|_| p.mode == LinkMode::Plain)
}

/// Where a packet read from the TUN device goes, or why nowhere.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RouteMiss {
    /// Not an IPv4 packet.
    NotIpv4,
    /// No peer owns the destination.
    NoRoute,
}

/// What a datagram at the tunnel port is, decided once per datagram.
#[derive(Debug, Eq, PartialEq)]
pub enum Rx<'f, 'd> {
    /// PLAIN data from a known peer, checked: write `inner` to the TUN device.
    Deliver {
        /// The sender.
        peer: &'f Arc<PeerConfig>,
        /// The inner IPv4 packet.
        inner: &'d [u8],
    },
    /// A PLAIN datagram (data, or a keepalive probe when `probe`) from an endpoint that is no
    /// peer's, naming node `node_index`: for the Node, which may learn that the peer's NAT
    /// moved it to another port.
    UnknownEndpoint {
        /// The sender id in the CLAD header.
        node_index: u32,
        /// A keepalive probe rather than data.
        probe: bool,
    },
    /// A CLAD keepalive probe from a known peer: it only keeps NAT mappings open.
    Probe,
    /// A path MTU probe or acknowledgement.
    PathMtu,
    /// A WireGuard message.
    WireGuard,
    /// An answer of the controller's reflector.
    Reflector,
    /// Neither WireGuard, CLAD nor a reflector answer.
    Unknown,
    /// An invalid PLAIN datagram.
    Drop(DropReason),
}

impl Forwarding {
    /// A snapshot of `peers` for the node `local` (index, overlay address). The Node builds
    /// and publishes these; engines' tests may build their own.
    pub fn new(local: Option<(u32, Ipv4Addr)>, peers: &BTreeMap<String, PeerConfig>) -> Self {
        let f = Self {
            local,
            ..Self::default()
        };
        f.apply(&[], peers.values())
    }

    /// This snapshot with the peers `removed` (by node id) taken out and the peers `upserted`
    /// put in (replacing any with the same node id), in that order: the cost is the changed
    /// peers' index updates (O(log N) each), whatever the table's size.
    pub fn apply<'a>(
        &self,
        removed: &[&str],
        upserted: impl IntoIterator<Item = &'a PeerConfig>,
    ) -> Self {
        let mut f = self.clone();
        for id in removed {
            f.unindex(id);
        }
        for config in upserted {
            f.unindex(&config.node_id);
            let p = Arc::new(config.clone());
            f.by_id.insert(Arc::from(p.node_id.as_str()), p.clone());
            f.by_ip.insert(p.overlay_ip, &p);
            if let Some(ep) = plain_endpoint(&p) {
                f.plain_by_endpoint.insert(ep, &p);
            }
            for n in &p.prefixes {
                f.prefixes.insert(prefix_key(n), &p);
                *f.prefix_lens.entry(n.prefix_len()).or_default() += 1;
            }
        }
        f
    }

    /// This snapshot with this node's own prefixes set to `prefixes`.
    pub fn with_local_prefixes(mut self, prefixes: Vec<Ipv4Net>) -> Self {
        self.local_prefixes = prefixes;
        self
    }

    /// Takes a peer out of every index.
    fn unindex(&mut self, node_id: &str) {
        let Some(old) = self.by_id.remove(node_id) else {
            return;
        };
        let ip = old.overlay_ip;
        self.by_ip
            .remove(ip, &old, self.by_id.values().filter(|p| p.overlay_ip == ip));
        if let Some(ep) = plain_endpoint(&old) {
            self.plain_by_endpoint.remove(
                ep,
                &old,
                self.by_id
                    .values()
                    .filter(|p| plain_endpoint(p) == Some(ep)),
            );
        }
        for n in &old.prefixes {
            let key = prefix_key(n);
            self.prefixes.remove(
                key,
                &old,
                self.by_id
                    .values()
                    .filter(|p| p.prefixes.iter().any(|m| prefix_key(m) == key)),
            );
            let len = n.prefix_len();
            if let Some(c) = self.prefix_lens.get_mut(&len) {
                *c -= 1;
                if *c == 0 {
                    self.prefix_lens.remove(&len);
                }
            }
        }
    }

    /// This node's index (the CLAD sender id), 0 until configured.
    pub fn local_index(&self) -> u32 {
        self.local.map_or(0, |l| l.0)
    }

    /// This node's overlay address, 0.0.0.0 until configured.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local.map_or(Ipv4Addr::UNSPECIFIED, |l| l.1)
    }

    /// The installed peers by node id.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<PeerConfig>> {
        self.by_id.values()
    }

    /// An installed peer.
    pub fn peer(&self, node_id: &str) -> Option<&Arc<PeerConfig>> {
        self.by_id.get(node_id)
    }

    /// This node's own prefixes.
    pub fn local_prefixes(&self) -> &[Ipv4Net] {
        &self.local_prefixes
    }

    /// The peer a packet read from the TUN device goes to: the holder of its destination's
    /// overlay address, else the peer with the longest approved prefix holding it.
    pub fn route(&self, packet: &[u8]) -> Result<&Arc<PeerConfig>, RouteMiss> {
        let dst = ipv4_dst(packet).ok_or(RouteMiss::NotIpv4)?;
        self.peer_for(dst).ok_or(RouteMiss::NoRoute)
    }

    /// The peer that owns `ip`: its overlay address, or the longest of the approved prefixes.
    pub fn peer_for(&self, ip: Ipv4Addr) -> Option<&Arc<PeerConfig>> {
        self.by_ip
            .map
            .get(&ip)
            .or_else(|| self.prefix_peer(ip).map(|(_, p)| p))
    }

    /// The longest peer prefix holding `ip`, with its length.
    fn prefix_peer(&self, ip: Ipv4Addr) -> Option<(u8, &Arc<PeerConfig>)> {
        self.prefix_lens.keys().rev().find_map(|&len| {
            self.prefixes
                .map
                .get(&(len, masked(ip, len)))
                .map(|p| (len, p))
        })
    }

    /// Who owns `ip`, for the receive checks (the userspace side of the kernel's `PEERS`
    /// lookup): a peer's overlay address or prefix, one of this node's prefixes, or nobody.
    /// The longest match wins; this node's prefix wins a tie.
    pub fn owner(&self, ip: Ipv4Addr) -> Owner {
        if let Some(p) = self.by_ip.map.get(&ip) {
            return Owner::Peer(p.node_index);
        }
        let local = self
            .local_prefixes
            .iter()
            .filter(|n| n.contains(&ip))
            .map(Ipv4Net::prefix_len)
            .max();
        match (self.prefix_peer(ip), local) {
            (Some((len, p)), l) if l.is_none_or(|l| len > l) => Owner::Peer(p.node_index),
            (_, Some(_)) => Owner::Local,
            _ => Owner::Nobody,
        }
    }

    /// Whether a packet from `peer` may carry the inner source `src` (WireGuard AllowedIPs,
    /// the rule of [`rx::check_source`]): `peer`'s overlay address or one of its prefixes.
    pub fn source_allowed(&self, peer: &PeerConfig, src: Ipv4Addr) -> bool {
        self.source_allowed_for(peer.node_index, peer.overlay_ip, src)
    }

    /// [`Forwarding::source_allowed`] for the peer with `node_index` at `overlay_ip`.
    pub fn source_allowed_for(&self, node_index: u32, overlay_ip: Ipv4Addr, src: Ipv4Addr) -> bool {
        let known = KnownPeer {
            node_index,
            overlay_ip: overlay_ip.octets(),
        };
        rx::check_source(src.octets(), &known, |ip| self.owner(Ipv4Addr::from(ip))).is_ok()
    }

    /// Classifies a datagram from `from` with [`rx::classify`] (the kernel's classifier) and,
    /// for PLAIN data, makes the kernel's peer checks on it.
    pub fn classify<'d>(&self, from: SocketAddr, datagram: &'d [u8]) -> Rx<'_, 'd> {
        let mut head = [0u8; 8];
        let n = datagram.len().min(head.len());
        head[..n].copy_from_slice(&datagram[..n]);
        let header = match rx::classify(&head, datagram.len()) {
            Ok(h) => h,
            Err(Reject::Unknown) => return Rx::Unknown,
            Err(Reject::Drop(reason)) => return Rx::Drop(reason),
            Err(Reject::ToSocket) => return self.control(from, &head, datagram.len()),
        };
        let SocketAddr::V4(from) = from else {
            return Rx::Drop(DropReason::UnknownPeer);
        };
        let Some(peer) = self.plain_by_endpoint.map.get(&from) else {
            return Rx::UnknownEndpoint {
                node_index: header.node_id(),
                probe: false,
            };
        };
        if header.node_id() != peer.node_index {
            return Rx::Drop(DropReason::WrongNode);
        }
        let inner = &datagram[CLAD_HDR_LEN..];
        let mut hdr = [0u8; INNER_HDR_LEN];
        let m = inner.len().min(INNER_HDR_LEN);
        hdr[..m].copy_from_slice(&inner[..m]);
        let known = KnownPeer {
            node_index: peer.node_index,
            overlay_ip: peer.overlay_ip.octets(),
        };
        // The socket gets each datagram on its own (GRO batches are split before this), so
        // an inner packet shorter than the datagram is trailing garbage.
        let owner = |ip: [u8; 4]| self.owner(Ipv4Addr::from(ip));
        match rx::check_inner(&hdr, inner.len(), &known, owner) {
            Ok(InnerFit::Exact) => {}
            Ok(InnerFit::Coalesced) => return Rx::Drop(DropReason::BadInner),
            Err(reason) => return Rx::Drop(reason),
        }
        match rx::check_destination_in(&hdr, self.local_ip().octets(), owner) {
            Ok(()) => Rx::Deliver { peer, inner },
            Err(reason) => Rx::Drop(reason),
        }
    }

    /// What [`rx::classify`] leaves to the socket, told apart.
    fn control<'d>(&self, from: SocketAddr, head: &[u8; 8], len: usize) -> Rx<'_, 'd> {
        if len >= REFLECTOR_MAGIC.len() && *head == REFLECTOR_MAGIC {
            return Rx::Reflector;
        }
        if matches!(wire::demux(&head[..len.min(4)]), Demux::WireGuard(_)) {
            return Rx::WireGuard;
        }
        match CladHeader::decode(&head[..len.min(8)]).map(|h| (h.ty(), h.node_id())) {
            Ok((Some(CladType::MtuProbe | CladType::MtuAck), _)) => Rx::PathMtu,
            Ok((Some(CladType::Probe), node_index)) => match from {
                SocketAddr::V4(v4) if !self.plain_by_endpoint.map.contains_key(&v4) => {
                    Rx::UnknownEndpoint {
                        node_index,
                        probe: true,
                    }
                }
                _ => Rx::Probe,
            },
            // GRO-merged datagrams (the socket splits them first) and anything else the
            // classifier passes up: nothing this node knows.
            _ => Rx::Unknown,
        }
    }

    /// Writes a DATA_PLAIN datagram for `packet` from this node into `out`; returns its length,
    /// or `None` when `out` is too small.
    pub fn encapsulate_plain(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        plain::encapsulate(self.local_index(), packet, out)
    }

    /// A PLAIN peer that may have moved to `from`: one whose endpoint has `from`'s address and
    /// whose node index the datagram names.
    pub(super) fn port_candidate(
        &self,
        from: SocketAddrV4,
        node_index: u32,
    ) -> Option<&Arc<PeerConfig>> {
        self.by_id.values().find(|p| {
            p.mode == LinkMode::Plain
                && p.node_index == node_index
                && p.endpoint
                    .is_some_and(|ep| ep.ip() == from.ip() && ep != from)
        })
    }
}

/// The destination of an IPv4 packet.
pub fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    let hdr = packet.first_chunk::<20>()?;
    (hdr[0] >> 4 == 4).then(|| Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]))
}
