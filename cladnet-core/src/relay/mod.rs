//! Relays, sans-IO: what a relay node does with a relay frame ([`Relay`]), the limits it
//! applies per member ([`TokenBucket`]), what a member accepts from a relay
//! ([`accept_deliver`]), and the path each node keeps per peer (direct, or relayed via whom:
//! [`PathState`]). No sockets, no clocks: callers pass `now` and bytes, and
//! apply the decisions, so the agent's `Node` can own all of it. The frame format is
//! `cladnet_common::relay`; the design and its reasons are in docs/architecture.md ("Relays").

mod auto;
mod forward;
mod limit;
mod path;
mod paths;
mod receive;

pub use auto::{AutoRelay, CLOSED_TO_STOP, OPEN_TO_SERVE};
pub use forward::{Decision, Refusal, Relay};
pub use limit::{Limits, TokenBucket};
pub use path::{Path, PathConfig, PathEvent, PathReason, PathState, Route};
pub use paths::{
    BURST_ANSWER, BURST_GAP, BURST_PROBES, KEEPALIVE_LEN, Out, Outcome, PathAction, Paths, PeerObs,
    SESSION_LIVE, relay_addr, relay_node,
};
pub use receive::{Delivered, accept_deliver};

#[cfg(test)]
mod scenario {
    //! The pieces together, on a virtual clock: two peers behind hard NAT relay through R1,
    //! fail over to R2 when R1 dies, and upgrade to direct when a direct path opens.

    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::{Duration, Instant},
    };

    use cladnet_common::relay::{self as frame, RELAY_HDR_LEN, RelayKind};

    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const R1: u32 = 10;
    const R2: u32 = 11;

    fn ep(node: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, node as u8, 2), 8055)
    }

    struct Net {
        /// Relay id, its forwarding core, whether it is alive.
        relays: Vec<(u32, Relay, bool)>,
        direct_open: bool,
    }

    impl Net {
        /// `from` sends one WireGuard transport message to `to` the way its path says: `None`
        /// if it was lost, `Some(None)` if it arrived directly, `Some(Some(r))` through `r`.
        fn send(
            &mut self,
            now: Instant,
            from: u32,
            to: u32,
            path: &mut PathState,
        ) -> Option<Option<u32>> {
            let mut msg = [0x42u8; 48];
            msg[..4].copy_from_slice(&[4, 0, 0, 0]);
            let Route::Via(via) = path.route() else {
                return self.direct_open.then_some(None);
            };
            path.relayed_tx(now);
            let mut f = vec![0; RELAY_HDR_LEN + msg.len()];
            frame::encode(RelayKind::Send, from, to, &msg, &mut f).unwrap();
            let (_, relay, alive) = self.relays.iter_mut().find(|r| r.0 == via)?;
            if !*alive {
                return None;
            }
            match relay.handle(now, ep(from), &mut f) {
                Decision::Forward { to: addr, .. } => {
                    assert_eq!(addr, ep(to));
                    let relays = |id| [R1, R2].contains(&id).then_some(ep(id));
                    let d = accept_deliver(&f, ep(via), relays).expect("the member accepts it");
                    assert_eq!((d.via, d.from_node), (via, from));
                    assert_eq!(d.message, &msg[..], "the WireGuard message is untouched");
                    Some(Some(via))
                }
                Decision::Refuse(r) => panic!("relay {via} refused {from} -> {to}: {r:?}"),
            }
        }
    }

    /// `me` tries direct when due, sends to `other`, and `other` learns what arrived.
    fn one_way(
        now: Instant,
        net: &mut Net,
        (me, other): (u32, u32),
        mine: &mut PathState,
        theirs: &mut PathState,
    ) {
        if mine.poll_direct_probe(now) && net.direct_open {
            mine.direct_confirmed(now);
            theirs.direct_confirmed(now);
        }
        match net.send(now, me, other, mine) {
            Some(None) => theirs.direct_rx(now),
            Some(Some(via)) => theirs.relayed_rx(now, via),
            None => {}
        }
    }

    /// Rounds of 100 ms (both sides send, then apply their timeouts) until `until`.
    fn run(now: &mut Instant, until: Instant, net: &mut Net, a: &mut PathState, b: &mut PathState) {
        while *now < until {
            *now += Duration::from_millis(100);
            one_way(*now, net, (A, B), a, b);
            one_way(*now, net, (B, A), b, a);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
        }
    }

    #[test]
    fn relay_failover_and_upgrade() {
        let t0 = Instant::now();
        let mut net = Net {
            relays: vec![],
            direct_open: false,
        };
        for id in [R1, R2] {
            let mut r = Relay::new(id, Limits::default());
            r.set_member(t0, A, Some(ep(A)));
            r.set_member(t0, B, Some(ep(B)));
            net.relays.push((id, r, true));
        }
        let mut a = PathState::new(t0, PathConfig::default());
        let mut b = PathState::new(t0, PathConfig::default());
        a.set_relays(t0, &[R1, R2]);
        b.set_relays(t0, &[R1, R2]);
        let mut now = t0;
        run(
            &mut now,
            t0 + Duration::from_secs(6),
            &mut net,
            &mut a,
            &mut b,
        );
        assert_eq!((a.route(), b.route()), (Route::Via(R1), Route::Via(R1)));
        assert_eq!(
            a.poll_event().map(|e| e.reason),
            Some(PathReason::DirectTimedOut)
        );
        while b.poll_event().is_some() {}
        // R1 dies: both move to R2 once it was silent for 3 s.
        net.relays[0].2 = false;
        let died = now;
        while a.route() != Route::Via(R2) || b.route() != Route::Via(R2) {
            let next = now + Duration::from_millis(100);
            run(&mut now, next, &mut net, &mut a, &mut b);
            assert!(
                now - died <= Duration::from_secs(5),
                "no failover within 5 s"
            );
        }
        // The first to notice fails over; the other follows the peer's packets (its own relay
        // is unanswered too) or notices itself.
        let moved = [a.poll_event(), b.poll_event()].map(|e| e.map(|e| e.reason));
        assert!(moved.contains(&Some(PathReason::RelaySilent)), "{moved:?}");
        assert!(
            moved
                .iter()
                .all(|r| matches!(r, Some(PathReason::RelaySilent | PathReason::PeerRelay))),
            "{moved:?}"
        );
        let later = now + Duration::from_secs(1);
        run(&mut now, later, &mut net, &mut a, &mut b);
        assert!(
            net.relays[1].1.forwarded().0 > 0,
            "traffic flows through R2"
        );
        // The direct path opens (one side's NAT became 1:1): direct within a probe interval.
        net.direct_open = true;
        let opened = now;
        while a.route() != Route::Direct || b.route() != Route::Direct {
            let next = now + Duration::from_millis(100);
            run(&mut now, next, &mut net, &mut a, &mut b);
            assert!(
                now - opened <= Duration::from_secs(10),
                "no upgrade within 10 s"
            );
        }
        assert!(now - opened <= Duration::from_secs(2));
        assert_eq!(
            a.poll_event().map(|e| e.reason),
            Some(PathReason::DirectConfirmed)
        );
    }
}
