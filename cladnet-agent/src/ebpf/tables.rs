//! Typed handles on the dataplane's maps, and the peer updates in an order that never lets
//! the programs see a half-written peer.
//!
//! Order of writes (each map update is atomic on its own; the order makes the pair safe):
//!
//! * install: `ENDPOINTS` (receive accepts the peer) before `PEERS` (send to it);
//! * remove: `PEERS` (stop sending) before `ENDPOINTS` (stop accepting);
//! * change of endpoint or address: the new `ENDPOINTS` entry, then `PEERS`, then the old
//!   `PEERS` key (address change) and the old `ENDPOINTS` entry (endpoint change);
//! * a peer that was not installed in its counter slot gets that slot zeroed first, so its
//!   counters start at zero; re-installing the same peer keeps them.
//!
//! Which peers are installed is the Node's table; this handle keeps no index of its own. What
//! an update replaces is read back from the maps themselves: `PEERS[overlay/32]` holds the
//! peer's last endpoint and slot, `ENDPOINTS[endpoint]` its last overlay address. The Node
//! removes a peer before it installs it at another address ([`Command::RemovePeer`] comes
//! first), so an address and an endpoint never both change in one upsert. Maps taken over
//! from an earlier agent need no rebuilt index either.
//!
//! [`Command::RemovePeer`]: cladnet_core::node::Command::RemovePeer

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use cladnet_common::maps::{
    Config, Counters, EndpointEntry, EndpointKey, KernelDrop, MAP_CONFIG, MAP_DROPS, MAP_ENDPOINTS,
    MAP_PEER_STATS, MAP_PEERS, MAP_STATS, PREFIXES_PER_PEER, PeerCounters, PeerEntry, PeerMode,
    StatSlot,
};
use cladnet_core::{node::PeerConfig, policy::LinkMode};
use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::{debug, warn};

use super::EbpfError;

/// One installed peer, as the maps hold it (read back, never kept).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Installed {
    overlay_ip: Ipv4Addr,
    /// Present when the peer is PLAIN with a known endpoint (it has an `ENDPOINTS` entry).
    endpoint: Option<SocketAddrV4>,
    slot: u32,
}

impl Installed {
    fn from_peer(overlay_ip: Ipv4Addr, e: &PeerEntry) -> Self {
        Self {
            overlay_ip,
            endpoint: e
                .is_plain()
                .then(|| SocketAddrV4::new(Ipv4Addr::from(e.underlay_ip()), e.underlay_port())),
            slot: e.slot,
        }
    }
}

/// Counters of one installed peer, summed over CPUs.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize)]
pub struct PeerStats {
    /// Node index (CLAD header sender id).
    pub node_index: u32,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Counter slot.
    pub slot: u32,
    /// Whether the kernel carries this peer's traffic (PLAIN with an endpoint).
    pub in_kernel: bool,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Transmitted inner bytes.
    pub tx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Received inner bytes.
    pub rx_bytes: u64,
    /// Packets to the peer dropped.
    pub tx_drops: u64,
    /// Datagrams from the peer's endpoint dropped.
    pub rx_drops: u64,
}

/// The maps, opened from a loaded object or from pins.
pub(super) struct Tables {
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, Counters>,
    drops: PerCpuArray<MapData, u64>,
    peer_stats: PerCpuArray<MapData, PeerCounters>,
    endpoints: HashMap<MapData, EndpointKey, EndpointEntry>,
    peers: LpmTrie<MapData, [u8; 4], PeerEntry>,
    /// Peers the maps hold: counter slots are `0..capacity`.
    capacity: u32,
}

/// The shape each map must have (checked when maps are reopened from pins).
struct Shape {
    name: &'static str,
    ty: MapType,
    key: usize,
    value: usize,
    max: u32,
}

