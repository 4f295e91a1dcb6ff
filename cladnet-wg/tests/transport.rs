//! Transport data: replay protection and reordering.

mod common;

use cladnet_wg::Error;
use common::{Delivery, Net, Side, ipv4_packet};

fn packet(i: u32) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &i.to_be_bytes())
}

#[test]
fn duplicate_is_rejected() {
    let mut net = Net::new();
    net.establish();
    net.send(Side::A, &packet(1));
    let datagram = net.take_wire().remove(0);
    assert_eq!(net.deliver(&datagram), Delivery::Tunnel(packet(1)));
    assert_eq!(net.deliver(&datagram), Delivery::Err(Error::Replay));
}

#[test]
fn reordering_within_the_window_is_accepted() {
    let mut net = Net::new();
    net.establish();
    for i in 0..200 {
        net.send(Side::A, &packet(i));
    }
    let mut wire = net.take_wire();
    wire.reverse();
    // Interleave: newest first, then the rest in a scrambled but complete order.
    wire.swap(10, 150);
    wire.swap(3, 99);
    for datagram in &wire {
        assert!(matches!(net.deliver(datagram), Delivery::Tunnel(_)));
    }
    assert_eq!(net.b.tun.len(), 200);
    // Every one of them again: all duplicates.
    for datagram in &wire {
        assert_eq!(net.deliver(datagram), Delivery::Err(Error::Replay));
    }
}

#[test]
fn too_old_is_rejected() {
    let mut net = Net::new();
    net.establish(); // A used counter 0.
    for i in 1..=8200 {
        net.send(Side::A, &packet(i));
    }
    let wire = net.take_wire();
    // wire[k] carries counter k + 1. Deliver the newest (counter 8200) first.
    let newest = &wire[8199];
    assert!(matches!(net.deliver(newest), Delivery::Tunnel(_)));
    // Counter 72 is exactly 8128 behind: still inside the window.
    assert!(matches!(net.deliver(&wire[71]), Delivery::Tunnel(_)));
    // Counter 71 is 8129 behind: too old.
    assert_eq!(net.deliver(&wire[70]), Delivery::Err(Error::Replay));
    assert_eq!(net.deliver(&wire[0]), Delivery::Err(Error::Replay));
}

#[test]
fn forged_transport_does_not_move_window_or_endpoint() {
    let mut net = Net::new();
    net.establish();
    net.send(Side::A, &packet(1));
    let genuine = net.take_wire().remove(0);
    let mut forged = genuine.clone();
    // Same receiver index, far-future counter, garbage ciphertext, from another address.
    forged.bytes[8..16].copy_from_slice(&1_000_000_u64.to_le_bytes());
    forged.bytes[20] ^= 0xff;
    net.a.addr = "203.0.113.66:4444".parse().unwrap();
    assert_eq!(net.deliver(&forged), Delivery::Err(Error::DecryptionFailed));
    assert_eq!(net.b.device.endpoint(net.b.peer), Some(common::addr_a()));
    net.a.addr = common::addr_a();
    // The genuine packet (counter 1) is still accepted: the window did not move.
    assert_eq!(net.deliver(&genuine), Delivery::Tunnel(packet(1)));
}

#[test]
fn unknown_index_and_garbage_are_rejected() {
    let mut net = Net::new();
    net.establish();
    net.send(Side::A, &packet(1));
    let mut datagram = net.take_wire().remove(0);
    datagram.bytes[4] ^= 0x55;
    assert_eq!(
        net.deliver(&datagram),
        Delivery::Err(Error::UnknownReceiverIndex)
    );
    let junk = common::Datagram {
        from: Side::A,
        bytes: vec![0x45, 0, 0, 20],
    };
    assert_eq!(net.deliver(&junk), Delivery::Err(Error::MalformedMessage));
}

#[test]
fn invalid_inner_packet_is_reported_after_authentication() {
    let mut net = Net::new();
    net.establish();
    // A valid IPv4 header claiming more bytes than were sent.
    let mut lying = packet(5);
    lying[2..4].copy_from_slice(&100_u16.to_be_bytes());
    net.send(Side::A, &lying);
    net.deliver_all();
    assert_eq!(net.b.errors, vec![Error::InvalidInnerPacket]);
    // Encapsulating an empty packet is refused.
    assert_eq!(net.send(Side::A, &[]), Some(Error::InvalidInnerPacket));
}

#[test]
fn endpoint_roams_with_authenticated_packets() {
    let mut net = Net::new();
    net.establish();
    let roamed: std::net::SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    net.a.addr = roamed;
    net.send(Side::A, &packet(9));
    net.deliver_all();
    assert_eq!(net.b.device.endpoint(net.b.peer), Some(roamed));
    assert!(
        net.b
            .events
            .contains(&cladnet_wg::Event::EndpointChanged { endpoint: roamed })
    );
    let mut out = [0_u8; 256];
    let action = net
        .b
        .device
        .encapsulate(net.now, net.b.peer, &packet(10), &mut out);
    assert!(matches!(action, cladnet_wg::Action::WriteToNetwork { to, .. } if to == roamed));
}

#[test]
fn padding_stops_at_the_tunnel_mtu() {
    let mut net = Net::new();
    net.establish();
    let full = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[7; 1400]); // 1420 bytes
    net.send(Side::A, &full);
    assert_eq!(
        net.wire[0].bytes.len(),
        16 + 1424 + 16,
        "no MTU: padded to 16"
    );
    net.a.device.set_tunnel_mtu(Some(1420));
    net.send(Side::A, &full);
    assert_eq!(
        net.wire[1].bytes.len(),
        16 + 1420 + 16,
        "padding capped at the MTU"
    );
    net.send(Side::A, &packet(3));
    assert_eq!(
        net.wire[2].bytes.len(),
        16 + 32 + 16,
        "small packets still padded to 16"
    );
    net.deliver_all();
    assert_eq!(net.b.tun, vec![full.clone(), full, packet(3)]);
}
