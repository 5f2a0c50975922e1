//! Circuit breaker: stops calling a backend that is failing, so callers fail fast instead of
//! queueing behind timeouts, and the backend gets room to recover.
//!
//! Closed: outcomes go into a rolling window; once it holds at least `min_calls` calls and the
//! failure share reaches `failure_ratio`, the breaker opens. Open: every acquire fails at once
//! without touching the network. After `open_for`, the next acquire moves to half-open, which
//! admits at most `half_open_probes` concurrent probes: one probe failure re-opens (for a
//! doubling interval, capped at `max_open_for`), `close_after` consecutive probe successes close
//! it with an empty window.
//!
//! Outcomes are tied to the phase that admitted them (a generation number), so a slow call
//! admitted while closed cannot re-trip or close a breaker that has since moved on, and a permit
//! dropped without an outcome (the client cancelled) counts for nothing but frees its probe slot.
//!
//! Every phase change is logged once, naming the backend: opened and re-opened (warn), half-open
//! and closed (info). Changes happen under the lock, so two racing calls cannot log one twice.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{grow, later, lock, window::Window};

/// Breaker tuning. Defaults suit a backend answering in tens of milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failure share in `(0, 1]` over the window that opens the breaker (default 0.5).
    pub failure_ratio: f64,
    /// Calls the window must hold before the ratio is considered, so a quiet backend does not
    /// trip on two unlucky calls (default 20).
    pub min_calls: u32,
    /// Rolling window the ratio is computed over (default 10 s).
    pub window: Duration,
    /// How long the breaker stays open before probing (default 5 s).
    pub open_for: Duration,
    /// Concurrent probes allowed while half-open (default 3; 0 is treated as 1).
    pub half_open_probes: u32,
    /// Consecutive probe successes that close the breaker (default 3; 0 is treated as 1).
    pub close_after: u32,
    /// Cap for the open interval, which doubles on each consecutive re-open from half-open
    /// (default 60 s; set it to `open_for` for a fixed interval).
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
            close_after: 3,
            max_open_for: Duration::from_secs(60),
        }
    }
}

/// The breaker's phase, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probes are let through to test recovery.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub const fn as_gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker refused the call (open, or half-open with every probe slot taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open")]
pub struct BreakerOpen;

/// A circuit breaker for one backend. `Send + Sync`; share it by reference or `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// The backend it guards, for log lines.
    backend: String,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    window: Window,
    /// Bumped on every phase change; permits remember the one they were admitted in.
    generation: u64,
    /// Consecutive re-opens from half-open, driving the growing open interval.
    reopens: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

const CALLS: usize = 0;
const FAILURES: usize = 1;

