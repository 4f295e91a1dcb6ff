//! Handshake flows between two in-memory devices.

mod common;

use std::time::Duration;

use cladnet_wg::{Error, Event, MessageType, message_type};
use common::{Delivery, Net, Options, Side, ipv4_packet};

#[test]
fn handshake_then_data_both_ways() {
    let mut net = Net::new();
    let first = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"first");
    assert_eq!(net.send(Side::A, &first), None);
    assert_eq!(net.wire.len(), 1);
    assert_eq!(
        message_type(&net.wire[0].bytes),
        Some(MessageType::Initiation)
    );
    assert_eq!(net.wire[0].bytes.len(), 148);

    let initiation = net.wire.remove(0);
    let Delivery::Network(response) = net.deliver(&initiation) else {
        panic!("no response")
    };
    assert_eq!(message_type(&response), Some(MessageType::Response));
    assert_eq!(response.len(), 92);
    // B learnt A's endpoint from the authenticated initiation.
    assert_eq!(net.b.device.endpoint(net.b.peer), Some(common::addr_a()));

    net.deliver_all();
    assert_eq!(net.b.tun, vec![first.clone()]);
    assert!(
        net.a
            .events
            .contains(&Event::HandshakeCompleted { initiator: true })
    );
    assert!(
        net.b
            .events
            .contains(&Event::HandshakeCompleted { initiator: false })
    );

    let reply = ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"reply");
    net.send(Side::B, &reply);
    assert_eq!(net.wire.len(), 1, "B sends data right away once confirmed");
    assert_eq!(
        message_type(&net.wire[0].bytes),
        Some(MessageType::Transport)
    );
    net.deliver_all();
    assert_eq!(net.a.tun, vec![reply]);

    for i in 0..50_u8 {
        net.send(
            Side::A,
            &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[i; 100]),
        );
        net.send(Side::B, &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], &[i; 7]));
    }
    net.deliver_all();
    assert_eq!(net.b.tun.len(), 51);
    assert_eq!(net.a.tun.len(), 51);
    assert!(
        net.a.errors.is_empty() && net.b.errors.is_empty(),
        "{:?} {:?}",
        net.a.errors,
        net.b.errors
    );
    let stats = net.a.device.stats(net.a.peer).unwrap();
    assert!(stats.tx_bytes > 0 && stats.rx_bytes > 0 && stats.last_handshake.is_some());
}

#[test]
fn transport_messages_are_padded_to_16() {
    let mut net = Net::new();
    net.establish();
    net.send(
        Side::A,
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[1; 13]),
    );
    let datagram = &net.wire[0].bytes;
    // 33-byte IP packet → 48 bytes padded, + 16 header + 16 tag.
    assert_eq!(datagram.len(), 80);
    assert_eq!(datagram.len(), cladnet_wg::constants::encapsulated_len(33));
    net.deliver_all();
    assert_eq!(
        net.b.tun[0].len(),
        33,
        "receiver trims by the IP total length"
    );
}

#[test]
fn packets_queue_during_handshake_and_flush_in_order() {
    let mut net = Net::new();
    for i in 0..5_u8 {
        net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[i]));
    }
    assert_eq!(net.wire.len(), 1, "one initiation, packets queued");
    net.deliver_all();
    let payloads: Vec<u8> = net.b.tun.iter().map(|p| p[20]).collect();
    assert_eq!(payloads, vec![0, 1, 2, 3, 4]);
}

#[test]
fn handshake_with_preshared_key() {
    let psk = [0x42; 32];
    let mut net = Net::with(Options {
        seed: 11,
        psk_a: Some(psk),
        psk_b: Some(psk),
        ..Options::default()
    });
    net.establish();
    net.send(Side::B, &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"x"));
    net.deliver_all();
    assert_eq!(net.a.tun.len(), 1);
}

