//! The run's fingerprint: every step the simulator takes is folded into a 64-bit FNV-style
//! digest, so two runs of one seed can be compared in one number (and a difference found by
//! comparing the optional text log).

use std::time::Duration;

/// A running digest of a run, with an optional text log of every step.
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    steps: u64,
    log: Option<Vec<String>>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            log: None,
        }
    }
}

impl Trace {
    /// Keeps a text line per step as well (for finding where two runs part).
    pub fn keep_log(&mut self) {
        self.log = Some(Vec::new());
    }

    /// Records one step at virtual time `at`.
    pub fn step(&mut self, at: Duration, what: &str) {
        self.steps += 1;
        self.absorb(&at.as_nanos().to_le_bytes());
        self.absorb(what.as_bytes());
        if let Some(log) = &mut self.log {
            log.push(format!("{at:?} {what}"));
        }
    }

    /// FNV-1a over 8-byte words (a byte at a time is slow in debug builds, and this needs
    /// only to be deterministic, not a standard digest).
    fn absorb(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.mix(u64::from_le_bytes(word));
        }
        for b in words.remainder() {
            self.mix(u64::from(*b));
        }
        self.mix(bytes.len() as u64);
    }

    fn mix(&mut self, word: u64) {
        self.hash ^= word;
        self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        self.hash
    }

    /// How many steps were recorded.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The text log, if kept.
    pub fn log(&self) -> &[String] {
        self.log.as_deref().unwrap_or_default()
    }
}
