//! Cross-module tests: hand-built IPv4/IPv6 TCP and UDP packets, checked with an independent
//! textbook checksum.

use proptest::prelude::*;

use super::*;

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const HEADROOM: usize = 16;

// ---- an independent checksum: sums a concatenation of byte strings, word by word ----

fn ref_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut acc: u64 = 0;
    for pair in bytes.chunks(2) {
        acc += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
    }
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

fn ref_pseudo(pkt: &[u8], v6: bool, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&pkt[8..40]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&pkt[12..20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

/// Asserts a wire packet's lengths and checksums; returns its transport payload.
fn check_wire(pkt: &[u8]) -> &[u8] {
    let v6 = pkt[0] >> 4 == 6;
    let (l4, proto) = if v6 {
        (40, pkt[6])
    } else {
        (usize::from(pkt[0] & 15) * 4, pkt[9])
    };
    if v6 {
        assert_eq!(
            usize::from(u16::from_be_bytes([pkt[4], pkt[5]])),
            pkt.len() - 40
        );
    } else {
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        assert_eq!(ref_sum(&[&pkt[..l4]]), 0xFFFF, "IPv4 header checksum");
    }
    let pseudo = ref_pseudo(pkt, v6, proto, pkt.len() - l4);
    assert_eq!(
        ref_sum(&[&pseudo, &pkt[l4..]]),
        0xFFFF,
        "transport checksum"
    );
    if proto == IPPROTO_UDP {
        assert_eq!(
            usize::from(u16::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5]])),
            pkt.len() - l4
        );
        assert_ne!(&pkt[l4 + 6..l4 + 8], &[0, 0]);
        &pkt[l4 + 8..]
    } else {
        &pkt[l4 + usize::from(pkt[l4 + 12] >> 4) * 4..]
    }
}

// ---- packet builders ----

#[derive(Clone, Debug)]
struct Spec {
    v6: bool,
    udp: bool,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    id: u16,
    ttl: u8,
    tos: u8,
}

impl Spec {
    fn tcp4() -> Self {
        Self {
            v6: false,
            udp: false,
            sport: 40000,
            dport: 5201,
            seq: 0xFFFF_F000, // wraps within a super-packet
            ack: 777,
            flags: TCP_ACK,
            window: 512,
            options: vec![],
            id: 0xFFFE,
            ttl: 64,
            tos: 0,
        }
    }
    fn tcp6() -> Self {
        Self {
            v6: true,
            ..Self::tcp4()
        }
    }
    fn udp(v6: bool) -> Self {
        Self {
            v6,
            udp: true,
            ..Self::tcp4()
        }
    }
    fn ip_hlen(&self) -> usize {
        if self.v6 { 40 } else { 20 }
    }
    fn l4_hlen(&self) -> usize {
        if self.udp { 8 } else { 20 + self.options.len() }
    }