#[test]
fn mismatched_preshared_key_fails() {
    let mut net = Net::with(Options {
        seed: 12,
        psk_a: Some([1; 32]),
        psk_b: None,
        ..Options::default()
    });
    net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    net.deliver_all();
    // B cannot tell (the psk only enters the response); A rejects the response.
    assert_eq!(net.a.errors, vec![Error::HandshakeFailed]);
    assert!(net.b.tun.is_empty());
}

#[test]
fn initiation_with_bad_mac1_is_dropped_silently() {
    let mut net = Net::new();
    net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    let mut initiation = net.take_wire().remove(0);
    initiation.bytes[116] ^= 0x80; // first byte of mac1
    assert_eq!(net.deliver(&initiation), Delivery::Err(Error::InvalidMac));
    let mut initiation2 = initiation.clone();
    initiation2.bytes[116] ^= 0x80;
    initiation2.bytes[50] ^= 1; // inside the encrypted static key: mac1 no longer matches
    assert_eq!(net.deliver(&initiation2), Delivery::Err(Error::InvalidMac));
    assert!(net.wire.is_empty(), "no answer to an invalid mac1");
}

#[test]
fn replayed_initiation_is_rejected() {
    let mut net = Net::new();
    net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    let initiation = net.take_wire().remove(0);
    assert!(matches!(net.deliver(&initiation), Delivery::Network(_)));
    net.take_wire();
    net.jump(Duration::from_secs(2));
    assert_eq!(
        net.deliver(&initiation),
        Delivery::Err(Error::TimestampReplay)
    );
    assert!(net.wire.is_empty());
}

#[test]
fn initiation_flood_is_rejected() {
    // Two instances of A (same key, e.g. a restarted agent) initiate 1 ms apart: both carry a
    // newer timestamp, but B accepts at most one initiation per 20 ms from a peer.
    let mut net = Net::new();
    net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    let first = net.take_wire().remove(0);

    let clock = cladnet_wg::WallClock::new(
        net.now,
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001),
    );
    let mut twin = cladnet_wg::Device::new(net.a.key.clone(), rand_seed(99), clock);
    let mut config = cladnet_wg::PeerConfig::new(net.b.key.public_key());
    config.endpoint = Some(common::addr_b());
    let id = twin.add_peer(net.now, config).unwrap();
    let mut out = [0_u8; 256];
    let cladnet_wg::Action::WriteToNetwork { datagram, .. } = twin.encapsulate(
        net.now,
        id,
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"y"),
        &mut out,
    ) else {
        panic!("twin did not initiate")
    };
    let second = common::Datagram {
        from: Side::A,
        bytes: datagram.to_vec(),
    };

    assert!(matches!(net.deliver(&first), Delivery::Network(_)));
    net.jump(Duration::from_millis(1));
    assert_eq!(net.deliver(&second), Delivery::Err(Error::InitiationFlood));
    net.jump(Duration::from_millis(30));
    assert!(matches!(net.deliver(&second), Delivery::Network(_)));
}

#[test]
fn initiation_from_unknown_key_is_rejected() {
    let mut net = Net::new();
    let stranger_key = cladnet_wg::PrivateKey::from_bytes([0x33; 32]);
    let clock = cladnet_wg::WallClock::new(net.now, std::time::SystemTime::UNIX_EPOCH);
    let mut stranger = cladnet_wg::Device::new(stranger_key, rand_seed(5), clock);
    let mut config = cladnet_wg::PeerConfig::new(net.b.key.public_key());
    config.endpoint = Some(common::addr_b());
    let id = stranger.add_peer(net.now, config).unwrap();
    let mut out = [0_u8; 256];
    let cladnet_wg::Action::WriteToNetwork { datagram, .. } = stranger.encapsulate(
        net.now,
        id,
        &ipv4_packet([10, 9, 9, 9], [10, 0, 0, 2], b"?"),
        &mut out,
    ) else {
        panic!("stranger did not initiate")
    };
    let mut reply = [0_u8; 256];
    let (peer, action) = net.b.device.decapsulate(
        net.now,
        "203.0.113.9:1234".parse().unwrap(),
        datagram,
        &mut reply,
    );
    assert_eq!(peer, None);
    assert_eq!(action, cladnet_wg::Action::Err(Error::UnknownPeer));
}

