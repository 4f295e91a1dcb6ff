//! Packetization-layer path MTU discovery for one peer, in the manner of RFC 8899 (DPLPMTUD),
//! sans IO: the caller passes the time in, sends the probes this asks for (padded datagrams
//! with DF set, see `cladnet_common::pmtu`), and reports the acknowledgements and any ICMP
//! hint; [`PathMtu::mtu`] is the largest IPv4 packet the path to the peer is known to carry.
//!
//! States (RFC 8899 §5.2): **Base** confirms that [`BASE_PLPMTU`] gets through; **Searching**
//! probes the ceiling (the first-hop MTU, or a lower ICMP hint) first, then binary-searches
//! between the largest size confirmed and the smallest size lost ([`MAX_SEARCH_PROBES`]
//! consecutive losses of one size); **SearchComplete** re-confirms
//! the current size every [`Timing::confirm_busy`] while traffic flows ([`Timing::confirm_idle`]
//! otherwise) and treats [`MAX_PROBES`] consecutive losses as a black hole (back to Base,
//! then a new search), and searches again above the current size every
//! [`Timing::raise_interval`]; **Error** means not even the base size gets through (probed
//! again every [`Timing::confirm_idle`]).
//!
//! ICMP "fragmentation needed" (or any other report of the path's MTU) is only a hint: it
//! lowers the search ceiling and makes the hinted size the one to confirm, but only an
//! acknowledged probe confirms a size.

use std::time::{Duration, Instant};

/// The size every IPv4 path of an overlay is assumed to carry (IPv6's minimum MTU; RFC 8899
/// `BASE_PLPMTU`).
pub const BASE_PLPMTU: u32 = 1280;

/// Consecutive losses of the size in use after which the path is taken as a black hole
/// (confirmation): the link falls back to the base size at once.
pub const MAX_PROBES: u32 = 2;

/// Consecutive losses of one probe size after which a search (other than the very first)
/// takes that size as too big. One more than [`MAX_PROBES`] (RFC 8899's default of 3): the
/// link keeps a working size while it searches, so a slower verdict costs nothing, while a
/// size wrongly found too big (its probes lost to congestion under a saturating stream) costs
/// the link that size until the next periodic raise, 15 s later.
pub const MAX_SEARCH_PROBES: u32 = 3;

/// Intervals of the search.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Timing {
    /// Shortest wait for an acknowledgement.
    pub probe_timeout_min: Duration,
    /// Longest wait for an acknowledgement (and the wait before a round-trip time is known).
    pub probe_timeout_max: Duration,
    /// Confirmation of the current size while the peer carries traffic.
    pub confirm_busy: Duration,
    /// Confirmation of the current size while the link is idle (and re-probing in Error).
    pub confirm_idle: Duration,
    /// A new search above the current size, when it is below the first-hop MTU.
    pub raise_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            probe_timeout_min: Duration::from_millis(150),
            probe_timeout_max: Duration::from_millis(1000),
            confirm_busy: Duration::from_millis(300),
            confirm_idle: Duration::from_secs(10),
            raise_interval: Duration::from_secs(15),
        }
    }
}

/// The search state (RFC 8899 §5.2).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum State {
    /// Confirming that [`BASE_PLPMTU`] gets through.
    Base,
    /// Looking for the largest size that gets through.
    Searching,
    /// The size is known; confirmed periodically.
    SearchComplete,
    /// Not even the base size gets through.
    Error,
}

impl State {
    /// Lower-case name (status, logs).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Searching => "searching",
            Self::SearchComplete => "search_complete",
            Self::Error => "error",
        }
    }
}

/// A probe to send now: an IPv4 packet of `size` bytes (UDP payload `size - 28`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Probe {
    /// IPv4 packet size probed.
    pub size: u32,
    /// Nonce to put in it.
    pub nonce: u64,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    size: u32,
    nonce: u64,
    sent: Instant,
    deadline: Instant,
}

