//! The closed list of error codes clients may see (`extensions.code`), and the one place where
//! internal errors become GraphQL errors. Upstream bodies and internal `Display` text never reach
//! a client: every conversion here picks a fixed, client-safe message.

use async_graphql::ErrorExtensions;

use crate::upstream::{BackendError, BackendId};

/// Every `extensions.code` a response can carry (DESIGN.md "Public contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No valid identity where one is required, or a bad token.
    Unauthenticated,
    /// Identity known but not allowed.
    Forbidden,
    /// An argument or variable the client sent is invalid.
    BadUserInput,
    /// The document does not parse.
    GraphqlParseFailed,
    /// The document does not validate against the schema.
    GraphqlValidationFailed,
    /// A backend refused, failed or is unreachable.
    BackendUnavailable,
    /// A backend did not answer in time.
    BackendTimeout,
    /// Too many requests.
    RateLimited,
    /// Over the depth or complexity limit.
    QueryTooComplex,
    /// Persisted query hash unknown.
    PersistedQueryNotFound,
    /// A bug on our side; details are in the log, not the response.
    Internal,
}

impl ErrorCode {
    /// The wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::GraphqlParseFailed => "GRAPHQL_PARSE_FAILED",
            Self::GraphqlValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            Self::BackendUnavailable => "BACKEND_UNAVAILABLE",
            Self::BackendTimeout => "BACKEND_TIMEOUT",
            Self::RateLimited => "RATE_LIMITED",
            Self::QueryTooComplex => "QUERY_TOO_COMPLEX",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::Internal => "INTERNAL",
        }
    }

    /// A GraphQL error with this code and a client-safe message.
    pub fn error(self, message: impl Into<String>) -> async_graphql::Error {
        async_graphql::Error::new(message).extend_with(|_, e| e.set("code", self.as_str()))
    }
}

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

/// A GraphQL error for a failed backend call, naming the backend in `extensions.backend`.
pub fn backend_error(err: &BackendError) -> async_graphql::Error {
    let backend: BackendId = err.backend();
    let (code, message) = if err.is_timeout() {
        (
            ErrorCode::BackendTimeout,
            format!("the {backend} service did not answer in time"),
        )
    } else {
        (
            ErrorCode::BackendUnavailable,
            format!("the {backend} service is unavailable"),
        )
    };
    async_graphql::Error::new(message).extend_with(|_, e| {
        e.set("code", code.as_str());
        e.set("backend", backend.name());
    })
}

/// `BACKEND_UNAVAILABLE` naming `events`: the event bus did not accept a write (its outbox is
/// full while the broker is away). The write was NOT accepted; the client may retry.
pub fn events_unavailable() -> async_graphql::Error {
    async_graphql::Error::new("the events service is unavailable; the report was not accepted")
        .extend_with(|_, e| {
            e.set("code", ErrorCode::BackendUnavailable.as_str());
            e.set("backend", "events");
        })
}
