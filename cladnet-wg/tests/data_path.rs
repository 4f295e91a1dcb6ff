//! The data side (`PeerData`): packet threads seal and open without the device, at once, and
//! the device's timers see what they did.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cladnet_wg::{Action, Error, Event, MessageType, PeerData, message_type, receiver_slot};
use common::{BUF, Net, Side, ipv4_packet};

fn packet(i: u16) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &i.to_be_bytes())
}

fn data(net: &Net, side: Side) -> Arc<PeerData> {
    let node = match side {
        Side::A => &net.a,
        Side::B => &net.b,
    };
    node.device.peer_data(node.peer).expect("the peer exists")
}

#[test]
fn no_session_is_left_to_the_device_which_queues_and_initiates() {
    let mut net = Net::new();
    let a = data(&net, Side::A);
    let mut out = [0_u8; BUF];
    assert_eq!(
        a.encapsulate(net.now, &packet(1), &mut out),
        Action::Err(Error::NoSession)
    );
    // The device queues it and initiates; once the session is up the data side sends.
    net.send(Side::A, &packet(1));
    assert_eq!(
        message_type(&net.wire[0].bytes),
        Some(MessageType::Initiation)
    );
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet(1)]);
    let Action::WriteToNetwork { datagram, to } = a.encapsulate(net.now, &packet(2), &mut out)
    else {
        panic!("the data side sends once a session is up")
    };
    assert_eq!(to, common::addr_b());
    let datagram = datagram.to_vec();
    // B opens it on its data side, found by the receiver slot.
    assert_eq!(receiver_slot(&datagram), Some(net.b.peer.slot()));
    let b = data(&net, Side::B);
    let mut inner = [0_u8; BUF];
    let Action::WriteToTunnel { packet: got, .. } =
        b.decapsulate(net.now, common::addr_a(), &datagram, &mut inner)
    else {
        panic!("B's data side opens A's packet")
    };
    assert_eq!(got, &packet(2)[..]);
}

/// Four threads seal on one session at once: every nonce is used exactly once, and all
/// packets open on the other side (in any order, inside the replay window).
#[test]
fn concurrent_senders_never_share_a_nonce() {
    let mut net = Net::new();
    net.establish();
    let (a, b, now) = (data(&net, Side::A), data(&net, Side::B), net.now);
    let sealed: Vec<Vec<u8>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4_u16)
            .map(|t| {
                let a = &a;
                s.spawn(move || {
                    let mut out = [0_u8; BUF];
                    (0..500_u16)
                        .map(
                            |i| match a.encapsulate(now, &packet(t * 1000 + i), &mut out) {
                                Action::WriteToNetwork { datagram, .. } => datagram.to_vec(),
                                other => panic!("unexpected {other:?}"),
                            },
                        )
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let counters: BTreeSet<u64> = sealed
        .iter()
        .map(|d| u64::from_le_bytes(d[8..16].try_into().unwrap()))
        .collect();
    assert_eq!(counters.len(), 2000, "a nonce was used twice");
    let opened = std::thread::scope(|s| {
        let threads: Vec<_> = sealed
            .chunks(500)
            .map(|chunk| {
                let b = &b;
                s.spawn(move || {
                    let mut out = [0_u8; BUF];
                    chunk
                        .iter()
                        .filter(|d| {
                            matches!(
                                b.decapsulate(now, common::addr_a(), d, &mut out),
                                Action::WriteToTunnel { .. }
                            )
                        })
                        .count()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(opened, 2000);
    // A replay of any of them is refused.
    let mut out = [0_u8; BUF];
    assert_eq!(
        b.decapsulate(now, common::addr_a(), &sealed[7], &mut out),
        Action::Err(Error::Replay)
    );
}

/// Data sent through the data side with no answer arms the new-handshake timer the device
/// runs (`KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` + jitter), exactly as through the device.
#[test]
fn data_side_traffic_drives_the_device_timers() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(20));
    let a = data(&net, Side::A);
    let mut out = [0_u8; BUF];
    assert!(matches!(
        a.encapsulate(net.now, &packet(1), &mut out),
        Action::WriteToNetwork { .. }
    ));
    // Lost. After 15 s (+ up to 1/3 s jitter) with no answer, the device initiates.
    net.advance(Duration::from_secs(14));
    assert!(net.wire.is_empty(), "nothing before the timer");
    net.jump(Duration::from_millis(1400));
    net.drain_timers(Side::A);
    let kinds: Vec<_> = net.wire.iter().map(|d| message_type(&d.bytes)).collect();
    assert_eq!(kinds, vec![Some(MessageType::Initiation)]);
}

/// A responder's session confirmed by a packet a packet thread opened, and a roam seen
/// there, reach the device's events and stats.
#[test]
fn confirmation_and_roaming_on_the_data_side_reach_the_device() {
    let mut net = Net::new();
    // A initiates; B answers through its device; the first transport message (A's queued
    // packet) is opened on B's data side, not its device.
    net.send(Side::A, &packet(1));
    let initiation = net.take_wire().remove(0);
    net.deliver(&initiation);
    let response = net.take_wire().remove(0);
    net.deliver(&response);
    let first = net.take_wire().remove(0);
    let b = data(&net, Side::B);
    let roamed: std::net::SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let mut out = [0_u8; BUF];
    assert!(matches!(
        b.decapsulate(net.now, roamed, &first.bytes, &mut out),
        Action::WriteToTunnel { .. }
    ));
    assert_eq!(b.endpoint(), Some(roamed));
    let mut events = Vec::new();
    while let Some((_, event)) = net.b.device.poll_event() {
        events.push(event);
    }
    assert_eq!(
        events,
        vec![
            Event::HandshakeCompleted { initiator: false },
            Event::EndpointChanged { endpoint: roamed }
        ]
    );
    assert_eq!(
        net.b.device.stats(net.b.peer).unwrap().last_handshake,
        Some(net.now)
    );
}
