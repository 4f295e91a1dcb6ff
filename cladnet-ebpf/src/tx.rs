//! Transmit side: TC egress on the overlay (TUN) device. Packets to a PLAIN peer are
//! encapsulated here and sent to the underlay; everything else goes on to the TUN reader.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS,
    },
    helpers::{bpf_check_mtu, bpf_redirect_neigh, bpf_skb_change_head},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use cladnet_common::{
    encap::OuterV4,
    maps::{Config, KernelDrop},
    wire::{IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, PLAIN_OVERHEAD_V4},
};

use crate::{
    maps::{PEERS, config, count_peer},
    parse::{ETH_HDR_LEN, ETH_P_IPV4},
};

/// Why a packet is not encapsulated.
pub(crate) enum Skip {
    /// Not for a PLAIN peer (or not encapsulable before anything changed): on to the TUN
    /// reader, unchanged.
    ToUserspace,
    /// Dropped after the packet was modified, or too big for the underlay.
    Drop(KernelDrop, u32),
}

/// Encapsulates the packet for its PLAIN peer; returns the redirect verdict.
#[inline(always)]
pub(crate) fn try_encap(ctx: &TcContext) -> Result<i32, Skip> {
    let cfg = config().ok_or(Skip::ToUserspace)?;
    let l2 = if cfg.flags & Config::FLAG_OVERLAY_ETH != 0 {
        let proto: [u8; 2] = ctx.load(12).map_err(|_| Skip::ToUserspace)?;
        if proto != ETH_P_IPV4 {
            return Err(Skip::ToUserspace);
        }
        ETH_HDR_LEN
    } else {
        0
    };
    let ip: [u8; IPV4_HDR_LEN] = ctx.load(l2).map_err(|_| Skip::ToUserspace)?;
    if ip[0] >> 4 != 4 {
        return Err(Skip::ToUserspace);
    }
    let key = Key::new(32, [ip[16], ip[17], ip[18], ip[19]]);
    let peer = *PEERS.get(&key).ok_or(Skip::ToUserspace)?;
    if !peer.is_plain() {
        return Err(Skip::ToUserspace);
    }
    let inner_len = ctx.len().saturating_sub(l2 as u32);

    // What the wire will carry: one datagram per GSO segment, each with the inner headers.
    // SAFETY: reading a field of the context the kernel passed in.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    let (packets, bytes) = if segs > 1 {
        let ihl = u32::from(ip[0] & 0x0f) * 4;
        let l4 = match ip[9] {
            IPPROTO_TCP => ctx
                .load::<u8>(l2 + ihl as usize + 12)
                .map(|doff| u32::from(doff >> 4) * 4)
                .unwrap_or(0),
            IPPROTO_UDP => 8,
            _ => 0,
        };
        (
            u64::from(segs),
            u64::from(inner_len) + u64::from(segs - 1) * u64::from(ihl + l4),
        )
    } else {
        (1, u64::from(inner_len))
    };

    // Room for outer IPv4 + UDP + CLAD between the (absent, on a TUN) MAC header and the
    // inner packet; FIXED_GSO keeps the segment size, which the overlay MTU already sized.
    let flags =
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(PLAIN_OVERHEAD_V4 as i32, BPF_ADJ_ROOM_MAC, u64::from(flags))
        .map_err(|_| Skip::ToUserspace)?;
    let failed = Skip::Drop(KernelDrop::EncapFailed, peer.slot);
    if l2 == 0 {
        // bpf_redirect_neigh drops an skb without a MAC header in front of the network
        // header: push a placeholder Ethernet header (the helper fills in the real one).
        // SAFETY: helper call on the context the kernel passed in.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HDR_LEN as u32, 0) } != 0 {
            return Err(failed);
        }
    }
    let outer = OuterV4 {
        src_ip: cfg.local_underlay_ip(),
        dst_ip: peer.underlay_ip(),
        src_port: cfg.tunnel_port_be(),
        dst_port: peer.underlay_port_be(),
    }
    .headers(cfg.local_node_index, inner_len);
    let mut frame = [0u8; ETH_HDR_LEN + PLAIN_OVERHEAD_V4];
    frame[12] = ETH_P_IPV4[0];
    frame[13] = ETH_P_IPV4[1];
    frame[ETH_HDR_LEN..].copy_from_slice(&outer);
    ctx.store(0, &frame, 0)
        .map_err(|_| Skip::Drop(KernelDrop::EncapFailed, peer.slot))?;

    // The whole frame (or every GSO segment) must fit the underlay MTU; the kernel does not
    // fragment it and the sender gets no ICMP, so this is counted (and the overlay MTU is
    // what prevents it).
    let mut mtu: u32 = 0;
    // SAFETY: helper call on the context the kernel passed in; `mtu` outlives the call.
    let fits = unsafe {
        bpf_check_mtu(
            ctx.as_ptr(),
            cfg.underlay_ifindex,
            &mut mtu,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        )
    };
    match fits {
        0 => {}
        1 | 2 => return Err(Skip::Drop(KernelDrop::Oversize, peer.slot)),
        _ => return Err(Skip::Drop(KernelDrop::EncapFailed, peer.slot)),
    }
    count_peer(peer.slot, false, packets, bytes);
    // SAFETY: helper call without a parameter struct (null, length 0).
    let verdict = unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(verdict as i32)
}
