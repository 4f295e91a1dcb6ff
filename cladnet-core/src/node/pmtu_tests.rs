//! Path MTU discovery in the Node, on a virtual clock: two Nodes probe each other over a
//! virtual path whose MTU drop lies beyond the first hop and that drops ICMP (as the netns
//! tests' paths do); time advances only to the instants the Nodes ask for.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    tests::{drain, endpoint, record, remote},
    *,
};
use cladnet_common::pmtu::MtuMessage;

use crate::policy::{Encryption, RuleType};

fn policy(encryption: Encryption) -> Policy {
    Policy {
        rule: RuleType::Basic,
        encryption,
    }
}

/// Node `n{me}` in a network with `n{peer}`, path MTU discovery on, outputs drained.
fn node(me: u8, peer: u8, encryption: Encryption, now: Instant) -> Node {
    let mut node = Node::new(NodeConfig {
        node_id: format!("n{me}"),
        underlay_mtu: 1500,
        underlay_ip: Some(*endpoint(me).ip()),
    });
    node.enable_path_mtu(u64::from(me));
    node.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(policy(encryption)),
            local: Some(record(me)),
            peers: vec![remote(peer)],
        },
    );
    node
}

/// Two Nodes, n1 and n2, and the path between them; everything either Node emitted.
struct Pair {
    a: Node,
    b: Node,
    now: Instant,
    /// Largest IPv4 packet the path carries; larger ones vanish beyond the first hop.
    path_mtu: usize,
    /// Largest IPv4 packet n1's first hop takes; larger ones fail with EMSGSIZE.
    first_hop: usize,
    /// n1 is busy (the engines report its traffic every 250 ms).
    busy: bool,
    commands: Vec<Command>,
    events: Vec<Event>,
    probes_sent: usize,
}

impl Pair {
    fn new(encryption: Encryption) -> Self {
        let now = Instant::now();
        Self {
            a: node(1, 2, encryption, now),
            b: node(2, 1, encryption, now),
            now,
            path_mtu: 1500,
            first_hop: 1500,
            busy: false,
            commands: Vec::new(),
            events: Vec::new(),
            probes_sent: 0,
        }
    }

