//! The TUN write side (GRO): merge a batch of decapsulated inner packets into as few TUN
//! writes as possible, so the kernel's TCP receive path sees 64 KiB super-packets (and, with
//! [`Coalescer::with_udp`], a flow's UDP datagrams go up in one `GSO_UDP_L4` write).
//!
//! # Buffers
//!
//! The batch is `bufs: &mut [Vec<u8>]`, each packet at `bufs[i][offset..]` with at least
//! [`VNET_HDR_LEN`] bytes of headroom before it. [`Coalescer::coalesce`] writes a virtio header
//! into every written packet's headroom and appends merged payloads to the flow's first
//! buffer, so `bufs[i][offset - VNET_HDR_LEN..]` is exactly one TUN `write` for every index
//! it returns. Nothing is copied except merged payloads; give each buffer a capacity of
//! `offset + 65535` and nothing is allocated either (the coalescer's own tables are reused
//! from batch to batch).
//!
//! # What merges
//!
//! A packet is a candidate when it is IPv4 without options or fragmentation, with a valid
//! header checksum and a total length equal to its buffer, or IPv6 whose next header is TCP
//! and whose payload length matches its buffer; and its TCP segment has flags exactly ACK or
//! ACK|PSH and a non-empty payload. It is appended to the flow's most recent item (flow =
//! addresses and ports) when:
//! - the IP headers are equal except length, identification and checksum (so TOS/ECN, TTL,
//!   DF, traffic class and flow label match), and the acknowledgement number, the TCP header
//!   length and the option bytes are equal;
//! - its sequence number is the item's next one (in order, no gap, no overlap);
//! - its payload is no larger than the item's first (`gso_size`), and the item has not yet
//!   taken a shorter segment or a PSH (either ends an item);
//! - the result stays within 65535 bytes;
//! - both its TCP checksum and the item's first packet's verify (checked lazily, only when a
//!   merge is otherwise possible). The kernel recomputes the checksum of a merged packet, so
//!   merging a corrupt segment would launder it; corrupt packets are written unchanged for
//!   the kernel to drop.
//!
//! The merged packet keeps its first segment's headers, with the IP length (and IPv4 header
//! checksum) rewritten, PSH if the last segment had it, the last segment's window, and the
//! pseudo-header sum in the TCP checksum field, under a `NEEDS_CSUM` + `GSO_TCPV4/6` header.
//! Everything else (non-TCP, SYN/FIN/RST/URG/ECE/CWR, IP options, fragments, IPv6 extension
//! headers, bad checksums, trailing bytes) is written unchanged with [`VirtioNetHdr::NONE`].
//!
//! With [`Coalescer::with_udp`], a UDP datagram (IPv4 without options or fragmentation with a
//! valid header checksum, or IPv6 whose next header is UDP; the lengths matching the buffer;
//! a non-empty payload and a non-zero checksum) joins the flow's latest UDP item when the IP
//! headers agree as for TCP, its payload is no larger than the item's first, the item has
//! not taken a shorter one, it holds fewer than 64 datagrams and both checksums verify. The
//! merged packet carries the whole length in its UDP header and the pseudo-header sum in its
//! checksum, under `NEEDS_CSUM` + `GSO_UDP_L4`; the kernel cuts it back into the datagrams
//! (their IPv4 identifications renumbered from the first's) for a socket without `UDP_GRO`.
//!
//! # Order
//!
//! Output order is the order of each item's first packet. A flow's packets are never
//! reordered among themselves: a packet only ever joins the flow's latest item, and a TCP
//! packet of the flow that cannot join ends that item. Packets of different flows may be
//! reordered relative to each other, which is harmless.

use super::{
    OffloadError,
    checksum::{self, pseudo_header},
    ip::{
        IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IPV6_HLEN, MAX_IP_LEN, TCP_ACK, TCP_CSUM_OFF,
        TCP_FLAGS_OFF, TCP_MIN_HLEN, TCP_PSH, UDP_CSUM_OFF, UDP_HDR_LEN, addr_range, be16, be32,
        put16,
    },
    vnet::{
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN, VirtioNetHdr,
    },
};

/// Counters for one [`Coalescer::coalesce`] call.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct GroStats {
    /// Non-empty packets in the batch.
    pub packets: usize,
    /// Buffers to write (indices returned).
    pub writes: usize,
    /// Writes that are merged GSO packets.
    pub gso_writes: usize,
}

