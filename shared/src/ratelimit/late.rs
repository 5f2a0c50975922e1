//! The decisions a request still owes after the pipeline's stage: the policies that need the
//! operation (decided once the GraphQL service has measured it) and the further operations of a
//! batch. The stage makes one [`LateLimits`] per GraphQL request and puts it on the request (an
//! ordinary request extension); the service asks it; the stage reads back what was decided for
//! the answer's headers.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{Operation, Outcome, RateLimiter, Subject};

/// One request's late rate-limit checks: its subject, and what they decided.
pub struct LateLimits {
    limiter: Arc<RateLimiter>,
    subject: Subject,
    decided: Mutex<Outcome>,
}

impl LateLimits {
    /// Checks for `subject`'s request against `limiter`'s policies.
    pub(crate) fn new(limiter: Arc<RateLimiter>, subject: Subject) -> Self {
        Self {
            limiter,
            subject,
            decided: Mutex::new(Outcome::default()),
        }
    }

    /// One more operation of a batch, charged to the policies that need only the client: the
    /// stage charged the HTTP request (the batch's first operation) before the body was read;
    /// each further operation is charged here, once the body shows how many there are, so a
    /// batch of `n` costs what `n` requests sent alone would. `Some(message)` when a policy
    /// refuses this operation (nothing is charged for it then).
    pub(crate) async fn another_operation(&self) -> Option<String> {
        let outcome = self.limiter.check_early(&self.subject).await;
        if outcome.is_empty() {
            return None;
        }
        let refused = (!outcome.allowed()).then(|| outcome.message());
        if let Some(msg) = &refused {
            tracing::info!(client_address = %self.subject.ip, "batched operation refused by a rate limit: {msg}");
        }
        self.decided.lock().extend(outcome);
        refused
    }

    /// The policies that need the operation, decided once the GraphQL service has measured it:
    /// `Some(message)` when one refuses (the service answers `429 RATE_LIMITED`; the stage adds
    /// the headers).
    pub(crate) async fn operation(&self, op: Operation<'_>) -> Option<String> {
        let outcome = self.limiter.check_late(&self.subject, op).await;
        if outcome.is_empty() {
            return None;
        }
        let refused = (!outcome.allowed()).then(|| outcome.message());
        if let Some(msg) = &refused {
            tracing::info!(client_address = %self.subject.ip, operation = op.name.unwrap_or("anonymous"), "operation refused by a rate limit: {msg}");
        }
        self.decided.lock().extend(outcome);
        refused
    }

    /// What the checks decided so far (for the answer's headers).
    pub(crate) fn take_decided(&self) -> Outcome {
        std::mem::take(&mut *self.decided.lock())
    }
}