    /// Packet with every length set and the transport checksum field zero
    /// (the IPv4 header checksum is always valid).
    fn raw(&self, payload: &[u8]) -> Vec<u8> {
        let (ip, l4) = (self.ip_hlen(), self.l4_hlen());
        let total = ip + l4 + payload.len();
        let mut p = vec![0u8; total];
        if self.v6 {
            p[0] = 0x60 | self.tos >> 4;
            p[1] = self.tos << 4 | 0x0a;
            p[2..4].copy_from_slice(&[0xbc, 0xde]);
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = if self.udp { IPPROTO_UDP } else { IPPROTO_TCP };
            p[7] = self.ttl;
            p[8..24].copy_from_slice(&SRC6);
            p[24..40].copy_from_slice(&DST6);
        } else {
            p[0] = 0x45;
            p[1] = self.tos;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&self.id.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = self.ttl;
            p[9] = if self.udp { IPPROTO_UDP } else { IPPROTO_TCP };
            p[12..16].copy_from_slice(&SRC4);
            p[16..20].copy_from_slice(&DST4);
            let c = !ref_sum(&[&p[..20]]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p[ip..ip + 2].copy_from_slice(&self.sport.to_be_bytes());
        p[ip + 2..ip + 4].copy_from_slice(&self.dport.to_be_bytes());
        if self.udp {
            p[ip + 4..ip + 6].copy_from_slice(&((total - ip) as u16).to_be_bytes());
        } else {
            p[ip + 4..ip + 8].copy_from_slice(&self.seq.to_be_bytes());
            p[ip + 8..ip + 12].copy_from_slice(&self.ack.to_be_bytes());
            p[ip + 12] = ((l4 / 4) as u8) << 4;
            p[ip + 13] = self.flags;
            p[ip + 14..ip + 16].copy_from_slice(&self.window.to_be_bytes());
            p[ip + 20..ip + l4].copy_from_slice(&self.options);
        }
        p[ip + l4..].copy_from_slice(payload);
        p
    }

    fn csum_off(&self) -> usize {
        self.ip_hlen() + if self.udp { 6 } else { 16 }
    }

    /// A complete wire packet.
    fn wire(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = self.raw(payload);
        let ip = self.ip_hlen();
        let pseudo = ref_pseudo(&p, self.v6, p[if self.v6 { 6 } else { 9 }], p.len() - ip);
        let mut c = !ref_sum(&[&pseudo, &p[ip..]]);
        if c == 0 && self.udp {
            c = 0xFFFF;
        }
        let at = self.csum_off();
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// What the kernel hands a vnet-header TUN: the whole super-packet with the
    /// pseudo-header sum in the checksum field, under a NEEDS_CSUM GSO header.
    fn gso(&self, payload: &[u8], mss: u16) -> (VirtioNetHdr, Vec<u8>) {
        let mut p = self.raw(payload);
        let ip = self.ip_hlen();
        let pseudo = ref_pseudo(&p, self.v6, p[if self.v6 { 6 } else { 9 }], p.len() - ip);
        let at = self.csum_off();
        p[at..at + 2].copy_from_slice(&ref_sum(&[&pseudo]).to_be_bytes());
        let gso_type = match (self.udp, self.v6) {
            (true, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (false, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        };
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: (ip + self.l4_hlen()) as u16,
            gso_size: mss,
            csum_start: ip as u16,
            csum_offset: (at - ip) as u16,
        };
        (hdr, p)
    }

    /// Segment `k` of a stream of `payload.len()`-byte segments, as a wire packet.
    fn nth(&self, k: u32, payload: &[u8]) -> Vec<u8> {
        Self {
            seq: self.seq.wrapping_add(k * payload.len() as u32),
            id: self.id.wrapping_add(k as u16),
            ..self.clone()
        }
        .wire(payload)
    }
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn segment_all(hdr: &VirtioNetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
    let mut seg = Segmenter::new(hdr, pkt).expect("valid");
    let mut out = Vec::new();
    let mut buf = vec![0u8; seg.max_segment_len()];
    while let Some(n) = seg.next_into(&mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    assert_eq!(out.len(), seg.len());
    out
}

fn tcp_field(pkt: &[u8], off: usize) -> u32 {
    let l4 = if pkt[0] >> 4 == 6 { 40 } else { 20 };
    u32::from_be_bytes(pkt[l4 + off..l4 + off + 4].try_into().unwrap())
}
fn tcp_flags(pkt: &[u8]) -> u8 {
    pkt[if pkt[0] >> 4 == 6 { 40 } else { 20 } + 13]
}

/// Runs the coalescer over wire packets; returns (vnet header, packet) per write.
fn coalesce(pkts: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    coalesce_with(Coalescer::new(), pkts)
}

/// [`coalesce`] with a given coalescer (e.g. [`Coalescer::with_udp`]).
fn coalesce_with(mut coalescer: Coalescer, pkts: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut bufs: Vec<Vec<u8>> = pkts
        .iter()
        .map(|p| {
            let mut b = Vec::with_capacity(HEADROOM + 65535);
            b.resize(HEADROOM, 0xAA);
            b.extend_from_slice(p);
            b
        })
        .collect();
    let mut to_write = Vec::new();
    let stats = coalescer
        .coalesce(&mut bufs, HEADROOM, &mut to_write)
        .unwrap();
    assert_eq!(stats.writes, to_write.len());
    to_write
        .iter()
        .map(|&i| {
            let (h, p) = split_tun_read(&bufs[i][HEADROOM - VNET_HDR_LEN..]).unwrap();
            (h, p.to_vec())
        })
        .collect()
}

// ---- segmentation ----

#[test]
fn tso4_segments_have_correct_headers() {
    let spec = Spec {
        flags: TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
        ..Spec::tcp4()
    };
    let data = payload(4000, 1);
    let (mut hdr, pkt) = spec.gso(&data, 1448);
    hdr.hdr_len = 1500; // the kernel's hint is not trusted
    let segs = segment_all(&hdr, &pkt);
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        joined.extend_from_slice(check_wire(s));
        assert_eq!(
            u16::from_be_bytes([s[4], s[5]]),
            spec.id.wrapping_add(i as u16)
        );
        assert_eq!(tcp_field(s, 4), spec.seq.wrapping_add(1448 * i as u32));
        assert_eq!(tcp_field(s, 8), spec.ack);
        let f = tcp_flags(s);
        assert_eq!(f & (TCP_FIN | TCP_PSH) != 0, i == 2, "FIN/PSH on last only");
        assert_eq!(f & TCP_CWR != 0, i == 0, "CWR on first only");
        assert_ne!(f & TCP_ACK, 0);
    }
    assert_eq!(segs[2].len(), 40 + 4000 - 2 * 1448);
    assert_eq!(joined, data);
}

#[test]
fn tso6_with_options_segments() {
    let spec = Spec {
        options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        ..Spec::tcp6()
    };
    let data = payload(3000, 7);
    let (hdr, pkt) = spec.gso(&data, 1000);
    let segs = segment_all(&hdr, &pkt);
    assert_eq!(segs.len(), 3);
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(check_wire(s), &data[i * 1000..(i + 1) * 1000]);
        assert_eq!(&s[60..72], &spec.options[..]);
    }
}

#[test]
fn uso_segments_v4_and_v6() {
    for v6 in [false, true] {
        let spec = Spec::udp(v6);
        let data = payload(2500, 3);
        let (hdr, pkt) = spec.gso(&data, 1200);
        let segs = segment_all(&hdr, &pkt);
        assert_eq!(segs.len(), 3);
        let joined: Vec<u8> = segs.iter().flat_map(|s| check_wire(s).to_vec()).collect();
        assert_eq!(joined, data);
        if !v6 {
            assert_eq!(
                u16::from_be_bytes([segs[1][4], segs[1][5]]),
                spec.id.wrapping_add(1)
            );
        }
    }
}

#[test]
fn udp_zero_checksum_is_sent_as_ffff() {
    // Find a payload whose UDP checksum computes to zero, by fixing its last two bytes.
    let spec = Spec::udp(false);
    let mut data = payload(100, 9);
    data[98..].copy_from_slice(&[0, 0]);
    let p = spec.raw(&data);
    let pseudo = ref_pseudo(&p, false, IPPROTO_UDP, p.len() - 20);
    let s = ref_sum(&[&pseudo, &p[20..]]);
    // Adding the complement of the sum makes the total 0xFFFF, so the checksum is 0.
    data[98..].copy_from_slice(&(!s).to_be_bytes());
    let (hdr, pkt) = spec.gso(&data, 1000);
    let segs = segment_all(&hdr, &pkt);
    assert_eq!(&segs[0][26..28], &[0xFF, 0xFF]);
    check_wire(&segs[0]);
}

#[test]
fn gso_packet_without_payload_or_short_payload_is_one_segment() {
    let spec = Spec::tcp4();
    for len in [0, 1, 1448] {
        let (hdr, pkt) = spec.gso(&payload(len, 0), 1448);
        let segs = segment_all(&hdr, &pkt);
        assert_eq!(segs.len(), 1);
        assert_eq!(check_wire(&segs[0]).len(), len);
    }
}

#[test]
fn partial_checksum_is_completed_in_place_and_by_copy() {
    for spec in [
        Spec::tcp4(),
        Spec::tcp6(),
        Spec::udp(false),
        Spec::udp(true),
    ] {
        let data = payload(777, 5);
        let (mut hdr, pkt) = spec.gso(&data, 0);
        hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
        let mut in_place = pkt.clone();
        complete_checksum(&hdr, &mut in_place).unwrap();
        assert_eq!(in_place, spec.wire(&data));
        assert_eq!(segment_all(&hdr, &pkt), vec![in_place]);
    }
    // Without NEEDS_CSUM a plain packet (or anything) passes unchanged.
    let junk = vec![1, 2, 3];
    assert_eq!(segment_all(&VirtioNetHdr::NONE, &junk), vec![junk.clone()]);
    let mut j = junk.clone();
    complete_checksum(&VirtioNetHdr::NONE, &mut j).unwrap();
    assert_eq!(j, junk);
}

#[test]
fn malformed_input_is_a_clear_error() {
    let spec = Spec::tcp4();
    let (hdr, pkt) = spec.gso(&payload(3000, 0), 1000);
    let err = |h: VirtioNetHdr, p: &[u8]| Segmenter::new(&h, p).unwrap_err();

    assert_eq!(
        err(VirtioNetHdr { gso_size: 0, ..hdr }, &pkt),
        OffloadError::ZeroGsoSize
    );
    assert_eq!(
        err(VirtioNetHdr { gso_type: 3, ..hdr }, &pkt),
        OffloadError::UnsupportedGsoType(3)
    );
    assert_eq!(
        err(VirtioNetHdr { gso_type: 2, ..hdr }, &pkt),
        OffloadError::UnsupportedGsoType(2)
    );
    assert!(matches!(
        err(
            VirtioNetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
                ..hdr
            },
            &pkt
        ),
        OffloadError::GsoTypeMismatch { ipv6: false, .. }
    ));
    assert_eq!(
        err(
            VirtioNetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
                ..hdr
            },
            &pkt
        ),
        OffloadError::ProtocolMismatch {
            expected: IPPROTO_UDP,
            found: IPPROTO_TCP
        }
    );
    assert!(matches!(
        err(
            VirtioNetHdr {
                csum_start: 24,
                ..hdr
            },
            &pkt
        ),
        OffloadError::ChecksumLocation { start: 24, .. }
    ));
    assert_eq!(
        err(hdr, &[]),
        OffloadError::Truncated {
            what: "IP header",
            len: 0
        }
    );
    assert_eq!(
        err(hdr, &pkt[..19]),
        OffloadError::Truncated {
            what: "IPv4 header",
            len: 19
        }
    );
    assert_eq!(
        err(hdr, &pkt[..30]),
        OffloadError::Truncated {
            what: "TCP header",
            len: 30
        }
    );
    assert_eq!(err(hdr, &[0x75; 60]), OffloadError::UnknownIpVersion(7));
    let mut bad_ihl = pkt.clone();
    bad_ihl[0] = 0x44;
    assert_eq!(err(hdr, &bad_ihl), OffloadError::BadIpHeaderLen(16));
    let mut bad_doff = pkt.clone();
    bad_doff[32] = 0x40;
    assert_eq!(err(hdr, &bad_doff), OffloadError::BadTransportHeaderLen(16));
    bad_doff[32] = 0xF0;
    bad_doff.truncate(70);
    assert_eq!(err(hdr, &bad_doff), OffloadError::BadTransportHeaderLen(60));
    // Partial checksum beyond the packet.
    let none = VirtioNetHdr {
        gso_type: 0,
        csum_offset: 4000,
        ..hdr
    };
    assert!(matches!(
        err(none, &pkt),
        OffloadError::ChecksumLocation { offset: 4000, .. }
    ));
    assert!(complete_checksum(&none, &mut pkt.clone()).is_err());
    // IPv6 fragment header.
    let (h6, mut p6) = Spec::tcp6().gso(&payload(100, 0), 50);
    p6[6] = 44;
    assert_eq!(err(h6, &p6), OffloadError::Fragment);
    // Segment larger than an IP length field allows.
    let big = Spec::tcp4().raw(&payload(65535, 0));
    assert!(matches!(
        err(
            VirtioNetHdr {
                gso_size: 65535,
                ..hdr
            },
            &big
        ),
        OffloadError::SegmentTooLarge(_)
    ));

    // Output buffers.
    let mut seg = Segmenter::new(&hdr, &pkt).unwrap();
    assert_eq!(
        seg.next_into(&mut [0u8; 100]),
        Err(OffloadError::OutputTooSmall {
            needed: 1040,
            available: 100
        })
    );
    assert_eq!(seg.remaining(), 3);
    assert!(matches!(
        seg.write_segment(3, &mut [0; 2000]),
        Err(OffloadError::NoSuchSegment { .. })
    ));
}

#[test]
fn write_batch_fills_buffers_with_offset() {
    let (hdr, pkt) = Spec::tcp4().gso(&payload(5000, 2), 1000);
    let mut seg = Segmenter::new(&hdr, &pkt).unwrap();
    let mut bufs = vec![vec![0u8; 1100]; 3];
    let mut sizes = [0usize; 3];
    assert_eq!(seg.write_batch(&mut bufs, 16, &mut sizes).unwrap(), 3);
    assert_eq!(seg.remaining(), 2);
    assert_eq!(sizes, [1040; 3]);
    let reference = segment_all(&hdr, &pkt);
    assert_eq!(&bufs[1][16..16 + 1040], &reference[1][..]);
    assert_eq!(seg.write_batch(&mut bufs, 16, &mut sizes).unwrap(), 2);
    assert_eq!(seg.write_batch(&mut bufs, 16, &mut sizes).unwrap(), 0);
}

// ---- coalescing ----

fn flow(spec: &Spec, n: u32, seg: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| spec.nth(k, &payload(seg, k as u8)))
        .collect()
}

#[test]
fn in_order_segments_merge_and_round_trip() {
    for spec in [
        Spec::tcp4(),
        Spec::tcp6(),
        Spec {
            options: vec![1, 1, 1, 1],
            ..Spec::tcp4()
        },
    ] {
        let mut pkts = flow(&spec, 5, 1000);
        // A shorter, PSH last segment still joins.
        let psh = Spec {
            flags: TCP_ACK | TCP_PSH,
            seq: spec.seq.wrapping_add(5000),
            id: spec.id.wrapping_add(5),
            ..spec.clone()
        };
        pkts.push(psh.wire(&[9; 300]));
        let ip = spec.ip_hlen();
        let out = coalesce(&pkts);
        assert_eq!(out.len(), 1);
        let (hdr, merged) = &out[0];
        assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(
            hdr.gso_type,
            if spec.v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            }
        );
        assert_eq!(usize::from(hdr.gso_size), 1000);
        assert_eq!(usize::from(hdr.csum_start), ip);
        assert_eq!(hdr.csum_offset, 16);
        assert_eq!(usize::from(hdr.hdr_len), ip + spec.l4_hlen());
        assert_eq!(merged.len(), ip + spec.l4_hlen() + 5300);
        assert_eq!(tcp_flags(merged), TCP_ACK | TCP_PSH);
        // The merged packet is exactly what the kernel would have built.
        let all: Vec<u8> = pkts
            .iter()
            .flat_map(|p| p[ip + spec.l4_hlen()..].to_vec())
            .collect();
        let (want_hdr, want) = Spec {
            flags: TCP_ACK | TCP_PSH,
            ..spec.clone()
        }
        .gso(&all, 1000);
        assert_eq!(merged, &want);
        assert_eq!(hdr, &want_hdr);
        // And segmenting it gives back the original packets, byte for byte.
        assert_eq!(segment_all(hdr, merged), pkts);
    }
}

