//! The closed list of error codes clients may see (`extensions.code`). The ground: it imports
//! no other module. Upstream bodies and internal `Display` text never reach a client: every
//! conversion picks a fixed, client-safe message (backend failures in `crate::graphql`, the
//! answers of stages outside GraphQL in `crate::refusal`).

use async_graphql::ErrorExtensions;

/// Every `extensions.code` a response can carry: a closed list, part of the public contract
/// (`docs/operations.md`, "Errors").
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

    /// The code whose wire value is `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Unauthenticated,
            Self::Forbidden,
            Self::BadUserInput,
            Self::GraphqlParseFailed,
            Self::GraphqlValidationFailed,
            Self::BackendUnavailable,
            Self::BackendTimeout,
            Self::RateLimited,
            Self::QueryTooComplex,
            Self::PersistedQueryNotFound,
            Self::Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// A GraphQL error with this code and a client-safe message.
    pub fn error(self, message: impl Into<String>) -> async_graphql::Error {
        async_graphql::Error::new(message).extend_with(|_, e| e.set("code", self.as_str()))
    }
}

/// `BACKEND_UNAVAILABLE` naming `events`: the event bus did not accept a write (its outbox is
/// full while the broker is away). The write was NOT accepted; the client may retry.
pub(crate) fn events_unavailable() -> async_graphql::Error {
    async_graphql::Error::new("the events service is unavailable; the report was not accepted")
        .extend_with(|_, e| {
            e.set("code", ErrorCode::BackendUnavailable.as_str());
            e.set("backend", "events");
        })
}

/// `Display` of an error and its sources, for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
