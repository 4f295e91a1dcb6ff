//! Denial-of-service limits for handshake messages: a per-source token bucket and the decision
//! whether we are "under load".
//!
//! How the Linux module does it, in our words: every incoming handshake message goes to a
//! bounded queue (4096 entries) served by worker threads. The device counts itself under load
//! while that queue holds at least an eighth of its capacity, and for one second after the
//! last time it did. Under load, a handshake message without a valid mac2 gets a cookie reply
//! and no Diffie-Hellman; one with a valid mac2 has proven it can receive at its source
//! address, and is then charged to a token bucket of that source address (IPv4 address, or the
//! /64 of an IPv6 address): 20 messages per second, bursts of 5. A message finding the bucket
//! empty is dropped. Buckets idle for a second are forgotten, and the table is bounded, so the
//! limiter itself cannot be used to exhaust memory. Outside load nothing is rate limited
//! (beyond the per-peer initiation limit).
//!
//! One addition of ours: cookie replies are rate limited too, per source address (20 per
//! second, bursts of 5) and in total (2000 per second). The kernel answers every message
//! without mac2 under load, so a flood from one host made it send a cookie reply (a MAC, an
//! XChaCha20-Poly1305 seal and a `sendto`) for every message its handshake thread got to;
//! limited, such a message costs three BLAKE2s and is dropped. A legitimate peer needs one
//! cookie per two minutes and retries every five seconds, so it never notices the limit of
//! its own address; the total cap bounds what a flood from many (spoofed) addresses makes us
//! send, at the price of a slower handshake for a new peer while that flood lasts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use snow::params::NoiseParams;

use crate::action::Outcome;
use crate::constants::{
    COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_PER_SECOND_PER_SOURCE, COOKIE_REPLY_BURST,
    COOKIE_REPLY_BURST_PER_SOURCE, COOKIE_REPLY_LEN, HANDSHAKE_BURST_PER_SOURCE,
    HANDSHAKES_PER_SECOND_PER_SOURCE, INITIATION_LEN, MAX_QUEUED_INCOMING_HANDSHAKES,
    UNDER_LOAD_LINGER,
};
use crate::cookie::CookieChecker;
use crate::error::Error;
use crate::handshake::{self, ConsumedInitiation};
use crate::keys::{PrivateKey, PublicKey};
use crate::messages::{self, HandshakeMessage, Message};
use crate::rng::CryptoRandom;

/// Buckets kept at most; a new source finding the table full is refused (the kernel's
/// `max_entries`).
const MAX_SOURCES: usize = 65_536;

/// Handshake messages with a valid mac2, per source address.
const HANDSHAKES: Rate = Rate::new(HANDSHAKES_PER_SECOND_PER_SOURCE, HANDSHAKE_BURST_PER_SOURCE);
/// Cookie replies per source address.
const COOKIES_PER_SOURCE: Rate = Rate::new(
    COOKIE_REPLIES_PER_SECOND_PER_SOURCE,
    COOKIE_REPLY_BURST_PER_SOURCE,
);
/// Cookie replies in total.
const COOKIES: Rate = Rate::new(COOKIE_REPLIES_PER_SECOND, COOKIE_REPLY_BURST);
/// How often idle buckets are swept out, and how long a bucket must be idle to go.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// The key of a source: an IPv4 address (also when IPv4-mapped), or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut prefix = [0_u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(prefix)
                }
            },
        }
    }
}

/// A token bucket's parameters. Tokens are nanoseconds of credit: a message costs
/// `1 s / rate`, and a full bucket holds `burst` messages.
#[derive(Debug, Clone, Copy)]
struct Rate {
    cost: u64,
    max: u64,
}

impl Rate {
    const fn new(per_second: u64, burst: u64) -> Self {
        let cost = 1_000_000_000 / per_second;
        Self {
            cost,
            max: cost * burst,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    /// A bucket that has just paid for one message.
    fn charged(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.max - rate.cost,
            last: now,
        }
    }

    /// Earns the credit since the last call and pays for one message if it can.
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let earned =
            u64::try_from(now.saturating_duration_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(rate.max);
        self.last = now;
        if self.tokens >= rate.cost {
            self.tokens -= rate.cost;
            return true;
        }
        false
    }
}

/// Per-source token buckets for handshake messages (or, with [`RateLimiter::cookies`], for
/// cookie replies).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: Rate,
    buckets: HashMap<Source, Bucket>,
    last_gc: Option<Instant>,
}

impl Default for RateLimiter {
    /// The kernel's limit for handshake messages: 20 per second, bursts of 5.
    fn default() -> Self {
        Self::new(HANDSHAKES)
    }
}

