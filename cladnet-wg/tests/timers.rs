//! Timers: rekey, expiry, keepalives, retransmission, key erasure.

mod common;

use std::time::Duration;

use cladnet_wg::{Error, Event, MessageType, message_type};
use common::{Delivery, Net, Options, Side, ipv4_packet};

fn packet(i: u8) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[i; 24])
}

fn back(i: u8) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], &[i; 24])
}

fn handshakes(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::HandshakeCompleted { .. }))
        .count()
}

#[test]
fn rekey_after_120s_keeps_in_flight_packets_decrypting() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(120));
    assert_eq!(handshakes(&net.a.events), 1, "no rekey while idle");

    // A sends on its 120 s old keypair: the packet goes out, followed by a new initiation.
    net.send(Side::A, &packet(1));
    net.send(Side::A, &packet(2));
    let wire = net.take_wire();
    let kinds: Vec<_> = wire.iter().map(|d| message_type(&d.bytes)).collect();
    assert_eq!(
        kinds,
        vec![
            Some(MessageType::Transport),
            Some(MessageType::Initiation),
            Some(MessageType::Transport)
        ]
    );
    let (old_1, initiation, old_2) = (&wire[0], &wire[1], &wire[2]);

    // B answers; before the response reaches A, B sends on the old keypair.
    let Delivery::Network(_) = net.deliver(initiation) else {
        panic!("no response")
    };
    let response = net.take_wire().remove(0);
    net.send(Side::B, &back(3));
    let old_from_b = net.take_wire().remove(0);

    // A completes the rekey and confirms it with a keepalive on the new keypair.
    let Delivery::Network(_) = net.deliver(&response) else {
        panic!("no confirmation")
    };
    let confirmation = net.take_wire().remove(0);
    assert_eq!(handshakes(&net.a.events), 2);

    // In-flight packets on the old keypair still decrypt on both sides.
    assert_eq!(net.deliver(old_1), Delivery::Tunnel(packet(1)));
    assert_eq!(net.deliver(&old_from_b), Delivery::Tunnel(back(3)));
    assert_eq!(net.deliver(&confirmation), Delivery::Done);
    assert_eq!(handshakes(&net.b.events), 2);
    // After B switched to the new keypair, the old one is its previous: still accepted.
    assert_eq!(net.deliver(old_2), Delivery::Tunnel(packet(2)));

    net.send(Side::B, &back(4));
    net.send(Side::A, &packet(5));
    net.deliver_all();
    assert_eq!(net.a.tun.last(), Some(&back(4)));
    assert_eq!(net.b.tun.last(), Some(&packet(5)));
    assert!(net.a.errors.is_empty() && net.b.errors.is_empty());
}

#[test]
fn keypairs_are_rejected_after_180s() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(179));
    net.send(Side::A, &packet(1));
    let wire = net.take_wire(); // data on the old keypair, then a rekey initiation that gets lost
    assert_eq!(wire.len(), 2);
    net.jump(Duration::from_secs(2));
    assert_eq!(net.deliver(&wire[0]), Delivery::Err(Error::KeypairExpired));

    // A cannot send on the expired keypair: the packet waits for a handshake, which the
    // retransmission timer brings about since the first initiation was lost.
    assert_eq!(net.send(Side::A, &packet(2)), None);
    assert!(
        net.wire.is_empty(),
        "initiations are rate limited to one per REKEY_TIMEOUT"
    );
    net.advance(Duration::from_secs(6));
    assert_eq!(net.b.tun.last(), Some(&packet(2)));
}

#[test]
fn passive_keepalive_answers_silent_receivers() {
    let mut net = Net::new();
    net.establish();
    let b_tx = net.b.device.stats(net.b.peer).unwrap().tx_bytes;
    net.advance(Duration::from_secs(9));
    assert_eq!(net.b.device.stats(net.b.peer).unwrap().tx_bytes, b_tx);
    net.advance(Duration::from_secs(2));
    assert_eq!(
        net.b.device.stats(net.b.peer).unwrap().tx_bytes,
        b_tx + 32,
        "one keepalive"
    );
    net.advance(Duration::from_secs(30));
    assert_eq!(
        net.b.device.stats(net.b.peer).unwrap().tx_bytes,
        b_tx + 32,
        "only one"
    );
    // Having heard back, A did not start a new handshake at 15 s.
    assert_eq!(handshakes(&net.a.events), 1);
}

