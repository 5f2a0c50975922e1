//! The one place every backend call passes through. Today: a per-backend time limit, applied both
//! as a local timer and (for gRPC) as the deadline sent to the server. Retries, budgets, breakers
//! and balancing slot in here without touching the clients or their callers, which is why calls
//! arrive as closures that can be invoked again.

use std::{future::Future, time::Duration};

use super::{BackendError, BackendId};
use crate::config::BackendsSettings;

/// Whether a call may be repeated safely (reads) or not (writes are never retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Idempotent read.
    Read,
    /// State-changing call.
    Write,
}

/// Per-backend call policy.
#[derive(Debug, Clone)]
pub struct Policy {
    timeouts: [Duration; 7],
}

impl Policy {
    /// Policy from config.
    pub fn new(settings: &BackendsSettings) -> Self {
        Self {
            timeouts: BackendId::ALL.map(|b| settings.get(b).timeout),
        }
    }

    fn timeout(&self, backend: BackendId) -> Duration {
        self.timeouts[backend as usize]
    }

    /// Runs one call under the backend's policy.
    pub async fn call<T, F, Fut>(
        &self,
        backend: BackendId,
        kind: CallKind,
        op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut op = op;
        self.call_with_deadline(backend, kind, |_| op()).await
    }

    /// Like [`Policy::call`], telling the call how long it has (gRPC sends it as `grpc-timeout`).
    pub async fn call_with_deadline<T, F, Fut>(
        &self,
        backend: BackendId,
        _kind: CallKind,
        mut op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let limit = self.timeout(backend);
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(limit, op(limit)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout { backend }),
        };
        if let Err(err) = &outcome {
            // Logged once here, where the failure is known; callers turn it into a client-safe error.
            tracing::warn!(backend = backend.name(), elapsed_ms = started.elapsed().as_millis() as u64, error = %err, "backend call failed");
        }
        outcome
    }
}
