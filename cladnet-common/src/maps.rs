//! BPF map names and the layouts of their keys and values.
//!
//! The agent pins every map under its pin directory (default [`PIN_ROOT`]) by the name given
//! here, so a restarted agent, `cladnet-agent dataplane stats` and `bpftool` find them.
//!
//! | Map | Type | Key | Value |
//! |---|---|---|---|
//! | [`MAP_PEERS`] | LPM trie, peers × [`PREFIXES_PER_PEER`] | prefix length (u32, bits) + IPv4 prefix (4 bytes, network order) | [`PeerEntry`] |
//! | [`MAP_ENDPOINTS`] | hash, peers | [`EndpointKey`] | [`EndpointEntry`] |
//! | [`MAP_PEER_STATS`] | per-CPU array, peers | counter slot (u32) | [`PeerCounters`] |
//! | [`MAP_DROPS`] | per-CPU array, [`KernelDrop::COUNT`] | [`KernelDrop`] (u32) | u64 |
//! | [`MAP_STATS`] | per-CPU array, [`StatSlot::COUNT`] | [`StatSlot`] (u32) | [`Counters`] |
//! | [`MAP_CONFIG`] | array, 1 | 0 | [`Config`] |
//!
//! "peers" is the agent's `ebpf_max_peers` setting ([`DEFAULT_MAX_PEERS`] unless set), applied
//! when the programs are loaded; the sizes compiled into the object are the defaults.
//!
//! Addresses and ports that are copied to or compared with packet bytes are stored in network
//! byte order as byte arrays; everything else (node index, slot, ifindex) in host order.
//!
//! `PEERS` holds every remote peer's overlay `/32` and each of its approved prefixes (a pod
//! network, a subnet behind it) with the same [`PeerEntry`], and this node's own approved
//! prefixes as [`PeerEntry::local`]. One longest prefix match thus answers both "where does a
//! packet to this address go" (TC egress) and "who owns this address" ([`PeerEntry::owner`]),
//! which the receive checks use: the inner source must be owned by the sender, the inner
//! destination be this node's address or owned by it (`cladnet_common::rx`).

use crate::plain::DropReason;

/// Default bpffs directory for CLADNet pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/cladnet";

/// LPM trie: overlay IPv4 prefix -> [`PeerEntry`] (TX: where an inner packet goes).
pub const MAP_PEERS: &str = "PEERS";
/// Hash: peer underlay endpoint ([`EndpointKey`]) -> [`EndpointEntry`] (RX validation).
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
/// Per-CPU array of [`PeerCounters`], indexed by the peer's counter slot.
pub const MAP_PEER_STATS: &str = "PEER_STATS";
/// Per-CPU array of drop counts (u64), indexed by [`KernelDrop`].
pub const MAP_DROPS: &str = "DROPS";
/// Per-CPU array of [`Counters`], indexed by [`StatSlot`].
pub const MAP_STATS: &str = "STATS";
/// Single-entry array holding the [`Config`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Every map, in the order the agent pins them.
pub const ALL_MAPS: [&str; 6] = [
    MAP_CONFIG,
    MAP_STATS,
    MAP_DROPS,
    MAP_PEER_STATS,
    MAP_ENDPOINTS,
    MAP_PEERS,
];

/// XDP on the underlay device: validates and decapsulates PLAIN datagrams.
pub const PROG_XDP_UNDERLAY: &str = "cladnet_xdp_underlay";
/// TC ingress on the underlay device: the same as [`PROG_XDP_UNDERLAY`] where XDP cannot
/// attach.
pub const PROG_TC_UNDERLAY_INGRESS: &str = "cladnet_tc_underlay_ingress";
/// TC egress on the overlay (TUN) device: encapsulates packets for PLAIN peers.
pub const PROG_TC_OVERLAY_EGRESS: &str = "cladnet_tc_overlay_egress";

