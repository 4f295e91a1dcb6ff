//! The paths of one node, sans-IO: a [`PathState`] per peer, the relays it can use, and the
//! relay it serves as (when configured to). The agent's engine observes its WireGuard
//! sessions once per tick ([`Paths::observe`]), asks per datagram for a peer that is not
//! sent directly where it goes ([`Paths::send`]), and hands relay frames over
//! ([`Paths::forward`] as a relay, [`Paths::deliver`] as a member). What to do to the
//! WireGuard peers comes back as [`PathAction`]s.
//!
//! How a relayed WireGuard session looks to WireGuard: a relayed message is handed to it as
//! if it came from a *relay address* of the sender ([`relay_addr`], in 240.0.0.0/4, which no
//! host uses), so WireGuard's own roaming points the peer at that address and every datagram
//! it then sends the peer (transport, keepalives, handshakes) is one the engine wraps into a
//! relay frame. A message authenticated on the direct path roams the peer back to a real
//! address: that is the evidence of a working direct path ([`PeerObs::rx_bytes`] growing
//! more than what was relayed, while the peer's endpoint is a real one, or after the engine
//! reported such a roam with [`Paths::direct_seen`]). The roam alone is not enough to sample:
//! while the peer still sends through the relay, its next relayed message roams WireGuard back
//! to the relay address within microseconds, so a tick would almost never see the real one.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use super::{
    Decision, Limits, Path, PathConfig, PathEvent, PathState, Refusal, Relay, Route, accept_deliver,
};

/// A WireGuard session older than this (no completed handshake) does not make a relay usable
/// (WireGuard rekeys every 120 s; after 180 s without a handshake the session is dead).
pub const SESSION_LIVE: Duration = Duration::from_secs(180);

/// A relayed message other than a keepalive is answered with a keepalive when nothing went back
/// to its sender through a relay this long after it arrived: every message that expects an
/// answer gets one, so a relay that stops forwarding is noticed in
/// [`PathConfig::relay_silence`] even on a one-way stream.
const ECHO_AFTER: Duration = Duration::from_millis(250);

/// Length of a WireGuard keepalive (an empty transport message): it expects no answer, so
/// sending one through a relay does not start the silence clock, and receiving one is not
/// echoed (two idle peers would otherwise keep each other busy).
pub const KEEPALIVE_LEN: usize = 32;

const RELAY_NET: u32 = 0xF000_0000;

/// Direct probes one coordinated attempt sends ([`Paths::coordinate`]).
pub const BURST_PROBES: usize = 4;
/// Time between them (at most one per [`Paths::observe`]: with the engine's 250 ms tick, the
/// burst spans about a second).
pub const BURST_GAP: Duration = Duration::from_millis(250);
/// After its last probe, an attempt waits this long for the answer before its outcome.
pub const BURST_ANSWER: Duration = Duration::from_secs(1);

/// The relay address of `node`: 240.0.0.0/4 holds the high bits of its index, the port the
/// low 16. Never a real host (the block is reserved), so a datagram WireGuard sends there is
/// one to relay.
pub fn relay_addr(node: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(RELAY_NET | (node >> 16));
    SocketAddr::V4(SocketAddrV4::new(ip, node as u16))
}

/// The node a relay address stands for; `None` for every real address.
pub fn relay_node(addr: SocketAddr) -> Option<u32> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let ip = u32::from(*v4.ip());
    (ip & 0xFFFF_0000 == RELAY_NET).then(|| ((ip & 0xFFFF) << 16) | u32::from(v4.port()))
}

/// What the engine sees of one SEALED peer's WireGuard session, once per tick.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PeerObs {
    /// The peer's node index.
    pub node: u32,
    /// Its endpoint from the controller (the direct path to try).
    pub configured: Option<SocketAddrV4>,
    /// WireGuard's current endpoint for it: `None` when unknown or a relay address.
    pub endpoint: Option<SocketAddrV4>,
    /// Bytes of authenticated WireGuard messages received from it (all paths).
    pub rx_bytes: u64,
    /// Time since the last completed handshake.
    pub handshake_age: Option<Duration>,
}

