//! Retry budget: caps retries at a share of recent requests, so retries cannot multiply load on
//! a backend that is already struggling (a retry storm), while a quiet backend still gets a small
//! fixed allowance of retries per window.
//!
//! A retry is allowed while `retries < ratio × requests + min_retries_per_window`, both counted
//! over the same rolling window (ring of time buckets, see `window`). Withdrawing and counting
//! happen in one short critical section, so concurrent callers cannot overdraw it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{lock, window::Window};

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// A rolling retry budget for one backend. `Send + Sync`.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_retries: u64,
    window: Mutex<Window>,
}

impl RetryBudget {
    /// Retries may reach `ratio` (e.g. 0.2) of the first attempts made over `window` (e.g. 10 s),
    /// plus `min_retries_per_window` (e.g. 10). A negative or NaN ratio counts as 0.
    pub fn new(ratio: f64, window: Duration, min_retries_per_window: u32) -> Self {
        Self {
            ratio: if ratio > 0.0 { ratio } else { 0.0 },
            min_retries: u64::from(min_retries_per_window),
            window: Mutex::new(Window::new(window, Instant::now())),
        }
    }

    /// Counts a first attempt (never a retry).
    pub(crate) fn record_request(&self) {
        self.record_request_at(Instant::now());
    }

    /// [`Self::record_request`] at a given instant (tests).
    pub(crate) fn record_request_at(&self, now: Instant) {
        lock(&self.window).add(now, REQUESTS, 1);
    }

    /// Takes one retry from the budget; `false` means do not retry.
    pub(crate) fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// [`Self::try_withdraw`] at a given instant (tests).
    pub(crate) fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut w = lock(&self.window);
        let [requests, retries] = w.totals(now);
        let allowed = (retries as f64) < self.ratio * requests as f64 + self.min_retries as f64;
        if allowed {
            w.add(now, RETRIES, 1);
        }
        allowed
    }

    /// `(first attempts, retries)` currently in the window, for metrics.
    pub fn counts_at(&self, now: Instant) -> (u64, u64) {
        let [requests, retries] = lock(&self.window).totals(now);
        (requests, retries)
    }
}

impl Default for RetryBudget {
    /// 20% over 10 s, plus 10 retries per window.
    fn default() -> Self {
        Self::new(0.2, Duration::from_secs(10), 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(b: &RetryBudget, now: Instant) -> usize {
        (0..10_000).take_while(|_| b.try_withdraw_at(now)).count()
    }

    #[test]
    fn retries_capped_at_ratio_plus_min() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, Duration::from_secs(10), 10);
        for _ in 0..100 {
            b.record_request_at(t0);
        }
        assert_eq!(drain(&b, t0), 30);
        assert_eq!(b.counts_at(t0), (100, 30));
        // More requests earn more retries: 20% of the new ones.
        for _ in 0..50 {
            b.record_request_at(t0);
        }
        assert_eq!(drain(&b, t0), 10);
    }

    #[test]
    fn quiet_backend_still_gets_the_minimum() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, Duration::from_secs(10), 3);
        assert_eq!(drain(&b, t0), 3);
        let none = RetryBudget::new(0.2, Duration::from_secs(10), 0);
        assert!(!none.try_withdraw_at(t0));
    }

    #[test]
    fn window_rolls_over() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, Duration::from_secs(10), 0);
        for _ in 0..100 {
            b.record_request_at(t0);
        }
        assert_eq!(drain(&b, t0 + Duration::from_secs(5)), 20);
        // At 11 s the requests at t0 are out of the window but the retries at 5 s are still in:
        // 20 retries against 0 requests leaves nothing.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.counts_at(t1), (0, 20));
        for _ in 0..50 {
            b.record_request_at(t1);
        }
        assert_eq!(drain(&b, t1), 0);
        // At 16 s the retries have left too: 50 requests allow 10.
        assert_eq!(drain(&b, t0 + Duration::from_secs(16)), 10);
        // Long idle: everything gone.
        assert_eq!(b.counts_at(t0 + Duration::from_secs(60)), (0, 0));
    }

    #[test]
    fn bad_ratio_is_zero() {
        let t0 = Instant::now();
        let b = RetryBudget::new(f64::NAN, Duration::from_secs(10), 1);
        for _ in 0..100 {
            b.record_request_at(t0);
        }
        assert_eq!(drain(&b, t0), 1);
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let b = std::sync::Arc::new(RetryBudget::new(0.2, Duration::from_secs(60), 5));
        let now = Instant::now();
        for _ in 0..100 {
            b.record_request_at(now);
        }
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = &b;
                    s.spawn(move || (0..100).filter(|_| b.try_withdraw_at(now)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(granted, 25);
    }
}
