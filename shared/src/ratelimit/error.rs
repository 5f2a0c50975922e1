//! Errors of the rate limiter's boundary: building it (a bad Redis URL), and what a store can
//! fail with while deciding (the caller never sees these: a failed Redis decision is made
//! locally instead).

/// Why the limiter could not be built or a store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// `rate_limits.store` is not a usable Redis URL.
    #[error("rate_limits.store: cannot use {url}: {source}")]
    RedisUrl {
        /// The URL, without credentials.
        url: String,
        /// What the client said.
        source: redis::RedisError,
    },
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within `rate_limits.redis_timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The script's reply had an unexpected shape.
    #[error("unexpected reply from the rate-limit script: {0}")]
    Reply(String),
}