impl RateLimiter {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
            last_gc: None,
        }
    }

    /// The limit of cookie replies per source address.
    pub(crate) fn cookies() -> Self {
        Self::new(COOKIES_PER_SOURCE)
    }

    /// Whether one more message from `ip` may be processed now (and charges it).
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self
            .last_gc
            .is_none_or(|at| now.saturating_duration_since(at) >= GC_INTERVAL)
        {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < GC_INTERVAL);
            self.last_gc = Some(now);
        }
        let source = Source::from(ip);
        if let Some(bucket) = self.buckets.get_mut(&source) {
            return bucket.take(self.rate, now);
        }
        if self.buckets.len() >= MAX_SOURCES {
            return false;
        }
        self.buckets.insert(source, Bucket::charged(self.rate, now));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Decides whether a receiver of handshake messages is under load, the way the Linux module
/// does: while at least `threshold` messages wait to be processed, and for
/// [`UNDER_LOAD_LINGER`] after the last time they did.
///
/// The caller owns the queue (this crate does no IO); it reports the queue's length with every
/// message it takes out and hands the answer to [`crate::Device::set_under_load`].
#[derive(Debug, Clone)]
pub struct LoadTracker {
    threshold: usize,
    last_over: Option<Instant>,
}

impl Default for LoadTracker {
    /// Threshold an eighth of [`MAX_QUEUED_INCOMING_HANDSHAKES`], as in the kernel.
    fn default() -> Self {
        Self::new(MAX_QUEUED_INCOMING_HANDSHAKES / 8)
    }
}

impl LoadTracker {
    /// Under load from `threshold` queued messages on (at least 1).
    #[must_use]
    pub fn new(threshold: usize) -> Self {
        Self {
            threshold: threshold.max(1),
            last_over: None,
        }
    }

    /// Keeps the load state set for another [`UNDER_LOAD_LINGER`] from `now`, if it is set:
    /// for evidence of a flood other than the queue's length. The agent calls it when a
    /// message was refused a cookie reply because its source (or everyone) had its share of
    /// them. Those limits make refusing a flood so cheap that the queue drains below the
    /// threshold while the flood goes on; by the queue alone the state would end after the
    /// linger, and until the queue filled up again every flood message would cost a
    /// Diffie-Hellman (in the bench: ~40 ms of them every second).
    pub fn sustain(&mut self, now: Instant) {
        if self.last_over.is_some() {
            self.last_over = Some(now);
        }
    }

    /// Records that `queued` handshake messages are waiting now; returns whether we are under
    /// load.
    pub fn update(&mut self, now: Instant, queued: usize) -> bool {
        if queued >= self.threshold {
            self.last_over = Some(now);
            return true;
        }
        match self.last_over {
            Some(at) if now.saturating_duration_since(at) < UNDER_LOAD_LINGER => true,
            _ => {
                self.last_over = None;
                false
            }
        }
    }
}

/// The denial-of-service checks every handshake message passes before any Diffie-Hellman:
/// mac1 always; under load, mac2 (else a cookie reply, within the cookie limits) and the
/// per-source rate limit. Shared by [`crate::Device`] and [`HandshakeGate`].
pub(crate) struct MacCheck {
    pub(crate) checker: CookieChecker,
    pub(crate) limiter: RateLimiter,
    /// Cookie replies per source address.
    cookie_sources: RateLimiter,
    /// Cookie replies in total (the bucket starts full).
    cookies: Option<Bucket>,
}

impl MacCheck {
    pub(crate) fn new(local_public: &PublicKey) -> Self {
        Self {
            checker: CookieChecker::new(local_public),
            limiter: RateLimiter::default(),
            cookie_sources: RateLimiter::cookies(),
            cookies: None,
        }
    }

    /// Whether a cookie reply may go to `src` now (and charges both limits). The source's own
    /// bucket is asked first, so that one flooding address cannot use up the total.
    fn allow_cookie(&mut self, now: Instant, src: SocketAddr) -> bool {
        if !self.cookie_sources.allow(now, src.ip()) {
            return false;
        }
        match &mut self.cookies {
            Some(bucket) => bucket.take(COOKIES, now),
            None => {
                self.cookies = Some(Bucket::charged(COOKIES, now));
                true
            }
        }
    }

    /// `None` when the message may go on to the handshake; otherwise what to do instead (a
    /// cookie reply written to `out`, or a drop).
    pub(crate) fn check(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRandom,
        under_load: bool,
        src: SocketAddr,
        msg: HandshakeMessage<'_>,
        out: &mut [u8],
    ) -> Option<Outcome> {
        if !self.checker.mac1_valid(msg.mac1_input(), msg.mac1()) {
            return Some(Error::InvalidMac.into());
        }
        if !under_load {
            return None;
        }
        if self
            .checker
            .mac2_valid(now, rng, src, msg.mac2_input(), msg.mac2())
        {
            // The sender proved it receives at `src`: charge it to that address's bucket.
            return (!self.limiter.allow(now, src.ip())).then(|| Error::RateLimited.into());
        }
        if !self.allow_cookie(now, src) {
            return Some(Error::CookieRateLimited.into());
        }
        Some(
            match self
                .checker
                .write_reply(now, rng, src, msg.sender(), msg.mac1(), out)
            {
                Ok(len) => Outcome::Network { len, to: src },
                Err(error) => error.into(),
            },
        )
    }
}

