//! The one shape of an answer given outside GraphQL execution — a pipeline stage's refusal, a
//! body that is too large or too slow, a pass-through route's failure: a GraphQL-style error body
//! with a code from the closed list (`crate::error`), the request's trace id, and the backend to
//! blame when there is one. Below the pipeline's stages and the GraphQL service, which both use
//! it.

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
