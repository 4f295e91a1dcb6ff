//! The path to one peer: direct first; through a relay when no direct handshake completes in
//! time; back to direct as soon as a direct round trip works; to another relay when the one in
//! use goes away or falls silent.
//!
//! The Node feeds it what it sees (round trips and packets on the direct path, packets through
//! relays, the relays it has a live direct link to) and asks it where to send ([`PathState::
//! route`]), whether to try the direct path now ([`PathState::poll_direct_probe`]), when to
//! wake it ([`PathState::poll_timeout`]) and what changed ([`PathState::poll_event`]).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Timing of path selection.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PathConfig {
    /// How long a new pair tries direct only before it uses a relay.
    pub direct_timeout: Duration,
    /// How often the direct path is tried (a WireGuard handshake or probe sent directly) while
    /// it is not confirmed, relayed or not.
    pub probe_interval: Duration,
    /// A direct path with nothing received on it for this long is lost (above WireGuard's
    /// 25 s persistent keepalive).
    pub direct_stale: Duration,
    /// A relay we sent through without an answer through it for this long is failed for this
    /// pair (and skipped for [`PathConfig::failed_hold`]).
    pub relay_silence: Duration,
    /// How long a failed relay is skipped.
    pub failed_hold: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            direct_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(2),
            direct_stale: Duration::from_secs(40),
            relay_silence: Duration::from_secs(3),
            failed_hold: Duration::from_secs(30),
        }
    }
}

/// Where a pair's traffic goes.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Path {
    /// Trying the direct path; nothing confirmed yet.
    Connecting,
    /// Direct: a round trip on the direct path worked.
    Direct,
    /// Through relay node `via`.
    Relayed {
        /// The relay's node id.
        via: u32,
    },
    /// Direct did not work and no relay is available (still trying direct).
    Unreachable,
}

/// Where to send the next packet to the peer.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Route {
    /// To the peer's endpoint.
    Direct,
    /// In a relay frame to relay node `via`.
    Via(u32),
}

/// Why the path changed (for logs and metrics).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PathReason {
    /// A round trip on the direct path worked (also: upgraded from a relay).
    DirectConfirmed,
    /// No direct round trip within [`PathConfig::direct_timeout`].
    DirectTimedOut,
    /// Nothing received directly for [`PathConfig::direct_stale`].
    DirectLost,
    /// The relay in use left the candidates (its direct link died, or it stopped relaying).
    RelayGone,
    /// The relay in use did not answer for [`PathConfig::relay_silence`].
    RelaySilent,
    /// The peer's packets come through a relay we prefer (both sides converge on one).
    PeerRelay,
    /// A relay became available for a pair that had none.
    RelayAvailable,
}

/// A change of path.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PathEvent {
    /// Before.
    pub from: Path,
    /// After.
    pub to: Path,
    /// Why.
    pub reason: PathReason,
}

/// The path state of one pair.
#[derive(Debug)]
pub struct PathState {
    cfg: PathConfig,
    path: Path,
    started: Instant,
    last_direct_rx: Option<Instant>,
    /// First packet sent through the current relay that is not yet answered through it.
    unanswered_since: Option<Instant>,
    candidates: Vec<u32>,
    failed: Vec<(u32, Instant)>,
    next_probe: Instant,
    events: VecDeque<PathEvent>,
}

impl PathState {
    /// A new pair at `now`, trying direct.
    pub fn new(now: Instant, cfg: PathConfig) -> Self {
        Self {
            cfg,
            path: Path::Connecting,
            started: now,
            last_direct_rx: None,
            unanswered_since: None,
            candidates: vec![],
            failed: vec![],
            next_probe: now,
            events: VecDeque::new(),
        }
    }

    /// The current path.
    pub fn path(&self) -> Path {
        self.path
    }

    /// Where to send now: through the relay while relayed, else direct (also while trying).
    pub fn route(&self) -> Route {
        match self.path {
            Path::Relayed { via } => Route::Via(via),
            _ => Route::Direct,
        }
    }