/// Reusable GRO state: keep one per TUN writer and call [`coalesce`](Self::coalesce) per
/// batch.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// Whether UDP datagrams merge too (USO writes).
    udp: bool,
    items: Vec<Item>,
    /// Open-addressed flow table: index into `items` of each flow's latest item.
    table: Vec<u32>,
    /// Per packet of the batch: what to do with it.
    fate: Vec<Fate>,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Fate {
    /// Empty buffer: not written.
    Skip,
    /// Written (alone, or as an item's head).
    Write,
    /// Appended to an earlier packet.
    Merged,
}

const EMPTY: u32 = u32::MAX;

/// Most datagrams merged into one UDP write (the kernel segments at most `UDP_MAX_SEGMENTS`,
/// 128 on Linux 6.x).
const MAX_UDP_SEGMENTS: usize = 64;

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct FlowKey {
    v6: bool,
    /// UDP (only with [`Coalescer::with_udp`]), else TCP.
    udp: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ports: u32,
}

impl FlowKey {
    fn protocol(&self) -> u8 {
        if self.udp { IPPROTO_UDP } else { IPPROTO_TCP }
    }

    fn hash(&self) -> u64 {
        let w =
            |b: &[u8; 16], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let words = [
            w(&self.src, 0),
            w(&self.src, 8),
            w(&self.dst, 0),
            w(&self.dst, 8),
            u64::from(self.ports) << 2 | u64::from(self.udp) << 1 | u64::from(self.v6),
        ];
        let h = words.iter().fold(0u64, |h, x| {
            (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
        });
        h ^ (h >> 29)
    }
}

/// A TCP packet of the batch, parsed.
#[derive(Clone, Copy, Debug)]
struct Seg {
    key: FlowKey,
    ip_hlen: usize,
    l4_hlen: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload: usize,
}

/// A run of merged packets, headed by `bufs[buf]`.
#[derive(Clone, Copy, Debug)]
struct Item {
    key: FlowKey,
    buf: usize,
    ip_hlen: usize,
    l4_hlen: usize,
    ack: u32,
    next_seq: u32,
    gso_size: usize,
    /// Current packet length (IP header onwards).
    len: usize,
    count: usize,
    window: u16,
    psh: bool,
    closed: bool,
    verified: bool,
}

enum Class {
    /// Not TCP in a way we can key: written as is, touches no flow.
    Other,
    /// TCP of a known flow that cannot merge: written as is, ends the flow's item.
    Barrier(FlowKey),
    /// A merge candidate.
    Candidate(Seg),
}

fn flow_key(pkt: &[u8], v6: bool, l4: usize, udp: bool) -> FlowKey {
    let (a, n) = addr_range(v6);
    let mut key = FlowKey {
        v6,
        udp,
        src: [0; 16],
        dst: [0; 16],
        ports: be32(pkt, l4),
    };
    key.src[..n].copy_from_slice(&pkt[a..a + n]);
    key.dst[..n].copy_from_slice(&pkt[a + n..a + 2 * n]);
    key
}

fn classify(pkt: &[u8], udp: bool) -> Class {
    let len = pkt.len();
    let keyed = |proto: u8| proto == IPPROTO_TCP || (udp && proto == IPPROTO_UDP);
    let (v6, l4, ip_ok, proto) = match pkt.first().map(|b| b >> 4) {
        Some(4) if len >= IPV4_HDR_LEN && keyed(pkt[9]) => {
            let ihl = usize::from(pkt[0] & 0x0F) * 4;
            let frag = be16(pkt, 6) & 0x3FFF;
            if ihl < IPV4_HDR_LEN || frag & 0x1FFF != 0 || len < ihl + 4 {
                return Class::Other; // no ports to key on
            }
            let ok = ihl == IPV4_HDR_LEN
                && frag == 0
                && usize::from(be16(pkt, 2)) == len
                && checksum::verify(&pkt[..IPV4_HDR_LEN], 0);
            (false, ihl, ok, pkt[9])
        }
        Some(6) if len >= IPV6_HLEN + 4 && keyed(pkt[6]) => (
            true,
            IPV6_HLEN,
            usize::from(be16(pkt, 4)) + IPV6_HLEN == len,
            pkt[6],
        ),
        _ => return Class::Other,
    };
    let key = flow_key(pkt, v6, l4, proto == IPPROTO_UDP);
    if key.udp {
        // A datagram with a payload, a length field that matches and a checksum (an IPv4
        // datagram may have none, 0: it is written alone, not given one by the merge).
        let fits = ip_ok
            && len > l4 + UDP_HDR_LEN
            && usize::from(be16(pkt, l4 + 4)) == len - l4
            && be16(pkt, l4 + UDP_CSUM_OFF) != 0;
        if !fits {
            return Class::Barrier(key);
        }
        return Class::Candidate(Seg {
            key,
            ip_hlen: l4,
            l4_hlen: UDP_HDR_LEN,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 0,
            payload: len - l4 - UDP_HDR_LEN,
        });
    }
    if !ip_ok || len < l4 + TCP_MIN_HLEN {
        return Class::Barrier(key);
    }
    let l4_hlen = usize::from(pkt[l4 + 12] >> 4) * 4;
    let flags = pkt[l4 + TCP_FLAGS_OFF];
    if l4_hlen < TCP_MIN_HLEN || l4 + l4_hlen >= len || flags & !TCP_PSH != TCP_ACK {
        return Class::Barrier(key);
    }
    Class::Candidate(Seg {
        key,
        ip_hlen: l4,
        l4_hlen,
        seq: be32(pkt, l4 + 4),
        ack: be32(pkt, l4 + 8),
        flags,
        window: be16(pkt, l4 + 14),
        payload: len - l4 - l4_hlen,
    })
}

fn l4_checksum_ok(pkt: &[u8], key: &FlowKey, ip_hlen: usize) -> bool {
    let (a, n) = addr_range(key.v6);
    let pseudo = pseudo_header(
        &pkt[a..a + n],
        &pkt[a + n..a + 2 * n],
        key.protocol(),
        (pkt.len() - ip_hlen) as u32,
    );
    checksum::verify(&pkt[ip_hlen..], pseudo)
}

/// Whether the IP headers agree on everything but length, identification and checksum (the
/// addresses are already equal through the flow key).
fn ip_headers_match(h: &[u8], p: &[u8], v6: bool) -> bool {
    if v6 {
        h[..4] == p[..4] && h[6..8] == p[6..8]
    } else {
        h[..2] == p[..2] && h[6..10] == p[6..10]
    }
}

enum Merge {
    Appended,
    /// Not mergeable; the packet starts a new item.
    No,
    /// The packet's checksum is bad: it is written alone and ends the item.
    BadPacket,
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A coalescer that also merges UDP datagrams into `GSO_UDP_L4` writes. Only for a device
    /// that accepted `TUN_F_USO4`/`TUN_F_USO6` (Linux 6.2+): an older kernel refuses such a
    /// write.
    pub fn with_udp() -> Self {
        Self {
            udp: true,
            ..Self::default()
        }
    }

