//! Nodes driven by hand: commands, PLAIN forwarding between two Nodes, endpoint learning.

use std::net::Ipv4Addr;

use cladnet_common::rx::Owner;

use super::*;
use crate::{
    node::table::PeerState,
    policy::{Encryption, RuleType, Site},
};

fn view(public: &str) -> PeerView {
    PeerView {
        site: Site {
            provider: "aws".into(),
            vpc: "v1".into(),
            ..Site::default()
        },
        public: public.parse().ok(),
        private: None,
        external: false,
    }
}

pub(super) fn endpoint(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), 8055)
}

pub(super) fn record(last: u8) -> SelfRecord {
    SelfRecord {
        node_index: u32::from(last),
        overlay_ip: Ipv4Addr::new(10, 77, 0, last),
        prefix_len: 24,
        view: view(&endpoint(last).to_string()),
        prefixes: Vec::new(),
    }
}

pub(super) fn remote(last: u8) -> RemotePeer {
    let r = record(last);
    RemotePeer {
        node_id: format!("n{last}"),
        node_index: r.node_index,
        overlay_ip: r.overlay_ip,
        public_key: [last; 32],
        view: r.view,
        state: PeerState::Up,
        prefixes: Vec::new(),
    }
}

const PLAIN: Policy = Policy {
    rule: RuleType::Basic,
    encryption: Encryption::Never,
};

/// A node `n{me}` that has joined a network of `peers` (PLAIN links), outputs drained.
fn joined(me: u8, peers: &[u8], now: Instant) -> Node {
    let mut node = Node::new(NodeConfig {
        node_id: format!("n{me}"),
        underlay_mtu: 1500,
        underlay_ip: Some(*endpoint(me).ip()),
    });
    node.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(PLAIN),
            local: Some(record(me)),
            peers: peers.iter().map(|p| remote(*p)).collect(),
        },
    );
    drain(&mut node);
    node
}

pub(super) fn drain(node: &mut Node) -> (Vec<Command>, Vec<Transmit>, Vec<Event>) {
    (
        std::iter::from_fn(|| node.poll_command()).collect(),
        std::iter::from_fn(|| node.poll_transmit()).collect(),
        std::iter::from_fn(|| node.poll_event()).collect(),
    )
}

/// An IPv4/UDP packet from `src` to `dst`.
fn packet(src: u8, dst: u8) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 77, 0, src]);
    p[16..20].copy_from_slice(&[10, 77, 0, dst]);
    p
}

#[test]
fn a_snapshot_configures_the_node_then_installs_and_publishes_its_peers() {
    let now = Instant::now();
    let mut node = Node::new(NodeConfig {
        node_id: "n2".into(),
        underlay_mtu: 1500,
        underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
    });
    node.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(PLAIN),
            local: Some(record(2)),
            peers: vec![remote(3), remote(4)],
        },
    );
    let (cmds, transmits, _) = drain(&mut node);
    let Command::SetLocal(local) = &cmds[0] else {
        panic!("{cmds:?}")
    };
    assert_eq!(
        (local.node_index, local.mtu, local.underlay_ip),
        (2, 1440, Some(Ipv4Addr::new(198, 18, 0, 2)))
    );
    let upserts: Vec<_> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::UpsertPeer(p) => Some((p.node_id.as_str(), p.slot, p.mode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        upserts,
        [("n3", 0, LinkMode::Plain), ("n4", 1, LinkMode::Plain)]
    );
    let Some(Command::Publish(fwd)) = cmds.last() else {
        panic!("the snapshot comes last: {cmds:?}")
    };
    assert!(Arc::ptr_eq(fwd, node.forwarding()));
    assert_eq!(fwd.route(&packet(2, 4)).map(|p| p.slot), Ok(1));
    assert_eq!(fwd.route(&packet(2, 9)), Err(RouteMiss::NoRoute));
    // New peers get a probe at once (it opens our NAT towards them).
    let mut to: Vec<_> = transmits.iter().map(|t| t.to).collect();
    to.sort();
    assert_eq!(
        to,
        [SocketAddr::V4(endpoint(3)), SocketAddr::V4(endpoint(4))]
    );
}