#[test]
fn device_identifies_initiators_among_many_peers() {
    use cladnet_wg::{Action, Device, PeerConfig, PrivateKey, WallClock};
    let now = std::time::Instant::now();
    let clock = WallClock::new(
        now,
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let hub_key = PrivateKey::from_bytes([1; 32]);
    let mut hub = Device::new(hub_key.clone(), rand_seed(1), clock);
    let hub_addr: std::net::SocketAddr = "192.0.2.100:8055".parse().unwrap();
    let mut spokes = Vec::new();
    for i in 0..10_u8 {
        let key = PrivateKey::from_bytes([i + 10; 32]);
        let id_on_hub = hub
            .add_peer(now, PeerConfig::new(key.public_key()))
            .unwrap();
        let mut spoke = Device::new(key, rand_seed(100 + u64::from(i)), clock);
        let mut config = PeerConfig::new(hub_key.public_key());
        config.endpoint = Some(hub_addr);
        let hub_on_spoke = spoke.add_peer(now, config).unwrap();
        spokes.push((spoke, hub_on_spoke, id_on_hub));
    }
    for (i, (spoke, hub_id, id_on_hub)) in spokes.iter_mut().enumerate() {
        let src: std::net::SocketAddr = format!("192.0.2.{}:5000", i + 1).parse().unwrap();
        let mut out = [0_u8; 256];
        let Action::WriteToNetwork { datagram, .. } = spoke.encapsulate(
            now,
            *hub_id,
            &ipv4_packet([10, 0, 0, 9], [10, 0, 0, 1], b"hi"),
            &mut out,
        ) else {
            panic!()
        };
        let mut reply = [0_u8; 256];
        let (peer, action) = hub.decapsulate(now, src, datagram, &mut reply);
        assert_eq!(peer, Some(*id_on_hub));
        let Action::WriteToNetwork { datagram, to } = action else {
            panic!()
        };
        assert_eq!(to, src);
        let mut out2 = [0_u8; 256];
        let Action::WriteToNetwork { datagram: data, .. } =
            spoke.decapsulate(now, hub_addr, datagram, &mut out2).1
        else {
            panic!()
        };
        let mut inner = [0_u8; 256];
        let (peer, action) = hub.decapsulate(now, src, data, &mut inner);
        assert_eq!(peer, Some(*id_on_hub));
        assert!(matches!(action, Action::WriteToTunnel { .. }));
        assert_eq!(hub.endpoint(*id_on_hub), Some(src));
    }
}

fn rand_seed(seed: u64) -> rand::rngs::ChaCha20Rng {
    use rand::SeedableRng as _;
    rand::rngs::ChaCha20Rng::seed_from_u64(seed)
}

#[test]
fn simultaneous_initiations_converge() {
    let mut net = Net::with(Options {
        seed: 31,
        b_knows_a: true,
        ..Options::default()
    });
    net.send(
        Side::A,
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"from a"),
    );
    net.send(
        Side::B,
        &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"from b"),
    );
    let kinds: Vec<_> = net.wire.iter().map(|d| message_type(&d.bytes)).collect();
    assert_eq!(
        kinds,
        vec![Some(MessageType::Initiation), Some(MessageType::Initiation)]
    );
    // Both initiations cross; each side answers the other's and drops its own attempt.
    net.advance(Duration::from_secs(20));
    assert_eq!(net.a.tun.len(), 1, "B's packet reached A");
    assert_eq!(net.b.tun.len(), 1, "A's packet reached B");
    net.send(
        Side::A,
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"again"),
    );
    net.send(
        Side::B,
        &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"again"),
    );
    net.deliver_all();
    assert_eq!((net.a.tun.len(), net.b.tun.len()), (2, 2));
}

