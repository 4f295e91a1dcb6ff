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
//!
//! The three timers the packet path moves (send keepalive, new handshake, persistent
//! keepalive) are atomics in the peer's shared data side (`data.rs`, `DataTimers`); the ones
//! only handshakes move are here, the control side's alone.

use std::time::{Duration, Instant};

use crate::constants::{REJECT_AFTER_TIME, REKEY_TIMEOUT};

/// Deadlines and counters of one peer's control-side timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pub(crate) retransmit_handshake: Option<Instant>,
    pub(crate) zero_key_material: Option<Instant>,
    /// Retransmissions of the current handshake so far.
    pub(crate) handshake_attempts: u32,
}

impl Timers {
    /// An initiation was sent.
    pub(crate) fn handshake_initiated(&mut self, now: Instant, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// A handshake completed (response consumed, or first packet on a responder's keypair).
    /// The caller also clears the data side's last-minute flag.
    pub(crate) fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
    }

    /// New transport keys were derived.
    pub(crate) fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
    }

    /// The earliest armed deadline of these timers.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_handshake, self.zero_key_material]
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
