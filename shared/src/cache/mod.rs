//! Fragment cache: caches the pieces a homepage is built from (a title, a region's top 10, a
//! user's continue-watching row, …) rather than whole responses, each with its own freshness.
//!
//! Owns: fragment kinds and keys ([`FragmentKind`], [`key`]), the tiers behind one boundary
//! ([`tier::Tier`]: L1 is an in-process moka cache bounded by bytes; L2, when `cache.l2` is set, a
//! Redis or Redis Cluster the fleet shares, [`l2`]), the wall clock ages are read from
//! ([`Clock`]), coalescing of concurrent loads ([`FragmentCache::get_or_load`], [`FragmentCache::titles`]),
//! stale-while-revalidate and stale-if-error, invalidation for read-your-writes, per-kind counters
//! ([`stats`]), and the per-request record of which fragments were used ([`CacheLog`]) from which
//! `Cache-Control` and the `extensions.cache` report are derived, and what a domain event from the
//! bus makes stale ([`invalidate`]). Each kind's freshness is read at every lookup, so a config
//! reload changes it without dropping what is cached ([`FragmentCache::reconfigure`]). Does not own what to load: callers
//! pass the loader (the upstream call), so the cache never talks to a backend itself.
//!
//! Safety of per-user fragments rests on the key: it is built from a [`UserId`], which only
//! `auth` creates from a verified token — no client header can name another user's entry.

mod clock;
mod fragment;
pub mod invalidate;
pub mod key;
pub mod l2;
pub mod stats;
pub mod tier;
pub mod watch;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::Instrument;

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

pub use clock::Clock;
pub use fragment::{Cacheable, Fragment};
pub use key::{FragmentKey, FragmentKind};
pub use stats::{CacheStats, KindStats};
use tier::{MemoryTier, Stored, Tier};

use crate::{
    config::CacheSettings,
    domain::Title,
    upstream::{BackendError, BackendId, Deadline},
};

type LoadResult = Result<Fragment, BackendError>;
type InFlight = Shared<BoxFuture<'static, LoadResult>>;
type TitlesResult = Result<Arc<HashMap<String, Arc<Title>>>, BackendError>;
type TitlesInFlight = Shared<BoxFuture<'static, TitlesResult>>;

/// How fresh a fragment served to a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Loaded from the backend for (or while serving) this request.
    Loaded,
    /// From the cache, within its TTL.
    Fresh,
    /// From the cache, past its TTL (served while a refresh runs, or because the backend failed).
    Stale,
}

/// One fragment a request used.
#[derive(Debug, Clone)]
pub struct FragmentUse {
    /// Which kind.
    pub kind: FragmentKind,
    /// How fresh it was.
    pub freshness: Freshness,
    /// Its age when served.
    pub age: Duration,
    /// How long it stays fresh from now (zero when stale).
    pub fresh_for: Duration,
}

/// The fragments one request used; read after execution for `Cache-Control` and `extensions`.
#[derive(Debug, Default)]
pub struct CacheLog {
    uses: Mutex<Vec<FragmentUse>>,
}

impl CacheLog {
    fn record(&self, u: FragmentUse) {
        if let Ok(mut uses) = self.uses.lock() {
            uses.push(u);
        }
    }

