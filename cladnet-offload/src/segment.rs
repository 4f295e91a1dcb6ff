//! The TUN read side: turn what the kernel hands a vnet-header TUN (a TSO/USO super-packet,
//! or a packet whose checksum is only partial) into ordinary wire packets.
//!
//! A [`Segmenter`] validates the header and packet once, then writes segment *i* into any
//! caller buffer on demand: nothing is allocated, the input is only read, and each segment
//! costs one copy of its bytes plus one checksum pass over its transport part.
//!
//! Every segment gets: the original IP header with the IPv4 total length, identification
//! (first id + *i*) and header checksum, or the IPv6 payload length, rewritten; the TCP
//! sequence number advanced by *i* × `gso_size`, FIN and PSH kept only on the last segment and
//! CWR only on the first (as Linux's `tcp_gso_segment` does), or the UDP length rewritten;
//! and a full transport checksum including the pseudo-header (a UDP checksum that computes
//! to zero is sent as `0xFFFF`). The kernel's `hdr_len` is not trusted: it is recomputed
//! from the packet (the kernel may set it to the whole first segment on forwarded traffic).

use super::{
    OffloadError,
    checksum::{self, pseudo_header},
    ip::{
        IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, MAX_IP_LEN, TCP_CSUM_OFF, TCP_CWR, TCP_FIN,
        TCP_FLAGS_OFF, TCP_MIN_HLEN, TCP_PSH, UDP_CSUM_OFF, UDP_HDR_LEN, addr_range, be16, be32,
        ip_transport, put16, put32,
    },
    vnet::{
        VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
    },
};

/// Completes the partial checksum of a non-GSO packet in place: sums from `csum_start` to
/// the end (the checksum field holds the pseudo-header sum, which is thereby included) and
/// stores the complement at `csum_start + csum_offset` (`0xFFFF` for a zero result, as
/// Linux's `skb_checksum_help` does). Does nothing unless `hdr` has `NEEDS_CSUM`.
///
/// This is the zero-copy path for the common case of a plain packet read from the TUN.
pub fn complete_checksum(hdr: &VirtioNetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    if let Some((start, field)) = partial_checksum_at(hdr, pkt.len())? {
        write_partial(pkt, start, field);
    }
    Ok(())
}

fn partial_checksum_at(
    hdr: &VirtioNetHdr,
    len: usize,
) -> Result<Option<(usize, usize)>, OffloadError> {
    if !hdr.needs_csum() {
        return Ok(None);
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if start > len || field + 2 > len {
        return Err(OffloadError::ChecksumLocation {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            len,
        });
    }
    Ok(Some((start, field)))
}

fn write_partial(pkt: &mut [u8], start: usize, field: usize) {
    let c = checksum::checksum(&pkt[start..], 0);
    put16(pkt, field, if c == 0 { 0xFFFF } else { c });
}

/// What the segmenter does with the packet.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// One output, a copy, with the partial checksum completed when `Some((start, field))`.
    Single(Option<(usize, usize)>),
    /// Real segmentation.
    Gso(Gso),
}

#[derive(Clone, Copy, Debug)]
struct Gso {
    v6: bool,
    tcp: bool,
    /// IP header length including IPv6 extension headers (= transport offset).
    ip_hlen: usize,
    /// IP + transport header length.
    hdr_len: usize,
    gso_size: usize,
    /// Pseudo-header sum without the length.
    pseudo: u16,
    seq: u32,
    ipv4_id: u16,
    tcp_flags: u8,
}

/// Splits one packet read from a vnet-header TUN into wire-ready segments (see the
/// [module docs](super) for an example). Borrows the packet; cheap to create.
#[derive(Clone, Debug)]
pub struct Segmenter<'a> {
    pkt: &'a [u8],
    plan: Plan,
    count: usize,
    next: usize,
}

