//! A relay's forwarding decision for one frame.
//!
//! A relay forwards `SEND` frames between members of its own network only. The sender is
//! authenticated by where the frame comes from: it must arrive from the endpoint the relay's
//! own WireGuard session with that node last authenticated (the Node tells the relay with
//! [`Relay::set_member`]), so a non-member, or a member's id used from elsewhere, is refused.
//! The destination must be a member with such an endpoint too, so the relay can only ever send
//! to addresses that proved themselves in a WireGuard handshake: it cannot be aimed at a
//! victim. The WireGuard message itself stays end to end: the relay neither reads nor could
//! forge it, and the receiver's WireGuard drops anything not sealed by the peer.

use std::{collections::HashMap, net::SocketAddrV4, time::Instant};

use cladnet_common::relay::{self as frame, RelayError, RelayKind};

use super::limit::{Limits, TokenBucket};

/// What to do with a frame.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Decision {
    /// Send the frame (rewritten in place into a `DELIVER`, same length) to `to`.
    Forward {
        /// The destination member's endpoint.
        to: SocketAddrV4,
        /// The sending member.
        from_node: u32,
        /// The destination member.
        to_node: u32,
    },
    /// Drop it (counted by reason).
    Refuse(Refusal),
}

/// Why a relay refused a frame.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Refusal {
    /// Not a valid relay frame, or a `DELIVER` (only members' `SEND`s are forwarded).
    Malformed,
    /// The payload is not a WireGuard message: relayed PLAIN is not allowed.
    NotWireGuard,
    /// The sender's node id is not a member of this relay's network.
    NotMember,
    /// A member's id from another endpoint than the one WireGuard authenticated for it.
    WrongEndpoint,
    /// The sender is over its packet rate.
    PacketLimit,
    /// The sender is over its byte rate.
    ByteLimit,
    /// The destination is not a member (or is the relay itself).
    UnknownDestination,
    /// The destination is a member without an authenticated endpoint (no direct link to it).
    DestinationUnreachable,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Self; 8] = [
        Self::Malformed,
        Self::NotWireGuard,
        Self::NotMember,
        Self::WrongEndpoint,
        Self::PacketLimit,
        Self::ByteLimit,
        Self::UnknownDestination,
        Self::DestinationUnreachable,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotWireGuard => "not_wireguard",
            Self::NotMember => "not_member",
            Self::WrongEndpoint => "wrong_endpoint",
            Self::PacketLimit => "packet_limit",
            Self::ByteLimit => "byte_limit",
            Self::UnknownDestination => "unknown_destination",
            Self::DestinationUnreachable => "destination_unreachable",
        }
    }

    pub(super) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

#[derive(Debug)]
struct Member {
    endpoint: Option<SocketAddrV4>,
    packets: TokenBucket,
    bytes: TokenBucket,
}

/// The forwarding core of one relay node: its network's members, their limits and the
/// counters.
#[derive(Debug)]
pub struct Relay {
    id: u32,
    limits: Limits,
    members: HashMap<u32, Member>,
    refused: [u64; Refusal::ALL.len()],
    forwarded: (u64, u64),
}

impl Relay {
    /// The relay of node `id` with per-member `limits` and no members yet.
    pub fn new(id: u32, limits: Limits) -> Self {
        Self {
            id,
            limits,
            members: HashMap::new(),
            refused: [0; Refusal::ALL.len()],
            forwarded: (0, 0),
        }
    }

    /// Adds member `node` or updates its endpoint: the one the relay's WireGuard session with
    /// it last authenticated (`None` while there is no session). Its limits are kept.
    pub fn set_member(&mut self, now: Instant, node: u32, endpoint: Option<SocketAddrV4>) {
        if node == self.id {
            return;
        }
        let l = self.limits;
        self.members
            .entry(node)
            .or_insert_with(|| Member {
                endpoint: None,
                packets: TokenBucket::new(now, l.packets_per_sec, l.packet_burst),
                bytes: TokenBucket::new(now, l.bytes_per_sec, l.byte_burst),
            })
            .endpoint = endpoint;
    }

    /// Removes member `node` (it left the network).
    pub fn remove_member(&mut self, node: u32) {
        self.members.remove(&node);
    }

    /// Keeps only the members `keep` says are still in the network.
    pub fn retain_members(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.members.retain(|n, _| keep(*n));
    }

    /// Decides what to do with `datagram`, received at `now` from `from`. On
    /// [`Decision::Forward`] the datagram has been rewritten into the `DELIVER` to send.
    pub fn handle(&mut self, now: Instant, from: SocketAddrV4, datagram: &mut [u8]) -> Decision {
        let decision = self.decide(now, from, datagram);
        match decision {
            Decision::Forward { .. } => {
                self.forwarded.0 += 1;
                self.forwarded.1 += datagram.len() as u64;
            }
            Decision::Refuse(r) => self.refused[r.index()] += 1,
        }
        decision
    }

