//! Wall-clock time for TAI64N handshake timestamps, derived from the monotonic `now` that the
//! caller passes in (the crate never reads a clock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Maps the caller's monotonic [`Instant`]s to wall-clock time.
///
/// WireGuard initiations carry a TAI64N timestamp that the responder requires to grow from one
/// initiation to the next, including across restarts of the initiator, so it must follow the
/// real (UNIX) time. The caller anchors the clock once (`WallClock::new(now, SystemTime::now())`)
/// and may re-anchor it later, for instance after NTP stepped the system clock; between anchors
/// wall time advances with the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    anchor: Instant,
    since_epoch: Duration,
}

impl WallClock {
    /// Anchors wall time `wall` at monotonic time `now`. A `wall` before the UNIX epoch counts as
    /// the epoch.
    #[must_use]
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        Self::from_unix(now, wall.duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// Anchors `since_epoch` (time since the UNIX epoch) at monotonic time `now`.
    #[must_use]
    pub fn from_unix(now: Instant, since_epoch: Duration) -> Self {
        Self {
            anchor: now,
            since_epoch,
        }
    }

    /// Time since the UNIX epoch at monotonic time `now`.
    #[must_use]
    pub fn unix_time(&self, now: Instant) -> Duration {
        match now.checked_duration_since(self.anchor) {
            Some(ahead) => self.since_epoch.saturating_add(ahead),
            None => self
                .since_epoch
                .saturating_sub(self.anchor.duration_since(now)),
        }
    }
}

/// A 12-byte TAI64N label: big-endian seconds (offset by 2^62 + 10, as WireGuard implementations
/// do) followed by big-endian nanoseconds. Byte-wise comparison orders them in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tai64N(pub(crate) [u8; 12]);

impl Tai64N {
    /// TAI64 label of the UNIX epoch (2^62 + 10 leap seconds).
    const BASE: u64 = (1 << 62) + 10;
    /// Nanoseconds are rounded down to a multiple of 2^24 ns (about 16.8 ms), as the kernel and
    /// wireguard-go do, so that timestamps do not leak fine-grained clock information.
    const WHITENER_MASK: u32 = (1 << 24) - 1;

    pub(crate) fn from_unix(since_epoch: Duration) -> Self {
        let mut out = [0_u8; 12];
        out[..8].copy_from_slice(&Self::BASE.wrapping_add(since_epoch.as_secs()).to_be_bytes());
        out[8..]
            .copy_from_slice(&(since_epoch.subsec_nanos() & !Self::WHITENER_MASK).to_be_bytes());
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai64n_layout_and_order() {
        let t = Tai64N::from_unix(Duration::new(1, 500_000_000));
        assert_eq!(&t.0[..8], &[0x40, 0, 0, 0, 0, 0, 0, 0x0b]);
        // 500_000_000 rounded down to a multiple of 2^24.
        let nanos = u32::from_be_bytes(t.0[8..].try_into().unwrap());
        assert_eq!(nanos, 500_000_000 & !((1 << 24) - 1));
        assert!(Tai64N::from_unix(Duration::new(2, 0)) > t);
        assert!(Tai64N::from_unix(Duration::new(1, 600_000_000)) > t);
    }

    #[test]
    fn wall_clock_follows_instants() {
        let start = Instant::now();
        let clock = WallClock::from_unix(start, Duration::from_secs(1000));
        assert_eq!(
            clock.unix_time(start + Duration::from_secs(5)),
            Duration::from_secs(1005)
        );
    }
}
