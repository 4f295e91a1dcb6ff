use std::time::{Duration, Instant};

use cladnet_common::relay::{self as frame, RELAY_HDR_LEN, RelayKind};
use proptest::prelude::*;

use super::*;

const ME: u32 = 1;
const B: u32 = 2;
const R: u32 = 10;

fn ep(node: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, node as u8, 2), 8055)
}

/// B: never heard from directly; R: a live direct session.
fn obs(b_endpoint: Option<SocketAddrV4>, b_rx: u64) -> [PeerObs; 2] {
    [
        PeerObs {
            node: B,
            configured: Some(ep(B)),
            endpoint: b_endpoint,
            rx_bytes: b_rx,
            handshake_age: None,
        },
        PeerObs {
            node: R,
            configured: Some(ep(R)),
            endpoint: Some(ep(R)),
            rx_bytes: 1000,
            handshake_age: Some(Duration::from_secs(1)),
        },
    ]
}

fn actions(p: &mut Paths) -> Vec<PathAction> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn deliver_frame(from_node: u32, via: u32) -> Vec<u8> {
    let mut msg = [9u8; 48];
    msg[..4].copy_from_slice(&[4, 0, 0, 0]);
    let mut f = vec![0; RELAY_HDR_LEN + msg.len()];
    frame::encode(RelayKind::Deliver, via, from_node, &msg, &mut f).unwrap();
    f
}

#[test]
fn relays_after_the_direct_timeout_then_upgrades_on_direct_evidence() {
    let t0 = Instant::now();
    let mut p = Paths::new(PathConfig::default(), ME, None);
    p.set_relay_capable([R]);
    let mut now = t0;
    while now < t0 + Duration::from_secs(5) {
        p.observe(now, &obs(Some(ep(B)), 0));
        assert!(
            !actions(&mut p)
                .iter()
                .any(|a| matches!(a, PathAction::UseRelay { .. })),
            "direct first"
        );
        now += Duration::from_millis(250);
    }
    p.observe(now, &obs(Some(ep(B)), 0));
    let got = actions(&mut p);
    assert!(got.contains(&PathAction::UseRelay { node: B }), "{got:?}");
    assert!(got.contains(&PathAction::Keepalive { node: B }), "{got:?}");
    assert!(
        !got.iter()
            .any(|a| matches!(a, PathAction::UseRelay { node: R })),
        "the relay itself is direct"
    );
    assert_eq!(p.send(now, B, 48), Out::Relay { via: R, to: ep(R) });
    // WireGuard now sends B to its relay address; B's relayed messages arrive.
    let f = deliver_frame(B, R);
    assert_eq!(p.deliver(now, ep(R), &f), Ok((B, RELAY_HDR_LEN)));
    assert_eq!(
        p.deliver(now, ep(7), &f),
        Err(Refusal::WrongEndpoint),
        "only from the relay's authenticated endpoint"
    );
    assert_eq!(
        p.deliver(now, ep(R), &deliver_frame(B, 11)),
        Err(Refusal::NotMember),
        "only from a relay in use"
    );
    now += Duration::from_millis(250);
    // Relayed bytes do not count as direct evidence.
    p.observe(now, &obs(None, 48));
    assert_eq!(
        p.paths().find(|x| x.0 == B).unwrap().1,
        Path::Relayed { via: R }
    );
    // A direct probe is due: one datagram goes to B's endpoint.
    now += Duration::from_secs(2);
    p.observe(now, &obs(None, 48));
    assert!(actions(&mut p).contains(&PathAction::Probe { node: B }));
    assert_eq!(
        p.send(now, B, 48),
        Out::Relay { via: R, to: ep(R) },
        "data is never diverted"
    );
    assert_eq!(
        p.send(now, B, KEEPALIVE_LEN),
        Out::Both {
            via: R,
            to: ep(R),
            direct: ep(B)
        },
        "the keepalive goes both ways"
    );
    assert_eq!(
        p.send(now, B, KEEPALIVE_LEN),
        Out::Relay { via: R, to: ep(R) }
    );
    // B's answer came directly (WireGuard roamed it to a real endpoint): direct.
    now += Duration::from_millis(250);
    p.observe(now, &obs(Some(ep(B)), 48 + 32));
    assert_eq!(p.paths().find(|x| x.0 == B).unwrap().1, Path::Direct);
    // A relayed message still in flight points WireGuard at the relay address again: the
    // engine is told to point it back.
    let f = deliver_frame(B, R);
    p.deliver(now, ep(R), &f).unwrap();
    actions(&mut p);
    now += Duration::from_millis(250);
    p.observe(now, &obs(None, 48 + 32 + 48));
    assert!(actions(&mut p).contains(&PathAction::UseDirect {
        node: B,
        endpoint: ep(B)
    }));
}

