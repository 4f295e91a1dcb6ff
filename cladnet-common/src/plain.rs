//! PLAIN link payloads: the CLAD header followed by the inner IPv4 packet. Shared by the
//! userspace engine and (for its constants and drop reasons) the eBPF programs, so both produce
//! and accept the same bytes.

use crate::{
    rx::Owner,
    wire::{CLAD_HDR_LEN, CladHeader, CladType, WireError},
};

/// Why a PLAIN datagram was dropped. The discriminants index the drop counters.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum DropReason {
    /// Shorter than the headers it claims.
    Truncated = 0,
    /// CLAD version is not 1.
    BadVersion = 1,
    /// Unknown CLAD type, or reserved bytes set.
    BadHeader = 2,
    /// No PLAIN peer has this underlay address.
    UnknownPeer = 3,
    /// The header's node id is not the one of the peer at that address.
    WrongNode = 4,
    /// The inner source address is not the peer's.
    SpoofedSource = 5,
    /// The inner packet is not IPv4, or its length field disagrees with the datagram.
    BadInner = 6,
    /// The inner destination is not this node's overlay address: a PLAIN peer (or whoever
    /// shares its address) may not use this node to reach anything else.
    WrongDestination = 7,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: u32 = 8;

    /// Stable snake_case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::BadHeader => "bad_header",
            Self::UnknownPeer => "unknown_peer",
            Self::WrongNode => "wrong_node",
            Self::SpoofedSource => "spoofed_source",
            Self::BadInner => "bad_inner",
            Self::WrongDestination => "wrong_destination",
        }
    }
}

impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => Self::Truncated,
            WireError::BadVersion(_) => Self::BadVersion,
            WireError::BadType(_) | WireError::ReservedNotZero => Self::BadHeader,
        }
    }
}

/// What the receiver knows about the peer a datagram came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct KnownPeer {
    /// The peer's node index (CLAD header sender id).
    pub node_index: u32,
    /// The inner source address the peer may use (its overlay address), network order.
    pub overlay_ip: [u8; 4],
}

/// Writes the CLAD header for a DATA_PLAIN packet from `node_index` into `out[..8]` and copies
/// `inner` after it; returns the datagram length, or `None` if `out` is too small.
pub fn encapsulate(node_index: u32, inner: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = CLAD_HDR_LEN + inner.len();
    let out = out.get_mut(..len)?;
    out[..CLAD_HDR_LEN]
        .copy_from_slice(&CladHeader::new(CladType::DataPlain, 0, node_index).to_bytes());
    out[CLAD_HDR_LEN..].copy_from_slice(inner);
    Some(len)
}

/// Validates a DATA_PLAIN datagram from the peer `from` (the receiver's lookup of the outer
/// source address; `None` when unknown) and returns the inner IPv4 packet. The inner source
/// must be the peer's overlay address; [`decapsulate_owned`] also accepts its prefixes.
pub fn decapsulate(datagram: &[u8], from: Option<KnownPeer>) -> Result<&[u8], DropReason> {
    decapsulate_owned(datagram, from, |_| Owner::Nobody)
}

/// [`decapsulate`] with advertised prefixes: the inner source may also lie in a prefix that
/// `owner` (a longest prefix match over the peer table) says the sending peer owns.
pub fn decapsulate_owned(
    datagram: &[u8],
    from: Option<KnownPeer>,
    owner: impl FnOnce([u8; 4]) -> Owner,
) -> Result<&[u8], DropReason> {
    let header = CladHeader::decode(datagram)?;
    if header.ty() != Some(CladType::DataPlain) {
        return Err(DropReason::BadHeader);
    }
    let peer = from.ok_or(DropReason::UnknownPeer)?;
    if header.node_id() != peer.node_index {
        return Err(DropReason::WrongNode);
    }
    let inner = &datagram[CLAD_HDR_LEN..];
    let Some(&[ver_ihl, _, len_hi, len_lo]) = inner.first_chunk::<4>() else {
        return Err(DropReason::Truncated);
    };
    let total = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if ver_ihl >> 4 != 4
        || inner.len() < 20
        || total != inner.len()
        || usize::from(ver_ihl & 0x0f) * 4 < 20
    {
        return Err(DropReason::BadInner);
    }
    let src = [inner[12], inner[13], inner[14], inner[15]];
    crate::rx::check_source(src, &peer, owner)?;
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: KnownPeer = KnownPeer {
        node_index: 0x0a4d_0003,
        overlay_ip: [10, 77, 0, 3],
    };

    fn ipv4(src: [u8; 4], payload: usize) -> [u8; 64] {
        let mut p = [0u8; 64];
        let total = (20 + payload) as u16;
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p
    }

    fn datagram(node: u32, inner: &[u8]) -> ([u8; 128], usize) {
        let mut out = [0u8; 128];
        let n = encapsulate(node, inner, &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn round_trip() {
        let inner = ipv4(PEER.overlay_ip, 8);
        let (d, n) = datagram(PEER.node_index, &inner[..28]);
        assert_eq!(&d[..8], &[0x11, 0, 0, 0, 0x0a, 0x4d, 0, 3]);
        assert_eq!(decapsulate(&d[..n], Some(PEER)), Ok(&inner[..28]));
        assert_eq!(encapsulate(1, &inner, &mut [0u8; 10]), None);
    }

    #[test]
    fn every_drop_reason() {
        let good = ipv4(PEER.overlay_ip, 8);
        let (d, n) = datagram(PEER.node_index, &good[..28]);
        let cases: [(&[u8], Option<KnownPeer>, DropReason); 7] = [
            (&d[..5], Some(PEER), DropReason::Truncated),
            (
                &[0x21, 0, 0, 0, 0, 0, 0, 0],
                Some(PEER),
                DropReason::BadVersion,
            ),
            (
                &[0x13, 0, 0, 0, 0x0a, 0x4d, 0, 3],
                Some(PEER),
                DropReason::BadHeader,
            ),
            (&d[..n], None, DropReason::UnknownPeer),
            (
                &d[..n],
                Some(KnownPeer {
                    node_index: 9,
                    ..PEER
                }),
                DropReason::WrongNode,
            ),
            (&d[..n - 1], Some(PEER), DropReason::BadInner),
            (&d[..10], Some(PEER), DropReason::Truncated),
        ];
        for (input, from, reason) in cases {
            assert_eq!(decapsulate(input, from), Err(reason), "{input:02x?}");
        }
        let spoofed = ipv4([10, 77, 0, 99], 8);
        let (d, n) = datagram(PEER.node_index, &spoofed[..28]);
        assert_eq!(
            decapsulate(&d[..n], Some(PEER)),
            Err(DropReason::SpoofedSource)
        );
        let names: [&str; DropReason::COUNT as usize] = [
            DropReason::Truncated.name(),
            DropReason::BadVersion.name(),
            DropReason::BadHeader.name(),
            DropReason::UnknownPeer.name(),
            DropReason::WrongNode.name(),
            DropReason::SpoofedSource.name(),
            DropReason::BadInner.name(),
            DropReason::WrongDestination.name(),
        ];
        assert!(
            names
                .iter()
                .enumerate()
                .all(|(i, a)| names[i + 1..].iter().all(|b| a != b))
        );
    }
}
