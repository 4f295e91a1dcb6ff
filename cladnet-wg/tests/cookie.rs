//! The cookie mechanism under load.

mod common;

use std::time::Duration;

use cladnet_wg::{Action, Error, MessageType, message_type};
use common::{Datagram, Delivery, Net, Side, ipv4_packet};

fn packet() -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"payload")
}

#[test]
fn responder_under_load_demands_a_cookie() {
    let mut net = Net::new();
    net.b.device.set_under_load(true);
    net.send(Side::A, &packet());
    let initiation = net.take_wire().remove(0);

    // No Diffie-Hellman, no peer identified: just a cookie reply to the source.
    let mut out = [0_u8; 256];
    let (peer, action) =
        net.b
            .device
            .decapsulate(net.now, common::addr_a(), &initiation.bytes, &mut out);
    assert_eq!(peer, None);
    let Action::WriteToNetwork { datagram, to } = action else {
        panic!("{action:?}")
    };
    assert_eq!(to, common::addr_a());
    assert_eq!(message_type(datagram), Some(MessageType::CookieReply));
    let reply = Datagram {
        from: Side::B,
        bytes: datagram.to_vec(),
    };
    assert_eq!(
        net.b.device.endpoint(net.b.peer),
        None,
        "unauthenticated: no roaming"
    );

    // A stores the cookie; its next initiation (the retransmission) carries mac2 and passes.
    assert_eq!(net.deliver(&reply), Delivery::Done);
    assert!(
        net.wire.is_empty(),
        "the cookie reply itself triggers nothing"
    );
    net.advance(Duration::from_secs(6));
    assert_eq!(net.b.tun, vec![packet()]);
}

#[test]
fn cookie_is_bound_to_the_source_address() {
    let mut net = Net::new();
    net.b.device.set_under_load(true);
    net.send(Side::A, &packet());
    net.deliver_all(); // initiation → cookie reply → stored by A
    // A moves before retrying: the cookie no longer matches and B asks again.
    net.a.addr = "198.51.100.77:9999".parse().unwrap();
    net.jump(Duration::from_secs(6));
    net.drain_timers(Side::A);
    let retry = net.take_wire().remove(0);
    let Delivery::Network(again) = net.deliver(&retry) else {
        panic!("expected a new cookie reply")
    };
    assert_eq!(message_type(&again), Some(MessageType::CookieReply));
}

#[test]
fn initiator_under_load_demands_a_cookie_for_the_response() {
    let mut net = Net::new();
    net.a.device.set_under_load(true);
    net.send(Side::A, &packet());
    net.deliver_all(); // initiation → response → cookie reply from A → absorbed by B
    assert!(net.b.tun.is_empty());
    assert!(
        net.b.errors.is_empty(),
        "B accepted the cookie reply: {:?}",
        net.b.errors
    );
    // The retransmitted initiation gets a response stamped with A's cookie.
    net.advance(Duration::from_secs(6));
    assert_eq!(net.b.tun, vec![packet()]);
}

#[test]
fn forged_cookie_reply_is_rejected() {
    let mut net = Net::new();
    net.send(Side::A, &packet());
    let initiation = net.take_wire().remove(0);
    let mut reply = vec![3, 0, 0, 0];
    reply.extend_from_slice(&initiation.bytes[4..8]);
    reply.extend_from_slice(&[0x17; 56]);
    let forged = Datagram {
        from: Side::B,
        bytes: reply,
    };
    assert_eq!(
        net.deliver(&forged),
        Delivery::Err(Error::InvalidCookieReply)
    );
    let mut wrong_index = forged.clone();
    wrong_index.bytes[4] ^= 0xff;
    assert_eq!(
        net.deliver(&wrong_index),
        Delivery::Err(Error::UnknownReceiverIndex)
    );
}

#[test]
fn under_load_a_valid_mac2_goes_straight_through() {
    let mut net = Net::new();
    net.b.device.set_under_load(true);
    net.send(Side::A, &packet());
    net.deliver_all(); // initiation → cookie reply
    net.advance(Duration::from_secs(6)); // retransmission with mac2 → handshake
    assert_eq!(net.b.tun.len(), 1);
    net.advance(Duration::from_secs(11));
    // A sends data that gets lost; 15 s later it initiates again, with a cookie that is
    // still fresh (less than 115 s old): B answers at once.
    net.send(Side::A, &packet());
    net.take_wire();
    net.jump(Duration::from_millis(15_400));
    net.drain_timers(Side::A);
    let initiation = net.take_wire().remove(0);
    assert_eq!(
        message_type(&initiation.bytes),
        Some(MessageType::Initiation)
    );
    let Delivery::Network(answer) = net.deliver(&initiation) else {
        panic!("no answer")
    };
    assert_eq!(message_type(&answer), Some(MessageType::Response));
}
