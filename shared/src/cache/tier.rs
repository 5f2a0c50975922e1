//! The tier boundary: anything that can hold fragments by key. L1 is [`MemoryTier`] (moka, bounded
//! by bytes, each entry kept for its kind's TTL + max-stale). A shared tier (Redis) implements the
//! same trait and goes after L1 in `FragmentCache::with_tiers`; resolvers and composition do not
//! change. Entries carry a wall-clock `stored_at` (from the cache's [`Clock`]) because an age must
//! mean the same in every process.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use moka::{Expiry, notification::RemovalCause};

use super::{CacheStats, Clock, Fragment, FragmentKind};
use crate::config::CacheSettings;

/// A fragment with the time it was loaded.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The value.
    pub fragment: Fragment,
    /// When it was loaded from its backend.
    pub stored_at: SystemTime,
}

impl Stored {
    /// A value loaded now, on `clock`.
    pub fn now(fragment: Fragment, clock: &Clock) -> Self {
        Self {
            fragment,
            stored_at: clock.now(),
        }
    }

    /// How old the value is on `clock` (zero if the clock went backwards).
    pub fn age(&self, clock: &Clock) -> Duration {
        clock.since(self.stored_at)
    }
}

/// A place fragments can be kept.
pub trait Tier: Send + Sync {
    /// The entry at `key`, if held.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Stored>>;
    /// Stores `value` at `key`.
    fn put<'a>(&'a self, key: &'a str, value: Stored) -> BoxFuture<'a, ()>;
    /// Drops `key`.
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    /// Runs pending housekeeping (evictions) now; tiers that have none do nothing.
    fn maintain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Keeps each entry for its kind's TTL + max-stale: past that it can no longer be served at all.
struct KeepFor([Duration; 7], Clock);

impl Expiry<String, Stored> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0[value.fragment.kind() as usize].saturating_sub(value.age(&self.1)))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Stored,
        now: std::time::Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// The in-process L1 tier.
pub struct MemoryTier {
    cache: moka::future::Cache<String, Stored>,
    stats: Arc<CacheStats>,
}

impl MemoryTier {
    /// Bounded by `settings.max_bytes`; counts bytes and evictions into `stats`.
    pub fn new(settings: &CacheSettings, stats: Arc<CacheStats>, clock: Clock) -> Self {
        let keep = FragmentKind::ALL.map(|k| super::kept_for(settings.kind(k)));
        let listener_stats = stats.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|key: &String, value: &Stored| entry_weight(key, value))
            .expire_after(KeepFor(keep, clock))
            .eviction_listener(move |key: Arc<String>, value: Stored, cause| {
                let kind = listener_stats.kind(value.fragment.kind());
                kind.add_bytes(-i64::from(entry_weight(&key, &value)));
                if cause == RemovalCause::Size {
                    kind.evicted();
                }
            })
            .build();
        Self { cache, stats }
    }
}

fn entry_weight(key: &str, value: &Stored) -> u32 {
    u32::try_from(key.len() + value.fragment.weight()).unwrap_or(u32::MAX)
}

impl Tier for MemoryTier {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Stored>> {
        Box::pin(self.cache.get(key))
    }

    fn put<'a>(&'a self, key: &'a str, value: Stored) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Bytes are added here and subtracted by the removal listener, which also fires for
            // the old value when this insert replaces one, so the gauge tracks what is held.
            let weight = i64::from(entry_weight(key, &value));
            self.stats.kind(value.fragment.kind()).add_bytes(weight);
            self.cache.insert(key.to_owned(), value).await;
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.cache.invalidate(key))
    }

    fn maintain(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cache.run_pending_tasks())
    }
}