    fn decide(&mut self, now: Instant, from: SocketAddrV4, datagram: &mut [u8]) -> Decision {
        let f = match frame::decode(datagram) {
            Ok(f) if f.kind == RelayKind::Send => f,
            Ok(_) => return Decision::Refuse(Refusal::Malformed),
            Err(RelayError::NotWireGuard | RelayError::BadWireGuardLength) => {
                return Decision::Refuse(Refusal::NotWireGuard);
            }
            Err(_) => return Decision::Refuse(Refusal::Malformed),
        };
        let (src, dst, len) = (f.sender, f.peer, datagram.len() as u64);
        let Some(sender) = self.members.get_mut(&src) else {
            return Decision::Refuse(Refusal::NotMember);
        };
        if sender.endpoint != Some(from) {
            return Decision::Refuse(Refusal::WrongEndpoint);
        }
        if !sender.packets.has(now, 1) {
            return Decision::Refuse(Refusal::PacketLimit);
        }
        if !sender.bytes.has(now, len) {
            return Decision::Refuse(Refusal::ByteLimit);
        }
        sender.packets.take(1);
        sender.bytes.take(len);
        let to = match self.members.get(&dst) {
            None => return Decision::Refuse(Refusal::UnknownDestination),
            Some(Member { endpoint: None, .. }) => {
                return Decision::Refuse(Refusal::DestinationUnreachable);
            }
            Some(Member {
                endpoint: Some(to), ..
            }) => *to,
        };
        match frame::to_deliver(datagram, self.id) {
            Ok(_) => Decision::Forward {
                to,
                from_node: src,
                to_node: dst,
            },
            Err(_) => Decision::Refuse(Refusal::Malformed),
        }
    }

