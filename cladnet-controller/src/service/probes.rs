//! Coordinated probes: when both agents of a pair report a non-direct path to each other, the
//! controller tells both to probe the other directly at the same instant.
//!
//! Two agents behind NATs that keep one mapping per local port (or stateful firewalls) can
//! often reach each other only when each has sent a datagram towards the other first: each
//! side's outgoing probe opens the way for the other's. The agents' own probes run on their
//! own schedules (every 2 s while relayed), so they rarely line up; the controller, which sees
//! both sides' paths in their statistics reports, lines them up: it sends each a
//! `ProbeRequest` naming the other, the endpoints it knows for the other, and one start time
//! [`PROBE_LEAD`] ahead on its own clock.
//!
//! A pair qualifies when both sides' last reports say `relay` or `unreachable` towards the
//! other, or `connecting` for at least [`CONNECTING_GRACE`]; it is told at most once per
//! [`PROBE_INTERVAL`] (per controller: in an HA group, each controller rate-limits the reports
//! it receives). The state is bounded: one entry per reported non-direct path and per pair
//! told in the last interval, per network; a path a node stops reporting (its peer went away,
//! or the node stopped reporting for [`FORGET_AFTER`]) is forgotten, and so is a network with
//! none left.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A pair is told to probe at most this often (the agents probe every 2 s on their own while
/// relayed; a coordinated attempt is for what those cannot do alone, and once per 30 s keeps
/// its cost, two store writes per stuck pair, small).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// A `connecting` path counts as not connecting after this long (a fresh peer is connecting
/// for a moment before its first handshake).
pub const CONNECTING_GRACE: Duration = Duration::from_secs(5);
/// How far ahead of sending the start time is (time for both agents to receive it).
pub const PROBE_LEAD: Duration = Duration::from_millis(500);
/// A path not reported again for this long is forgotten (agents report every 10 s).
pub const FORGET_AFTER: Duration = Duration::from_secs(35);

#[derive(Debug)]
struct Seen {
    /// Not yet connecting for long enough: `connecting` rather than `relay`/`unreachable`.
    connecting: bool,
    /// When this path was first reported non-direct (of its kind).
    since: Instant,
    /// When it was last reported.
    seen: Instant,
}

#[derive(Debug, Default)]
struct Pairs {
    /// Non-direct paths, (node, peer) → what was seen.
    paths: HashMap<(String, String), Seen>,
    /// Pairs told (ordered node ids) → when.
    sent: HashMap<(String, String), Instant>,
}

/// The coordination state of every network (see the module docs).
#[derive(Debug, Default)]
pub struct Coordinator {
    nets: HashMap<String, Pairs>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Coordinator {
    /// `node` reported `path` towards `peer` in network `net`.
    pub fn observe(&mut self, now: Instant, net: &str, node: &str, peer: &str, path: &str) {
        let key = (node.to_owned(), peer.to_owned());
        let connecting = match path {
            "relay" | "unreachable" => false,
            "connecting" => true,
            _ => {
                if let Some(p) = self.nets.get_mut(net) {
                    p.paths.remove(&key);
                }
                return;
            }
        };
        let pairs = self.nets.entry(net.to_owned()).or_default();
        let seen = pairs.paths.entry(key).or_insert(Seen {
            connecting,
            since: now,
            seen: now,
        });
        if seen.connecting != connecting {
            seen.connecting = connecting;
            seen.since = now;
        }
        seen.seen = now;
    }

    /// Forgets `node`'s paths towards peers its report no longer lists.
    pub fn retain_reported(&mut self, net: &str, node: &str, peers: &[&str]) {
        if let Some(p) = self.nets.get_mut(net) {
            p.paths
                .retain(|(n, peer), _| n != node || peers.contains(&peer.as_str()));
        }
    }

    /// Whether `node`'s path to `peer` is not connecting (relay, unreachable, or connecting
    /// for [`CONNECTING_GRACE`]).
    pub fn stuck(&self, now: Instant, net: &str, node: &str, peer: &str) -> bool {
        self.nets
            .get(net)
            .and_then(|p| p.paths.get(&(node.to_owned(), peer.to_owned())))
            .is_some_and(|s| !s.connecting || now.duration_since(s.since) >= CONNECTING_GRACE)
    }

    /// Whether the pair `a`–`b` is to be told now: both sides stuck, and not told in the last
    /// [`PROBE_INTERVAL`]. When it is, it counts as told.
    pub fn due(&mut self, now: Instant, net: &str, a: &str, b: &str) -> bool {
        if a == b || !self.stuck(now, net, a, b) || !self.stuck(now, net, b, a) {
            return false;
        }
        let Some(pairs) = self.nets.get_mut(net) else {
            return false;
        };
        let key = pair(a, b);
        if pairs
            .sent
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < PROBE_INTERVAL)
        {
            return false;
        }
        pairs.sent.insert(key, now);
        true
    }

