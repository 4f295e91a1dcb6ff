//! Relayed paths, the IO side: the userspace engine's hooks around the sans-IO
//! [`Paths`](cladnet_core::relay::Paths).
//!
//! - Sending: WireGuard sends a relayed peer's datagrams to the peer's relay address
//!   ([`relay_addr`]); [`RelayIo::outgoing`] wraps them into a relay `SEND` to the relay (or
//!   lets one through to the peer's direct endpoint as a probe).
//! - Receiving: [`RelayIo::incoming`] forwards `SEND`s when this node serves as a relay, and
//!   unwraps `DELIVER`s into the WireGuard message, handed to WireGuard as from the sender's
//!   relay address (never its direct endpoint: a relayed packet does not move it).
//! - Once per [`TICK`], [`RelayIo::tick`] observes the WireGuard sessions (the Node's) and
//!   applies the path decisions to them (which address WireGuard sends a peer to,
//!   keepalives).
//!
//! The relay sees only WireGuard messages: the session is end to end between the two peers.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use cladnet_common::{
    relay::{self as frame, RelayKind},
    wire::{CladHeader, CladType},
};
use cladnet_core::{
    node::Node,
    relay::{
        Decision, Limits, Out, Outcome, Path, PathAction, PathConfig, Paths, Refusal, relay_addr,
        relay_node,
    },
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::router::Router;

/// The capability an agent that serves as a relay reports (and peers look for in records).
pub const CAPABILITY: &str = "relay";

/// How often the paths look at the WireGuard sessions.
pub const TICK: Duration = Duration::from_millis(250);

/// What to do with a datagram received on the tunnel port.
#[derive(Debug, Eq, PartialEq)]
pub enum Incoming {
    /// Not a relay frame: the usual processing.
    NotRelay,
    /// Serving as a relay: send the frame now in the buffer to `to`.
    Forward(SocketAddr),
    /// A relayed WireGuard message, at `offset` in the buffer, to hand to WireGuard as from
    /// `from` (the sender's relay address).
    Deliver {
        /// The sender's relay address.
        from: SocketAddr,
        /// Where the message starts in the buffer.
        offset: usize,
    },
    /// Refused (and counted).
    Dropped,
}

/// One peer's path as status and metrics show it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PathStatus {
    /// Node id.
    pub node_id: String,
    /// `connecting`, `direct`, `relay` or `unreachable`.
    pub path: String,
    /// The relay's node id while relayed.
    pub via: Option<String>,
}

/// What this node did as a relay, and the deliveries it refused as a member.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RelayCounters {
    /// Whether this node serves as a relay for its network.
    pub serving: bool,
    /// The per-member limits it applies while serving.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Frames and bytes forwarded.
    pub forwarded: (u64, u64),
    /// Frames refused as a relay, by reason.
    pub refused: Vec<(String, u64)>,
    /// `DELIVER`s refused as a member, by reason.
    pub refused_deliveries: Vec<(String, u64)>,
    /// Coordinated attempts (the controller told this node and a peer to probe each other)
    /// that sent probes.
    #[serde(default)]
    pub coordinated_probes: u64,
    /// Those after which the path was direct.
    #[serde(default)]
    pub coordinated_direct: u64,
}

/// A start time further ahead than this on the agent's clock is taken as clock skew: the
/// attempt starts this far ahead instead.
pub const MAX_LEAD: Duration = Duration::from_secs(5);
/// A start time further in the past than this is a stale request (replayed when a Watch
/// resumes): ignored. One less old than this starts at once.
pub const STALE: Duration = Duration::from_secs(10);

/// The instant on this agent's monotonic clock of `start_at_ms` (Unix milliseconds, the
/// controller's clock), when this agent's wall clock reads `now_ms` at `now`: at once when
/// already past (by less than [`STALE`]), at most [`MAX_LEAD`] ahead, `None` when stale.
pub fn start_instant(now: Instant, now_ms: i64, start_at_ms: i64) -> Option<Instant> {
    let ahead = start_at_ms.saturating_sub(now_ms);
    if ahead < 0 {
        return (ahead.unsigned_abs() <= STALE.as_millis() as u64).then_some(now);
    }
    Some(now + Duration::from_millis(ahead as u64).min(MAX_LEAD))
}

