//! BPF map names and the layouts of their keys and values.
//!
//! The agent pins every map under its pin directory (default [`PIN_ROOT`]) by the name given
//! here, so a restarted agent, `cladnet-agent dataplane stats` and `bpftool` find them.

/// Default bpffs directory for CLADNet pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/cladnet";

/// Per-CPU array of [`Counters`], indexed by [`StatSlot`].
pub const MAP_STATS: &str = "STATS";
/// Single-entry array holding the [`Config`].
pub const MAP_CONFIG: &str = "CONFIG";

/// Name of the XDP program attached to the underlay device.
pub const PROG_XDP_UNDERLAY: &str = "cladnet_xdp_underlay";
/// Name of the TC program attached to the underlay device's egress.
pub const PROG_TC_UNDERLAY_EGRESS: &str = "cladnet_tc_underlay_egress";

/// A packet and byte counter pair. Per-CPU: userspace sums the CPUs.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (L3 length for TC on L3 devices, frame length otherwise).
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

/// Index into the [`MAP_STATS`] per-CPU array.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum StatSlot {
    /// UDP datagrams to the tunnel port seen by XDP on the underlay device.
    XdpTunnelRx = 0,
    /// Every other frame seen by XDP on the underlay device.
    XdpOtherRx = 1,
    /// UDP datagrams to the tunnel port leaving the underlay device (TC egress).
    TcTunnelTx = 2,
    /// Every other packet leaving the underlay device (TC egress).
    TcOtherTx = 3,
}

impl StatSlot {
    /// Number of slots, the size of the [`MAP_STATS`] array.
    pub const COUNT: u32 = 4;
    /// All slots in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::XdpTunnelRx,
        Self::XdpOtherRx,
        Self::TcTunnelTx,
        Self::TcOtherTx,
    ];

    /// Stable snake_case name, used in CLI output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::XdpTunnelRx => "xdp_tunnel_rx",
            Self::XdpOtherRx => "xdp_other_rx",
            Self::TcTunnelTx => "tc_tunnel_tx",
            Self::TcOtherTx => "tc_other_tx",
        }
    }
}

/// Runtime configuration of the programs, in the single entry of [`MAP_CONFIG`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct Config {
    tunnel_port: [u8; 2],
    _pad: [u8; 2],
    /// Reserved for feature flags; zero today.
    pub flags: u32,
}

const _: () = assert!(size_of::<Config>() == 8);

impl Config {
    /// A configuration for the given tunnel UDP port.
    pub const fn new(tunnel_port: u16) -> Self {
        Self {
            tunnel_port: tunnel_port.to_be_bytes(),
            _pad: [0; 2],
            flags: 0,
        }
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
        let c = Config::new(8055);
        assert_eq!(c.tunnel_port_be(), [0x1f, 0x77]);
        assert_eq!(c.tunnel_port(), 8055);
        assert_eq!(Config::default(), c);
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
}
