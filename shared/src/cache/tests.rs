//! Cache behaviour with counting loaders: coalescing, freshness, invalidation, byte bound.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::*;
use crate::{
    config::CacheSettings,
    domain::{Region, Top10Entry, UserId},
};

fn settings(ttl: Duration, max_stale: Duration) -> CacheSettings {
    let mut s = CacheSettings::default();
    for k in FragmentKind::ALL {
        let ks = s.kind_mut(k);
        ks.ttl = ttl;
        ks.max_stale = max_stale;
    }
    s
}

fn region() -> Region {
    Region::parse("US").unwrap()
}

fn top10(n: u32) -> Vec<Top10Entry> {
    (1..=n)
        .map(|r| Top10Entry {
            title_id: format!("t{r}"),
            rank: r,
        })
        .collect()
}

/// A loader that counts calls, optionally waits on a gate so loads overlap, and can fail.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<tokio::sync::Notify>,
    gated: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn load(
        &self,
        n: u32,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Vec<Top10Entry>, BackendError>>
    + Send
    + 'static {
        let b = self.clone();
        move || {
            Box::pin(async move {
                b.calls.fetch_add(1, Ordering::SeqCst);
                if b.gated.load(Ordering::SeqCst) {
                    b.gate.notified().await;
                }
                if b.fail.load(Ordering::SeqCst) {
                    Err(BackendError::Unavailable {
                        backend: BackendId::Top10,
                        reason: "test".into(),
                    })
                } else {
                    Ok(top10(n))
                }
            })
        }
    }

    /// One read of `key` through `cache`, loading `n` entries from this backend on a miss.
    async fn read(
        &self,
        cache: &FragmentCache,
        key: &FragmentKey,
        n: u32,
    ) -> Result<Arc<Vec<Top10Entry>>, BackendError> {
        cache
            .get_or_load(
                key,
                &CacheLog::default(),
                &Deadline::default(),
                self.load(n),
            )
            .await
    }
}

#[tokio::test]
async fn concurrent_misses_on_one_key_make_one_load() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let backend = Backend::default();
    backend.gated.store(true, Ordering::SeqCst);
    let key = FragmentKey::top10(&region());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, key, load) = (cache.clone(), key.clone(), backend.load(10));
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&key, &CacheLog::default(), &Deadline::default(), load)
                .await
        }));
    }
    // Let every task reach the cache before the one load is allowed to finish.
    while cache.stats().kind(FragmentKind::Top10).snapshot().coalesced < 49 {
        tokio::task::yield_now().await;
    }
    backend.gate.notify_waiters();
    backend.gated.store(false, Ordering::SeqCst);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().len(), 10);
    }
    assert_eq!(backend.calls(), 1);
    let s = cache.stats().kind(FragmentKind::Top10).snapshot();
    assert_eq!((s.misses, s.coalesced), (50, 49));
    // Now cached: no further load.
    let log = CacheLog::default();
    cache
        .get_or_load(&key, &log, &Deadline::default(), backend.load(10))
        .await
        .unwrap();
    assert_eq!(backend.calls(), 1);
    assert_eq!(log.uses()[0].freshness, Freshness::Fresh);
}