    /// Everything recorded so far.
    pub fn uses(&self) -> Vec<FragmentUse> {
        self.uses.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// The shortest remaining freshness among the fragments used: how long a shared HTTP cache may
    /// keep a response built from them. `None` when no fragment was used.
    pub(crate) fn max_age(&self) -> Option<Duration> {
        self.uses().iter().map(|u| u.fresh_for).min()
    }
}

/// The fragment cache. Cheap to clone.
#[derive(Clone)]
pub struct FragmentCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// Read at every lookup; a config reload replaces it ([`FragmentCache::reconfigure`]).
    settings: arc_swap::ArcSwap<CacheSettings>,
    /// The shared tier's counters, when there is one.
    l2: Option<Arc<l2::L2Stats>>,
    /// What `stored_at` and ages are read from.
    clock: Clock,
    tiers: Vec<Arc<dyn Tier>>,
    stats: Arc<CacheStats>,
    /// Loads in flight by key: an id, the load, and its deadline (the latest of its waiters').
    inflight: Mutex<HashMap<String, (u64, InFlight, Deadline)>>,
    /// Title batches in flight by id, with the batch's deadline.
    titles_inflight: Mutex<HashMap<String, (TitlesInFlight, Deadline)>>,
    /// When each recently invalidated key was invalidated: loads that started earlier must not
    /// write their (possibly pre-write) answer back.
    invalidated: moka::sync::Cache<String, Instant>,
    next_load_id: std::sync::atomic::AtomicU64,
    /// Per kind: entries stored before this wall-clock time (micros since the Unix epoch) are
    /// treated as absent — how a whole kind is dropped at once (after an event-bus outage)
    /// without walking the tiers.
    stored_after: [std::sync::atomic::AtomicU64; 7],
    /// Since when (micros since the Unix epoch) this instance's event subscription is down; 0
    /// while it is up. See [`FragmentCache::bus_interrupted`].
    bus_down_since: std::sync::atomic::AtomicU64,
    /// `events.max_stale_while_disconnected`, in microseconds.
    bus_stale_bound: std::sync::atomic::AtomicU64,
    /// Who waits for a fragment to change (the live homepage's subscriptions).
    watchers: watch::Watchers,
}

/// Kinds that only domain events keep fresh within their (long) TTLs: while the subscription is
/// down their freshness is cut to `events.max_stale_while_disconnected`.
const EVENT_KEPT: [FragmentKind; 4] = [
    FragmentKind::Title,
    FragmentKind::Top10,
    FragmentKind::MyList,
    FragmentKind::ContinueWatching,
];

/// How long an entry of a kind with these settings can be served at all: TTL + max-stale.
pub(crate) fn kept_for(s: &crate::config::KindSettings) -> Duration {
    s.ttl.saturating_add(s.max_stale)
}

/// How long an invalidation is remembered; far longer than any backend call may take.
const INVALIDATION_MEMORY: Duration = Duration::from_secs(120);

