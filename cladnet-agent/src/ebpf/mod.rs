//! The eBPF dataplane: loads the embedded programs, attaches them to an interface, pins maps
//! and links under a bpffs directory, reads the counters back, and detaches.
//!
//! Pinning the links means the programs stay attached after the agent exits, so an agent
//! restart does not interrupt kernel forwarding; `detach` removes the pins, which detaches.

mod bpffs;
mod error;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use cladnet_common::maps::{
    Config, Counters, MAP_CONFIG, MAP_STATS, PROG_TC_UNDERLAY_EGRESS, PROG_XDP_UNDERLAY, StatSlot,
};
pub use error::EbpfError;
use serde::Serialize;
use tracing::{info, warn};

/// The eBPF object built by `cargo xtask build-ebpf`, or empty if the agent was built without.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cladnet.bpf.o"));

/// Pin names of the links inside the pin directory.
const LINK_XDP: &str = "link_xdp";
const LINK_TC_EGRESS: &str = "link_tc_egress";
/// Every name `attach` may pin, in the order `detach` removes them (links first, so the
/// programs stop before their maps go).
const PINS: [&str; 4] = [LINK_XDP, LINK_TC_EGRESS, MAP_STATS, MAP_CONFIG];

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// Driver (native) mode, else generic (skb) mode.
    Auto,
    /// Driver mode only.
    Driver,
    /// Generic (skb) mode only.
    Generic,
}

/// What `attach` did.
#[derive(Debug, Serialize)]
pub struct Attached {
    /// Interface the programs are attached to.
    pub iface: String,
    /// XDP mode that attached: `driver` or `generic`.
    pub xdp_mode: &'static str,
    /// Why that mode was chosen.
    pub xdp_reason: String,
    /// The bpffs directory holding the pins.
    pub pin_dir: PathBuf,
}

/// One counter row as read back from the per-CPU stats map, summed over CPUs.
#[derive(Debug, Serialize)]
pub struct StatRow {
    /// Slot name (see [`StatSlot::name`]).
    pub slot: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Loads the programs, attaches XDP to `iface` and TC to its egress, and pins maps and links
/// in `pin_dir`. Either everything is attached and pinned or nothing is left behind.
pub fn attach(
    iface: &str,
    mode: XdpAttach,
    pin_dir: &Path,
    tunnel_port: u16,
) -> Result<Attached, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NoObject);
    }
    bpffs::ensure_mounted(pin_dir)?;
    if PINS.iter().any(|p| pin_dir.join(p).exists()) {
        return Err(EbpfError::AlreadyAttached {
            pin_dir: pin_dir.to_owned(),
        });
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| EbpfError::Io {
        op: "create pin directory",
        path: pin_dir.to_owned(),
        source,
    })?;
    let mut pins = PinGuard {
        dir: pin_dir,
        pinned: Vec::new(),
        committed: false,
    };

    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| EbpfError::Load(Box::new(e)))?;
    let mut config: Array<_, Config> = map(&mut ebpf, MAP_CONFIG)?
        .try_into()
        .map_err(|e| EbpfError::map(MAP_CONFIG, e))?;
    config
        .set(0, Config::new(tunnel_port), 0)
        .map_err(|e| EbpfError::map(MAP_CONFIG, e))?;
    for name in [MAP_STATS, MAP_CONFIG] {
        let path = pin_dir.join(name);
        let m = ebpf
            .map(name)
            .ok_or(EbpfError::MissingItem { kind: "map", name })?;
        m.pin(&path).map_err(|source| EbpfError::Pin {
            path: path.clone(),
            source,
        })?;
        pins.pinned.push(path);
    }

    let (xdp_mode, xdp_reason) = attach_xdp(&mut ebpf, iface, mode, &mut pins)?;
    attach_tc_egress(&mut ebpf, iface, &mut pins)?;
    pins.committed = true;
    info!(iface, xdp_mode, pin_dir = %pin_dir.display(), "eBPF dataplane attached");
    Ok(Attached {
        iface: iface.to_owned(),
        xdp_mode,
        xdp_reason,
        pin_dir: pin_dir.to_owned(),
    })
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpAttach,
    pins: &mut PinGuard<'_>,
) -> Result<(&'static str, String), EbpfError> {
    let prog: &mut Xdp = program(ebpf, PROG_XDP_UNDERLAY)?;
    prog.load()
        .map_err(|e| EbpfError::program("load", PROG_XDP_UNDERLAY, iface, e))?;
    let attempts: &[(XdpMode, &'static str)] = match mode {
        XdpAttach::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "generic")],
        XdpAttach::Driver => &[(XdpMode::Driver, "driver")],
        XdpAttach::Generic => &[(XdpMode::Skb, "generic")],
    };
    let mut reason = match mode {
        XdpAttach::Auto => "the driver supports native XDP".to_owned(),
        XdpAttach::Driver | XdpAttach::Generic => "requested with --xdp-mode".to_owned(),
    };
    let mut last_err = None;
    for &(m, name) in attempts {
        match prog.attach(iface, m) {
            Ok(id) => {
                let link = prog
                    .take_link(id)
                    .map_err(|e| EbpfError::program("take link", PROG_XDP_UNDERLAY, iface, e))?;
                pins.pin_link(FdLink::try_from(link), LINK_XDP)?;
                return Ok((name, reason));
            }
            Err(e) => {
                warn!(iface, mode = name, error = %e, "XDP attach failed");
                reason = format!("{name} mode failed: {e}");
                last_err = Some(e);
            }
        }
    }
    Err(EbpfError::program(
        "attach XDP",
        PROG_XDP_UNDERLAY,
        iface,
        last_err.expect("at least one attempt"),
    ))
}