/// Peers the maps hold unless the agent is set otherwise (`ebpf_max_peers`): counter slots are
/// `0..peers`, and as many underlay endpoints. 16384 covers a 10 000-peer network; the
/// per-CPU counters cost 48 bytes per peer and possible CPU (768 KiB per CPU at the default).
pub const DEFAULT_MAX_PEERS: u32 = 16384;
/// Overlay prefixes the [`MAP_PEERS`] trie holds per peer it is sized for (each peer's /32
/// plus routes behind peers).
pub const PREFIXES_PER_PEER: u32 = 4;
/// Overlay prefixes the [`MAP_PEERS`] trie holds at [`DEFAULT_MAX_PEERS`].
pub const DEFAULT_MAX_PREFIXES: u32 = DEFAULT_MAX_PEERS * PREFIXES_PER_PEER;
/// Largest `ebpf_max_peers` the agent accepts (2^20: 48 MiB of counters per CPU).
pub const MAX_PEERS_LIMIT: u32 = 1 << 20;

/// A packet and byte counter pair. Per-CPU: userspace sums the CPUs.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (frame length on the underlay, L3 length on the overlay).
    pub bytes: u64,
}

const _: () = assert!(size_of::<Counters>() == 16);

impl Counters {
    /// Adds one packet of `len` bytes.
    #[inline(always)]
    pub fn add(&mut self, len: u64) {
        self.packets += 1;
        self.bytes += len;
    }

    /// Sums two counters (used to fold per-CPU values).
    pub const fn merged(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Index into the [`MAP_STATS`] per-CPU array: what the programs saw, by class.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum StatSlot {
    /// UDP/IPv4 datagrams to the tunnel port (and the local underlay address) seen by the
    /// underlay program, whatever became of them. Bytes: frame length.
    RxTunnel = 0,
    /// Every other frame the underlay program passed untouched. Bytes: frame length.
    RxOther = 1,
    /// Tunnel datagrams passed on to the agent's socket: WireGuard, reflector answers, CLAD
    /// probes, first fragments, datagrams GRO coalesced. Bytes: frame length.
    RxToSocket = 2,
    /// Overlay packets the TC egress program left to the userspace engine (TUN reader):
    /// SEALED peers, no peer, not IPv4. Bytes: L3 length.
    TxToUserspace = 3,
}

impl StatSlot {
    /// Number of slots, the size of the [`MAP_STATS`] array.
    pub const COUNT: u32 = 4;
    /// All slots in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::RxTunnel,
        Self::RxOther,
        Self::RxToSocket,
        Self::TxToUserspace,
    ];

    /// Stable snake_case name, used in CLI output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RxTunnel => "rx_tunnel",
            Self::RxOther => "rx_other",
            Self::RxToSocket => "rx_to_socket",
            Self::TxToUserspace => "tx_to_userspace",
        }
    }
}

/// Why the kernel dataplane dropped a packet: the index of [`MAP_DROPS`]. The first seven are
/// [`DropReason`] with the same discriminants, so both engines count PLAIN validation failures
/// under the same names.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum KernelDrop {
    /// A PLAIN datagram failed validation ([`DropReason`]).
    Truncated = DropReason::Truncated as u32,
    /// See [`DropReason::BadVersion`].
    BadVersion = DropReason::BadVersion as u32,
    /// See [`DropReason::BadHeader`].
    BadHeader = DropReason::BadHeader as u32,
    /// See [`DropReason::UnknownPeer`].
    UnknownPeer = DropReason::UnknownPeer as u32,
    /// See [`DropReason::WrongNode`].
    WrongNode = DropReason::WrongNode as u32,
    /// See [`DropReason::SpoofedSource`].
    SpoofedSource = DropReason::SpoofedSource as u32,
    /// See [`DropReason::BadInner`].
    BadInner = DropReason::BadInner as u32,
    /// See [`DropReason::WrongDestination`].
    WrongDestination = DropReason::WrongDestination as u32,
    /// A datagram at the tunnel port that is neither WireGuard, CLAD nor a reflector answer.
    UnknownMessage = 8,
    /// TX: the encapsulated packet (or one of its GSO segments) exceeds the underlay MTU.
    Oversize = 9,
    /// TX: a helper failed after the packet was already modified.
    EncapFailed = 10,
}

