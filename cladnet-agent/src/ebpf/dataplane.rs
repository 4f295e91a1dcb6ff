//! [`KernelDataplane`]: attach the programs, keep their maps in step with the peer table,
//! read the counters, detach.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use cladnet_common::maps::{
    ALL_MAPS, Config, Counters, DEFAULT_MAX_PEERS, EndpointEntry, KernelDrop, MAP_CONFIG,
    MAX_PEERS_LIMIT, PROG_TC_OVERLAY_EGRESS, PROG_TC_UNDERLAY_INGRESS, PROG_XDP_UNDERLAY,
    PeerEntry, StatSlot,
};
use cladnet_core::node::PeerConfig;
use serde::Serialize;
use tracing::{info, warn};

pub use super::tables::PeerStats;
use super::{EbpfError, OBJECT, bpffs, sysctl, tables::Tables};

/// Pin name of the underlay receive link (XDP or TC ingress).
pub const LINK_UNDERLAY: &str = "link_underlay_rx";
/// Pin name of the overlay transmit link (TC egress on the TUN).
pub const LINK_OVERLAY: &str = "link_overlay_tx";
/// Link pins of earlier agent versions, removed by detach too.
const LEGACY_LINKS: [&str; 2] = ["link_xdp", "link_tc_egress"];

/// Every pin name, in the order detach removes them: links first (the programs stop), then
/// the maps.
pub(super) fn pin_names() -> impl Iterator<Item = &'static str> {
    [LINK_UNDERLAY, LINK_OVERLAY]
        .into_iter()
        .chain(LEGACY_LINKS)
        .chain(ALL_MAPS)
}

/// Where the underlay receive program runs: the one type for the hook from the configuration
/// (`rx_hook`, `--rx-hook`; `None` is `auto`) through selection ([`RxHook::order`]), attach,
/// the report and status, to the kernel's [`Config::rx_hook`] (its `#[repr]` is that code).
#[derive(Clone, Copy, Debug, Eq, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum RxHook {
    /// XDP, driver (native) mode: before the stack allocates an skb, before GRO.
    #[serde(rename = "driver")]
    XdpDriver = 1,
    /// XDP, generic (skb) mode: after skb allocation and GRO.
    #[serde(rename = "generic")]
    XdpGeneric = 2,
    /// TC ingress (tcx): after GRO.
    #[serde(rename = "tc")]
    TcIngress = 3,
}

impl RxHook {
    /// Every hook, in `auto`'s order.
    pub const ALL: [Self; 3] = [Self::XdpDriver, Self::XdpGeneric, Self::TcIngress];

    /// `auto` on veth devices: TC ingress first, because attaching driver-mode XDP turns TSO
    /// off on the peer device, so every segment crosses on its own, while TC ingress sees
    /// GRO'd super-packets (measured 3x faster in `cargo xtask bench dataplane`).
    const VETH_ORDER: [Self; 3] = [Self::TcIngress, Self::XdpDriver, Self::XdpGeneric];

    /// The name in the agent's configuration (`rx_hook`) and in the capabilities it reports:
    /// `xdp-driver`, `xdp-generic` or `tc`.
    pub const fn config_name(self) -> &'static str {
        match self {
            Self::XdpDriver => "xdp-driver",
            Self::XdpGeneric => "xdp-generic",
            Self::TcIngress => "tc",
        }
    }

    /// For people: `XDP driver mode`, `XDP generic mode`, `TC ingress`.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::XdpDriver => "XDP driver mode",
            Self::XdpGeneric => "XDP generic mode",
            Self::TcIngress => "TC ingress",
        }
    }

    /// `driver`, `generic` or `tc` (the `dataplane attach` command's output, and the short
    /// names its `--xdp-mode` accepts).
    pub const fn name(self) -> &'static str {
        match self {
            Self::XdpDriver => "driver",
            Self::XdpGeneric => "generic",
            Self::TcIngress => "tc",
        }
    }

    /// The value recorded in [`Config::rx_hook`].
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The hook a [`Config::rx_hook`] value names (`None` for [`Config::RX_HOOK_NONE`] or an
    /// unknown value).
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.code() == code)
    }

    /// Parses a configured choice: `auto` is `None`; a hook by its [`RxHook::config_name`] or
    /// its short [`RxHook::name`]. The error lists the accepted values.
    pub fn parse_choice(s: &str) -> Result<Option<Self>, String> {
        if s == "auto" {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|h| h.config_name() == s || h.name() == s)
            .map(Some)
            .ok_or_else(|| format!("{s:?} is not one of auto, xdp-driver, xdp-generic, tc"))
    }

    /// The hooks to try, in order: the configured one alone, else (`auto`) XDP driver → XDP
    /// generic → TC ingress, or TC ingress first when the underlay is a veth device.
    pub fn order(choice: Option<Self>, underlay_is_veth: bool) -> &'static [Self] {
        match (choice, underlay_is_veth) {
            (Some(Self::XdpDriver), _) => &[Self::XdpDriver],
            (Some(Self::XdpGeneric), _) => &[Self::XdpGeneric],
            (Some(Self::TcIngress), _) => &[Self::TcIngress],
            (None, false) => &Self::ALL,
            (None, true) => &Self::VETH_ORDER,
        }
    }
}

