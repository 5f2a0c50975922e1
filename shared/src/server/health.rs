//! `/healthz` (the process is alive) and `/readyz` (it should get traffic). Readiness is false
//! while shutting down, while a required backend (the catalog: without it no title can be
//! shown) has no usable endpoint — none reachable, all ejected or failing health checks, or its
//! breaker open — and while an identity provider's keys have never loaded.
//!
//! The public listener's `/readyz` says only that (`200 ready`, `503 unready`/`draining`): the
//! backends' endpoints, breaker states and in-flight counts are internal, and are served as JSON
//! by the admin listener's `/readyz` (`admin.listen`). Reachability is a TCP connect to each
//! endpoint, probed at most once per [`PROBE_TTL`] however often load balancers ask.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
// The tokio clock, so tests can run the TTL on paused time.
use tokio::time::Instant;

use crate::upstream::{BackendStatus, Upstream, resilience::BreakerState};

/// What readiness is decided from: the running config's backends and identity providers (a
/// config reload makes a new one), and the instance's own state.
pub(crate) struct Health {
    pub(crate) upstream: Upstream,
    /// Readiness also needs every identity provider's keys loaded once.
    pub(crate) auth: Arc<crate::auth::Authenticator>,
    /// What outlives config reloads.
    pub(crate) instance: Arc<Instance>,
    /// The event bus: reported, never a reason to be unready (while it is away writes wait in
    /// the outbox and caches fall back to their TTLs).
    pub(crate) events: Arc<dyn crate::events::EventBus>,
}

/// The instance's side of readiness, the same whatever the config.
pub(crate) struct Instance {
    /// Which backend endpoints answer, probed at most once per TTL.
    pub(crate) reachability: Reachability,
    /// False from the shutdown signal on.
    pub(crate) ready: std::sync::atomic::AtomicBool,
}

