//! `GET /metrics`: Prometheus text exposition. Values owned elsewhere (cache counters, breaker
//! states, endpoint counts) are read into the registry at scrape time, so the hot paths that own
//! them never touch the registry.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    cache::FragmentCache,
    telemetry::metrics::{CONTENT_TYPE, Metrics},
    upstream::Upstream,
};

/// What a scrape reads.
pub(crate) struct Scrape {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstream: Upstream,
    pub(crate) cache: FragmentCache,
    pub(crate) events: Arc<dyn crate::events::EventBus>,
    pub(crate) live: Arc<crate::live::Live>,
}

pub(super) async fn serve(State(app): State<Arc<Scrape>>) -> Response {
    let metrics = &app.metrics;
    for b in app.upstream.status() {
        // No breaker counts as closed: calls are never refused.
        metrics.set_breaker_state(&b.name, b.breaker.map_or(0, |s| s.as_gauge()));
        metrics.set_endpoints(&b.name, b.usable_endpoints, b.endpoints.len());
    }
    for (kind, s) in app.cache.stats().snapshot() {
        metrics.set_cache(
            kind,
            s.hits,
            s.misses,
            s.stale,
            s.coalesced,
            s.evictions,
            s.bytes,
        );
    }
    if let Some(l2) = app.cache.l2_stats() {
        metrics.set_l2(l2.totals());
    }
    metrics.set_events(&app.events.status());
    let live = &app.live;
    let closed: Vec<(&'static str, u64)> = live
        .stats
        .refused
        .lock()
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    metrics.set_live(
        (
            live.stats.ws_open.load(Relaxed),
            live.stats.sse_open.load(Relaxed),
            live.stats.multipart_open.load(Relaxed),
        ),
        live.stats.subscriptions.load(Relaxed),
        live.groups.len(),
        app.cache.watched_keys(),
        (
            live.stats.ws_messages.load(Relaxed),
            live.stats.sse_messages.load(Relaxed),
            live.stats.multipart_messages.load(Relaxed),
        ),
        &closed,
    );
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
