//! `/healthz` (the process is alive) and `/readyz` (it should get traffic: not shutting down and
//! the required backend reachable). Readiness probes each backend address with a short TCP
//! connect so an orchestrator stops routing to an instance that cannot serve homepages.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use super::AppState;
use crate::upstream::BackendId;

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
    let probes = BackendId::ALL.map(|b| {
        let url = app.settings.backends.get(b).url.clone();
        async move { (b, reachable(&url).await) }
    });
    let results = futures::future::join_all(probes).await;
    let backends: BTreeMap<&str, serde_json::Value> = results
        .iter()
        .map(|(b, ok)| {
            (
                b.name(),
                json!({ "reachable": ok, "required": *b == BackendId::Catalog }),
            )
        })
        .collect();
    // Without the catalog no title can be shown; the other backends only cost a row each.
    let ready = results
        .iter()
        .all(|(b, ok)| *ok || *b != BackendId::Catalog);
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
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}
