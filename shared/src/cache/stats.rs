//! Per-kind cache counters: hits, misses, stale served, coalesced waits, evictions and bytes held.
//! Plain atomics so the hot path never locks; the metrics endpoint and tests read snapshots.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

use serde::Serialize;

use super::FragmentKind;

/// Counters of one kind.
#[derive(Debug, Default)]
pub struct KindStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    coalesced: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicI64,
}

impl KindStats {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }
    pub(crate) fn stale(&self) {
        self.stale.fetch_add(1, Relaxed);
    }
    pub(crate) fn coalesced(&self) {
        self.coalesced.fetch_add(1, Relaxed);
    }
    pub(crate) fn evicted(&self) {
        self.evictions.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_bytes(&self, n: i64) {
        self.bytes.fetch_add(n, Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> KindSnapshot {
        KindSnapshot {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale: self.stale.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            bytes: u64::try_from(self.bytes.load(Relaxed)).unwrap_or(0),
        }
    }
}

/// Counter values of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindSnapshot {
    /// Served fresh from the cache.
    pub hits: u64,
    /// Not in the cache (or expired past max-stale): loaded.
    pub misses: u64,
    /// Served past TTL (while refreshing or because the backend failed).
    pub stale: u64,
    /// Waited for a load another request had started instead of loading again.
    pub coalesced: u64,
    /// Entries dropped to stay within `cache.max_bytes`.
    pub evictions: u64,
    /// Approximate bytes held now.
    pub bytes: u64,
}

/// Counters of every kind.
#[derive(Debug, Default)]
pub struct CacheStats {
    kinds: [KindStats; 7],
}

impl CacheStats {
    /// Counters of `kind`.
    pub fn kind(&self, kind: FragmentKind) -> &KindStats {
        &self.kinds[kind as usize]
    }

    /// Every kind's counters by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, KindSnapshot> {
        FragmentKind::ALL
            .iter()
            .map(|k| (k.name(), self.kind(*k).snapshot()))
            .collect()
    }
}