impl KernelDrop {
    /// Number of reasons, the size of [`MAP_DROPS`].
    pub const COUNT: u32 = 11;
    /// All reasons in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Truncated,
        Self::BadVersion,
        Self::BadHeader,
        Self::UnknownPeer,
        Self::WrongNode,
        Self::SpoofedSource,
        Self::BadInner,
        Self::WrongDestination,
        Self::UnknownMessage,
        Self::Oversize,
        Self::EncapFailed,
    ];

    /// Stable snake_case name (metrics label); the same as the userspace engine's for the
    /// reasons both have.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "plain_truncated",
            Self::BadVersion => "plain_bad_version",
            Self::BadHeader => "plain_bad_header",
            Self::UnknownPeer => "plain_unknown_peer",
            Self::WrongNode => "plain_wrong_node",
            Self::SpoofedSource => "plain_spoofed_source",
            Self::BadInner => "plain_bad_inner",
            Self::WrongDestination => "plain_wrong_destination",
            Self::UnknownMessage => "unknown_message",
            Self::Oversize => "oversize",
            Self::EncapFailed => "encap_failed",
        }
    }
}

impl From<DropReason> for KernelDrop {
    #[inline(always)]
    fn from(r: DropReason) -> Self {
        match r {
            DropReason::Truncated => Self::Truncated,
            DropReason::BadVersion => Self::BadVersion,
            DropReason::BadHeader => Self::BadHeader,
            DropReason::UnknownPeer => Self::UnknownPeer,
            DropReason::WrongNode => Self::WrongNode,
            DropReason::SpoofedSource => Self::SpoofedSource,
            DropReason::BadInner => Self::BadInner,
            DropReason::WrongDestination => Self::WrongDestination,
        }
    }
}

/// How the TC egress program treats a peer's packets.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum PeerMode {
    /// Encapsulate in the kernel (CLAD header) and send to the underlay endpoint.
    Plain = 1,
    /// Leave to the userspace engine (WireGuard): the packet goes to the TUN reader.
    Sealed = 2,
    /// One of this node's own prefixes: received packets for it are delivered here; nothing
    /// is sent to it through the overlay.
    Local = 3,
}

/// Value of [`MAP_PEERS`]: where packets to an overlay prefix go.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct PeerEntry {
    underlay_ip: [u8; 4],
    underlay_port: [u8; 2],
    mode: u8,
    _pad: u8,
    /// The peer's node index (CLAD header sender id), host order.
    pub node_index: u32,
    /// The peer's slot in [`MAP_PEER_STATS`].
    pub slot: u32,
}

const _: () = assert!(size_of::<PeerEntry>() == 16);

impl PeerEntry {
    /// A PLAIN peer at the underlay endpoint `ip:port`.
    pub const fn plain(ip: [u8; 4], port: u16, node_index: u32, slot: u32) -> Self {
        Self {
            underlay_ip: ip,
            underlay_port: port.to_be_bytes(),
            mode: PeerMode::Plain as u8,
            _pad: 0,
            node_index,
            slot,
        }
    }

    /// A SEALED peer: its packets are left to the userspace engine.
    pub const fn sealed(node_index: u32, slot: u32) -> Self {
        Self {
            underlay_ip: [0; 4],
            underlay_port: [0; 2],
            mode: PeerMode::Sealed as u8,
            _pad: 0,
            node_index,
            slot,
        }
    }

