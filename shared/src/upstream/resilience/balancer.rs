//! Endpoint balancing for a backend with several addresses: selection (round robin, or least
//! outstanding requests by power of two random choices), passive outlier ejection, active health
//! checks and DNS re-resolution.
//!
//! # Selection
//! An endpoint is *usable* when it is healthy (active checks; endpoints start healthy) and not
//! ejected. [`EndpointSet::pick`] only returns usable endpoints while any exist. When none is
//! usable it enters **panic mode**: rather than failing every call it picks the endpoint ejected
//! longest ago (never-ejected, i.e. merely unhealthy, endpoints first; ties rotate), on the
//! theory that some chance of success beats none, and logs once per panic episode.
//!
//! # Ejection
//! `consecutive_failures` failures in a row eject an endpoint for
//! `base_ejection × 2^(times_ejected − 1)`, capped at `max_ejection`; its streak restarts after
//! each ejection. The multiplier decays back to zero on a success at least `max_ejection` after
//! the last ejection ended, so an endpoint that flaps keeps getting longer timeouts while one that
//! recovered starts over. Never more than `max_ejected_percent` of the endpoints (rounded down)
//! are ejected at once, so traffic always has somewhere to go; a single-endpoint set is never
//! ejected at 50%.
//!
//! # Logs
//! Each state change is logged once, naming the backend and the endpoint: an ejection (warn),
//! the endpoint's return (info, at its first pick after the ejection ran out: an ejection ends by
//! the clock, not by an event), a health-check verdict that changed, and a panic episode's start
//! and end.
//!
//! # Concurrency
//! The list lives behind `RwLock<Arc<Vec<Arc<Endpoint>>>>`: a pick holds the read lock only while
//! choosing, then clones the chosen endpoint's `Arc` into the guard, so no lock is held during a
//! call and [`EndpointSet::replace`] (DNS changes) never waits for calls. Per-endpoint state is
//! atomics, times are nanoseconds since the set's creation. Ejection decisions are serialized by
//! a small mutex so concurrent failures cannot exceed the ejection cap; that path is cold.

use std::{
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use rand::Rng;
use tokio::task::JoinHandle;

use super::{grow, lock, read, write};

pub use crate::config::Strategy;

/// Passive outlier ejection tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionConfig {
    /// Failures in a row that eject an endpoint (default 5; 0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection length (default 1 s); doubles with each further ejection.
    pub base_ejection: Duration,
    /// Longest ejection (default 30 s).
    pub max_ejection: Duration,
    /// Never eject more than this share of the endpoints (default 50; above 100 counts as 100).
    pub max_ejected_percent: u8,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// One endpoint's state, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStatus {
    /// Address or name it was registered under.
    pub label: String,
    /// Last active health check result (true until checked).
    pub healthy: bool,
    /// Currently ejected by outlier detection.
    pub ejected: bool,
    /// Calls in flight.
    pub outstanding: usize,
}

struct Endpoint<E> {
    label: String,
    payload: E,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    /// Nanoseconds since the set's origin; 0 = never ejected. `ejected_until` is kept after the
    /// ejection ends (it drives multiplier decay); "ejected" means `ejected_until > now`.
    ejected_at: AtomicU64,
    ejected_until: AtomicU64,
    healthy: AtomicBool,
    /// Set by an ejection, cleared (and the return logged) at the first pick after it ran out.
    returning: AtomicBool,
}

impl<E> Endpoint<E> {
    fn new(label: String, payload: E) -> Self {
        Self {
            label,
            payload,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            ejected_at: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            returning: AtomicBool::new(false),
        }
    }

    fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now
    }

    fn usable(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected(now)
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

type List<E> = Arc<Vec<Arc<Endpoint<E>>>>;

struct Inner<E> {
    /// The backend these endpoints serve, for log lines.
    backend: String,
    strategy: Strategy,
    cfg: EjectionConfig,
    origin: Instant,
    cursor: AtomicUsize,
    panic_cursor: AtomicUsize,
    panicking: AtomicBool,
    eject_lock: Mutex<()>,
    list: RwLock<List<E>>,
}

impl<E> Inner<E> {
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn list(&self) -> List<E> {
        Arc::clone(&read(&self.list))
    }

    /// Ejects `ep` unless it already is, it left the set, or the cap forbids it.
    fn try_eject(&self, ep: &Arc<Endpoint<E>>, now: u64) -> bool {
        let _serial = lock(&self.eject_lock);
        if ep.ejected(now) {
            return false;
        }
        let list = self.list();
        if !list.iter().any(|e| Arc::ptr_eq(e, ep)) {
            return false;
        }
        let ejected = list.iter().filter(|e| e.ejected(now)).count();
        let allowed = list.len() * usize::from(self.cfg.max_ejected_percent.min(100)) / 100;
        if ejected >= allowed {
            return false;
        }
        let times = ep.times_ejected.load(Ordering::Relaxed).saturating_add(1);
        ep.times_ejected.store(times, Ordering::Relaxed);
        let length = grow(self.cfg.base_ejection, times - 1, self.cfg.max_ejection);
        let length_nanos = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX).max(1);
        ep.ejected_at.store(now.max(1), Ordering::Relaxed);
        ep.ejected_until
            .store(now.saturating_add(length_nanos), Ordering::Release);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        ep.returning.store(true, Ordering::Relaxed);
        tracing::warn!(
            backend = %self.backend,
            endpoint = %ep.label,
            ejected_ms = length.as_millis() as u64,
            times,
            "endpoint ejected after consecutive failures"
        );
        true
    }
}