/// Two devices that both know each other's endpoint and both start a handshake at the same
/// instant (data queued on each side); returns the net with the two crossing initiations on
/// the wire, A's first.
fn crossing_initiations(seed: u64) -> Net {
    let mut net = Net::with(Options {
        seed,
        b_knows_a: true,
        ..Options::default()
    });
    net.send(
        Side::A,
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"from a"),
    );
    net.send(
        Side::B,
        &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"from b"),
    );
    let kinds: Vec<_> = net.wire.iter().map(|d| message_type(&d.bytes)).collect();
    assert_eq!(
        kinds,
        vec![Some(MessageType::Initiation), Some(MessageType::Initiation)]
    );
    net
}

/// Delivers `datagrams` in the given order, then everything they cause, without moving the
/// clock; returns every datagram that went over the wire.
fn exchange(net: &mut Net, datagrams: Vec<common::Datagram>) -> Vec<common::Datagram> {
    let mut seen = datagrams.clone();
    for d in &datagrams {
        net.deliver(d);
    }
    while !net.wire.is_empty() {
        let d = net.wire.remove(0);
        seen.push(d.clone());
        net.deliver(&d);
    }
    seen
}

/// After a crossing, both sides send at once on a usable session, and nothing more is
/// negotiated.
fn assert_both_ways_at_once(net: &mut Net, seen: &[common::Datagram]) {
    assert_eq!(net.now, net.start, "no time passed");
    assert_eq!(
        net.b.tun,
        vec![ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"from a")],
        "A's queued packet reached B within one round trip"
    );
    assert_eq!(
        net.a.tun,
        vec![ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"from b")],
        "B's queued packet reached A within one round trip"
    );
    let initiations = seen
        .iter()
        .filter(|d| message_type(&d.bytes) == Some(MessageType::Initiation))
        .count();
    assert_eq!(initiations, 2, "no handshake beyond the two crossing ones");
    assert!(net.a.errors.is_empty(), "A: {:?}", net.a.errors);
    assert!(net.b.errors.is_empty(), "B: {:?}", net.b.errors);
    // Both keep sending on what they have, without a new handshake or a retry later.
    for i in 0..3 {
        net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[i; 4]));
        net.send(Side::B, &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], &[i; 4]));
        assert!(
            net.wire
                .iter()
                .all(|d| message_type(&d.bytes) == Some(MessageType::Transport)),
            "only transport data on the wire"
        );
        net.deliver_all();
    }
    assert_eq!((net.a.tun.len(), net.b.tun.len()), (4, 4));
    let before = (net.a.events.len(), net.b.events.len());
    net.advance(Duration::from_secs(9));
    let handshakes = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::HandshakeCompleted { .. }))
            .count()
    };
    assert_eq!(
        (
            handshakes(&net.a.events[before.0..]),
            handshakes(&net.b.events[before.1..])
        ),
        (0, 0),
        "no retransmission or new handshake after the crossing"
    );
}

#[test]
fn crossing_initiations_give_a_session_at_once_a_first() {
    let mut net = crossing_initiations(41);
    let wire = net.take_wire();
    let seen = exchange(&mut net, wire);
    assert_both_ways_at_once(&mut net, &seen);
}

#[test]
fn crossing_initiations_give_a_session_at_once_b_first() {
    let mut net = crossing_initiations(42);
    let mut wire = net.take_wire();
    wire.reverse();
    let seen = exchange(&mut net, wire);
    assert_both_ways_at_once(&mut net, &seen);
}