    /// Coalesces the batch `bufs` (packets at `bufs[i][offset..]`; see the [module
    /// docs](self)), appending the indices of the buffers to write, in order, to `to_write`.
    /// For each such `i`, `bufs[i][offset - VNET_HDR_LEN..]` is the complete TUN write
    /// (virtio header and packet). Buffers no longer than `offset` hold no packet and are
    /// skipped; merged-away buffers keep their contents but are not listed.
    ///
    /// Fails, touching nothing, only when `offset < VNET_HDR_LEN`.
    pub fn coalesce(
        &mut self,
        bufs: &mut [Vec<u8>],
        offset: usize,
        to_write: &mut Vec<usize>,
    ) -> Result<GroStats, OffloadError> {
        if offset < VNET_HDR_LEN {
            return Err(OffloadError::NoHeadroom { offset });
        }
        self.reset(bufs.len());
        let mut stats = GroStats::default();
        for i in 0..bufs.len() {
            if bufs[i].len() <= offset {
                self.fate.push(Fate::Skip);
                continue;
            }
            stats.packets += 1;
            let (before, rest) = bufs.split_at_mut(i);
            let pkt = &rest[0][offset..];
            let fate = match classify(pkt, self.udp) {
                Class::Other => Fate::Write,
                Class::Barrier(key) => {
                    if let (_, Some(item)) = self.lookup(&key) {
                        self.items[item].closed = true;
                    }
                    Fate::Write
                }
                Class::Candidate(seg) => {
                    let (slot, latest) = self.lookup(&seg.key);
                    let merge = match latest {
                        Some(item) => {
                            let head = &mut before[self.items[item].buf];
                            try_append(&mut self.items[item], head, offset, pkt, &seg)
                        }
                        None => Merge::No,
                    };
                    match merge {
                        Merge::Appended => Fate::Merged,
                        Merge::BadPacket => Fate::Write,
                        Merge::No => {
                            self.table[slot] = self.items.len() as u32;
                            self.items.push(Item {
                                key: seg.key,
                                buf: i,
                                ip_hlen: seg.ip_hlen,
                                l4_hlen: seg.l4_hlen,
                                ack: seg.ack,
                                next_seq: seg.seq.wrapping_add(seg.payload as u32),
                                gso_size: seg.payload,
                                len: pkt.len(),
                                count: 1,
                                window: seg.window,
                                psh: seg.flags & TCP_PSH != 0,
                                closed: seg.flags & TCP_PSH != 0,
                                verified: false,
                            });
                            Fate::Write
                        }
                    }
                }
            };
            self.fate.push(fate);
        }
        for (i, fate) in self.fate.iter().enumerate() {
            if *fate == Fate::Write {
                bufs[i][offset - VNET_HDR_LEN..offset]
                    .copy_from_slice(&VirtioNetHdr::NONE.encode());
                to_write.push(i);
                stats.writes += 1;
            }
        }
        for item in self.items.iter().filter(|it| it.count > 1) {
            finish(item, &mut bufs[item.buf], offset);
            stats.gso_writes += 1;
        }
        Ok(stats)
    }

