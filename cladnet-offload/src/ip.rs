//! IP and transport header layout shared by the segmenter and the coalescer.

pub use cladnet_common::wire::{IPPROTO_TCP, IPPROTO_UDP};
pub(super) use cladnet_common::wire::{IPV4_HDR_LEN, UDP_HDR_LEN};

use super::OffloadError;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag URG.
pub const TCP_URG: u8 = 0x20;
/// TCP flag ECE.
pub const TCP_ECE: u8 = 0x40;
/// TCP flag CWR.
pub const TCP_CWR: u8 = 0x80;

/// Offset of the flags byte in a TCP header.
pub(super) const TCP_FLAGS_OFF: usize = 13;
/// Offset of the checksum in a TCP header.
pub(super) const TCP_CSUM_OFF: usize = 16;
/// Offset of the checksum in a UDP header.
pub(super) const UDP_CSUM_OFF: usize = 6;
/// Minimum TCP header length.
pub(super) const TCP_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
pub(super) const IPV6_HLEN: usize = 40;
/// Largest IPv4 total length / IPv6 payload length.
pub(super) const MAX_IP_LEN: usize = 65535;

/// Reads a big-endian u16 at `off` (caller guarantees bounds).
#[inline]
pub(super) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Reads a big-endian u32 at `off` (caller guarantees bounds).
#[inline]
pub(super) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Writes a big-endian u16 at `off` (caller guarantees bounds).
#[inline]
pub(super) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u32 at `off` (caller guarantees bounds).
#[inline]
pub(super) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// Source and destination address of an IP packet whose fixed header is present: offsets and
/// length (4 or 16).
#[inline]
pub(super) fn addr_range(v6: bool) -> (usize, usize) {
    if v6 { (8, 16) } else { (12, 4) }
}

/// Where an IPv4 packet's transport header starts, and its protocol.
pub(super) fn ipv4_transport(pkt: &[u8]) -> Result<(u8, usize), OffloadError> {
    if pkt.len() < IPV4_HDR_LEN {
        return Err(OffloadError::Truncated {
            what: "IPv4 header",
            len: pkt.len(),
        });
    }
    let ihl = usize::from(pkt[0] & 0x0F) * 4;
    if ihl < IPV4_HDR_LEN || ihl > pkt.len() {
        return Err(OffloadError::BadIpHeaderLen(ihl));
    }
    Ok((pkt[9], ihl))
}

/// Where an IPv6 packet's transport header starts, and its protocol, skipping hop-by-hop,
/// routing, destination-options and AH extension headers. Fragments are refused.
pub(super) fn ipv6_transport(pkt: &[u8]) -> Result<(u8, usize), OffloadError> {
    if pkt.len() < IPV6_HLEN {
        return Err(OffloadError::Truncated {
            what: "IPv6 header",
            len: pkt.len(),
        });
    }
    let mut next = pkt[6];
    let mut off = IPV6_HLEN;
    // A handful of extension headers at most; more is not something a kernel offloads.
    for _ in 0..8 {
        let len = match next {
            0 | 43 | 60 => pkt.get(off + 1).map(|l| (usize::from(*l) + 1) * 8),
            51 => pkt.get(off + 1).map(|l| (usize::from(*l) + 2) * 4),
            44 => return Err(OffloadError::Fragment),
            _ => return Ok((next, off)),
        };
        let len = len.ok_or(OffloadError::BadIpHeaderLen(off))?;
        next = pkt[off];
        off += len;
        if off > pkt.len() {
            return Err(OffloadError::BadIpHeaderLen(off));
        }
    }
    Err(OffloadError::BadIpHeaderLen(off))
}

/// Where any IP packet's transport header starts, its protocol, and whether it is IPv6.
pub(super) fn ip_transport(pkt: &[u8]) -> Result<(u8, usize, bool), OffloadError> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => ipv4_transport(pkt).map(|(p, o)| (p, o, false)),
        Some(6) => ipv6_transport(pkt).map(|(p, o)| (p, o, true)),
        Some(v) => Err(OffloadError::UnknownIpVersion(v)),
        None => Err(OffloadError::Truncated {
            what: "IP header",
            len: 0,
        }),
    }
}