#[test]
fn interleaved_flows_merge_per_flow_only() {
    let a = Spec::tcp4();
    let b = Spec {
        sport: 40001,
        ..Spec::tcp4()
    };
    let c = Spec {
        dport: 80,
        ..Spec::tcp6()
    };
    let (fa, fb, fc) = (flow(&a, 3, 500), flow(&b, 3, 500), flow(&c, 2, 500));
    let batch = vec![
        fa[0].clone(),
        fb[0].clone(),
        fc[0].clone(),
        fa[1].clone(),
        fb[1].clone(),
        fc[1].clone(),
        fa[2].clone(),
        fb[2].clone(),
    ];
    let out = coalesce(&batch);
    assert_eq!(out.len(), 3);
    assert_eq!(segment_all(&out[0].0, &out[0].1), fa);
    assert_eq!(segment_all(&out[1].0, &out[1].1), fb);
    assert_eq!(segment_all(&out[2].0, &out[2].1), fc);
}

fn assert_unmerged(batch: &[Vec<u8>]) {
    let out = coalesce(batch);
    assert_eq!(out.len(), batch.len());
    for ((h, p), want) in out.iter().zip(batch) {
        assert_eq!(*h, VirtioNetHdr::NONE);
        assert_eq!(p, want);
    }
}

