//! The eBPF engine as the daemon drives it: the same peer-table commands the userspace engine
//! gets, turned into map updates, with a counter slot per peer.
//!
//! PLAIN peers are carried by the kernel (TC egress on the overlay device encapsulates, XDP or
//! TC ingress on the underlay decapsulates); SEALED peers get an entry that leaves their
//! packets to the userspace engine, which seals them.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::Path,
    sync::Mutex,
};

use cladnet_common::maps::MAX_PEERS;
use cladnet_core::table::Command;
use tracing::{info, warn};

use crate::ebpf::{AttachConfig, AttachMode, AttachReport, EbpfError, KernelDataplane, PeerStats};

/// Counter slots: one per installed peer, reused after removal (a reused slot starts from
/// zero, see [`KernelDataplane::upsert_peer`]).
#[derive(Debug, Default)]
struct Slots {
    by_node: HashMap<String, u32>,
    free: Vec<u32>,
    next: u32,
}

impl Slots {
    fn get(&mut self, node_id: &str) -> Option<u32> {
        if let Some(s) = self.by_node.get(node_id) {
            return Some(*s);
        }
        let slot = self.free.pop().or_else(|| {
            (self.next < MAX_PEERS).then(|| {
                self.next += 1;
                self.next - 1
            })
        })?;
        self.by_node.insert(node_id.to_owned(), slot);
        Some(slot)
    }

    fn release(&mut self, node_id: &str) {
        if let Some(s) = self.by_node.remove(node_id) {
            self.free.push(s);
        }
    }
}

/// The attached kernel dataplane.
#[derive(Debug)]
pub struct Kernel {
    /// `None` once detached.
    dp: Mutex<Option<KernelDataplane>>,
    slots: Mutex<Slots>,
    /// Where the receive program runs and why.
    pub report: AttachReport,
}

impl Kernel {
    /// Attaches the programs to `underlay` (receive) and `overlay` (transmit), pinned under
    /// `pin_dir`. Programs left by a previous agent process are replaced in one step, so a
    /// restart never leaves the node without them for longer than the swap.
    pub fn attach(
        underlay: &str,
        overlay: &str,
        pin_dir: &Path,
        mode: AttachMode,
        tunnel_port: u16,
        local_underlay_ip: Option<Ipv4Addr>,
    ) -> Result<Self, EbpfError> {
        let cfg = AttachConfig {
            underlay: underlay.to_owned(),
            overlay: Some(overlay.to_owned()),
            pin_dir: pin_dir.to_owned(),
            mode,
            tunnel_port,
            local_underlay_ip,
        };
        let (dp, report) = KernelDataplane::attach(&cfg)?;
        info!(
            underlay,
            overlay,
            hook = report.mode.name(),
            reason = report.reason,
            pins = %pin_dir.display(),
            "eBPF dataplane attached"
        );
        Ok(Self {
            dp: Mutex::new(Some(dp)),
            slots: Mutex::default(),
            report,
        })
    }

    /// Runs `f` on the dataplane; `Ok(None)` after [`Kernel::detach`].
    fn with<T>(
        &self,
        f: impl FnOnce(&mut KernelDataplane) -> Result<T, EbpfError>,
    ) -> Result<Option<T>, EbpfError> {
        let mut guard = self.dp.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().map(f).transpose()
    }

    /// Applies one peer-table command to the maps.
    pub fn apply(
        &self,
        cmd: &Command,
        local_index: u32,
        underlay_ip: Option<Ipv4Addr>,
    ) -> Result<(), EbpfError> {
        match cmd {
            Command::SetInterface { ip: overlay, .. } => {
                self.with(|dp| dp.set_local_overlay(*overlay))?;
                if let Some(ip) = underlay_ip {
                    self.with(|dp| dp.set_local(local_index, ip))?;
                }
            }
            Command::UpsertPeer(peer) => {
                let Some(slot) = self
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&peer.node_id)
                else {
                    warn!(
                        node_id = peer.node_id,
                        "no free counter slot; peer left to userspace"
                    );
                    return Ok(());
                };
                self.with(|dp| dp.upsert_peer(peer, slot))?;
            }
            Command::RemovePeer {
                node_id,
                overlay_ip,
            } => {
                self.with(|dp| dp.remove_peer(*overlay_ip))?;
                self.slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(node_id);
            }
        }
        Ok(())
    }

    /// Per-peer counters by overlay address (peers the kernel carries).
    pub fn counters(&self) -> BTreeMap<Ipv4Addr, PeerStats> {
        match self.with(|dp| dp.peer_counters()) {
            Ok(stats) => stats
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.in_kernel)
                .map(|s| (s.overlay_ip, s))
                .collect(),
            Err(error) => {
                warn!(%error, "reading the eBPF peer counters failed");
                BTreeMap::new()
            }
        }
    }

    /// Kernel drops by reason name.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        match self.with(|dp| dp.drops()) {
            Ok(d) => d
                .unwrap_or_default()
                .into_iter()
                .map(|(r, n)| (r.name(), n))
                .collect(),
            Err(error) => {
                warn!(%error, "reading the eBPF drop counters failed");
                Vec::new()
            }
        }
    }

    /// Detaches the programs and removes the pins (the node leaves the network). Later calls
    /// do nothing.
    pub fn detach(&self) -> Result<(), EbpfError> {
        let dp = self.dp.lock().unwrap_or_else(|e| e.into_inner()).take();
        dp.map_or(Ok(()), KernelDataplane::detach)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_reused() {
        let mut s = Slots::default();
        assert_eq!(s.get("a"), Some(0));
        assert_eq!(s.get("b"), Some(1));
        assert_eq!(s.get("a"), Some(0));
        s.release("a");
        assert_eq!(s.get("c"), Some(0));
        assert_eq!(s.get("d"), Some(2));
    }
}