/// The endpoints of one backend, each carrying a client payload `E` (a base URL, a tonic
/// `Channel`). `Send + Sync`; share it with `Arc` (the refresh tasks need one).
pub struct EndpointSet<E> {
    inner: Arc<Inner<E>>,
}

impl<E: Clone + Send + Sync> EndpointSet<E> {
    /// A set of `(label, payload)` endpoints; duplicate labels keep the first.
    pub fn new(strategy: Strategy, cfg: EjectionConfig, endpoints: Vec<(String, E)>) -> Self {
        Self::for_backend("", strategy, cfg, endpoints)
    }

    /// [`Self::new`] for the backend named `backend`, which its log lines name.
    pub fn for_backend(
        backend: &str,
        strategy: Strategy,
        cfg: EjectionConfig,
        endpoints: Vec<(String, E)>,
    ) -> Self {
        let cfg = EjectionConfig {
            max_ejection: cfg.max_ejection.max(cfg.base_ejection),
            ..cfg
        };
        let set = Self {
            inner: Arc::new(Inner {
                backend: backend.to_owned(),
                strategy,
                cfg,
                origin: Instant::now(),
                cursor: AtomicUsize::new(0),
                panic_cursor: AtomicUsize::new(0),
                panicking: AtomicBool::new(false),
                eject_lock: Mutex::new(()),
                list: RwLock::new(Arc::new(Vec::new())),
            }),
        };
        set.replace(endpoints);
        set
    }

    /// The selection strategy.
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy
    }

    /// Picks an endpoint for one call; `None` only when the set is empty. Hold the guard for the
    /// whole call (it counts as outstanding) and report its outcome on it.
    pub fn pick(&self) -> Option<EndpointGuard<E>> {
        self.pick_at(Instant::now())
    }

    /// [`Self::pick`] at a given instant (tests).
    pub(crate) fn pick_at(&self, now: Instant) -> Option<EndpointGuard<E>> {
        let now = self.inner.nanos(now);
        let chosen = {
            let list = read(&self.inner.list);
            if list.is_empty() {
                return None;
            }
            let usable = match self.inner.strategy {
                Strategy::RoundRobin => self.round_robin(&list, now),
                Strategy::LeastOutstanding => least_outstanding(&list, now),
            };
            match usable {
                Some(i) => {
                    if self.inner.panicking.load(Ordering::Relaxed)
                        && self.inner.panicking.swap(false, Ordering::Relaxed)
                    {
                        tracing::info!(
                            backend = %self.inner.backend,
                            "endpoint panic mode over: usable endpoints again"
                        );
                    }
                    Arc::clone(&list[i])
                }
                None => {
                    if !self.inner.panicking.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            backend = %self.inner.backend,
                            endpoints = list.len(),
                            "no usable endpoint: panic mode, using the least recently ejected"
                        );
                    }
                    Arc::clone(&list[self.least_recently_ejected(&list)])
                }
            }
        };
        self.note_return(&chosen, now);
        Some(self.guard(chosen))
    }

    /// [`Self::pick`] for a retry: never the endpoint labelled `avoid` (the one the last attempt
    /// failed on) while another usable endpoint exists; with none, the same as `pick`.
    pub(crate) fn pick_avoiding(&self, avoid: &str) -> Option<EndpointGuard<E>> {
        self.pick_avoiding_at(avoid, Instant::now())
    }

    /// [`Self::pick_avoiding`] at a given instant (tests).
    pub(crate) fn pick_avoiding_at(&self, avoid: &str, now: Instant) -> Option<EndpointGuard<E>> {
        let nanos = self.inner.nanos(now);
        let other = {
            let list = read(&self.inner.list);
            // Retries only: a short list copied, so the strategy picks among the others exactly
            // as it picks among all.
            let others: Vec<Arc<Endpoint<E>>> =
                list.iter().filter(|e| e.label != avoid).cloned().collect();
            let usable = match self.inner.strategy {
                Strategy::RoundRobin => self.round_robin(&others, nanos),
                Strategy::LeastOutstanding => least_outstanding(&others, nanos),
            };
            usable.map(|i| Arc::clone(&others[i]))
        };
        match other {
            Some(ep) => {
                self.note_return(&ep, nanos);
                Some(self.guard(ep))
            }
            None => self.pick_at(now),
        }
    }

    /// Logs, once, the return of `ep` picked at `now` (nanoseconds since the origin) when its
    /// ejection has run out: the first pick after it is when it is back in rotation.
    fn note_return(&self, ep: &Endpoint<E>, now: u64) {
        if ep.returning.load(Ordering::Relaxed)
            && !ep.ejected(now)
            && ep.returning.swap(false, Ordering::Relaxed)
        {
            tracing::info!(
                backend = %self.inner.backend,
                endpoint = %ep.label,
                "endpoint back in rotation: its ejection ran out"
            );
        }
    }

    fn guard(&self, ep: Arc<Endpoint<E>>) -> EndpointGuard<E> {
        ep.outstanding.fetch_add(1, Ordering::Relaxed);
        EndpointGuard {
            set: Arc::clone(&self.inner),
            ep,
        }
    }

    fn round_robin(&self, list: &[Arc<Endpoint<E>>], now: u64) -> Option<usize> {
        // An unusable endpoint's turn goes to the next usable one, which briefly gets a double
        // share; acceptable for the short time an endpoint is out.
        let start = self.inner.cursor.fetch_add(1, Ordering::Relaxed);
        (0..list.len())
            .map(|i| start.wrapping_add(i) % list.len())
            .find(|&i| list[i].usable(now))
    }

    fn least_recently_ejected(&self, list: &[Arc<Endpoint<E>>]) -> usize {
        // Rotating the scan start spreads ties (e.g. all unhealthy, none ejected). Its own cursor:
        // the round-robin one has just moved too, and sharing it would make the rotation skip.
        let start = self.inner.panic_cursor.fetch_add(1, Ordering::Relaxed);
        (0..list.len())
            .map(|i| start.wrapping_add(i) % list.len())
            .min_by_key(|&i| list[i].ejected_at.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Swaps in a new endpoint list (after DNS re-resolution). Endpoints whose label is already
    /// present are kept as they are — counters, ejection and health state, *and their original
    /// payload*, so pooled connections survive; give an endpoint a new label to replace its
    /// payload. Guards on removed endpoints stay valid until dropped. Duplicate labels keep the
    /// first.
    pub fn replace(&self, new: Vec<(String, E)>) {
        // Built under the write lock so two concurrent replaces cannot lose each other's
        // survivors; the list is small and this is rare.
        let mut current = write(&self.inner.list);
        let mut next: Vec<Arc<Endpoint<E>>> = Vec::with_capacity(new.len());
        for (label, payload) in new {
            if next.iter().any(|e| e.label == label) {
                continue;
            }
            let ep = current
                .iter()
                .find(|e| e.label == label)
                .map(Arc::clone)
                .unwrap_or_else(|| Arc::new(Endpoint::new(label, payload)));
            next.push(ep);
        }
        *current = Arc::new(next);
    }

    /// Records an active health check result; `false` when no endpoint has that label.
    pub fn set_healthy(&self, label: &str, healthy: bool) -> bool {
        let list = self.inner.list();
        match list.iter().find(|e| e.label == label) {
            Some(ep) => {
                set_health(&self.inner.backend, ep, healthy);
                true
            }
            None => false,
        }
    }

    /// Every endpoint's state now.
    pub fn snapshot(&self) -> Vec<EndpointStatus> {
        self.snapshot_at(Instant::now())
    }

    /// [`Self::snapshot`] at a given instant (tests).
    pub(crate) fn snapshot_at(&self, now: Instant) -> Vec<EndpointStatus> {
        let now = self.inner.nanos(now);
        self.inner
            .list()
            .iter()
            .map(|e| EndpointStatus {
                label: e.label.clone(),
                healthy: e.healthy.load(Ordering::Relaxed),
                ejected: e.ejected(now),
                outstanding: e.outstanding(),
            })
            .collect()
    }

    /// Endpoints usable now (healthy, not ejected); 0 means picks are in panic mode.
    pub(crate) fn usable_count(&self) -> usize {
        self.usable_count_at(Instant::now())
    }

    /// [`Self::usable_count`] at a given instant (tests).
    pub(crate) fn usable_count_at(&self, now: Instant) -> usize {
        let now = self.inner.nanos(now);
        read(&self.inner.list)
            .iter()
            .filter(|e| e.usable(now))
            .count()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        read(&self.inner.list).len()
    }

    /// Whether the set has no endpoint at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E: Clone + Send + Sync> fmt::Debug for EndpointSet<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSet")
            .field("strategy", &self.inner.strategy)
            .field("endpoints", &self.snapshot())
            .finish()
    }
}