/// What [`HandshakeGate::check`] decided about a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateVerdict {
    /// Not a handshake message, or one that passed: hand it to [`crate::Device::decapsulate`]
    /// (whose own checks, with `set_under_load(false)`, are then only mac1 again).
    Pass,
    /// Answer with the cookie reply of this many bytes written at the start of `out`; the
    /// message itself goes no further.
    CookieReply(usize),
    /// Drop the message.
    Drop(Error),
}

/// The checks a [`crate::Device`] makes on handshake messages before any Diffie-Hellman
/// (mac1; under load, mac2 or a cookie reply, then the per-source rate limit), as a separate
/// object keyed by our public key. A caller that serves the device from several threads can
/// run it outside the lock that guards the device, so that a flood of handshake messages
/// (cookie replies are a few MACs and an XChaCha20-Poly1305 each) never holds up transport
/// packets waiting for that lock; only messages that pass go to the device. Cookies it makes
/// are its own: keep one gate per device and leave the device's own `set_under_load` off.
pub struct HandshakeGate {
    check: MacCheck,
    rng: Box<dyn CryptoRandom>,
    /// Our static key, for [`HandshakeGate::read_initiation`].
    local: Option<(PrivateKey, NoiseParams)>,
}

/// An initiation the [`HandshakeGate`] has decrypted against our static key (its
/// Diffie-Hellman done), for [`crate::Device::accept_initiation`].
pub struct ReadInitiation {
    pub(crate) consumed: ConsumedInitiation,
    pub(crate) bytes: [u8; INITIATION_LEN],
}

impl std::fmt::Debug for ReadInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadInitiation")
            .field("initiator", &self.consumed.initiator_static)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HandshakeGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeGate").finish_non_exhaustive()
    }
}

impl HandshakeGate {
    /// A gate for handshake messages sent to the device with public key `local_public`,
    /// drawing cookie secrets and nonces from `rng`.
    pub fn new(local_public: &PublicKey, rng: impl CryptoRandom + 'static) -> Self {
        Self {
            check: MacCheck::new(local_public),
            rng: Box::new(rng),
            local: None,
        }
    }

    /// A gate that can also read initiations ([`HandshakeGate::read_initiation`]) for the
    /// device with static key `local`.
    pub fn with_private_key(local: &PrivateKey, rng: impl CryptoRandom + 'static) -> Self {
        Self {
            local: Some((local.clone(), handshake::noise_params())),
            ..Self::new(&local.public_key(), rng)
        }
    }

    /// Decrypts an initiation that [`HandshakeGate::check`] let pass, against our static key:
    /// the Diffie-Hellman an initiation costs before its sender is known, done here rather
    /// than in [`crate::Device::decapsulate`], so that a caller serving the device from
    /// several threads does it outside the device's lock. Hand the result to
    /// [`crate::Device::accept_initiation`]. `None` when `datagram` is no initiation or the
    /// gate was made without the private key; an error for an initiation that does not
    /// decrypt (a flood's random contents: [`Error::HandshakeFailed`]).
    pub fn read_initiation(&mut self, datagram: &[u8]) -> Option<Result<ReadInitiation, Error>> {
        let (local, params) = self.local.as_ref()?;
        let Ok(Message::Initiation(msg)) = messages::parse(datagram) else {
            return None;
        };
        let bytes = <[u8; INITIATION_LEN]>::try_from(msg.bytes).ok()?;
        Some(
            handshake::read_initiation(params, &mut *self.rng, local, msg)
                .map(|consumed| ReadInitiation { consumed, bytes }),
        )
    }

