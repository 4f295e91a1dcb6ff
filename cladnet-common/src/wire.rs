//! The CLADNet wire format on the tunnel UDP port.
//!
//! One UDP port (default [`TUNNEL_PORT`]) carries two kinds of datagrams, told apart by the
//! first byte:
//!
//! * WireGuard messages (SEALED links) start with a message type 1..=4 followed by three zero
//!   bytes.
//! * CLAD messages (PLAIN links) start with an 8-byte [`CladHeader`] whose first byte is
//!   `version << 4 | type`. With version 1 the first byte is `0x1_`, never 1..=4.
//!
//! ```text
//!  0               1               2               3
//! +-------+-------+---------------+-------------------------------+
//! |version| type  |     flags     |           reserved (0)        |
//! +-------+-------+---------------+-------------------------------+
//! |                      sender node id (big endian)              |
//! +---------------------------------------------------------------+
//! |                 inner IP packet (no Ethernet header)          |
//! ```

/// Default UDP port of the tunnel socket (PLAIN and SEALED share it).
pub const TUNNEL_PORT: u16 = 8055;
/// CLAD header version carried in the high nibble of the first byte.
pub const CLAD_VERSION: u8 = 1;
/// Length of the CLAD header.
pub const CLAD_HDR_LEN: usize = 8;
/// Length of an IPv4 header without options, as written by the encapsulator.
pub const IPV4_HDR_LEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HDR_LEN: usize = 8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP (the outer protocol of every tunnel datagram).
pub const IPPROTO_UDP: u8 = 17;
/// Bytes added in front of an inner packet on an IPv4 underlay: outer IPv4 + UDP + CLAD.
pub const PLAIN_OVERHEAD_V4: usize = IPV4_HDR_LEN + UDP_HDR_LEN + CLAD_HDR_LEN;
/// Bytes a WireGuard transport message adds on an IPv4 underlay: outer IPv4 + UDP + 16-byte
/// transport header + 16-byte Poly1305 tag (padding to 16 bytes not counted), i.e.
/// `cladnet_wg::constants::TRANSPORT_OVERHEAD` after the outer headers (a cladnet-wg test
/// checks that the two agree).
pub const SEALED_OVERHEAD_V4: usize = IPV4_HDR_LEN + UDP_HDR_LEN + 16 + 16;

/// Message types carried in the low nibble of the first CLAD header byte.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum CladType {
    /// An inner IP packet follows the header.
    DataPlain = 1,
    /// Keepalive / reachability probe; nothing follows.
    Probe = 3,
    /// Path MTU probe: a nonce and padding follow (see [`crate::pmtu`]).
    MtuProbe = 4,
    /// Path MTU probe acknowledgement: the probe's nonce and received size follow.
    MtuAck = 5,
    /// A WireGuard message relayed through a third node (see [`crate::relay`]).
    Relay = 6,
}

impl CladType {
    /// Parses the low nibble of the first header byte.
    pub const fn from_nibble(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::DataPlain),
            3 => Some(Self::Probe),
            4 => Some(Self::MtuProbe),
            5 => Some(Self::MtuAck),
            6 => Some(Self::Relay),
            _ => None,
        }
    }
}

/// Flag bit: the inner packet is IPv6.
pub const FLAG_INNER_V6: u8 = 0x01;

/// What the first bytes of a datagram on the tunnel port say it is.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Demux {
    /// A WireGuard message of the given type (1 initiation, 2 response, 3 cookie, 4 data).
    WireGuard(u8),
    /// A CLAD message (the header still needs [`CladHeader::decode`]).
    Clad,
    /// Neither: drop it.
    Unknown,
}

/// Classifies a datagram on the tunnel port by its first four bytes.
pub fn demux(payload: &[u8]) -> Demux {
    match payload {
        [t @ 1..=4, 0, 0, 0, ..] => Demux::WireGuard(*t),
        [b, ..] if b >> 4 == CLAD_VERSION => Demux::Clad,
        _ => Demux::Unknown,
    }
}

/// Why a CLAD header was rejected.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum WireError {
    /// Fewer than [`CLAD_HDR_LEN`] bytes.
    Truncated,
    /// The version nibble is not [`CLAD_VERSION`].
    BadVersion(u8),
    /// The type nibble is not a known [`CladType`].
    BadType(u8),
    /// The reserved bytes are not zero.
    ReservedNotZero,
}