#[test]
fn out_of_order_and_gaps_do_not_merge() {
    let f = flow(&Spec::tcp4(), 4, 800);
    assert_unmerged(&[f[0].clone(), f[2].clone(), f[1].clone()]);
    assert_unmerged(&[f[1].clone(), f[0].clone()]);
    assert_unmerged(&[f[0].clone(), f[0].clone()]); // retransmission
    assert_unmerged(&[f[0].clone(), f[3].clone()]); // gap
}

#[test]
fn different_flags_and_headers_do_not_merge() {
    let base = Spec::tcp4();
    let p0 = base.nth(0, &[1; 600]);
    let variant = |s: Spec| s.nth(1, &[2; 600]);
    for flags in [
        TCP_ACK | TCP_FIN,
        TCP_ACK | TCP_SYN,
        TCP_ACK | TCP_RST,
        TCP_ACK | TCP_URG,
        TCP_ACK | TCP_CWR,
        TCP_ACK | TCP_ECE,
        0,
    ] {
        assert_unmerged(&[
            p0.clone(),
            variant(Spec {
                flags,
                ..base.clone()
            }),
        ]);
    }
    assert_unmerged(&[
        p0.clone(),
        variant(Spec {
            ack: 778,
            ..base.clone()
        }),
    ]);
    assert_unmerged(&[
        p0.clone(),
        variant(Spec {
            ttl: 63,
            ..base.clone()
        }),
    ]);
    assert_unmerged(&[
        p0.clone(),
        variant(Spec {
            tos: 3,
            ..base.clone()
        }),
    ]);
    assert_unmerged(&[
        p0.clone(),
        variant(Spec {
            options: vec![1, 1, 1, 1],
            ..base.clone()
        }),
    ]);
    // Different option bytes of the same length.
    let o1 = Spec {
        options: vec![1, 1, 1, 1],
        ..base.clone()
    };
    let o2 = Spec {
        options: vec![1, 1, 1, 0],
        ..base.clone()
    };
    assert_unmerged(&[o1.nth(0, &[1; 600]), o2.nth(1, &[1; 600])]);
    // A larger second segment, and anything after PSH or after a shorter segment.
    let larger = Spec {
        seq: base.seq.wrapping_add(600),
        id: base.id.wrapping_add(1),
        ..base.clone()
    };
    assert_unmerged(&[p0.clone(), larger.wire(&[1; 601])]);
    let psh = Spec {
        flags: TCP_ACK | TCP_PSH,
        ..base.clone()
    };
    assert_unmerged(&[psh.nth(0, &[1; 600]), base.nth(1, &[1; 600])]);
    let out = coalesce(&[
        base.nth(0, &[1; 600]),
        base.nth(1, &[1; 600])[..base.ip_hlen() + 20 + 300].to_vec(),
        base.nth(2, &[1; 600]),
    ]);
    // The truncated middle packet has a stale length: it is passed through and ends the item.
    assert_eq!(out.len(), 3);
    // A window change does merge, taking the newest window.
    let out = coalesce(&[
        p0.clone(),
        variant(Spec {
            window: 1024,
            ..base.clone()
        }),
    ]);
    assert_eq!(out.len(), 1);
    assert_eq!(u16::from_be_bytes([out[0].1[34], out[0].1[35]]), 1024);
}