#[test]
fn two_nodes_carry_plain_packets_both_ways() {
    let now = Instant::now();
    let mut a = joined(2, &[3], now);
    let mut b = joined(3, &[2], now);
    let pass = |from: &mut Node, to: &mut Node, src: u8, dst: u8| {
        let p = packet(src, dst);
        from.handle_tun_packet(now, &p).expect("routed");
        let t = from.poll_transmit().expect("a datagram");
        assert_eq!(t.to, SocketAddr::V4(endpoint(dst)));
        to.handle_datagram(now, SocketAddr::V4(endpoint(src)), &t.payload)
            .expect("accepted");
        assert_eq!(to.poll_tun_packet(), Some(p));
    };
    pass(&mut a, &mut b, 2, 3);
    pass(&mut b, &mut a, 3, 2);
    // A spoofed inner source is refused.
    let mut buf = [0u8; 64];
    let n = a
        .forwarding()
        .encapsulate_plain(&packet(9, 3), &mut buf)
        .unwrap();
    assert_eq!(
        b.handle_datagram(now, SocketAddr::V4(endpoint(2)), &buf[..n]),
        Err(Dropped::Plain(DropReason::SpoofedSource))
    );
}

/// The stale-table bug of the old design: a port learnt from packets went to the userspace
/// router's own index and to the kernel through a side path, while the peer table kept the
/// old endpoint. Here the learnt endpoint is one more fact of the Node's table: it reaches
/// every engine as an `UpsertPeer`, survives unrelated Watch events, and is dropped when the
/// controller's endpoint changes.
#[test]
fn a_learnt_port_goes_to_every_engine_and_stays_until_the_controller_moves_the_peer() {
    let now = Instant::now();
    let mut b = joined(3, &[2], now);
    let mut a = joined(2, &[3], now);
    let moved = SocketAddrV4::new(*endpoint(2).ip(), 40000);
    a.handle_tun_packet(now, &packet(2, 3)).unwrap();
    let datagram = a.poll_transmit().unwrap().payload;

    b.handle_datagram(now, SocketAddr::V4(moved), &datagram)
        .expect("a new port of the peer's address is learnt");
    assert_eq!(b.poll_tun_packet(), Some(packet(2, 3)), "and delivered");
    let (cmds, _, events) = drain(&mut b);
    assert!(
        matches!(&cmds[..], [Command::UpsertPeer(p), Command::Publish(f)]
            if p.endpoint == Some(moved) && f.peer("n2").unwrap().endpoint == Some(moved)),
        "{cmds:?}"
    );
    assert_eq!(
        events,
        [Event::EndpointLearned {
            node_id: "n2".into(),
            endpoint: moved
        }]
    );
    assert_eq!(b.table().installed()["n2"].endpoint, Some(moved));

    // The same datagram again is from a known endpoint now; another port within a second is
    // refused, one a second later is learnt.
    b.handle_datagram(now, SocketAddr::V4(moved), &datagram)
        .unwrap();
    let third = SocketAddrV4::new(*endpoint(2).ip(), 40001);
    assert_eq!(
        b.handle_datagram(now, SocketAddr::V4(third), &datagram),
        Err(Dropped::PortChangeLimited)
    );
    let later = now + PORT_CHANGE_INTERVAL;
    b.handle_datagram(later, SocketAddr::V4(third), &datagram)
        .unwrap();
    assert_eq!(b.table().installed()["n2"].endpoint, Some(third));
    drain(&mut b);

    // An unrelated Watch event does not undo the learnt port...
    b.handle_watch_event(later, WatchEvent::PeerUpserted(remote(4)));
    let (cmds, ..) = drain(&mut b);
    assert!(
        cmds.iter()
            .all(|c| !matches!(c, Command::UpsertPeer(p) if p.node_id == "n2")),
        "{cmds:?}"
    );
    assert_eq!(b.forwarding().peer("n2").unwrap().endpoint, Some(third));
    // ...but the controller's new endpoint for the peer replaces it.
    let mut n2 = remote(2);
    n2.view.public = Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 2), 8055));
    b.handle_watch_event(later, WatchEvent::PeerUpserted(n2.clone()));
    assert_eq!(b.table().installed()["n2"].endpoint, n2.view.public);
    // Another address is never learnt from a PLAIN datagram.
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 8055);
    assert_eq!(
        b.handle_datagram(
            later + PORT_CHANGE_INTERVAL,
            SocketAddr::V4(elsewhere),
            &datagram
        ),
        Err(Dropped::Plain(DropReason::UnknownPeer))
    );
}

