//! The userspace engine's side of path MTU discovery: the clamp. The searches are the
//! [`Node`](cladnet_core::node::Node)'s (its probes leave as its transmits, acknowledgements
//! reach it as [`Inbound::ToNode`]); what they find arrives as [`Command::SetRouteMtu`], which
//! sets the peer's limit ([`PeerCounters::set_mtu_limit`]) above which a DF packet is answered
//! with ICMP "fragmentation needed" ([`frag_needed`]) instead of being sent.

use super::*;

impl Router {
    /// Applies a route MTU from the Node: the peer's clamp (0 = none).
    pub(super) fn set_route_mtu(&self, slot: u32, mtu: Option<u32>) {
        if let Some(s) = self.stage().slots.get(&slot) {
            s.counters.set_mtu_limit(mtu.unwrap_or(0));
        }
    }
}

/// Writes into `out` the ICMP "fragmentation needed" (type 3, code 4) that tells the sender
/// of `packet` (an IPv4 packet with DF, too big for its peer's path) to send at most `mtu`
/// bytes; it comes from `from` (the destination the packet was for, so that reverse-path
/// filtering on the overlay device accepts it). Returns its length, or `None` for packets
/// that get no ICMP error (no DF, fragments, ICMP errors).
pub fn frag_needed(packet: &[u8], mtu: u32, from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.len() < ihl.max(20) || packet[0] >> 4 != 4 {
        return None;
    }
    let df = packet[6] & 0x40 != 0;
    let frag_offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
    if !df || frag_offset != 0 {
        return None;
    }
    // Never an ICMP error about an ICMP error (RFC 1122 3.2.2).
    if packet[9] == 1 && matches!(packet.get(ihl), Some(3 | 4 | 5 | 11 | 12) | None) {
        return None;
    }
    let quoted = &packet[..(ihl + 8).min(packet.len())];
    let len = 20 + 8 + quoted.len();
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&packet[12..16]);
    let hdr: [u8; 20] = out[..20].try_into().ok()?;
    out[10..12].copy_from_slice(&cladnet_common::encap::ipv4_checksum(&hdr));
    let icmp = &mut out[20..];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[6..8].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let sum = internet_checksum(icmp);
    icmp[2..4].copy_from_slice(&sum);
    Some(len)
}

fn internet_checksum(data: &[u8]) -> [u8; 2] {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p
    }

    fn route_mtu(node_id: &str, slot: u32, mtu: Option<u32>) -> Command {
        Command::SetRouteMtu {
            node_id: node_id.into(),
            overlay_ip: Ipv4Addr::new(10, 77, 0, 2),
            slot,
            mtu,
        }
    }

    #[test]
    fn df_packets_above_the_nodes_route_mtu_get_frag_needed() {
        let (a, b) = super::super::tests::pair(LinkMode::Plain);
        let a = a.router;
        let b_id = format!("node-{}", b.ip.octets()[3]);
        let mut out = vec![0u8; 4000];
        // No route MTU yet: the optimistic start sends what the device takes.
        assert!(matches!(
            a.outbound(Instant::now(), &tcp(1400, true), &mut out),
            Outbound::Send { .. }
        ));
        a.apply(Instant::now(), &route_mtu(&b_id, 0, Some(1364)))
            .unwrap();
        // Fits: sent.
        let ok = tcp(1364, true);
        assert!(matches!(
            a.outbound(Instant::now(), &ok, &mut out),
            Outbound::Send { .. }
        ));
        // One byte more with DF: ICMP back to the sender.
        let big = tcp(1365, true);
        let Outbound::ToTun(icmp) = a.outbound(Instant::now(), &big, &mut out) else {
            panic!("no ICMP");
        };
        let icmp = icmp.to_vec();
        assert_eq!(icmp.len(), 20 + 8 + 28);
        assert_eq!(&icmp[12..16], &[10, 77, 0, 2], "from the peer's address");
        assert_eq!(&icmp[16..20], &[10, 77, 0, 1], "to the sender");
        let hdr: [u8; 20] = icmp[..20].try_into().unwrap();
        assert_eq!(cladnet_common::encap::ipv4_checksum(&hdr), [0, 0]);
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1364);
        assert_eq!(internet_checksum(&icmp[20..]), [0, 0]);
        assert_eq!(&icmp[28..], &big[..28]);
        // Without DF: dropped and counted, no ICMP.
        assert_eq!(
            a.outbound(Instant::now(), &tcp(1365, false), &mut out),
            Outbound::Dropped(Drop::TooBig)
        );
        assert_eq!(a.drops().get(Drop::TooBig), 2);
        // The route goes (the peer moved slot): the clamp goes with it.
        a.apply(Instant::now(), &route_mtu(&b_id, 0, None)).unwrap();
        assert!(matches!(
            a.outbound(Instant::now(), &big, &mut out),
            Outbound::Send { .. }
        ));
    }

    #[test]
    fn path_mtu_messages_go_to_the_node() {
        let (a, _b) = super::super::tests::pair(LinkMode::Plain);
        let mut buf = [0u8; 100];
        let probe = cladnet_common::pmtu::probe(1, 5, 64, &mut buf)
            .unwrap()
            .to_vec();
        let mut out = [0u8; 100];
        let from = "198.51.100.2:8055".parse().unwrap();
        assert_eq!(
            a.router.inbound(Instant::now(), from, &probe, &mut out),
            Inbound::ToNode
        );
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error() {
        let mut p = tcp(1400, true);
        p[9] = 1;
        p[20] = 3;
        assert_eq!(
            frag_needed(&p, 1300, Ipv4Addr::LOCALHOST, &mut [0u8; 100]),
            None
        );
        p[20] = 8; // echo request: answered
        assert!(frag_needed(&p, 1300, Ipv4Addr::LOCALHOST, &mut [0u8; 100]).is_some());
    }
}
