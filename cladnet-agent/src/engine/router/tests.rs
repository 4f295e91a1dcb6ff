//! Two routers wired back to back, without sockets.

use super::*;

const A_EP: &str = "192.0.2.1:8055";
const B_EP: &str = "198.51.100.2:8055";

struct Node {
    router: Router,
    ip: Ipv4Addr,
    index: u32,
    key: PublicKey,
}

fn node(last: u8, seed: u8) -> Node {
    let key = PrivateKey::from_bytes([seed; 32]);
    let public = key.public_key();
    let ip = Ipv4Addr::new(10, 77, 0, last);
    let router = Router::new(key);
    let index = u32::from(ip);
    router.apply(
        Instant::now(),
        index,
        &Command::SetInterface {
            ip,
            prefix_len: 24,
            mtu: 1420,
        },
    );
    Node {
        router,
        ip,
        index,
        key: public,
    }
}

fn config(of: &Node, endpoint: &str, mode: LinkMode) -> PeerConfig {
    PeerConfig {
        node_id: format!("node-{}", of.ip.octets()[3]),
        node_index: of.index,
        overlay_ip: of.ip,
        public_key: *of.key.as_bytes(),
        endpoint: Some(endpoint.parse().unwrap()),
        mode,
    }
}

fn pair(mode: LinkMode) -> (Node, Node) {
    let (a, b) = (node(1, 7), node(2, 9));
    let now = Instant::now();
    a.router
        .apply(now, a.index, &Command::UpsertPeer(config(&b, B_EP, mode)));
    b.router
        .apply(now, b.index, &Command::UpsertPeer(config(&a, A_EP, mode)));
    (a, b)
}