#[derive(Debug, Default)]
struct State {
    paths: Option<Paths>,
    serve: Option<Limits>,
    /// Relay-capable peers from their records: node id → node index.
    capable: HashMap<String, u32>,
    last_tick: Option<Instant>,
}

/// The relay hooks of one userspace engine.
#[derive(Debug, Default)]
pub struct RelayIo {
    state: Mutex<State>,
}

/// Whether `datagram` is a relay frame (CLAD type 6), without decoding it.
pub fn is_relay_frame(datagram: &[u8]) -> bool {
    CladHeader::decode(datagram).is_ok_and(|h| h.ty() == Some(CladType::Relay))
}

impl RelayIo {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve as a relay for this node's network (`relay = true`), with per-member `limits`.
    /// Call before the first [`RelayIo::tick`] (the relay is built then).
    pub fn serve(&self, limits: Limits) {
        self.lock().serve = Some(limits);
    }

    /// Starts serving with `limits` (`Some`) or stops (`None`) while the agent runs
    /// (`relay = "auto"`); a fresh relay starts with zero counters.
    pub fn set_serving(&self, limits: Option<Limits>) {
        let mut s = self.lock();
        s.serve = limits;
        if let Some(p) = &mut s.paths {
            p.set_serving(limits);
        }
    }

    /// Whether this node serves as a relay.
    pub fn serving(&self) -> bool {
        self.lock().serve.is_some()
    }

    /// A peer's record: whether it offers to relay.
    pub fn set_capable(&self, node_id: &str, node_index: u32, capable: bool) {
        let mut s = self.lock();
        if capable {
            s.capable.insert(node_id.to_owned(), node_index);
        } else {
            s.capable.remove(node_id);
        }
        let nodes: Vec<u32> = s.capable.values().copied().collect();
        if let Some(p) = &mut s.paths {
            p.set_relay_capable(nodes);
        }
    }

    /// Where a datagram WireGuard sends to `to` really goes: `to` itself unless it is a relay
    /// address; then a `SEND` frame (written into `buf`) to the relay, and for a direct probe
    /// the datagram itself to the peer's direct endpoint as well (`send` gets each).
    pub fn outgoing(
        &self,
        now: Instant,
        datagram: &[u8],
        to: SocketAddr,
        buf: &mut Vec<u8>,
        mut send: impl FnMut(&[u8], SocketAddr),
    ) {
        let Some(node) = relay_node(to) else {
            return send(datagram, to);
        };
        let mut s = self.lock();
        let Some(paths) = s.paths.as_mut() else {
            return;
        };
        let out = paths.send(now, node, datagram.len());
        let me = paths.me();
        drop(s);
        let (relay, direct) = match out {
            Out::Relay { to, .. } => (Some(to), None),
            Out::Both { to, direct, .. } => (Some(to), Some(direct)),
            Out::Direct(ep) => (None, Some(ep)),
            Out::Drop => (None, None),
        };
        if let Some(direct) = direct {
            send(datagram, SocketAddr::V4(direct));
        }
        if let Some(relay) = relay {
            buf.resize(frame::RELAY_HDR_LEN + datagram.len(), 0);
            if let Some(f) = frame::encode(RelayKind::Send, me, node, datagram, buf) {
                send(f, SocketAddr::V4(relay));
            }
        }
    }

    /// WireGuard roamed node `node` to `endpoint` (ignored unless a real address): see
    /// [`Paths::direct_seen`].
    pub fn direct_seen(&self, node: u32, endpoint: SocketAddr) {
        if let Some(endpoint) = real(Some(endpoint))
            && let Some(paths) = self.lock().paths.as_mut()
        {
            paths.direct_seen(node, endpoint);
        }
    }