fn attach_tc_egress(
    ebpf: &mut Ebpf,
    iface: &str,
    pins: &mut PinGuard<'_>,
) -> Result<(), EbpfError> {
    let prog: &mut SchedClassifier = program(ebpf, PROG_TC_UNDERLAY_EGRESS)?;
    let err = |op, e| EbpfError::program(op, PROG_TC_UNDERLAY_EGRESS, iface, e);
    prog.load().map_err(|e| err("load", e))?;
    let id = prog
        .attach(iface, TcAttachType::Egress)
        .map_err(|e| err("attach TC egress", e))?;
    let link = prog.take_link(id).map_err(|e| err("take link", e))?;
    pins.pin_link(FdLink::try_from(link), LINK_TC_EGRESS)
}

/// Reads the per-CPU counters pinned in `pin_dir`, summed over CPUs.
pub fn read_stats(pin_dir: &Path) -> Result<Vec<StatRow>, EbpfError> {
    let path = pin_dir.join(MAP_STATS);
    if !path.exists() {
        return Err(EbpfError::NotAttached {
            pin_dir: pin_dir.to_owned(),
        });
    }
    let data = MapData::from_pin(&path).map_err(|e| EbpfError::map(MAP_STATS, e))?;
    let map = Map::from_map_data(data).map_err(|e| EbpfError::map(MAP_STATS, e))?;
    let stats: PerCpuArray<_, Counters> =
        map.try_into().map_err(|e| EbpfError::map(MAP_STATS, e))?;
    StatSlot::ALL
        .iter()
        .map(|&slot| {
            let per_cpu = stats
                .get(&(slot as u32), 0)
                .map_err(|e| EbpfError::map(MAP_STATS, e))?;
            let sum = per_cpu
                .iter()
                .fold(Counters::default(), |acc, c| acc.merged(*c));
            Ok(StatRow {
                slot: slot.name(),
                packets: sum.packets,
                bytes: sum.bytes,
            })
        })
        .collect()
}

/// Removes every pin in `pin_dir` (detaching the programs) and the directory itself.
/// Returns whether anything was attached.
pub fn detach(pin_dir: &Path) -> Result<bool, EbpfError> {
    let mut found = false;
    for name in PINS {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EbpfError::Io {
                    op: "remove pin",
                    path,
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(EbpfError::Io {
                op: "remove pin directory",
                path: pin_dir.to_owned(),
                source,
            });
        }
    }
    if found {
        info!(pin_dir = %pin_dir.display(), "eBPF dataplane detached");
    }
    Ok(found)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, EbpfError> {
    ebpf.map_mut(name)
        .ok_or(EbpfError::MissingItem { kind: "map", name })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(EbpfError::MissingItem {
        kind: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|e| EbpfError::program("convert", name, "", e))
}

/// Pins created by an `attach` in progress, and its pin directory; removed on drop unless
/// the attach completed, so a failed attach leaves nothing behind.
struct PinGuard<'a> {
    dir: &'a Path,
    pinned: Vec<PathBuf>,
    committed: bool,
}

impl PinGuard<'_> {
    fn pin_link(
        &mut self,
        link: Result<FdLink, aya::programs::links::LinkError>,
        name: &str,
    ) -> Result<(), EbpfError> {
        let path = self.dir.join(name);
        let link = link.map_err(|source| EbpfError::Link {
            path: path.clone(),
            source,
        })?;
        link.pin(&path).map_err(|source| EbpfError::Pin {
            path: path.clone(),
            source,
        })?;
        self.pinned.push(path);
        Ok(())
    }
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for path in self.pinned.iter().rev() {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "could not remove pin after a failed attach");
            }
        }
        let _ = std::fs::remove_dir(self.dir);
    }
}
