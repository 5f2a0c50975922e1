//! Delay between retry attempts: capped exponential growth with "full jitter" (uniform in
//! `[0, min(max, base · 2^attempt)]`). Full jitter spreads the retries of many callers that failed
//! together, so they do not hit the recovering backend in synchronized waves; its mean is half the
//! cap, a trade of a little latency for much less contention.

use std::time::Duration;

use rand::Rng;

use super::grow;

/// Capped, fully jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap for the first retry (attempt 0); doubles per attempt (default 25 ms).
    pub base: Duration,
    /// Upper bound for any delay (default 250 ms).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The largest delay `attempt` can draw: `min(max, base · 2^attempt)`, overflow-safe.
    pub(crate) fn cap(&self, attempt: u32) -> Duration {
        grow(self.base, attempt, self.max)
    }

    /// The delay before retry number `attempt` (0 for the first retry), drawn uniformly from
    /// `[0, cap(attempt)]` with nanosecond resolution.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.cap(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap))
    }

    /// [`Self::delay`] with the thread-local generator (no allocation, no lock).
    pub(crate) fn delay_thread_rng(&self, attempt: u32) -> Duration {
        self.delay(attempt, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn caps_grow_then_saturate() {
        let b = Backoff::default();
        let ms = Duration::from_millis;
        assert_eq!(
            (0..6).map(|a| b.cap(a)).collect::<Vec<_>>(),
            [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]
        );
    }

    #[test]
    fn delays_stay_in_bounds_and_spread() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..8 {
            let cap = b.cap(attempt);
            let draws: Vec<_> = (0..500).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "attempt {attempt}");
            // Full jitter: both halves of the range are used.
            assert!(draws.iter().any(|d| *d < cap / 4), "attempt {attempt}");
            assert!(draws.iter().any(|d| *d > cap * 3 / 4), "attempt {attempt}");
        }
        // Later attempts wait longer on average.
        let mean =
            |a: u32, rng: &mut StdRng| (0..2000).map(|_| b.delay(a, rng)).sum::<Duration>() / 2000;
        assert!(mean(0, &mut rng) < mean(3, &mut rng));
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let mut rng = StdRng::seed_from_u64(1);
        let b = Backoff::default();
        for attempt in [31, 32, 63, 64, 1000, u32::MAX] {
            assert_eq!(b.cap(attempt), b.max);
            assert!(b.delay(attempt, &mut rng) <= b.max);
        }
        let big = Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
        };
        assert_eq!(big.cap(10), Duration::MAX);
        let _ = big.delay(10, &mut rng);
        assert!(Backoff::default().delay_thread_rng(u32::MAX) <= Duration::from_millis(250));
    }

    #[test]
    fn zero_base_means_no_wait() {
        let b = Backoff {
            base: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(100, &mut rand::rng()), Duration::ZERO);
    }
}