fn fix_ipv4_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 15) * 4;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = !ref_sum(&[&p[..ihl]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn ip_options_fragments_extension_headers_and_flow_labels_do_not_merge() {
    let s = Spec::tcp4();
    let p0 = s.nth(0, &[1; 500]);
    // IPv4 options (4 NOPs): same TCP checksum, since the pseudo-header is unchanged.
    let p1 = s.nth(1, &[2; 500]);
    let mut opts = [&p1[..20], &[1, 1, 1, 1][..], &p1[20..]].concat();
    opts[0] = 0x46;
    let total = opts.len() as u16;
    opts[2..4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut opts);
    assert_unmerged(&[p0.clone(), opts]);
    // More-fragments set.
    let mut frag = p1.clone();
    frag[6] |= 0x20;
    fix_ipv4_checksum(&mut frag);
    assert_unmerged(&[p0.clone(), frag]);
    // DF differs.
    let mut no_df = p1.clone();
    no_df[6] = 0;
    fix_ipv4_checksum(&mut no_df);
    assert_unmerged(&[p0, no_df]);

    let s6 = Spec::tcp6();
    let q0 = s6.nth(0, &[1; 500]);
    let q1 = s6.nth(1, &[2; 500]);
    let mut label = q1.clone();
    label[3] ^= 1; // flow label: not in the pseudo-header
    assert_unmerged(&[q0.clone(), label]);
    // A destination-options header before TCP: passed through, never keyed.
    let mut ext = [
        &q1[..40],
        &[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0][..],
        &q1[40..],
    ]
    .concat();
    ext[6] = 60;
    let plen = (ext.len() - 40) as u16;
    ext[4..6].copy_from_slice(&plen.to_be_bytes());
    assert_unmerged(&[q0.clone(), ext]);
    // Sanity: the unmodified pair does merge.
    assert_eq!(coalesce(&[q0, q1]).len(), 1);
}

#[test]
fn shorter_segment_ends_an_item() {
    let s = Spec::tcp4();
    let p0 = s.nth(0, &[1; 1000]);
    let p1 = Spec {
        seq: s.seq.wrapping_add(1000),
        id: s.id.wrapping_add(1),
        ..s.clone()
    }
    .wire(&[2; 500]);
    let p2 = Spec {
        seq: s.seq.wrapping_add(1500),
        id: s.id.wrapping_add(2),
        ..s.clone()
    }
    .wire(&[3; 1000]);
    let out = coalesce(&[p0.clone(), p1.clone(), p2.clone()]);
    assert_eq!(out.len(), 2);
    assert_eq!(segment_all(&out[0].0, &out[0].1), vec![p0, p1]);
    assert_eq!(out[1], (VirtioNetHdr::NONE, p2));
}

#[test]
fn bad_checksums_are_not_merged() {
    let f = flow(&Spec::tcp4(), 4, 700);
    let mut bad = f[1].clone();
    *bad.last_mut().unwrap() ^= 1;
    // A bad packet is written unchanged and nothing merges across it.
    let out = coalesce(&[f[0].clone(), bad.clone(), f[2].clone(), f[3].clone()]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], (VirtioNetHdr::NONE, f[0].clone()));
    assert_eq!(out[1], (VirtioNetHdr::NONE, bad.clone()));
    assert_eq!(segment_all(&out[2].0, &out[2].1), f[2..].to_vec());
    // A bad first packet is not merged into; the next one starts a new item.
    let mut bad0 = f[0].clone();
    bad0[30] ^= 0x10;
    let out = coalesce(&[bad0.clone(), f[1].clone(), f[2].clone()]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], (VirtioNetHdr::NONE, bad0));
    assert_eq!(segment_all(&out[1].0, &out[1].1), f[1..3].to_vec());
    // A bad IPv4 header checksum makes a packet ineligible.
    let mut badip = f[1].clone();
    badip[10] ^= 1;
    assert_unmerged(&[f[0].clone(), badip]);
}

