//! `/healthz` (the process is alive) and `/readyz` (it should get traffic). Readiness is false
//! while shutting down, and while a required backend (the catalog: without it no title can be
//! shown) has no usable endpoint — none reachable, all ejected or failing health checks, or its
//! breaker open. Every backend's state is reported so an operator sees why.

use std::{sync::Arc, time::Duration};

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use super::AppState;
use crate::upstream::resilience::BreakerState;

/// How long a readiness probe waits for one TCP connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    if !app.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        );
    }
    let statuses = app.upstream.status();
    let probes = statuses.iter().map(|b| async move {
        let reachable =
            futures::future::join_all(b.endpoints.iter().map(|e| reachable(&e.label))).await;
        reachable.into_iter().filter(|r| *r).count()
    });
    let reachable = futures::future::join_all(probes).await;
    let mut ready = true;
    let mut backends = serde_json::Map::new();
    for (b, reachable) in statuses.iter().zip(reachable) {
        let usable =
            b.usable_endpoints > 0 && reachable > 0 && b.breaker != Some(BreakerState::Open);
        if b.required && !usable {
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
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ready { "ready" } else { "not_ready" }, "backends": backends })),
    )
}

async fn reachable(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
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