#[test]
fn crossing_initiations_with_a_response_overtaking_the_initiation() {
    // B answers A's initiation, and that response reaches A before B's own initiation does.
    let mut net = crossing_initiations(43);
    let mut wire = net.take_wire();
    let init_b = wire.pop().unwrap();
    let init_a = wire.pop().unwrap();
    let Delivery::Network(_) = net.deliver(&init_a) else {
        panic!("B answers A's initiation")
    };
    let response = net.wire.remove(0);
    assert_eq!(message_type(&response.bytes), Some(MessageType::Response));
    let mut seen = vec![init_a, response.clone()];
    seen.extend(exchange(&mut net, vec![response, init_b]));
    assert_both_ways_at_once(&mut net, &seen);
}

#[test]
fn keepalives_requested_at_the_same_instant_bring_the_link_up_in_one_exchange() {
    // The agent asks both ends for a keepalive the moment they install each other.
    let mut net = Net::with(Options {
        seed: 44,
        b_knows_a: true,
        ..Options::default()
    });
    for side in [Side::A, Side::B] {
        let node = net.node(side);
        assert!(node.device.request_keepalive(node.peer));
    }
    net.drain_timers(Side::A);
    net.drain_timers(Side::B);
    let wire = net.take_wire();
    assert_eq!(wire.len(), 2, "two crossing initiations");
    exchange(&mut net, wire);
    net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"a"));
    net.send(Side::B, &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"b"));
    assert!(
        net.wire
            .iter()
            .all(|d| message_type(&d.bytes) == Some(MessageType::Transport)),
        "both send data at once, no handshake pending"
    );
    net.deliver_all();
    assert_eq!((net.a.tun.len(), net.b.tun.len()), (1, 1));
    assert_eq!(net.now, net.start);
}

#[test]
fn responder_without_endpoint_queues_until_the_peer_calls() {
    let mut net = Net::new();
    assert_eq!(
        net.send(
            Side::B,
            &ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"early")
        ),
        Some(Error::NoEndpoint)
    );
    assert!(net.wire.is_empty());
    net.establish();
    // Once A's first packet confirmed the session, B flushes what it queued.
    assert_eq!(
        net.a.tun,
        vec![ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1], b"early")]
    );
}

#[test]
fn standalone_peers_talk() {
    use cladnet_wg::{Action, Peer, PeerConfig, PrivateKey, WallClock};
    let now = std::time::Instant::now();
    let clock = WallClock::new(now, std::time::SystemTime::now());
    let (key_a, key_b) = (
        PrivateKey::from_bytes([0x61; 32]),
        PrivateKey::from_bytes([0x62; 32]),
    );
    let (addr_a, addr_b) = (common::addr_a(), common::addr_b());
    let mut config = PeerConfig::new(key_b.public_key());
    config.endpoint = Some(addr_b);
    let mut a = Peer::new(now, key_a.clone(), config, rand_seed(1), clock).unwrap();
    let mut b = Peer::new(
        now,
        key_b,
        PeerConfig::new(key_a.public_key()),
        rand_seed(2),
        clock,
    )
    .unwrap();
    assert!(
        Peer::new(
            now,
            key_a.clone(),
            PeerConfig::new(key_a.public_key()),
            rand_seed(3),
            clock
        )
        .is_err()
    );

    let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"solo");
    let (mut buf_a, mut buf_b) = ([0_u8; 512], [0_u8; 512]);
    let Action::WriteToNetwork { datagram, .. } = a.encapsulate(now, &packet, &mut buf_a) else {
        panic!()
    };
    let Action::WriteToNetwork { datagram, to } = b.decapsulate(now, addr_a, datagram, &mut buf_b)
    else {
        panic!()
    };
    assert_eq!(to, addr_a);
    let Action::WriteToNetwork { datagram, .. } = a.decapsulate(now, addr_b, datagram, &mut buf_a)
    else {
        panic!()
    };
    let Action::WriteToTunnel { packet: got, .. } =
        b.decapsulate(now, addr_a, datagram, &mut buf_b)
    else {
        panic!()
    };
    assert_eq!(got, &packet[..]);
    assert_eq!(b.endpoint(), Some(addr_a));
    assert_eq!(
        a.poll_event(),
        Some(Event::HandshakeCompleted { initiator: true })
    );
    assert!(a.stats().last_handshake.is_some());
    assert_eq!(b.remote_public_key(), key_a.public_key());
    assert!(b.poll_timeout().is_some(), "passive keepalive armed");
}

