//! When a backend call must be done by. One request's call has its request's deadline; a load
//! that several requests share (the fragment cache runs one per key, whoever asked first) has
//! the **latest** deadline among the requests waiting for it, which grows as requests join — so
//! a load is never cut short by its first caller's budget while a later caller still has time.
//! Every attempt reads it afresh, and an attempt in flight is cut only when the deadline, as it
//! stands then, has passed.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A deadline shared by every clone; `u64::MAX` is none.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<AtomicU64>);

/// The instant deadlines are counted from (microseconds after it): the first use in the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros())
        .unwrap_or(u64::MAX - 1)
        .min(u64::MAX - 1)
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Deadline {
    /// A deadline at `at` (`None`: no deadline).
    pub fn new(at: Option<Instant>) -> Self {
        Self(Arc::new(AtomicU64::new(at.map_or(u64::MAX, micros))))
    }

    /// When, as it stands now.
    pub fn get(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(epoch() + Duration::from_micros(us)),
        }
    }

    /// Another waiter's deadline: this one moves to `other` if that is later (no deadline is
    /// the latest of all).
    pub fn extend_to(&self, other: Option<Instant>) {
        self.0
            .fetch_max(other.map_or(u64::MAX, micros), Ordering::Relaxed);
    }

    /// Time left now (`None`: no deadline).
    pub fn left(&self) -> Option<Duration> {
        self.get()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Completes once the deadline, as it stands when reached, has passed (never without one).
    /// Read on tokio's clock, so it follows a paused test clock too.
    pub async fn passed(&self) {
        loop {
            let Some(at) = self.get() else {
                return std::future::pending::<()>().await;
            };
            let at = tokio::time::Instant::from_std(at);
            if at <= tokio::time::Instant::now() {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_latest_waiter_wins_and_none_is_latest() {
        let now = Instant::now();
        let d = Deadline::new(Some(now + Duration::from_millis(100)));
        let shared = d.clone();
        shared.extend_to(Some(now + Duration::from_millis(50)));
        let at = d.get().unwrap();
        assert!(at >= now + Duration::from_millis(99) && at <= now + Duration::from_millis(101));
        shared.extend_to(Some(now + Duration::from_secs(3)));
        assert!(d.get().unwrap() >= now + Duration::from_millis(2999));
        shared.extend_to(None);
        assert_eq!(d.get(), None);
        assert_eq!(Deadline::default().left(), None);
    }

    /// An extension made while someone waits for the deadline moves their wake-up too.
    #[tokio::test(start_paused = true)]
    async fn waiting_follows_an_extension() {
        let start = tokio::time::Instant::now();
        let now = || tokio::time::Instant::now().into_std();
        let d = Deadline::new(Some(now() + Duration::from_millis(100)));
        let later = d.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.extend_to(Some(now() + Duration::from_millis(250)));
        });
        d.passed().await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
    }
}