impl Instance {
    pub(crate) fn new() -> Self {
        Self {
            reachability: Reachability::tcp(),
            ready: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl Health {
    pub(crate) fn new(
        upstream: Upstream,
        auth: Arc<crate::auth::Authenticator>,
        events: Arc<dyn crate::events::EventBus>,
        instance: Arc<Instance>,
    ) -> Self {
        Self {
            upstream,
            auth,
            events,
            instance,
        }
    }

    fn is_ready(&self) -> bool {
        self.instance
            .ready
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How long a readiness probe waits for one TCP connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long one round of TCP probes answers every readiness request: probes come every few
/// seconds from each load balancer, and each round opens a connection to every endpoint.
pub(crate) const PROBE_TTL: Duration = Duration::from_secs(2);

type Probe = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;
/// One round of probes: when it ran, and each endpoint's answer.
type Round = (Instant, Arc<HashMap<String, bool>>);

/// Which endpoints answer a TCP connect, probed at most once per [`PROBE_TTL`]; concurrent askers
/// share one round.
pub(crate) struct Reachability {
    probe: Probe,
    ttl: Duration,
    last: tokio::sync::Mutex<Option<Round>>,
}

impl Reachability {
    /// TCP connects with [`PROBE_TIMEOUT`], cached for [`PROBE_TTL`].
    fn tcp() -> Self {
        Self::with_probe(Arc::new(|url| Box::pin(tcp_reachable(url))), PROBE_TTL)
    }

    fn with_probe(probe: Probe, ttl: Duration) -> Self {
        Self {
            probe,
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Reachability of every endpoint label in `labels` (URLs), from the last round while it is
    /// fresh and covers them all.
    async fn of(&self, labels: &[&str]) -> Arc<HashMap<String, bool>> {
        // Held across the probes on purpose: a second asker waits for this round, not a new one.
        let mut last = self.last.lock().await;
        if let Some((at, known)) = &*last
            && at.elapsed() < self.ttl
            && labels.iter().all(|l| known.contains_key(*l))
        {
            return known.clone();
        }
        let results =
            futures::future::join_all(labels.iter().map(|l| (self.probe)((*l).to_owned()))).await;
        let known: Arc<HashMap<String, bool>> = Arc::new(
            labels
                .iter()
                .map(|l| (*l).to_owned())
                .zip(results)
                .collect(),
        );
        *last = Some((Instant::now(), known.clone()));
        known
    }
}

/// The readiness of the instance and of every backend.
struct Report {
    ready: bool,
    backends: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn detail(&self, app: &Health) -> serde_json::Value {
        json!({
            "status": if self.ready { "ready" } else { "not_ready" },
            "backends": self.backends,
            "identityProviders": app.auth.issuer_status(),
            "events": events_detail(&app.events.status()),
        })
    }
}

async fn report(app: &Health) -> Report {
    let statuses = app.upstream.status();
    let labels: Vec<&str> = statuses
        .iter()
        .flat_map(|b| b.endpoints.iter().map(|e| e.label.as_str()))
        .collect();
    let reachable = app.instance.reachability.of(&labels).await;
    // Without its keys no token of an identity provider can be verified: not ready to serve.
    let mut ready = app.auth.ready();
    let mut backends = serde_json::Map::new();
    for b in &statuses {
        let reachable = b
            .endpoints
            .iter()
            .filter(|e| reachable.get(&e.label).copied().unwrap_or(false))
            .count();
        if b.required && !usable(b, reachable) {
            ready = false;
        }
        backends.insert(
            b.name.clone(),
            json!({
                "required": b.required,
                "reachable": reachable > 0,
                "reachableEndpoints": reachable,
                "usableEndpoints": b.usable_endpoints,
                "breaker": b.breaker.map_or("disabled", BreakerState::as_str),
                "inFlight": b.in_flight,
                "endpoints": b.endpoints,
            }),
        );
    }
    Report { ready, backends }
}

/// The bus's state; `status` says in one word whether caches are invalidated by events (`up`)
/// or only by their TTLs (`down`).
fn events_detail(s: &crate::events::BusStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "status".into(),
            (if s.connected { "up" } else { "down" }).into(),
        );
        if !s.connected {
            o.insert(
                "caches".into(),
                "fragments kept fresh by events are refetched after events.max_stale_while_disconnected until the bus is back".into(),
            );
        }
    }
    v
}

fn usable(b: &BackendStatus, reachable: usize) -> bool {
    b.usable_endpoints > 0 && reachable > 0 && b.breaker != Some(BreakerState::Open)
}

pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The public `/readyz`: the status and one word, nothing about the backends.
pub(super) async fn readyz(State(app): State<Arc<Health>>) -> Response {
    let (status, word) = if !app.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if report(&app).await.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unready")
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        word,
    )
        .into_response()
}

/// The admin listener's `/readyz`: the same status, with every backend's state.
pub(super) async fn readyz_detail(State(app): State<Arc<Health>>) -> Response {
    if !app.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    let report = report(&app).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.detail(&app))).into_response()
}

async fn tcp_reachable(url: String) -> bool {
    let Ok(url) = reqwest::Url::parse(&url) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// However often readiness is asked, each endpoint is probed once per TTL, concurrent askers
    /// share one round, and a new endpoint is probed at once.
    #[tokio::test(start_paused = true)]
    async fn probes_run_once_per_ttl_however_often_readiness_is_asked() {
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let reach = Reachability::with_probe(
            Arc::new(move |url: String| {
                let counted = counted.clone();
                Box::pin(async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    !url.contains("down")
                })
            }),
            PROBE_TTL,
        );
        let labels = ["http://a:1", "http://down:2"];
        let answers = futures::future::join_all((0..20).map(|_| reach.of(&labels))).await;
        assert_eq!(probes.load(Ordering::SeqCst), 2, "one round for 20 askers");
        for a in &answers {
            assert_eq!(a.get("http://a:1"), Some(&true));
            assert_eq!(a.get("http://down:2"), Some(&false));
        }
        for _ in 0..10 {
            reach.of(&labels).await;
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(probes.load(Ordering::SeqCst), 2, "still within the TTL");
        tokio::time::advance(PROBE_TTL).await;
        reach.of(&labels).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            4,
            "a new round after the TTL"
        );
        reach
            .of(&["http://a:1", "http://down:2", "http://new:3"])
            .await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            7,
            "an unknown endpoint is probed at once"
        );
    }
}
