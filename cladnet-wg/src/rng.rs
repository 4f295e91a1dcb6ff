//! The randomness the protocol needs, supplied by the caller.

/// A cryptographically secure random number generator supplied by the caller.
///
/// The crate never reads randomness from the operating system itself: ephemeral keys, handshake
/// timer jitter, cookie secrets and cookie nonces all come from this source. Production callers
/// pass an OS-backed generator (for example `rand_core::UnwrapErr(getrandom::SysRng)`); tests pass
/// a seeded ChaCha generator so that runs are reproducible.
///
/// Every [`rand_core::CryptoRng`] that is `Send` implements this trait.
pub trait CryptoRandom: Send {
    /// Fills `dest` entirely with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);
}

impl<R: rand_core::CryptoRng + Send> CryptoRandom for R {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::Rng::fill_bytes(self, dest);
    }
}

/// Draws a uniformly distributed duration in `[0, max)` with millisecond granularity.
pub(crate) fn jitter(rng: &mut dyn CryptoRandom, max: std::time::Duration) -> std::time::Duration {
    let mut bytes = [0_u8; 8];
    rng.fill_bytes(&mut bytes);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    std::time::Duration::from_millis(u64::from_le_bytes(bytes) % max_ms)
}
