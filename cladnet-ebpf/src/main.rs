//! CLADNet's in-kernel PLAIN dataplane.
//!
//! * `cladnet_tc_overlay_egress` (TC egress on the overlay TUN): packets to a PLAIN peer get
//!   outer IPv4 + UDP + CLAD headers and leave through the underlay (`bpf_redirect_neigh`);
//!   the rest goes on to the userspace engine.
//! * `cladnet_xdp_underlay` (XDP on the underlay NIC) and `cladnet_tc_underlay_ingress` (the
//!   TC fallback): valid PLAIN datagrams from known peers are stripped and passed to the
//!   stack; WireGuard and reflector traffic passes to the agent's socket; other garbage at the
//!   tunnel port is dropped and counted.
//!
//! Entry points are thin: each calls a `try_*` function and maps its error class to an
//! explicit verdict and counter.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod ptr;
mod rx;
mod tx;

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action,
    },
    helpers::bpf_xdp_adjust_head,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use cladnet_common::{
    maps::{KernelDrop, StatSlot},
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};
use maps::{count, count_drop, count_peer};
use parse::{ETH_HDR_LEN, ETH_P_IPV4};
use ptr::{ptr_at, read_at};
use rx::{Decap, HEADERS_LEN, Pass, STRIP};
use tx::Skip;

/// XDP on the underlay device: decapsulates valid PLAIN datagrams.
#[xdp]
pub fn cladnet_xdp_underlay(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame_len = end - start;
    match rx::try_decap(start, end, frame_len) {
        Ok(d) => xdp_strip(&ctx, d, frame_len),
        Err(pass) => match rx_pass(pass, frame_len) {
            Verdict::Pass => xdp_action::XDP_PASS,
            Verdict::Drop => xdp_action::XDP_DROP,
        },
    }
}

/// Removes the outer headers in front of the inner packet and rebuilds the Ethernet header
/// there (same addresses, EtherType IPv4).
#[inline(always)]
fn xdp_strip(ctx: &XdpContext, d: Decap, frame_len: usize) -> u32 {
    let Some(macs) = read_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0) else {
        return drop_verdict(KernelDrop::Truncated, Some(d.slot));
    };
    // SAFETY: helper call on the context the kernel passed in.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, STRIP as i32) } != 0 {
        // Nothing changed: the socket gets the datagram and the userspace engine decides.
        count(StatSlot::RxToSocket, frame_len);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<[u8; ETH_HDR_LEN]>(ctx.data(), ctx.data_end(), 0) else {
        return drop_verdict(KernelDrop::Truncated, Some(d.slot));
    };
    let mut new = [0u8; ETH_HDR_LEN];
    new[..12].copy_from_slice(&macs);
    new[12] = ETH_P_IPV4[0];
    new[13] = ETH_P_IPV4[1];
    // SAFETY: ptr_at checked that the 14 bytes lie inside the (adjusted) packet.
    unsafe { eth.write_unaligned(new) };
    count_peer(d.slot, true, 1, d.inner_len as u64);
    xdp_action::XDP_PASS
}

/// TC ingress on the underlay device, where XDP cannot attach: the same validation, then
/// `bpf_skb_adjust_room` removes the outer headers.
#[classifier]
pub fn cladnet_tc_underlay_ingress(ctx: TcContext) -> i32 {
    let frame_len = ctx.len() as usize;
    // The checks read the headers through direct packet access: make them linear.
    let want = if frame_len < HEADERS_LEN {
        frame_len
    } else {
        HEADERS_LEN
    };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
    match rx::try_decap(ctx.data(), ctx.data_end(), frame_len) {
        Ok(d) => {
            let (packets, bytes) = tc_rx_segments(&ctx, &d);
            // FIXED_GSO: a GSO packet (from a local veth peer) keeps its inner segment size.
            if ctx
                .adjust_room(
                    -(STRIP as i32),
                    BPF_ADJ_ROOM_MAC,
                    u64::from(BPF_F_ADJ_ROOM_FIXED_GSO),
                )
                .is_err()
            {
                count(StatSlot::RxToSocket, frame_len);
                return TC_ACT_OK;
            }
            count_peer(d.slot, true, packets, bytes);
            TC_ACT_OK
        }
        Err(pass) => match rx_pass(pass, frame_len) {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Drop => TC_ACT_SHOT,
        },
    }
}

/// Packets and inner bytes a received skb stands for: one, or for a GSO skb (sent
/// unsegmented over a local veth) its segments, each with the inner headers, as the sender
/// counted them.
#[inline(always)]
fn tc_rx_segments(ctx: &TcContext, d: &Decap) -> (u64, u64) {
    // SAFETY: reading a field of the context the kernel passed in.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    if gso_size == 0 {
        return (1, d.inner_len as u64);
    }
    let l4 = match d.inner_proto {
        IPPROTO_TCP => ctx
            .load::<u8>(rx::INNER_OFFSET + d.inner_ihl + 12)
            .map(|doff| usize::from(doff >> 4) * 4)
            .unwrap_or(0),
        IPPROTO_UDP => 8,
        _ => 0,
    };
    let hdrs = d.inner_ihl + l4;
    let payload = d.inner_len.saturating_sub(hdrs);
    let segs = payload.div_ceil(gso_size).max(1);
    (segs as u64, (d.inner_len + (segs - 1) * hdrs) as u64)
}

/// TC egress on the overlay (TUN) device: encapsulates packets for PLAIN peers.
#[classifier]
pub fn cladnet_tc_overlay_egress(ctx: TcContext) -> i32 {
    match tx::try_encap(&ctx) {
        Ok(verdict) => verdict,
        Err(Skip::ToUserspace) => {
            count(StatSlot::TxToUserspace, ctx.len() as usize);
            TC_ACT_OK
        }
        Err(Skip::Drop(reason, slot)) => {
            count_drop(reason, Some(slot), false);
            TC_ACT_SHOT
        }
    }
}

enum Verdict {
    Pass,
    Drop,
}

/// Counts a frame that is not decapsulated and says whether it passes.
#[inline(always)]
fn rx_pass(pass: Pass, frame_len: usize) -> Verdict {
    match pass {
        Pass::NotOurs => {
            count(StatSlot::RxOther, frame_len);
            Verdict::Pass
        }
        Pass::ToSocket => {
            count(StatSlot::RxToSocket, frame_len);
            Verdict::Pass
        }
        Pass::Drop(reason, slot) => {
            count_drop(reason, slot, true);
            Verdict::Drop
        }
    }
}

#[inline(always)]
fn drop_verdict(reason: KernelDrop, slot: Option<u32>) -> u32 {
    count_drop(reason, slot, true);
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
