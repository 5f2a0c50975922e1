//! The observe stage: for every request it takes or creates the W3C trace context and the
//! request id, runs the request inside one `http.request` span (route template, method, status,
//! duration, client, client address, GraphQL operation), puts `x-trace-id` and `x-request-id` on
//! the response, and writes one access-log line. Route labels are templates (`/graphql`, a route
//! prefix), never raw paths, so logs and metrics stay bounded.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use tracing::{Instrument, field};

use super::client_addr::ClientAddr;
use crate::telemetry::{
    RequestTrace,
    metrics::Metrics,
    trace::{REQUEST_ID, TRACE_ID, TraceContext, request_id},
};

/// The stage's state.
pub(crate) struct Observe {
    /// Client label for logs and metrics: `web`, `mobile`.
    pub(crate) client: &'static str,
    pub(crate) metrics: Option<Arc<Metrics>>,
}

/// The middleware.
pub(crate) async fn observe(State(app): State<Arc<Observe>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace = TraceContext::from_headers(req.headers());
    let request_id: Arc<str> = Arc::from(request_id(req.headers()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let addr = req
        .extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        http.method = %method,
        http.route = %route,
        http.status_code = field::Empty,
        client = app.client,
        client.address = %addr,
        graphql.operation = field::Empty,
        trace_id = field::Empty,
        request_id = %request_id,
        duration_ms = field::Empty,
    );
    let trace = crate::telemetry::link(&span, trace);
    let trace_hex = trace.trace_id_hex();
    span.record("trace_id", trace_hex.as_str());
    let traced = Arc::new(RequestTrace {
        trace,
        request_id: request_id.clone(),
    });

    let in_flight = app.metrics.as_ref().map(|m| m.http_in_flight());
    let mut resp = crate::telemetry::scope(traced, next.run(req))
        .instrument(span.clone())
        .await;
    drop(in_flight);

    let status = resp.status().as_u16();
    let took = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&trace_hex) {
        resp.headers_mut().insert(TRACE_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(m) = &app.metrics {
        m.http_request(&route, method.as_str(), status, took);
    }
    span.record("http.status_code", status);
    span.record("duration_ms", took.as_secs_f64() * 1000.0);
    tracing::info!(
        target: "bff::access",
        parent: &span,
        method = %method,
        route = %route,
        status,
        duration_ms = took.as_secs_f64() * 1000.0,
        client = app.client,
        client_address = %addr,
        trace_id = %trace_hex,
        request_id = %request_id,
        "request"
    );
    resp
}
