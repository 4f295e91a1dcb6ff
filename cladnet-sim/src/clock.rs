//! Virtual time: a clock that only moves when the simulator takes the next scheduled item, and
//! the agenda of scheduled items, ordered by time and then by the order they were scheduled in
//! (never by memory addresses or hash order).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// The virtual clock. The Node takes `std::time::Instant`s, which cannot be made from nothing:
/// the clock reads the monotonic clock once, as an arbitrary epoch, and from then on only adds
/// virtual offsets to it. Nothing in a run depends on the epoch's value; traces record offsets.
#[derive(Clone, Debug)]
pub struct Clock {
    epoch: Instant,
    elapsed: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }
}

impl Clock {
    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    /// Virtual time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The virtual offset of `at` (an instant this clock made).
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    /// Moves the clock forward to `to` (never backwards).
    pub fn advance_to(&mut self, to: Duration) {
        self.elapsed = self.elapsed.max(to);
    }
}

/// Items scheduled at virtual times.
#[derive(Debug)]
pub struct Agenda<E> {
    items: BTreeMap<(Duration, u64), E>,
    seq: u64,
}

impl<E> Default for Agenda<E> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<E> Agenda<E> {
    /// Schedules `item` at `at`; items at the same time come out in scheduling order.
    pub fn at(&mut self, at: Duration, item: E) {
        self.seq += 1;
        self.items.insert((at, self.seq), item);
    }

    /// The earliest item due at or before `limit`.
    pub fn pop_until(&mut self, limit: Duration) -> Option<(Duration, E)> {
        let entry = self.items.first_entry()?;
        if entry.key().0 > limit {
            return None;
        }
        let ((at, _), item) = entry.remove_entry();
        Some((at, item))
    }

    /// How many items are scheduled.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agenda_orders_by_time_then_scheduling_order() {
        let mut a = Agenda::default();
        let ms = Duration::from_millis;
        a.at(ms(5), "late");
        a.at(ms(1), "first");
        a.at(ms(1), "second");
        assert_eq!(a.pop_until(ms(0)), None);
        assert_eq!(a.pop_until(ms(9)), Some((ms(1), "first")));
        assert_eq!(a.pop_until(ms(9)), Some((ms(1), "second")));
        assert_eq!(a.pop_until(ms(4)), None);
        assert_eq!(a.pop_until(ms(5)), Some((ms(5), "late")));
        assert!(a.is_empty());
        let mut c = Clock::default();
        c.advance_to(ms(3));
        c.advance_to(ms(2));
        assert_eq!(c.elapsed(), ms(3));
        assert_eq!(c.offset(c.now()), ms(3));
    }
}
