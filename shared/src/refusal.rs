//! The one shape of an answer given outside GraphQL execution — a pipeline stage's refusal, a
//! body that is too large or too slow, a pass-through route's failure: a GraphQL-style error body
//! with a code from the closed list (`crate::error`), the request's trace id, and the backend to
//! blame when there is one. Below the pipeline's stages and the GraphQL service, which both use
//! it.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value as Json;

use crate::error::ErrorCode;

/// A one-error GraphQL response body (with the request's trace id, like every error we send).
pub(crate) fn error_body(code: ErrorCode, message: &str) -> serde_json::Value {
    let mut ext = serde_json::json!({ "code": code.as_str() });
    if let Some(t) = crate::telemetry::current() {
        ext["traceId"] = t.trace.trace_id_hex().into();
    }
    serde_json::json!({ "errors": [{ "message": message, "extensions": ext }] })
}

/// An answer outside GraphQL execution (a pipeline stage's refusal, a pass-through route's
/// failure) in the same error shape: `application/json`, never stored by a cache, with
/// `extensions.backend` when a backend is to blame.
pub(crate) fn json_error(
    status: http::StatusCode,
    code: ErrorCode,
    message: &str,
    backend: Option<&str>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut body = error_body(code, message);
    if let (Some(b), Some(ext)) = (backend, body["errors"][0]["extensions"].as_object_mut()) {
        ext.insert("backend".into(), b.into());
    }
    (
        status,
        [
            (
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            ),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A refusal in the GraphQL error shape, in the media type `Accept` asks for (JSON when it asks
/// for neither): for stages before the service that refuse a GraphQL request.
pub(crate) fn refusal(
    headers: &HeaderMap,
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response {
    reject(
        status,
        negotiate(headers).unwrap_or(Mode::Json),
        code,
        message,
    )
}

pub(crate) const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json; charset=utf-8";
pub(crate) const JSON: &str = "application/json; charset=utf-8";

/// Which media type the client gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `application/graphql-response+json`: request errors get 4xx.
    GraphqlResponse,
    /// Legacy `application/json`: well-formed requests always get 200.
    Json,
}

impl Mode {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::GraphqlResponse => GRAPHQL_RESPONSE_JSON,
            Self::Json => JSON,
        }
    }
}

/// Picks the response media type from `Accept` (q-values honoured); `None` → 406.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Mode> {
    // Several Accept headers mean the same as one with their values joined.
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Some(Mode::Json);
    }
    let mut best: Option<(f32, Mode)> = None;
    for part in accept.split(',') {
        let mut params = part.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let mode = match media.as_str() {
            "application/graphql-response+json" => Mode::GraphqlResponse,
            "application/json" | "application/*" | "*/*" => Mode::Json,
            _ => continue,
        };
        // Equal weights prefer graphql-response+json, the spec's preferred type.
        let better = match best {
            None => true,
            Some((bq, bm)) => {
                q > bq || (q == bq && mode == Mode::GraphqlResponse && bm == Mode::Json)
            }
        };
        if better {
            best = Some((q, mode));
        }
    }
    best.map(|(_, m)| m)
}

pub(crate) fn respond(status: StatusCode, mode: Mode, body: &Json) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    respond_body(status, mode, bytes)
}

/// What every GraphQL answer depends on besides its URL and body: the viewer (personalized
/// rows), the media type asked for, and the encoding. A shared cache must key on all three, or it
/// could hand a signed-in viewer the anonymous homepage or a JSON client the wrong content type.
pub(crate) const VARY: &str = "authorization, accept, accept-encoding";

pub(crate) fn respond_body(status: StatusCode, mode: Mode, body: impl Into<Body>) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(mode.content_type()),
            ),
            (header::VARY, HeaderValue::from_static(VARY)),
            // Executed answers replace it with their own policy ([`cache_control`]); refusals
            // (some, like 405, are cacheable by default) are never stored.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.into(),
    )
        .into_response()
}

pub(crate) fn reject(status: StatusCode, mode: Mode, code: ErrorCode, message: &str) -> Response {
    respond(status, mode, &error_body(code, message))
}

/// A pipeline stage's refusal: in the GraphQL error shape and media type `Accept` asks for when
/// the stage guards the GraphQL service, else the plain JSON error of pass-through routes.
pub(crate) fn stage_refusal(
    graphql: bool,
    headers: &HeaderMap,
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response {
    if graphql {
        refusal(headers, status, code, message)
    } else {
        json_error(status, code, message, None)
    }
}
