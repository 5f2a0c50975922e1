//! `BackendError`: what can go wrong talking to a backend. Carries the backend's name for the
//! client-facing `backend` extension; the `reason` text is for logs only and never reaches a client.

use super::BackendId;

/// A failed backend call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Connection refused/reset, 5xx, gRPC UNAVAILABLE and the like.
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: BackendId,
        /// Log-only detail.
        reason: String,
    },
    /// No answer within the call's time limit.
    #[error("{backend} timed out")]
    Timeout {
        /// Which backend.
        backend: BackendId,
    },
    /// The backend answered something we cannot use (bad JSON, unexpected status, rejected input).
    #[error("{backend} answered unexpectedly: {reason}")]
    Protocol {
        /// Which backend.
        backend: BackendId,
        /// Log-only detail.
        reason: String,
    },
}

impl BackendError {
    /// The backend to blame.
    pub fn backend(&self) -> BackendId {
        match self {
            Self::Unavailable { backend, .. }
            | Self::Timeout { backend }
            | Self::Protocol { backend, .. } => *backend,
        }
    }

    /// Whether the call ran out of time (→ `BACKEND_TIMEOUT`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