/// An initiation that arrives just before the responder adds its peer (both ends configured
/// at nearly the same moment) is answered as soon as the peer is added, to the address it came
/// from, instead of being lost until the retransmission 5 s later.
#[test]
fn an_initiation_arriving_just_before_its_peer_is_added_is_answered_then() {
    use cladnet_wg::{Action, Device, PeerConfig, PrivateKey, WallClock};
    use rand::SeedableRng as _;
    use rand::rngs::ChaCha20Rng;

    let now = std::time::Instant::now();
    let clock = WallClock::new(now, std::time::SystemTime::now());
    let (key_a, key_b) = (
        PrivateKey::from_bytes([0x51; 32]),
        PrivateKey::from_bytes([0x52; 32]),
    );
    let mut a = Device::new(key_a.clone(), ChaCha20Rng::seed_from_u64(1), clock);
    let mut b = Device::new(key_b.clone(), ChaCha20Rng::seed_from_u64(2), clock);
    // A's NAT gave this flow a port of its own: B's configuration names another one.
    let a_seen: std::net::SocketAddr = "198.51.100.1:40001".parse().unwrap();
    let mut to_b = PeerConfig::new(key_b.public_key());
    to_b.endpoint = Some(common::addr_b());
    let b_on_a = a.add_peer(now, to_b).unwrap();
    let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"early");
    let (mut buf_a, mut buf_b) = ([0_u8; 2048], [0_u8; 2048]);
    let Action::WriteToNetwork { datagram, .. } = a.encapsulate(now, b_on_a, &packet, &mut buf_a)
    else {
        panic!("initiation")
    };
    let initiation = datagram.to_vec();
    assert_eq!(
        b.decapsulate(now, a_seen, &initiation, &mut buf_b).1,
        Action::Err(Error::UnknownPeer),
        "B does not know A yet"
    );
    assert_eq!(b.poll_timeout(), None);

    // 30 ms later B learns about A (with the endpoint the controller saw) and answers at once.
    let later = now + Duration::from_millis(30);
    let mut to_a = PeerConfig::new(key_a.public_key());
    to_a.endpoint = Some(common::addr_a());
    let a_on_b = b.add_peer(later, to_a).unwrap();
    assert!(b.poll_timeout().is_some_and(|at| at <= later));
    let (peer, Action::WriteToNetwork { datagram, to }) = b.update_timers(later, &mut buf_b) else {
        panic!("B answers the early initiation")
    };
    assert_eq!((peer, to), (Some(a_on_b), a_seen));
    assert_eq!(message_type(datagram), Some(MessageType::Response));
    let response = datagram.to_vec();
    let (_, Action::WriteToNetwork { datagram, .. }) =
        a.decapsulate(later, common::addr_b(), &response, &mut buf_a)
    else {
        panic!("A completes and sends its queued packet")
    };
    let data = datagram.to_vec();
    let (_, Action::WriteToTunnel { packet: inner, .. }) =
        b.decapsulate(later, a_seen, &data, &mut buf_b)
    else {
        panic!("B gets the packet")
    };
    assert_eq!(inner, &packet[..]);
    assert_eq!(
        b.endpoint(a_on_b),
        Some(a_seen),
        "B follows A to where it really is"
    );

    // Too old an initiation (over REKEY_TIMEOUT) is not answered: the initiator retries anyway.
    let mut c = Device::new(key_b, ChaCha20Rng::seed_from_u64(3), clock);
    let _ = c.decapsulate(now, a_seen, &initiation, &mut buf_b);
    c.add_peer(
        now + Duration::from_secs(6),
        PeerConfig::new(key_a.public_key()),
    )
    .unwrap();
    assert_eq!(c.poll_timeout(), None);
}
