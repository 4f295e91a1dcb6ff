//! The outer headers of a PLAIN datagram on an IPv4 underlay, as the in-kernel encapsulator
//! writes them: IPv4 (no options, DF, TTL 64, checksum computed) + UDP (checksum 0, legal on
//! IPv4) + the CLAD header of [`crate::plain::encapsulate`]. What follows them is the inner
//! packet, unchanged, so the UDP payload is byte for byte the userspace engine's.

use crate::wire::{
    CladHeader, CladType, IPPROTO_UDP, IPV4_HDR_LEN, PLAIN_OVERHEAD_V4, UDP_HDR_LEN,
};

/// Time to live of outer packets.
pub const OUTER_TTL: u8 = 64;

/// Addresses and ports of the outer headers (addresses in network order).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct OuterV4 {
    /// Local underlay address.
    pub src_ip: [u8; 4],
    /// Peer underlay address.
    pub dst_ip: [u8; 4],
    /// Local tunnel port, network order.
    pub src_port: [u8; 2],
    /// Peer tunnel port, network order.
    pub dst_port: [u8; 2],
}

impl OuterV4 {
    /// The 36 bytes in front of an inner packet of `inner_len` bytes sent by `node_index`.
    /// Lengths above 65535 (a GSO packet the kernel segments later) are capped; segmentation
    /// rewrites them per segment.
    #[inline(always)]
    pub fn headers(&self, node_index: u32, inner_len: u32) -> [u8; PLAIN_OVERHEAD_V4] {
        let mut out = [0u8; PLAIN_OVERHEAD_V4];
        let (ip, rest) = out.split_at_mut(IPV4_HDR_LEN);
        let (udp, clad) = rest.split_at_mut(UDP_HDR_LEN);
        // IPv4: version 4, IHL 5, TOS 0, id 0, DF, TTL, UDP, checksum last.
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&clamp16(inner_len + PLAIN_OVERHEAD_V4 as u32));
        ip[6] = 0x40;
        ip[8] = OUTER_TTL;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&self.src_ip);
        ip[16..20].copy_from_slice(&self.dst_ip);
        let mut hdr = [0u8; IPV4_HDR_LEN];
        hdr.copy_from_slice(ip);
        ip[10..12].copy_from_slice(&ipv4_checksum(&hdr));
        // UDP: ports, length; the checksum stays 0 (allowed on IPv4; the inner packet carries
        // its own checksums).
        udp[0..2].copy_from_slice(&self.src_port);
        udp[2..4].copy_from_slice(&self.dst_port);
        let udp_len = inner_len + (PLAIN_OVERHEAD_V4 - IPV4_HDR_LEN) as u32;
        udp[4..6].copy_from_slice(&clamp16(udp_len));
        clad.copy_from_slice(&CladHeader::new(CladType::DataPlain, 0, node_index).to_bytes());
        out
    }
}

#[inline(always)]
fn clamp16(v: u32) -> [u8; 2] {
    (if v > 0xffff { 0xffff } else { v as u16 }).to_be_bytes()
}

/// The IPv4 header checksum of `hdr` (whose checksum field must be zero, or the result is 0
/// for a header with a correct checksum), in network order.
#[inline(always)]
pub fn ipv4_checksum(hdr: &[u8; IPV4_HDR_LEN]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_HDR_LEN {
        sum += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plain;

    #[test]
    fn headers_are_valid_and_match_the_userspace_payload() {
        let outer = OuterV4 {
            src_ip: [192, 168, 1, 10],
            dst_ip: [203, 0, 113, 7],
            src_port: 8055u16.to_be_bytes(),
            dst_port: 51000u16.to_be_bytes(),
        };
        let inner = [0x45u8; 84];
        let h = outer.headers(0x0a4d_0003, inner.len() as u32);
        // IPv4: checksum verifies, lengths cover the whole datagram.
        let ip: [u8; 20] = h[..20].try_into().unwrap();
        assert_eq!(ipv4_checksum(&ip), [0, 0]);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 36 + 84);
        assert_eq!(&h[12..16], &[192, 168, 1, 10]);
        assert_eq!(&h[16..20], &[203, 0, 113, 7]);
        assert_eq!((h[6], h[8], h[9]), (0x40, 64, 17));
        // UDP: ports, length, zero checksum.
        assert_eq!(&h[20..22], &8055u16.to_be_bytes());
        assert_eq!(&h[22..24], &51000u16.to_be_bytes());
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 16 + 84);
        assert_eq!(&h[26..28], &[0, 0]);
        // CLAD header + inner = exactly what plain::encapsulate produces.
        let mut payload = [0u8; 92];
        let n = plain::encapsulate(0x0a4d_0003, &inner, &mut payload).unwrap();
        assert_eq!(&h[28..], &payload[..8]);
        assert_eq!(n, 8 + inner.len());
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // Example header from RFC 1071 style references (checksum 0xb861).
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&hdr), [0xb8, 0x61]);
    }

    #[test]
    fn giant_lengths_are_capped() {
        let outer = OuterV4 {
            src_ip: [1, 1, 1, 1],
            dst_ip: [2, 2, 2, 2],
            src_port: [0, 1],
            dst_port: [0, 2],
        };
        let h = outer.headers(1, 70_000);
        assert_eq!(&h[2..4], &[0xff, 0xff]);
        assert_eq!(&h[24..26], &[0xff, 0xff]);
    }
}