impl std::str::FromStr for RxHook {
    type Err = String;

    /// Parses a hook (not `auto`): see [`RxHook::parse_choice`].
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_choice(s)?.ok_or_else(|| "auto names no single hook".to_owned())
    }
}

/// What to attach where.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// Underlay device: receive program (XDP or TC ingress); encapsulated packets leave here.
    pub underlay: String,
    /// Overlay TUN device: transmit program (TC egress). `None`: receive side only.
    pub overlay: Option<String>,
    /// bpffs directory for the pins (default [`cladnet_common::maps::PIN_ROOT`]).
    pub pin_dir: PathBuf,
    /// The hooks the receive program may use, tried in order ([`RxHook::order`]).
    pub hooks: &'static [RxHook],
    /// UDP port of the tunnel (source port of what we send, destination of what we accept).
    pub tunnel_port: u16,
    /// Outer source address of encapsulated packets; receive accepts only datagrams to it.
    /// `None`: not known yet ([`KernelDataplane::set_local`] sets it; until then receive
    /// accepts datagrams to any address and the kernel sends nothing it would source from
    /// 0.0.0.0 — peers would reject it).
    pub local_underlay_ip: Option<Ipv4Addr>,
    /// Peers the maps hold (agent setting `ebpf_max_peers`, 1..=[`MAX_PEERS_LIMIT`]). Maps
    /// pinned by a previous agent process keep the size they were created with.
    pub max_peers: u32,
}

impl AttachConfig {
    /// Both devices, default pin directory, port and mode; no local address yet.
    pub fn new(underlay: impl Into<String>, overlay: Option<String>) -> Self {
        Self {
            underlay: underlay.into(),
            overlay,
            pin_dir: PathBuf::from(cladnet_common::maps::PIN_ROOT),
            hooks: RxHook::order(None, false),
            tunnel_port: cladnet_common::wire::TUNNEL_PORT,
            local_underlay_ip: None,
            max_peers: DEFAULT_MAX_PEERS,
        }
    }
}

/// What [`KernelDataplane::attach`] did.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    /// The underlay device.
    pub underlay: String,
    /// The overlay device, if the transmit program was attached.
    pub overlay: Option<String>,
    /// Where the receive program runs.
    pub mode: RxHook,
    /// Why that hook: the first choice, or what failed before it.
    pub reason: String,
    /// Sysctls changed (the underlay's own `rp_filter`, from strict to loose until detach).
    pub rp_filter_changed: Vec<String>,
    /// The pin directory.
    pub pin_dir: PathBuf,
}

/// The in-kernel PLAIN dataplane: its maps, and (when attached or reopened from pins) the pin
/// directory that keeps its programs attached.
pub struct KernelDataplane {
    pin_dir: Option<PathBuf>,
    tables: Tables,
}