    /// Checks one datagram received from `src`. Initiations and responses are checked;
    /// anything else passes untouched. `out` needs [`COOKIE_REPLY_LEN`] bytes.
    pub fn check(
        &mut self,
        now: Instant,
        under_load: bool,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> GateVerdict {
        let msg = match messages::parse(datagram) {
            Ok(Message::Initiation(msg) | Message::Response(msg)) => msg,
            Ok(_) => return GateVerdict::Pass,
            Err(error) => return GateVerdict::Drop(error),
        };
        match self
            .check
            .check(now, &mut *self.rng, under_load, src, msg, out)
        {
            None => GateVerdict::Pass,
            Some(Outcome::Network { len, .. }) if len == COOKIE_REPLY_LEN => {
                GateVerdict::CookieReply(len)
            }
            Some(Outcome::Err(error)) => GateVerdict::Drop(error),
            Some(_) => GateVerdict::Drop(Error::BufferTooSmall),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn bursts_of_five_then_twenty_per_second_per_source() {
        let start = Instant::now();
        let mut limiter = RateLimiter::default();
        let a = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let b = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
        let allowed = (0..50).filter(|_| limiter.allow(start, a)).count();
        assert_eq!(allowed, 5, "burst");
        assert!(limiter.allow(start, b), "another source has its own bucket");
        // One token every 50 ms.
        assert!(!limiter.allow(start + Duration::from_millis(49), a));
        assert!(limiter.allow(start + Duration::from_millis(100), a));
        // Over a second of steady flooding: about 20 get through.
        let mut now = start + Duration::from_millis(100);
        let mut passed = 0;
        for _ in 0..1000 {
            now += Duration::from_millis(1);
            passed += usize::from(limiter.allow(now, a));
        }
        assert!((19..=21).contains(&passed), "{passed} in one second");
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64_and_mapped_v4_is_v4() {
        let now = Instant::now();
        let mut limiter = RateLimiter::default();
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let other_host: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.allow(now, IpAddr::V6(one)));
        }
        assert!(!limiter.allow(now, IpAddr::V6(other_host)), "same /64");
        assert!(limiter.allow(now, IpAddr::V6(other_net)));
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        for _ in 0..5 {
            assert!(limiter.allow(now, IpAddr::V4(v4)));
        }
        assert!(!limiter.allow(now, IpAddr::V6(v4.to_ipv6_mapped())));
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let now = Instant::now();
        let mut limiter = RateLimiter::default();
        for i in 0..100_u8 {
            limiter.allow(now, IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)));
        }
        assert_eq!(limiter.len(), 100);
        limiter.allow(
            now + Duration::from_secs(2),
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
        );
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn cookie_replies_are_limited_per_source_then_in_total() {
        let start = Instant::now();
        let mut check = MacCheck::new(&PublicKey::from_bytes([7; 32]));
        let flooder: SocketAddr = "203.0.113.66:4444".parse().unwrap();
        let allowed = (0..1000)
            .filter(|_| check.allow_cookie(start, flooder))
            .count();
        assert_eq!(allowed, 5, "one source: a burst of 5");
        // Another port of the same address shares the bucket; another address has its own.
        assert!(!check.allow_cookie(start, "203.0.113.66:5555".parse().unwrap()));
        assert!(check.allow_cookie(start, "192.0.2.1:51820".parse().unwrap()));
        // Then 20 a second.
        let mut now = start;
        let mut passed = 0;
        for _ in 0..1000 {
            now += Duration::from_millis(1);
            passed += usize::from(check.allow_cookie(now, flooder));
        }
        assert!((19..=21).contains(&passed), "{passed} in one second");

        // Many sources (spoofed): 200 at once, then 2000 a second.
        let mut check = MacCheck::new(&PublicKey::from_bytes([7; 32]));
        let source = |i: u32| SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 9));
        let allowed = (0..10_000)
            .filter(|&i| check.allow_cookie(start, source(i)))
            .count();
        assert_eq!(allowed, 200, "all sources: a burst of 200");
        let mut now = start;
        let mut passed = 0;
        for i in 0..10_000 {
            now += Duration::from_micros(100);
            passed += usize::from(check.allow_cookie(now, source(10_000 + i)));
        }
        assert!((1990..=2010).contains(&passed), "{passed} in one second");
    }

    #[test]
    fn load_follows_the_queue_and_lingers_a_second() {
        let start = Instant::now();
        let mut load = LoadTracker::default();
        assert!(!load.update(start, 0));
        assert!(!load.update(start, 511));
        assert!(load.update(start, 512));
        assert!(load.update(start + Duration::from_millis(999), 0));
        assert!(!load.update(start + Duration::from_secs(1), 0));
        assert!(!load.update(start + Duration::from_secs(2), 3));
    }

    #[test]
    fn sustained_load_lasts_while_the_flood_does() {
        let start = Instant::now();
        let mut load = LoadTracker::default();
        load.sustain(start);
        assert!(!load.update(start, 0), "no load to sustain");
        assert!(load.update(start, 512));
        // The queue stays short, but the flood goes on: the state holds.
        for ms in (100..5000).step_by(100) {
            let now = start + Duration::from_millis(ms);
            load.sustain(now);
            assert!(load.update(now, 3), "at {ms} ms");
        }
        // A second after the flood's last sign, it ends.
        assert!(load.update(start + Duration::from_millis(5899), 0));
        assert!(!load.update(start + Duration::from_millis(5900), 0));
    }
}