/// Relays `B` through `R` from `t0`, and returns the time it happened.
fn relayed(p: &mut Paths, t0: Instant) -> Instant {
    p.set_relay_capable([R]);
    let mut now = t0;
    while now <= t0 + Duration::from_secs(5) {
        p.observe(now, &obs(Some(ep(B)), 0));
        now += Duration::from_millis(250);
    }
    actions(p);
    assert_eq!(
        p.paths().find(|x| x.0 == B).unwrap().1,
        Path::Relayed { via: R }
    );
    now
}

/// The upgrade under load: B's relayed stream keeps going while its direct probe arrives, so
/// WireGuard is back on B's relay address at every tick (the roam to the real address lasted
/// microseconds). The roam the engine reported is the evidence; B's NAT gave the direct path a
/// port of its own (not the configured one), and that is the endpoint to use.
#[test]
fn a_direct_roam_between_ticks_upgrades_a_busy_relayed_pair() {
    let t0 = Instant::now();
    let mut p = Paths::new(PathConfig::default(), ME, None);
    let mut now = relayed(&mut p, t0);
    let f = deliver_frame(B, R);
    let mut rx = 0;
    for _ in 0..8 {
        p.deliver(now, ep(R), &f).unwrap();
        rx += 48;
        now += Duration::from_millis(250);
        p.observe(now, &obs(None, rx));
    }
    assert_eq!(
        p.paths().find(|x| x.0 == B).unwrap().1,
        Path::Relayed { via: R }
    );
    let mapped = SocketAddrV4::new(*ep(B).ip(), 40_123);
    // B's direct keepalive: authenticated, from the port B's NAT mapped for us.
    rx += KEEPALIVE_LEN as u64;
    p.direct_seen(B, mapped);
    // Then more relayed data, roaming WireGuard back to the relay address before the tick.
    p.deliver(now, ep(R), &f).unwrap();
    rx += 48;
    now += Duration::from_millis(250);
    p.observe(now, &obs(None, rx));
    assert_eq!(p.paths().find(|x| x.0 == B).unwrap().1, Path::Direct);
    assert!(
        actions(&mut p).contains(&PathAction::UseDirect {
            node: B,
            endpoint: mapped
        }),
        "WireGuard is pointed at the port the direct message came from"
    );
    // A roam seen without new direct bytes (a replayed copy WireGuard refused) is no evidence.
    let mut q = Paths::new(PathConfig::default(), ME, None);
    let mut now = relayed(&mut q, t0);
    q.deliver(now, ep(R), &f).unwrap();
    q.direct_seen(B, mapped);
    now += Duration::from_millis(250);
    q.observe(now, &obs(None, 48));
    assert_eq!(
        q.paths().find(|x| x.0 == B).unwrap().1,
        Path::Relayed { via: R }
    );
}