    /// This node's own prefix (node index `local_node_index`): received traffic for it is
    /// accepted, as for the node's overlay address.
    pub const fn local(local_node_index: u32) -> Self {
        Self {
            underlay_ip: [0; 4],
            underlay_port: [0; 2],
            mode: PeerMode::Local as u8,
            _pad: 0,
            node_index: local_node_index,
            slot: 0,
        }
    }

    /// Who owns the prefix of this entry, for the receive checks.
    #[inline(always)]
    pub const fn owner(&self) -> crate::rx::Owner {
        if self.mode == PeerMode::Local as u8 {
            crate::rx::Owner::Local
        } else {
            crate::rx::Owner::Peer(self.node_index)
        }
    }

    /// Whether the kernel encapsulates for this peer: PLAIN with a known endpoint.
    #[inline(always)]
    pub const fn is_plain(&self) -> bool {
        self.mode == PeerMode::Plain as u8 && u16::from_ne_bytes(self.underlay_port) != 0
    }

    /// The mode, `None` for a value no agent writes.
    pub const fn mode(&self) -> Option<PeerMode> {
        match self.mode {
            1 => Some(PeerMode::Plain),
            2 => Some(PeerMode::Sealed),
            3 => Some(PeerMode::Local),
            _ => None,
        }
    }

    /// Underlay IPv4 address, network order.
    #[inline(always)]
    pub const fn underlay_ip(&self) -> [u8; 4] {
        self.underlay_ip
    }

    /// Underlay UDP port, network order.
    #[inline(always)]
    pub const fn underlay_port_be(&self) -> [u8; 2] {
        self.underlay_port
    }

    /// Underlay UDP port, host order.
    pub const fn underlay_port(&self) -> u16 {
        u16::from_be_bytes(self.underlay_port)
    }
}

/// Key of [`MAP_ENDPOINTS`]: a peer's underlay endpoint as it appears in the outer headers of
/// what it sends (source address and port).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
#[repr(C)]
pub struct EndpointKey {
    ip: [u8; 4],
    port: [u8; 2],
    _pad: [u8; 2],
}

const _: () = assert!(size_of::<EndpointKey>() == 8);

impl EndpointKey {
    /// The endpoint `ip:port` (port in host order).
    pub const fn new(ip: [u8; 4], port: u16) -> Self {
        Self::from_wire(ip, port.to_be_bytes())
    }

    /// The endpoint with the port as packet bytes (network order).
    #[inline(always)]
    pub const fn from_wire(ip: [u8; 4], port_be: [u8; 2]) -> Self {
        Self {
            ip,
            port: port_be,
            _pad: [0; 2],
        }
    }

    /// The address, network order.
    pub const fn ip(&self) -> [u8; 4] {
        self.ip
    }

    /// The port, host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Value of [`MAP_ENDPOINTS`]: who may send PLAIN datagrams from that endpoint.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct EndpointEntry {
    /// The node index its CLAD headers must carry, host order.
    pub node_index: u32,
    /// The only inner source address it may use (its overlay address), network order.
    pub overlay_ip: [u8; 4],
    /// Its slot in [`MAP_PEER_STATS`].
    pub slot: u32,
}

const _: () = assert!(size_of::<EndpointEntry>() == 12);

/// Value of [`MAP_PEER_STATS`]: what the kernel carried for one peer. Per-CPU. Bytes count
/// inner (overlay) IP packet lengths, as the userspace engine's counters do; a GSO packet
/// counts as its segments.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct PeerCounters {
    /// Packets encapsulated and sent.
    pub tx_packets: u64,
    /// Inner bytes encapsulated and sent.
    pub tx_bytes: u64,
    /// Packets received, validated and decapsulated.
    pub rx_packets: u64,
    /// Inner bytes received and decapsulated.
    pub rx_bytes: u64,
    /// Packets to this peer dropped (oversize, encapsulation failure).
    pub tx_drops: u64,
    /// Datagrams from this peer's endpoint dropped (wrong node, spoofed source, bad inner).
    pub rx_drops: u64,
}

const _: () = assert!(size_of::<PeerCounters>() == 48);