impl FragmentCache {
    /// A cache with an L1 memory tier bounded by `settings.max_bytes`.
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_clock(settings, Clock::default())
    }

    /// [`Self::new`] reading time from `clock`.
    pub(crate) fn with_clock(settings: CacheSettings, clock: Clock) -> Self {
        let stats = Arc::new(CacheStats::default());
        let l1: Arc<dyn Tier> = Arc::new(MemoryTier::new(&settings, stats.clone(), clock.clone()));
        Self::with_tiers(settings, vec![l1], stats, clock)
    }

    /// The cache `settings` describe: L1, and the shared Redis tier after it when `cache.l2` is
    /// set (connected lazily: a Redis that is not up yet is an outage, not a failed start).
    pub fn from_settings(settings: CacheSettings) -> Result<Self, l2::L2Error> {
        let Some(url) = &settings.l2 else {
            return Ok(Self::new(settings));
        };
        let clock = Clock::default();
        let stats = Arc::new(CacheStats::default());
        let l1: Arc<dyn Tier> = Arc::new(MemoryTier::new(&settings, stats.clone(), clock.clone()));
        let redis = l2::RedisTier::new(
            l2::L2Options {
                url: url.expose().to_owned(),
                cluster: settings.l2_cluster,
                prefix: settings.l2_prefix.clone(),
                timeout: settings.l2_timeout,
                max_entry_bytes: settings.l2_max_entry_bytes,
                keep: FragmentKind::ALL.map(|k| kept_for(settings.kind(k))),
            },
            clock.clone(),
        )?;
        let l2_stats = redis.stats().clone();
        let tiers: Vec<Arc<dyn Tier>> = vec![l1, Arc::new(redis)];
        Ok(Self::build(settings, tiers, stats, clock, Some(l2_stats)))
    }

    /// The shared tier's counters (`None` without one).
    pub(crate) fn l2_stats(&self) -> Option<&Arc<l2::L2Stats>> {
        self.inner.l2.as_ref()
    }

    /// A cache over explicit tiers, first = nearest (a shared tier would go after L1).
    pub(crate) fn with_tiers(
        settings: CacheSettings,
        tiers: Vec<Arc<dyn Tier>>,
        stats: Arc<CacheStats>,
        clock: Clock,
    ) -> Self {
        Self::build(settings, tiers, stats, clock, None)
    }

    fn build(
        settings: CacheSettings,
        tiers: Vec<Arc<dyn Tier>>,
        stats: Arc<CacheStats>,
        clock: Clock,
        l2: Option<Arc<l2::L2Stats>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: arc_swap::ArcSwap::from_pointee(settings),
                l2,
                clock,
                tiers,
                stats,
                inflight: Mutex::new(HashMap::new()),
                titles_inflight: Mutex::new(HashMap::new()),
                invalidated: moka::sync::Cache::builder()
                    .time_to_live(INVALIDATION_MEMORY)
                    .build(),
                next_load_id: std::sync::atomic::AtomicU64::new(0),
                stored_after: Default::default(),
                bus_down_since: std::sync::atomic::AtomicU64::new(0),
                bus_stale_bound: std::sync::atomic::AtomicU64::new(0),
                watchers: watch::Watchers::default(),
            }),
        }
    }

    /// Runs every tier's pending housekeeping (moka evicts lazily); for tests and metrics scrapes
    /// that want exact byte counts.
    pub async fn maintain(&self) {
        for tier in &self.inner.tiers {
            tier.maintain().await;
        }
    }

    /// Per-kind counters.
    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.inner.stats
    }

    /// The clock ages are read from.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Settings in force.
    pub fn settings(&self) -> Arc<CacheSettings> {
        self.inner.settings.load_full()
    }

    /// Applies new settings (a config reload): from now on every lookup and load uses the new
    /// TTLs, max-stale windows and switches; what is cached stays, judged by the new freshness
    /// (an entry past the new TTL is stale, past the new TTL + max-stale gone). The byte budget
    /// of the L1 tier is fixed when it is made and does not change here.
    pub(crate) fn reconfigure(&self, settings: CacheSettings) {
        for tier in &self.inner.tiers {
            tier.reconfigure(&settings);
        }
        self.inner.settings.store(Arc::new(settings));
    }

    fn ttl(&self, kind: FragmentKind) -> Duration {
        self.inner.settings.load().kind(kind).ttl
    }

    /// The event subscription went down at `since`: from `bound` after it, fragments that only
    /// events keep fresh count as stale once older than `bound` (they are refetched, or served
    /// stale only if the backend fails too).
    pub(crate) fn bus_interrupted(&self, since: std::time::SystemTime, bound: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.bus_stale_bound.store(
            u64::try_from(bound.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        self.inner
            .bus_down_since
            .store(micros_since_epoch(since).max(1), Relaxed);
        self.inner.watchers.bus(watch::BusState::Down);
    }

    /// The event subscription is back (what it missed is dropped by the invalidator).
    pub(crate) fn bus_resumed(&self) {
        self.inner
            .bus_down_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.inner.watchers.bus(watch::BusState::Up);
    }

    /// How long a fragment of `kind` stays fresh now: its TTL, or — the subscription down, so
    /// invalidations may be missed — no longer than the bound.
    fn fresh_ttl(&self, kind: FragmentKind) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let ttl = self.ttl(kind);
        if self.inner.bus_down_since.load(Relaxed) == 0 || !EVENT_KEPT.contains(&kind) {
            return ttl;
        }
        ttl.min(Duration::from_micros(
            self.inner.bus_stale_bound.load(Relaxed),
        ))
    }

    fn enabled(&self, kind: FragmentKind) -> bool {
        let settings = self.inner.settings.load();
        settings.enabled && settings.kind(kind).enabled
    }

    async fn lookup(&self, kind: FragmentKind, key: &str) -> Option<Stored> {
        let keep = kept_for(self.inner.settings.load().kind(kind));
        for (i, tier) in self.inner.tiers.iter().enumerate() {
            if let Some(found) = tier.get(key).await {
                // Past TTL + max-stale it can no longer be served (a tier's own expiry runs on
                // its own clock, and a shared tier's only approximately; both were set with the
                // settings of when the entry was stored, which a reload may have changed since).
                let expired = found.age(&self.inner.clock) >= keep;
                if expired || !self.storable(kind, found.stored_at) {
                    tier.remove(key).await;
                    continue;
                }
                // Backfill the nearer tiers so the next read is local.
                for nearer in &self.inner.tiers[..i] {
                    nearer.put(key, found.clone()).await;
                }
                return Some(found);
            }
        }
        None
    }

    /// [`Self::lookup`] of many keys of one kind at once: each tier is asked once for the keys
    /// the nearer tiers lacked.
    async fn lookup_many(&self, kind: FragmentKind, keys: &[&str]) -> Vec<Option<Stored>> {
        let keep = kept_for(self.inner.settings.load().kind(kind));
        let mut out: Vec<Option<Stored>> = vec![None; keys.len()];
        for (i, tier) in self.inner.tiers.iter().enumerate() {
            let missing: Vec<usize> = (0..keys.len()).filter(|&k| out[k].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let asked: Vec<&str> = missing.iter().map(|&k| keys[k]).collect();
            let answers = tier.get_many(&asked).await;
            for (&k, found) in missing.iter().zip(answers) {
                let Some(found) = found else { continue };
                let expired = found.age(&self.inner.clock) >= keep;
                if expired || !self.storable(kind, found.stored_at) {
                    tier.remove(keys[k]).await;
                    continue;
                }
                for nearer in &self.inner.tiers[..i] {
                    nearer.put(keys[k], found.clone()).await;
                }
                out[k] = Some(found);
            }
        }
        out
    }

    async fn store(&self, key: &str, stored: Stored) {
        for tier in &self.inner.tiers {
            tier.put(key, stored.clone()).await;
        }
    }

    /// Counts a value served from the cache at `age` as a hit or a stale hit and says how fresh it was.
    fn served(&self, kind: FragmentKind, age: Duration) -> FragmentUse {
        let ttl = self.fresh_ttl(kind);
        let stats = self.inner.stats.kind(kind);
        if age < ttl {
            stats.hit();
            FragmentUse {
                kind,
                freshness: Freshness::Fresh,
                age,
                fresh_for: ttl - age,
            }
        } else {
            stats.stale();
            FragmentUse {
                kind,
                freshness: Freshness::Stale,
                age,
                fresh_for: Duration::ZERO,
            }
        }
    }

    /// The fragment at `key`, from the cache when fresh enough, else from `load`. Concurrent misses
    /// on one key share one load. A fragment past its TTL but within `max_stale` is returned at once
    /// and refreshed in the background (one refresh at a time); if that refresh fails the stale
    /// value keeps being served until `max_stale` runs out. `deadline` is the one the caller's
    /// `load` calls under: a load shared with later callers runs until the latest of theirs.
    pub(crate) async fn get_or_load<T, F, Fut>(
        &self,
        key: &FragmentKey,
        log: &CacheLog,
        deadline: &Deadline,
        load: F,
    ) -> Result<Arc<T>, BackendError>
    where
        T: Cacheable,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let kind = key.kind();
        let ttl = self.ttl(kind);
        let make = move || -> BoxFuture<'static, LoadResult> {
            load()
                .map(|r| r.map(|v| T::into_fragment(Arc::new(v))))
                .boxed()
        };
        if !self.enabled(kind) {
            let fragment = make().await?;
            log.record(FragmentUse {
                kind,
                freshness: Freshness::Loaded,
                age: Duration::ZERO,
                fresh_for: Duration::ZERO,
            });
            return T::from_fragment(&fragment).ok_or_else(|| mismatch(kind));
        }
        let k = key.as_str();
        if let Some(found) = self.lookup(kind, k).await {
            let age = found.age(&self.inner.clock);
            if let Some(value) = T::from_fragment(&found.fragment) {
                let used = self.served(kind, age);
                let stale = used.freshness == Freshness::Stale;
                if stale && age < ttl {
                    // Stale only because the event subscription is down: refetch now; the
                    // cached value is the answer only if the backend fails too.
                    match self.load_coalesced(key, "refresh", deadline, make).await {
                        Ok(fragment) => {
                            if let Some(fresh) = T::from_fragment(&fragment) {
                                log.record(FragmentUse {
                                    kind,
                                    freshness: Freshness::Loaded,
                                    age: Duration::ZERO,
                                    fresh_for: self.fresh_ttl(kind),
                                });
                                return Ok(fresh);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "refetch while the event bus is down failed; serving stale");
                        }
                    }
                    log.record(used);
                    return Ok(value);
                }
                log.record(used);
                if stale {
                    self.refresh_in_background(key, deadline, make);
                }
                return Ok(value);
            }
        }
        self.inner.stats.kind(kind).miss();
        let fragment = self.load_coalesced(key, "miss", deadline, make).await?;
        log.record(FragmentUse {
            kind,
            freshness: Freshness::Loaded,
            age: Duration::ZERO,
            fresh_for: ttl,
        });
        T::from_fragment(&fragment).ok_or_else(|| mismatch(kind))
    }

    /// Joins the load in flight for `key` (extending its deadline to the caller's), or starts one
    /// under `deadline` that stores its answer when it succeeds.
    fn load_coalesced(
        &self,
        key: &FragmentKey,
        reason: &'static str,
        deadline: &Deadline,
        make: impl FnOnce() -> BoxFuture<'static, LoadResult>,
    ) -> InFlight {
        let mut inflight = match self.inner.inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, running, shared_deadline)) = inflight.get(key.as_str()) {
            self.inner.stats.kind(key.kind()).coalesced();
            shared_deadline.extend_to(deadline.get());
            return running.clone();
        }
        let id = self
            .inner
            .next_load_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let started_wall = self.inner.clock.now();
        let cache = self.clone();
        let owned_key = key.clone();
        let load = make();
        let fut = async move {
            let result = load.await;
            if let Ok(fragment) = &result {
                // A write that invalidated this key after the load began wins: don't store.
                let stale_by_write = cache
                    .inner
                    .invalidated
                    .get(owned_key.as_str())
                    .is_some_and(|at| at >= started)
                    || !cache.storable(owned_key.kind(), started_wall);
                if !stale_by_write {
                    cache
                        .store(
                            owned_key.as_str(),
                            Stored::now(fragment.clone(), &cache.inner.clock),
                        )
                        .await;
                }
            }
            cache.finish_load(owned_key.as_str(), id);
            result
        };
        // The load runs as its own task: a request that stops waiting (its deadline passed) does
        // not cancel a load other requests share, and the answer still lands in the cache. The
        // task's clean-up takes the `inflight` lock, which is held here until the insert, so it
        // cannot run before the entry exists.
        let backend = key.kind().backend();
        let span = tracing::info_span!("cache.load", fragment = key.kind().name(), reason);
        let task = tokio::spawn(fut.instrument(span));
        let fut = async move {
            task.await
                .unwrap_or_else(|e| Err(join_failure(backend, &e)))
        }
        .boxed()
        .shared();
        inflight.insert(key.as_str().to_owned(), (id, fut.clone(), deadline.clone()));
        fut
    }

    fn finish_load(&self, key: &str, id: u64) {
        if let Ok(mut inflight) = self.inner.inflight.lock()
            && inflight
                .get(key)
                .is_some_and(|(running, _, _)| *running == id)
        {
            inflight.remove(key);
        }
    }

    fn refresh_in_background(
        &self,
        key: &FragmentKey,
        deadline: &Deadline,
        make: impl FnOnce() -> BoxFuture<'static, LoadResult>,
    ) {
        let already = self
            .inner
            .inflight
            .lock()
            .map(|m| m.contains_key(key.as_str()))
            .unwrap_or(true);
        if already {
            return;
        }
        let refresh = self.load_coalesced(key, "refresh", deadline, make);
        let kind = key.kind();
        tokio::spawn(async move {
            if let Err(e) = refresh.await {
                tracing::debug!(fragment = kind.name(), error = %e, "background refresh failed; serving stale");
            }
        });
    }

    /// Drops `key` from every tier and makes loads already running for it unable to write back,
    /// so the next read sees the backend's current state (read-your-writes).
    pub async fn invalidate(&self, key: &FragmentKey) {
        self.inner
            .invalidated
            .insert(key.as_str().to_owned(), Instant::now());
        if let Ok(mut inflight) = self.inner.inflight.lock() {
            inflight.remove(key.as_str());
        }
        for tier in &self.inner.tiers {
            tier.remove(key.as_str()).await;
        }
        // After every tier dropped it: a watcher reloading now reads the service's new state.
        self.inner.watchers.changed(key.as_str());
    }

    /// Waits for `key` to change (see [`watch`]): the live homepage's subscriptions.
    pub fn watch(&self, key: &FragmentKey) -> watch::Watch {
        self.inner.watchers.watch(key.as_str())
    }

    /// Fragment keys someone watches now.
    pub fn watched_keys(&self) -> usize {
        self.inner.watchers.watched()
    }

    /// Drops every entry of `kinds` stored before `before` (and keeps loads that began before it
    /// from storing): after the event bus was away, anything cached then may have missed its
    /// invalidation.
    pub(crate) fn invalidate_stored_before(
        &self,
        kinds: &[FragmentKind],
        before: std::time::SystemTime,
    ) {
        let micros = micros_since_epoch(before);
        for k in kinds {
            self.inner.stored_after[*k as usize]
                .fetch_max(micros, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether a value of `kind` loaded (or begun loading) at `at` may be served or stored.
    fn storable(&self, kind: FragmentKind, at: std::time::SystemTime) -> bool {
        let after =
            self.inner.stored_after[kind as usize].load(std::sync::atomic::Ordering::Relaxed);
        after == 0 || micros_since_epoch(at) >= after
    }

    /// Titles by id: cached ones one by one, the rest with ONE `fetch` for the ids nobody is
    /// fetching yet; ids another request is already fetching are awaited, not fetched again.
    /// Unknown ids are simply absent from the answer. `deadline` as for [`Self::get_or_load`].
    pub async fn titles<F, Fut>(
        &self,
        ids: &[String],
        log: &CacheLog,
        deadline: &Deadline,
        fetch: F,
    ) -> Result<HashMap<String, Arc<Title>>, BackendError>
    where
        F: Fn(Vec<String>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<HashMap<String, Arc<Title>>, BackendError>> + Send + 'static,
    {
        let kind = FragmentKind::Title;
        let ttl = self.ttl(kind);
        let mut out = HashMap::with_capacity(ids.len());
        if !self.enabled(kind) {
            let fetched = fetch(ids.to_vec()).await?;
            log.record(FragmentUse {
                kind,
                freshness: Freshness::Loaded,
                age: Duration::ZERO,
                fresh_for: Duration::ZERO,
            });
            return Ok(fetched);
        }
        let stats = self.inner.stats.kind(kind);
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        let mut bus_stale = Vec::new();
        let mut oldest: Option<FragmentUse> = None;
        let keys: Vec<FragmentKey> = ids.iter().map(|id| FragmentKey::title(id)).collect();
        let key_strs: Vec<&str> = keys.iter().map(FragmentKey::as_str).collect();
        let found = self.lookup_many(kind, &key_strs).await;
        for (id, found) in ids.iter().zip(found) {
            match found.and_then(|s| {
                let age = s.age(&self.inner.clock);
                Some((age, <Title as Cacheable>::from_fragment(&s.fragment)?))
            }) {
                Some((age, title)) => {
                    let u = self.served(kind, age);
                    if u.freshness == Freshness::Stale {
                        if age < ttl {
                            bus_stale.push(id.clone());
                        } else {
                            stale.push(id.clone());
                        }
                    }
                    // One entry per request for titles: the least fresh one decides.
                    if oldest.as_ref().is_none_or(|o| {
                        u.fresh_for < o.fresh_for || (u.fresh_for == o.fresh_for && u.age > o.age)
                    }) {
                        oldest = Some(u);
                    }
                    out.insert(id.clone(), title);
                }
                None => {
                    stats.miss();
                    missing.push(id.clone());
                }
            }
        }
        if !missing.is_empty() {
            // Our own batch and the batches we joined run concurrently: awaiting them one by one
            // would not even start our fetch until the others had finished.
            let waits = self.start_or_join_titles(&missing, "miss", deadline, fetch.clone());
            for fetched in futures::future::try_join_all(waits).await? {
                for id in &missing {
                    if let Some(t) = fetched.get(id) {
                        out.insert(id.clone(), t.clone());
                    }
                }
            }
            let loaded = FragmentUse {
                kind,
                freshness: Freshness::Loaded,
                age: Duration::ZERO,
                fresh_for: ttl,
            };
            if oldest
                .as_ref()
                .is_none_or(|o| loaded.fresh_for < o.fresh_for)
            {
                oldest = Some(loaded);
            }
        }
        if !bus_stale.is_empty() {
            // Stale only because the event subscription is down: refetched now, served stale
            // only if the catalog fails too.
            let waits = self.start_or_join_titles(&bus_stale, "refresh", deadline, fetch.clone());
            match futures::future::try_join_all(waits).await {
                Ok(batches) => {
                    for fetched in batches {
                        for id in &bus_stale {
                            if let Some(t) = fetched.get(id) {
                                out.insert(id.clone(), t.clone());
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "title refetch while the event bus is down failed; serving stale");
                }
            }
        }
        if !stale.is_empty() {
            let refresh = self.start_or_join_titles(&stale, "refresh", deadline, fetch);
            tokio::spawn(async move {
                for r in refresh {
                    if let Err(e) = r.await {
                        tracing::debug!(error = %e, "background title refresh failed; serving stale");
                    }
                }
            });
        }
        if let Some(u) = oldest {
            log.record(u);
        }
        Ok(out)
    }

    /// Registers one batch fetch for the `ids` nobody is fetching and returns every batch the
    /// caller must await (its own, if any, plus those of other requests covering the rest).
    fn start_or_join_titles<F, Fut>(
        &self,
        ids: &[String],
        reason: &'static str,
        deadline: &Deadline,
        fetch: F,
    ) -> Vec<TitlesInFlight>
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<String, Arc<Title>>, BackendError>> + Send + 'static,
    {
        let stats = self.inner.stats.kind(FragmentKind::Title);
        let mut inflight = match self.inner.titles_inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut waits: Vec<TitlesInFlight> = Vec::new();
        let mut to_fetch = Vec::new();
        for id in ids {
            match inflight.get(id) {
                Some((running, shared_deadline)) => {
                    stats.coalesced();
                    shared_deadline.extend_to(deadline.get());
                    waits.push(running.clone());
                }
                None => to_fetch.push(id.clone()),
            }
        }
        if !to_fetch.is_empty() {
            let cache = self.clone();
            let batch_ids = to_fetch.clone();
            let started = Instant::now();
            let started_wall = self.inner.clock.now();
            let fut = async move {
                let result = fetch(batch_ids.clone()).await.map(Arc::new);
                if let Ok(titles) = &result {
                    for (id, title) in titles.iter() {
                        let key = FragmentKey::title(id);
                        let invalidated = cache
                            .inner
                            .invalidated
                            .get(key.as_str())
                            .is_some_and(|at| at >= started)
                            || !cache.storable(FragmentKind::Title, started_wall);
                        if !invalidated {
                            cache
                                .store(
                                    key.as_str(),
                                    Stored::now(Fragment::Title(title.clone()), &cache.inner.clock),
                                )
                                .await;
                        }
                    }
                }
                if let Ok(mut inflight) = cache.inner.titles_inflight.lock() {
                    for id in &batch_ids {
                        inflight.remove(id);
                    }
                }
                result
            };
            // Its own task for the same reasons as `load_coalesced`.
            let span = tracing::info_span!(
                "cache.load",
                fragment = "title",
                reason,
                ids = to_fetch.len()
            );
            let task = tokio::spawn(fut.instrument(span));
            let fut = async move {
                task.await
                    .unwrap_or_else(|e| Err(join_failure(crate::upstream::BackendId::Catalog, &e)))
            }
            .boxed()
            .shared();
            for id in &to_fetch {
                inflight.insert(id.clone(), (fut.clone(), deadline.clone()));
            }
            waits.push(fut);
        }
        // Several ids may share one batch: await each batch once.
        let mut unique: Vec<TitlesInFlight> = Vec::with_capacity(waits.len());
        for w in waits {
            if !unique.iter().any(|u| u.ptr_eq(&w)) {
                unique.push(w);
            }
        }
        unique
    }
}

fn micros_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn join_failure(backend: BackendId, e: &tokio::task::JoinError) -> BackendError {
    BackendError::Unavailable {
        backend,
        reason: format!("load task ended abnormally: {e}"),
    }
}

fn mismatch(kind: FragmentKind) -> BackendError {
    // Only reachable if two kinds ever shared a key, which `FragmentKey` rules out.
    BackendError::Protocol {
        backend: kind.backend(),
        reason: "cached fragment has an unexpected type".into(),
    }
}

impl FragmentKind {
    /// The backend this fragment comes from.
    pub fn backend(self) -> BackendId {
        match self {
            Self::Title => BackendId::Catalog,
            Self::Top10 => BackendId::Top10,
            Self::NewReleases => BackendId::NewReleases,
            Self::Recommendations => BackendId::Recommendations,
            Self::ContinueWatching => BackendId::ContinueWatching,
            Self::MyList => BackendId::MyList,
            Self::Profile => BackendId::Profile,
        }
    }
}

#[cfg(test)]
mod tests;