fn least_outstanding<E>(list: &[Arc<Endpoint<E>>], now: u64) -> Option<usize> {
    let n = list.len();
    if n <= 1 {
        return list.first().and_then(|e| e.usable(now).then_some(0));
    }
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    match (list[a].usable(now), list[b].usable(now)) {
        (true, true) => Some(if list[b].outstanding() < list[a].outstanding() {
            b
        } else {
            a
        }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        // Both out: scan for the least loaded usable one (rare; the list is small).
        (false, false) => (0..n)
            .map(|i| (a + i) % n)
            .filter(|&i| list[i].usable(now))
            .min_by_key(|&i| list[i].outstanding()),
    }
}

fn set_health<E>(backend: &str, ep: &Endpoint<E>, healthy: bool) {
    if ep.healthy.swap(healthy, Ordering::Relaxed) != healthy {
        if healthy {
            tracing::info!(backend, endpoint = %ep.label, "endpoint healthy again");
        } else {
            tracing::warn!(backend, endpoint = %ep.label, "endpoint failed its health check");
        }
    }
}

/// One call's hold on an endpoint: counts as outstanding until dropped. Report the outcome with
/// [`EndpointGuard::success`] or [`EndpointGuard::failure`]; reporting nothing (cancelled call)
/// leaves the failure streak alone.
#[must_use = "the endpoint counts as busy until the guard is dropped"]
pub struct EndpointGuard<E> {
    set: Arc<Inner<E>>,
    ep: Arc<Endpoint<E>>,
}

impl<E> EndpointGuard<E> {
    /// The endpoint's client payload.
    pub fn payload(&self) -> &E {
        &self.ep.payload
    }

    /// The endpoint's label (its address), for logs and metrics.
    pub fn label(&self) -> &str {
        &self.ep.label
    }

    /// The call succeeded: the failure streak restarts.
    pub fn success(&self) {
        self.success_at(Instant::now());
    }

    /// [`Self::success`] at a given instant (tests).
    pub(crate) fn success_at(&self, now: Instant) {
        // Load before store: the common case (no streak) then writes nothing, sparing the cache
        // line that every concurrent call on this endpoint shares.
        if self.ep.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.ep.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ep.times_ejected.load(Ordering::Relaxed) != 0 {
            let now = self.set.nanos(now);
            let quiet_since = self.ep.ejected_until.load(Ordering::Acquire);
            let decay = u64::try_from(self.set.cfg.max_ejection.as_nanos()).unwrap_or(u64::MAX);
            if now >= quiet_since.saturating_add(decay) {
                self.ep.times_ejected.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The call failed in a way that blames this endpoint (connect error, timeout, 5xx,
    /// `UNAVAILABLE`). Returns whether this failure ejected it.
    pub fn failure(&self) -> bool {
        self.failure_at(Instant::now())
    }

    /// [`Self::failure`] at a given instant (tests).
    pub(crate) fn failure_at(&self, now: Instant) -> bool {
        let threshold = self.set.cfg.consecutive_failures;
        let streak = self
            .ep
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if threshold == 0 || streak < threshold {
            return false;
        }
        self.set.try_eject(&self.ep, self.set.nanos(now))
    }
}

impl<E> Drop for EndpointGuard<E> {
    fn drop(&mut self) {
        self.ep.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<E> fmt::Debug for EndpointGuard<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointGuard")
            .field("label", &self.ep.label)
            .finish_non_exhaustive()
    }
}

/// Resolves `host:port` (e.g. `catalog:50051`, `[::1]:80`) to its addresses, sorted and
/// de-duplicated so that two resolutions compare equal when the set is unchanged.
pub async fn resolve(host_port: &str) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What the DNS refresh loop remembers between rounds.
#[derive(Debug, Default)]
struct DnsState {
    last: Vec<SocketAddr>,
    failing: bool,
}

/// One DNS round: resolves and replaces the set's endpoints if the addresses changed. Keeps the
/// old list on errors, on empty answers and when `make` accepts none of the addresses (an empty
/// list would fail every call, while stale addresses may still work). Returns whether it replaced.
async fn refresh_once<E, F>(
    set: &EndpointSet<E>,
    target: &str,
    make: &F,
    state: &mut DnsState,
) -> bool
where
    E: Clone + Send + Sync,
    F: Fn(SocketAddr) -> Option<(String, E)>,
{
    let failure = match resolve(target).await {
        Ok(addrs) if !addrs.is_empty() => {
            if state.failing {
                state.failing = false;
                tracing::info!(target, "DNS resolution recovered");
            }
            if addrs == state.last {
                return false;
            }
            let next: Vec<(String, E)> = addrs.iter().filter_map(|a| make(*a)).collect();
            if next.is_empty() {
                "no usable address".to_owned()
            } else {
                tracing::info!(target, addresses = ?addrs, "endpoints re-resolved");
                set.replace(next);
                state.last = addrs;
                return true;
            }
        }
        Ok(_) => "no address".to_owned(),
        Err(err) => err.to_string(),
    };
    // Once per failure streak: a dead resolver must not flood the logs every interval.
    if !state.failing {
        state.failing = true;
        tracing::warn!(target, error = %failure, "DNS re-resolution failed; keeping the current endpoints");
    }
    false
}

/// Resolves `host` now and then every `interval`, calling [`EndpointSet::replace`] when the
/// address set changed (the set may start with the unresolved name as its one endpoint). `make`
/// turns an address into `(label, payload)`, or `None` to skip it. Abort the handle to stop.
pub fn spawn_dns_refresh<E, F>(
    set: Arc<EndpointSet<E>>,
    host: String,
    port: u16,
    interval: Duration,
    make: F,
) -> JoinHandle<()>
where
    E: Clone + Send + Sync + 'static,
    F: Fn(SocketAddr) -> Option<(String, E)> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let target = host_port(&host, port);
        let mut state = DnsState::default();
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            refresh_once(&set, &target, &make, &mut state).await;
        }
    })
}

/// One health round: probes every endpoint concurrently and records the results. Probes own their
/// timeouts, so one hanging endpoint delays only its own result.
async fn probe_all<E, P>(set: &EndpointSet<E>, probe: &P)
where
    E: Clone + Send + Sync,
    P: Fn(&E) -> BoxFuture<'static, bool>,
{
    let list = set.inner.list();
    let results = futures::future::join_all(list.iter().map(|ep| probe(&ep.payload))).await;
    // Written to the endpoints probed, not looked up by label: an endpoint replaced meanwhile is
    // either the same `Arc` (label kept) or gone, so this is always right.
    for (ep, healthy) in list.iter().zip(results) {
        set_health(&set.inner.backend, ep, healthy);
    }
}

/// Probes every endpoint now and then every `interval`, marking them healthy or not. Abort the
/// handle to stop.
pub fn spawn_health_checks<E, P>(
    set: Arc<EndpointSet<E>>,
    interval: Duration,
    probe: P,
) -> JoinHandle<()>
where
    E: Clone + Send + Sync + 'static,
    P: Fn(&E) -> BoxFuture<'static, bool> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            probe_all(&set, &probe).await;
        }
    })
}

