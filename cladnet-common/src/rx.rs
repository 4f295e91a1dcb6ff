//! The receive decision for a datagram at the tunnel port, in a form the eBPF programs can use:
//! fixed-size prefixes of the payload plus its length instead of slices whose length the
//! verifier cannot follow. The decisions are those of the userspace engine
//! (`engine::router::inbound`: reflector, then [`wire::demux`], then
//! [`plain::decapsulate`]); the tests below check that the two agree on every input.
//!
//! Advertised prefixes follow WireGuard's AllowedIPs: a datagram's inner source must be the
//! sender's overlay address or lie in a prefix the sender owns, and its inner destination must
//! be this node's overlay address or lie in one of this node's own prefixes. Who owns an
//! address is a longest prefix match over the peer table ([`Owner`]; in the kernel, the
//! `PEERS` trie, whose entries carry the owner's node index).

use crate::{
    plain::{DropReason, KnownPeer},
    reflector,
    wire::{self, CLAD_HDR_LEN, CladHeader, CladType, Demux},
};

/// Bytes of the inner IPv4 header the checks read (the header without options).
pub const INNER_HDR_LEN: usize = wire::IPV4_HDR_LEN;

/// Who an overlay address belongs to: the longest prefix match of the address in the peer
/// table (in the kernel: `PEERS`, see [`crate::maps::PeerEntry::owner`]).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Owner {
    /// No entry covers the address.
    Nobody,
    /// A remote peer, by node index: its overlay /32 or one of its approved prefixes.
    Peer(u32),
    /// One of this node's own approved prefixes (a pod network or subnet behind it).
    Local,
}