#[test]
fn no_relay_means_unreachable_and_a_relayed_message_is_answered() {
    let t0 = Instant::now();
    let mut p = Paths::new(PathConfig::default(), ME, None);
    p.observe(t0, &obs(Some(ep(B)), 0));
    p.observe(t0 + Duration::from_secs(6), &obs(Some(ep(B)), 0));
    assert_eq!(
        p.paths().find(|x| x.0 == B).unwrap().1,
        Path::Unreachable,
        "R does not offer to relay"
    );
    assert_eq!(p.send(t0, B, 48), Out::Direct(ep(B)));
    // Once R offers, B's relayed message moves the path to R and is answered once.
    p.set_relay_capable([R]);
    let now = t0 + Duration::from_secs(7);
    p.observe(now, &obs(Some(ep(B)), 0));
    actions(&mut p);
    let f = deliver_frame(B, R);
    p.deliver(now, ep(R), &f).unwrap();
    p.deliver(now, ep(R), &f).unwrap();
    let echoes = |p: &mut Paths| {
        actions(p)
            .into_iter()
            .filter(|a| *a == PathAction::Keepalive { node: B })
            .count()
    };
    assert_eq!(
        echoes(&mut p),
        0,
        "not at once: an answer may be on its way"
    );
    let later = now + Duration::from_millis(250);
    p.observe(later, &obs(None, 96));
    assert_eq!(echoes(&mut p), 1, "nothing went back: a keepalive does");
    p.observe(later + Duration::from_secs(1), &obs(None, 96));
    assert_eq!(echoes(&mut p), 0, "once");
    // Answered by traffic: no keepalive.
    p.deliver(later, ep(R), &f).unwrap();
    assert!(matches!(p.send(later, B, 100), Out::Relay { .. }));
    p.observe(later + Duration::from_secs(1), &obs(None, 144));
    assert_eq!(echoes(&mut p), 0);
    // A keepalive is never answered, and sending one does not wait for an answer.
    let mut ka = vec![0; RELAY_HDR_LEN + KEEPALIVE_LEN];
    let mut msg = [0u8; KEEPALIVE_LEN];
    msg[0] = 4;
    frame::encode(RelayKind::Deliver, R, B, &msg, &mut ka).unwrap();
    p.deliver(later, ep(R), &ka).unwrap();
    p.observe(later + Duration::from_secs(2), &obs(None, 176));
    assert_eq!(echoes(&mut p), 0);
    for i in 0..40 {
        let t = later + Duration::from_secs(2) + Duration::from_millis(250 * i);
        assert_ne!(p.send(t, B, KEEPALIVE_LEN), Out::Drop);
        p.observe(t, &obs(None, 176));
    }
    assert_eq!(
        p.paths().find(|x| x.0 == B).unwrap().1,
        Path::Relayed { via: R },
        "keepalives alone never make the relay look silent"
    );
}

#[test]
fn serving_forwards_only_between_live_members() {
    let t0 = Instant::now();
    let mut relay = Paths::new(PathConfig::default(), R, Some(Limits::default()));
    let live = |node| PeerObs {
        node,
        configured: Some(ep(node)),
        endpoint: Some(ep(node)),
        rx_bytes: 1,
        handshake_age: Some(Duration::from_secs(3)),
    };
    let stale = PeerObs {
        handshake_age: Some(SESSION_LIVE),
        ..live(3)
    };
    relay.observe(t0, &[live(ME), live(B), stale]);
    let send = |src: u32, dst: u32| {
        let mut msg = [9u8; 48];
        msg[..4].copy_from_slice(&[4, 0, 0, 0]);
        let mut f = vec![0; RELAY_HDR_LEN + msg.len()];
        frame::encode(RelayKind::Send, src, dst, &msg, &mut f).unwrap();
        f
    };
    assert!(matches!(
        relay.forward(t0, ep(ME), &mut send(ME, B)),
        Decision::Forward { to, .. } if to == ep(B)
    ));
    assert_eq!(
        relay.forward(t0, ep(ME), &mut send(ME, 3)),
        Decision::Refuse(Refusal::DestinationUnreachable)
    );
    assert_eq!(
        relay.forward(t0, ep(99), &mut send(99, B)),
        Decision::Refuse(Refusal::NotMember)
    );
    // A member that left is refused.
    relay.observe(t0, &[live(B)]);
    assert_eq!(
        relay.forward(t0, ep(ME), &mut send(ME, B)),
        Decision::Refuse(Refusal::NotMember)
    );
    // Not serving: everything refused.
    let mut member = Paths::new(PathConfig::default(), ME, None);
    member.observe(t0, &[live(B)]);
    assert_eq!(
        member.forward(t0, ep(B), &mut send(B, ME)),
        Decision::Refuse(Refusal::NotMember)
    );
    // `relay = "auto"` turns serving on (members from the next observation) and off.
    member.set_serving(Some(Limits::default()));
    member.observe(t0, &[live(B), live(3)]);
    assert!(member.serving().is_some());
    assert!(matches!(
        member.forward(t0, ep(B), &mut send(B, 3)),
        Decision::Forward { to, .. } if to == ep(3)
    ));
    member.set_serving(None);
    assert!(member.serving().is_none());
    assert_eq!(
        member.forward(t0, ep(B), &mut send(B, 3)),
        Decision::Refuse(Refusal::NotMember)
    );
}

proptest! {
    #[test]
    fn relay_addresses_round_trip_and_never_match_a_real_one(node in any::<u32>(), ip in any::<u32>(), port in any::<u16>()) {
        prop_assert_eq!(relay_node(relay_addr(node)), Some(node));
        let real = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port));
        prop_assert_eq!(relay_node(real).is_some(), ip & 0xFFFF_0000 == 0xF000_0000);
    }
}