#[test]
fn keepalive_probes_every_plain_peer_on_time_and_teach_ports_too() {
    let now = Instant::now();
    let mut a = joined(2, &[3, 4], now);
    assert_eq!(a.poll_timeout(), Some(now + PLAIN_KEEPALIVE));
    a.handle_timeout(now + PLAIN_KEEPALIVE / 2);
    assert!(a.poll_transmit().is_none(), "not due yet");
    a.handle_timeout(now + PLAIN_KEEPALIVE);
    let probes: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert_eq!(probes.len(), 2);
    assert_eq!(a.poll_timeout(), Some(now + PLAIN_KEEPALIVE * 2));

    // A probe from another port of the peer's address moves it like data does.
    let mut b = joined(3, &[2], now);
    let moved = SocketAddrV4::new(*endpoint(2).ip(), 40000);
    let probe = probes
        .iter()
        .find(|t| t.to == SocketAddr::V4(endpoint(3)))
        .unwrap();
    b.handle_datagram(now, SocketAddr::V4(moved), &probe.payload)
        .unwrap();
    assert_eq!(b.poll_tun_packet(), None, "probes carry nothing");
    assert_eq!(b.table().installed()["n2"].endpoint, Some(moved));
}

#[test]
fn reflector_answers_become_events() {
    let now = Instant::now();
    let mut a = joined(2, &[], now);
    let seen = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 61000);
    a.handle_datagram(
        now,
        "192.0.2.1:8056".parse().unwrap(),
        &reflector::response(7, seen),
    )
    .unwrap();
    assert_eq!(a.poll_event(), Some(Event::Reflected { nonce: 7, seen }));
}

#[test]
fn removed_peers_free_their_slot_and_sealed_links_are_left_to_the_engine() {
    let now = Instant::now();
    let mut a = joined(2, &[3, 4], now);
    a.handle_watch_event(now, WatchEvent::PeerRemoved("n3".into()));
    let (cmds, ..) = drain(&mut a);
    assert!(
        matches!(
            &cmds[..],
            [Command::RemovePeer { slot: 0, .. }, Command::Publish(_)]
        ),
        "{cmds:?}"
    );
    a.handle_watch_event(now, WatchEvent::PeerUpserted(remote(5)));
    assert_eq!(a.table().installed()["n5"].slot, 0, "slot reused");
    a.handle_watch_event(
        now,
        WatchEvent::PolicyChanged(Policy {
            rule: RuleType::Basic,
            encryption: Encryption::Always,
        }),
    );
    assert_eq!(
        a.handle_tun_packet(now, &packet(2, 5)),
        Err(Dropped::Sealed)
    );
}

proptest::proptest! {
    /// The snapshot's receive decision for PLAIN data (the kernel's classifier and checks)
    /// agrees with `plain::decapsulate` plus the destination check, which the userspace
    /// router used before: same packets delivered, same drop reasons.
    #[test]
    fn classify_agrees_with_decapsulate(
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        node_index in 1u32..5,
        src in 1u8..5,
        dst in 1u8..5,
        len_delta in 0usize..3,
    ) {
        let a = joined(2, &[3], Instant::now());
        let mut inner = packet(src, dst);
        inner.extend(&tail);
        let total = u16::try_from(inner.len() - len_delta).unwrap();
        inner[2..4].copy_from_slice(&total.to_be_bytes());
        let mut d = vec![0u8; inner.len() + 8];
        cladnet_common::plain::encapsulate(node_index, &inner, &mut d).unwrap();
        let from = SocketAddr::V4(endpoint(3));
        let known = cladnet_common::plain::KnownPeer {
            node_index: 3,
            overlay_ip: [10, 77, 0, 3],
        };
        let old = cladnet_common::plain::decapsulate(&d, Some(known)).and_then(|i| {
            cladnet_common::rx::check_destination(i.first_chunk().unwrap(), [10, 77, 0, 2])
                .map(|()| i)
        });
        let new = match a.forwarding().classify(from, &d) {
            Rx::Deliver { inner, .. } => Ok(inner),
            Rx::Drop(r) => Err(r),
            other => panic!("{other:?}"),
        };
        proptest::prop_assert_eq!(old, new);
    }
}

