//! Token buckets: the per-member packet and byte limits of a relay.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Per-source limits of a relay. The defaults stop abuse without shaping a member's fair use:
/// 250 000 packets/s (burst 25 000) and 312.5 MB/s (2.5 Gbit/s, burst 31.25 MB). Why these:
/// one relayed pair should not find its relay's default the bottleneck (a SEALED flow carries
/// 1–3 Gbit/s on common cloud VMs; at the former 1 Gbit/s default the relayed bench row was
/// capped at 0.93 Gbit/s, 0.48x direct, and 1.53 Gbit/s, 0.73x, without the cap), while one
/// member still gets at most a quarter of a 10 Gbit/s relay host. An agent's
/// configuration may set each (within [`Limits::RANGE_PACKETS`] and [`Limits::RANGE_BYTES`]).
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Limits {
    /// Sustained packets per second.
    pub packets_per_sec: u64,
    /// Packets a silent source may send at once.
    pub packet_burst: u64,
    /// Sustained bytes per second.
    pub bytes_per_sec: u64,
    /// Bytes a silent source may send at once.
    pub byte_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            packets_per_sec: 250_000,
            packet_burst: 25_000,
            bytes_per_sec: 312_500_000,
            byte_burst: 31_250_000,
        }
    }
}

impl Limits {
    /// The packet rates and bursts a configuration may give: at least one packet, at most
    /// 100 million (far above what one relay forwards; a larger value is a typo).
    pub const RANGE_PACKETS: std::ops::RangeInclusive<u64> = 1..=100_000_000;
    /// The byte rates and bursts a configuration may give: at least one largest UDP datagram
    /// (a byte burst below it would refuse such a datagram forever), at most 100 GB
    /// (800 Gbit/s).
    pub const RANGE_BYTES: std::ops::RangeInclusive<u64> = 65_535..=100_000_000_000;
}

/// One token bucket, in millionths of a token so that integer refills stay exact at any rate.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    micros: u64,
    rate: u64,
    burst_micros: u64,
    last: Instant,
}

/// Refills never look further back than this, so the arithmetic cannot overflow.
const MAX_REFILL: Duration = Duration::from_secs(3600);

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` tokens per second.
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        let burst_micros = burst.saturating_mul(1_000_000);
        Self {
            micros: burst_micros,
            rate,
            burst_micros,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).min(MAX_REFILL);
        // rate tokens/s = rate millionths per microsecond.
        let add = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(self.rate);
        self.micros = self.micros.saturating_add(add).min(self.burst_micros);
        if now > self.last {
            self.last = now;
        }
    }

    /// Whether `n` tokens are there at `now` (refilling first), without taking them.
    pub fn has(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        self.micros >= n.saturating_mul(1_000_000)
    }

    /// Takes `n` tokens; call only after [`TokenBucket::has`] said yes.
    pub fn take(&mut self, n: u64) {
        self.micros = self.micros.saturating_sub(n.saturating_mul(1_000_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 10, 5);
        for _ in 0..5 {
            assert!(b.has(t0, 1));
            b.take(1);
        }
        assert!(!b.has(t0, 1), "burst spent");
        assert!(!b.has(t0 + Duration::from_millis(99), 1));
        assert!(
            b.has(t0 + Duration::from_millis(100), 1),
            "one token per 100 ms"
        );
        assert!(b.has(t0 + Duration::from_secs(100), 5));
        assert!(
            !b.has(t0 + Duration::from_secs(100), 6),
            "never above the burst"
        );
    }
}