impl CircuitBreaker {
    /// A closed breaker. Zero probe/close counts are raised to 1 and `max_open_for` to at least
    /// `open_for`, so no config can wedge it open.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::for_backend("", cfg)
    }

    /// [`Self::new`] for the backend named `backend`, which its log lines name.
    pub fn for_backend(backend: &str, cfg: BreakerConfig) -> Self {
        let cfg = BreakerConfig {
            half_open_probes: cfg.half_open_probes.max(1),
            close_after: cfg.close_after.max(1),
            max_open_for: cfg.max_open_for.max(cfg.open_for),
            ..cfg
        };
        let window = Window::new(cfg.window, Instant::now());
        Self {
            backend: backend.to_owned(),
            cfg,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                window,
                generation: 0,
                reopens: 0,
            }),
        }
    }

    /// The effective config.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Asks to make a call now. Report the outcome on the permit.
    pub(crate) fn try_acquire(&self) -> Result<BreakerPermit<'_>, BreakerOpen> {
        self.try_acquire_at(Instant::now())
    }

    /// [`Self::try_acquire`] at a given instant (tests).
    pub(crate) fn try_acquire_at(&self, now: Instant) -> Result<BreakerPermit<'_>, BreakerOpen> {
        let mut g = lock(&self.inner);
        let probe = match g.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => return Err(BreakerOpen),
            Phase::Open { .. } => {
                g.phase = Phase::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                g.generation += 1;
                tracing::info!(backend = %self.backend, "circuit breaker half-open: probing");
                true
            }
            Phase::HalfOpen {
                in_flight,
                successes,
            } => {
                if in_flight >= self.cfg.half_open_probes {
                    return Err(BreakerOpen);
                }
                g.phase = Phase::HalfOpen {
                    in_flight: in_flight + 1,
                    successes,
                };
                true
            }
        };
        Ok(BreakerPermit {
            breaker: self,
            generation: g.generation,
            probe,
            settled: false,
        })
    }

    /// The current phase. An open breaker whose interval has elapsed still reports `Open` until
    /// the next acquire moves it to half-open.
    pub fn state(&self) -> BreakerState {
        match lock(&self.inner).phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn record(&self, generation: u64, ok: bool, now: Instant) {
        let mut g = lock(&self.inner);
        if g.generation != generation {
            // Admitted in an earlier phase: its outcome says nothing about the current one.
            return;
        }
        match g.phase {
            Phase::Closed => {
                g.window.add(now, CALLS, 1);
                if ok {
                    return;
                }
                g.window.add(now, FAILURES, 1);
                let [calls, failures] = g.window.totals(now);
                if calls >= u64::from(self.cfg.min_calls)
                    && failures as f64 >= self.cfg.failure_ratio * calls as f64
                {
                    tracing::warn!(
                        backend = %self.backend,
                        calls,
                        failures,
                        "circuit breaker opened"
                    );
                    self.open(&mut g, now);
                }
            }
            Phase::HalfOpen {
                in_flight,
                successes,
            } => {
                if !ok {
                    g.reopens = g.reopens.saturating_add(1);
                    tracing::warn!(
                        backend = %self.backend,
                        reopens = g.reopens,
                        "circuit breaker probe failed: re-opened"
                    );
                    self.open(&mut g, now);
                } else if successes + 1 >= self.cfg.close_after {
                    g.phase = Phase::Closed;
                    g.generation += 1;
                    g.reopens = 0;
                    g.window.reset();
                    tracing::info!(backend = %self.backend, "circuit breaker closed");
                } else {
                    g.phase = Phase::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes: successes + 1,
                    };
                }
            }
            // Open permits are never issued, and the generation changes on opening.
            Phase::Open { .. } => {}
        }
    }

    fn open(&self, g: &mut Inner, now: Instant) {
        let open_for = grow(self.cfg.open_for, g.reopens, self.cfg.max_open_for);
        g.phase = Phase::Open {
            until: later(now, open_for),
        };
        g.generation += 1;
    }

    fn release_probe(&self, generation: u64) {
        let mut g = lock(&self.inner);
        if g.generation != generation {
            return;
        }
        if let Phase::HalfOpen {
            in_flight,
            successes,
        } = g.phase
        {
            g.phase = Phase::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                successes,
            };
        }
    }
}