/// An IPv4/UDP packet between any two addresses.
fn packet_between(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = packet(0, 0);
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Pods behind two nodes: each node's approved prefix routes to it, the receiver accepts the
/// pod source of its peer's prefix and delivers to its own prefix, and refuses a source in
/// nobody's or its own prefix (AllowedIPs). Withdrawing the prefix takes all of it back.
#[test]
fn approved_prefixes_route_and_own_the_sources_behind_a_node() {
    let now = Instant::now();
    let pods = |last: u8| -> ipnet::Ipv4Net { format!("10.244.{last}.0/24").parse().unwrap() };
    let with_pods = |mut n: Node, me: u8, peer: u8| {
        let mut me_rec = record(me);
        me_rec.prefixes = vec![pods(me)];
        n.handle_watch_event(now, WatchEvent::LocalUpdated(me_rec));
        let mut p = remote(peer);
        p.prefixes = vec![pods(peer)];
        n.handle_watch_event(now, WatchEvent::PeerUpserted(p));
        drain(&mut n);
        n
    };
    let mut a = with_pods(joined(2, &[3], now), 2, 3);
    let mut b = with_pods(joined(3, &[2], now), 3, 2);
    assert_eq!(a.forwarding().local_prefixes(), [pods(2)]);
    assert_eq!(
        b.forwarding().owner(Ipv4Addr::new(10, 244, 2, 9)),
        Owner::Peer(2)
    );
    assert_eq!(
        b.forwarding().owner(Ipv4Addr::new(10, 244, 3, 9)),
        Owner::Local
    );
    let pod_a = [10, 244, 2, 5];
    let pod_b = [10, 244, 3, 7];
    let p = packet_between(pod_a, pod_b);
    a.handle_tun_packet(now, &p).expect("pod prefix routed");
    let t = a.poll_transmit().unwrap();
    assert_eq!(t.to, SocketAddr::V4(endpoint(3)));
    b.handle_datagram(now, SocketAddr::V4(endpoint(2)), &t.payload)
        .expect("a pod source of the sender's prefix");
    assert_eq!(b.poll_tun_packet(), Some(p.clone()));
    // Sources the sender does not own: nobody's, the receiver's own pods, the sender's
    // neighbour /16 outside its /24.
    for src in [[10, 244, 9, 1], [10, 244, 3, 1], [10, 245, 2, 5]] {
        let mut buf = [0u8; 64];
        let n = a
            .forwarding()
            .encapsulate_plain(&packet_between(src, pod_b), &mut buf)
            .unwrap();
        assert_eq!(
            b.handle_datagram(now, SocketAddr::V4(endpoint(2)), &buf[..n]),
            Err(Dropped::Plain(DropReason::SpoofedSource)),
            "{src:?}"
        );
    }
    // A destination in nobody's prefix is not delivered.
    let mut buf = [0u8; 64];
    let n = a
        .forwarding()
        .encapsulate_plain(&packet_between(pod_a, [10, 244, 9, 1]), &mut buf)
        .unwrap();
    assert_eq!(
        b.handle_datagram(now, SocketAddr::V4(endpoint(2)), &buf[..n]),
        Err(Dropped::Plain(DropReason::WrongDestination))
    );
    // Withdrawn (the controller's record without it): routes and ownership go, first.
    a.handle_watch_event(now, WatchEvent::PeerUpserted(remote(3)));
    let (cmds, ..) = drain(&mut a);
    assert!(
        matches!(&cmds[..], [
            Command::RemovePrefixes { node_index: 3, local: false, prefixes },
            Command::UpsertPeer(c),
            Command::Publish(_),
        ] if *prefixes == [pods(3)] && c.prefixes.is_empty()),
        "{cmds:?}"
    );
    assert_eq!(
        a.handle_tun_packet(now, &p),
        Err(Dropped::Route(RouteMiss::NoRoute))
    );
    b.handle_watch_event(now, WatchEvent::LocalUpdated(record(3)));
    let (cmds, ..) = drain(&mut b);
    assert!(
        matches!(
            &cmds[0],
            Command::RemovePrefixes {
                node_index: 3,
                local: true,
                ..
            }
        ),
        "{cmds:?}"
    );
    assert_eq!(
        b.forwarding().owner(Ipv4Addr::new(10, 244, 3, 9)),
        Owner::Nobody
    );
}

/// A counter-based stand-in for the OS random source (tests only: reproducible).
struct Counter(u64);

impl cladnet_wg::CryptoRandom for Counter {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fn wg_key(last: u8) -> cladnet_wg::PrivateKey {
    cladnet_wg::PrivateKey::from_bytes([last.wrapping_mul(7).wrapping_add(1); 32])
}

/// A node `n{me}` with a WireGuard key in a SEALED network of `peers`, outputs drained.
fn sealed_node(me: u8, peers: &[u8], now: Instant) -> Node {
    let wall = cladnet_wg::WallClock::from_unix(now, Duration::from_secs(1_800_000_000));
    let mut node = Node::new(NodeConfig {
        node_id: format!("n{me}"),
        underlay_mtu: 1500,
        underlay_ip: Some(*endpoint(me).ip()),
    })
    .with_wireguard(wg_key(me), Counter(u64::from(me)), wall);
    let peers = peers
        .iter()
        .map(|p| RemotePeer {
            public_key: *wg_key(*p).public_key().as_bytes(),
            ..remote(*p)
        })
        .collect();
    node.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(Policy {
                rule: RuleType::Basic,
                encryption: Encryption::Always,
            }),
            local: Some(record(me)),
            peers,
        },
    );
    drain(&mut node);
    node
}