/// The 8-byte CLAD header, laid out exactly as on the wire.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct CladHeader {
    version_type: u8,
    flags: u8,
    reserved: [u8; 2],
    node_id: [u8; 4],
}

const _: () = assert!(size_of::<CladHeader>() == CLAD_HDR_LEN);

impl CladHeader {
    /// A version-1 header of the given type, flags and sender node id.
    pub const fn new(ty: CladType, flags: u8, node_id: u32) -> Self {
        Self {
            version_type: (CLAD_VERSION << 4) | ty as u8,
            flags,
            reserved: [0; 2],
            node_id: node_id.to_be_bytes(),
        }
    }

    /// The message type.
    pub const fn ty(&self) -> Option<CladType> {
        CladType::from_nibble(self.version_type & 0x0f)
    }

    /// The flag byte.
    pub const fn flags(&self) -> u8 {
        self.flags
    }

    /// The sender's node id.
    pub const fn node_id(&self) -> u32 {
        u32::from_be_bytes(self.node_id)
    }

    /// The header's wire bytes.
    pub const fn to_bytes(&self) -> [u8; CLAD_HDR_LEN] {
        let n = self.node_id;
        [
            self.version_type,
            self.flags,
            self.reserved[0],
            self.reserved[1],
            n[0],
            n[1],
            n[2],
            n[3],
        ]
    }

    /// Parses and validates the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let Some(&[vt, flags, r0, r1, n0, n1, n2, n3]) = buf.first_chunk::<CLAD_HDR_LEN>() else {
            return Err(WireError::Truncated);
        };
        if vt >> 4 != CLAD_VERSION {
            return Err(WireError::BadVersion(vt >> 4));
        }
        if CladType::from_nibble(vt & 0x0f).is_none() {
            return Err(WireError::BadType(vt & 0x0f));
        }
        if r0 != 0 || r1 != 0 {
            return Err(WireError::ReservedNotZero);
        }
        Ok(Self {
            version_type: vt,
            flags,
            reserved: [0; 2],
            node_id: [n0, n1, n2, n3],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = CladHeader::new(CladType::DataPlain, FLAG_INNER_V6, 0xdead_beef);
        let bytes = h.to_bytes();
        assert_eq!(bytes, [0x11, 0x01, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(CladHeader::decode(&bytes), Ok(h));
        assert_eq!(h.node_id(), 0xdead_beef);
        assert_eq!(h.ty(), Some(CladType::DataPlain));
    }

    #[test]
    fn decode_rejects_bad_headers() {
        assert_eq!(CladHeader::decode(&[0x11, 0, 0]), Err(WireError::Truncated));
        assert_eq!(
            CladHeader::decode(&[0x21, 0, 0, 0, 0, 0, 0, 1]),
            Err(WireError::BadVersion(2))
        );
        assert_eq!(
            CladHeader::decode(&[0x12, 0, 0, 0, 0, 0, 0, 1]),
            Err(WireError::BadType(2))
        );
        assert_eq!(
            CladHeader::decode(&[0x17, 0, 0, 0, 0, 0, 0, 1]),
            Err(WireError::BadType(7))
        );
        assert_eq!(
            CladHeader::decode(&[0x11, 0, 0, 1, 0, 0, 0, 1]),
            Err(WireError::ReservedNotZero)
        );
    }

    #[test]
    fn demux_separates_wireguard_from_clad() {
        for t in 1..=4 {
            assert_eq!(demux(&[t, 0, 0, 0, 9, 9]), Demux::WireGuard(t));
        }
        assert_eq!(
            demux(&CladHeader::new(CladType::Probe, 0, 7).to_bytes()),
            Demux::Clad
        );
        assert_eq!(demux(&[1, 0, 0, 1]), Demux::Unknown);
        assert_eq!(demux(&[0x31]), Demux::Unknown);
        assert_eq!(demux(&[]), Demux::Unknown);
    }

    #[test]
    fn overheads_match_header_sizes() {
        assert_eq!(PLAIN_OVERHEAD_V4, 36);
        assert_eq!(SEALED_OVERHEAD_V4, 60);
    }
}