impl<'a> Segmenter<'a> {
    /// Validates `hdr` against `pkt` (the bytes after the virtio header).
    ///
    /// A `GSO_NONE` packet yields itself, with a `NEEDS_CSUM` checksum completed; it is not
    /// otherwise inspected, so non-IP packets pass. A GSO packet must be IPv4 or IPv6 (with
    /// hop-by-hop, routing, destination or AH extension headers allowed) carrying TCP for
    /// `TCPV4`/`TCPV6` or UDP for `UDP_L4`, with a `csum_start`/`csum_offset` (when
    /// `NEEDS_CSUM` is set) that match it, a non-zero `gso_size`, and segments that fit an IP
    /// length field. Whether or not `NEEDS_CSUM` is set, segments get full checksums.
    pub fn new(hdr: &VirtioNetHdr, pkt: &'a [u8]) -> Result<Self, OffloadError> {
        let kind = hdr.gso_kind();
        if kind == VIRTIO_NET_HDR_GSO_NONE {
            let csum = partial_checksum_at(hdr, pkt.len())?;
            return Ok(Self {
                pkt,
                plan: Plan::Single(csum),
                count: 1,
                next: 0,
            });
        }
        let (proto, ip_hlen, v6) = ip_transport(pkt)?;
        let (want_proto, csum_off) = match (kind, v6) {
            (VIRTIO_NET_HDR_GSO_TCPV4, false) | (VIRTIO_NET_HDR_GSO_TCPV6, true) => {
                (IPPROTO_TCP, TCP_CSUM_OFF)
            }
            (VIRTIO_NET_HDR_GSO_UDP_L4, _) => (IPPROTO_UDP, UDP_CSUM_OFF),
            (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6, _) => {
                return Err(OffloadError::GsoTypeMismatch {
                    gso_type: hdr.gso_type,
                    ipv6: v6,
                });
            }
            _ => return Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
        };
        if proto != want_proto {
            return Err(OffloadError::ProtocolMismatch {
                expected: want_proto,
                found: proto,
            });
        }
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != ip_hlen || usize::from(hdr.csum_offset) != csum_off)
        {
            return Err(OffloadError::ChecksumLocation {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: pkt.len(),
            });
        }
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let tcp = proto == IPPROTO_TCP;
        let l4_hlen = if tcp {
            if pkt.len() < ip_hlen + TCP_MIN_HLEN {
                return Err(OffloadError::Truncated {
                    what: "TCP header",
                    len: pkt.len(),
                });
            }
            let doff = usize::from(pkt[ip_hlen + 12] >> 4) * 4;
            if doff < TCP_MIN_HLEN || ip_hlen + doff > pkt.len() {
                return Err(OffloadError::BadTransportHeaderLen(doff));
            }
            doff
        } else {
            if pkt.len() < ip_hlen + UDP_HDR_LEN {
                return Err(OffloadError::Truncated {
                    what: "UDP header",
                    len: pkt.len(),
                });
            }
            UDP_HDR_LEN
        };
        let hdr_len = ip_hlen + l4_hlen;
        let gso_size = usize::from(hdr.gso_size);
        let payload = pkt.len() - hdr_len;
        let count = payload.div_ceil(gso_size).max(1);
        let largest = hdr_len + payload.min(gso_size);
        let limit = MAX_IP_LEN + if v6 { IPV6_HLEN } else { 0 };
        if largest > limit {
            return Err(OffloadError::SegmentTooLarge(largest));
        }
        let (a, n) = addr_range(v6);
        let gso = Gso {
            v6,
            tcp,
            ip_hlen,
            hdr_len,
            gso_size,
            pseudo: pseudo_header(&pkt[a..a + n], &pkt[a + n..a + 2 * n], proto, 0),
            seq: if tcp { be32(pkt, ip_hlen + 4) } else { 0 },
            ipv4_id: if v6 { 0 } else { be16(pkt, 4) },
            tcp_flags: if tcp { pkt[ip_hlen + TCP_FLAGS_OFF] } else { 0 },
        };
        Ok(Self {
            pkt,
            plan: Plan::Gso(gso),
            count,
            next: 0,
        })
    }

    /// Total number of segments (at least 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: there is at least one segment. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Segments not yet produced by [`next_into`](Self::next_into) or
    /// [`write_batch`](Self::write_batch).
    pub fn remaining(&self) -> usize {
        self.count - self.next
    }

    /// Whether the packet is really segmented (as opposed to passed through as one).
    pub fn is_gso(&self) -> bool {
        matches!(self.plan, Plan::Gso(_))
    }

    /// The segment size (`gso_size`), or `None` for a pass-through packet.
    pub fn gso_size(&self) -> Option<usize> {
        match self.plan {
            Plan::Gso(g) => Some(g.gso_size),
            Plan::Single(_) => None,
        }
    }

    /// The IP plus transport header length every segment repeats (recomputed from the
    /// packet), or `None` for a pass-through packet.
    pub fn header_len(&self) -> Option<usize> {
        match self.plan {
            Plan::Gso(g) => Some(g.hdr_len),
            Plan::Single(_) => None,
        }
    }

    /// Length in bytes of segment `i` (0 when out of range).
    pub fn segment_len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        match self.plan {
            Plan::Single(_) => self.pkt.len(),
            Plan::Gso(g) => g.hdr_len + self.payload_range(&g, i).len(),
        }
    }

    /// The largest segment's length: an output buffer this big fits every segment.
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    fn payload_range(&self, g: &Gso, i: usize) -> std::ops::Range<usize> {
        let start = (g.hdr_len + i * g.gso_size).min(self.pkt.len());
        start..(start + g.gso_size).min(self.pkt.len())
    }

    /// Writes segment `i` to the start of `out`, returning its length.
    pub fn write_segment(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        if i >= self.count {
            return Err(OffloadError::NoSuchSegment {
                index: i,
                count: self.count,
            });
        }
        let len = self.segment_len(i);
        let available = out.len();
        let out = out.get_mut(..len).ok_or(OffloadError::OutputTooSmall {
            needed: len,
            available,
        })?;
        match self.plan {
            Plan::Single(csum) => {
                out.copy_from_slice(self.pkt);
                if let Some((start, field)) = csum {
                    write_partial(out, start, field);
                }
            }
            Plan::Gso(g) => self.build(&g, i, out),
        }
        Ok(len)
    }

    fn build(&self, g: &Gso, i: usize, out: &mut [u8]) {
        let payload = self.payload_range(g, i);
        let total = out.len();
        let (ip, l4) = (g.ip_hlen, g.hdr_len);
        out[..l4].copy_from_slice(&self.pkt[..l4]);
        out[l4..].copy_from_slice(&self.pkt[payload]);
        // `new` bounded every segment's length by the IP length fields.
        if g.v6 {
            put16(out, 4, (total - IPV6_HLEN) as u16);
        } else {
            put16(out, 2, total as u16);
            put16(out, 4, g.ipv4_id.wrapping_add(i as u16));
            put16(out, 10, 0);
            let c = checksum::checksum(&out[..ip], 0);
            put16(out, 10, c);
        }
        let csum_at = if g.tcp {
            put32(out, ip + 4, g.seq.wrapping_add((i * g.gso_size) as u32));
            let mut flags = g.tcp_flags;
            if i + 1 != self.count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                flags &= !TCP_CWR;
            }
            out[ip + TCP_FLAGS_OFF] = flags;
            ip + TCP_CSUM_OFF
        } else {
            put16(out, ip + 4, (total - ip) as u16);
            ip + UDP_CSUM_OFF
        };
        put16(out, csum_at, 0);
        let l4_len = (total - ip) as u16;
        let c = checksum::checksum(&out[ip..], checksum::add(g.pseudo, l4_len));
        put16(out, csum_at, if c == 0 && !g.tcp { 0xFFFF } else { c });
    }

    /// Writes the next segment to the start of `out`: `Ok(None)` once all were produced.
    /// On error (buffer too small) the segment is not consumed.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<usize>, OffloadError> {
        if self.next == self.count {
            return Ok(None);
        }
        let len = self.write_segment(self.next, out)?;
        self.next += 1;
        Ok(Some(len))
    }

    /// Writes the next segments into `bufs[k][offset..]`, their lengths into `sizes[k]`, for
    /// as many as `bufs` and `sizes` have room for; returns how many were written. Call
    /// again while [`remaining`](Self::remaining) is non-zero. A buffer too small for its
    /// segment ends the batch there; it is an error only when it is the first.
    pub fn write_batch<B: AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        offset: usize,
        sizes: &mut [usize],
    ) -> Result<usize, OffloadError> {
        let mut n = 0;
        for (buf, size) in bufs.iter_mut().zip(sizes.iter_mut()) {
            let buf = buf.as_mut();
            let available = buf.len();
            let written = match buf.get_mut(offset..) {
                Some(out) => self.next_into(out),
                None => Err(OffloadError::OutputTooSmall {
                    needed: offset.saturating_add(self.segment_len(self.next)),
                    available,
                }),
            };
            match written {
                Ok(Some(len)) => *size = len,
                Ok(None) => break,
                // Report what was written; the next call reports the error.
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            }
            n += 1;
        }
        Ok(n)
    }
}