    /// WireGuard refused a relayed message from `from` (a relay address) of `len` bytes.
    pub fn refused_by_wireguard(&self, from: SocketAddr, len: usize) {
        if let Some(node) = relay_node(from)
            && let Some(paths) = self.lock().paths.as_mut()
        {
            paths.unrelayed(node, len);
        }
    }

    /// A datagram from `from`: relay frames are copied into `buf` and handled here.
    pub fn incoming(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Incoming {
        if !is_relay_frame(datagram) {
            return Incoming::NotRelay;
        }
        let SocketAddr::V4(from) = from else {
            return Incoming::Dropped;
        };
        buf.clear();
        buf.extend_from_slice(datagram);
        let mut s = self.lock();
        let Some(paths) = s.paths.as_mut() else {
            return Incoming::Dropped;
        };
        match frame::decode(buf).map(|f| f.kind) {
            Ok(RelayKind::Deliver) => match paths.deliver(now, from, buf) {
                Ok((node, offset)) => Incoming::Deliver {
                    from: relay_addr(node),
                    offset,
                },
                Err(reason) => {
                    debug!(%from, reason = reason.as_str(), "relayed message refused");
                    Incoming::Dropped
                }
            },
            _ => match paths.forward(now, from, buf) {
                Decision::Forward { to, .. } => Incoming::Forward(SocketAddr::V4(to)),
                Decision::Refuse(reason) => {
                    debug!(%from, reason = reason.as_str(), "relay frame refused");
                    Incoming::Dropped
                }
            },
        }
    }

    /// The controller told this node and peer `node_id` to probe each other directly from
    /// `at` (see [`Paths::coordinate`]), at its known direct endpoint and `endpoints`.
    /// `false` when the peer has no SEALED path here (unknown, PLAIN, or no tick yet).
    pub fn coordinate(
        &self,
        router: &Router,
        node_id: &str,
        at: Instant,
        endpoints: &[SocketAddrV4],
    ) -> bool {
        let Some(node) = router.node_index(node_id) else {
            return false;
        };
        self.lock()
            .paths
            .as_mut()
            .is_some_and(|p| p.coordinate(node, at, endpoints))
    }

    /// Observes the Node's WireGuard sessions and applies the path decisions to them (at
    /// most once per [`TICK`]; call it often). The Node reports every endpoint move as an
    /// event (a relayed path is not probed for its MTU; a direct one is searched again).
    pub fn tick(&self, now: Instant, node: &mut Node) {
        let me = node.forwarding().local_index();
        let mut s = self.lock();
        if me == 0 || s.last_tick.is_some_and(|t| now < t + TICK) {
            return;
        }
        s.last_tick = Some(now);
        let capable: Vec<u32> = s.capable.values().copied().collect();
        let serve = s.serve;
        let paths = s.paths.get_or_insert_with(|| {
            let mut p = Paths::new(PathConfig::default(), me, serve);
            p.set_relay_capable(capable);
            p
        });
        paths.observe(now, &node.relay_observations(now));
        let actions: Vec<PathAction> = std::iter::from_fn(|| paths.poll_action()).collect();
        drop(s);
        for action in actions {
            match action {
                PathAction::UseRelay { node: index } => {
                    node.set_sealed_endpoint(now, index, relay_addr(index));
                }
                PathAction::UseDirect {
                    node: index,
                    endpoint,
                } => {
                    node.set_sealed_endpoint(now, index, SocketAddr::V4(endpoint));
                }
                PathAction::Keepalive { node: index } | PathAction::Probe { node: index } => {
                    node.request_keepalive(index);
                }
                PathAction::Coordinated {
                    node: index,
                    outcome,
                } => {
                    let node_id = node_id_or_index(node, index);
                    let outcome = match outcome {
                        Outcome::AlreadyDirect => "already direct (no probes sent)".to_owned(),
                        Outcome::Direct => "direct".to_owned(),
                        Outcome::Not(path) => format!("still {}", describe(path)),
                    };
                    info!(node_id, outcome, "coordinated probe");
                }
                PathAction::Changed { node: index, event } => {
                    let node_id = node_id_or_index(node, index);
                    let (from, to) = (describe(event.from), describe(event.to));
                    let via = match event.to {
                        Path::Relayed { via } => Some(node_id_or_index(node, via)),
                        _ => None,
                    };
                    let reason = format!("{:?}", event.reason);
                    if event.to == Path::Unreachable {
                        warn!(
                            node_id,
                            from, reason, "path: unreachable (no direct path, no relay)"
                        );
                    } else {
                        info!(node_id, from, to, via, reason, "path changed");
                    }
                }
            }
        }
    }

    /// Every peer's path, sorted by node id.
    pub fn paths(&self, router: &Router) -> Vec<PathStatus> {
        let s = self.lock();
        let Some(paths) = &s.paths else {
            return vec![];
        };
        let mut out: Vec<PathStatus> = paths
            .paths()
            .filter_map(|(node, path)| {
                Some(PathStatus {
                    node_id: router.node_id(node)?,
                    path: describe(path).to_owned(),
                    via: via_id(router, path),
                })
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// The relay counters.
    pub fn counters(&self) -> RelayCounters {
        let s = self.lock();
        let mut c = RelayCounters {
            serving: s.serve.is_some(),
            limits: s.serve,
            ..RelayCounters::default()
        };
        if let Some(paths) = &s.paths {
            if let Some(relay) = paths.serving() {
                c.forwarded = relay.forwarded();
                c.refused = Refusal::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), relay.refused(*r)))
                    .collect();
            }
            (c.coordinated_probes, c.coordinated_direct) = paths.coordinated();
            let d = paths.refused_deliveries();
            c.refused_deliveries = Refusal::ALL
                .iter()
                .zip(d)
                .map(|(r, n)| (r.as_str().to_owned(), n))
                .collect();
        }
        c
    }
}

/// The metric/status name of a path.
pub fn describe(path: Path) -> &'static str {
    match path {
        Path::Connecting => "connecting",
        Path::Direct => "direct",
        Path::Relayed { .. } => "relay",
        Path::Unreachable => "unreachable",
    }
}

