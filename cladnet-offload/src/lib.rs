//! Packet logic for Linux TUN offloads in the userspace dataplane: the device is opened with
//! `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 [| TUN_F_USO4 |
//! TUN_F_USO6])`, so every read and write carries a [`VirtioNetHdr`], reads may return up to
//! 64 KiB TCP (or UDP) super-packets with partial checksums, and writes may hand the kernel
//! merged TCP super-packets. Same approach as wireguard-go's `tun/offload_linux.go`.
//!
//! - Read side ([`segment`]): [`split_tun_read`] then [`Segmenter`] turns one read into
//!   MSS-sized wire packets with complete headers and checksums, each written into a caller
//!   buffer (where the encryption headroom is); [`complete_checksum`] finishes a plain
//!   packet's partial checksum in place.
//! - Write side ([`coalesce`]): [`Coalescer`] merges a batch of decapsulated packets into GSO
//!   super-packets (GRO), writing each virtio header into the buffer's headroom.
//! - [`checksum`]: RFC 1071 one's complement sums, pseudo-headers, RFC 1624 updates.
//!
//! Everything here is pure: no IO, no clocks, no allocation on the per-packet path (the
//! coalescer appends merged payloads to buffers the caller sized). The device itself (open,
//! `TUNSETOFFLOAD`, reads and writes) is the agent's `sys::tun`; this crate only sees bytes.
//!
//! ```
//! use cladnet_offload::{Coalescer, Segmenter, VNET_HDR_LEN, split_tun_read};
//!
//! // Read side: one TUN read (here a plain, complete packet under an all-zero header).
//! let mut read = vec![0u8; VNET_HDR_LEN];
//! read.extend_from_slice(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
//! let (hdr, pkt) = split_tun_read(&read)?;
//! let mut seg = Segmenter::new(&hdr, pkt)?;
//! let mut out = [0u8; 2048]; // e.g. after the WireGuard header's headroom
//! while let Some(len) = seg.next_into(&mut out[16..])? {
//!     let _wire_packet = &out[16..16 + len]; // encrypt and send
//! }
//!
//! // Write side: decrypted packets, each after `offset` bytes of headroom.
//! let offset = 16;
//! let mut bufs = vec![[vec![0u8; offset], pkt.to_vec()].concat()];
//! let (mut gro, mut to_write) = (Coalescer::new(), Vec::new());
//! gro.coalesce(&mut bufs, offset, &mut to_write)?;
//! for &i in &to_write {
//!     let _tun_write = &bufs[i][offset - VNET_HDR_LEN..]; // virtio header + packet
//! }
//! # Ok::<(), cladnet_offload::OffloadError>(())
//! ```
#![forbid(unsafe_code)]

pub mod checksum;
pub mod coalesce;
mod ip;
pub mod segment;
pub mod vnet;

#[cfg(test)]
mod tests;

pub use coalesce::{Coalescer, GroStats};
pub use ip::{
    IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    TCP_URG,
};
pub use segment::{Segmenter, complete_checksum};
pub use vnet::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN, VirtioNetHdr, split_tun_read,
};

/// Why a virtio header and packet cannot be processed.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum OffloadError {
    /// Fewer than [`VNET_HDR_LEN`] bytes where a virtio header belongs.
    #[error("{0} bytes is too short for a virtio-net header")]
    ShortVnetHdr(usize),
    /// The packet ends inside a header.
    #[error("packet of {len} bytes is too short for its {what}")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Packet length.
        len: usize,
    },
    /// The IP version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownIpVersion(u8),
    /// The IPv4 header length or an IPv6 extension header chain does not fit the packet.
    #[error("IP header length {0} is invalid for the packet")]
    BadIpHeaderLen(usize),
    /// An IPv6 fragment header in a GSO packet.
    #[error("GSO packet is a fragment")]
    Fragment,
    /// A `gso_type` this code does not segment (e.g. UFO).
    #[error("unsupported virtio GSO type {0:#04x}")]
    UnsupportedGsoType(u8),
    /// `GSO_TCPV4` on an IPv6 packet or `GSO_TCPV6` on an IPv4 one.
    #[error("GSO type {gso_type:#04x} does not match an IPv{} packet", if *ipv6 { 6 } else { 4 })]
    GsoTypeMismatch {
        /// The header's `gso_type`.
        gso_type: u8,
        /// Whether the packet is IPv6.
        ipv6: bool,
    },
    /// The packet's transport protocol is not the one the GSO type implies.
    #[error("GSO type needs IP protocol {expected}, packet carries {found}")]
    ProtocolMismatch {
        /// Protocol the GSO type implies.
        expected: u8,
        /// Protocol the packet carries.
        found: u8,
    },
    /// `csum_start`/`csum_offset` point outside the packet, or (for GSO) elsewhere than the
    /// transport header's checksum field.
    #[error("checksum location {start}+{offset} is invalid for a {len}-byte packet")]
    ChecksumLocation {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Packet length.
        len: usize,
    },
    /// A GSO packet with `gso_size` 0.
    #[error("GSO packet has gso_size 0")]
    ZeroGsoSize,
    /// The TCP data offset is below 20 or beyond the packet.
    #[error("transport header length {0} is invalid for the packet")]
    BadTransportHeaderLen(usize),
    /// A segment would not fit the IP length field.
    #[error("a {0}-byte segment exceeds the IP length limit")]
    SegmentTooLarge(usize),
    /// The caller's buffer cannot hold the segment.
    #[error("segment needs {needed} bytes, buffer has {available}")]
    OutputTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A segment index beyond the segment count.
    #[error("segment {index} requested of {count}")]
    NoSuchSegment {
        /// Index requested.
        index: usize,
        /// Number of segments.
        count: usize,
    },
    /// The coalescer needs [`VNET_HDR_LEN`] bytes before each packet.
    #[error("packet offset {offset} leaves no room for the virtio-net header")]
    NoHeadroom {
        /// The offset given.
        offset: usize,
    },
}