/// The shapes of the maps sized for `peers` peers.
const fn shapes(peers: u32) -> [Shape; 6] {
    [
        Shape {
            name: MAP_CONFIG,
            ty: MapType::Array,
            key: 4,
            value: size_of::<Config>(),
            max: 1,
        },
        Shape {
            name: MAP_STATS,
            ty: MapType::PerCpuArray,
            key: 4,
            value: size_of::<Counters>(),
            max: StatSlot::COUNT,
        },
        Shape {
            name: MAP_DROPS,
            ty: MapType::PerCpuArray,
            key: 4,
            value: 8,
            max: KernelDrop::COUNT,
        },
        Shape {
            name: MAP_PEER_STATS,
            ty: MapType::PerCpuArray,
            key: 4,
            value: size_of::<PeerCounters>(),
            max: peers,
        },
        Shape {
            name: MAP_ENDPOINTS,
            ty: MapType::Hash,
            key: size_of::<EndpointKey>(),
            value: size_of::<EndpointEntry>(),
            max: peers,
        },
        Shape {
            name: MAP_PEERS,
            ty: MapType::LpmTrie,
            key: 8,
            value: size_of::<PeerEntry>(),
            max: peers.saturating_mul(PREFIXES_PER_PEER),
        },
    ]
}

/// The maps' `max_entries` for `peers` peers, for [`aya::EbpfLoader::map_max_entries`].
pub(super) fn sizes(peers: u32) -> impl Iterator<Item = (&'static str, u32)> {
    shapes(peers)
        .into_iter()
        .filter(|s| matches!(s.name, MAP_PEER_STATS | MAP_ENDPOINTS | MAP_PEERS))
        .map(|s| (s.name, s.max))
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|e| EbpfError::map(name, e))
}

impl Tables {
    /// Takes the maps out of a freshly loaded object (its programs are loaded already), sized
    /// for `capacity` peers.
    pub(super) fn take(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self, EbpfError> {
        let take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(EbpfError::MissingItem { kind: "map", name })
        };
        Self::from_maps(take, capacity)
    }

    /// Peers the maps of a dataplane pinned in `pin_dir` were sized for.
    pub(super) fn pinned_capacity(pin_dir: &Path) -> Result<u32, EbpfError> {
        let path = pin_dir.join(MAP_PEER_STATS);
        if !path.exists() {
            return Err(EbpfError::NotAttached {
                pin_dir: pin_dir.to_owned(),
            });
        }
        let data = MapData::from_pin(&path).map_err(|e| EbpfError::map(MAP_PEER_STATS, e))?;
        let info = data.info().map_err(|e| EbpfError::map(MAP_PEER_STATS, e))?;
        Ok(info.max_entries())
    }

    /// Peers the maps hold: counter slots are `0..capacity`.
    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Opens the maps pinned in `pin_dir`, checking that they have the shapes this agent's
    /// programs use.
    pub(super) fn open_pinned(pin_dir: &Path) -> Result<Self, EbpfError> {
        let capacity = Self::pinned_capacity(pin_dir)?;
        Self::from_maps(
            |name| {
                let path = pin_dir.join(name);
                if !path.exists() {
                    return Err(EbpfError::NotAttached {
                        pin_dir: pin_dir.to_owned(),
                    });
                }
                let data = MapData::from_pin(&path).map_err(|e| EbpfError::map(name, e))?;
                check_shape(&data, name, pin_dir, capacity)?;
                Map::from_map_data(data).map_err(|e| EbpfError::map(name, e))
            },
            capacity,
        )
    }

