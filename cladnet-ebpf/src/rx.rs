//! Receive side, shared by XDP and the TC ingress fallback: is this frame a valid PLAIN
//! datagram from a known peer? The decisions come from `cladnet_common::rx` (the same as the
//! userspace engine's); this module only reads the packet for them.

use cladnet_common::{
    maps::{EndpointKey, KernelDrop, StatSlot},
    plain::{DropReason, KnownPeer},
    rx::{INNER_HDR_LEN, InnerFit, Owner, Reject, check_destination_in, check_inner, classify},
    wire::{CLAD_HDR_LEN, PLAIN_OVERHEAD_V4},
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    maps::{ENDPOINTS, PEERS, config, count},
    parse::{ETH_HDR_LEN, NotTunnel, PAYLOAD_OFF, tunnel_datagram},
    ptr::read_at,
};

/// Bytes between the Ethernet header and the inner packet: outer IPv4 + UDP + CLAD.
pub(crate) const STRIP: usize = PLAIN_OVERHEAD_V4;
/// Bytes the checks read from the start of the frame: every header up to the inner IPv4
/// header (the TC hook pulls this many into the linear area).
pub(crate) const HEADERS_LEN: usize = ETH_HDR_LEN + STRIP + INNER_HDR_LEN;
/// Offset of the inner packet in the frame.
const INNER_OFF: usize = PAYLOAD_OFF + CLAD_HDR_LEN;

/// A valid PLAIN datagram: strip [`STRIP`] bytes after the Ethernet header.
pub(crate) struct Decap {
    /// The sender's counter slot.
    pub(crate) slot: u32,
    /// Length of the inner packet.
    pub(crate) inner_len: usize,
    /// Length of the inner IPv4 header.
    pub(crate) inner_ihl: usize,
    /// Inner IP protocol.
    pub(crate) inner_proto: u8,
}

/// Offset of the inner packet in the frame (before decapsulation).
pub(crate) const INNER_OFFSET: usize = INNER_OFF;

/// What to do with a frame that is not decapsulated.
pub(crate) enum Pass {
    /// Not a tunnel datagram for us: untouched (counted `rx_other`).
    NotOurs,
    /// For the agent's socket (counted `rx_to_socket`).
    ToSocket,
    /// Invalid: drop and count (charged to the peer at that endpoint, if any).
    Drop(KernelDrop, Option<u32>),
}

/// Who owns `ip`: the longest prefix in `PEERS` (a peer's /32 or approved prefix, or one of
/// this node's own prefixes).
#[inline(always)]
fn owner(ip: [u8; 4]) -> Owner {
    PEERS
        .get(&Key::new(32, ip))
        .map_or(Owner::Nobody, |e| e.owner())
}

/// Validates the frame in `[start, end)` (full length `frame_len`).
#[inline(always)]
pub(crate) fn try_decap(start: usize, end: usize, frame_len: usize) -> Result<Decap, Pass> {
    let cfg = config().ok_or(Pass::NotOurs)?;
    let dg = match tunnel_datagram(start, end, frame_len, &cfg) {
        Ok(dg) => dg,
        Err(NotTunnel::Other) => return Err(Pass::NotOurs),
        Err(NotTunnel::BadLength) => {
            count(StatSlot::RxTunnel, frame_len);
            return Err(Pass::Drop(KernelDrop::Truncated, None));
        }
    };
    count(StatSlot::RxTunnel, frame_len);
    if dg.fragmented {
        return Err(Pass::ToSocket);
    }
    let len = dg.payload_len;
    let truncated = Pass::Drop(KernelDrop::Truncated, None);
    let head: [u8; 8] = if len >= 8 {
        read_at(start, end, PAYLOAD_OFF).ok_or(truncated)?
    } else if len >= 4 {
        let [a, b, c, d]: [u8; 4] = read_at(start, end, PAYLOAD_OFF).ok_or(truncated)?;
        [a, b, c, d, 0, 0, 0, 0]
    } else if len >= 1 {
        let a: u8 = read_at(start, end, PAYLOAD_OFF).ok_or(truncated)?;
        [a, 0, 0, 0, 0, 0, 0, 0]
    } else {
        [0; 8]
    };
    let header = classify(&head, len).map_err(|r| match r {
        Reject::ToSocket => Pass::ToSocket,
        Reject::Unknown => Pass::Drop(KernelDrop::UnknownMessage, None),
        Reject::Drop(reason) => Pass::Drop(reason.into(), None),
    })?;
    let peer = ENDPOINTS
        .get_ptr(EndpointKey::from_wire(dg.src_ip, dg.src_port))
        // SAFETY: the pointer comes from the map and is read at once, as a copy.
        .map(|p| unsafe { *p })
        // Not a known endpoint: maybe a peer whose NAT gave this flow another port. The agent
        // checks the address and node id, learns the port (or drops and counts it), and
        // writes the new endpoint into ENDPOINTS; nothing here decides on partial knowledge.
        .ok_or(Pass::ToSocket)?;
    let slot = Some(peer.slot);
    if header.node_id() != peer.node_index {
        return Err(Pass::Drop(DropReason::WrongNode.into(), slot));
    }
    let inner_len = len - CLAD_HDR_LEN;
    let truncated = Pass::Drop(KernelDrop::Truncated, slot);
    let hdr: [u8; INNER_HDR_LEN] = if inner_len >= INNER_HDR_LEN {
        read_at(start, end, INNER_OFF).ok_or(truncated)?
    } else if inner_len >= 4 {
        let [a, b, c, d]: [u8; 4] = read_at(start, end, INNER_OFF).ok_or(truncated)?;
        let mut h = [0; INNER_HDR_LEN];
        h[0] = a;
        h[1] = b;
        h[2] = c;
        h[3] = d;
        h
    } else {
        [0; INNER_HDR_LEN]
    };
    let known = KnownPeer {
        node_index: peer.node_index,
        overlay_ip: peer.overlay_ip,
    };
    match check_inner(&hdr, inner_len, &known, owner) {
        Ok(InnerFit::Exact) => {
            check_destination_in(&hdr, cfg.local_overlay_ip(), owner)
                .map_err(|reason| Pass::Drop(reason.into(), slot))?;
            Ok(Decap {
                slot: peer.slot,
                inner_len,
                inner_ihl: usize::from(hdr[0] & 0x0f) * 4,
                inner_proto: hdr[9],
            })
        }
        Ok(InnerFit::Coalesced) => Err(Pass::ToSocket),
        Err(reason) => Err(Pass::Drop(reason.into(), slot)),
    }
}