/// Why a datagram at the tunnel port is not decapsulated in the kernel.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Reject {
    /// For the agent's socket: WireGuard, a reflector answer, a CLAD keepalive probe, a path
    /// MTU probe or acknowledgement (see [`crate::pmtu`]), a relay frame (see
    /// [`crate::relay`]), or (see
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
    if len >= reflector::MAGIC.len() && *head == reflector::MAGIC {
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
/// datagram of it. The inner source must be `peer`'s overlay address or an address `owner`
/// says `peer` owns (one of its approved prefixes); `owner` is asked only then.
#[inline(always)]
pub fn check_inner(
    hdr: &[u8; INNER_HDR_LEN],
    inner_len: usize,
    peer: &KnownPeer,
    owner: impl FnOnce([u8; 4]) -> Owner,
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
    check_source([hdr[12], hdr[13], hdr[14], hdr[15]], peer, owner)?;
    Ok(InnerFit::Exact)
}

/// The source rule of [`check_inner`] on its own: `src` is `peer`'s overlay address or lies in
/// a prefix `owner` says `peer` owns (WireGuard AllowedIPs semantics).
#[inline(always)]
pub fn check_source(
    src: [u8; 4],
    peer: &KnownPeer,
    owner: impl FnOnce([u8; 4]) -> Owner,
) -> Result<(), DropReason> {
    if src == peer.overlay_ip || owner(src) == Owner::Peer(peer.node_index) {
        Ok(())
    } else {
        Err(DropReason::SpoofedSource)
    }
}

/// Checks that a decapsulated inner packet (`hdr`: its first `min(len, 20)` bytes, already
/// accepted by [`check_inner`] or [`plain::decapsulate`](crate::plain::decapsulate)) is
/// addressed to `local`, this node's overlay address (network order). PLAIN is
/// unauthenticated: without this, a datagram naming a peer could make this node forward the
/// inner packet anywhere its routing table reaches. `local` 0.0.0.0 means not configured yet
/// (nothing is installed then), and checks nothing.
#[inline(always)]
pub fn check_destination(hdr: &[u8; INNER_HDR_LEN], local: [u8; 4]) -> Result<(), DropReason> {
    check_destination_in(hdr, local, |_| Owner::Nobody)
}

/// [`check_destination`], also accepting a destination in one of this node's own prefixes
/// (`owner` answers [`Owner::Local`]; asked only when the destination is not `local`): traffic
/// for the pods or the subnet behind this node.
#[inline(always)]
pub fn check_destination_in(
    hdr: &[u8; INNER_HDR_LEN],
    local: [u8; 4],
    owner: impl FnOnce([u8; 4]) -> Owner,
) -> Result<(), DropReason> {
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    if local != [0; 4] && dst != local && owner(dst) != Owner::Local {
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
    /// Another peer (node index 0x0a4d_0009).
    const OTHER: u32 = 0x0a4d_0009;

    /// The peer table both engines consult: PEER owns 10.244.3.0/24 (its podCIDR), OTHER owns
    /// 10.244.9.0/24, this node owns 10.244.2.0/24; overlay /32s as the agent installs them.
    fn owner(ip: [u8; 4]) -> Owner {
        match ip {
            [10, 244, 3, _] => Owner::Peer(PEER.node_index),
            [10, 244, 9, _] => Owner::Peer(OTHER),
            [10, 244, 2, _] => Owner::Local,
            [10, 77, 0, 3] => Owner::Peer(PEER.node_index),
            [10, 77, 0, 9] => Owner::Peer(OTHER),
            _ => Owner::Nobody,
        }
    }

    /// The kernel's decision built from the functions above, on a whole datagram.
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
        let fit = check_inner(&hdr, inner.len(), &peer, owner).map_err(Reject::Drop)?;
        if fit == InnerFit::Exact {
            check_destination_in(&hdr, LOCAL, owner).map_err(Reject::Drop)?;
        }
        Ok(fit)
    }

    /// The userspace engine's decision (router::inbound, minus the WireGuard machinery).
    fn userspace(d: &[u8], from: Option<KnownPeer>) -> Result<InnerFit, Reject> {
        if reflector::is_reflector(d) {
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
                Some(CladType::Probe | CladType::MtuProbe | CladType::MtuAck | CladType::Relay)
            )
        }) {
            return Err(Reject::ToSocket);
        }
        let inner = plain::decapsulate_owned(d, from, owner).map_err(Reject::Drop)?;
        let mut hdr = [0u8; INNER_HDR_LEN];
        hdr.copy_from_slice(&inner[..INNER_HDR_LEN]);
        check_destination_in(&hdr, LOCAL, owner).map_err(Reject::Drop)?;
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

    /// WireGuard AllowedIPs semantics: an inner source in the sender's prefixes is accepted,
    /// one in another peer's, this node's or nobody's is a spoof; a destination in this node's
    /// prefixes is accepted.
    #[test]
    fn prefixes_follow_allowed_ips() {
        let with = |src: [u8; 4], dst: [u8; 4]| {
            let (mut d, n) = datagram(PEER.node_index, src, 8);
            d[24..28].copy_from_slice(&dst);
            (d, n)
        };
        let spoof = Err(Reject::Drop(DropReason::SpoofedSource));
        for (src, dst, want) in [
            ([10, 244, 3, 7], LOCAL, Ok(InnerFit::Exact)),
            ([10, 244, 3, 7], [10, 244, 2, 5], Ok(InnerFit::Exact)),
            (PEER.overlay_ip, [10, 244, 2, 5], Ok(InnerFit::Exact)),
            ([10, 244, 9, 7], LOCAL, spoof),
            ([10, 244, 2, 7], LOCAL, spoof),
            ([10, 77, 0, 9], LOCAL, spoof),
            ([192, 168, 7, 7], LOCAL, spoof),
            (
                [10, 244, 3, 7],
                [10, 244, 9, 5],
                Err(Reject::Drop(DropReason::WrongDestination)),
            ),
        ] {
            let (d, n) = with(src, dst);
            assert_eq!(kernel(&d[..n], Some(PEER)), want, "{src:?} -> {dst:?}");
            assert_eq!(userspace(&d[..n], Some(PEER)), want, "{src:?} -> {dst:?}");
        }
        // Without the table (the engine today), only the /32 counts.
        let (d, n) = with([10, 244, 3, 7], LOCAL);
        assert_eq!(
            plain::decapsulate(&d[..n], Some(PEER)),
            Err(DropReason::SpoofedSource)
        );
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
        assert_eq!(classify(&reflector::MAGIC, 22), Err(Reject::ToSocket));
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
        // Relay frames (a WireGuard message behind a 12-byte header) go to the agent too.
        let relay = crate::relay::header(crate::relay::RelayKind::Send, 7, 9);
        let head: [u8; 8] = relay[..8].try_into().unwrap();
        assert_eq!(classify(&head, 12 + 32), Err(Reject::ToSocket));
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
        let mut next = crate::test_rng(0x9e37_79b9_7f4a_7c15);
        let sources = [
            PEER.overlay_ip,
            [10, 244, 3, 1],
            [10, 244, 9, 1],
            [10, 244, 2, 1],
        ];
        for _ in 0..20_000 {
            let src = sources[(next() % 4) as usize];
            let (mut d, n) = datagram(PEER.node_index, src, (next() % 40) as usize);
            let flips = next() % 4;
            for _ in 0..flips {
                let i = (next() % n as u64) as usize;
                d[i] = next() as u8;
            }
            let len = if next().is_multiple_of(4) {
                (next() % (n as u64 + 1)) as usize
            } else {
                n
            };
            agree(&d[..len], Some(PEER));
        }
    }
}