/// Leave to make one call. Report [`BreakerPermit::success`] or [`BreakerPermit::failure`];
/// dropping it without either (the caller gave up) records nothing and frees a probe slot.
#[must_use = "report the call's outcome, or drop the permit to record nothing"]
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl BreakerPermit<'_> {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded.
    pub fn success(self) {
        self.success_at(Instant::now());
    }

    /// The call failed in a way that says the backend is unwell (timeout, connect error, 5xx,
    /// `UNAVAILABLE`); not for "not found" or bad requests.
    pub fn failure(self) {
        self.failure_at(Instant::now());
    }

    /// [`Self::success`] at a given instant (tests).
    pub(crate) fn success_at(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record(self.generation, true, now);
    }

    /// [`Self::failure`] at a given instant (tests).
    pub(crate) fn failure_at(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record(self.generation, false, now);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
            close_after: 3,
            max_open_for: Duration::from_secs(20),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Records `n` outcomes at `now`.
    fn calls(b: &CircuitBreaker, now: Instant, n: usize, ok: bool) {
        for _ in 0..n {
            let p = b.try_acquire_at(now).unwrap();
            if ok {
                p.success_at(now)
            } else {
                p.failure_at(now)
            }
        }
    }

    /// Trips a fresh breaker at `t0`.
    fn tripped(t0: Instant) -> CircuitBreaker {
        let b = CircuitBreaker::new(cfg());
        calls(&b, t0, 10, false);
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[test]
    fn stays_closed_below_min_calls_even_at_full_failure() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(cfg());
        calls(&b, t0, 9, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire_at(t0).is_ok());
    }

    #[test]
    fn opens_at_the_ratio_once_min_calls_reached() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(cfg());
        calls(&b, t0, 6, true);
        calls(&b, t0, 4, false);
        // 4/10 < 0.5
        assert_eq!(b.state(), BreakerState::Closed);
        calls(&b, t0, 1, false);
        // 5/11 < 0.5
        assert_eq!(b.state(), BreakerState::Closed);
        calls(&b, t0, 1, false);
        // 6/12 = 0.5
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(cfg());
        calls(&b, t0, 9, false);
        // 11 s later the first nine are gone: one more failure is 1 call, under min_calls.
        calls(&b, t0 + secs(11), 1, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_without_calling() {
        let t0 = Instant::now();
        let b = tripped(t0);
        let mut called = 0;
        for i in 0..100 {
            if b.try_acquire_at(t0 + Duration::from_millis(i * 40)).is_ok() {
                called += 1;
            }
        }
        assert_eq!(called, 0);
        assert_eq!(
            b.try_acquire_at(t0 + Duration::from_millis(4999)).err(),
            Some(BreakerOpen)
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_exactly_the_probe_count() {
        let t0 = Instant::now();
        let b = tripped(t0);
        let t1 = t0 + secs(5);
        let p1 = b.try_acquire_at(t1).unwrap();
        assert!(p1.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_acquire_at(t1).unwrap();
        assert!(b.try_acquire_at(t1).is_err());
        // A finished probe frees its slot.
        p1.success_at(t1);
        let p3 = b.try_acquire_at(t1).unwrap();
        assert!(b.try_acquire_at(t1).is_err());
        drop((p2, p3));
    }

    #[test]
    fn probe_failure_reopens_for_a_growing_interval() {
        let t0 = Instant::now();
        let b = tripped(t0);
        let t1 = t0 + secs(5);
        b.try_acquire_at(t1).unwrap().failure_at(t1);
        assert_eq!(b.state(), BreakerState::Open);
        // Second open lasts 10 s.
        assert!(b.try_acquire_at(t1 + secs(9)).is_err());
        let t2 = t1 + secs(10);
        b.try_acquire_at(t2).unwrap().failure_at(t2);
        // Third: 20 s (the cap).
        assert!(b.try_acquire_at(t2 + secs(19)).is_err());
        let t3 = t2 + secs(20);
        b.try_acquire_at(t3).unwrap().failure_at(t3);
        // Still 20 s: capped.
        assert!(b.try_acquire_at(t3 + secs(19)).is_err());
        assert!(b.try_acquire_at(t3 + secs(20)).is_ok());
    }

    #[test]
    fn close_after_successes_closes_with_a_fresh_window() {
        let t0 = Instant::now();
        let b = tripped(t0);
        let t1 = t0 + secs(5);
        calls(&b, t1, 2, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        calls(&b, t1, 1, true);
        assert_eq!(b.state(), BreakerState::Closed);
        // The failures that tripped it are forgotten: 9 more failures do not re-open.
        calls(&b, t1, 9, false);
        assert_eq!(b.state(), BreakerState::Closed);
        // And the open interval is back to the base after closing.
        calls(&b, t1, 1, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire_at(t1 + secs(5)).is_ok());
    }

    #[test]
    fn dropped_permit_is_not_counted() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(cfg());
        for _ in 0..50 {
            drop(b.try_acquire_at(t0).unwrap());
        }
        calls(&b, t0, 9, false);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "dropped permits must not count as calls"
        );
        // A dropped probe frees its slot without closing or re-opening.
        let b = tripped(t0);
        let t1 = t0 + secs(5);
        for _ in 0..10 {
            drop(b.try_acquire_at(t1).unwrap());
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(cfg());
        let slow = b.try_acquire_at(t0).unwrap();
        calls(&b, t0, 10, false);
        assert_eq!(b.state(), BreakerState::Open);
        // A call admitted while closed finishing during open changes nothing.
        slow.success_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        let t1 = t0 + secs(5);
        let probe = b.try_acquire_at(t1).unwrap();
        calls(&b, t1, 1, true);
        probe.failure_at(t1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn state_names_and_gauges() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
        assert_eq!(
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen
            ]
            .map(|s| s.as_gauge()),
            [0, 1, 2]
        );
    }

    #[test]
    fn zero_counts_are_raised_so_it_cannot_wedge() {
        let b = CircuitBreaker::new(BreakerConfig {
            half_open_probes: 0,
            close_after: 0,
            ..cfg()
        });
        let t0 = Instant::now();
        calls(&b, t0, 10, false);
        calls(&b, t0 + secs(5), 1, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CircuitBreaker>();
        check::<BreakerPermit<'static>>();
    }
}
