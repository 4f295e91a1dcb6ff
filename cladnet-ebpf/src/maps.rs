//! The maps (layouts and names in `cladnet_common::maps`) and the counting helpers. The sizes
//! here are the defaults; the agent sets the peer maps' sizes when it loads the object.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use cladnet_common::maps::{
    Config, Counters, DEFAULT_MAX_PEERS, DEFAULT_MAX_PREFIXES, EndpointEntry, EndpointKey,
    KernelDrop, PeerCounters, PeerEntry, StatSlot,
};

/// Overlay prefix -> peer (TX).
#[map(name = "PEERS")]
pub(crate) static PEERS: LpmTrie<[u8; 4], PeerEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// Underlay endpoint -> peer (RX validation).
#[map(name = "ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, EndpointEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// Per-peer counters by slot.
#[map(name = "PEER_STATS")]
pub(crate) static PEER_STATS: PerCpuArray<PeerCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// Drops by reason.
#[map(name = "DROPS")]
pub(crate) static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KernelDrop::COUNT, 0);

/// Traffic by class.
#[map(name = "STATS")]
pub(crate) static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(StatSlot::COUNT, 0);

/// The configuration (one entry).
#[map(name = "CONFIG")]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The configuration, `None` before the agent wrote it (the programs then touch nothing).
#[inline(always)]
pub(crate) fn config() -> Option<Config> {
    let cfg = CONFIG.get(0)?;
    // An unconfigured map holds zeros: no tunnel port.
    if cfg.tunnel_port() == 0 {
        return None;
    }
    Some(*cfg)
}

/// Counts one packet of `len` bytes in `slot`.
#[inline(always)]
pub(crate) fn count(slot: StatSlot, len: usize) {
    if let Some(c) = STATS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; the pointer comes from the map.
        unsafe { (*c).add(len as u64) }
    }
}

/// Counts a drop, and charges it to the peer in `slot` if known.
#[inline(always)]
pub(crate) fn count_drop(reason: KernelDrop, slot: Option<u32>, rx: bool) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: as in `count`.
        unsafe { *c += 1 }
    }
    if let Some(p) = slot.and_then(|s| PEER_STATS.get_ptr_mut(s)) {
        // SAFETY: as in `count`.
        unsafe {
            if rx {
                (*p).rx_drops += 1;
            } else {
                (*p).tx_drops += 1;
            }
        }
    }
}

/// Counts packets received from (`rx`) or sent to the peer in `slot`.
#[inline(always)]
pub(crate) fn count_peer(slot: u32, rx: bool, packets: u64, bytes: u64) {
    if let Some(p) = PEER_STATS.get_ptr_mut(slot) {
        // SAFETY: as in `count`.
        unsafe {
            if rx {
                (*p).rx_packets += packets;
                (*p).rx_bytes += bytes;
            } else {
                (*p).tx_packets += packets;
                (*p).tx_bytes += bytes;
            }
        }
    }
}
