//! Sliding replay window for transport counters (RFC 6479 style), sized as in the Linux kernel
//! and wireguard-go on 64-bit hosts: a ring of 128 words of 64 bits, of which one word is
//! redundant, so the window accepts counters up to 8128 below the highest one seen.
//!
//! The window is only updated after a packet authenticated, so forged packets cannot move it.

use crate::constants::REJECT_AFTER_MESSAGES;

const WORD_BITS: u64 = u64::BITS as u64;
const RING_WORDS: usize = 128;
const TOTAL_BITS: u64 = RING_WORDS as u64 * WORD_BITS;
/// Number of counters below the highest seen one that are still accepted (8128).
pub(crate) const WINDOW_SIZE: u64 = TOTAL_BITS - WORD_BITS;

/// Replay state for one receiving key.
pub(crate) struct ReplayWindow {
    /// One more than the highest counter accepted so far (0 before the first packet). Storing
    /// "plus one" lets counter 0 be handled like any other.
    next: u64,
    ring: [u64; RING_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            next: 0,
            ring: [0; RING_WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted, without recording it. Used before decrypting so
    /// that obvious replays cost no cryptography.
    pub(crate) fn would_accept(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let position = counter + 1;
        if position.saturating_add(WINDOW_SIZE) < self.next {
            return false;
        }
        if position > self.next {
            return true;
        }
        self.ring[Self::word(position)] & Self::bit(position) == 0
    }

    /// Records `counter` and returns whether it was acceptable: below `REJECT_AFTER_MESSAGES`,
    /// not older than the window and not seen before.
    pub(crate) fn accept(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let position = counter + 1;
        if position.saturating_add(WINDOW_SIZE) < self.next {
            return false;
        }
        if position > self.next {
            // Clear the words between the old and the new head; at most the whole ring.
            let current_word = self.next / WORD_BITS;
            let new_word = position / WORD_BITS;
            let to_clear = (new_word - current_word).min(RING_WORDS as u64);
            for step in 1..=to_clear {
                self.ring[((current_word + step) % RING_WORDS as u64) as usize] = 0;
            }
            self.next = position;
        }
        let word = &mut self.ring[Self::word(position)];
        let fresh = *word & Self::bit(position) == 0;
        *word |= Self::bit(position);
        fresh
    }

    /// Highest counter accepted so far plus one (0 when nothing was accepted).
    pub(crate) fn next_expected(&self) -> u64 {
        self.next
    }

    fn word(position: u64) -> usize {
        ((position / WORD_BITS) % RING_WORDS as u64) as usize
    }

    fn bit(position: u64) -> u64 {
        1 << (position % WORD_BITS)
    }
}

#[cfg(test)]
mod tests {
    //! The scenarios of the Linux kernel's nonce counter self-test (selftest/counter.c),
    //! re-derived from its rules: a fresh window, a sequence of counters, and for each whether
    //! it must be accepted.

    use super::*;

    const LIMIT: u64 = WINDOW_SIZE + 1;
    const REJECT: u64 = REJECT_AFTER_MESSAGES;

    fn run(window: &mut ReplayWindow, case: usize, counter: u64, expected: bool) {
        assert_eq!(
            window.would_accept(counter),
            expected,
            "case {case}: pre-check"
        );
        assert_eq!(
            window.accept(counter),
            expected,
            "case {case}: counter {counter}"
        );
    }

    #[test]
    fn window_is_at_least_8128() {
        assert_eq!(WINDOW_SIZE, 8128);
    }

    #[test]
    fn kernel_selftest_sequence() {
        let cases: [(u64, bool); 34] = [
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (LIMIT, true),
            (LIMIT - 1, true),
            (LIMIT - 1, false),
            (LIMIT - 2, true),
            (2, true),
            (2, false),
            (LIMIT + 16, true),
            (3, false),
            (LIMIT + 16, false),
            (LIMIT * 4, true),
            (LIMIT * 4 - (LIMIT - 1), true),
            (10, false),
            (LIMIT * 4 - LIMIT, false),
            (LIMIT * 4 - (LIMIT + 1), false),
            (LIMIT * 4 - (LIMIT - 2), true),
            (LIMIT * 4 + 1 - LIMIT, false),
            (0, false),
            (REJECT, false),
            (REJECT - 1, true),
            (REJECT, false),
            (REJECT - 1, false),
            (REJECT - 2, true),
            (REJECT + 1, false),
            (REJECT + 2, false),
            (REJECT - 2, false),
            (REJECT - 3, true),
            (0, false),
        ];
        let mut window = ReplayWindow::default();
        for (i, (counter, expected)) in cases.into_iter().enumerate() {
            run(&mut window, i + 1, counter, expected);
        }
    }

    #[test]
    fn kernel_selftest_bulk_ascending_then_zero() {
        let mut window = ReplayWindow::default();
        for i in 1..=WINDOW_SIZE {
            run(&mut window, 0, i, true);
        }
        run(&mut window, 1, 0, true);
        run(&mut window, 2, 0, false);
    }

    #[test]
    fn kernel_selftest_bulk_ascending_from_two() {
        let mut window = ReplayWindow::default();
        for i in 2..=WINDOW_SIZE + 1 {
            run(&mut window, 0, i, true);
        }
        run(&mut window, 1, 1, true);
        run(&mut window, 2, 0, false);
    }

    #[test]
    fn kernel_selftest_bulk_descending() {
        let mut window = ReplayWindow::default();
        for i in (0..=WINDOW_SIZE).rev() {
            run(&mut window, 0, i, true);
        }

        let mut window = ReplayWindow::default();
        for i in (1..=WINDOW_SIZE + 1).rev() {
            run(&mut window, 0, i, true);
        }
        run(&mut window, 1, 0, false);

        let mut window = ReplayWindow::default();
        for i in (1..=WINDOW_SIZE).rev() {
            run(&mut window, 0, i, true);
        }
        run(&mut window, 1, WINDOW_SIZE + 1, true);
        run(&mut window, 2, 0, false);

        let mut window = ReplayWindow::default();
        for i in (1..=WINDOW_SIZE).rev() {
            run(&mut window, 0, i, true);
        }
        run(&mut window, 1, 0, true);
        run(&mut window, 2, WINDOW_SIZE + 1, true);
    }

    #[test]
    fn reordering_inside_window_and_big_jumps() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(100_000));
        assert!(window.accept(100_000 - WINDOW_SIZE));
        assert!(!window.accept(100_000 - WINDOW_SIZE - 1));
        assert!(window.accept(99_999));
        // A jump far beyond the ring clears everything.
        assert!(window.accept(10_000_000));
        assert!(window.accept(10_000_000 - 64));
        assert!(!window.would_accept(10_000_000));
        assert_eq!(window.next_expected(), 10_000_001);
    }
}
