//! The virtio-net header a Linux TUN device opened with `IFF_VNET_HDR` puts before every
//! packet it returns and expects before every packet written to it (`struct virtio_net_hdr`,
//! 10 bytes, the default `TUNSETVNETHDRSZ`).
//!
//! ```text
//! 0        1         2         4          6            8             10
//! | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset |
//! ```
//!
//! Multi-byte fields are little-endian. The kernel uses the host's byte order for a TUN
//! device unless told otherwise, which is little-endian on every host the agent targets; a
//! big-endian host would have to select little-endian with `TUNSETVNETLE`.

use super::OffloadError;

/// Length of the virtio-net header on the wire.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end of the packet still has to be computed
/// and stored at `csum_start + csum_offset`; the field holds the pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated (receive side only).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: IPv4 TCP segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO; obsolete, unsupported here).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: IPv6 TCP segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO) for IPv4 or IPv6.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP flow uses ECN (CWR goes on the first segment only).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Length of the IP and transport headers (a hint; the segmenter recomputes it).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Offset of the transport header, where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The all-zero header: no GSO, checksum complete. What a plain packet is written with.
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::ShortVnetHdr(buf.len()))?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Writes the wire form into the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn write_to(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let len = buf.len();
        buf.get_mut(..VNET_HDR_LEN)
            .ok_or(OffloadError::ShortVnetHdr(len))?
            .copy_from_slice(&self.encode());
        Ok(())
    }

    /// Whether [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }

    /// Whether this header describes a GSO (to-be-segmented) packet.
    pub fn is_gso(&self) -> bool {
        self.gso_kind() != VIRTIO_NET_HDR_GSO_NONE
    }
}

/// Splits one TUN read (`virtio_net_hdr` followed by the packet) into header and packet.
pub fn split_tun_read(buf: &[u8]) -> Result<(VirtioNetHdr, &[u8]), OffloadError> {
    let hdr = VirtioNetHdr::parse(buf)?;
    Ok((hdr, &buf[VNET_HDR_LEN..]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_layout() {
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 0x0034,
            gso_size: 0x05a8,
            csum_start: 0x0014,
            csum_offset: 0x0010,
        };
        let wire = [0x01, 0x81, 0x34, 0x00, 0xa8, 0x05, 0x14, 0x00, 0x10, 0x00];
        assert_eq!(hdr.encode(), wire);
        assert_eq!(VirtioNetHdr::parse(&wire), Ok(hdr));
        assert!(hdr.needs_csum() && hdr.is_gso());
        assert_eq!(hdr.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(VirtioNetHdr::NONE.encode(), [0; VNET_HDR_LEN]);
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            VirtioNetHdr::parse(&[0; 9]),
            Err(OffloadError::ShortVnetHdr(9))
        );
        assert_eq!(
            VirtioNetHdr::NONE.write_to(&mut [0; 3]),
            Err(OffloadError::ShortVnetHdr(3))
        );
        assert!(split_tun_read(&[]).is_err());
        let (h, p) = split_tun_read(&[0; 12]).unwrap();
        assert_eq!((h, p.len()), (VirtioNetHdr::NONE, 2));
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(b in proptest::array::uniform10(any::<u8>())) {
            let h = VirtioNetHdr::parse(&b).unwrap();
            prop_assert_eq!(h.encode(), b);
        }
    }
}
