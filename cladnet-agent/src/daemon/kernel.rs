//! The eBPF engine as the daemon drives it: the Node's commands turned into map updates.
//!
//! PLAIN peers are carried by the kernel (TC egress on the overlay device encapsulates, XDP or
//! TC ingress on the underlay decapsulates); SEALED peers get an entry that leaves their
//! packets to the userspace engine, which seals them. Counter slots are the Node's.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use cladnet_core::node::Command;
use tracing::{error, info, warn};

use crate::{
    ebpf::{AttachConfig, AttachReport, EbpfError, KernelDataplane, PeerStats, RxHook},
    engine::{Engine, EngineError},
};

/// The attached kernel dataplane.
#[derive(Debug)]
pub struct Kernel {
    /// `None` once detached.
    dp: Mutex<Option<KernelDataplane>>,
    /// Peers the maps hold ([`KernelDataplane::capacity`]): slots at or above it stay in the
    /// userspace engine.
    capacity: u32,
    /// Whether the network outgrowing the maps was logged (once per agent process).
    full_logged: AtomicBool,
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
        hooks: &'static [RxHook],
        tunnel_port: u16,
        local_underlay_ip: Option<Ipv4Addr>,
        max_peers: u32,
    ) -> Result<Self, EbpfError> {
        let cfg = AttachConfig {
            underlay: underlay.to_owned(),
            overlay: Some(overlay.to_owned()),
            pin_dir: pin_dir.to_owned(),
            hooks,
            tunnel_port,
            local_underlay_ip,
            max_peers,
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
            capacity: dp.capacity(),
            full_logged: AtomicBool::new(false),
            dp: Mutex::new(Some(dp)),
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

impl Engine for Kernel {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn apply(&self, _now: Instant, cmd: &Command) -> Result<(), EngineError> {
        let result = match cmd {
            Command::SetLocal(local) => self.with(|dp| {
                dp.set_local_overlay(local.overlay_ip)?;
                dp.set_local_prefixes(local.node_index, &local.prefixes)?;
                match local.underlay_ip {
                    Some(ip) => dp.set_local(local.node_index, ip),
                    None => Ok(()),
                }
            }),
            Command::UpsertPeer(peer) if peer.slot >= self.capacity => {
                // Once: a network this large would otherwise log a line per extra peer.
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    error!(
                        node_id = peer.node_id,
                        max_peers = self.capacity,
                        "the network has outgrown the eBPF maps ({} peers): this and further \
                         peers stay in the userspace engine; raise the agent setting \
                         ebpf_max_peers and restart with the dataplane detached",
                        self.capacity
                    );
                }
                Ok(None)
            }
            Command::UpsertPeer(peer) => self.with(|dp| dp.upsert_peer(peer)),
            Command::RemovePrefixes {
                node_index,
                prefixes,
                ..
            } => self.with(|dp| dp.remove_prefixes(*node_index, prefixes)),
            Command::RemovePeer { overlay_ip, .. } => {
                self.with(|dp| dp.remove_peer(*overlay_ip).map(|_| ()))
            }
            // The maps are the kernel's index; the packet threads' snapshot is not for it.
            // Route MTUs are the overlay device's (netconf): the kernel sizes packets to
            // them before TC egress sees them.
            // SEALED links are the userspace engine's.
            Command::Publish(_) | Command::SetRouteMtu { .. } | Command::SealedPeer { .. } => {
                Ok(None)
            }
        };
        result.map(|_| ()).map_err(|e| EngineError {
            engine: "ebpf",
            source: Box::new(e),
        })
    }
}