impl PeerCounters {
    /// Sums two counters (used to fold per-CPU values).
    pub const fn merged(self, o: Self) -> Self {
        Self {
            tx_packets: self.tx_packets + o.tx_packets,
            tx_bytes: self.tx_bytes + o.tx_bytes,
            rx_packets: self.rx_packets + o.rx_packets,
            rx_bytes: self.rx_bytes + o.rx_bytes,
            tx_drops: self.tx_drops + o.tx_drops,
            rx_drops: self.rx_drops + o.rx_drops,
        }
    }
}

/// Runtime configuration of the programs, in the single entry of [`MAP_CONFIG`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct Config {
    tunnel_port: [u8; 2],
    /// The underlay device's own `rp_filter` before the agent loosened it, plus one (0 = the
    /// agent changed nothing): detach restores it, also when another agent process took the
    /// pins over in between. The programs ignore it.
    pub rp_filter_saved: u8,
    _pad: u8,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// This node's index (CLAD header sender id), host order.
    pub local_node_index: u32,
    local_underlay_ip: [u8; 4],
    /// Where encapsulated packets leave (`bpf_redirect_neigh`, MTU check); 0 = not set.
    pub underlay_ifindex: u32,
    /// The overlay (TUN) device the TC egress program is attached to; 0 = none.
    pub overlay_ifindex: u32,
    /// Where the receive program runs, for an agent that takes over pinned programs; the
    /// programs ignore it. [`Config::RX_HOOK_NONE`] or the code of the agent's `RxHook` (its
    /// `#[repr(u32)]`: 1 XDP driver, 2 XDP generic, 3 TC ingress).
    pub rx_hook: u32,
    /// This node's overlay address: RX decapsulates only inner packets addressed to it
    /// (unless it is 0.0.0.0, not configured yet), network order.
    local_overlay_ip: [u8; 4],
}

const _: () = assert!(size_of::<Config>() == 32);

impl Config {
    /// The overlay hook sees an Ethernet header in front of the IPv4 header. Never set for the
    /// TUN device (L3: the packet starts at the IPv4 header); set for BPF_PROG_TEST_RUN, which
    /// always hands TC programs an Ethernet frame. Without it, the egress program pushes a
    /// placeholder Ethernet header before redirecting (`bpf_redirect_neigh` needs one).
    pub const FLAG_OVERLAY_ETH: u32 = 1;

    /// [`Config::rx_hook`]: not attached.
    pub const RX_HOOK_NONE: u32 = 0;

    /// A configuration for the given tunnel UDP port, nothing else set.
    pub const fn new(tunnel_port: u16) -> Self {
        Self {
            tunnel_port: tunnel_port.to_be_bytes(),
            rp_filter_saved: 0,
            _pad: 0,
            flags: 0,
            local_node_index: 0,
            local_underlay_ip: [0; 4],
            underlay_ifindex: 0,
            overlay_ifindex: 0,
            rx_hook: Self::RX_HOOK_NONE,
            local_overlay_ip: [0; 4],
        }
    }

    /// Sets the tunnel port (host order).
    pub const fn set_tunnel_port(&mut self, port: u16) {
        self.tunnel_port = port.to_be_bytes();
    }

    /// The tunnel port in network byte order, as it appears in a UDP header.
    #[inline(always)]
    pub const fn tunnel_port_be(&self) -> [u8; 2] {
        self.tunnel_port
    }

    /// The tunnel port in host order.
    pub const fn tunnel_port(&self) -> u16 {
        u16::from_be_bytes(self.tunnel_port)
    }

    /// The local underlay address (outer source; RX only accepts datagrams to it unless it is
    /// 0.0.0.0), network order.
    #[inline(always)]
    pub const fn local_underlay_ip(&self) -> [u8; 4] {
        self.local_underlay_ip
    }

