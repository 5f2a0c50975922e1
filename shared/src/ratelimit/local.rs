//! The in-process store: one small state per key in a moka cache bounded by `max_keys` (a flood
//! of distinct keys evicts — TinyLFU keeps the frequent ones — instead of growing memory) whose
//! idle keys are dropped once they are as good as fresh (`algorithm::forget_after_us`). A
//! decision locks its keys (in key order, so two requests never wait on each other in a cycle),
//! evaluates every policy, and writes the new states only when all admit.
//!
//! An evicted key comes back fresh: under a flood beyond `max_keys`, a rarely seen client may
//! get a new allowance. That is the price of bounded memory, and the reason the bound is a
//! setting.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use moka::sync::Cache;
use parking_lot::Mutex;

use super::{
    Check, Clock, Policy, Store,
    algorithm::{self, State, Verdict},
};

/// A key's state behind its own lock.
type Slot = Arc<Mutex<Option<State>>>;

/// The in-process store.
pub(crate) struct LocalStore {
    keys: Cache<String, Slot>,
    clock: Arc<dyn Clock>,
}

impl LocalStore {
    pub(crate) fn new(policies: &[Arc<Policy>], max_keys: u64, clock: Arc<dyn Clock>) -> Self {
        let forget_us = policies
            .iter()
            .map(|p| algorithm::forget_after_us(&p.params))
            .max()
            .unwrap_or(0);
        // A second more than the slowest policy needs to forget, so an idle key is never dropped
        // while it still holds something.
        let idle =
            Duration::from_micros(u64::try_from(forget_us).unwrap_or(0)) + Duration::from_secs(1);
        Self {
            keys: Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
            clock,
        }
    }

    /// Keys held now (after pending maintenance).
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }

    /// Decides `checks` at the store's time.
    pub(crate) fn decide_now(&self, checks: &[Check]) -> Vec<Verdict> {
        self.decide_at(checks, self.clock.now_us())
    }

    /// Decides `checks` at `now` (µs).
    pub(crate) fn decide_at(&self, checks: &[Check], now: i64) -> Vec<Verdict> {
        let slots: Vec<Slot> = checks
            .iter()
            .map(|c| {
                self.keys
                    .get_with_by_ref(c.key.as_str(), || Arc::new(Mutex::new(None)))
            })
            .collect();
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by(|&a, &b| checks[a].key.cmp(&checks[b].key));
        // Every key of the request is held while it is decided, so concurrent requests see
        // all-or-nothing charges. The locks are held for a few float operations, never across
        // an await.
        let mut guards: Vec<Option<parking_lot::MutexGuard<'_, Option<State>>>> =
            (0..checks.len()).map(|_| None).collect();
        for &i in &order {
            guards[i] = Some(slots[i].lock());
        }
        let steps: Vec<algorithm::Step> = checks
            .iter()
            .zip(&guards)
            .map(|(c, g)| {
                let state = g.as_ref().and_then(|g| **g);
                algorithm::evaluate(&c.policy.params, state, now, c.cost)
            })
            .collect();
        let all = steps.iter().all(|s| s.verdict.allowed);
        if all {
            for (step, guard) in steps.iter().zip(guards.iter_mut()) {
                if let (Some(next), Some(g)) = (step.next, guard.as_mut()) {
                    **g = Some(next);
                }
            }
        }
        steps.into_iter().map(|s| s.verdict).collect()
    }
}

impl Store for LocalStore {
    fn decide<'a>(&'a self, checks: &'a [Check]) -> BoxFuture<'a, Vec<Verdict>> {
        Box::pin(std::future::ready(self.decide_now(checks)))
    }
}
