//! The receive decision for a datagram at the tunnel port, in a form the eBPF programs can use:
//! fixed-size prefixes of the payload plus its length instead of slices whose length the
//! verifier cannot follow. The decisions are those of the userspace engine
//! (`engine::router::inbound`: reflector, then [`wire::demux`], then
//! [`plain::decapsulate`]); the tests below check that the two agree on every input.

use crate::{
    plain::{DropReason, KnownPeer},
    wire::{self, CLAD_HDR_LEN, CladHeader, CladType, Demux},
};

/// First bytes of the controller reflector's answers (`cladnet_core::reflector::MAGIC`).
pub const REFLECTOR_MAGIC: [u8; 8] = *b"CLADRFL1";
/// Bytes of the inner IPv4 header the checks read.
pub const INNER_HDR_LEN: usize = 20;

/// Why a datagram at the tunnel port is not decapsulated in the kernel.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Reject {
    /// For the agent's socket: WireGuard, a reflector answer, a CLAD keepalive probe, a path
    /// MTU probe or acknowledgement (see [`crate::pmtu`]), or (see
    /// [`InnerFit::Coalesced`]) several datagrams merged by GRO.
    ToSocket,
    /// Neither WireGuard, CLAD nor a reflector answer.
    Unknown,
    /// An invalid PLAIN datagram.
    Drop(DropReason),
}

/// Classifies a tunnel payload of `len` bytes by its first bytes. `head` holds the first
/// `min(len, 8)` payload bytes; the rest of it is ignored. Returns the CLAD header of a
/// DATA_PLAIN datagram, which still needs the peer checks.
#[inline(always)]
pub fn classify(head: &[u8; 8], len: usize) -> Result<CladHeader, Reject> {
    if len >= REFLECTOR_MAGIC.len() && *head == REFLECTOR_MAGIC {
        return Err(Reject::ToSocket);
    }
    // demux looks at four bytes at most; a shorter payload is a shorter slice.
    let kind = match len {
        0 => Demux::Unknown,
        1..=3 => wire::demux(&head[..1]),
        _ => wire::demux(&head[..4]),
    };
    match kind {
        Demux::WireGuard(_) => Err(Reject::ToSocket),
        Demux::Unknown => Err(Reject::Unknown),
        Demux::Clad if len < CLAD_HDR_LEN => Err(Reject::Drop(DropReason::Truncated)),
        Demux::Clad => match CladHeader::decode(head) {
            Err(e) => Err(Reject::Drop(e.into())),
            Ok(h) if h.ty() == Some(CladType::DataPlain) => Ok(h),
            // Keepalive probes keep NAT mappings warm (the socket ignores them); path MTU
            // probes and acknowledgements are answered and counted by the agent.
            Ok(_) => Err(Reject::ToSocket),
        },
    }
}

/// How the inner packet fills the datagram.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum InnerFit {
    /// The inner IPv4 length is exactly the rest of the datagram: decapsulate.
    Exact,
    /// The inner packet is shorter than the datagram: several datagrams merged by GRO (the
    /// TC hook and generic XDP run after GRO, and the agent socket asks for UDP GRO), or
    /// trailing garbage. Left to the socket, which splits GRO batches and validates each
    /// datagram (dropping garbage as `bad_inner`).
    Coalesced,
}

/// Checks the inner packet of a DATA_PLAIN datagram from `peer` whose header already matched
/// (node index checked by the caller). `hdr` holds the first `min(inner_len, 20)` inner bytes.
/// A [`InnerFit::Coalesced`] datagram is not source-checked here: the socket validates each
/// datagram of it.
#[inline(always)]
pub fn check_inner(
    hdr: &[u8; INNER_HDR_LEN],
    inner_len: usize,
    peer: &KnownPeer,
) -> Result<InnerFit, DropReason> {
    if inner_len < 4 {
        return Err(DropReason::Truncated);
    }
    let ver_ihl = hdr[0];
    let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if ver_ihl >> 4 != 4
        || inner_len < INNER_HDR_LEN
        || total > inner_len
        || total < INNER_HDR_LEN
        || usize::from(ver_ihl & 0x0f) * 4 < INNER_HDR_LEN
    {
        return Err(DropReason::BadInner);
    }
    if total != inner_len {
        return Ok(InnerFit::Coalesced);
    }
    if [hdr[12], hdr[13], hdr[14], hdr[15]] != peer.overlay_ip {
        return Err(DropReason::SpoofedSource);
    }
    Ok(InnerFit::Exact)
}

