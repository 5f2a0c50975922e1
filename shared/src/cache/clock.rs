//! The cache's wall clock: what `stored_at` stamps and ages are read from. Wall-clock, not
//! `Instant`, because an age must mean the same in every process sharing a tier. Injected (one per
//! cache) so tests can let time pass without waiting: [`Clock::advance`] moves one cache's clock
//! ahead of the system's, and nothing else's. In production it is the system clock.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

/// The system clock, plus however far it was advanced.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Microseconds ahead of the system clock (0 unless a test advanced it).
    ahead_us: Arc<AtomicU64>,
}

impl Clock {
    /// Now, on this clock.
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_micros(self.ahead_us.load(Ordering::Relaxed))
    }

    /// How long ago `then` was on this clock (zero if the clock went backwards).
    pub fn since(&self, then: SystemTime) -> Duration {
        self.now().duration_since(then).unwrap_or(Duration::ZERO)
    }

    /// Moves this clock (and every clone of it) `by` forward: for tests that need fragments to
    /// age without sleeping.
    pub fn advance(&self, by: Duration) {
        let us = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.ahead_us.fetch_add(us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_ages_what_it_stamped_and_clones_share_it() {
        let clock = Clock::default();
        let stamped = clock.now();
        let clone = clock.clone();
        clone.advance(Duration::from_secs(90));
        assert!(clock.since(stamped) >= Duration::from_secs(90));
        assert!(clock.since(stamped) < Duration::from_secs(95));
        assert_eq!(Clock::default().since(clock.now()), Duration::ZERO);
    }
}