#[test]
fn merged_packets_are_capped_at_65535_bytes() {
    let spec = Spec::tcp4();
    let f = flow(&spec, 100, 1448);
    let out = coalesce(&f);
    assert!(out.len() > 1);
    let mut resegmented = Vec::new();
    for (h, p) in &out {
        assert!(p.len() <= 65535);
        resegmented.extend(segment_all(h, p));
    }
    assert_eq!(resegmented, f);
    assert_eq!(out[0].1.len(), 40 + 45 * 1448);
}

#[test]
fn barrier_packet_of_the_flow_ends_the_item() {
    let s = Spec::tcp4();
    let p0 = s.nth(0, &[1; 600]);
    let pure_ack = Spec {
        seq: s.seq.wrapping_add(600),
        ..s.clone()
    }
    .wire(&[]);
    let p1 = s.nth(1, &[2; 600]);
    assert_unmerged(&[p0, pure_ack, p1]);
}

#[test]
fn other_packets_pass_through_and_empty_buffers_are_skipped() {
    let udp = Spec::udp(false).wire(&[1; 100]);
    let f = flow(&Spec::tcp6(), 2, 100);
    let mut bufs: Vec<Vec<u8>> = vec![
        [vec![0; HEADROOM], udp.clone()].concat(),
        vec![0; HEADROOM],
        [vec![0; HEADROOM], vec![0x45, 1, 2]].concat(),
        [vec![0; HEADROOM], f[0].clone()].concat(),
        vec![],
        [vec![0; HEADROOM], f[1].clone()].concat(),
    ];
    let mut to_write = vec![];
    let mut c = Coalescer::new();
    let stats = c.coalesce(&mut bufs, HEADROOM, &mut to_write).unwrap();
    assert_eq!(to_write, vec![0, 2, 3]);
    assert_eq!(
        stats,
        GroStats {
            packets: 4,
            writes: 3,
            gso_writes: 1
        }
    );
    assert_eq!(
        &bufs[0][HEADROOM - VNET_HDR_LEN..],
        &[&[0u8; VNET_HDR_LEN][..], &udp].concat()[..]
    );
    assert_eq!(
        c.coalesce(&mut bufs, 9, &mut to_write),
        Err(OffloadError::NoHeadroom { offset: 9 })
    );
    // Reuse across batches.
    let mut again = vec![[vec![0; HEADROOM], f[0].clone()].concat()];
    to_write.clear();
    c.coalesce(&mut again, HEADROOM, &mut to_write).unwrap();
    assert_eq!(to_write, vec![0]);
}