    /// Frames refused for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()]
    }

    /// Frames and bytes forwarded so far.
    pub fn forwarded(&self) -> (u64, u64) {
        self.forwarded
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use cladnet_common::relay::{RELAY_HDR_LEN, encode};
    use proptest::prelude::*;

    use super::*;

    const RELAY: u32 = 100;

    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, last), 8055)
    }

    /// A SEND of a `len`-byte WireGuard transport message from `src` to `dst`.
    fn send(src: u32, dst: u32, len: usize) -> Vec<u8> {
        let mut msg = vec![0x5a; len];
        msg[..4].copy_from_slice(&[4, 0, 0, 0]);
        let mut out = vec![0; RELAY_HDR_LEN + len];
        encode(RelayKind::Send, src, dst, &msg, &mut out).unwrap();
        out
    }

    fn relay(now: Instant, limits: Limits) -> Relay {
        let mut r = Relay::new(RELAY, limits);
        r.set_member(now, 1, Some(ep(1)));
        r.set_member(now, 2, Some(ep(2)));
        r.set_member(now, 3, None);
        r
    }

    #[test]
    fn forwards_between_members_and_rewrites_in_place() {
        let now = Instant::now();
        let mut r = relay(now, Limits::default());
        let mut f = send(1, 2, 64);
        let msg = f[RELAY_HDR_LEN..].to_vec();
        let d = r.handle(now, ep(1), &mut f);
        assert_eq!(
            d,
            Decision::Forward {
                to: ep(2),
                from_node: 1,
                to_node: 2
            }
        );
        let out = frame::decode(&f).unwrap();
        assert_eq!(
            (out.kind, out.sender, out.peer, out.message),
            (RelayKind::Deliver, RELAY, 1, &msg[..])
        );
        assert_eq!(r.forwarded(), (1, f.len() as u64));
    }

    #[test]
    fn refuses_with_reasons_and_counts_them() {
        let now = Instant::now();
        let mut r = relay(now, Limits::default());
        let cases: [(Vec<u8>, SocketAddrV4, Refusal); 8] = [
            (send(9, 2, 32), ep(9), Refusal::NotMember),
            (send(1, 2, 32), ep(7), Refusal::WrongEndpoint),
            (send(1, 9, 32), ep(1), Refusal::UnknownDestination),
            (send(1, RELAY, 32), ep(1), Refusal::UnknownDestination),
            (send(1, 3, 32), ep(1), Refusal::DestinationUnreachable),
            (send(RELAY, 2, 32), ep(1), Refusal::NotMember),
            (b"garbage".to_vec(), ep(1), Refusal::Malformed),
            (
                {
                    let mut f = send(1, 2, 32);
                    f[RELAY_HDR_LEN] = 0x11; // a PLAIN datagram inside
                    f
                },
                ep(1),
                Refusal::NotWireGuard,
            ),
        ];
        for (mut f, from, want) in cases {
            let before = f.clone();
            assert_eq!(
                r.handle(now, from, &mut f),
                Decision::Refuse(want),
                "{want:?}"
            );
            assert_eq!(f, before, "a refused frame is not rewritten");
        }
        let mut deliver = send(1, 2, 32);
        frame::to_deliver(&mut deliver, 50).unwrap();
        assert_eq!(
            r.handle(now, ep(1), &mut deliver),
            Decision::Refuse(Refusal::Malformed),
            "only SENDs are forwarded"
        );
        assert_eq!(r.refused(Refusal::UnknownDestination), 2);
        assert_eq!(r.refused(Refusal::NotMember), 2);
        assert_eq!(r.refused(Refusal::Malformed), 2);
        assert_eq!(r.forwarded(), (0, 0));
        // A member that left is a non-member.
        r.remove_member(1);
        assert_eq!(
            r.handle(now, ep(1), &mut send(1, 2, 32)),
            Decision::Refuse(Refusal::NotMember)
        );
    }

    #[test]
    fn limits_apply_per_member() {
        let t0 = Instant::now();
        let limits = Limits {
            packets_per_sec: 10,
            packet_burst: 3,
            bytes_per_sec: 1000,
            byte_burst: 1000,
        };
        let mut r = relay(t0, limits);
        let fwd =
            |r: &mut Relay, t, src, dst, len| r.handle(t, ep(src as u8), &mut send(src, dst, len));
        for _ in 0..3 {
            assert!(matches!(
                fwd(&mut r, t0, 1, 2, 32),
                Decision::Forward { .. }
            ));
        }
        assert_eq!(
            fwd(&mut r, t0, 1, 2, 32),
            Decision::Refuse(Refusal::PacketLimit)
        );
        // Member 2 has its own budget.
        assert!(matches!(
            fwd(&mut r, t0, 2, 1, 32),
            Decision::Forward { .. }
        ));
        // 100 ms later one packet more, but not 1000 bytes of it.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            fwd(&mut r, t1, 1, 2, 1000),
            Decision::Refuse(Refusal::ByteLimit)
        );
        assert!(matches!(
            fwd(&mut r, t1, 1, 2, 32),
            Decision::Forward { .. }
        ));
        assert_eq!(r.refused(Refusal::PacketLimit), 1);
        assert_eq!(r.refused(Refusal::ByteLimit), 1);
    }

    proptest! {
        /// Whatever arrives from wherever: a frame is forwarded only from a member's own
        /// endpoint to another member's endpoint, unchanged in length and message; every
        /// frame is counted once; and a member never gets more through than its burst plus
        /// its rate allows.
        #[test]
        fn forwarding_rules_hold(
            steps in proptest::collection::vec(
                (0u32..6, 0u32..6, 0u8..6, 32usize..200, 0u64..50_000, any::<bool>()),
                1..200,
            )
        ) {
            let t0 = Instant::now();
            let limits = Limits { packets_per_sec: 50, packet_burst: 5, bytes_per_sec: 5_000, byte_burst: 2_000 };
            let mut r = Relay::new(RELAY, limits);
            for n in 1..4 {
                r.set_member(t0, n, Some(ep(n as u8)));
            }
            r.set_member(t0, 4, None);
            let (mut now, mut total) = (t0, 0u64);
            let mut sent_by = [0u64; 6];
            for (src, dst, from, len, gap_us, garble) in steps {
                now += Duration::from_micros(gap_us);
                let mut f = send(src, dst, len);
                if garble {
                    f[1] ^= 3;
                }
                let before = f.clone();
                total += 1;
                match r.handle(now, ep(from), &mut f) {
                    Decision::Forward { to, from_node, to_node } => {
                        prop_assert!(!garble);
                        prop_assert_eq!((from_node, to_node), (src, dst));
                        prop_assert!((1..4).contains(&src) && (1..4).contains(&dst));
                        prop_assert_eq!(ep(from), ep(src as u8));
                        prop_assert_eq!(to, ep(dst as u8));
                        prop_assert_eq!(f.len(), before.len());
                        prop_assert_eq!(&f[RELAY_HDR_LEN..], &before[RELAY_HDR_LEN..]);
                        sent_by[src as usize] += 1;
                    }
                    Decision::Refuse(_) => prop_assert_eq!(&f, &before),
                }
            }
            let refused: u64 = Refusal::ALL.iter().map(|x| r.refused(*x)).sum();
            prop_assert_eq!(refused + r.forwarded().0, total);
            let elapsed = now.duration_since(t0).as_secs_f64();
            for n in sent_by {
                prop_assert!(n as f64 <= 5.0 + 50.0 * elapsed + 1e-9);
            }
        }
    }
}