impl PeerObs {
    fn live(&self) -> Option<SocketAddrV4> {
        self.endpoint
            .filter(|_| self.handshake_age.is_some_and(|a| a < SESSION_LIVE))
    }
}

/// What the engine must do to a WireGuard peer.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PathAction {
    /// Point the peer at its relay address (it is relayed now).
    UseRelay {
        /// The peer.
        node: u32,
    },
    /// Point the peer at this direct endpoint (its path is direct, but WireGuard still sends
    /// it to the relay address because the peer's last message came relayed).
    UseDirect {
        /// The peer.
        node: u32,
        /// Its endpoint.
        endpoint: SocketAddrV4,
    },
    /// Send the peer a keepalive now (an answer through the relay, or the start of a relayed
    /// session).
    Keepalive {
        /// The peer.
        node: u32,
    },
    /// Send the peer a keepalive now: [`Paths::send`] sends it to the direct endpoint as well.
    Probe {
        /// The peer.
        node: u32,
    },
    /// A coordinated attempt ([`Paths::coordinate`]) ended (for logs and metrics).
    Coordinated {
        /// The peer.
        node: u32,
        /// How it ended.
        outcome: Outcome,
    },
    /// The path changed (for logs and metrics).
    Changed {
        /// The peer.
        node: u32,
        /// How.
        event: PathEvent,
    },
}

/// How a coordinated attempt ended.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// The path was direct already at the start time: no probes sent.
    AlreadyDirect,
    /// Probes sent; the path is direct now.
    Direct,
    /// Probes sent; the path is still this.
    Not(Path),
}

/// A coordinated attempt under way.
#[derive(Debug)]
struct Burst {
    /// When the next probe is due.
    next: Instant,
    /// Where the probes go, in turn (the known direct endpoint first).
    endpoints: Vec<SocketAddrV4>,
    /// Probes sent so far.
    sent: usize,
}

/// Where one datagram for a peer addressed to its relay address goes.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Out {
    /// In a relay frame to relay `via` at `to`.
    Relay {
        /// The relay's node index.
        via: u32,
        /// Its endpoint.
        to: SocketAddrV4,
    },
    /// Straight to the peer (no relay to use).
    Direct(SocketAddrV4),
    /// Both through the relay and straight to the peer (a direct probe: a keepalive whose
    /// direct copy, if it arrives first, is the evidence of a direct path; WireGuard drops
    /// whichever copy comes second as a replay).
    Both {
        /// The relay's node index.
        via: u32,
        /// Its endpoint.
        to: SocketAddrV4,
        /// The peer's direct endpoint.
        direct: SocketAddrV4,
    },
    /// Nowhere (no relay and no direct endpoint).
    Drop,
}

#[derive(Debug)]
struct PeerPath {
    state: PathState,
    /// Direct endpoint to probe: WireGuard's last real one, else the configured one.
    direct: Option<SocketAddrV4>,
    /// The configured endpoint last seen (a new one replaces `direct`).
    configured: Option<SocketAddrV4>,
    /// Cumulative bytes delivered to WireGuard through relays.
    relayed_rx: u64,
    /// The highest `rx_bytes - relayed_rx` seen: growth above it came on the direct path.
    direct_mark: i128,
    /// The next keepalive goes direct as well (a probe).
    probe: bool,
    /// WireGuard roamed the peer to a real address since the last tick ([`Paths::direct_seen`]).
    direct_seen: bool,
    /// Where the next probe's direct copy goes, when not `direct` (a coordinated attempt).
    probe_to: Option<SocketAddrV4>,
    /// A coordinated attempt pending or under way.
    burst: Option<Burst>,
    last_relayed_tx: Option<Instant>,
    /// A relayed message that expects an answer arrived then (cleared once one went back).
    echo_due: Option<Instant>,
}