/// Path MTU discovery towards one peer.
#[derive(Clone, Debug)]
pub struct PathMtu {
    timing: Timing,
    /// First-hop MTU: nothing larger is probed.
    max: u32,
    state: State,
    /// The size in use.
    plpmtu: u32,
    /// Largest size confirmed in this search.
    lo: u32,
    /// Largest size that may still get through in this search (sizes above it were lost or
    /// are above the ceiling).
    hi: u32,
    /// The next search probe goes to `hi` (first step of a search) rather than the middle.
    try_hi: bool,
    outstanding: Option<Outstanding>,
    /// Consecutive losses of the size being probed.
    losses: u32,
    /// Last acknowledgement of the size in use (or when SearchComplete was entered).
    confirmed_at: Instant,
    /// Last time a search above the current size started.
    raised_at: Instant,
    /// Not before this instant is the next probe sent (Error backoff).
    hold_until: Instant,
    srtt: Option<Duration>,
    /// A search completed once. Until then a size lost once counts as too big: the link runs
    /// at the optimistic first-hop size meanwhile, so a quick first answer matters more than
    /// one probe lost to congestion (the periodic raise corrects a size found too low).
    completed: bool,
}

impl PathMtu {
    /// A new search towards a peer whose first hop carries `max` bytes; the first probe is due
    /// at once. `max` below [`BASE_PLPMTU`] is raised to it.
    pub fn new(now: Instant, max: u32, timing: Timing) -> Self {
        let max = max.max(BASE_PLPMTU);
        Self {
            timing,
            max,
            state: State::Base,
            plpmtu: BASE_PLPMTU,
            lo: BASE_PLPMTU,
            hi: max,
            try_hi: true,
            outstanding: None,
            losses: 0,
            confirmed_at: now,
            raised_at: now,
            hold_until: now,
            srtt: None,
            completed: false,
        }
    }

    /// The largest IPv4 packet the path is known to carry (the base size until a search found
    /// more).
    pub fn mtu(&self) -> u32 {
        self.plpmtu
    }