    /// The relays this node can use now (it has a live direct link to each), best first.
    pub fn set_relays(&mut self, now: Instant, relays: &[u32]) {
        self.candidates = relays.to_vec();
        match self.path {
            Path::Relayed { via } if !self.candidates.contains(&via) => {
                self.fail_over(now, PathReason::RelayGone);
            }
            Path::Unreachable => {
                if let Some(via) = self.best_relay(now) {
                    self.set(Path::Relayed { via }, PathReason::RelayAvailable);
                }
            }
            _ => {}
        }
    }

    /// A round trip on the direct path completed (a WireGuard handshake, or a probe answered,
    /// both ways directly): the direct path works; use it.
    pub fn direct_confirmed(&mut self, now: Instant) {
        self.last_direct_rx = Some(now);
        if self.path != Path::Direct {
            self.unanswered_since = None;
            self.set(Path::Direct, PathReason::DirectConfirmed);
        }
    }

    /// An authenticated packet from the peer arrived on the direct path (keeps it alive).
    pub fn direct_rx(&mut self, now: Instant) {
        self.last_direct_rx = Some(now);
    }

    /// An authenticated packet from the peer arrived through relay `via`.
    pub fn relayed_rx(&mut self, now: Instant, via: u32) {
        let usable = self.candidates.contains(&via) && !self.is_failed(now, via);
        match self.path {
            Path::Relayed { via: cur } if cur == via => self.unanswered_since = None,
            // Both sides converge on the lower relay id of their two choices, or on the peer's
            // when ours did not answer lately (it may be gone; the peer's works).
            Path::Relayed { via: cur }
                if usable && (via < cur || self.unanswered_since.is_some()) =>
            {
                self.unanswered_since = None;
                self.set(Path::Relayed { via }, PathReason::PeerRelay);
            }
            Path::Connecting | Path::Unreachable if usable => {
                self.set(Path::Relayed { via }, PathReason::PeerRelay);
            }
            _ => {}
        }
    }

    /// A packet was sent to the peer through the current relay.
    pub fn relayed_tx(&mut self, now: Instant) {
        if matches!(self.path, Path::Relayed { .. }) && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
    }

    /// Whether to try the direct path now (send a handshake or probe directly); true at most
    /// once per [`PathConfig::probe_interval`] while the direct path is not confirmed.
    pub fn poll_direct_probe(&mut self, now: Instant) -> bool {
        if self.path == Path::Direct || now < self.next_probe {
            return false;
        }
        self.next_probe = now + self.cfg.probe_interval;
        true
    }