/// The paths of one node (see the module docs).
#[derive(Debug)]
pub struct Paths {
    me: u32,
    cfg: PathConfig,
    relay_capable: BTreeSet<u32>,
    /// Relays usable now (a live session with each), by node index.
    relays: HashMap<u32, SocketAddrV4>,
    peers: HashMap<u32, PeerPath>,
    serving: Option<Relay>,
    actions: VecDeque<PathAction>,
    refused_deliveries: [u64; Refusal::ALL.len()],
    /// Coordinated attempts that sent probes, and those after which the path was direct.
    coordinated: (u64, u64),
}

impl Paths {
    /// No peers yet; serves as a relay for its network with `limits` when given.
    pub fn new(cfg: PathConfig, me: u32, serve: Option<Limits>) -> Self {
        Self {
            me,
            cfg,
            relay_capable: BTreeSet::new(),
            relays: HashMap::new(),
            peers: HashMap::new(),
            serving: serve.map(|l| Relay::new(me, l)),
            actions: VecDeque::new(),
            refused_deliveries: [0; Refusal::ALL.len()],
            coordinated: (0, 0),
        }
    }

    /// This node's index.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// The peers that offer to relay (from their records).
    pub fn set_relay_capable(&mut self, nodes: impl IntoIterator<Item = u32>) {
        self.relay_capable = nodes.into_iter().collect();
    }

    /// Starts serving as a relay with `limits` (a fresh relay: no members until the next
    /// [`Paths::observe`], zero counters), or stops (`None`). Serving already, new limits
    /// are ignored until it stops.
    pub fn set_serving(&mut self, limits: Option<Limits>) {
        match (limits, &self.serving) {
            (None, _) => self.serving = None,
            (Some(l), None) => self.serving = Some(Relay::new(self.me, l)),
            (Some(_), Some(_)) => {}
        }
    }

    /// Whether this node serves as a relay.
    pub fn serving(&self) -> Option<&Relay> {
        self.serving.as_ref()
    }

    /// One tick: what the engine sees of every SEALED peer now.
    pub fn observe(&mut self, now: Instant, peers: &[PeerObs]) {
        if let Some(relay) = &mut self.serving {
            for p in peers {
                relay.set_member(now, p.node, p.live());
            }
            relay.retain_members(|n| peers.iter().any(|p| p.node == n));
        }
        self.relays = peers
            .iter()
            .filter(|p| self.relay_capable.contains(&p.node))
            .filter_map(|p| Some((p.node, p.live()?)))
            .collect();
        let mut usable: Vec<u32> = self.relays.keys().copied().collect();
        usable.sort_unstable();
        self.peers.retain(|n, _| peers.iter().any(|p| p.node == *n));
        for obs in peers {
            let p = self.peers.entry(obs.node).or_insert_with(|| PeerPath {
                state: PathState::new(now, self.cfg),
                direct: None,
                configured: None,
                relayed_rx: 0,
                direct_mark: 0,
                probe: false,
                direct_seen: false,
                probe_to: None,
                burst: None,
                last_relayed_tx: None,
                echo_due: None,
            });
            let node = obs.node;
            if obs.configured != p.configured {
                p.configured = obs.configured;
                p.direct = obs.configured;
            }
            if let Some(ep) = obs.endpoint {
                p.direct = Some(ep);
            }
            let est = i128::from(obs.rx_bytes) - i128::from(p.relayed_rx);
            // A new WireGuard peer (key change) restarts its counters.
            if obs.rx_bytes == 0 {
                p.relayed_rx = 0;
                p.direct_mark = 0;
            }
            let seen = std::mem::take(&mut p.direct_seen);
            let direct = (obs.endpoint.is_some() || seen) && est > p.direct_mark;
            p.direct_mark = p.direct_mark.max(est);
            if direct {
                p.state.direct_confirmed(now);
            } else if p.state.path() == Path::Direct && obs.live().is_some() {
                // A live session on a real endpoint keeps a direct path (an idle peer sends
                // only WireGuard's keepalives, and its rekeys run on this path).
                p.state.direct_rx(now);
            }
            if let Some(at) = p.echo_due {
                if p.last_relayed_tx.is_some_and(|tx| tx >= at) {
                    p.echo_due = None;
                } else if now >= at + ECHO_AFTER {
                    p.echo_due = None;
                    self.actions.push_back(PathAction::Keepalive { node });
                }
            }
            let candidates: Vec<u32> = usable.iter().copied().filter(|r| *r != node).collect();
            p.state.set_relays(now, &candidates);
            p.state.handle_timeout(now);
            let relayed = matches!(p.state.path(), Path::Relayed { .. });
            if p.state.poll_direct_probe(now) && relayed {
                p.probe = true;
                self.actions.push_back(PathAction::Probe { node });
            }
            match burst_step(now, p, relayed) {
                Step::Idle => {}
                Step::Probe { first } => {
                    if first {
                        self.coordinated.0 += 1;
                    }
                    self.actions.push_back(PathAction::Probe { node });
                }
                Step::Done(outcome) => {
                    if outcome == Outcome::Direct {
                        self.coordinated.1 += 1;
                    }
                    self.actions
                        .push_back(PathAction::Coordinated { node, outcome });
                }
            }
            while let Some(event) = p.state.poll_event() {
                if matches!(event.to, Path::Relayed { .. }) {
                    // Start the relayed session now rather than at WireGuard's next retry.
                    self.actions.push_back(PathAction::Keepalive { node });
                }
                self.actions.push_back(PathAction::Changed { node, event });
            }
            match p.state.route() {
                Route::Via(_) if obs.endpoint.is_some() && !direct => {
                    self.actions.push_back(PathAction::UseRelay { node });
                }
                Route::Direct if p.state.path() == Path::Direct && obs.endpoint.is_none() => {
                    if let Some(endpoint) = p.direct.or(obs.configured) {
                        self.actions
                            .push_back(PathAction::UseDirect { node, endpoint });
                    }
                }
                _ => {}
            }
        }
    }