    fn reset(&mut self, n: usize) {
        self.items.clear();
        self.fate.clear();
        let cap = (2 * n).next_power_of_two().max(16);
        self.table.clear();
        self.table.resize(cap, EMPTY);
    }

    /// The table slot for `key` and the flow's latest item, if any.
    fn lookup(&self, key: &FlowKey) -> (usize, Option<usize>) {
        let mask = self.table.len() - 1;
        let mut slot = key.hash() as usize & mask;
        loop {
            match self.table[slot] {
                // The table is at most half full, so an empty slot is always found.
                EMPTY => return (slot, None),
                idx if self.items[idx as usize].key == *key => return (slot, Some(idx as usize)),
                _ => slot = (slot + 1) & mask,
            }
        }
    }
}

fn try_append(item: &mut Item, head: &mut Vec<u8>, offset: usize, pkt: &[u8], seg: &Seg) -> Merge {
    let (v6, udp) = (seg.key.v6, seg.key.udp);
    let (ip, th) = (item.ip_hlen, item.l4_hlen);
    let h = &head[offset..];
    let in_sequence = if udp {
        item.count < MAX_UDP_SEGMENTS
    } else {
        th == seg.l4_hlen
            && seg.ack == item.ack
            && seg.seq == item.next_seq
            && h[ip + TCP_MIN_HLEN..ip + th] == pkt[ip + TCP_MIN_HLEN..ip + th]
    };
    let fits = !item.closed
        && in_sequence
        && seg.payload <= item.gso_size
        && item.len + seg.payload <= MAX_IP_LEN
        && ip_headers_match(h, pkt, v6);
    if !fits {
        return Merge::No;
    }
    if !item.verified {
        // Still the unmodified first packet: nothing was appended yet.
        if !l4_checksum_ok(h, &seg.key, ip) {
            item.closed = true;
            return Merge::No;
        }
        item.verified = true;
    }
    if !l4_checksum_ok(pkt, &seg.key, ip) {
        item.closed = true;
        return Merge::BadPacket;
    }
    head.extend_from_slice(&pkt[ip + th..]);
    item.len += seg.payload;
    item.count += 1;
    item.next_seq = item.next_seq.wrapping_add(seg.payload as u32);
    item.window = seg.window;
    if seg.flags & TCP_PSH != 0 {
        item.psh = true;
        item.closed = true;
    }
    if seg.payload < item.gso_size {
        item.closed = true;
    }
    Merge::Appended
}

/// Rewrites a merged item's headers and writes its GSO virtio header.
fn finish(item: &Item, buf: &mut [u8], offset: usize) {
    let (headroom, pkt) = buf.split_at_mut(offset);
    let v6 = item.key.v6;
    let ip = item.ip_hlen;
    let total = pkt.len();
    if v6 {
        put16(pkt, 4, (total - IPV6_HLEN) as u16);
    } else {
        put16(pkt, 2, total as u16);
        put16(pkt, 10, 0);
        let c = checksum::checksum(&pkt[..ip], 0);
        put16(pkt, 10, c);
    }
    let (gso_type, csum_offset) = if item.key.udp {
        // The datagram length covers every segment; segmentation sets each one's.
        put16(pkt, ip + 4, (total - ip) as u16);
        (VIRTIO_NET_HDR_GSO_UDP_L4, UDP_CSUM_OFF)
    } else {
        if item.psh {
            pkt[ip + TCP_FLAGS_OFF] |= TCP_PSH;
        }
        put16(pkt, ip + 14, item.window);
        let tso = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        (tso, TCP_CSUM_OFF)
    };
    let (a, n) = addr_range(v6);
    let pseudo = pseudo_header(
        &pkt[a..a + n],
        &pkt[a + n..a + 2 * n],
        item.key.protocol(),
        (total - ip) as u32,
    );
    put16(pkt, ip + csum_offset, pseudo);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (ip + item.l4_hlen) as u16,
        gso_size: item.gso_size as u16,
        csum_start: ip as u16,
        csum_offset: csum_offset as u16,
    };
    headroom[offset - VNET_HDR_LEN..].copy_from_slice(&hdr.encode());
}