    /// Applies the timeouts due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.failed.retain(|(_, until)| *until > now);
        match self.path {
            Path::Connecting if now >= self.started + self.cfg.direct_timeout => {
                self.fail_over(now, PathReason::DirectTimedOut);
            }
            Path::Direct
                if self
                    .last_direct_rx
                    .is_none_or(|t| now >= t + self.cfg.direct_stale) =>
            {
                self.next_probe = now;
                self.fail_over(now, PathReason::DirectLost);
            }
            Path::Relayed { via }
                if self
                    .unanswered_since
                    .is_some_and(|t| now >= t + self.cfg.relay_silence) =>
            {
                self.failed.push((via, now + self.cfg.failed_hold));
                self.fail_over(now, PathReason::RelaySilent);
            }
            _ => {}
        }
    }

    /// When [`PathState::handle_timeout`] (or a direct probe) is next due.
    pub fn poll_timeout(&self) -> Instant {
        let due = match self.path {
            Path::Connecting => Some(self.started + self.cfg.direct_timeout),
            Path::Direct => self.last_direct_rx.map(|t| t + self.cfg.direct_stale),
            Path::Relayed { .. } => self.unanswered_since.map(|t| t + self.cfg.relay_silence),
            Path::Unreachable => None,
        };
        let probe = (self.path != Path::Direct).then_some(self.next_probe);
        let hold = self.failed.iter().map(|(_, t)| *t).min();
        [due, probe, hold]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.started + self.cfg.direct_stale)
    }

    /// The next change of path, oldest first.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn is_failed(&self, now: Instant, relay: u32) -> bool {
        self.failed
            .iter()
            .any(|(r, until)| *r == relay && *until > now)
    }

    fn best_relay(&self, now: Instant) -> Option<u32> {
        self.candidates
            .iter()
            .copied()
            .find(|r| !self.is_failed(now, *r))
    }

    fn fail_over(&mut self, now: Instant, reason: PathReason) {
        self.unanswered_since = None;
        let next = match self.best_relay(now) {
            Some(via) => Path::Relayed { via },
            None => Path::Unreachable,
        };
        self.set(next, reason);
    }

    fn set(&mut self, to: Path, reason: PathReason) {
        if to != self.path {
            self.events.push_back(PathEvent {
                from: self.path,
                to,
                reason,
            });
            self.path = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn state(t0: Instant, relays: &[u32]) -> PathState {
        let mut p = PathState::new(t0, PathConfig::default());
        p.set_relays(t0, relays);
        p
    }

    #[test]
    fn direct_first_then_relay_after_the_timeout() {
        let t0 = Instant::now();
        let mut p = state(t0, &[7, 9]);
        assert_eq!((p.path(), p.route()), (Path::Connecting, Route::Direct));
        assert!(p.poll_direct_probe(t0));
        assert!(!p.poll_direct_probe(t0 + S), "one probe per interval");
        assert_eq!(p.poll_timeout(), t0 + 2 * S);
        p.handle_timeout(t0 + 4 * S);
        assert_eq!(p.path(), Path::Connecting);
        p.handle_timeout(t0 + 5 * S);
        assert_eq!(p.route(), Route::Via(7));
        assert_eq!(
            p.poll_event(),
            Some(PathEvent {
                from: Path::Connecting,
                to: Path::Relayed { via: 7 },
                reason: PathReason::DirectTimedOut
            })
        );
    }

    #[test]
    fn direct_within_the_timeout_never_relays() {
        let t0 = Instant::now();
        let mut p = state(t0, &[7]);
        p.direct_confirmed(t0 + S);
        p.handle_timeout(t0 + 10 * S);
        assert_eq!(p.path(), Path::Direct);
        assert!(!p.poll_direct_probe(t0 + 10 * S));
    }

    #[test]
    fn relayed_pair_keeps_probing_and_upgrades() {
        let t0 = Instant::now();
        let mut p = state(t0, &[7]);
        p.handle_timeout(t0 + 5 * S);
        assert_eq!(p.route(), Route::Via(7));
        let probes = (5..15).filter(|s| p.poll_direct_probe(t0 + *s * S)).count();
        assert_eq!(probes, 5, "a direct try every 2 s while relayed");
        p.direct_rx(t0 + 15 * S);
        assert_eq!(
            p.route(),
            Route::Via(7),
            "one packet in is not a round trip"
        );
        p.direct_confirmed(t0 + 16 * S);
        assert_eq!(p.route(), Route::Direct);
        let e: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
        assert_eq!(e.last().unwrap().reason, PathReason::DirectConfirmed);
    }

    #[test]
    fn fails_over_when_the_relay_goes_or_falls_silent() {
        let t0 = Instant::now();
        let mut p = state(t0, &[7, 8, 9]);
        p.handle_timeout(t0 + 5 * S);
        assert_eq!(p.route(), Route::Via(7));
        p.set_relays(t0 + 6 * S, &[8, 9]);
        assert_eq!(p.route(), Route::Via(8), "relay 7 left");
        // Sent through 8, no answer through it for 3 s.
        p.relayed_tx(t0 + 7 * S);
        p.relayed_rx(t0 + 8 * S, 8);
        p.relayed_tx(t0 + 9 * S);
        p.handle_timeout(t0 + 11 * S);
        assert_eq!(
            p.route(),
            Route::Via(8),
            "answered at 8 s; silent only since 9 s"
        );
        assert!(p.poll_direct_probe(t0 + 11 * S));
        assert_eq!(
            p.poll_timeout(),
            t0 + 12 * S,
            "the silence deadline, before the next probe"
        );
        p.handle_timeout(t0 + 12 * S);
        assert_eq!(p.route(), Route::Via(9));
        // 8 is skipped while it is held failed, even if the peer uses it.
        p.relayed_rx(t0 + 13 * S, 8);
        assert_eq!(p.route(), Route::Via(9));
        p.set_relays(t0 + 14 * S, &[]);
        assert_eq!(p.path(), Path::Unreachable);
        p.set_relays(t0 + 15 * S, &[9]);
        assert_eq!(p.route(), Route::Via(9));
    }

    #[test]
    fn sides_converge_on_the_lower_relay() {
        let t0 = Instant::now();
        let mut p = state(t0, &[5, 9]);
        p.set_relays(t0, &[9, 5]);
        p.handle_timeout(t0 + 5 * S);
        assert_eq!(p.route(), Route::Via(9));
        p.relayed_rx(t0 + 6 * S, 5);
        assert_eq!(p.route(), Route::Via(5));
        p.relayed_rx(t0 + 7 * S, 9);
        assert_eq!(p.route(), Route::Via(5), "never back up to a higher id");
    }

    #[test]
    fn lost_direct_path_moves_to_a_relay() {
        let t0 = Instant::now();
        let mut p = state(t0, &[3]);
        p.direct_confirmed(t0);
        p.direct_rx(t0 + 20 * S);
        p.handle_timeout(t0 + 59 * S);
        assert_eq!(p.path(), Path::Direct);
        p.handle_timeout(t0 + 60 * S);
        assert_eq!(p.route(), Route::Via(3));
        assert!(
            p.poll_direct_probe(t0 + 60 * S),
            "and tries direct again at once"
        );
    }

    #[derive(Clone, Debug)]
    enum Input {
        Relays(Vec<u32>),
        Confirmed,
        DirectRx,
        RelayedRx(u32),
        RelayedTx,
        Timeout,
        Probe,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            proptest::collection::vec(0u32..5, 0..4).prop_map(Input::Relays),
            Just(Input::Confirmed),
            Just(Input::DirectRx),
            (0u32..5).prop_map(Input::RelayedRx),
            Just(Input::RelayedTx),
            Just(Input::Timeout),
            Just(Input::Probe),
        ]
    }

    proptest! {
        /// Whatever happens, in any order: a relayed pair uses a relay it may use (a current
        /// candidate, not held failed); a pair confirmed direct stays direct while it hears
        /// from the direct path; a pair never relays before the direct timeout unless the
        /// peer relays to it; every change is reported once.
        #[test]
        fn path_invariants(steps in proptest::collection::vec((input(), 0u64..4000), 1..120)) {
            let t0 = Instant::now();
            let cfg = PathConfig::default();
            let mut p = PathState::new(t0, cfg);
            let (mut now, mut relays, mut last_path, mut peer_relayed) =
                (t0, vec![], Path::Connecting, false);
            let mut direct_since: Option<Instant> = None;
            for (i, gap_ms) in steps {
                now += Duration::from_millis(gap_ms);
                match i {
                    Input::Relays(r) => { relays = r.clone(); p.set_relays(now, &r); }
                    Input::Confirmed => { p.direct_confirmed(now); direct_since = Some(now); }
                    Input::DirectRx => {
                        p.direct_rx(now);
                        if direct_since.is_some() { direct_since = Some(now); }
                    }
                    Input::RelayedRx(via) => { p.relayed_rx(now, via); peer_relayed = true; }
                    Input::RelayedTx => p.relayed_tx(now),
                    Input::Timeout => p.handle_timeout(now),
                    Input::Probe => { p.poll_direct_probe(now); }
                }
                if let Path::Relayed { via } = p.path() {
                    prop_assert!(relays.contains(&via), "{via} not among {relays:?}");
                    prop_assert!(!p.is_failed(now, via));
                    prop_assert!(peer_relayed || now >= t0 + cfg.direct_timeout
                        || direct_since.is_some());
                }
                if let Some(t) = direct_since {
                    if now < t + cfg.direct_stale {
                        prop_assert_eq!(p.path(), Path::Direct);
                    } else if p.path() != Path::Direct {
                        direct_since = None;
                    }
                }
                while let Some(e) = p.poll_event() {
                    prop_assert_eq!(e.from, last_path);
                    prop_assert_ne!(e.from, e.to);
                    last_path = e.to;
                }
                prop_assert_eq!(p.path(), last_path);
            }
        }
    }
}