    /// Sets the local underlay address (network order).
    pub const fn set_local_underlay_ip(&mut self, ip: [u8; 4]) {
        self.local_underlay_ip = ip;
    }

    /// This node's overlay address (the only inner destination RX decapsulates for, unless it
    /// is 0.0.0.0), network order.
    #[inline(always)]
    pub const fn local_overlay_ip(&self) -> [u8; 4] {
        self.local_overlay_ip
    }

    /// Sets this node's overlay address (network order).
    pub const fn set_local_overlay_ip(&mut self, ip: [u8; 4]) {
        self.local_overlay_ip = ip;
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(crate::wire::TUNNEL_PORT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_port_in_network_order() {
        let mut c = Config::new(8055);
        assert_eq!(c.tunnel_port_be(), [0x1f, 0x77]);
        assert_eq!(c.tunnel_port(), 8055);
        assert_eq!(Config::default(), c);
        c.set_tunnel_port(51820);
        assert_eq!(c.tunnel_port_be(), 51820u16.to_be_bytes());
        c.set_local_underlay_ip([10, 0, 0, 1]);
        assert_eq!(c.local_underlay_ip(), [10, 0, 0, 1]);
    }

    #[test]
    fn counters_add_and_merge() {
        let mut a = Counters::default();
        a.add(100);
        a.add(50);
        let b = Counters {
            packets: 1,
            bytes: 1,
        };
        assert_eq!(
            a.merged(b),
            Counters {
                packets: 3,
                bytes: 151
            }
        );
        let p = PeerCounters {
            tx_packets: 1,
            rx_drops: 2,
            ..PeerCounters::default()
        };
        assert_eq!(
            p.merged(p),
            PeerCounters {
                tx_packets: 2,
                rx_drops: 4,
                ..PeerCounters::default()
            }
        );
    }

    #[test]
    fn stat_slots_are_dense_and_named_uniquely() {
        for (i, s) in StatSlot::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            for t in &StatSlot::ALL[i + 1..] {
                assert_ne!(s.name(), t.name());
            }
        }
    }

    #[test]
    fn kernel_drops_extend_the_plain_reasons() {
        for (i, d) in KernelDrop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            for e in &KernelDrop::ALL[i + 1..] {
                assert_ne!(d.name(), e.name());
            }
        }
        let plain = [
            DropReason::Truncated,
            DropReason::BadVersion,
            DropReason::BadHeader,
            DropReason::UnknownPeer,
            DropReason::WrongNode,
            DropReason::SpoofedSource,
            DropReason::BadInner,
            DropReason::WrongDestination,
        ];
        assert_eq!(plain.len(), DropReason::COUNT as usize);
        for r in plain {
            let k = KernelDrop::from(r);
            assert_eq!(k as u32, r as u32);
            assert_eq!(k.name().strip_prefix("plain_"), Some(r.name()));
        }
    }

    #[test]
    fn peer_entries_encode_mode_and_endpoint() {
        let p = PeerEntry::plain([192, 0, 2, 1], 8055, 7, 3);
        assert!(p.is_plain());
        assert_eq!(p.mode(), Some(PeerMode::Plain));
        assert_eq!(p.underlay_port_be(), [0x1f, 0x77]);
        assert_eq!(p.underlay_port(), 8055);
        assert_eq!(p.underlay_ip(), [192, 0, 2, 1]);
        let s = PeerEntry::sealed(7, 3);
        assert!(!s.is_plain());
        assert_eq!(s.mode(), Some(PeerMode::Sealed));
        // A PLAIN peer without an endpoint (port 0) is not encapsulated in the kernel.
        assert!(!PeerEntry::plain([0; 4], 0, 7, 3).is_plain());
        let k = EndpointKey::new([192, 0, 2, 1], 8055);
        assert_eq!(k, EndpointKey::from_wire([192, 0, 2, 1], [0x1f, 0x77]));
        assert_eq!((k.ip(), k.port()), ([192, 0, 2, 1], 8055));
    }
}
