//! Lease deadlines of the embedded store, and the background task that expires them.
//!
//! The leases themselves (id, TTL) and their keys live in the file; deadlines live only in
//! memory. When the file is opened, every lease found in it gets a full TTL from that moment,
//! as etcd does when a new leader takes over: an owner that is still alive refreshes it, and
//! the keys of an owner that is gone are deleted one TTL after the restart.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::Inner;
use crate::types::LeaseId;

#[derive(Debug, Clone, Copy)]
struct Timer {
    ttl: Duration,
    deadline: Instant,
}

/// The deadlines of the live leases.
#[derive(Debug, Default)]
pub(super) struct LeaseClock {
    timers: Mutex<HashMap<LeaseId, Timer>>,
}

impl LeaseClock {
    fn timers(&self) -> MutexGuard<'_, HashMap<LeaseId, Timer>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still consistent.
        self.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or restarts) a lease's countdown.
    pub(super) fn start(&self, id: LeaseId, ttl: Duration) {
        self.timers().insert(
            id,
            Timer {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
    }

    /// Refreshes a live lease; returns its TTL, or `None` if it is not live.
    pub(super) fn refresh(&self, id: LeaseId) -> Option<Duration> {
        let mut timers = self.timers();
        let timer = timers.get_mut(&id)?;
        timer.deadline = Instant::now() + timer.ttl;
        Some(timer.ttl)
    }

    /// Forgets a lease.
    pub(super) fn remove(&self, id: LeaseId) {
        self.timers().remove(&id);
    }

    /// The leases whose deadline has passed.
    fn expired(&self, now: Instant) -> Vec<LeaseId> {
        self.timers()
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets the lease if it is still expired (it may have been refreshed since
    /// [`Self::expired`]); returns its TTL if so.
    pub(super) fn take_if_expired(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        let mut timers = self.timers();
        match timers.get(&id) {
            Some(t) if t.deadline <= now => timers.remove(&id).map(|t| t.ttl),
            _ => None,
        }
    }

    /// Puts back a lease whose expiry failed, already expired so that it is retried.
    pub(super) fn restore_expired(&self, id: LeaseId, ttl: Duration) {
        self.timers().insert(
            id,
            Timer {
                ttl,
                deadline: Instant::now(),
            },
        );
    }
}

/// Spawns the task that revokes expired leases every `interval`, until the store is dropped.
pub(super) fn spawn_expiry(store: Weak<Inner>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = store.upgrade() else {
                return;
            };
            let expired = inner.leases.expired(Instant::now());
            if expired.is_empty() {
                continue;
            }
            let job = tokio::task::spawn_blocking(move || {
                for id in expired {
                    inner.expire_lease(id);
                }
            });
            if let Err(e) = job.await {
                tracing::error!(error = %e, "embedded store: lease expiry task failed");
            }
        }
    })
}