/// An IPv4/UDP packet from `src` to `dst` with `payload`.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90]);
    p.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn send(from: &Node, p: &[u8]) -> Vec<u8> {
    let mut out = vec![0; out_len(p.len())];
    match from.router.outbound(Instant::now(), p, &mut out) {
        Outbound::Send { datagram, .. } => datagram.to_vec(),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

fn receive(at: &Node, from: &str, d: &[u8]) -> Result<Vec<u8>, Inbound<'static>> {
    let mut out = vec![0; out_len(d.len())];
    match at.router.inbound(Instant::now(), ep(from), d, &mut out) {
        Inbound::Deliver(p) => Ok(p.to_vec()),
        Inbound::Dropped(r) => Err(Inbound::Dropped(r)),
        Inbound::Nothing => Err(Inbound::Nothing),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn plain_packets_cross_and_every_forgery_is_dropped_and_counted() {
    let (a, b) = pair(LinkMode::Plain);
    let p = packet(a.ip, b.ip, b"hello");
    let d = send(&a, &p);
    assert_eq!(&d[..2], &[0x11, 0]);
    assert_eq!(receive(&b, A_EP, &d).unwrap(), p);

    let drop = |r| Err(Inbound::Dropped(Drop::Plain(r)));
    // From an address that is no PLAIN peer.
    assert_eq!(
        receive(&b, "203.0.113.9:8055", &d),
        drop(plain::DropReason::UnknownPeer)
    );
    // Inner source that is not the peer's.
    let spoofed = send(&a, &packet(Ipv4Addr::new(10, 77, 0, 99), b.ip, b"x"));
    assert_eq!(
        receive(&b, A_EP, &spoofed),
        drop(plain::DropReason::SpoofedSource)
    );
    // Another node id in the header.
    let mut wrong = d.clone();
    wrong[4] ^= 1;
    assert_eq!(
        receive(&b, A_EP, &wrong),
        drop(plain::DropReason::WrongNode)
    );
    // Truncated.
    assert_eq!(
        receive(&b, A_EP, &d[..5]),
        drop(plain::DropReason::Truncated)
    );
    assert_eq!(
        b.router
            .drops()
            .get(Drop::Plain(plain::DropReason::UnknownPeer)),
        1
    );
    let status = b.router.status(Instant::now());
    assert_eq!(status[0].traffic.rx_packets, 1);
    assert_eq!(status[0].mode, "plain");
}

#[test]
fn sealed_packets_need_a_handshake_then_cross() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"secret");
    // The first packet is queued behind a handshake initiation.
    let init = send(&a, &p);
    assert_eq!(init[0], 1);
    let mut out = vec![0; 2048];
    let response = match b.router.inbound(Instant::now(), ep(A_EP), &init, &mut out) {
        Inbound::Reply { datagram, to } => {
            assert_eq!(to, ep(A_EP));
            datagram.to_vec()
        }
        other => panic!("{other:?}"),
    };
    // The response completes the handshake; the queued packet leaves as the first data.
    let mut out2 = vec![0; 2048];
    let first = match a
        .router
        .inbound(Instant::now(), ep(B_EP), &response, &mut out2)
    {
        Inbound::Reply { datagram, .. } => datagram.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(receive(&b, A_EP, &first).unwrap(), p);

    // Replayed: dropped.
    assert_eq!(
        receive(&b, A_EP, &first),
        Err(Inbound::Dropped(Drop::WgReplay))
    );
    // Forged (bad tag): dropped.
    let mut forged = send(&a, &p);
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    assert_eq!(
        receive(&b, A_EP, &forged),
        Err(Inbound::Dropped(Drop::WgDecrypt))
    );
    // Authentic but with an inner source the peer does not own: cryptokey routing drops it.
    let spoofed = send(&a, &packet(Ipv4Addr::new(10, 77, 0, 99), b.ip, b"x"));
    assert_eq!(
        receive(&b, A_EP, &spoofed),
        Err(Inbound::Dropped(Drop::WgSpoofedSource))
    );
    // A fresh authentic packet still gets through, and from a new address the peer roams.
    let again = send(&a, &p);
    assert_eq!(receive(&b, "203.0.113.50:4000", &again).unwrap(), p);
    let events = b.router.timers(Instant::now(), &mut out, |_, _| {});
    assert!(
        events.contains(&PeerEvent::EndpointChanged {
            node_id: "node-1".into(),
            endpoint: ep("203.0.113.50:4000")
        }),
        "{events:?}"
    );
    let st = b.router.status(Instant::now());
    assert_eq!(st[0].endpoint, Some(ep("203.0.113.50:4000")));
    assert_eq!(st[0].traffic.rx_packets, 2);
    assert!(st[0].handshake_age_secs.is_some());
}

#[test]
fn unroutable_and_unknown_traffic_is_dropped() {
    let (a, b) = pair(LinkMode::Plain);
    let mut out = vec![0; 256];
    let p = packet(a.ip, Ipv4Addr::new(10, 77, 0, 200), b"x");
    assert_eq!(
        a.router.outbound(Instant::now(), &p, &mut out),
        Outbound::Dropped(Drop::NoRoute)
    );
    let v6 = [0x60u8; 40];
    assert_eq!(
        a.router.outbound(Instant::now(), &v6, &mut out),
        Outbound::Dropped(Drop::NotIpv4)
    );
    assert_eq!(
        receive(&b, A_EP, &[0xff; 32]),
        Err(Inbound::Dropped(Drop::UnknownMessage))
    );
    assert_eq!(
        receive(&b, A_EP, &[]),
        Err(Inbound::Dropped(Drop::UnknownMessage))
    );
    // A malformed WireGuard message.
    assert_eq!(
        receive(&b, A_EP, &[4, 0, 0, 0, 1]),
        Err(Inbound::Dropped(Drop::WgInvalid))
    );
}

#[test]
fn removing_a_peer_stops_traffic_both_ways_and_mode_changes_apply() {
    let (a, b) = pair(LinkMode::Plain);
    let d = send(&a, &packet(a.ip, b.ip, b"x"));
    b.router.apply(
        Instant::now(),
        b.index,
        &Command::RemovePeer {
            node_id: "node-1".into(),
            overlay_ip: a.ip,
        },
    );
    assert_eq!(
        receive(&b, A_EP, &d),
        Err(Inbound::Dropped(Drop::Plain(
            plain::DropReason::UnknownPeer
        )))
    );
    // PLAIN -> SEALED live: the next packet starts a handshake.
    a.router.apply(
        Instant::now(),
        a.index,
        &Command::UpsertPeer(config(&b, B_EP, LinkMode::Sealed)),
    );
    assert_eq!(send(&a, &packet(a.ip, b.ip, b"x"))[0], 1);
}

#[test]
fn garbage_never_panics() {
    let (_, b) = pair(LinkMode::Sealed);
    let mut out = vec![0; 4096];
    let mut seed = 0x1234_5678_u32;
    for len in 0..600 {
        let d: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        for first in [1u8, 2, 3, 4, 0x11, 0x13, 0x43] {
            let mut d = d.clone();
            if let Some(b0) = d.first_mut() {
                *b0 = first;
            }
            let _ = b.router.inbound(Instant::now(), ep(A_EP), &d, &mut out);
        }
    }
}

#[test]
fn punch_sends_plain_probes_and_wireguard_keepalives() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"x");
    let init = send(&a, &p);
    let mut out = vec![0; 2048];
    let response = match b.router.inbound(Instant::now(), ep(A_EP), &init, &mut out) {
        Inbound::Reply { datagram, .. } => datagram.to_vec(),
        other => panic!("{other:?}"),
    };
    let mut out2 = vec![0; 2048];
    let _ = a
        .router
        .inbound(Instant::now(), ep(B_EP), &response, &mut out2);
    let mut sent = Vec::new();
    a.router.timers(Instant::now(), &mut out, |d, to| {
        sent.push((d.to_vec(), to))
    });
    sent.clear();
    a.router.punch(|d, to| sent.push((d.to_vec(), to)));
    a.router.timers(Instant::now(), &mut out, |d, to| {
        sent.push((d.to_vec(), to))
    });
    assert_eq!(sent.len(), 1, "one keepalive");
    assert_eq!(
        (sent[0].0[0], sent[0].0.len(), sent[0].1),
        (4, 32, ep(B_EP))
    );

    let (c, _) = pair(LinkMode::Plain);
    let mut probes = Vec::new();
    c.router.punch(|d, to| probes.push((d.to_vec(), to)));
    assert_eq!(probes.len(), 1);
    assert_eq!((probes[0].0[0], probes[0].1), (0x13, ep(B_EP)));
}