impl std::fmt::Debug for KernelDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDataplane")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl KernelDataplane {
    /// Loads the programs, attaches the receive program to the underlay device (XDP driver →
    /// XDP generic → TC ingress, as `cfg.hooks` allow) and the transmit program to the overlay
    /// device, pins maps and links in `cfg.pin_dir` (so the programs keep forwarding when
    /// this process exits), and sets `rp_filter` loose on the underlay device. Either all of
    /// it happens or nothing is left behind.
    ///
    /// When `cfg.pin_dir` already holds a dataplane (a previous agent process), it is taken
    /// over instead: its maps are kept (peers and counters survive), and the new programs
    /// replace the old ones inside the pinned links (`bpf_link_update`, atomic: no packet
    /// sees a gap) when the device and hook are the same. A new device (a new TUN) gets a
    /// new link before the old one goes; only a change of receive hook on the same device
    /// detaches the old program first. Pinned maps of another layout are refused
    /// ([`EbpfError::Incompatible`]).
    pub fn attach(cfg: &AttachConfig) -> Result<(Self, AttachReport), EbpfError> {
        if cfg.tunnel_port == 0 {
            return Err(EbpfError::InvalidInput {
                field: "tunnel port",
                value: "0".into(),
                reason: "must be 1..=65535".into(),
            });
        }
        check_max_peers(cfg.max_peers)?;
        let underlay_ifindex = ifindex(&cfg.underlay)?;
        let overlay_ifindex = cfg.overlay.as_deref().map(ifindex).transpose()?;
        if OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        let pin_dir = cfg.pin_dir.as_path();
        bpffs::ensure_mounted(pin_dir)?;
        bpffs::warn_if_private(pin_dir);
        let mut config = Config::new(cfg.tunnel_port);
        config.underlay_ifindex = underlay_ifindex;
        config.overlay_ifindex = overlay_ifindex.unwrap_or(0);
        if let Some(ip) = cfg.local_underlay_ip {
            config.set_local_underlay_ip(ip.octets());
        }
        let (mut tables, mode, reason) = if is_attached(pin_dir) {
            take_over(cfg, config)?
        } else {
            attach_fresh(cfg, config)?
        };
        let mut rp_filter_changed = Vec::new();
        if let Some(was) = sysctl::loosen_rp_filter(&cfg.underlay)? {
            // Saved in the pinned configuration, so whichever process detaches restores it.
            let mut c = tables.config()?;
            c.rp_filter_saved = was.saturating_add(1);
            tables.set_config(c)?;
            rp_filter_changed.push(format!("net.ipv4.conf.{}.rp_filter", cfg.underlay));
        }
        info!(
            underlay = %cfg.underlay,
            overlay = ?cfg.overlay,
            mode = mode.name(),
            %reason,
            pin_dir = %pin_dir.display(),
            "eBPF dataplane attached"
        );
        let report = AttachReport {
            underlay: cfg.underlay.clone(),
            overlay: cfg.overlay.clone(),
            mode,
            reason,
            rp_filter_changed,
            pin_dir: pin_dir.to_owned(),
        };
        Ok((
            Self {
                pin_dir: Some(pin_dir.to_owned()),
                tables,
            },
            report,
        ))
    }

    /// Reopens the maps of a dataplane attached earlier (by this or a previous agent process)
    /// from its pins, without touching the programs (which kept forwarding meanwhile); the
    /// installed peers are read back from the maps.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, EbpfError> {
        if !pin_dir.join(MAP_CONFIG).exists() {
            return Err(EbpfError::NotAttached {
                pin_dir: pin_dir.to_owned(),
            });
        }
        Ok(Self {
            pin_dir: Some(pin_dir.to_owned()),
            tables: Tables::open_pinned(pin_dir)?,
        })
    }

    /// Attaches the transmit program to `overlay` (a TUN device created anew), using the
    /// pinned maps. The new program is attached before the old link's pin goes, so there is
    /// no moment without one.
    pub fn attach_overlay(&mut self, overlay: &str) -> Result<(), EbpfError> {
        let Some(pin_dir) = self.pin_dir.clone() else {
            return Err(EbpfError::InvalidInput {
                field: "dataplane",
                value: overlay.into(),
                reason: "loaded for tests, not attached".into(),
            });
        };
        let overlay_ifindex = ifindex(overlay)?;
        let mut ebpf = load_object(Some(&pin_dir), self.tables.capacity())?;
        replace_overlay(&mut ebpf, &pin_dir, overlay, false)?;
        self.update_config(|c| c.overlay_ifindex = overlay_ifindex)?;
        info!(overlay, "transmit program attached to the overlay device");
        Ok(())
    }

    pub(super) fn unpinned(tables: Tables) -> Self {
        Self {
            pin_dir: None,
            tables,
        }
    }

    /// The pin directory (`None` for a dataplane loaded for tests).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Peers the maps hold: counter slots are `0..capacity`.
    pub fn capacity(&self) -> u32 {
        self.tables.capacity()
    }

    /// The programs' configuration.
    pub fn config(&self) -> Result<Config, EbpfError> {
        self.tables.config()
    }

    /// Changes the configuration with `f` and writes it back; returns the new value.
    pub fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<Config, EbpfError> {
        let mut cfg = self.tables.config()?;
        f(&mut cfg);
        self.tables.set_config(cfg)?;
        Ok(cfg)
    }

    /// Sets this node's overlay address: receive decapsulates only inner packets to it (others
    /// are dropped as `plain_wrong_destination`).
    pub fn set_local_overlay(&mut self, overlay_ip: Ipv4Addr) -> Result<(), EbpfError> {
        self.update_config(|c| c.set_local_overlay_ip(overlay_ip.octets()))?;
        Ok(())
    }

    /// Sets this node's index (CLAD header sender id) and underlay address (outer source;
    /// receive accepts only datagrams to it). Call before installing peers, and again when the
    /// underlay address changes.
    pub fn set_local(&mut self, node_index: u32, underlay_ip: Ipv4Addr) -> Result<(), EbpfError> {
        self.update_config(|c| {
            c.local_node_index = node_index;
            c.set_local_underlay_ip(underlay_ip.octets());
        })
        .map(drop)
    }

    /// Installs or replaces a peer, with its counters in its slot (`0..capacity()`; a slot
    /// newly given to a peer starts from zero). PLAIN peers with an endpoint are carried by
    /// the kernel; SEALED peers (and PLAIN ones without an endpoint) get an entry that leaves
    /// their packets to the userspace engine.
    pub fn upsert_peer(&mut self, peer: &PeerConfig) -> Result<(), EbpfError> {
        self.tables.upsert_peer(peer)
    }

    /// Writes this node's own prefixes as LOCAL `PEERS` entries: received traffic for them is
    /// decapsulated and delivered here, like traffic for the overlay address.
    pub fn set_local_prefixes(
        &mut self,
        node_index: u32,
        prefixes: &[ipnet::Ipv4Net],
    ) -> Result<(), EbpfError> {
        self.tables.set_local_prefixes(node_index, prefixes)
    }

    /// Deletes the `PEERS` entries of `prefixes` still owned by node `node_index` (a peer's
    /// withdrawn prefixes, or this node's own).
    pub fn remove_prefixes(
        &mut self,
        node_index: u32,
        prefixes: &[ipnet::Ipv4Net],
    ) -> Result<(), EbpfError> {
        self.tables.remove_prefixes(node_index, prefixes)
    }

    /// Removes the peer holding `overlay_ip` (stops sending before it stops accepting);
    /// returns whether there was one.
    pub fn remove_peer(&mut self, overlay_ip: Ipv4Addr) -> Result<bool, EbpfError> {
        self.tables.remove_peer(overlay_ip)
    }

    /// Counters of every installed peer, summed over CPUs.
    pub fn peer_counters(&self) -> Result<Vec<PeerStats>, EbpfError> {
        self.tables.peer_counters()
    }

    /// Counters of one slot, summed over CPUs.
    pub fn slot_counters(
        &self,
        slot: u32,
    ) -> Result<cladnet_common::maps::PeerCounters, EbpfError> {
        self.tables.slot_counters(slot)
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(KernelDrop, u64)>, EbpfError> {
        self.tables.drops()
    }

    /// Traffic by class, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(StatSlot, Counters)>, EbpfError> {
        self.tables.stats()
    }

    /// The `PEERS` entry for an overlay address.
    pub fn peer_entry(&self, overlay_ip: Ipv4Addr) -> Result<Option<PeerEntry>, EbpfError> {
        self.tables.lookup(overlay_ip)
    }

    /// The `ENDPOINTS` entry for an underlay endpoint.
    pub fn endpoint_entry(
        &self,
        endpoint: std::net::SocketAddrV4,
    ) -> Result<Option<EndpointEntry>, EbpfError> {
        self.tables.endpoint(endpoint)
    }

    /// Detaches the programs and removes every pin and the pin directory.
    pub fn detach(self) -> Result<(), EbpfError> {
        let Self { pin_dir, tables } = self;
        let saved = tables.config().ok().filter(|c| c.rp_filter_saved != 0);
        drop(tables);
        if let Some(dir) = pin_dir {
            remove_pins(&dir)?;
        }
        // The underlay's reverse-path filter goes back to what it was before attach.
        if let Some(c) = saved
            && let Some(underlay) = crate::sys::interface_name(c.underlay_ifindex)
        {
            sysctl::restore_rp_filter(&underlay, c.rp_filter_saved - 1);
        }
        Ok(())
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32, EbpfError> {
    match crate::sys::interface_index(name) {
        Ok(Some(i)) => Ok(i),
        Ok(None) => Err(EbpfError::NoInterface {
            iface: name.to_owned(),
        }),
        Err(e) => Err(EbpfError::InvalidInput {
            field: "interface",
            value: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Loads the embedded object; with `reuse`, its maps are the ones pinned there.
/// `max_peers` is in range, or an error naming the setting.
pub(super) fn check_max_peers(max_peers: u32) -> Result<(), EbpfError> {
    if (1..=MAX_PEERS_LIMIT).contains(&max_peers) {
        return Ok(());
    }
    Err(EbpfError::InvalidInput {
        field: "ebpf_max_peers",
        value: max_peers.to_string(),
        reason: format!("must be 1..={MAX_PEERS_LIMIT}"),
    })
}

/// Loads the object with the peer maps sized for `max_peers` (pinned maps in `reuse` are
/// reused as they are: pass their capacity, so that the map handles agree with them).
pub(super) fn load_object(reuse: Option<&Path>, max_peers: u32) -> Result<Ebpf, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NoObject);
    }
    let mut loader = EbpfLoader::new();
    for (name, entries) in super::tables::sizes(max_peers) {
        loader.map_max_entries(name, entries);
    }
    if let Some(dir) = reuse {
        for name in ALL_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader
        .load(OBJECT)
        .map_err(|e| EbpfError::Load(Box::new(e)))
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
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

/// Tries `hooks` in order; pins the first that attaches.
fn attach_underlay(
    ebpf: &mut Ebpf,
    iface: &str,
    hooks: &[RxHook],
    guard: &mut Rollback,
) -> Result<(RxHook, String), EbpfError> {
    let mut failures = String::new();
    for &hook in hooks {
        let attempt = match hook {
            RxHook::XdpDriver | RxHook::XdpGeneric => {
                let xdp_mode = if hook == RxHook::XdpDriver {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                let prog: &mut Xdp = program(ebpf, PROG_XDP_UNDERLAY)?;
                load_once(prog, PROG_XDP_UNDERLAY, iface)?;
                prog.attach(iface, xdp_mode)
                    .and_then(|id| prog.take_link(id))
                    .map(FdLink::try_from)
            }
            RxHook::TcIngress => {
                let prog: &mut SchedClassifier = program(ebpf, PROG_TC_UNDERLAY_INGRESS)?;
                load_once(prog, PROG_TC_UNDERLAY_INGRESS, iface)?;
                prog.attach(iface, TcAttachType::Ingress)
                    .and_then(|id| prog.take_link(id))
                    .map(FdLink::try_from)
            }
        };
        match attempt {
            Ok(link) => {
                guard.pin_link(link, LINK_UNDERLAY)?;
                let reason = if !failures.is_empty() {
                    format!("fallback after {failures}")
                } else if hooks.len() == 1 {
                    "requested".to_owned()
                } else if hook == RxHook::TcIngress {
                    "first choice on a veth device: TC ingress keeps GSO (driver-mode XDP \
                     turns TSO off on the peer)"
                        .to_owned()
                } else {
                    "first choice: the driver supports it".to_owned()
                };
                return Ok((hook, reason));
            }
            Err(e) => {
                let text = error_chain(&e);
                warn!(iface, mode = hook.name(), error = %text, "attach failed");
                if !failures.is_empty() {
                    failures.push_str("; ");
                }
                let _ = write!(failures, "{} mode failed: {text}", hook.name());
            }
        }
    }
    Err(EbpfError::NoRxHook {
        iface: iface.to_owned(),
        attempts: failures,
    })
}

/// Loads the transmit program and attaches it to `iface`'s egress; returns its link.
fn attach_overlay_link(
    ebpf: &mut Ebpf,
    iface: &str,
) -> Result<Result<FdLink, LinkError>, EbpfError> {
    let prog: &mut SchedClassifier = program(ebpf, PROG_TC_OVERLAY_EGRESS)?;
    let err = |op, e| EbpfError::program(op, PROG_TC_OVERLAY_EGRESS, iface, e);
    load_once(prog, PROG_TC_OVERLAY_EGRESS, iface)?;
    let id = prog
        .attach(iface, TcAttachType::Egress)
        .map_err(|e| err("attach TC egress", e))?;
    let link = prog.take_link(id).map_err(|e| err("take link", e))?;
    Ok(FdLink::try_from(link))
}

/// Whether `pin_dir` holds pins of a dataplane.
pub(super) fn is_attached(pin_dir: &Path) -> bool {
    pin_names().any(|p| pin_dir.join(p).exists())
}

/// A first attach into an empty pin directory: everything is created, or nothing is left.
fn attach_fresh(
    cfg: &AttachConfig,
    mut config: Config,
) -> Result<(Tables, RxHook, String), EbpfError> {
    let pin_dir = cfg.pin_dir.as_path();
    let mut guard = Rollback::new(pin_dir)?;
    let mut ebpf = load_object(None, cfg.max_peers)?;
    write_config(&mut ebpf, config)?;
    for name in ALL_MAPS {
        let map = ebpf
            .map(name)
            .ok_or(EbpfError::MissingItem { kind: "map", name })?;
        let path = pin_dir.join(name);
        map.pin(&path).map_err(|source| EbpfError::Pin {
            path: path.clone(),
            source,
        })?;
        guard.pinned.push(path);
    }
    let (mode, reason) = attach_underlay(&mut ebpf, &cfg.underlay, cfg.hooks, &mut guard)?;
    if let Some(overlay) = &cfg.overlay {
        let link = attach_overlay_link(&mut ebpf, overlay)?;
        guard.pin_link(link, LINK_OVERLAY)?;
    }
    config.rx_hook = mode.code();
    write_config(&mut ebpf, config)?;
    let tables = Tables::take(&mut ebpf, cfg.max_peers)?;
    guard.commit();
    Ok((tables, mode, reason))
}

/// Takes over the dataplane pinned in `cfg.pin_dir` by a previous agent process: same maps,
/// new programs, swapped in place where possible.
fn take_over(
    cfg: &AttachConfig,
    mut config: Config,
) -> Result<(Tables, RxHook, String), EbpfError> {
    let pin_dir = cfg.pin_dir.as_path();
    let mut tables = Tables::open_pinned(pin_dir)?;
    // Prefixes approved when the previous process ran may be withdrawn by now, and nothing
    // would withdraw them again (this process's Node never installed them): they would keep
    // routing and owning sources. The Node's first commands write the current ones.
    tables.drop_prefixes()?;
    if tables.capacity() != cfg.max_peers {
        warn!(
            pinned = tables.capacity(),
            ebpf_max_peers = cfg.max_peers,
            pin_dir = %pin_dir.display(),
            "the pinned eBPF maps keep their size; the ebpf_max_peers setting applies once the \
             dataplane is detached (`cladnet-agent dataplane detach`, or leaving the network)"
        );
    }
    let old = tables.config()?;
    // The node's identity does not change with a restart; set_local updates it anyway.
    config.local_node_index = old.local_node_index;
    if cfg.local_underlay_ip.is_none() {
        config.set_local_underlay_ip(old.local_underlay_ip());
    }
    config.rx_hook = old.rx_hook;
    config.rp_filter_saved = old.rp_filter_saved;
    config.set_local_overlay_ip(old.local_overlay_ip());
    tables.set_config(config)?;
    let mut ebpf = load_object(Some(pin_dir), tables.capacity())?;
    let (mode, reason) = replace_underlay(&mut ebpf, cfg, &old, config.underlay_ifindex)?;
    config.rx_hook = mode.code();
    tables.set_config(config)?;
    match &cfg.overlay {
        Some(overlay) => {
            let same = old.overlay_ifindex == config.overlay_ifindex;
            replace_overlay(&mut ebpf, pin_dir, overlay, same)?;
        }
        None => remove_pin(&pin_dir.join(LINK_OVERLAY))?,
    }
    Ok((tables, mode, format!("took over pinned programs: {reason}")))
}

/// The receive program of a take-over: swapped into the old link when the device and hook
/// stay, else attached anew after the old link is gone.
fn replace_underlay(
    ebpf: &mut Ebpf,
    cfg: &AttachConfig,
    old: &Config,
    ifindex: u32,
) -> Result<(RxHook, String), EbpfError> {
    let path = cfg.pin_dir.join(LINK_UNDERLAY);
    let old_hook = RxHook::from_code(old.rx_hook);
    if let Some(hook) = old_hook
        && old.underlay_ifindex == ifindex
        && cfg.hooks.contains(&hook)
        && path.exists()
    {
        match swap_underlay(ebpf, hook, &path, &cfg.underlay) {
            Ok(()) => return Ok((hook, format!("{} program replaced in place", hook.name()))),
            Err(e) => {
                warn!(error = %error_chain(&e), "in-place replacement failed; attaching anew")
            }
        }
    }
    // Another device or hook: the old link goes first (a device has one XDP program), and
    // the kernel releases it asynchronously, so an XDP attach may need a moment.
    remove_pin(&path)?;
    let mut guard = Rollback::new(&cfg.pin_dir)?;
    let mut tries = 0;
    let attached = loop {
        match attach_underlay(ebpf, &cfg.underlay, cfg.hooks, &mut guard) {
            Ok(r) => break r,
            Err(EbpfError::NoRxHook { .. }) if tries < 20 && old_hook.is_some() => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    guard.commit();
    Ok(attached)
}

/// Loads the receive program for `hook` and swaps it into the link pinned at `path`.
fn swap_underlay(ebpf: &mut Ebpf, hook: RxHook, path: &Path, iface: &str) -> Result<(), EbpfError> {
    let link_err = |source| EbpfError::Link {
        path: path.to_owned(),
        source,
    };
    let fd: FdLink = PinnedLink::from_pin(path).map_err(link_err)?.into();
    match hook {
        RxHook::XdpDriver | RxHook::XdpGeneric => {
            let link = XdpLink::try_from(fd).map_err(link_err)?;
            let prog: &mut Xdp = program(ebpf, PROG_XDP_UNDERLAY)?;
            load_once(prog, PROG_XDP_UNDERLAY, iface)?;
            prog.attach_to_link(link)
                .map_err(|e| EbpfError::program("replace in link", PROG_XDP_UNDERLAY, iface, e))?;
        }
        RxHook::TcIngress => {
            let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
            let prog: &mut SchedClassifier = program(ebpf, PROG_TC_UNDERLAY_INGRESS)?;
            load_once(prog, PROG_TC_UNDERLAY_INGRESS, iface)?;
            prog.attach_to_link(link).map_err(|e| {
                EbpfError::program("replace in link", PROG_TC_UNDERLAY_INGRESS, iface, e)
            })?;
        }
    }
    Ok(())
}

/// The transmit program on `iface`: swapped into the pinned link when `same_device`, else a
/// new link that replaces the pin (tcx runs both for a moment; the old one goes first and
/// ends the chain, so nothing is handled twice).
fn replace_overlay(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    same_device: bool,
) -> Result<(), EbpfError> {
    let path = pin_dir.join(LINK_OVERLAY);
    if same_device && path.exists() {
        let swapped = (|| {
            let link_err = |source| EbpfError::Link {
                path: path.clone(),
                source,
            };
            let fd: FdLink = PinnedLink::from_pin(&path).map_err(link_err)?.into();
            let link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
            let prog: &mut SchedClassifier = program(ebpf, PROG_TC_OVERLAY_EGRESS)?;
            load_once(prog, PROG_TC_OVERLAY_EGRESS, iface)?;
            prog.attach_to_link(link)
                .map_err(|e| {
                    EbpfError::program("replace in link", PROG_TC_OVERLAY_EGRESS, iface, e)
                })
                .map(drop)
        })();
        match swapped {
            Ok(()) => return Ok(()),
            Err(e) => {
                warn!(error = %error_chain(&e), "in-place replacement failed; attaching anew")
            }
        }
    }
    let link = attach_overlay_link(ebpf, iface)?.map_err(|source| EbpfError::Link {
        path: path.clone(),
        source,
    })?;
    remove_pin(&path)?;
    link.pin(&path)
        .map_err(|source| EbpfError::Pin { path, source })
        .map(drop)
}

/// Removes one pin; a missing one is fine.
fn remove_pin(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io {
            op: "remove pin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `config` into the object's (not yet taken) config map.
fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<(), EbpfError> {
    let mut map: Array<_, Config> = ebpf
        .map_mut(MAP_CONFIG)
        .ok_or(EbpfError::MissingItem {
            kind: "map",
            name: MAP_CONFIG,
        })?
        .try_into()
        .map_err(|e| EbpfError::map(MAP_CONFIG, e))?;
    map.set(0, config, 0)
        .map_err(|e| EbpfError::map(MAP_CONFIG, e))
}

/// A program that knows whether it is loaded.
trait Loadable {
    fn loaded(&self) -> bool;
    fn load_now(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl Loadable for Xdp {
    fn loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_now(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl Loadable for SchedClassifier {
    fn loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_now(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// Loads `prog` unless it is loaded already.
fn load_once(prog: &mut impl Loadable, name: &'static str, iface: &str) -> Result<(), EbpfError> {
    if prog.loaded() {
        return Ok(());
    }
    prog.load_now()
        .map_err(|e| EbpfError::program("load", name, iface, e))
}

/// An error and its causes on one line.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Removes every pin in `pin_dir` and the directory; returns whether anything was pinned.
pub(super) fn remove_pins(pin_dir: &Path) -> Result<bool, EbpfError> {
    let mut found = false;
    // The programs behind the link pins: the kernel frees a link (and detaches its program
    // from the device) in deferred work after its last reference goes, so detach waits for
    // them to be gone rather than return while the hook still runs the program.
    let programs: Vec<u32> = [LINK_UNDERLAY, LINK_OVERLAY]
        .into_iter()
        .chain(LEGACY_LINKS)
        .filter_map(|name| PinnedLink::from_pin(pin_dir.join(name)).ok())
        .filter_map(|link| FdLink::from(link).info().ok())
        .map(|info| info.program_id())
        .collect();
    for name in pin_names() {
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
    wait_unloaded(&programs);
    if found {
        info!(pin_dir = %pin_dir.display(), "eBPF dataplane detached");
    }
    Ok(found)
}

/// Waits (at most [`DETACH_WAIT`]) until none of `programs` is loaded: a program is freed
/// only after the kernel released its link, so then no device runs it any more.
fn wait_unloaded(programs: &[u32]) {
    if programs.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        if loaded.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            warn!(
                ?loaded,
                "eBPF programs still loaded after their links were unpinned"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How long detach waits for the kernel to release unpinned links.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What an attach in progress created; undone on drop unless committed, so a failed attach
/// leaves no pins, no attached program and no directory it made.
struct Rollback {
    dir: PathBuf,
    created_dir: bool,
    pinned: Vec<PathBuf>,
    links: Vec<PinnedLink>,
    committed: bool,
}

impl Rollback {
    fn new(dir: &Path) -> Result<Self, EbpfError> {
        let created_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|source| EbpfError::Io {
            op: "create pin directory",
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            created_dir,
            pinned: Vec::new(),
            links: Vec::new(),
            committed: false,
        })
    }

    fn pin_link(&mut self, link: Result<FdLink, LinkError>, name: &str) -> Result<(), EbpfError> {
        let path = self.dir.join(name);
        let link = link.map_err(|source| EbpfError::Link {
            path: path.clone(),
            source,
        })?;
        let pinned = link.pin(&path).map_err(|source| EbpfError::Pin {
            path: path.clone(),
            source,
        })?;
        self.pinned.push(path);
        self.links.push(pinned);
        Ok(())
    }

    fn commit(&mut self) {
        self.committed = true;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Pins first (links before maps: reverse order of creation), then our fds go with
        // `links`, which detaches the programs.
        for path in self.pinned.iter().rev() {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "could not remove pin after a failed attach");
            }
        }
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_order_follows_the_choice() {
        assert_eq!(
            RxHook::order(None, false),
            &[RxHook::XdpDriver, RxHook::XdpGeneric, RxHook::TcIngress]
        );
        assert_eq!(
            RxHook::order(None, true),
            &[RxHook::TcIngress, RxHook::XdpDriver, RxHook::XdpGeneric],
            "veth: TC first"
        );
        assert_eq!(
            serde_json::to_string(&RxHook::XdpGeneric).unwrap(),
            "\"generic\""
        );
        assert_eq!(RxHook::parse_choice("auto"), Ok(None));
        // One hook, named once: both names parse back to it, a configured hook is tried
        // alone (veth or not), and its kernel code round-trips.
        for hook in RxHook::ALL {
            assert_eq!(RxHook::parse_choice(hook.config_name()), Ok(Some(hook)));
            assert_eq!(RxHook::parse_choice(hook.name()), Ok(Some(hook)));
            assert_eq!(hook.config_name().parse(), Ok(hook));
            assert_eq!(RxHook::order(Some(hook), false), &[hook]);
            assert_eq!(RxHook::order(Some(hook), true), &[hook]);
            assert_eq!(RxHook::from_code(hook.code()), Some(hook));
        }
        assert_eq!(
            [RxHook::XdpDriver, RxHook::XdpGeneric, RxHook::TcIngress].map(RxHook::code),
            [1, 2, 3],
            "the codes pinned maps of earlier agents hold"
        );
        assert_eq!(RxHook::from_code(Config::RX_HOOK_NONE), None);
        let err = RxHook::parse_choice("xdp").unwrap_err();
        assert!(err.contains("xdp-driver"), "{err}");
        assert!("auto".parse::<RxHook>().is_err());
    }

    #[test]
    fn pins_are_removed_links_first() {
        let names: Vec<_> = pin_names().collect();
        let first_map = names.iter().position(|n| ALL_MAPS.contains(n)).unwrap();
        assert!(names[..first_map].iter().all(|n| n.starts_with("link_")));
        assert_eq!(names.len(), 4 + ALL_MAPS.len());
    }

    #[test]
    fn errors_print_their_causes() {
        let e = EbpfError::Io {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(error_chain(&e), "read /x failed: boom");
    }
}