#[test]
fn new_handshake_when_data_gets_no_answer() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(11)); // B's keepalive arrives; all quiet
    net.send(Side::A, &packet(1));
    net.take_wire(); // lost
    net.jump(Duration::from_millis(14_900));
    net.drain_timers(Side::A);
    assert!(net.wire.is_empty());
    net.jump(Duration::from_millis(400)); // 15 s + at most 333 ms of jitter
    net.drain_timers(Side::A);
    assert_eq!(net.wire.len(), 1);
    assert_eq!(
        message_type(&net.wire[0].bytes),
        Some(MessageType::Initiation)
    );
}

#[test]
fn handshake_retries_then_gives_up() {
    let mut net = Net::new();
    net.send(Side::A, &packet(1));
    let mut initiations = net.take_wire().len();
    let start = net.now;
    let mut gave_up_at = None;
    while let Some(at) = net.a.device.poll_timeout() {
        if at > start + Duration::from_secs(200) {
            break;
        }
        net.now = net.now.max(at);
        net.drain_timers(Side::A);
        let wire = net.take_wire();
        assert!(
            wire.iter()
                .all(|d| message_type(&d.bytes) == Some(MessageType::Initiation))
        );
        initiations += wire.len();
        if gave_up_at.is_none() && net.a.events.contains(&Event::HandshakeTimedOut) {
            gave_up_at = Some(net.now - start);
        }
    }
    // The first initiation, then one retry per REKEY_TIMEOUT (+ jitter) until the attempt
    // counter exceeds MAX_TIMER_HANDSHAKES (18): 19 retries, as in the kernel.
    assert_eq!(initiations, 20);
    let gave_up_at = gave_up_at.expect("gave up");
    assert!(
        gave_up_at >= Duration::from_secs(100) && gave_up_at < Duration::from_secs(107),
        "{gave_up_at:?}"
    );
    assert_eq!(net.a.device.stats(net.a.peer).unwrap().queue_dropped, 1);
    // A new packet starts over.
    net.jump(Duration::from_secs(1));
    net.send(Side::A, &packet(2));
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet(2)]);
}

#[test]
fn initiations_are_rate_limited() {
    let mut net = Net::new();
    net.send(Side::A, &packet(1));
    for _ in 0..10 {
        net.jump(Duration::from_millis(400));
        net.send(Side::A, &packet(2));
    }
    assert_eq!(
        net.wire.len(),
        1,
        "at most one initiation per REKEY_TIMEOUT"
    );
    net.deliver_all();
    assert_eq!(net.b.tun.len(), 11, "every queued packet is delivered");
}

#[test]
fn persistent_keepalive_brings_the_tunnel_up_and_keeps_it() {
    let mut net = Net::with(Options {
        seed: 21,
        keepalive_a: Some(Duration::from_secs(25)),
        ..Options::default()
    });
    assert_eq!(net.a.device.poll_timeout(), Some(net.now), "starts at once");
    net.advance(Duration::from_millis(1));
    assert_eq!(handshakes(&net.a.events), 1);
    assert_eq!(net.b.device.endpoint(net.b.peer), Some(common::addr_a()));
    let rx = net.b.device.stats(net.b.peer).unwrap().rx_bytes;
    net.advance(Duration::from_secs(26));
    assert_eq!(
        net.b.device.stats(net.b.peer).unwrap().rx_bytes,
        rx + 32,
        "one keepalive after 25 s"
    );
    net.advance(Duration::from_secs(25));
    assert_eq!(net.b.device.stats(net.b.peer).unwrap().rx_bytes, rx + 64);
}

#[test]
fn keys_are_erased_after_three_reject_times() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(539));
    assert!(!net.a.events.contains(&Event::KeysErased));
    net.advance(Duration::from_secs(2));
    assert!(net.a.events.contains(&Event::KeysErased));
    assert!(net.b.events.contains(&Event::KeysErased));
    assert_eq!(net.a.device.poll_timeout(), None, "nothing left to do");
    net.send(Side::A, &packet(1));
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet(1)]);
}

#[test]
fn update_timers_is_idempotent_when_nothing_is_due() {
    let mut net = Net::new();
    net.establish();
    let mut out = [0_u8; 256];
    for _ in 0..3 {
        let (peer, action) = net.a.device.update_timers(net.now, &mut out);
        assert_eq!((peer, action), (None, cladnet_wg::Action::Done));
    }
}
