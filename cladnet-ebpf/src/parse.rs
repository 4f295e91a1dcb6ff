//! Header parsing shared by the XDP and TC programs.

use crate::ptr::ptr_at;

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;

/// Why a frame is not a UDP/IPv4 datagram we can look at. Every variant means "not ours":
/// the caller passes the packet on.
#[derive(Clone, Copy)]
pub(crate) enum NotUdp {
    /// Shorter than the headers it claims.
    Truncated,
    /// Not IPv4 (ARP, IPv6, ...).
    NotIpv4,
    /// IPv4 but not UDP, or a non-first fragment.
    NotUdp,
}

/// Where a UDP/IPv4 datagram in an Ethernet frame is going.
pub(crate) struct UdpDst {
    /// Destination port, network byte order.
    pub(crate) port_be: [u8; 2],
}

/// Parses Ethernet + IPv4 + UDP headers in `[start, end)`.
#[inline(always)]
pub(crate) fn eth_ipv4_udp(start: usize, end: usize) -> Result<UdpDst, NotUdp> {
    // SAFETY: ptr_at checked that the two bytes lie inside the packet.
    let ethertype = unsafe { *ptr_at::<[u8; 2]>(start, end, 12).ok_or(NotUdp::Truncated)? };
    if ethertype != ETH_P_IPV4 {
        return Err(NotUdp::NotIpv4);
    }
    // SAFETY: as above, for the first byte of the IPv4 header.
    let ver_ihl = unsafe { *ptr_at::<u8>(start, end, ETH_HDR_LEN).ok_or(NotUdp::Truncated)? };
    // SAFETY: as above, for the fragment offset field.
    let frag = unsafe { *ptr_at::<[u8; 2]>(start, end, ETH_HDR_LEN + 6).ok_or(NotUdp::Truncated)? };
    // SAFETY: as above, for the protocol field.
    let proto = unsafe { *ptr_at::<u8>(start, end, ETH_HDR_LEN + 9).ok_or(NotUdp::Truncated)? };
    if ver_ihl >> 4 != 4 {
        return Err(NotUdp::NotIpv4);
    }
    if proto != IPPROTO_UDP || (frag[0] & 0x1f) != 0 || frag[1] != 0 {
        return Err(NotUdp::NotUdp);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(NotUdp::Truncated);
    }
    // SAFETY: as above, for the UDP destination port.
    let port_be =
        unsafe { *ptr_at::<[u8; 2]>(start, end, ETH_HDR_LEN + ihl + 2).ok_or(NotUdp::Truncated)? };
    Ok(UdpDst { port_be })
}