    fn from_maps(
        mut get: impl FnMut(&'static str) -> Result<Map, EbpfError>,
        capacity: u32,
    ) -> Result<Self, EbpfError> {
        Ok(Self {
            config: typed(MAP_CONFIG, get(MAP_CONFIG)?)?,
            stats: typed(MAP_STATS, get(MAP_STATS)?)?,
            drops: typed(MAP_DROPS, get(MAP_DROPS)?)?,
            peer_stats: typed(MAP_PEER_STATS, get(MAP_PEER_STATS)?)?,
            endpoints: typed(MAP_ENDPOINTS, get(MAP_ENDPOINTS)?)?,
            peers: typed(MAP_PEERS, get(MAP_PEERS)?)?,
            capacity,
        })
    }

    /// What the maps hold for peer `node` at `overlay` or at `endpoint` (see the module
    /// documentation): its `PEERS` entry at the address, else the address its `ENDPOINTS`
    /// entry names.
    fn installed(
        &self,
        node: u32,
        overlay: Ipv4Addr,
        endpoint: Option<SocketAddrV4>,
    ) -> Result<Option<Installed>, EbpfError> {
        if let Some(e) = self.lookup(overlay)?.filter(|e| is_peer_of(e, node)) {
            return Ok(Some(Installed::from_peer(overlay, &e)));
        }
        let Some(ep) = endpoint else {
            return Ok(None);
        };
        let Some(by_ep) = self.endpoint(ep)?.filter(|e| e.node_index == node) else {
            return Ok(None);
        };
        let old_ip = Ipv4Addr::from(by_ep.overlay_ip);
        Ok(self
            .lookup(old_ip)?
            .filter(|e| is_peer_of(e, node))
            .map(|e| Installed::from_peer(old_ip, &e)))
    }

    pub(super) fn config(&self) -> Result<Config, EbpfError> {
        self.config
            .get(&0, 0)
            .map_err(|e| EbpfError::map(MAP_CONFIG, e))
    }

    pub(super) fn set_config(&mut self, cfg: Config) -> Result<(), EbpfError> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| EbpfError::map(MAP_CONFIG, e))
    }

    /// Installs or replaces `peer` with counters in its slot.
    pub(super) fn upsert_peer(&mut self, peer: &PeerConfig) -> Result<(), EbpfError> {
        let slot = peer.slot;
        if slot >= self.capacity {
            return Err(EbpfError::InvalidInput {
                field: "counter slot",
                value: slot.to_string(),
                reason: format!(
                    "must be below {}, the peers the maps hold (agent setting ebpf_max_peers)",
                    self.capacity
                ),
            });
        }
        let node = peer.node_index;
        let overlay = peer.overlay_ip;
        let endpoint = match peer.mode {
            LinkMode::Plain => peer.endpoint.filter(|e| e.port() != 0),
            LinkMode::Sealed => None,
        };
        let entry = match (peer.mode, endpoint) {
            (LinkMode::Plain, Some(ep)) => {
                PeerEntry::plain(ep.ip().octets(), ep.port(), node, slot)
            }
            // PLAIN without an endpoint yet: the userspace engine counts it as `no_endpoint`.
            (LinkMode::Plain, None) => PeerEntry::plain([0; 4], 0, node, slot),
            (LinkMode::Sealed, _) => PeerEntry::sealed(node, slot),
        };
        let old = self.installed(node, overlay, endpoint)?;
        if old.is_none_or(|o| o.slot != slot) {
            self.zero_slot(slot)?;
        }
        // 1. Receive accepts the (new) endpoint.
        if let Some(ep) = endpoint {
            let key = endpoint_key(ep);
            if let Ok(other) = self.endpoints.get(&key, 0)
                && other.node_index != node
            {
                warn!(%ep, node, other = other.node_index, "endpoint moves between peers");
            }
            let value = EndpointEntry {
                node_index: node,
                overlay_ip: overlay.octets(),
                slot,
            };
            self.endpoints
                .insert(key, value, 0)
                .map_err(|e| EbpfError::map(MAP_ENDPOINTS, e))?;
        }
        // 2. Send to the peer, and to its prefixes (each entry carries the same endpoint, so
        //    an endpoint change rewrites them all).
        self.peers
            .insert(&Key::new(32, overlay.octets()), entry, 0)
            .map_err(|e| EbpfError::map(MAP_PEERS, e))?;
        for n in &peer.prefixes {
            self.insert_prefix(*n, entry)?;
        }
        // 3. and 4. Withdraw what the old version had and the new one does not.
        if let Some(old) = old {
            if old.overlay_ip != overlay {
                self.remove_peer_key(old.overlay_ip, node)?;
            }
            if let Some(old_ep) = old.endpoint
                && Some(old_ep) != endpoint
            {
                self.remove_endpoint(old_ep, node)?;
            }
        }
        debug!(node, %overlay, ?endpoint, mode = ?entry.mode(), slot, "peer installed");
        Ok(())
    }

    /// Removes the peer holding `overlay_ip`; returns whether one was installed.
    pub(super) fn remove_peer(&mut self, overlay_ip: Ipv4Addr) -> Result<bool, EbpfError> {
        let Some(entry) = self.lookup(overlay_ip)?.filter(is_peer) else {
            return Ok(false);
        };
        let (node, old) = (entry.node_index, Installed::from_peer(overlay_ip, &entry));
        // Stop sending first, then stop accepting.
        self.remove_peer_key(old.overlay_ip, node)?;
        if let Some(ep) = old.endpoint {
            self.remove_endpoint(ep, node)?;
        }
        debug!(node, %overlay_ip, "peer removed");
        Ok(true)
    }

    /// Writes `PEERS[prefix]`.
    fn insert_prefix(&mut self, n: Ipv4Net, entry: PeerEntry) -> Result<(), EbpfError> {
        self.peers
            .insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                entry,
                0,
            )
            .map_err(|e| EbpfError::map(MAP_PEERS, e))
    }

    /// This node's own prefixes (LOCAL entries: received traffic for them is delivered here).
    /// Withdrawn ones go with [`Tables::remove_prefixes`].
    pub(super) fn set_local_prefixes(
        &mut self,
        node_index: u32,
        prefixes: &[Ipv4Net],
    ) -> Result<(), EbpfError> {
        for n in prefixes {
            self.insert_prefix(*n, PeerEntry::local(node_index))?;
        }
        Ok(())
    }

    /// Deletes the `PEERS` entries of `prefixes` that still belong to node `node`.
    pub(super) fn remove_prefixes(
        &mut self,
        node: u32,
        prefixes: &[Ipv4Net],
    ) -> Result<(), EbpfError> {
        for n in prefixes {
            let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
            match self.peers.get(&key, 0) {
                Ok(e) if e.node_index == node => ignore_missing(self.peers.remove(&key))
                    .map_err(|e| EbpfError::map(MAP_PEERS, e))?,
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(EbpfError::map(MAP_PEERS, e)),
            }
        }
        Ok(())
    }

    /// Deletes every prefix entry of `PEERS` (all but the /32s of peers).
    pub(super) fn drop_prefixes(&mut self) -> Result<(), EbpfError> {
        let keys: Vec<Key<[u8; 4]>> = self
            .peers
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EbpfError::map(MAP_PEERS, e))?
            .into_iter()
            .filter(|k| k.prefix_len() != 32)
            .collect();
        for key in &keys {
            ignore_missing(self.peers.remove(key)).map_err(|e| EbpfError::map(MAP_PEERS, e))?;
        }
        if !keys.is_empty() {
            debug!(
                prefixes = keys.len(),
                "prefixes of the previous agent process dropped"
            );
        }
        Ok(())
    }

    /// Deletes `PEERS[ip/32]` if it still belongs to `node`.
    fn remove_peer_key(&mut self, ip: Ipv4Addr, node: u32) -> Result<(), EbpfError> {
        let key = Key::new(32, ip.octets());
        match self.peers.get(&key, 0) {
            Ok(e) if e.node_index == node => {
                ignore_missing(self.peers.remove(&key)).map_err(|e| EbpfError::map(MAP_PEERS, e))
            }
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(EbpfError::map(MAP_PEERS, e)),
        }
    }

    /// Deletes `ENDPOINTS[ep]` if it still belongs to `node`.
    fn remove_endpoint(&mut self, ep: SocketAddrV4, node: u32) -> Result<(), EbpfError> {
        let key = endpoint_key(ep);
        match self.endpoints.get(&key, 0) {
            Ok(e) if e.node_index == node => ignore_missing(self.endpoints.remove(&key))
                .map_err(|e| EbpfError::map(MAP_ENDPOINTS, e)),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(EbpfError::map(MAP_ENDPOINTS, e)),
        }
    }

    fn zero_slot(&mut self, slot: u32) -> Result<(), EbpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::Io {
            op: "read",
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![PeerCounters::default(); cpus]).map_err(|source| {
                EbpfError::Io {
                    op: "size per-CPU values for",
                    path: MAP_PEER_STATS.into(),
                    source,
                }
            })?;
        self.peer_stats
            .set(slot, zeros, 0)
            .map_err(|e| EbpfError::map(MAP_PEER_STATS, e))
    }

    /// Counters of one slot, summed over CPUs.
    pub(super) fn slot_counters(&self, slot: u32) -> Result<PeerCounters, EbpfError> {
        let per_cpu = self
            .peer_stats
            .get(&slot, 0)
            .map_err(|e| EbpfError::map(MAP_PEER_STATS, e))?;
        Ok(per_cpu
            .iter()
            .fold(PeerCounters::default(), |acc, c| acc.merged(*c)))
    }

    /// Counters of every installed peer (every `/32` peer entry of `PEERS`), by node index.
    pub(super) fn peer_counters(&self) -> Result<Vec<PeerStats>, EbpfError> {
        let mut installed = Vec::new();
        for item in self.peers.iter() {
            let (key, entry) = item.map_err(|e| EbpfError::map(MAP_PEERS, e))?;
            if key.prefix_len() == 32 && is_peer(&entry) {
                let ip = Ipv4Addr::from(key.data());
                installed.push((entry.node_index, Installed::from_peer(ip, &entry)));
            }
        }
        installed.sort_by_key(|(node, _)| *node);
        installed
            .into_iter()
            .map(|(node_index, i)| {
                let c = self.slot_counters(i.slot)?;
                Ok(PeerStats {
                    node_index,
                    overlay_ip: i.overlay_ip,
                    slot: i.slot,
                    in_kernel: i.endpoint.is_some(),
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_drops: c.tx_drops,
                    rx_drops: c.rx_drops,
                })
            })
            .collect()
    }

    /// Drop counts by reason, summed over CPUs.
    pub(super) fn drops(&self) -> Result<Vec<(KernelDrop, u64)>, EbpfError> {
        KernelDrop::ALL
            .iter()
            .map(|&r| {
                let v = self
                    .drops
                    .get(&(r as u32), 0)
                    .map_err(|e| EbpfError::map(MAP_DROPS, e))?;
                Ok((r, v.iter().sum()))
            })
            .collect()
    }

    /// Traffic classes, summed over CPUs.
    pub(super) fn stats(&self) -> Result<Vec<(StatSlot, Counters)>, EbpfError> {
        StatSlot::ALL
            .iter()
            .map(|&s| {
                let v = self
                    .stats
                    .get(&(s as u32), 0)
                    .map_err(|e| EbpfError::map(MAP_STATS, e))?;
                Ok((s, v.iter().fold(Counters::default(), |a, c| a.merged(*c))))
            })
            .collect()
    }

    /// The `PEERS` entry for `ip`, as the TC program would find it (longest prefix).
    pub(super) fn lookup(&self, ip: Ipv4Addr) -> Result<Option<PeerEntry>, EbpfError> {
        match self.peers.get(&Key::new(32, ip.octets()), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(EbpfError::map(MAP_PEERS, e)),
        }
    }

    /// The `ENDPOINTS` entry for `ep`.
    pub(super) fn endpoint(&self, ep: SocketAddrV4) -> Result<Option<EndpointEntry>, EbpfError> {
        match self.endpoints.get(&endpoint_key(ep), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(EbpfError::map(MAP_ENDPOINTS, e)),
        }
    }
}

