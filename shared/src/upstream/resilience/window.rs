//! A rolling time window of a few counters, as a ring of fixed-width time buckets. Shared by the
//! circuit breaker (calls, failures) and the retry budget (requests, retries).
//!
//! Why buckets rather than a log of timestamps: memory and cost per event stay constant whatever
//! the traffic. The price is granularity: events leave the window one bucket at a time, so the
//! effective span is between `(BUCKETS − 1)/BUCKETS` and all of the configured span.

use std::time::{Duration, Instant};

/// Buckets per window: 10 gives 10% granularity for a handful of words of memory.
pub(super) const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time since origin / width) plus one; 0 marks a never-used bucket.
    slot: u64,
    counts: [u64; 2],
}

/// Two rolling counters over `span`. Not synchronized: owners wrap it in their own lock so that
/// reading the totals and acting on them is one critical section.
#[derive(Debug)]
pub(super) struct Window {
    origin: Instant,
    width_nanos: u128,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// An empty window covering `span`, with bucket numbers counted from `origin`.
    pub(super) fn new(span: Duration, origin: Instant) -> Self {
        Self {
            origin,
            // A zero span would divide by zero; one nanosecond per bucket means "no memory".
            width_nanos: (span.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        let n = now.saturating_duration_since(self.origin).as_nanos() / self.width_nanos;
        u64::try_from(n).unwrap_or(u64::MAX - 1) + 1
    }

    /// Adds `n` to counter `which` (0 or 1) at `now`.
    pub(super) fn add(&mut self, now: Instant, which: usize, n: u64) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot < slot {
            *bucket = Bucket {
                slot,
                counts: [0; 2],
            };
        }
        // `bucket.slot > slot` only happens for a caller whose `now` was read before another
        // thread's later `now` recycled the bucket; counting it there is off by one bucket at most.
        bucket.counts[which] = bucket.counts[which].saturating_add(n);
    }

    /// Both counters summed over the buckets still inside the window at `now`.
    pub(super) fn totals(&self, now: Instant) -> [u64; 2] {
        let slot = self.slot(now);
        let mut totals = [0u64; 2];
        for b in &self.buckets {
            if b.slot != 0 && b.slot + BUCKETS as u64 > slot {
                totals[0] = totals[0].saturating_add(b.counts[0]);
                totals[1] = totals[1].saturating_add(b.counts[1]);
            }
        }
        totals
    }

    /// Forgets everything.
    pub(super) fn reset(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_out_one_bucket_at_a_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Window::new(ms(1000), t0);
        w.add(t0, 0, 5);
        w.add(t0 + ms(450), 1, 2);
        assert_eq!(w.totals(t0 + ms(500)), [5, 2]);
        // Bucket 0 covers [0, 100ms): it leaves once the window has moved a full span past it.
        assert_eq!(w.totals(t0 + ms(999)), [5, 2]);
        assert_eq!(w.totals(t0 + ms(1000)), [0, 2]);
        assert_eq!(w.totals(t0 + ms(1399)), [0, 2]);
        assert_eq!(w.totals(t0 + ms(1400)), [0, 0]);
        // A recycled bucket starts from zero rather than adding to stale counts.
        w.add(t0 + ms(2000), 0, 1);
        assert_eq!(w.totals(t0 + ms(2000)), [1, 0]);
        w.reset();
        assert_eq!(w.totals(t0 + ms(2000)), [0, 0]);
    }

    #[test]
    fn zero_span_does_not_divide_by_zero() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::ZERO, t0);
        w.add(t0, 0, 1);
        assert_eq!(w.totals(t0)[0], 1);
    }
}
