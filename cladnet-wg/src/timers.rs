//! The per-peer timers of the WireGuard whitepaper (section 6), kept as deadlines that the
//! caller's event loop services through `update_timers` / `poll_timeout`.
//!
//! The hooks below are named after the events that arm or disarm the timers, as in the Linux
//! kernel's timers.c, and follow its rules:
//!
//! | timer | armed | disarmed | on expiry |
//! |---|---|---|---|
//! | retransmit handshake | initiation sent (`REKEY_TIMEOUT` + jitter) | handshake complete | resend, or give up after `MAX_TIMER_HANDSHAKES` |
//! | send keepalive | data received, if not armed (`KEEPALIVE_TIMEOUT`) | any packet sent | send an empty packet |
//! | new handshake | data sent, if not armed (`KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` + jitter) | any packet received | initiate a handshake |
//! | zero key material | session derived (`3 * REJECT_AFTER_TIME`) | — | erase all keys |
//! | persistent keepalive | any packet sent or received (interval) | — | send an empty packet |

use std::time::{Duration, Instant};

use crate::constants::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT};

/// Deadlines and counters of one peer's timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pub(crate) retransmit_handshake: Option<Instant>,
    pub(crate) send_keepalive: Option<Instant>,
    pub(crate) new_handshake: Option<Instant>,
    pub(crate) zero_key_material: Option<Instant>,
    pub(crate) persistent_keepalive: Option<Instant>,
    /// Data arrived while the keepalive timer was already armed.
    pub(crate) need_another_keepalive: bool,
    /// Retransmissions of the current handshake so far.
    pub(crate) handshake_attempts: u32,
    /// The initiator already asked for a handshake because its keypair nears `REJECT_AFTER_TIME`.
    pub(crate) sent_lastminute_handshake: bool,
    /// Persistent keepalive interval, if configured.
    pub(crate) persistent_interval: Option<Duration>,
}

impl Timers {
    pub(crate) fn new(persistent_interval: Option<Duration>) -> Self {
        Self {
            persistent_interval: persistent_interval.filter(|d| !d.is_zero()),
            ..Self::default()
        }
    }

    /// Any authenticated packet (handshake, data or keepalive) was sent.
    pub(crate) fn packet_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// Any authenticated packet was received.
    pub(crate) fn packet_received(&mut self) {
        self.new_handshake = None;
    }

    /// Any authenticated packet went either way.
    pub(crate) fn packet_traversal(&mut self, now: Instant) {
        if let Some(interval) = self.persistent_interval {
            self.persistent_keepalive = Some(now + interval);
        }
    }

    /// A non-empty data packet was sent: expect to hear back.
    pub(crate) fn data_sent(&mut self, now: Instant, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    /// A non-empty data packet was received: answer with a keepalive if we stay silent.
    pub(crate) fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// An initiation was sent.
    pub(crate) fn handshake_initiated(&mut self, now: Instant, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// A handshake completed (response consumed, or first packet on a responder's keypair).
    pub(crate) fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// New transport keys were derived.
    pub(crate) fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
    }

    /// The earliest armed deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Takes a deadline that has passed, disarming it.
pub(crate) fn expired(deadline: &mut Option<Instant>, now: Instant) -> bool {
    if deadline.is_some_and(|at| at <= now) {
        *deadline = None;
        true
    } else {
        false
    }
}