    /// Forgets paths not reported for [`FORGET_AFTER`], pairs told more than
    /// [`PROBE_INTERVAL`] ago, and networks with nothing left.
    pub fn prune(&mut self, now: Instant) {
        self.nets.retain(|_, p| {
            p.paths
                .retain(|_, s| now.duration_since(s.seen) < FORGET_AFTER);
            p.sent
                .retain(|_, t| now.duration_since(*t) < PROBE_INTERVAL);
            !p.paths.is_empty() || !p.sent.is_empty()
        });
    }

    /// Entries held (paths and pairs), for tests and bounds.
    pub fn entries(&self) -> usize {
        self.nets
            .values()
            .map(|p| p.paths.len() + p.sent.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_stuck_are_told_once_per_interval() {
        let t0 = Instant::now();
        let mut c = Coordinator::default();
        c.observe(t0, "n", "a", "b", "relay");
        // One side only: nobody is told.
        assert!(!c.due(t0, "n", "a", "b"));
        c.observe(t0, "n", "b", "a", "unreachable");
        assert!(c.due(t0, "n", "a", "b"));
        // Once per interval, whichever side reports.
        assert!(!c.due(t0 + Duration::from_secs(10), "n", "b", "a"));
        assert!(!c.due(t0 + Duration::from_secs(29), "n", "a", "b"));
        let later = t0 + PROBE_INTERVAL;
        c.observe(later, "n", "a", "b", "relay");
        c.observe(later, "n", "b", "a", "relay");
        assert!(c.due(later, "n", "b", "a"));
        // Another network is its own.
        c.observe(t0, "m", "a", "b", "relay");
        c.observe(t0, "m", "b", "a", "relay");
        assert!(c.due(t0, "m", "a", "b"));
    }

    #[test]
    fn direct_and_fresh_connecting_paths_do_not_qualify() {
        let t0 = Instant::now();
        let mut c = Coordinator::default();
        c.observe(t0, "n", "a", "b", "relay");
        c.observe(t0, "n", "b", "a", "direct");
        assert!(!c.due(t0, "n", "a", "b"));
        c.observe(t0, "n", "b", "a", "connecting");
        assert!(!c.due(t0 + Duration::from_secs(4), "n", "a", "b"));
        assert!(c.due(t0 + CONNECTING_GRACE, "n", "a", "b"));
        // A path that went direct is forgotten at once.
        c.observe(t0, "n", "a", "b", "direct");
        assert!(!c.stuck(t0, "n", "a", "b"));
        assert!(!c.due(t0 + 2 * PROBE_INTERVAL, "n", "a", "b"));
        // Unknown (older agents) counts as direct.
        c.observe(t0, "n", "a", "c", "");
        assert!(!c.stuck(t0, "n", "a", "c"));
    }

    #[test]
    fn state_is_pruned_when_peers_go_away() {
        let t0 = Instant::now();
        let mut c = Coordinator::default();
        for peer in ["b", "c", "d"] {
            c.observe(t0, "n", "a", peer, "relay");
            c.observe(t0, "n", peer, "a", "relay");
        }
        assert!(c.due(t0, "n", "a", "b"));
        assert_eq!(c.entries(), 7);
        // a's report no longer lists c and d (deleted peers).
        c.retain_reported("n", "a", &["b"]);
        assert!(!c.stuck(t0, "n", "a", "c"));
        assert_eq!(c.entries(), 5);
        // Nobody reports any more: everything goes, the network too.
        c.prune(t0 + FORGET_AFTER);
        assert_eq!(c.entries(), 0);
        assert!(c.nets.is_empty());
    }
}
