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

/// Under load, a flood of initiations from one source costs the victim no Diffie-Hellman and
/// at most 20 cookie replies a second (bursts of 5); once the flooder answers cookies, its source address gets 5 messages
/// and then 20 per second. A legitimate peer at another address still completes its
/// handshake in the middle of the flood.
#[test]
fn under_load_a_flood_from_one_source_is_rate_limited_and_a_legit_peer_completes() {
    use cladnet_wg::{Device, PeerConfig, PrivateKey, WallClock};
    use rand::SeedableRng as _;

    let mut net = Net::new();
    net.b.device.set_under_load(true);
    let flooder_addr: std::net::SocketAddr = "203.0.113.66:4444".parse().unwrap();
    // The flooder knows B's public key (so mac1 is right) but is no peer of B.
    let mut flooder = Device::new(
        PrivateKey::from_bytes([0x66; 32]),
        rand::rngs::ChaCha20Rng::seed_from_u64(66),
        WallClock::new(net.now, std::time::SystemTime::now()),
    );
    let mut to_b = PeerConfig::new(net.b.key.public_key());
    to_b.endpoint = Some(common::addr_b());
    let b_on_flooder = flooder.add_peer(net.now, to_b).unwrap();
    let mut buf = [0_u8; 2048];
    let Action::WriteToNetwork { datagram, .. } =
        flooder.encapsulate(net.now, b_on_flooder, &packet(), &mut buf)
    else {
        panic!("initiation")
    };
    let first = datagram.to_vec();

    let mut out = [0_u8; 2048];
    let to_b =
        |net: &mut Net, bytes: &[u8], out: &mut [u8]| -> (bool, Result<MessageType, Error>) {
            let (peer, action) = net.b.device.decapsulate(net.now, flooder_addr, bytes, out);
            let result = match action {
                Action::WriteToNetwork { datagram, .. } => Ok(message_type(datagram).unwrap()),
                Action::Err(e) => Err(e),
                other => panic!("{other:?}"),
            };
            (peer.is_some(), result)
        };
    // Without mac2: no peer ever looked up; a cookie reply for the first 5 copies, then none
    // (cookie replies to one source are limited like its handshakes: 20 a second, bursts of 5).
    let mut cookie_reply = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let (identified, result) = to_b(&mut net, &first, &mut out);
        assert!(!identified);
        if result == Ok(MessageType::CookieReply) {
            cookie_reply = out[..64].to_vec();
        }
        *outcomes.entry(format!("{result:?}")).or_default() += 1;
    }
    assert_eq!(outcomes.get("Ok(CookieReply)"), Some(&5), "{outcomes:?}");
    assert_eq!(
        outcomes.get("Err(CookieRateLimited)"),
        Some(&95),
        "{outcomes:?}"
    );
    // The flooder takes the cookie, and its next initiation carries a valid mac2.
    let (_, action) = flooder.decapsulate(net.now, common::addr_b(), &cookie_reply, &mut buf);
    assert_eq!(action, Action::Done);
    net.jump(Duration::from_secs(6));
    let Action::WriteToNetwork { datagram, .. } = flooder.update_timers(net.now, &mut buf).1 else {
        panic!("retransmission")
    };
    let with_mac2 = datagram.to_vec();

    // Meanwhile A asks for a session, gets a cookie, and retries with mac2 as well.
    net.send(Side::A, &packet());
    net.deliver_all();
    net.jump(Duration::from_secs(6));
    net.drain_timers(Side::A);
    let a_retry = net.take_wire().remove(0);
    assert_eq!(message_type(&a_retry.bytes), Some(MessageType::Initiation));

    // 200 copies of the flooder's mac2-valid initiation at the same instant, A's in the middle.
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..200 {
        if i == 100 {
            net.deliver(&a_retry);
        }
        let (_, result) = to_b(&mut net, &with_mac2, &mut out);
        *outcomes.entry(format!("{result:?}")).or_default() += 1;
    }
    // The first copies reach the handshake (an unknown key, or a replayed timestamp would be
    // the next check); the rest stop at the rate limiter.
    assert_eq!(outcomes.get("Err(UnknownPeer)"), Some(&5), "{outcomes:?}");
    assert_eq!(outcomes.get("Err(RateLimited)"), Some(&195), "{outcomes:?}");
    net.deliver_all();
    assert_eq!(
        net.b.tun,
        vec![packet()],
        "A's handshake completed in the flood"
    );

    // A second later the flooder's address has earned 20 more messages, no more.
    net.jump(Duration::from_secs(1));
    let passed = (0..100)
        .filter(|_| to_b(&mut net, &with_mac2, &mut out).1 != Err(Error::RateLimited))
        .count();
    assert_eq!(passed, 5, "a full bucket holds a burst of 5");
    net.jump(Duration::from_millis(500));
    let passed = (0..100)
        .filter(|_| to_b(&mut net, &with_mac2, &mut out).1 != Err(Error::RateLimited))
        .count();
    assert_eq!(
        passed, 5,
        "half a second earns 10 tokens, capped at the burst of 5"
    );
    net.jump(Duration::from_millis(100));
    let passed = (0..100)
        .filter(|_| to_b(&mut net, &with_mac2, &mut out).1 != Err(Error::RateLimited))
        .count();
    assert_eq!(passed, 2, "100 ms earns 2");
}