    /// WireGuard roamed `node` to the real address `endpoint`: an authenticated message came
    /// from it directly. Remembered until the next [`Paths::observe`], which counts it as direct
    /// evidence (if the bytes say so) even when a relayed message has roamed the peer back to
    /// its relay address in between; `endpoint` becomes the direct endpoint to use.
    pub fn direct_seen(&mut self, node: u32, endpoint: SocketAddrV4) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.direct = Some(endpoint);
            p.direct_seen = true;
        }
    }

    /// Where a datagram of `len` bytes WireGuard addressed to `node`'s relay address goes.
    pub fn send(&mut self, now: Instant, node: u32, len: usize) -> Out {
        let Some(p) = self.peers.get_mut(&node) else {
            return Out::Drop;
        };
        match p.state.route() {
            Route::Via(via) => match self.relays.get(&via) {
                Some(to) => {
                    if len != KEEPALIVE_LEN {
                        p.state.relayed_tx(now);
                    }
                    p.last_relayed_tx = Some(now);
                    let probe = len == KEEPALIVE_LEN && std::mem::take(&mut p.probe);
                    let probe_to = if probe { p.probe_to.take() } else { None };
                    match probe_to.or(p.direct) {
                        Some(direct) if probe => Out::Both {
                            via,
                            to: *to,
                            direct,
                        },
                        _ => Out::Relay { via, to: *to },
                    }
                }
                None => Out::Drop,
            },
            Route::Direct => p.direct.map_or(Out::Drop, Out::Direct),
        }
    }

    /// As a relay: what to do with a frame from `from` (rewritten in place when forwarded).
    /// Without serving, every frame is refused as from a non-member.
    pub fn forward(&mut self, now: Instant, from: SocketAddrV4, frame: &mut [u8]) -> Decision {
        match &mut self.serving {
            Some(relay) => relay.handle(now, from, frame),
            None => Decision::Refuse(Refusal::NotMember),
        }
    }

    /// As a member: a `DELIVER` from `from`. On success, the sender's node index and the
    /// WireGuard message's offset in `frame` (hand it to WireGuard from the sender's
    /// [`relay_addr`]).
    pub fn deliver(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        frame: &[u8],
    ) -> Result<(u32, usize), Refusal> {
        let relays = &self.relays;
        let d = accept_deliver(frame, from, |id| relays.get(&id).copied())
            .inspect_err(|r| self.refused_deliveries[r.index()] += 1)?;
        let (node, via, len) = (d.from_node, d.via, d.message.len());
        let Some(p) = self.peers.get_mut(&node) else {
            self.refused_deliveries[Refusal::NotMember.index()] += 1;
            return Err(Refusal::NotMember);
        };
        p.relayed_rx += len as u64;
        p.state.relayed_rx(now, via);
        if len != KEEPALIVE_LEN && p.echo_due.is_none() {
            p.echo_due = Some(now);
        }
        Ok((node, frame.len() - len))
    }

    /// WireGuard refused a relayed message [`Paths::deliver`] accepted (a replay: the direct
    /// copy of a probe came first): it does not count as relayed.
    pub fn unrelayed(&mut self, node: u32, len: usize) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.relayed_rx = p.relayed_rx.saturating_sub(len as u64);
        }
    }

    /// A coordinated attempt with `node` (the controller told both sides): from `at` on, a
    /// burst of [`BURST_PROBES`] direct probes [`BURST_GAP`] apart, to the known direct
    /// endpoint and to `endpoints` (public ones; a private address the peer's known endpoint
    /// is not may be another site's, even this host's own) in turn (while relayed: a probe's
    /// direct copy; otherwise
    /// WireGuard sends to its endpoint itself), then a [`PathAction::Coordinated`] with the
    /// outcome [`BURST_ANSWER`] after the last one. An answer upgrades the path exactly as
    /// the periodic probes' do. Replaces an attempt under way; `false` for an unknown peer.
    pub fn coordinate(&mut self, node: u32, at: Instant, endpoints: &[SocketAddrV4]) -> bool {
        let Some(p) = self.peers.get_mut(&node) else {
            return false;
        };
        let mut list: Vec<SocketAddrV4> = p.direct.into_iter().collect();
        for e in endpoints {
            // A private address the node does not use already is another site's: it may be
            // this host's own address, or a stranger's.
            if !e.ip().is_private() && !list.contains(e) {
                list.push(*e);
            }
        }
        p.burst = Some(Burst {
            next: at,
            endpoints: list,
            sent: 0,
        });
        true
    }

    /// Coordinated attempts that sent probes, and those after which the path was direct.
    pub fn coordinated(&self) -> (u64, u64) {
        self.coordinated
    }

    /// The next action for the engine.
    pub fn poll_action(&mut self) -> Option<PathAction> {
        self.actions.pop_front()
    }

    /// Every peer's path, by node index.
    pub fn paths(&self) -> impl Iterator<Item = (u32, Path)> + '_ {
        self.peers.iter().map(|(n, p)| (*n, p.state.path()))
    }

    /// Deliveries refused, by reason (as [`Refusal::ALL`]).
    pub fn refused_deliveries(&self) -> [u64; Refusal::ALL.len()] {
        self.refused_deliveries
    }
}

/// What a coordinated attempt does at one tick.
enum Step {
    Idle,
    Probe { first: bool },
    Done(Outcome),
}

fn burst_step(now: Instant, p: &mut PeerPath, relayed: bool) -> Step {
    let Some(b) = &mut p.burst else {
        return Step::Idle;
    };
    if now < b.next {
        return Step::Idle;
    }
    let path = p.state.path();
    if b.sent == 0 && path == Path::Direct {
        p.burst = None;
        return Step::Done(Outcome::AlreadyDirect);
    }
    if b.sent == BURST_PROBES {
        p.burst = None;
        return Step::Done(if path == Path::Direct {
            Outcome::Direct
        } else {
            Outcome::Not(path)
        });
    }
    let to = match b.endpoints.len() {
        0 => None,
        n => Some(b.endpoints[b.sent % n]),
    };
    b.sent += 1;
    b.next = now
        + if b.sent == BURST_PROBES {
            BURST_ANSWER
        } else {
            BURST_GAP
        };
    p.probe = true;
    p.probe_to = to.filter(|_| relayed);
    Step::Probe { first: b.sent == 1 }
}

#[cfg(test)]
mod tests;