/// HTTP health probe: `GET url` within `timeout`; healthy on any 2xx.
pub fn http_probe(
    client: reqwest::Client,
    url: String,
    timeout: Duration,
) -> BoxFuture<'static, bool> {
    Box::pin(async move {
        match tokio::time::timeout(timeout, client.get(url).send()).await {
            Ok(Ok(resp)) => resp.status().is_success(),
            _ => false,
        }
    })
}

/// gRPC health probe: `grpc.health.v1.Health/Check` for `service` (empty = the whole server)
/// within `timeout`; healthy only on `SERVING`.
pub fn grpc_probe(
    channel: tonic::transport::Channel,
    service: String,
    timeout: Duration,
) -> BoxFuture<'static, bool> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    Box::pin(async move {
        let mut client = HealthClient::new(channel);
        let mut request = tonic::Request::new(HealthCheckRequest { service });
        // Sent as `grpc-timeout` so the server gives up too; the local timer covers connecting.
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.check(request)).await {
            Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::{collections::HashMap, sync::atomic::AtomicBool};

    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn set(strategy: Strategy, labels: &[&str]) -> EndpointSet<String> {
        EndpointSet::new(
            strategy,
            EjectionConfig::default(),
            labels
                .iter()
                .map(|l| ((*l).to_owned(), format!("payload-{l}")))
                .collect(),
        )
    }

    /// A guard on the endpoint labelled `label`, bypassing selection.
    fn hold<E: Clone + Send + Sync>(s: &EndpointSet<E>, label: &str) -> EndpointGuard<E> {
        let ep = s
            .inner
            .list()
            .iter()
            .find(|e| e.label == label)
            .map(Arc::clone)
            .unwrap();
        s.guard(ep)
    }

    fn fail(s: &EndpointSet<String>, label: &str, n: u32, now: Instant) -> bool {
        let g = hold(s, label);
        // Every failure is reported (no short-circuit), like a caller would.
        let mut ejected = false;
        for _ in 0..n {
            ejected |= g.failure_at(now);
        }
        ejected
    }

    fn counts(s: &EndpointSet<String>, n: usize, now: Instant) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            let g = s.pick_at(now).unwrap();
            *counts.entry(g.label().to_owned()).or_insert(0) += 1;
        }
        counts
    }

    fn ejected(s: &EndpointSet<String>, now: Instant) -> Vec<String> {
        s.snapshot_at(now)
            .into_iter()
            .filter(|e| e.ejected)
            .map(|e| e.label)
            .collect()
    }

    #[test]
    fn round_robin_visits_all_equally() {
        let s = set(Strategy::RoundRobin, &["a", "b", "c"]);
        let c = counts(&s, 300, Instant::now());
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
    }

    #[test]
    fn guard_exposes_payload_and_counts_outstanding() {
        let s = set(Strategy::RoundRobin, &["a"]);
        let g = s.pick().unwrap();
        assert_eq!((g.label(), g.payload().as_str()), ("a", "payload-a"));
        let g2 = s.pick().unwrap();
        assert_eq!(s.snapshot()[0].outstanding, 2);
        drop((g, g2));
        assert_eq!(s.snapshot()[0].outstanding, 0);
    }

    #[test]
    fn least_outstanding_prefers_the_less_busy_endpoint() {
        let s = set(Strategy::LeastOutstanding, &["a", "b", "c"]);
        let busy: Vec<_> = (0..5).map(|_| hold(&s, "a")).collect();
        let c = counts(&s, 600, Instant::now());
        // "a" can only win a comparison against another endpoint with ≥ 5 in flight: never here.
        assert_eq!(c.get("a"), None, "{c:?}");
        assert!(c["b"] > 150 && c["c"] > 150, "{c:?}");
        drop(busy);

        // Held guards: load spreads evenly instead of piling on one endpoint.
        let held: Vec<_> = (0..30).map(|_| s.pick().unwrap()).collect();
        let loads: Vec<_> = s.snapshot().iter().map(|e| e.outstanding).collect();
        assert!(loads.iter().all(|&n| (7..=13).contains(&n)), "{loads:?}");
        drop(held);
    }

    /// A retry never lands on the endpoint that just failed while another is usable (picking at
    /// random, a 1-in-16 miss with two endpoints used to let both retries of a call hit it), and
    /// gets it when it is the only choice.
    #[test]
    fn a_retry_avoids_the_failed_endpoint_whenever_it_can() {
        let t0 = Instant::now();
        for strategy in [Strategy::LeastOutstanding, Strategy::RoundRobin] {
            for labels in [&["a", "b"][..], &["a", "b", "c"][..]] {
                let s = set(strategy, labels);
                let mut seen = HashMap::new();
                for _ in 0..300 {
                    let g = s.pick_avoiding_at("a", t0).unwrap();
                    *seen.entry(g.label().to_owned()).or_insert(0) += 1;
                }
                assert_eq!(seen.get("a"), None, "{strategy:?} {labels:?}: {seen:?}");
                assert_eq!(seen.len(), labels.len() - 1, "{strategy:?}: {seen:?}");
            }
            // The only other endpoint ejected: the failed one is all there is.
            let s = set(strategy, &["a", "b"]);
            assert!(fail(&s, "b", 5, t0));
            assert_eq!(s.pick_avoiding_at("a", t0).unwrap().label(), "a");
            assert_eq!(
                set(strategy, &["a"])
                    .pick_avoiding_at("a", t0)
                    .unwrap()
                    .label(),
                "a"
            );
            assert!(set(strategy, &[]).pick_avoiding_at("a", t0).is_none());
        }
    }

    #[test]
    fn ejection_after_consecutive_failures_with_growing_interval() {
        let s = set(Strategy::RoundRobin, &["a", "b", "c", "d"]);
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        assert!(!fail(&s, "a", 4, t0));
        assert!(ejected(&s, t0).is_empty());
        assert!(fail(&s, "a", 1, t0));
        assert_eq!(ejected(&s, t0), ["a"]);
        assert_eq!(s.usable_count_at(t0), 3);
        assert_eq!(counts(&s, 90, t0).get("a"), None);
        // First ejection: 1 s.
        assert_eq!(ejected(&s, t0 + MS(999)), ["a"]);
        let t1 = t0 + MS(1000);
        assert!(ejected(&s, t1).is_empty());
        assert!(counts(&s, 40, t1)["a"] >= 10);
        // The streak restarted at ejection: one failure is not enough again.
        assert!(!fail(&s, "a", 4, t1));
        // Second ejection: 2 s; third 4 s; ... capped at 30 s.
        assert!(fail(&s, "a", 1, t1));
        assert_eq!(ejected(&s, t1 + MS(1999)), ["a"]);
        let t2 = t1 + MS(2000);
        assert!(ejected(&s, t2).is_empty());
        assert!(fail(&s, "a", 5, t2));
        assert_eq!(ejected(&s, t2 + MS(3999)), ["a"]);
        let mut t = t2 + MS(4000);
        for _ in 0..10 {
            assert!(fail(&s, "a", 5, t));
            t += Duration::from_secs(30);
        }
        assert_eq!(ejected(&s, t - MS(1)), ["a"], "capped at 30 s");
        assert!(ejected(&s, t).is_empty());
    }

    #[test]
    fn success_resets_the_streak() {
        let s = set(Strategy::RoundRobin, &["a", "b"]);
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        let g = hold(&s, "a");
        for _ in 0..4 {
            assert!(!g.failure_at(t0));
        }
        g.success_at(t0);
        for _ in 0..4 {
            assert!(!g.failure_at(t0));
        }
        assert!(g.failure_at(t0));
    }

    #[test]
    fn ejection_multiplier_decays_after_a_quiet_period() {
        let s = set(Strategy::RoundRobin, &["a", "b"]);
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        assert!(fail(&s, "a", 5, t0));
        let t1 = t0 + MS(1000);
        assert!(fail(&s, "a", 5, t1));
        // Ended at t1 + 2 s; a success 30 s (max_ejection) after that resets the multiplier.
        let quiet = t1 + MS(2000) + Duration::from_secs(30);
        hold(&s, "a").success_at(quiet - MS(1));
        assert!(fail(&s, "a", 5, quiet - MS(1)));
        // Not yet reset: that was the third ejection (4 s).
        assert_eq!(ejected(&s, quiet + MS(3998)), ["a"]);
        let later = quiet + MS(3999) + Duration::from_secs(30);
        hold(&s, "a").success_at(later);
        assert!(fail(&s, "a", 5, later));
        assert_eq!(ejected(&s, later + MS(999)), ["a"]);
        assert!(
            ejected(&s, later + MS(1000)).is_empty(),
            "back to the base interval"
        );
    }

    #[test]
    fn max_ejected_percent_is_respected() {
        let s = set(Strategy::RoundRobin, &["a", "b", "c", "d"]);
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        assert!(fail(&s, "a", 5, t0));
        assert!(fail(&s, "b", 5, t0));
        assert!(!fail(&s, "c", 50, t0), "a third ejection would exceed 50%");
        assert_eq!(s.usable_count_at(t0), 2);
        // Once a slot frees up, c's ongoing streak ejects it on its next failure.
        let t1 = t0 + MS(1000);
        assert!(fail(&s, "c", 1, t1));
        // A lone endpoint is never ejected at 50% (50% of 1 rounds down to 0).
        let one = set(Strategy::RoundRobin, &["only"]);
        assert!(!fail(&one, "only", 100, t0));
        // 0 disables ejection.
        let off = EndpointSet::new(
            Strategy::RoundRobin,
            EjectionConfig {
                consecutive_failures: 0,
                ..EjectionConfig::default()
            },
            vec![("a".to_owned(), ()), ("b".to_owned(), ())],
        );
        let g = off.pick().unwrap();
        assert!((0..100).all(|_| !g.failure_at(t0)));
    }

    #[test]
    fn panic_mode_uses_the_least_recently_ejected() {
        let s = EndpointSet::new(
            Strategy::LeastOutstanding,
            EjectionConfig {
                max_ejected_percent: 100,
                ..EjectionConfig::default()
            },
            ["a", "b", "c"]
                .map(|l| (l.to_owned(), l.to_owned()))
                .to_vec(),
        );
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        assert!(fail(&s, "b", 5, t0));
        assert!(fail(&s, "a", 5, t0 + MS(10)));
        assert!(fail(&s, "c", 5, t0 + MS(20)));
        let now = t0 + MS(30);
        assert_eq!(s.usable_count_at(now), 0);
        let c = counts(&s, 20, now);
        assert_eq!(c.get("b"), Some(&20), "{c:?}");
        // b's ejection ends first (1 s after t0): panic mode is over, only b is usable.
        let after = t0 + MS(1005);
        assert_eq!(s.usable_count_at(after), 1);
        assert_eq!(counts(&s, 10, after).get("b"), Some(&10));
    }

    #[test]
    fn all_unhealthy_still_picks_and_rotates() {
        let s = set(Strategy::RoundRobin, &["a", "b"]);
        assert!(s.set_healthy("a", false));
        assert!(s.set_healthy("b", false));
        assert_eq!(s.usable_count(), 0);
        let c = counts(&s, 10, Instant::now());
        assert_eq!((c["a"], c["b"]), (5, 5));
    }

    #[test]
    fn unhealthy_endpoints_are_skipped() {
        for strategy in [Strategy::RoundRobin, Strategy::LeastOutstanding] {
            let s = set(strategy, &["a", "b", "c"]);
            assert!(s.set_healthy("b", false));
            assert!(!s.set_healthy("nope", false));
            let c = counts(&s, 300, Instant::now());
            assert_eq!(c.get("b"), None, "{strategy:?}: {c:?}");
            assert!(c["a"] > 50 && c["c"] > 50, "{strategy:?}: {c:?}");
            assert!(
                !s.snapshot()
                    .iter()
                    .find(|e| e.label == "b")
                    .unwrap()
                    .healthy
            );
            s.set_healthy("b", true);
            assert!(counts(&s, 300, Instant::now()).contains_key("b"));
        }
    }

    #[test]
    fn replace_keeps_state_of_surviving_labels() {
        let s = set(Strategy::RoundRobin, &["a", "b", "c", "d"]);
        // After the set: instants before its creation all map to its origin.
        let t0 = Instant::now();
        assert!(!fail(&s, "a", 4, t0));
        let on_b = hold(&s, "b");
        let on_c = hold(&s, "c");
        s.set_healthy("c", false);
        assert!(fail(&s, "d", 5, t0));
        s.replace(vec![
            ("a".to_owned(), "new-a".to_owned()),
            ("c".to_owned(), "new-c".to_owned()),
            ("d".to_owned(), "new-d".to_owned()),
            ("e".to_owned(), "new-e".to_owned()),
            ("e".to_owned(), "dup-e".to_owned()),
        ]);
        let snap = s.snapshot_at(t0);
        let labels: Vec<_> = snap.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["a", "c", "d", "e"]);
        // c: unhealthy and 1 outstanding, carried over; d: still ejected; e: fresh.
        assert_eq!((snap[1].healthy, snap[1].outstanding), (false, 1));
        assert!(snap[2].ejected);
        assert_eq!(
            (snap[3].healthy, snap[3].ejected, snap[3].outstanding),
            (true, false, 0)
        );
        // a's streak survived: one more failure ejects it. Payload of a kept label is the old one.
        let a = hold(&s, "a");
        assert_eq!(a.payload(), "payload-a");
        assert!(a.failure_at(t0));
        assert_eq!(hold(&s, "e").payload(), "new-e");
        // Guards on removed endpoints stay usable and cannot eject anything.
        assert_eq!(on_b.payload(), "payload-b");
        assert!((0..10).all(|_| !on_b.failure_at(t0)));
        drop((on_b, on_c));
        assert_eq!(s.snapshot_at(t0)[1].outstanding, 0);
        // Empty set: no pick.
        s.replace(Vec::new());
        assert!(s.pick().is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn replace_while_picking_from_threads() {
        let s = Arc::new(set(Strategy::LeastOutstanding, &["a", "b"]));
        let stop = Arc::new(AtomicBool::new(false));
        let pickers: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let g = s.pick().unwrap();
                        g.success();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..200 {
            let labels = if i % 2 == 0 { ["a", "c"] } else { ["a", "b"] };
            s.replace(labels.map(|l| (l.to_owned(), String::new())).to_vec());
        }
        stop.store(true, Ordering::Relaxed);
        for p in pickers {
            p.join().unwrap();
        }
        assert!(s.snapshot().iter().all(|e| e.outstanding == 0));
    }

    #[test]
    fn strategy_deserializes_snake_case() {
        let parse = |s: &str| serde_json::from_str::<Strategy>(s).ok();
        assert_eq!(parse(r#""round_robin""#), Some(Strategy::RoundRobin));
        assert_eq!(
            parse(r#""least_outstanding""#),
            Some(Strategy::LeastOutstanding)
        );
        assert_eq!(parse(r#""LeastOutstanding""#), None);
        assert_eq!(Strategy::default(), Strategy::RoundRobin);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<EndpointSet<tonic::transport::Channel>>();
        check::<EndpointGuard<tonic::transport::Channel>>();
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("[::1]", 80), "[::1]:80");
        assert_eq!(host_port("catalog", 50051), "catalog:50051");
    }

    // ---- DNS ----

    fn by_addr(a: SocketAddr) -> Option<(String, String)> {
        Some((a.to_string(), format!("http://{a}")))
    }

    #[tokio::test]
    async fn dns_refresh_replaces_on_change_only() {
        let s = set(Strategy::RoundRobin, &["stale"]);
        let mut state = DnsState::default();
        let target = host_port("localhost", 4321);
        let addrs = resolve(&target).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4321)
        );

        assert!(refresh_once(&s, &target, &by_addr, &mut state).await);
        let labels: Vec<_> = s.snapshot().into_iter().map(|e| e.label).collect();
        let expected: Vec<_> = addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(labels, expected);
        // Same answer: no replace, so state is untouched either way.
        s.set_healthy(&expected[0], false);
        assert!(!refresh_once(&s, &target, &by_addr, &mut state).await);
        assert!(!s.snapshot()[0].healthy);
        // A changed answer replaces but keeps the state of surviving labels.
        state.last.clear();
        assert!(refresh_once(&s, &target, &by_addr, &mut state).await);
        assert!(!s.snapshot()[0].healthy);
    }

    #[tokio::test]
    async fn dns_failure_keeps_the_old_list() {
        let s = set(Strategy::RoundRobin, &["old"]);
        let mut state = DnsState::default();
        // No port: fails without touching a resolver.
        assert!(!refresh_once(&s, "not-a-target", &by_addr, &mut state).await);
        assert!(state.failing);
        assert!(!refresh_once(&s, "not-a-target", &by_addr, &mut state).await);
        // `make` accepting nothing also keeps the old list.
        let none = |_: SocketAddr| None::<(String, String)>;
        assert!(!refresh_once(&s, "localhost:1", &none, &mut state).await);
        assert_eq!(s.snapshot()[0].label, "old");
        assert!(refresh_once(&s, "localhost:1", &by_addr, &mut state).await);
        assert!(!state.failing);
    }

    /// Polls `cond` every few milliseconds for up to 10 s (for background tasks on real time).
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..2000 {
            if cond() {
                return true;
            }
            tokio::time::sleep(MS(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn spawned_dns_refresh_updates_the_set() {
        let s = Arc::new(set(Strategy::RoundRobin, &["stale"]));
        let task = spawn_dns_refresh(
            Arc::clone(&s),
            "localhost".to_owned(),
            4321,
            MS(10),
            by_addr,
        );
        assert!(eventually(|| s.snapshot().iter().all(|e| e.label.ends_with(":4321"))).await);
        task.abort();
    }

    // ---- health checks ----

    #[tokio::test]
    async fn probe_round_marks_endpoints() {
        let flags: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(true))).collect();
        let s = EndpointSet::new(
            Strategy::RoundRobin,
            EjectionConfig::default(),
            flags
                .iter()
                .enumerate()
                .map(|(i, f)| (i.to_string(), Arc::clone(f)))
                .collect(),
        );
        let probe = |f: &Arc<AtomicBool>| -> BoxFuture<'static, bool> {
            let up = f.load(Ordering::SeqCst);
            Box::pin(async move { up })
        };
        flags[1].store(false, Ordering::SeqCst);
        probe_all(&s, &probe).await;
        let healthy: Vec<_> = s.snapshot().iter().map(|e| e.healthy).collect();
        assert_eq!(healthy, [true, false, true]);
        flags[1].store(true, Ordering::SeqCst);
        probe_all(&s, &probe).await;
        assert_eq!(s.usable_count(), 3);
    }

    async fn http_server(up: Arc<AtomicBool>) -> SocketAddr {
        use axum::{http::StatusCode, routing::get};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/healthz",
            get(move || {
                let up = up.load(Ordering::SeqCst);
                async move {
                    if up {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn http_probe_follows_the_status() {
        let up = Arc::new(AtomicBool::new(true));
        let addr = http_server(Arc::clone(&up)).await;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/healthz");
        assert!(http_probe(client.clone(), url.clone(), MS(2000)).await);
        up.store(false, Ordering::SeqCst);
        assert!(!http_probe(client.clone(), url.clone(), MS(2000)).await);
        assert!(!http_probe(client.clone(), format!("http://{addr}/missing"), MS(2000)).await);

        // Nothing listening.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        assert!(!http_probe(client.clone(), format!("http://{dead}/"), MS(2000)).await);

        // Accepts but never answers: the probe's own timeout decides.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        assert!(!http_probe(client, format!("http://{silent_addr}/"), MS(100)).await);
        assert!(started.elapsed() < MS(2000));
        drop(silent);
    }

    #[tokio::test]
    async fn spawned_health_checks_track_an_http_backend() {
        let up = Arc::new(AtomicBool::new(true));
        let addr = http_server(Arc::clone(&up)).await;
        let s = Arc::new(EndpointSet::new(
            Strategy::RoundRobin,
            EjectionConfig::default(),
            vec![(addr.to_string(), format!("http://{addr}"))],
        ));
        let client = reqwest::Client::new();
        let task = spawn_health_checks(Arc::clone(&s), MS(10), move |base: &String| {
            http_probe(client.clone(), format!("{base}/healthz"), MS(1000))
        });
        up.store(false, Ordering::SeqCst);
        assert!(eventually(|| s.usable_count() == 0).await);
        up.store(true, Ordering::SeqCst);
        assert!(eventually(|| s.usable_count() == 1).await);
        task.abort();
    }

    #[tokio::test]
    async fn grpc_probe_follows_the_serving_status() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("catalog.v1.Catalog", ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(stream, _)| stream);
            Some((conn, l))
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let probe = |svc: &str| grpc_probe(channel.clone(), svc.to_owned(), MS(2000));

        assert!(probe("catalog.v1.Catalog").await);
        // The empty name is the whole server, which health_reporter registers as serving.
        assert!(probe("").await);
        assert!(!probe("unknown.Service").await, "NOT_FOUND is not healthy");
        reporter
            .set_service_status("catalog.v1.Catalog", ServingStatus::NotServing)
            .await;
        assert!(!probe("catalog.v1.Catalog").await);
        server.abort();

        // Nothing listening.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let dead_channel = tonic::transport::Endpoint::from_shared(format!("http://{dead}"))
            .unwrap()
            .connect_lazy();
        assert!(!grpc_probe(dead_channel, String::new(), MS(500)).await);
    }
}