/// A peer's entry (PLAIN or SEALED), not this node's own.
fn is_peer(e: &PeerEntry) -> bool {
    matches!(e.mode(), Some(PeerMode::Plain | PeerMode::Sealed))
}

/// A peer entry of node `node`.
fn is_peer_of(e: &PeerEntry, node: u32) -> bool {
    e.node_index == node && is_peer(e)
}

fn endpoint_key(ep: SocketAddrV4) -> EndpointKey {
    EndpointKey::new(ep.ip().octets(), ep.port())
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}

fn check_shape(
    data: &MapData,
    name: &'static str,
    pin_dir: &Path,
    capacity: u32,
) -> Result<(), EbpfError> {
    let shape = shapes(capacity)
        .into_iter()
        .find(|s| s.name == name)
        .expect("every map has a shape");
    let info = data.info().map_err(|e| EbpfError::map(name, e))?;
    let ty = info.map_type().map_err(|e| EbpfError::map(name, e))?;
    let got = (
        ty,
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
    );
    let want = (shape.ty, shape.key, shape.value, shape.max);
    if got != want {
        return Err(EbpfError::Incompatible {
            path: pin_dir.join(name),
            pin_dir: pin_dir.to_owned(),
            reason: format!("type/key/value/entries {got:?}, this agent expects {want:?}"),
        });
    }
    Ok(())
}
