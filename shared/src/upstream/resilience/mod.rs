//! Resilience primitives for upstream calls: circuit breaker, retry budget, jittered backoff,
//! concurrency limit and endpoint balancing (round robin / power of two choices, passive outlier
//! ejection, active health checks, DNS re-resolution), and a limit on repeated log lines.
//!
//! Owns: the building blocks only. Each type is self-contained, `Send + Sync`, and cheap on the hot
//! path (no allocation per call, short `std::sync` critical sections, no lock ever held across an
//! `.await`). Does not own the order in which they are applied, per-backend configuration or
//! error mapping: that is the policy's job (`upstream/policy.rs`), so it stays the one choke
//! point every call passes through.
//!
//! # Time
//! Every time-dependent operation has an `_at(now: Instant)` variant; the plain method calls it
//! with `Instant::now()`. Tests drive the clock by passing instants instead of sleeping, which
//! keeps them deterministic and fast. The async parts (queue wait, refresh loops) use tokio time,
//! so they can be tested under paused time.
//!
//! # Suggested order in the policy (outermost first)
//! breaker → concurrency limit → endpoint pick → attempt (timeout) → on retryable failure of an
//! idempotent read: retry budget → backoff → next attempt. The breaker sees one outcome per
//! attempt, so a failing backend trips it even when retries hide the failures from callers.

pub mod backoff;
pub mod balancer;
pub mod breaker;
pub mod budget;
pub mod limiter;
pub mod log_limit;
mod window;

use std::{
    sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

pub use backoff::Backoff;
pub use balancer::{
    EjectionConfig, EndpointGuard, EndpointSet, EndpointStatus, Strategy, grpc_probe, http_probe,
    resolve, spawn_dns_refresh, spawn_health_checks,
};
pub use breaker::{BreakerConfig, BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker};
pub use budget::RetryBudget;
pub use limiter::{ConcurrencyLimit, LimitPermit, Overloaded};
pub use log_limit::LogLimit;

// Poisoning is ignored on purpose: every critical section in this module only does arithmetic on
// plain counters, so a panic elsewhere while holding the lock cannot leave them half-updated in a
// way that matters more than failing every later call would.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// `base · 2^exp`, capped at `cap`, without overflow for any `exp`.
fn grow(base: Duration, exp: u32, cap: Duration) -> Duration {
    match 1u32.checked_shl(exp) {
        Some(factor) if exp < 32 => base.saturating_mul(factor).min(cap),
        _ if base.is_zero() => Duration::ZERO,
        _ => cap,
    }
}

/// `now + d`, saturating instead of panicking on absurd configured durations.
fn later(now: Instant, d: Duration) -> Instant {
    // Instant has no saturating_add; an hour's fallback only matters for `Duration::MAX`-like
    // configs, where "a long time" is the intent anyway.
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_doubles_and_caps_without_overflow() {
        let ms = Duration::from_millis;
        assert_eq!(grow(ms(10), 0, ms(1000)), ms(10));
        assert_eq!(grow(ms(10), 3, ms(1000)), ms(80));
        assert_eq!(grow(ms(10), 10, ms(1000)), ms(1000));
        assert_eq!(grow(ms(10), 31, ms(1000)), ms(1000));
        assert_eq!(grow(ms(10), u32::MAX, ms(1000)), ms(1000));
        assert_eq!(grow(Duration::ZERO, u32::MAX, ms(1000)), Duration::ZERO);
        assert_eq!(grow(Duration::MAX, 5, Duration::MAX), Duration::MAX);
    }
}
