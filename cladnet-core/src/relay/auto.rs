//! `relay = "auto"`: whether a node serves as a relay, decided from what it observes of its
//! own endpoint.
//!
//! The rule: a node serves when its endpoint takes datagrams from sources it never sent to,
//! which is what makes it usable by members behind any NAT, and is what a 1:1 NAT (a cloud's
//! elastic/external IP) or a public address on the host gives, and a masquerading NAT (one
//! public address shared by a subnet, port-preserving or not) or a stateful firewall without
//! the tunnel port open does not. The agent tests it with the reflector's "answer from another
//! port" probe (`cladnet_common::reflector::FLAG_OTHER_PORT`) on every endpoint probe; this
//! type turns the answers into a decision that one lost datagram does not flip.

/// Consecutive answered tests before an `auto` node starts serving.
pub const OPEN_TO_SERVE: u32 = 2;
/// Consecutive unanswered tests before a serving `auto` node stops.
pub const CLOSED_TO_STOP: u32 = 3;

/// The `auto` decision of one node.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct AutoRelay {
    serving: bool,
    /// Consecutive results against the current decision.
    streak: u32,
}

impl AutoRelay {
    /// Not serving until the tests say so.
    pub const fn new() -> Self {
        Self {
            serving: false,
            streak: 0,
        }
    }

    /// Whether the node serves now.
    pub const fn serving(&self) -> bool {
        self.serving
    }

    /// One test's result (`open`: the answer from another port arrived). Returns the new
    /// decision when it changed.
    pub fn observe(&mut self, open: bool) -> Option<bool> {
        if open == self.serving {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if open { OPEN_TO_SERVE } else { CLOSED_TO_STOP };
        if self.streak < needed {
            return None;
        }
        self.serving = open;
        self.streak = 0;
        Some(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_after_two_answers_and_stops_after_three_misses() {
        let mut a = AutoRelay::new();
        assert!(!a.serving());
        assert_eq!(a.observe(false), None, "closed and not serving: no change");
        assert_eq!(a.observe(true), None, "one answer is not enough");
        assert_eq!(a.observe(false), None, "the streak restarts");
        assert_eq!(a.observe(true), None);
        assert_eq!(a.observe(true), Some(true));
        assert!(a.serving());
        // One or two lost answers do not stop it.
        assert_eq!(a.observe(false), None);
        assert_eq!(a.observe(false), None);
        assert_eq!(a.observe(true), None);
        assert_eq!(a.observe(false), None);
        assert_eq!(a.observe(false), None);
        assert_eq!(a.observe(false), Some(false));
        assert!(!a.serving());
    }

    #[test]
    fn a_masquerading_nat_never_serves() {
        let mut a = AutoRelay::new();
        for _ in 0..100 {
            assert_eq!(a.observe(false), None);
        }
        assert!(!a.serving());
    }
}