fn node_id_or_index(node: &Node, index: u32) -> String {
    node.forwarding()
        .peers()
        .find(|p| p.node_index == index)
        .map_or_else(|| format!("node {index}"), |p| p.node_id.clone())
}

fn via_id(router: &Router, path: Path) -> Option<String> {
    match path {
        Path::Relayed { via } => router.node_id(via),
        _ => None,
    }
}

/// A real address WireGuard may be told about (not a relay address).
pub fn real(addr: Option<SocketAddr>) -> Option<SocketAddrV4> {
    match addr {
        Some(SocketAddr::V4(v4)) if relay_node(addr?).is_none() => Some(v4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_time_converts_to_this_agents_clock() {
        let now = Instant::now();
        let wall = 1_000_000;
        // Ahead: that much later.
        assert_eq!(
            start_instant(now, wall, wall + 500),
            Some(now + Duration::from_millis(500))
        );
        // Past (the request was slow): at once.
        assert_eq!(start_instant(now, wall, wall - 2_000), Some(now));
        assert_eq!(start_instant(now, wall, wall), Some(now));
        // Far ahead (clock skew): at most MAX_LEAD.
        assert_eq!(
            start_instant(now, wall, wall + 60_000),
            Some(now + MAX_LEAD)
        );
        // Stale (a replay): ignored.
        let stale = wall - STALE.as_millis() as i64 - 1;
        assert_eq!(start_instant(now, wall, stale), None);
        assert_eq!(start_instant(now, wall, i64::MIN), None);
        assert_eq!(start_instant(now, i64::MIN, i64::MAX), Some(now + MAX_LEAD));
    }
}