// ---- UDP (USO writes) ----

#[test]
fn udp_datagrams_of_a_flow_merge_into_one_uso_write_and_round_trip() {
    for v6 in [false, true] {
        let spec = Spec::udp(v6);
        let mut pkts = flow(&spec, 5, 500);
        // A shorter last datagram still joins.
        pkts.push(spec.nth(5, &payload(200, 5)));
        let out = coalesce_with(Coalescer::with_udp(), &pkts);
        assert_eq!(out.len(), 1, "v6 {v6}");
        let (hdr, merged) = &out[0];
        let ip = spec.ip_hlen();
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(usize::from(hdr.gso_size), 500);
        assert_eq!((usize::from(hdr.csum_start), hdr.csum_offset), (ip, 6));
        assert_eq!(usize::from(hdr.hdr_len), ip + 8);
        // Exactly what the kernel hands over for a UDP_SEGMENT send of the same bytes.
        let all: Vec<u8> = pkts.iter().flat_map(|p| p[ip + 8..].to_vec()).collect();
        let (want_hdr, want) = spec.gso(&all, 500);
        assert_eq!((hdr, merged), (&want_hdr, &want));
        // And segmenting it gives back the original datagrams, byte for byte.
        assert_eq!(segment_all(hdr, merged), pkts);
    }
}

#[test]
fn udp_merges_only_when_asked_and_never_with_tcp() {
    let spec = Spec::udp(false);
    let pkts = flow(&spec, 3, 300);
    // The default coalescer leaves UDP alone (a kernel before 6.2 refuses USO writes).
    assert_unmerged(&pkts);
    // A TCP flow with the same addresses and ports is another flow.
    let tcp = flow(&Spec::tcp4(), 2, 300);
    let batch = vec![
        pkts[0].clone(),
        tcp[0].clone(),
        pkts[1].clone(),
        tcp[1].clone(),
    ];
    let out = coalesce_with(Coalescer::with_udp(), &batch);
    assert_eq!(out.len(), 2);
    assert_eq!(
        segment_all(&out[0].0, &out[0].1),
        vec![pkts[0].clone(), pkts[1].clone()]
    );
    assert_eq!(segment_all(&out[1].0, &out[1].1), tcp);
}

#[test]
fn udp_datagrams_that_must_stay_apart() {
    let spec = Spec::udp(false);
    let unmerged = |batch: &[Vec<u8>]| {
        let out = coalesce_with(Coalescer::with_udp(), batch);
        assert_eq!(out.len(), batch.len());
        for ((h, p), want) in out.iter().zip(batch) {
            assert_eq!(*h, VirtioNetHdr::NONE);
            assert_eq!(p, want);
        }
    };
    // Larger than the first, or after a shorter one.
    unmerged(&[spec.nth(0, &[1; 100]), spec.nth(1, &[2; 200])]);
    let out = coalesce_with(
        Coalescer::with_udp(),
        &[
            spec.nth(0, &[1; 100]),
            spec.nth(1, &[2; 50]),
            spec.nth(2, &[3; 50]),
        ],
    );
    assert_eq!(out.len(), 2);
    // Other ports, TTL or TOS.
    for other in [
        Spec {
            sport: 1,
            ..spec.clone()
        },
        Spec {
            ttl: 3,
            ..spec.clone()
        },
        Spec {
            tos: 4,
            ..spec.clone()
        },
    ] {
        unmerged(&[spec.nth(0, &[1; 100]), other.nth(1, &[2; 100])]);
    }
    // No checksum (IPv4 UDP may send none): written alone, never given one.
    let mut none = spec.nth(1, &[2; 100]);
    none[26..28].copy_from_slice(&[0, 0]);
    unmerged(&[spec.nth(0, &[1; 100]), none.clone(), spec.nth(2, &[3; 100])]);
    // A corrupt datagram is written unchanged for the kernel to drop, and ends the item.
    let mut bad = spec.nth(1, &[2; 100]);
    bad[40] ^= 0xFF;
    unmerged(&[spec.nth(0, &[1; 100]), bad, spec.nth(2, &[3; 100])]);
    // An empty datagram.
    unmerged(&[spec.nth(0, &[]), spec.nth(1, &[])]);
}

