//! Outer header parsing of underlay frames (Ethernet + IPv4 + UDP to the tunnel port).

use cladnet_common::{
    maps::Config,
    wire::{IPPROTO_UDP, IPV4_HDR_LEN, UDP_HDR_LEN},
};

use crate::ptr::read_at;

/// Length of an Ethernet header.
pub(crate) const ETH_HDR_LEN: usize = 14;
/// EtherType of IPv4, network order.
pub(crate) const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
/// Offset of the UDP payload in a frame whose IPv4 header has no options.
pub(crate) const PAYLOAD_OFF: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;

/// Why a frame is not a tunnel datagram for this host.
#[derive(Clone, Copy)]
pub(crate) enum NotTunnel {
    /// Not UDP/IPv4 to our tunnel port and address (ARP, IPv6, TCP, other ports, non-first
    /// fragments, IPv4 with options, short frames): the stack's business, passed untouched.
    Other,
    /// For the tunnel port, but the length fields disagree with the frame: dropped.
    BadLength,
}

/// A UDP/IPv4 datagram to this host's tunnel port, options-free outer header.
pub(crate) struct TunnelDatagram {
    /// Outer source address.
    pub(crate) src_ip: [u8; 4],
    /// Outer source port, network order.
    pub(crate) src_port: [u8; 2],
    /// UDP payload length (from the UDP header, checked against the IPv4 length and frame).
    pub(crate) payload_len: usize,
    /// The first fragment of a fragmented datagram: the stack reassembles it.
    pub(crate) fragmented: bool,
}

/// Parses the frame in `[start, end)` whose full length is `frame_len` (larger than
/// `end - start` only for a non-linear skb, whose headers the caller pulled in).
#[inline(always)]
pub(crate) fn tunnel_datagram(
    start: usize,
    end: usize,
    frame_len: usize,
    cfg: &Config,
) -> Result<TunnelDatagram, NotTunnel> {
    let eth: [u8; ETH_HDR_LEN] = read_at(start, end, 0).ok_or(NotTunnel::Other)?;
    if [eth[12], eth[13]] != ETH_P_IPV4 {
        return Err(NotTunnel::Other);
    }
    let ip: [u8; IPV4_HDR_LEN] = read_at(start, end, ETH_HDR_LEN).ok_or(NotTunnel::Other)?;
    // Version 4 without options (our encapsulator never writes options; the socket still
    // gets datagrams with options and the userspace engine handles them).
    if ip[0] != 0x45 || ip[9] != IPPROTO_UDP {
        return Err(NotTunnel::Other);
    }
    // A non-first fragment has no UDP header.
    if ip[6] & 0x1f != 0 || ip[7] != 0 {
        return Err(NotTunnel::Other);
    }
    let udp: [u8; UDP_HDR_LEN] =
        read_at(start, end, ETH_HDR_LEN + IPV4_HDR_LEN).ok_or(NotTunnel::Other)?;
    if [udp[2], udp[3]] != cfg.tunnel_port_be() {
        return Err(NotTunnel::Other);
    }
    let local = cfg.local_underlay_ip();
    if local != [0; 4] && [ip[16], ip[17], ip[18], ip[19]] != local {
        return Err(NotTunnel::Other);
    }
    let src_ip = [ip[12], ip[13], ip[14], ip[15]];
    let src_port = [udp[0], udp[1]];
    // The first fragment: its UDP length covers the whole datagram, which the stack
    // reassembles for the socket.
    if ip[6] & 0x20 != 0 {
        return Ok(TunnelDatagram {
            src_ip,
            src_port,
            payload_len: 0,
            fragmented: true,
        });
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if total < IPV4_HDR_LEN + UDP_HDR_LEN
        || total + ETH_HDR_LEN > frame_len
        || udp_len < UDP_HDR_LEN
        || udp_len > total - IPV4_HDR_LEN
    {
        return Err(NotTunnel::BadLength);
    }
    Ok(TunnelDatagram {
        src_ip,
        src_port,
        payload_len: udp_len - UDP_HDR_LEN,
        fragmented: false,
    })
}