/// Hands every datagram `from` has to send to `to`, as coming from `from`'s endpoint.
fn carry(from: &mut Node, from_ep: SocketAddrV4, to: &mut Node, now: Instant) -> Vec<Dropped> {
    let mut drops = Vec::new();
    while let Some(t) = from.poll_transmit() {
        if let Err(d) = to.handle_datagram(now, SocketAddr::V4(from_ep), &t.payload) {
            drops.push(d);
        }
    }
    drops
}

/// A Node with a WireGuard key owns SEALED links: the first packet waits for a handshake the
/// Nodes run between them, then packets cross both ways; a sealed packet whose inner source
/// is not its sender's is dropped (cryptokey routing); the WireGuard peers follow the table.
#[test]
fn a_node_with_a_key_seals_and_opens_its_sealed_links() {
    let now = Instant::now();
    let (mut a, mut b) = (sealed_node(2, &[3], now), sealed_node(3, &[2], now));
    assert_eq!(a.sealed_peers().len(), 1);
    a.handle_tun_packet(now, &packet(2, 3)).unwrap();
    for _ in 0..3 {
        assert_eq!(carry(&mut a, endpoint(2), &mut b, now), vec![]);
        assert_eq!(carry(&mut b, endpoint(3), &mut a, now), vec![]);
    }
    assert_eq!(b.poll_tun_packet(), Some(packet(2, 3)));
    b.handle_tun_packet(now, &packet(3, 2)).unwrap();
    carry(&mut b, endpoint(3), &mut a, now);
    assert_eq!(a.poll_tun_packet(), Some(packet(3, 2)));
    // A's inner packet claims another source: authentic, but not A's to send.
    a.handle_tun_packet(now, &packet(9, 3)).unwrap();
    assert_eq!(
        carry(&mut a, endpoint(2), &mut b, now),
        vec![Dropped::SpoofedSource]
    );
    assert_eq!(b.poll_tun_packet(), None);
    // The peer removed: its WireGuard peer goes too, and its datagrams find no session.
    a.handle_tun_packet(now, &packet(2, 3)).unwrap();
    b.handle_watch_event(now, WatchEvent::PeerRemoved("n2".into()));
    assert!(b.sealed_peers().is_empty());
    assert_eq!(
        carry(&mut a, endpoint(2), &mut b, now),
        vec![Dropped::WireGuard(cladnet_wg::Error::UnknownReceiverIndex)]
    );
}