#[tokio::test]
async fn stale_entries_are_served_at_once_and_refreshed_once() {
    let cache = FragmentCache::new(settings(Duration::from_millis(50), Duration::from_secs(60)));
    let backend = Backend::default();
    let key = FragmentKey::top10(&region());
    backend.read(&cache, &key, 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    backend.gated.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let log = CacheLog::default();
        let v = cache
            .get_or_load(&key, &log, &Deadline::default(), backend.load(4))
            .await
            .unwrap();
        assert_eq!(
            v.len(),
            3,
            "the stale value is served while the refresh runs"
        );
        assert_eq!(log.uses()[0].freshness, Freshness::Stale);
        assert_eq!(log.max_age(), Some(Duration::ZERO));
    }
    while backend.calls() < 2 {
        tokio::task::yield_now().await;
    }
    backend.gated.store(false, Ordering::SeqCst);
    backend.gate.notify_waiters();
    // The one refresh lands; the next read is fresh and new.
    while cache
        .inner
        .inflight
        .lock()
        .unwrap()
        .contains_key(key.as_str())
    {
        tokio::task::yield_now().await;
    }
    let log = CacheLog::default();
    assert_eq!(
        cache
            .get_or_load(&key, &log, &Deadline::default(), backend.load(5))
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(log.uses()[0].freshness, Freshness::Fresh);
    assert_eq!(backend.calls(), 2, "five stale reads, one refresh");
    assert_eq!(cache.stats().kind(FragmentKind::Top10).snapshot().stale, 5);
}

#[tokio::test]
async fn a_failing_backend_is_covered_by_the_stale_entry_until_max_stale() {
    let cache = FragmentCache::new(settings(
        Duration::from_millis(20),
        Duration::from_millis(300),
    ));
    let backend = Backend::default();
    let key = FragmentKey::top10(&region());
    backend.read(&cache, &key, 3).await.unwrap();
    backend.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    for _ in 0..3 {
        let log = CacheLog::default();
        assert_eq!(
            cache
                .get_or_load(&key, &log, &Deadline::default(), backend.load(9))
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(log.uses()[0].freshness, Freshness::Stale);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past TTL + max_stale the entry is gone and the error shows.
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert!(backend.read(&cache, &key, 9).await.is_err());
}

#[tokio::test]
async fn errors_are_not_cached() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let backend = Backend::default();
    backend.fail.store(true, Ordering::SeqCst);
    let key = FragmentKey::top10(&region());
    assert!(backend.read(&cache, &key, 3).await.is_err());
    backend.fail.store(false, Ordering::SeqCst);
    assert_eq!(backend.read(&cache, &key, 3).await.unwrap().len(), 3);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn invalidation_beats_a_load_that_started_before_the_write() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let backend = Backend::default();
    backend.gated.store(true, Ordering::SeqCst);
    let key = FragmentKey::top10(&region());
    let early = {
        let (cache, key, load) = (cache.clone(), key.clone(), backend.load(1));
        tokio::spawn(async move {
            cache
                .get_or_load(&key, &CacheLog::default(), &Deadline::default(), load)
                .await
        })
    };
    while backend.calls() < 1 {
        tokio::task::yield_now().await;
    }
    cache.invalidate(&key).await;
    backend.gated.store(false, Ordering::SeqCst);
    backend.gate.notify_waiters();
    assert_eq!(early.await.unwrap().unwrap().len(), 1);
    // The pre-write answer was not stored: the next read loads again.
    assert_eq!(backend.read(&cache, &key, 2).await.unwrap().len(), 2);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn per_user_keys_never_share_entries() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let (a, b) = (
        UserId::from_verified_subject("u1").unwrap(),
        UserId::from_verified_subject("u2").unwrap(),
    );
    let load = |who: &'static str| {
        move || async move {
            Ok::<_, BackendError>(vec![crate::domain::MyListEntry {
                title_id: who.into(),
                added_at: String::new(),
            }])
        }
    };
    let va = cache
        .get_or_load(
            &FragmentKey::my_list(&a),
            &CacheLog::default(),
            &Deadline::default(),
            load("a"),
        )
        .await
        .unwrap();
    let vb = cache
        .get_or_load(
            &FragmentKey::my_list(&b),
            &CacheLog::default(),
            &Deadline::default(),
            load("b"),
        )
        .await
        .unwrap();
    assert_eq!(
        (va[0].title_id.as_str(), vb[0].title_id.as_str()),
        ("a", "b")
    );
}

#[tokio::test]
async fn the_byte_bound_evicts() {
    let mut s = settings(Duration::from_secs(60), Duration::from_secs(60));
    s.max_bytes = 20_000;
    let cache = FragmentCache::new(s);
    for i in 0..200 {
        let key = FragmentKey::new_releases(&region(), i);
        cache
            .get_or_load(
                &key,
                &CacheLog::default(),
                &Deadline::default(),
                move || {
                    async move { Ok(top10(10)) }.map(|r: Result<Vec<Top10Entry>, BackendError>| {
                        r.map(|v| {
                            v.into_iter()
                                .map(|t| crate::domain::NewRelease {
                                    title_id: t.title_id,
                                    released_at: "2026-11-01T00:00:00Z".into(),
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                },
            )
            .await
            .unwrap();
    }
    for tier in &cache.inner.tiers {
        tier.maintain().await;
    }
    let s = cache.stats().kind(FragmentKind::NewReleases).snapshot();
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.bytes <= 20_000, "{s:?}");
}

#[tokio::test]
async fn titles_fetch_only_missing_ids_and_join_batches_in_flight() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let requested: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fetch = {
        let (requested, gate) = (requested.clone(), gate.clone());
        move |ids: Vec<String>| {
            let (requested, gate) = (requested.clone(), gate.clone());
            async move {
                requested.lock().unwrap().push(ids.clone());
                let _permit = gate.acquire().await.map_err(|_| BackendError::Timeout {
                    backend: BackendId::Catalog,
                })?;
                let titles: HashMap<String, Arc<Title>> = ids
                    .iter()
                    .filter(|id| *id != "t404")
                    .map(|id| (id.clone(), Arc::new(title(id))))
                    .collect();
                Ok(titles)
            }
        }
    };
    let ids = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // Request A fetches t1..t3; request B (t2..t5) must wait for t2, t3 and fetch only t4, t5.
    let a = {
        let (cache, fetch) = (cache.clone(), fetch.clone());
        tokio::spawn(async move {
            cache
                .titles(
                    &ids(&["t1", "t2", "t3"]),
                    &CacheLog::default(),
                    &Deadline::default(),
                    fetch,
                )
                .await
        })
    };
    while requested.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let b = {
        let (cache, fetch) = (cache.clone(), fetch.clone());
        tokio::spawn(async move {
            cache
                .titles(
                    &ids(&["t2", "t3", "t4", "t5", "t404"]),
                    &CacheLog::default(),
                    &Deadline::default(),
                    fetch,
                )
                .await
        })
    };
    while requested.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(10);
    assert_eq!(a.await.unwrap().unwrap().len(), 3);
    let b = b.await.unwrap().unwrap();
    assert_eq!(b.len(), 4, "t404 is unknown and simply absent");
    assert_eq!(
        *requested.lock().unwrap(),
        vec![ids(&["t1", "t2", "t3"]), ids(&["t4", "t5", "t404"])]
    );
    // Everything known is cached now: only the unknown id is asked again.
    cache
        .titles(
            &ids(&["t1", "t5", "t404"]),
            &CacheLog::default(),
            &Deadline::default(),
            fetch,
        )
        .await
        .unwrap();
    assert_eq!(requested.lock().unwrap().last().unwrap(), &ids(&["t404"]));
    assert!(cache.stats().kind(FragmentKind::Title).snapshot().coalesced >= 2);
}

fn title(id: &str) -> Title {
    Title {
        id: id.into(),
        name: format!("Name {id}"),
        synopsis: "s".into(),
        year: 2000,
        maturity_rating: "PG".into(),
        runtime_minutes: 90,
        genres: vec![],
        cast: vec![],
        images: vec![],
    }
}

#[tokio::test]
async fn dropping_kinds_stored_before_a_time_forgets_older_entries_only() {
    let cache = FragmentCache::new(crate::config::CacheSettings::default());
    let log = CacheLog::default();
    let r = crate::domain::Region::parse("US").unwrap();
    let key = FragmentKey::top10(&r);
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = |calls: Arc<std::sync::atomic::AtomicU32>| {
        move || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<Vec<crate::domain::Top10Entry>, BackendError>(Vec::new())
        }
    };
    cache
        .get_or_load(&key, &log, &Deadline::default(), load(calls.clone()))
        .await
        .unwrap();
    cache
        .get_or_load(&key, &log, &Deadline::default(), load(calls.clone()))
        .await
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    cache.invalidate_stored_before(&[FragmentKind::Top10], std::time::SystemTime::now());
    cache
        .get_or_load(&key, &log, &Deadline::default(), load(calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "older entry dropped"
    );
    cache
        .get_or_load(&key, &log, &Deadline::default(), load(calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "newer entry kept"
    );
}

/// A load shared by several requests runs until the latest of their deadlines: requests that
/// join extend the deadline the load's calls run under (the first caller's), and an earlier one
/// never shortens it — for single fragments and for title batches alike.
#[tokio::test]
async fn a_shared_load_runs_until_the_latest_deadline_of_its_waiters() {
    let cache = FragmentCache::new(settings(Duration::from_secs(60), Duration::from_secs(60)));
    let backend = Backend::default();
    backend.gated.store(true, Ordering::SeqCst);
    let key = FragmentKey::top10(&region());
    let now = std::time::Instant::now();
    let at = move |ms| Some(now + Duration::from_millis(ms));
    // The first caller's deadline: what its load's backend calls see.
    let first = Deadline::new(at(100));
    let started = {
        let (cache, key, load, first) =
            (cache.clone(), key.clone(), backend.load(3), first.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&key, &CacheLog::default(), &first, load)
                .await
        })
    };
    while backend.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let mut joined = Vec::new();
    for ms in [5_000, 50, 2_000] {
        let (cache, key, load) = (cache.clone(), key.clone(), backend.load(3));
        joined.push(tokio::spawn(async move {
            cache
                .get_or_load(&key, &CacheLog::default(), &Deadline::new(at(ms)), load)
                .await
        }));
    }
    while cache.stats().kind(FragmentKind::Top10).snapshot().coalesced < 3 {
        tokio::task::yield_now().await;
    }
    // The latest of the four (kept to the microsecond), whatever order they joined in.
    let got = first.get().unwrap();
    assert!(got >= now + Duration::from_millis(4_999) && got <= now + Duration::from_millis(5_001));
    backend.gate.notify_waiters();
    assert_eq!(started.await.unwrap().unwrap().len(), 3);
    for j in joined {
        assert_eq!(j.await.unwrap().unwrap().len(), 3);
    }
    assert_eq!(backend.calls(), 1);

    // Title batches: a request waiting on another's batch extends that batch's deadline.
    let batch = Deadline::new(at(100));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fetch = {
        let gate = gate.clone();
        move |ids: Vec<String>| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await;
                Ok(ids
                    .iter()
                    .map(|id| (id.clone(), Arc::new(title(id))))
                    .collect::<HashMap<_, _>>())
            }
        }
    };
    let a = {
        let (cache, fetch, batch) = (cache.clone(), fetch.clone(), batch.clone());
        tokio::spawn(async move {
            cache
                .titles(&["t1".to_owned()], &CacheLog::default(), &batch, fetch)
                .await
        })
    };
    while cache.stats().kind(FragmentKind::Title).snapshot().misses == 0 {
        tokio::task::yield_now().await;
    }
    let b = {
        let (cache, fetch) = (cache.clone(), fetch.clone());
        tokio::spawn(async move {
            cache
                .titles(
                    &["t1".to_owned()],
                    &CacheLog::default(),
                    &Deadline::new(None),
                    fetch,
                )
                .await
        })
    };
    while cache.stats().kind(FragmentKind::Title).snapshot().coalesced == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        batch.get(),
        None,
        "a waiter without a deadline lets the batch run to its end"
    );
    gate.add_permits(10);
    assert_eq!(a.await.unwrap().unwrap().len(), 1);
    assert_eq!(b.await.unwrap().unwrap().len(), 1);
}
