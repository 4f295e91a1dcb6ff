//! The in-kernel PLAIN dataplane (programs in `cladnet-ebpf`, map layouts in
//! `cladnet_common::maps`; see docs/ebpf.md).
//!
//! [`KernelDataplane::attach`] loads the embedded programs, attaches the receive program to
//! the underlay device (XDP driver → XDP generic → TC ingress) and the transmit program to the
//! overlay TUN (TC egress), and pins maps and links under a bpffs directory. Pinned links keep
//! the programs attached after the agent exits, so a restart does not interrupt kernel
//! forwarding; [`KernelDataplane::open_pinned`] takes over the maps again and
//! [`KernelDataplane::detach`] removes everything. Peers are installed from the same
//! [`cladnet_core::node::PeerConfig`]s the userspace engine gets.
//!
//! The free functions [`attach`], [`read_stats`] and [`detach`] back the
//! `cladnet-agent dataplane` maintenance commands.

mod bpffs;
mod dataplane;
mod error;
pub mod sysctl;
mod tables;
pub mod testrun;

use std::path::{Path, PathBuf};

use cladnet_common::maps::StatSlot;
pub use dataplane::{
    AttachConfig, AttachReport, KernelDataplane, LINK_OVERLAY, LINK_UNDERLAY, PeerStats, RxHook,
};
pub use error::EbpfError;
use serde::Serialize;

/// The eBPF object built by `cargo xtask build-ebpf`, or empty if the agent was built without.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cladnet.bpf.o"));

/// What the `dataplane attach` command did.
#[derive(Debug, Serialize)]
pub struct Attached {
    /// Underlay interface the receive program is attached to.
    pub iface: String,
    /// Hook it runs on, serialized by its short name: `driver`, `generic` (XDP) or `tc`.
    pub xdp_mode: RxHook,
    /// Why that hook was chosen.
    pub xdp_reason: String,
    /// The bpffs directory holding the pins.
    pub pin_dir: PathBuf,
}

/// One counter row as read back from the per-CPU maps, summed over CPUs.
#[derive(Debug, Serialize)]
pub struct StatRow {
    /// Counter name: a [`StatSlot`] name, or `drop_<reason>` (bytes 0).
    pub slot: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Attaches the receive side only (no overlay device, no local address: datagrams to any
/// local address are checked) to `iface`, for `cladnet-agent dataplane attach`. Unlike
/// [`KernelDataplane::attach`], which takes over what a previous agent pinned, this refuses a
/// pin directory in use. `rx_hook` `None` is `auto` (XDP first: the device kind is not looked
/// up here).
pub fn attach(
    iface: &str,
    rx_hook: Option<RxHook>,
    pin_dir: &Path,
    tunnel_port: u16,
) -> Result<Attached, EbpfError> {
    if dataplane::is_attached(pin_dir) {
        return Err(EbpfError::AlreadyAttached {
            pin_dir: pin_dir.to_owned(),
        });
    }
    let cfg = AttachConfig {
        pin_dir: pin_dir.to_owned(),
        hooks: RxHook::order(rx_hook, false),
        tunnel_port,
        ..AttachConfig::new(iface, None)
    };
    let (_dataplane, report) = KernelDataplane::attach(&cfg)?;
    Ok(Attached {
        iface: report.underlay,
        xdp_mode: report.mode,
        xdp_reason: report.reason,
        pin_dir: report.pin_dir,
    })
}

/// Reads the traffic and drop counters pinned in `pin_dir`, summed over CPUs.
pub fn read_stats(pin_dir: &Path) -> Result<Vec<StatRow>, EbpfError> {
    let dp = KernelDataplane::open_pinned(pin_dir)?;
    let mut rows: Vec<StatRow> = dp
        .stats()?
        .into_iter()
        .map(|(slot, c): (StatSlot, _)| StatRow {
            slot: slot.name().to_owned(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    rows.extend(dp.drops()?.into_iter().map(|(reason, n)| StatRow {
        slot: format!("drop_{}", reason.name()),
        packets: n,
        bytes: 0,
    }));
    Ok(rows)
}

/// Removes every pin in `pin_dir` (detaching the programs) and the directory itself.
/// Returns whether anything was attached.
pub fn detach(pin_dir: &Path) -> Result<bool, EbpfError> {
    dataplane::remove_pins(pin_dir)
}