/// The same checks as a separate gate, run before the device (outside its lock in the agent):
/// a cookie reply for a message without mac2, then the device completes the handshake with
/// the retry that carries one; copies of it beyond the burst stop at the gate.
#[test]
fn a_gate_in_front_of_the_device_demands_cookies_and_limits_sources() {
    use cladnet_wg::{GateVerdict, HandshakeGate};
    use rand::SeedableRng as _;

    let mut net = Net::new();
    let mut gate = HandshakeGate::new(
        &net.b.device.public_key(),
        rand::rngs::ChaCha20Rng::seed_from_u64(9),
    );
    let mut out = [0_u8; 256];
    net.send(Side::A, &packet());
    let initiation = net.take_wire().remove(0);
    assert_eq!(
        gate.check(
            net.now,
            false,
            common::addr_a(),
            &initiation.bytes,
            &mut out
        ),
        GateVerdict::Pass,
        "not under load: straight through"
    );
    let GateVerdict::CookieReply(len) =
        gate.check(net.now, true, common::addr_a(), &initiation.bytes, &mut out)
    else {
        panic!("under load, no mac2: cookie reply")
    };
    let mut garbage = initiation.bytes.clone();
    garbage[20] ^= 1;
    assert_eq!(
        gate.check(net.now, true, common::addr_a(), &garbage, &mut out[..0]),
        GateVerdict::Drop(Error::InvalidMac)
    );
    let reply = Datagram {
        from: Side::B,
        bytes: out[..len].to_vec(),
    };
    assert_eq!(net.deliver(&reply), Delivery::Done, "A keeps the cookie");
    net.jump(Duration::from_secs(6));
    net.drain_timers(Side::A);
    let retry = net.take_wire().remove(0);
    for _ in 0..5 {
        assert_eq!(
            gate.check(net.now, true, common::addr_a(), &retry.bytes, &mut out),
            GateVerdict::Pass
        );
    }
    assert_eq!(
        gate.check(net.now, true, common::addr_a(), &retry.bytes, &mut out),
        GateVerdict::Drop(Error::RateLimited)
    );
    // The device itself is not under load: what passed the gate completes the handshake.
    net.deliver(&retry);
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet()]);
    // Transport data is not the gate's business.
    net.send(Side::A, &packet());
    let data = net.take_wire().remove(0);
    assert_eq!(
        gate.check(net.now, true, common::addr_a(), &data.bytes, &mut out),
        GateVerdict::Pass
    );
}

/// The gate also reads initiations, so that their Diffie-Hellman runs outside the device (and
/// outside its lock in the agent): random contents fail at the gate, and a peer's initiation
/// read there completes its handshake through `Device::accept_initiation`.
#[test]
fn a_gate_reads_initiations_and_the_device_accepts_them() {
    use cladnet_wg::{Action, HandshakeGate};
    use rand::SeedableRng as _;

    let mut net = Net::new();
    let mut gate =
        HandshakeGate::with_private_key(&net.b.key, rand::rngs::ChaCha20Rng::seed_from_u64(9));
    net.send(Side::A, &packet());
    let initiation = net.take_wire().remove(0);
    // A flood's initiation: right mac1, but an encrypted static key that does not decrypt.
    let mut forged = initiation.bytes.clone();
    forged[60] ^= 1;
    assert!(matches!(
        gate.read_initiation(&forged),
        Some(Err(Error::HandshakeFailed))
    ));
    // Not an initiation: not the gate's to read.
    assert!(gate.read_initiation(&[4, 0, 0, 0]).is_none());
    let read = gate
        .read_initiation(&initiation.bytes)
        .expect("an initiation")
        .expect("decrypts against B's key");
    let mut out = [0_u8; 2048];
    let src = common::addr_a();
    let (peer, action) = net.b.device.accept_initiation(net.now, src, read, &mut out);
    assert!(peer.is_some(), "A identified");
    let Action::WriteToNetwork { datagram, to } = action else {
        panic!("a response, not {action:?}")
    };
    assert_eq!(to, src);
    assert_eq!(message_type(datagram), Some(MessageType::Response));
    let response = Datagram {
        from: Side::B,
        bytes: datagram.to_vec(),
    };
    net.deliver(&response);
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet()], "A's queued packet arrived");
}
