//! This node's public endpoint: reflector probes and keepalive answers, the report of a new
//! endpoint, and re-opening every peer path when it (or the host's clock) moves.

use std::{net::SocketAddrV4, time::Duration};

use tracing::{debug, info, warn};

use super::Agent;
use crate::engine::userspace::Reflection;

/// A wall clock running ahead of the monotonic clock by more than this between two
/// keepalives means the host was suspended (or its clock jumped): NAT mappings may be gone.
const RESUME_GAP: Duration = Duration::from_secs(2);

impl Agent {
    /// Asks the reflector which endpoint it sees now (a few probes, waiting for the answer).
    pub(super) async fn probe(&mut self) {
        match self
            .engine
            .probe(self.reflector, 2, Duration::from_millis(700))
            .await
        {
            Ok(seen) => {
                self.last_reflection = Some(std::time::Instant::now());
                self.set_public(seen).await;
            }
            Err(error) => debug!(%error, "probe failed"),
        }
        self.test_relay_reachability().await;
    }

    /// `relay = "auto"`: asks the reflector to answer from another port, feeds the result to
    /// the rule ([`cladnet_core::relay::AutoRelay`]) and, when the decision changes, starts
    /// or stops serving as a relay and reports the capability.
    async fn test_relay_reachability(&mut self) {
        if self.auto_relay.is_none() {
            return;
        }
        let open = match self
            .engine
            .probe_other_port(self.reflector, Duration::from_millis(700))
            .await
        {
            Ok(open) => open,
            Err(error) => {
                debug!(%error, "relay reachability test failed");
                false
            }
        };
        let Some(serve) = self.auto_relay.as_mut().and_then(|a| a.observe(open)) else {
            return;
        };
        let relay = self.dp.router.relay();
        if serve {
            info!(
                "relay = auto: this endpoint takes datagrams from anywhere (the reflector's \
                 other-port answer arrives): serving as a relay"
            );
            relay.set_serving(Some(self.cfg.relay_limits));
        } else {
            warn!(
                "relay = auto: the reflector's other-port answers stopped arriving (NAT or \
                 firewall changed): no longer serving as a relay"
            );
            relay.set_serving(None);
        }
        let facts = self.facts.to_proto(&self.capabilities());
        let mut r = self
            .session
            .take_pending()
            .unwrap_or_else(|| self.session.report(|_| {}));
        r.facts = Some(facts);
        self.session.set_pending(r);
        self.session.flush_report().await;
    }

    /// A keepalive answer: only the newest probe's answer counts (a late answer to an older
    /// probe may carry the endpoint from before a move).
    pub(super) async fn on_reflection(&mut self, r: Reflection) {
        if self.last_reflection.is_some_and(|last| r.sent < last) {
            return;
        }
        self.last_reflection = Some(r.sent);
        self.set_public(r.seen).await;
    }

    /// The reflector saw us as `seen`: if that is new, report it at once and punch every peer.
    async fn set_public(&mut self, seen: SocketAddrV4) {
        if Some(seen) == self.public {
            return;
        }
        info!(old = ?self.public, new = %seen, "public endpoint changed");
        self.public = Some(seen);
        self.update_info(|i| i.public_endpoint = seen.to_string());
        let mut r = self
            .session
            .take_pending()
            .unwrap_or_else(|| self.session.report(|_| {}));
        r.public_endpoint = seen.to_string();
        self.session.set_pending(r);
        // Our NAT mappings changed: open new ones towards every peer before they learn the
        // new endpoint from the controller.
        if let Err(error) = self.punch().await {
            warn!(error = %format!("{error:#}"), "re-opening peer paths failed");
        }
        self.session.flush_report().await;
        if self.session.has_pending() {
            // The control connection went through the old mapping too: the first call finds
            // it reset, and the channel connects again for the second.
            self.session.flush_report().await;
        }
    }
}

/// The monotonic clock stops while the host is suspended; the wall clock does not.
pub(super) struct Clocks {
    mono: std::time::Instant,
    wall: std::time::SystemTime,
}

impl Clocks {
    pub(super) fn now() -> Self {
        Self {
            mono: std::time::Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    /// Whether the wall clock ran ahead of the monotonic one by [`RESUME_GAP`] since the last
    /// call (a resume from suspend, or a clock step).
    pub(super) fn resumed(&mut self) -> bool {
        let now = Self::now();
        let mono = now.mono.saturating_duration_since(self.mono);
        let wall = now.wall.duration_since(self.wall).unwrap_or_default();
        *self = now;
        wall.saturating_sub(mono) > RESUME_GAP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_ahead_of_the_monotonic_one_is_a_resume() {
        let mut clocks = Clocks::now();
        assert!(!clocks.resumed(), "no time passed");
        // As after 10 s of suspend: the wall clock moved on, the monotonic one did not.
        clocks.wall -= Duration::from_secs(10);
        assert!(clocks.resumed());
        assert!(!clocks.resumed(), "reported once");
        // A wall clock stepped back is no resume.
        clocks.wall += Duration::from_secs(3600);
        assert!(!clocks.resumed());
    }
}