/// Ticks `p` every 250 ms from `now` until `until`, sending a keepalive for every probe;
/// returns the direct endpoints the probes went to, the outcomes, and the time reached.
fn tick_probes(
    p: &mut Paths,
    mut now: Instant,
    until: Instant,
    b_obs: impl Fn(Instant) -> [PeerObs; 2],
) -> (Vec<SocketAddrV4>, Vec<Outcome>, Instant) {
    let (mut directs, mut outcomes) = (Vec::new(), Vec::new());
    while now < until {
        p.observe(now, &b_obs(now));
        for a in actions(p) {
            match a {
                PathAction::Probe { node: B } => {
                    if let Out::Both { direct, .. } = p.send(now, B, KEEPALIVE_LEN) {
                        directs.push(direct);
                    }
                }
                PathAction::Coordinated { node: B, outcome } => outcomes.push(outcome),
                _ => {}
            }
        }
        now += Duration::from_millis(250);
    }
    (directs, outcomes, now)
}

#[test]
fn a_coordinated_attempt_probes_at_its_start_time_then_reports_its_outcome() {
    let t0 = Instant::now();
    let mut p = Paths::new(PathConfig::default(), ME, None);
    let now = relayed(&mut p, t0);
    let alt = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 8055);
    let private = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 10), 8055);
    let start = now + Duration::from_millis(600);
    assert!(p.coordinate(B, start, &[ep(B), alt, private]));
    assert!(!p.coordinate(99, start, &[]), "unknown peer");
    // Nothing before the start time.
    let (_, outcomes, now) = tick_probes(&mut p, now, start, |_| obs(None, 0));
    assert!(outcomes.is_empty());
    assert_eq!(p.coordinated(), (0, 0));
    // At the start: the first probe (counted once), then the rest of the burst, every
    // endpoint in turn, then the outcome after the answer time.
    p.observe(now, &obs(None, 0));
    assert!(actions(&mut p).contains(&PathAction::Probe { node: B }));
    assert_eq!(p.coordinated(), (1, 0));
    let first = p.send(now, B, KEEPALIVE_LEN);
    assert_eq!(
        first,
        Out::Both {
            via: R,
            to: ep(R),
            direct: ep(B)
        }
    );
    let end = now + BURST_GAP * (BURST_PROBES as u32 - 1) + BURST_ANSWER;
    let (directs, outcomes, after) = tick_probes(
        &mut p,
        now + BURST_GAP,
        end + Duration::from_millis(1),
        |_| obs(None, 0),
    );
    assert!(directs.contains(&alt), "{directs:?}");
    assert!(
        !directs.contains(&private),
        "another site's private address"
    );
    assert!(directs.len() >= BURST_PROBES - 1, "{directs:?}");
    assert_eq!(outcomes, [Outcome::Not(Path::Relayed { via: R })]);
    assert_eq!(p.coordinated(), (1, 0));
    // Over: no more outcomes.
    let (_, outcomes, _) = tick_probes(&mut p, after, after + Duration::from_secs(3), |_| {
        obs(None, 0)
    });
    assert!(outcomes.is_empty());

    // Another attempt whose probe is answered directly: the path is upgraded.
    let mut q = Paths::new(PathConfig::default(), ME, None);
    let now = relayed(&mut q, t0);
    assert!(q.coordinate(B, now, &[]));
    let answered = now + Duration::from_millis(500);
    let (_, outcomes, _) = tick_probes(&mut q, now, now + Duration::from_secs(3), |t| {
        if t >= answered {
            obs(Some(ep(B)), 32)
        } else {
            obs(None, 0)
        }
    });
    assert_eq!(outcomes, [Outcome::Direct]);
    assert_eq!(q.paths().find(|x| x.0 == B).unwrap().1, Path::Direct);
    assert_eq!(q.coordinated(), (1, 1));
    // A start time when the path is direct already: no probes, not counted.
    assert!(q.coordinate(B, now, &[]));
    let later = now + Duration::from_secs(3);
    let (directs, outcomes, _) = tick_probes(&mut q, later, later + Duration::from_secs(1), |_| {
        obs(Some(ep(B)), 64)
    });
    assert!(directs.is_empty());
    assert_eq!(outcomes, [Outcome::AlreadyDirect]);
    assert_eq!(q.coordinated(), (1, 1));
}