    /// The search state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The first-hop MTU the search is bounded by.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Smoothed round-trip time of the acknowledgements.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    fn probe_timeout(&self) -> Duration {
        match self.srtt {
            Some(rtt) => {
                (rtt * 4).clamp(self.timing.probe_timeout_min, self.timing.probe_timeout_max)
            }
            None => self.timing.probe_timeout_max,
        }
    }

    /// When [`PathMtu::poll`] next has something to do (a probe timing out or due), assuming
    /// the link stays `busy` or idle.
    pub fn poll_timeout(&self, busy: bool) -> Instant {
        if let Some(o) = self.outstanding {
            return o.deadline;
        }
        self.next_probe_at(busy).max(self.hold_until)
    }

    fn next_probe_at(&self, busy: bool) -> Instant {
        match self.state {
            State::Base | State::Searching => self.hold_until,
            State::Error => self.hold_until,
            State::SearchComplete => {
                let confirm = self.confirmed_at
                    + if busy {
                        self.timing.confirm_busy
                    } else {
                        self.timing.confirm_idle
                    };
                if self.plpmtu < self.max {
                    confirm.min(self.raised_at + self.timing.raise_interval)
                } else {
                    confirm
                }
            }
        }
    }

    /// Handles a timed-out probe and returns the probe to send now, if one is due. `busy` says
    /// whether the peer carried traffic lately (confirmations are then more frequent, so a
    /// black hole is found within about a second); `nonce` is a fresh random value, used if a
    /// probe is sent.
    pub fn poll(&mut self, now: Instant, busy: bool, nonce: u64) -> Option<Probe> {
        if let Some(o) = self.outstanding {
            if now < o.deadline {
                return None;
            }
            self.outstanding = None;
            self.on_loss(now, o.size);
        }
        if now < self.poll_timeout(busy) {
            return None;
        }
        let size = match self.state {
            State::Base | State::Error => BASE_PLPMTU,
            State::Searching => self.search_size(),
            State::SearchComplete => {
                if self.plpmtu < self.max && now >= self.raised_at + self.timing.raise_interval {
                    // Periodic raise: the path may carry more now (and an old ICMP hint may
                    // be stale), so search up to the first-hop MTU again.
                    self.start_search(now, self.plpmtu, self.max);
                    self.search_size()
                } else {
                    self.plpmtu
                }
            }
        };
        self.outstanding = Some(Outstanding {
            size,
            nonce,
            sent: now,
            deadline: now + self.probe_timeout(),
        });
        Some(Probe { size, nonce })
    }

    fn search_size(&self) -> u32 {
        if self.try_hi {
            self.hi
        } else {
            self.lo + (self.hi - self.lo).div_ceil(2)
        }
    }

    fn start_search(&mut self, now: Instant, lo: u32, hi: u32) {
        self.state = State::Searching;
        self.lo = lo;
        self.hi = hi.max(lo);
        self.try_hi = true;
        self.losses = 0;
        self.raised_at = now;
        if self.lo == self.hi {
            self.complete(now);
        }
    }

    fn complete(&mut self, now: Instant) {
        self.completed = true;
        self.state = State::SearchComplete;
        self.plpmtu = self.lo;
        self.confirmed_at = now;
        self.losses = 0;
    }

    fn on_loss(&mut self, now: Instant, size: u32) {
        self.losses += 1;
        let first_search = !self.completed && self.state == State::Searching;
        let limit = if self.state == State::Searching {
            MAX_SEARCH_PROBES
        } else {
            MAX_PROBES
        };
        if self.losses < limit && !first_search {
            return;
        }
        self.losses = 0;
        match self.state {
            State::Base | State::Error => {
                self.state = State::Error;
                self.plpmtu = BASE_PLPMTU;
                self.hold_until = now + self.timing.confirm_idle;
            }
            State::Searching => {
                self.hi = size.saturating_sub(1).max(self.lo);
                self.try_hi = false;
                // A tentative size (from a hint) that was just lost is no longer used.
                if self.plpmtu > self.hi {
                    self.plpmtu = self.lo;
                }
                if self.lo >= self.hi {
                    self.complete(now);
                }
            }
            State::SearchComplete => {
                // The size in use stopped getting through: a black hole. Fall back to the
                // base size at once, confirm it, then search again.
                self.state = State::Base;
                self.plpmtu = BASE_PLPMTU;
                self.lo = BASE_PLPMTU;
                self.hi = self.max;
            }
        }
    }

    /// An acknowledgement of a probe with `nonce` whose `size` the peer saw. Returns whether
    /// it matched the outstanding probe.
    pub fn on_ack(&mut self, now: Instant, nonce: u64, size: u32) -> bool {
        let Some(o) = self.outstanding else {
            return false;
        };
        if o.nonce != nonce || o.size != size {
            return false;
        }
        self.outstanding = None;
        self.losses = 0;
        let rtt = now.saturating_duration_since(o.sent);
        self.srtt = Some(match self.srtt {
            Some(s) => (s * 7 + rtt) / 8,
            None => rtt,
        });
        match self.state {
            State::Base | State::Error => {
                self.plpmtu = BASE_PLPMTU;
                self.hold_until = now;
                let hi = self.hi.min(self.max);
                self.start_search(now, BASE_PLPMTU, hi);
            }
            State::Searching => {
                self.lo = o.size.max(self.lo);
                self.plpmtu = self.lo.max(self.plpmtu.min(self.hi));
                self.try_hi = false;
                if self.lo >= self.hi {
                    self.complete(now);
                }
            }
            State::SearchComplete => {
                if o.size >= self.plpmtu {
                    self.confirmed_at = now;
                }
            }
        }
        true
    }

    /// A report of the path's MTU from outside the search (ICMP "fragmentation needed", the
    /// kernel's route cache, EMSGSIZE): it lowers the ceiling and, when below the size in
    /// use, makes the hinted size the one in use until a probe confirms it or shows it too
    /// big. A hint above the size in use changes nothing (only probes raise it).
    pub fn on_hint(&mut self, now: Instant, mtu: u32) {
        let hint = mtu.clamp(BASE_PLPMTU, self.max);
        if hint >= self.plpmtu {
            if self.state == State::Searching && hint < self.hi {
                self.hi = hint.max(self.lo);
            }
            return;
        }
        self.outstanding = None;
        self.plpmtu = hint;
        self.start_search(now, BASE_PLPMTU, hint);
        // The hinted size is used at once but is not confirmed: probe it first.
        self.plpmtu = hint;
        if self.state == State::SearchComplete {
            // hint == BASE_PLPMTU: nothing to search.
            self.confirmed_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated path: probes up to `mtu` get through, acknowledged after `rtt`.
    struct Path {
        mtu: u32,
        rtt: Duration,
    }

    struct Sim {
        now: Instant,
        pm: PathMtu,
        nonce: u64,
        sent: Vec<u32>,
        pending: Option<(Instant, u64, u32)>,
        /// Probes of these sizes are lost once each (congestion), whatever the path carries.
        lose_once: Vec<u32>,
    }

    impl Sim {
        fn new(max: u32) -> Self {
            let now = Instant::now();
            Self {
                now,
                pm: PathMtu::new(now, max, Timing::default()),
                nonce: 0,
                sent: Vec::new(),
                pending: None,
                lose_once: Vec::new(),
            }
        }

        /// Runs until `until` (relative), stepping 10 ms, over `path`.
        fn run(&mut self, path: &Path, busy: bool, until: Duration) {
            let end = self.now + until;
            while self.now < end {
                if let Some((at, nonce, size)) = self.pending
                    && self.now >= at
                {
                    self.pm.on_ack(self.now, nonce, size);
                    self.pending = None;
                }
                self.nonce += 1;
                if let Some(p) = self.pm.poll(self.now, busy, self.nonce) {
                    self.sent.push(p.size);
                    let congested = self.lose_once.iter().position(|&s| s == p.size);
                    if let Some(i) = congested {
                        self.lose_once.remove(i);
                    } else if p.size <= path.mtu {
                        self.pending = Some((self.now + path.rtt, p.nonce, p.size));
                    }
                }
                self.now += Duration::from_millis(10);
            }
        }
    }

    const LAN: Duration = Duration::from_millis(1);

    #[test]
    fn full_path_is_found_in_two_round_trips() {
        let mut s = Sim::new(1500);
        assert_eq!(s.pm.state(), State::Base);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            false,
            Duration::from_millis(100),
        );
        assert_eq!(s.pm.state(), State::SearchComplete);
        assert_eq!(s.pm.mtu(), 1500);
        assert_eq!(s.sent, vec![1280, 1500]);
    }

    #[test]
    fn mid_path_hop_is_found_exactly_within_seconds() {
        let mut s = Sim::new(1500);
        s.run(
            &Path {
                mtu: 1400,
                rtt: LAN,
            },
            false,
            Duration::from_secs(3),
        );
        assert_eq!(s.pm.state(), State::SearchComplete);
        assert_eq!(s.pm.mtu(), 1400);
        // Never a size above the first hop.
        assert!(s.sent.iter().all(|&p| p <= 1500), "{:?}", s.sent);
    }

    #[test]
    fn first_search_takes_under_a_second_over_a_smaller_hop() {
        let mut s = Sim::new(1500);
        let path = Path {
            mtu: 1400,
            rtt: LAN,
        };
        let start = s.now;
        while s.pm.state() != State::SearchComplete && s.now - start < Duration::from_secs(5) {
            s.run(&path, false, Duration::from_millis(10));
        }
        assert_eq!(s.pm.mtu(), 1400);
        assert!(
            s.now - start < Duration::from_secs(1),
            "{:?}",
            s.now - start
        );
    }

    #[test]
    fn black_hole_is_detected_within_a_second_while_busy() {
        let mut s = Sim::new(1500);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            true,
            Duration::from_secs(2),
        );
        assert_eq!(s.pm.mtu(), 1500);
        // The path drops to 1400: the next confirmations are lost twice.
        let dropped = s.now;
        let path = Path {
            mtu: 1400,
            rtt: LAN,
        };
        while s.pm.mtu() > 1400 {
            s.run(&path, true, Duration::from_millis(10));
        }
        let took = s.now - dropped;
        assert!(took <= Duration::from_millis(1000), "{took:?}");
        s.run(&path, true, Duration::from_secs(3));
        assert_eq!(s.pm.mtu(), 1400);
        assert_eq!(s.pm.state(), State::SearchComplete);
    }

    /// After a black hole, the new search under a saturating stream: probes of sizes that do
    /// get through are lost twice each to congestion, and still the search finds the hop
    /// exactly (before, two losses made a size too big: 1389 instead of 1400, for 15 s).
    #[test]
    fn probes_lost_to_congestion_do_not_shrink_a_later_search() {
        let mut s = Sim::new(1500);
        let wide = Path {
            mtu: 1500,
            rtt: LAN,
        };
        s.run(&wide, true, Duration::from_secs(1));
        assert_eq!(s.pm.mtu(), 1500);
        let narrow = Path {
            mtu: 1400,
            rtt: LAN,
        };
        s.lose_once = [1400, 1400, 1390, 1390, 1399, 1399].to_vec();
        s.run(&narrow, true, Duration::from_secs(8));
        assert_eq!(s.pm.state(), State::SearchComplete);
        assert_eq!(s.pm.mtu(), 1400, "{:?}", s.sent);
        assert!(s.lose_once.is_empty(), "the congested sizes were probed");
    }

    #[test]
    fn raised_path_is_found_by_the_periodic_search() {
        let mut s = Sim::new(1500);
        s.run(
            &Path {
                mtu: 1400,
                rtt: LAN,
            },
            true,
            Duration::from_secs(3),
        );
        assert_eq!(s.pm.mtu(), 1400);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            true,
            Duration::from_secs(16),
        );
        assert_eq!(s.pm.mtu(), 1500);
    }

    #[test]
    fn idle_links_are_probed_rarely() {
        let mut s = Sim::new(1500);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            false,
            Duration::from_secs(60),
        );
        // Two to find it, then one confirmation every 10 s.
        assert!(s.sent.len() <= 8, "{:?}", s.sent);
    }

    #[test]
    fn a_dead_path_is_an_error_and_recovers() {
        let mut s = Sim::new(1500);
        s.run(&Path { mtu: 0, rtt: LAN }, false, Duration::from_secs(3));
        assert_eq!(s.pm.state(), State::Error);
        assert_eq!(s.pm.mtu(), BASE_PLPMTU);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            false,
            Duration::from_secs(12),
        );
        assert_eq!(s.pm.mtu(), 1500);
    }

    #[test]
    fn hints_lower_but_never_confirm() {
        let mut s = Sim::new(1500);
        s.run(
            &Path {
                mtu: 1500,
                rtt: LAN,
            },
            false,
            Duration::from_millis(100),
        );
        assert_eq!(s.pm.mtu(), 1500);
        // A hint of 1400: used at once, then confirmed by a probe.
        s.pm.on_hint(s.now, 1400);
        assert_eq!(s.pm.mtu(), 1400);
        assert_eq!(s.pm.state(), State::Searching);
        s.run(
            &Path {
                mtu: 1400,
                rtt: LAN,
            },
            false,
            Duration::from_millis(100),
        );
        assert_eq!((s.pm.mtu(), s.pm.state()), (1400, State::SearchComplete));
        // A hint that is a lie (the path carries less): probes find the truth.
        s.pm.on_hint(s.now, 1390);
        s.run(
            &Path {
                mtu: 1350,
                rtt: LAN,
            },
            false,
            Duration::from_secs(3),
        );
        assert_eq!(s.pm.mtu(), 1350);
        // A hint above the size in use changes nothing.
        s.pm.on_hint(s.now, 1500);
        assert_eq!(s.pm.mtu(), 1350);
    }

    #[test]
    fn foreign_acks_are_ignored() {
        let now = Instant::now();
        let mut pm = PathMtu::new(now, 1500, Timing::default());
        let p = pm.poll(now, false, 42).unwrap();
        assert!(!pm.on_ack(now, 41, p.size));
        assert!(!pm.on_ack(now, 42, p.size + 1));
        assert!(pm.on_ack(now, 42, p.size));
        assert!(!pm.on_ack(now, 42, p.size), "replayed");
    }
}