#[test]
fn a_udp_write_holds_at_most_64_datagrams() {
    let pkts = flow(&Spec::udp(false), 70, 64);
    let out = coalesce_with(Coalescer::with_udp(), &pkts);
    assert_eq!(out.len(), 2);
    let back: Vec<Vec<u8>> = out.iter().flat_map(|(h, p)| segment_all(h, p)).collect();
    assert_eq!(segment_all(&out[0].0, &out[0].1).len(), 64);
    assert_eq!(back.len(), 70);
    // The second write's IPv4 identifications continue from its own first datagram.
    assert_eq!(back, pkts);
}

// ---- properties ----

fn arb_tcp_spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        0usize..=10,
        any::<u32>(),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(|(v6, words, seq, id, psh)| Spec {
            v6,
            seq,
            id,
            options: (0..words * 4).map(|i| i as u8 | 1).collect(),
            flags: if psh { TCP_ACK | TCP_PSH } else { TCP_ACK },
            ..Spec::tcp4()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Segment a kernel-style super-packet, check every segment independently, then
    /// coalesce the segments back into exactly the super-packet.
    #[test]
    fn tso_segment_coalesce_round_trip(spec in arb_tcp_spec(), len in 0usize..=65000, mss in 64u16..=9000) {
        let hdrs = spec.ip_hlen() + spec.l4_hlen();
        let len = len.min(65535 - hdrs);
        let data = payload(len, mss as u8);
        let (hdr, pkt) = spec.gso(&data, mss);
        let segs = segment_all(&hdr, &pkt);
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)).max(1));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            joined.extend_from_slice(check_wire(s));
            prop_assert_eq!(tcp_field(s, 4), spec.seq.wrapping_add((i * usize::from(mss)) as u32));
            let last = i + 1 == segs.len();
            prop_assert_eq!(tcp_flags(s) & TCP_PSH != 0, last && spec.flags & TCP_PSH != 0);
        }
        prop_assert_eq!(&joined, &data);
        let out = coalesce(&segs);
        prop_assert_eq!(out.len(), 1);
        if segs.len() > 1 {
            prop_assert_eq!(&out[0].0, &hdr);
            prop_assert_eq!(&out[0].1, &pkt);
        } else {
            prop_assert_eq!(&out[0], &(VirtioNetHdr::NONE, segs[0].clone()));
        }
    }

    #[test]
    fn uso_segments_check_out(v6 in any::<bool>(), len in 0usize..=20000, mss in 1u16..=3000) {
        let spec = Spec::udp(v6);
        let data = payload(len, 0);
        let (hdr, pkt) = spec.gso(&data, mss);
        let segs = segment_all(&hdr, &pkt);
        let joined: Vec<u8> = segs.iter().flat_map(|s| check_wire(s).to_vec()).collect();
        prop_assert_eq!(joined, data);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        fuzz_offload(&data);
    }

    /// Valid super-packets with a few bytes (header or packet) overwritten.
    #[test]
    fn never_panics_on_mutated_packets(
        spec in arb_tcp_spec(),
        udp in any::<bool>(),
        len in 0usize..4000,
        mss in 1u16..2000,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let spec = Spec { udp, ..spec };
        let (hdr, pkt) = spec.gso(&payload(len, 1), mss);
        let mut input = [&hdr.encode()[..], &pkt].concat();
        let n = input.len();
        // Favour the headers, where the parsing is.
        for (at, v) in edits {
            input[at % n.min(80)] = v;
        }
        fuzz_offload(&input);
        // Also a batch of (possibly corrupted) segments through the coalescer.
        if let Ok(seg) = Segmenter::new(&hdr, &pkt)
            && seg.len() <= 64
        {
                let mut segs = segment_all(&hdr, &pkt);
                let k = segs.len();
                let at = (len % 60).min(segs[k / 2].len() - 1);
                segs[k / 2][at] ^= 0x5a;
                for s in &segs {
                    let mut d = hdr.encode().to_vec();
                    d[1] = 0;
                    d.extend_from_slice(s);
                    fuzz_offload(&d);
                }
                let _ = coalesce(&segs);
        }
    }
}