/// Checks that a decapsulated inner packet (`hdr`: its first `min(len, 20)` bytes, already
/// accepted by [`check_inner`] or [`plain::decapsulate`](crate::plain::decapsulate)) is
/// addressed to `local`, this node's overlay address (network order). PLAIN is
/// unauthenticated: without this, a datagram naming a peer could make this node forward the
/// inner packet anywhere its routing table reaches. `local` 0.0.0.0 means not configured yet
/// (nothing is installed then), and checks nothing.
#[inline(always)]
pub fn check_destination(hdr: &[u8; INNER_HDR_LEN], local: [u8; 4]) -> Result<(), DropReason> {
    if local != [0; 4] && [hdr[16], hdr[17], hdr[18], hdr[19]] != local {
        return Err(DropReason::WrongDestination);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plain;

    const PEER: KnownPeer = KnownPeer {
        node_index: 0x0a4d_0003,
        overlay_ip: [10, 77, 0, 3],
    };
    /// The receiver's overlay address.
    const LOCAL: [u8; 4] = [10, 77, 0, 2];

    /// The kernel's decision built from the two functions above, on a whole datagram.
    fn kernel(d: &[u8], from: Option<KnownPeer>) -> Result<InnerFit, Reject> {
        let mut head = [0u8; 8];
        let n = d.len().min(8);
        head[..n].copy_from_slice(&d[..n]);
        let h = classify(&head, d.len())?;
        let peer = from.ok_or(Reject::Drop(DropReason::UnknownPeer))?;
        if h.node_id() != peer.node_index {
            return Err(Reject::Drop(DropReason::WrongNode));
        }
        let inner = &d[CLAD_HDR_LEN..];
        let mut hdr = [0u8; INNER_HDR_LEN];
        let m = inner.len().min(INNER_HDR_LEN);
        hdr[..m].copy_from_slice(&inner[..m]);
        let fit = check_inner(&hdr, inner.len(), &peer).map_err(Reject::Drop)?;
        if fit == InnerFit::Exact {
            check_destination(&hdr, LOCAL).map_err(Reject::Drop)?;
        }
        Ok(fit)
    }

    /// The userspace engine's decision (router::inbound, minus the WireGuard machinery).
    fn userspace(d: &[u8], from: Option<KnownPeer>) -> Result<InnerFit, Reject> {
        if d.starts_with(&REFLECTOR_MAGIC) {
            return Err(Reject::ToSocket);
        }
        match wire::demux(d) {
            Demux::WireGuard(_) => return Err(Reject::ToSocket),
            Demux::Unknown => return Err(Reject::Unknown),
            Demux::Clad => {}
        }
        if CladHeader::decode(d).is_ok_and(|h| {
            matches!(
                h.ty(),
                Some(CladType::Probe | CladType::MtuProbe | CladType::MtuAck)
            )
        }) {
            return Err(Reject::ToSocket);
        }
        let inner = plain::decapsulate(d, from).map_err(Reject::Drop)?;
        let mut hdr = [0u8; INNER_HDR_LEN];
        hdr.copy_from_slice(&inner[..INNER_HDR_LEN]);
        check_destination(&hdr, LOCAL).map_err(Reject::Drop)?;
        Ok(InnerFit::Exact)
    }

    fn agree(d: &[u8], from: Option<KnownPeer>) {
        let (k, u) = (kernel(d, from), userspace(d, from));
        match (k, u) {
            // The kernel leaves a short inner packet to the socket, which then drops it.
            (Ok(InnerFit::Coalesced), Err(Reject::Drop(DropReason::BadInner))) => {}
            _ => assert_eq!(k, u, "{d:02x?}"),
        }
    }

    fn datagram(node: u32, src: [u8; 4], payload: usize) -> ([u8; 96], usize) {
        let mut inner = [0u8; 64];
        let total = (20 + payload) as u16;
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&total.to_be_bytes());
        inner[9] = 17;
        inner[12..16].copy_from_slice(&src);
        inner[16..20].copy_from_slice(&LOCAL);
        let mut out = [0u8; 96];
        let n = plain::encapsulate(node, &inner[..20 + payload], &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn valid_datagrams_decapsulate() {
        let (d, n) = datagram(PEER.node_index, PEER.overlay_ip, 8);
        assert_eq!(kernel(&d[..n], Some(PEER)), Ok(InnerFit::Exact));
        agree(&d[..n], Some(PEER));
        // One extra byte: the kernel hands it to the socket.
        assert_eq!(kernel(&d[..n + 1], Some(PEER)), Ok(InnerFit::Coalesced));
    }

    #[test]
    fn only_packets_for_this_node_decapsulate() {
        let (mut d, n) = datagram(PEER.node_index, PEER.overlay_ip, 8);
        // Inner destination (CLAD 8 + IPv4 offset 16): another overlay node, a host on the
        // underlay, broadcast.
        for dst in [[10, 77, 0, 9], [192, 168, 1, 1], [255, 255, 255, 255]] {
            d[24..28].copy_from_slice(&dst);
            let want = Err(Reject::Drop(DropReason::WrongDestination));
            assert_eq!(kernel(&d[..n], Some(PEER)), want, "{dst:?}");
            assert_eq!(userspace(&d[..n], Some(PEER)), want, "{dst:?}");
        }
        let mut hdr = [0u8; INNER_HDR_LEN];
        hdr[16..20].copy_from_slice(&[10, 77, 0, 9]);
        assert_eq!(
            check_destination(&hdr, [0; 4]),
            Ok(()),
            "not configured yet"
        );
    }

    #[test]
    fn every_prefix_and_mutation_agrees_with_userspace() {
        let (d, n) = datagram(PEER.node_index, PEER.overlay_ip, 8);
        for len in 0..=n + 2 {
            for from in [Some(PEER), None] {
                agree(&d[..len], from);
            }
        }
        // Flip every byte of the CLAD header and inner header through interesting values.
        for i in 0..28 {
            for v in [
                0x00, 0x01, 0x04, 0x10, 0x11, 0x13, 0x14, 0x15, 0x16, 0x21, 0x45, 0x46, 0xff,
            ] {
                let mut m = d;
                m[i] = v;
                agree(&m[..n], Some(PEER));
            }
        }
    }

    #[test]
    fn demux_classes_match() {
        let wg = [4u8, 0, 0, 0, 9, 9, 9, 9];
        assert_eq!(classify(&wg, 8), Err(Reject::ToSocket));
        assert_eq!(classify(&wg, 4), Err(Reject::ToSocket));
        assert_eq!(classify(&REFLECTOR_MAGIC, 22), Err(Reject::ToSocket));
        let probe = CladHeader::new(CladType::Probe, 0, 7).to_bytes();
        assert_eq!(classify(&probe, 8), Err(Reject::ToSocket));
        // Path MTU probes (any size) and acknowledgements go to the agent.
        let mut buf = [0u8; 1400];
        let mtu_probe = crate::pmtu::probe(7, 1, 1400, &mut buf).unwrap();
        let head: [u8; 8] = mtu_probe[..8].try_into().unwrap();
        assert_eq!(classify(&head, 1400), Err(Reject::ToSocket));
        let ack = crate::pmtu::ack(7, 1, 1400);
        let head: [u8; 8] = ack[..8].try_into().unwrap();
        assert_eq!(classify(&head, ack.len()), Err(Reject::ToSocket));
        assert_eq!(classify(b"cladnet-", 22), Err(Reject::Unknown));
        assert_eq!(classify(&[0; 8], 0), Err(Reject::Unknown));
        assert_eq!(
            classify(&[0x11, 0, 0, 0, 0, 0, 0, 0], 5),
            Err(Reject::Drop(DropReason::Truncated))
        );
        assert_eq!(
            classify(&[0x11, 0, 0, 1, 0, 0, 0, 0], 8),
            Err(Reject::Drop(DropReason::BadHeader))
        );
    }

    #[test]
    fn pseudo_random_datagrams_agree() {
        // A small xorshift: no dependency, reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let (mut d, n) = datagram(PEER.node_index, PEER.overlay_ip, (next() % 40) as usize);
            let flips = next() % 4;
            for _ in 0..flips {
                let i = (next() % n as u64) as usize;
                d[i] = next() as u8;
            }
            let len = if next() % 4 == 0 {
                (next() % (n as u64 + 1)) as usize
            } else {
                n
            };
            agree(&d[..len], Some(PEER));
        }
    }
}