/// The agent's split: each SEALED peer's data side goes to the engines right after its
/// config; packet threads seal with it and hand the Node only what needs the control side
/// (the first packet, an initiation a gate already read); handshakes and endpoint moves come
/// back as events, and the relay paths read and steer the Node's WireGuard peers.
#[test]
fn the_node_hands_sealed_data_sides_to_the_engines_and_takes_what_needs_the_control_side() {
    let now = Instant::now();
    let wall = cladnet_wg::WallClock::from_unix(now, Duration::from_secs(1_800_000_000));
    let mut a = Node::new(NodeConfig {
        node_id: "n2".into(),
        underlay_mtu: 1500,
        underlay_ip: Some(*endpoint(2).ip()),
    })
    .with_wireguard(wg_key(2), Counter(2), wall);
    let mut b = sealed_node(3, &[2], now);
    let peer = RemotePeer {
        public_key: *wg_key(3).public_key().as_bytes(),
        ..remote(3)
    };
    a.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(Policy {
                rule: RuleType::Basic,
                encryption: Encryption::Always,
            }),
            local: Some(record(2)),
            peers: vec![peer],
        },
    );
    let (cmds, ..) = drain(&mut a);
    let upsert = cmds
        .iter()
        .position(|c| matches!(c, Command::UpsertPeer(p) if p.node_id == "n3"))
        .expect("the peer is installed");
    let Some(Command::SealedPeer { slot, data, .. }) = cmds.get(upsert + 1) else {
        panic!("no data side right after the peer's config: {cmds:?}");
    };
    assert_eq!(*slot, a.forwarding().peer("n3").unwrap().slot);
    assert!(Arc::ptr_eq(data, &a.peer_data("n3").unwrap()));
    // No session yet: the data side refuses; the Node queues the packet behind an initiation.
    let mut out = vec![0; 256];
    assert!(matches!(
        data.encapsulate(now, &packet(2, 3), &mut out),
        cladnet_wg::Action::Err(cladnet_wg::Error::NoSession)
    ));
    a.handle_tun_packet(now, &packet(2, 3)).unwrap();
    let init = a.poll_transmit().expect("an initiation");
    // B's handshake thread checks and reads it; the Node answers the initiation it was given.
    let mut gate = cladnet_wg::HandshakeGate::with_private_key(&wg_key(3), Counter(9));
    let read = gate.read_initiation(&init.payload).unwrap().unwrap();
    b.handle_initiation(now, SocketAddr::V4(endpoint(2)), read)
        .unwrap();
    let response = b.poll_transmit().expect("a response");
    a.handle_datagram(now, SocketAddr::V4(endpoint(3)), &response.payload)
        .unwrap();
    let (_, sent, events) = drain(&mut a);
    assert!(
        events.contains(&Event::HandshakeCompleted {
            node_id: "n3".into()
        }),
        "{events:?}"
    );
    assert_eq!(sent.len(), 1, "the queued packet leaves: {sent:?}");
    // Now the data side seals without the Node.
    assert!(matches!(
        data.encapsulate(now, &packet(2, 3), &mut out),
        cladnet_wg::Action::WriteToNetwork { .. }
    ));
    // The relay paths see the session and move the peer to a relay address: an event, and
    // the data side sends there.
    let obs = a.relay_observations(now);
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0].endpoint, Some(endpoint(3)));
    assert!(obs[0].handshake_age.is_some());
    let relay = crate::relay::relay_addr(3);
    assert!(a.set_sealed_endpoint(now, 3, relay));
    assert!(!a.set_sealed_endpoint(now, 99, relay), "no such node");
    let (.., events) = drain(&mut a);
    assert!(
        events.contains(&Event::EndpointChanged {
            node_id: "n3".into(),
            endpoint: relay,
            roamed: false
        }),
        "{events:?}"
    );
    assert_eq!(data.endpoint(), Some(relay));
    assert!(a.request_keepalive(3));
}
