//! Concurrency limit with a short, bounded queue: at most `max_in_flight` calls run at once; up to
//! `max_queue` more wait (FIFO) at most `queue_timeout` for a slot; anything beyond fails at once.
//!
//! Why bounded both ways: an unbounded queue turns a slow backend into unbounded latency and
//! memory in the BFF; failing fast ("overloaded") lets callers degrade the response instead.
//! The queue is tokio's fair semaphore wait list; an atomic counter bounds its length, and a
//! drop guard keeps that counter right when a waiting caller is cancelled.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    /// Every slot is busy and the queue is full.
    #[error("too many calls in flight and the queue is full")]
    QueueFull,
    /// Waited the whole queue timeout without getting a slot.
    #[error("timed out waiting for a free call slot")]
    QueueTimeout,
}

/// A per-backend concurrency limit. `Send + Sync`.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
    queued: AtomicUsize,
}

/// One running call's slot; released on drop. Owned, so it can move into spawned tasks.
#[must_use = "the slot is released when the permit is dropped"]
#[derive(Debug)]
pub struct LimitPermit {
    _slot: OwnedSemaphorePermit,
}

/// Decrements the queue length when the waiter leaves, however it leaves (slot, timeout, or the
/// caller's future being dropped).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    /// `max_in_flight` is raised to 1 (a zero limit would refuse everything) and capped at the
    /// semaphore's maximum.
    pub fn new(max_in_flight: usize, max_queue: usize, queue_timeout: Duration) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            max_queue,
            queue_timeout,
            queued: AtomicUsize::new(0),
        }
    }

    /// A slot now if one is free; else a place in the queue for up to the queue timeout; else
    /// [`Overloaded::QueueFull`] without waiting.
    pub(crate) async fn acquire(&self) -> Result<LimitPermit, Overloaded> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => return Ok(LimitPermit { _slot: slot }),
            Err(TryAcquireError::NoPermits) => {}
            // Never closed by this type; treat like a full queue rather than panic.
            Err(TryAcquireError::Closed) => return Err(Overloaded::QueueFull),
        }
        let max_queue = self.max_queue;
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max_queue).then_some(q + 1)
            })
            .is_err()
        {
            return Err(Overloaded::QueueFull);
        }
        let _queued = QueueSlot(&self.queued);
        match tokio::time::timeout(self.queue_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(slot)) => Ok(LimitPermit { _slot: slot }),
            Ok(Err(_closed)) => Err(Overloaded::QueueFull),
            Err(_elapsed) => Err(Overloaded::QueueTimeout),
        }
    }

    /// Calls holding a slot, for metrics.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.slots.available_permits())
    }

    /// Callers waiting for a slot, for metrics.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The configured limit.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::{pin::pin, task::Poll};

    use futures::poll;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn runs_at_once_under_the_limit() {
        let l = ConcurrencyLimit::new(2, 0, TIMEOUT);
        let a = l.acquire().await.unwrap();
        let b = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 2);
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded::QueueFull);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let _c = l.acquire().await.unwrap();
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_admits_up_to_max_queue_then_fails_fast() {
        let l = ConcurrencyLimit::new(1, 2, TIMEOUT);
        let running = l.acquire().await.unwrap();
        let mut w1 = pin!(l.acquire());
        let mut w2 = pin!(l.acquire());
        assert!(poll!(w1.as_mut()).is_pending());
        assert!(poll!(w2.as_mut()).is_pending());
        assert_eq!(l.queued(), 2);
        // Third waiter: refused immediately, no time passes.
        let before = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded::QueueFull);
        assert_eq!(tokio::time::Instant::now(), before);
        // FIFO hand-off.
        drop(running);
        let p1 = match poll!(w1.as_mut()) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("first waiter should get the freed slot"),
        };
        assert!(poll!(w2.as_mut()).is_pending());
        assert_eq!((l.in_flight(), l.queued()), (1, 1));
        drop(p1);
        assert!(w2.await.is_ok());
        assert_eq!((l.in_flight(), l.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_waiter_times_out() {
        let l = ConcurrencyLimit::new(1, 1, TIMEOUT);
        let _running = l.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Overloaded::QueueTimeout);
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(l.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_leaves_the_queue() {
        let l = ConcurrencyLimit::new(1, 1, TIMEOUT);
        let running = l.acquire().await.unwrap();
        {
            let mut w = pin!(l.acquire());
            assert!(poll!(w.as_mut()).is_pending());
            assert_eq!(l.queued(), 1);
        }
        assert_eq!(l.queued(), 0);
        // The place is free again, and the slot was not leaked to the cancelled waiter.
        drop(running);
        assert_eq!(l.in_flight(), 0);
        let _p = l.acquire().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_flight_is_honoured_under_load() {
        let l = Arc::new(ConcurrencyLimit::new(3, 100, Duration::from_secs(10)));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (l, peak) = (Arc::clone(&l), Arc::clone(&peak));
                tokio::spawn(async move {
                    let _p = l.acquire().await.unwrap();
                    peak.fetch_max(l.in_flight(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!((l.in_flight(), l.queued()), (0, 0));
    }

    #[test]
    fn zero_limit_is_raised_to_one() {
        assert_eq!(ConcurrencyLimit::new(0, 0, TIMEOUT).max_in_flight(), 1);
    }
}