    /// Runs until `until` from now, jumping from one requested timeout to the next.
    fn run(&mut self, until: Duration) {
        let end = self.now + until;
        let mut next_activity = self.now;
        loop {
            self.exchange();
            let due = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .chain(self.busy.then_some(next_activity))
                .min()
                .expect("a Node with a peer always has a timeout");
            assert!(due >= self.now, "a timeout in the past");
            if due > end {
                self.now = end;
                return;
            }
            self.now = due;
            if self.busy && self.now >= next_activity {
                let ips = BTreeSet::from([Ipv4Addr::new(10, 77, 0, 2)]);
                self.a.handle_peer_activity(self.now, &ips);
                next_activity = self.now + Duration::from_millis(250);
            }
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }

    /// Carries datagrams both ways until both Nodes are quiet (b's probes to a too: both
    /// search). Counts n1's probes.
    fn exchange(&mut self) {
        let (a_ep, b_ep) = (SocketAddr::V4(endpoint(1)), SocketAddr::V4(endpoint(2)));
        loop {
            self.commands
                .extend(std::iter::from_fn(|| self.a.poll_command()));
            self.events
                .extend(std::iter::from_fn(|| self.a.poll_event()));
            while self.b.poll_command().is_some() || self.b.poll_event().is_some() {}
            let from_a: Vec<_> = std::iter::from_fn(|| self.a.poll_transmit()).collect();
            let from_b: Vec<_> = std::iter::from_fn(|| self.b.poll_transmit()).collect();
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for t in from_a {
                assert_eq!(t.to, b_ep);
                if let Ok(MtuMessage::Probe { .. }) = cladnet_common::pmtu::decode(&t.payload) {
                    self.probes_sent += 1;
                }
                if self.carries(&mut true, &t) {
                    let _ = self.b.handle_datagram(self.now, a_ep, &t.payload);
                }
            }
            for t in from_b {
                assert_eq!(t.to, a_ep);
                if self.carries(&mut false, &t) {
                    let _ = self.a.handle_datagram(self.now, b_ep, &t.payload);
                }
            }
        }
    }

    /// Whether the path delivers `t`; a datagram above n1's first hop fails to send there.
    fn carries(&mut self, from_a: &mut bool, t: &Transmit) -> bool {
        let ip_len = t.payload.len() + 28;
        if *from_a && ip_len > self.first_hop {
            self.a
                .handle_transmit_too_big(self.now, t.to, t.payload.len());
            return false;
        }
        ip_len <= self.path_mtu
    }

    fn route(&self) -> Option<Option<u32>> {
        self.commands.iter().rev().find_map(|c| match c {
            Command::SetRouteMtu {
                node_id,
                overlay_ip,
                mtu,
                ..
            } => {
                assert_eq!(
                    (node_id.as_str(), *overlay_ip),
                    ("n2", Ipv4Addr::new(10, 77, 0, 2))
                );
                Some(*mtu)
            }
            _ => None,
        })
    }
}

#[test]
fn plain_and_sealed_links_find_the_path_beyond_the_first_hop_and_emit_routes() {
    for (encryption, route) in [(Encryption::Never, 1364), (Encryption::Always, 1328)] {
        let mut p = Pair::new(encryption);
        p.path_mtu = 1400;
        p.run(Duration::from_secs(3));
        let st = p.a.path_mtu("n2").expect("searched");
        assert_eq!(
            (st.path_mtu, st.route_mtu, st.state),
            (1400, Some(route), "search_complete"),
            "{encryption:?}"
        );
        assert_eq!(p.route(), Some(Some(route)));
        assert!(p.events.iter().any(|e| matches!(
            e,
            Event::PathMtu { node_id, status: Some(s) } if node_id == "n2" && s.state == "search_complete"
        )));
        // A full path: the next raise finds it, capped at the overlay device's MTU.
        p.path_mtu = 1500;
        p.run(Duration::from_secs(20));
        assert_eq!(p.route(), Some(Some(1440)), "{encryption:?}");
    }
}

#[test]
fn no_route_before_the_first_search_completes() {
    let mut p = Pair::new(Encryption::Never);
    p.path_mtu = 1400;
    p.run(Duration::from_millis(100));
    assert_eq!(
        p.route(),
        None,
        "an optimistic start leaves the route alone"
    );
    assert!(p.probes_sent > 0, "the search starts at once");
}

#[test]
fn a_black_hole_on_a_busy_link_lowers_the_route_within_two_seconds() {
    let mut p = Pair::new(Encryption::Never);
    p.busy = true;
    p.run(Duration::from_secs(3));
    assert_eq!(p.route(), Some(Some(1440)));
    // The path shrinks beyond the first hop; no ICMP comes back: within two seconds the
    // route is at a size that gets through, ...
    p.path_mtu = 1300;
    p.run(Duration::from_secs(2));
    let lowered = p.route().flatten().expect("a route");
    assert!(lowered <= 1264, "{lowered}");
    // ... and the new search (three losses per size too big) finds the hop exactly.
    p.run(Duration::from_secs(3));
    assert_eq!(p.route(), Some(Some(1264)), "1300 - 36");
}

#[test]
fn an_idle_link_is_confirmed_rarely() {
    let mut p = Pair::new(Encryption::Never);
    p.run(Duration::from_secs(3));
    let before = p.probes_sent;
    // The search completed within the first 100 ms: the next confirmation is due 10 s later.
    p.run(Duration::from_secs(6));
    assert_eq!(p.probes_sent, before, "idle confirmations every 10 s only");
    p.run(Duration::from_secs(2));
    assert_eq!(p.probes_sent, before + 1, "one confirmation");
}

#[test]
fn emsgsize_and_icmp_hints_lower_the_path() {
    // The first hop takes 1400: probes above fail to send.
    let mut p = Pair::new(Encryption::Never);
    p.first_hop = 1400;
    p.run(Duration::from_secs(3));
    assert_eq!(p.route(), Some(Some(1364)));

    // An ICMP-learnt 1350 towards the peer's address: at once, and once only.
    let mut p = Pair::new(Encryption::Never);
    p.run(Duration::from_secs(3));
    assert_eq!(
        p.a.path_mtu_destinations(),
        BTreeSet::from([*endpoint(2).ip()])
    );
    p.a.handle_path_mtu_hint(p.now, *endpoint(2).ip(), 1350);
    p.run(Duration::from_millis(20));
    assert_eq!(p.route(), Some(Some(1314)));
    // A hint for another address changes nothing.
    p.a.handle_path_mtu_hint(p.now, Ipv4Addr::new(203, 0, 113, 9), 1300);
    p.run(Duration::from_millis(20));
    assert_eq!(p.route(), Some(Some(1314)));
}

#[test]
fn a_removed_peer_loses_its_route_right_after_it_is_removed() {
    let mut p = Pair::new(Encryption::Never);
    p.path_mtu = 1400;
    p.run(Duration::from_secs(3));
    p.commands.clear();
    p.a.handle_watch_event(p.now, WatchEvent::PeerRemoved("n2".into()));
    p.run(Duration::from_millis(10));
    let kinds: Vec<_> = p
        .commands
        .iter()
        .filter(|c| !matches!(c, Command::Publish(_)))
        .cloned()
        .collect();
    assert_eq!(
        kinds,
        vec![
            Command::RemovePeer {
                node_id: "n2".into(),
                overlay_ip: Ipv4Addr::new(10, 77, 0, 2),
                slot: 0,
            },
            Command::SetRouteMtu {
                node_id: "n2".into(),
                overlay_ip: Ipv4Addr::new(10, 77, 0, 2),
                slot: 0,
                mtu: None,
            },
        ]
    );
    assert!(p.events.contains(&Event::PathMtu {
        node_id: "n2".into(),
        status: None
    }));
    assert_eq!(p.a.path_mtu("n2"), None);
    assert!(p.a.path_mtu_destinations().is_empty());
}

#[test]
fn a_new_endpoint_searches_again_and_keeps_the_route_meanwhile() {
    let mut p = Pair::new(Encryption::Always);
    p.path_mtu = 1400;
    p.run(Duration::from_secs(3));
    let probes = p.probes_sent;
    let roamed: SocketAddr = "198.18.0.99:4000".parse().unwrap();
    p.a.handle_peer_roamed(p.now, "n2", roamed);
    p.a.handle_timeout(p.now);
    let t = p.a.poll_transmit().expect("a probe at once");
    assert_eq!(t.to, roamed);
    assert_eq!(p.a.path_mtu("n2").map(|s| s.route_mtu), Some(Some(1328)));
    assert_eq!(p.probes_sent, probes);
    assert!(
        !std::iter::from_fn(|| p.a.poll_command())
            .any(|c| matches!(c, Command::SetRouteMtu { .. }))
    );
}

/// A SEALED peer moved to a relay address is not probed there (probes do not cross relays):
/// its route drops to the base size at once. Back on a direct path, it is searched again.
#[test]
fn a_relayed_peer_gets_the_base_route_at_once_and_no_probes() {
    let mut p = Pair::new(Encryption::Always);
    p.path_mtu = 1400;
    p.run(Duration::from_secs(3));
    assert_eq!(p.route(), Some(Some(1328)));
    let relay = crate::relay::relay_addr(2);
    p.a.handle_peer_roamed(p.now, "n2", relay);
    p.a.handle_timeout(p.now);
    assert!(
        std::iter::from_fn(|| p.a.poll_transmit()).all(|t| t.to != relay),
        "no probe to a relay address"
    );
    p.commands.extend(std::iter::from_fn(|| p.a.poll_command()));
    let base = route_mtu(LinkMode::Sealed, pmtu::RELAYED_PATH_MTU);
    assert_eq!(base, 1200);
    assert_eq!(p.route(), Some(Some(base)));
    assert_eq!(p.a.path_mtu("n2").map(|s| s.route_mtu), Some(Some(base)));
    // Later ticks keep it without probing (`run` asserts every transmit goes to n2's
    // direct endpoint).
    let probes = p.probes_sent;
    p.run(Duration::from_secs(30));
    assert_eq!(p.route(), Some(Some(base)));
    assert_eq!(p.probes_sent, probes);
    // Direct again: a new search, whose probes go to the direct endpoint.
    p.a.handle_peer_roamed(p.now, "n2", SocketAddr::V4(endpoint(2)));
    p.run(Duration::from_secs(3));
    assert_eq!(p.route(), Some(Some(1328)));
}

#[test]
fn probes_and_acks_from_strangers_get_nothing() {
    let now = Instant::now();
    let mut b = node(2, 1, Encryption::Never, now);
    drain(&mut b);
    let mut buf = [0u8; 100];
    let probe = cladnet_common::pmtu::probe(1, 5, 64, &mut buf)
        .unwrap()
        .to_vec();
    let unknown = Err(Dropped::Plain(DropReason::UnknownPeer));
    // The right node index from the wrong address, and a stranger's index from the peer's.
    let wrong: SocketAddr = "203.0.113.9:8055".parse().unwrap();
    assert_eq!(b.handle_datagram(now, wrong, &probe), unknown);
    let stranger = cladnet_common::pmtu::probe(99, 5, 64, &mut buf)
        .unwrap()
        .to_vec();
    let a_ep = SocketAddr::V4(endpoint(1));
    assert_eq!(b.handle_datagram(now, a_ep, &stranger), unknown);
    assert_eq!(
        b.handle_datagram(now, a_ep, &probe[..12]),
        Err(Dropped::Plain(DropReason::BadHeader))
    );
    assert!(b.poll_transmit().is_none(), "no answer to anyone of them");
    // The peer gets an acknowledgement no larger than its probe.
    assert_eq!(b.handle_datagram(now, a_ep, &probe), Ok(()));
    let ack = b.poll_transmit().unwrap();
    assert_eq!(ack.to, a_ep);
    assert!(ack.payload.len() <= probe.len());
}

#[test]
fn the_same_seed_gives_the_same_run_and_path_mtu_is_off_unless_enabled() {
    let run = || {
        let mut p = Pair::new(Encryption::Never);
        p.path_mtu = 1400;
        p.run(Duration::from_secs(5));
        (p.probes_sent, p.commands.len(), format!("{:?}", p.events))
    };
    assert_eq!(run(), run());
    let now = Instant::now();
    let mut off = Node::new(NodeConfig {
        node_id: "n1".into(),
        underlay_mtu: 1500,
        underlay_ip: None,
    });
    off.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(policy(Encryption::Never)),
            local: Some(record(1)),
            peers: vec![remote(2)],
        },
    );
    off.handle_timeout(now + Duration::from_secs(30));
    let (cmds, transmits, _) = drain(&mut off);
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::SetRouteMtu { .. }))
    );
    assert!(
        transmits
            .iter()
            .all(|t| cladnet_common::pmtu::decode(&t.payload).is_err())
    );
}