#[test]
fn a_plain_peer_seen_on_another_port_of_its_address_is_followed() {
    let (a, b) = pair(LinkMode::Plain);
    let p = packet(a.ip, b.ip, b"nat");
    let d = send(&a, &p);
    // a's NAT gave this flow port 40000 instead of 8055.
    assert_eq!(receive(&b, "192.0.2.1:40000", &d).unwrap(), p);
    let mut out = vec![0; 256];
    let events = b.router.timers(Instant::now(), &mut out, |_, _| {});
    assert_eq!(
        events,
        vec![PeerEvent::EndpointChanged {
            node_id: "node-1".into(),
            endpoint: ep("192.0.2.1:40000")
        }]
    );
    // Replies go to the port that works.
    let reply = packet(b.ip, a.ip, b"back");
    let mut out = vec![0; 256];
    match b.router.outbound(Instant::now(), &reply, &mut out) {
        Outbound::Send { to, .. } => assert_eq!(to, ep("192.0.2.1:40000")),
        other => panic!("{other:?}"),
    }
    // A datagram with another node id from that address teaches nothing.
    let mut wrong = d.clone();
    wrong[4] ^= 1;
    assert_eq!(
        receive(&b, "192.0.2.1:40001", &wrong),
        Err(Inbound::Dropped(Drop::Plain(
            plain::DropReason::UnknownPeer
        )))
    );
    // Another address never moves a PLAIN peer, whatever the header says.
    assert_eq!(
        receive(&b, "203.0.113.7:40000", &d),
        Err(Inbound::Dropped(Drop::Plain(
            plain::DropReason::UnknownPeer
        )))
    );
}

#[test]
fn plain_port_learning_is_rate_limited_per_peer() {
    let (a, b) = pair(LinkMode::Plain);
    let d = send(&a, &packet(a.ip, b.ip, b"flap"));
    let at = |now: Instant, port: u16| {
        let mut out = vec![0; out_len(d.len())];
        let from = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port));
        matches!(
            b.router.inbound(now, from, &d, &mut out),
            Inbound::Deliver(_)
        )
    };
    let t0 = Instant::now();
    assert!(at(t0, 40000), "the first change is followed");
    // Someone sharing a's address flaps the port at line rate: nothing moves for a second.
    for i in 0..1000u16 {
        assert!(!at(t0 + Duration::from_micros(u64::from(i)), 40001 + i % 2));
    }
    assert_eq!(b.router.drops().get(Drop::PlainPortChangeLimited), 1000);
    // The port that was learnt keeps working meanwhile.
    assert!(at(t0 + Duration::from_millis(500), 40000));
    let mut out = vec![0; 256];
    let events = b.router.timers(Instant::now(), &mut out, |_, _| {});
    assert_eq!(events.len(), 1, "one event for one change: {events:?}");
    assert_eq!(
        b.router.peer_config("node-1").unwrap().endpoint,
        Some("192.0.2.1:40000".parse().unwrap())
    );
    // A second later the peer may move again.
    assert!(at(t0 + PORT_CHANGE_INTERVAL, 40002));
    assert_eq!(
        b.router.peer_config("node-1").unwrap().endpoint,
        Some("192.0.2.1:40002".parse().unwrap())
    );
}

#[test]
fn plain_packets_for_another_destination_are_dropped_and_counted() {
    let (a, b) = pair(LinkMode::Plain);
    // a's packets may only be for b: not for another overlay node, an underlay host, or
    // broadcast (b would forward them, with a's overlay source, wherever its routes reach).
    for dst in [
        Ipv4Addr::new(10, 77, 0, 9),
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::BROADCAST,
    ] {
        let mut d = send(&a, &packet(a.ip, b.ip, b"relay"));
        d[wire::CLAD_HDR_LEN + 16..wire::CLAD_HDR_LEN + 20].copy_from_slice(&dst.octets());
        assert_eq!(
            receive(&b, A_EP, &d),
            Err(Inbound::Dropped(Drop::Plain(
                plain::DropReason::WrongDestination
            ))),
            "{dst}"
        );
    }
    assert_eq!(
        b.router
            .drops()
            .get(Drop::Plain(plain::DropReason::WrongDestination)),
        3
    );
    let p = packet(a.ip, b.ip, b"for b");
    assert_eq!(receive(&b, A_EP, &send(&a, &p)).unwrap(), p);
}
