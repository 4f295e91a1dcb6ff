//! The router's published snapshot: the Node's forwarding indexes plus this engine's state
//! per counter slot (counters, WireGuard data side), rebuilt only where commands changed it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use cladnet_core::node::{Forwarding, PeerConfig};
use cladnet_wg::{PeerData, PeerId};

use crate::engine::counters::PeerCounters;

/// This engine's state for one peer (its counters and WireGuard data side), kept by the
/// Node's counter slot between a command and the next [`Command::Publish`](cladnet_core::node::Command::Publish).
#[derive(Clone)]
pub(super) struct SlotState {
    /// The peer's node id (its config is in the Node's snapshot).
    pub(super) node_id: String,
    /// The WireGuard peer and its data side, as the Node sent them (SEALED).
    pub(super) wg: Option<(PeerId, Arc<PeerData>)>,
    pub(super) counters: Arc<PeerCounters>,
}

/// A peer as the packet threads see it: the Node's config and this engine's state.
pub(super) struct Entry {
    pub(super) config: Arc<PeerConfig>,
    pub(super) wg: Option<PeerId>,
    /// The WireGuard peer's data side: its packets are sealed and opened through it.
    pub(super) data: Option<Arc<PeerData>>,
    pub(super) counters: Arc<PeerCounters>,
}

/// One published snapshot: the Node's forwarding indexes plus this engine's state per slot.
#[derive(Default)]
pub(super) struct Routes {
    pub(super) fwd: Arc<Forwarding>,
    pub(super) by_slot: Vec<Option<Arc<Entry>>>,
    /// SEALED peers by WireGuard device slot (the receiver index of their transport
    /// messages names it, see [`cladnet_wg::receiver_slot`]).
    pub(super) by_wg_slot: Vec<Option<Arc<Entry>>>,
}

/// What the commands left for the next [`Command::Publish`](cladnet_core::node::Command::Publish): every slot's state, and which
/// slots changed since the last one.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) slots: BTreeMap<u32, Arc<SlotState>>,
    pub(super) changed: BTreeSet<u32>,
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
    pub(super) fn next(&self, fwd: Arc<Forwarding>, staged: &Staged) -> Self {
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
                wg: state.wg.as_ref().map(|(id, _)| *id),
                data: state.wg.as_ref().map(|(_, data)| data.clone()),
                counters: state.counters.clone(),
            });
            if let Some(id) = entry.wg {
                put(&mut routes.by_wg_slot, id.slot(), entry.clone());
            }
            put(&mut routes.by_slot, slot, entry);
        }
        routes
    }

    pub(super) fn entry(&self, config: &PeerConfig) -> Option<&Arc<Entry>> {
        self.by_slot.get(config.slot as usize)?.as_ref()
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_slot.iter().flatten()
    }
}