/// Fuzz entry point: exercises header parsing, segmentation, in-place checksum completion
/// and coalescing on arbitrary bytes, and asserts their invariants (every produced segment's
/// checksums verify; coalescer output re-segments into exactly as many packets as went in).
/// Never panics unless an invariant is broken.
pub fn fuzz_offload(data: &[u8]) {
    const HEADROOM: usize = VNET_HDR_LEN + 6;
    const MAX_SEGMENTS: usize = 256;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    if let Ok((hdr, pkt)) = split_tun_read(data) {
        let mut in_place = pkt.to_vec();
        let completed = complete_checksum(&hdr, &mut in_place);
        if let Ok(seg) = Segmenter::new(&hdr, pkt) {
            let mut payload = 0;
            for i in 0..seg.len().min(MAX_SEGMENTS) {
                let mut buf = vec![0u8; HEADROOM + seg.segment_len(i)];
                let len = seg
                    .write_segment(i, &mut buf[HEADROOM..])
                    .expect("sized by segment_len");
                assert_eq!(len, seg.segment_len(i));
                if seg.is_gso() {
                    let (ok, n) = invariants::segment_checksums_ok(&buf[HEADROOM..]);
                    assert!(ok, "segment {i} has a bad checksum");
                    payload += n;
                } else {
                    assert!(completed.is_ok());
                    assert_eq!(&buf[HEADROOM..], &in_place[..]);
                }
                batch.push(buf);
            }
            if seg.is_gso() && seg.len() <= MAX_SEGMENTS {
                assert_eq!(payload, pkt.len() - seg.header_len().unwrap_or(0));
            }
        }
    }
    // Raw slices of the input as packets, too.
    if let Some((&first, rest)) = data.split_first() {
        let step = usize::from(first).max(1) * 4;
        for chunk in rest.chunks(step).take(16) {
            let mut buf = vec![0u8; HEADROOM];
            buf.extend_from_slice(chunk);
            batch.push(buf);
        }
    }
    for mut coalescer in [Coalescer::new(), Coalescer::with_udp()] {
        let mut batch = batch.clone();
        let mut to_write = Vec::new();
        let stats = coalescer
            .coalesce(&mut batch, HEADROOM, &mut to_write)
            .expect("enough headroom");
        assert_eq!(stats.writes, to_write.len());
        let mut resegmented = 0;
        for &i in &to_write {
            let (hdr, pkt) =
                split_tun_read(&batch[i][HEADROOM - VNET_HDR_LEN..]).expect("header written");
            let seg = Segmenter::new(&hdr, pkt).expect("coalescer output must segment");
            resegmented += seg.len();
        }
        assert_eq!(resegmented, stats.packets);
    }
}

/// Independent checks used by [`fuzz_offload`].
mod invariants {
    use super::{checksum, ip};

    /// Whether a segment's IPv4 header checksum (if IPv4) and TCP/UDP checksum verify, and
    /// its transport payload length. Recomputed from the packet alone.
    pub(super) fn segment_checksums_ok(pkt: &[u8]) -> (bool, usize) {
        let Ok((proto, l4, v6)) = ip::ip_transport(pkt) else {
            return (false, 0);
        };
        if !v6 && !checksum::verify(&pkt[..l4], 0) {
            return (false, 0);
        }
        let hlen = match proto {
            ip::IPPROTO_TCP if pkt.len() >= l4 + 20 => usize::from(pkt[l4 + 12] >> 4) * 4,
            ip::IPPROTO_UDP if pkt.len() >= l4 + 8 => 8,
            _ => return (false, 0),
        };
        let (a, n) = ip::addr_range(v6);
        let pseudo = checksum::pseudo_header(
            &pkt[a..a + n],
            &pkt[a + n..a + 2 * n],
            proto,
            (pkt.len() - l4) as u32,
        );
        let ok = checksum::verify(&pkt[l4..], pseudo) && pkt.len() >= l4 + hlen;
        (ok, pkt.len().saturating_sub(l4 + hlen))
    }
}
