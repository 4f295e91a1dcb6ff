//! CLADNet's in-kernel dataplane programs.
//!
//! Entry points are thin: each calls a `try_*` function and maps its error class to an
//! explicit verdict. This first version classifies and counts traffic on the underlay device;
//! encapsulation and decapsulation build on the same parsing and maps.
#![no_std]
#![no_main]

mod parse;
mod ptr;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use cladnet_common::maps::{Config, Counters, StatSlot};
use parse::{NotUdp, eth_ipv4_udp};

#[map(name = "STATS")]
static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(StatSlot::COUNT, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// XDP on the underlay device: counts datagrams aimed at the tunnel port.
#[xdp]
pub fn cladnet_xdp_underlay(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match classify(ctx.data(), ctx.data_end()) {
        Ok(true) => count(StatSlot::XdpTunnelRx, len),
        Ok(false) | Err(NotUdp::NotIpv4 | NotUdp::NotUdp | NotUdp::Truncated) => {
            count(StatSlot::XdpOtherRx, len)
        }
    }
    xdp_action::XDP_PASS
}

/// TC egress on the underlay device: counts datagrams leaving for a tunnel port.
#[classifier]
pub fn cladnet_tc_underlay_egress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    match classify(ctx.data(), ctx.data_end()) {
        Ok(true) => count(StatSlot::TcTunnelTx, len),
        Ok(false) | Err(NotUdp::NotIpv4 | NotUdp::NotUdp | NotUdp::Truncated) => {
            count(StatSlot::TcOtherTx, len)
        }
    }
    TC_ACT_OK
}

/// Is the frame in `[start, end)` a UDP/IPv4 datagram to the configured tunnel port?
#[inline(always)]
fn classify(start: usize, end: usize) -> Result<bool, NotUdp> {
    let dst = eth_ipv4_udp(start, end)?;
    let port = match CONFIG.get(0) {
        Some(cfg) => cfg.tunnel_port_be(),
        None => Config::default().tunnel_port_be(),
    };
    Ok(dst.port_be == port)
}

#[inline(always)]
fn count(slot: StatSlot, len: u64) {
    if let Some(c) = STATS.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; the pointer comes from the map.
        unsafe { (*c).add(len) }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
