//! The one place every backend call passes through. Per backend: the request's deadline caps
//! every attempt (`min(timeout, time left)`, sent to gRPC servers as `grpc-timeout`); a circuit
//! breaker fails fast while the backend is failing; a concurrency limit with a short queue sheds
//! load instead of piling it up; calls are balanced over endpoints with passive outlier ejection;
//! idempotent reads are retried with jittered exponential backoff, within a retry budget so
//! retries cannot multiply load on a backend that is already failing. Writes are never retried.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::Instrument;

use super::deadline::Deadline;
use super::resilience::{
    Backoff, BreakerConfig, BreakerState, CircuitBreaker, ConcurrencyLimit, EjectionConfig,
    EndpointSet, EndpointStatus, RetryBudget,
};
use crate::{config::BackendSettings, telemetry::metrics::Metrics};

/// Whether a call may be repeated safely (reads) or not (writes are never retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Idempotent read.
    Read,
    /// State-changing call.
    Write,
}

/// How one attempt (or the whole call) failed, before it becomes a client-facing error.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// No answer within the attempt's time (or no time left at all).
    Timeout,
    /// Connect refused/reset and other transport errors.
    Transport(String),
    /// The backend said it cannot serve (5xx, 429, gRPC UNAVAILABLE…).
    Unavailable(String),
    /// The backend refused the request or answered garbage: retrying would not help, and it says
    /// nothing about the backend's health.
    Rejected(String),
    /// The breaker is open: the backend was not called.
    Open,
    /// Over the concurrency limit and its queue: the backend was not called.
    Overloaded,
    /// The client broke the call (its request body was malformed, too large, too slow, or it
    /// went away): says nothing about the backend, so it counts for neither the breaker, the
    /// endpoint's ejection nor a retry.
    Client(String),
}

impl Failure {
    /// Whether another attempt may succeed: exactly the failures that say the backend (or
    /// endpoint) is unhealthy, not a rejection of the request itself.
    fn retryable(&self) -> bool {
        self.is_health_failure()
    }

    /// Whether this says the backend (or endpoint) is unhealthy.
    fn is_health_failure(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Transport(_) | Self::Unavailable(_)
        )
    }
}

/// The resilience state of one backend, generic over what an endpoint is (a base URL, a channel).
pub(crate) struct BackendPolicy<E> {
    pub(crate) name: String,
    pub(crate) endpoints: Arc<EndpointSet<E>>,
    breaker: Option<CircuitBreaker>,
    budget: RetryBudget,
    limit: ConcurrencyLimit,
    backoff: Backoff,
    retries: u32,
    timeout: Duration,
    pub(crate) required: bool,
    metrics: Option<Arc<Metrics>>,
}

/// What `/readyz` and metrics report about one backend.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    /// Backend name.
    pub name: String,
    /// The breaker's state; `None` when the backend has no breaker.
    pub breaker: Option<BreakerState>,
    /// Endpoints not ejected and not failing health checks.
    pub usable_endpoints: usize,
    /// Every endpoint's state.
    pub endpoints: Vec<EndpointStatus>,
    /// Calls in flight.
    pub in_flight: usize,
    /// Whether readiness depends on it.
    pub required: bool,
}

impl<E: Clone + Send + Sync + 'static> BackendPolicy<E> {
    pub(crate) fn new(
        name: &str,
        s: &BackendSettings,
        endpoints: Vec<(String, E)>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let b = &s.breaker;
        let breaker = b.enabled.then(|| {
            CircuitBreaker::new(BreakerConfig {
                failure_ratio: b.failure_ratio,
                min_calls: b.min_calls,
                window: b.window,
                open_for: b.open_for,
                half_open_probes: b.half_open_probes,
                close_after: b.close_after,
                max_open_for: b.max_open_for,
            })
        });
        let e = &s.ejection;
        let ejection = EjectionConfig {
            consecutive_failures: e.consecutive_failures,
            base_ejection: e.base,
            max_ejection: e.max,
            max_ejected_percent: e.max_ejected_percent,
        };
        Self {
            name: name.to_owned(),
            endpoints: Arc::new(EndpointSet::new(s.balance, ejection, endpoints)),
            breaker,
            budget: RetryBudget::new(
                s.retry_budget.ratio,
                s.retry_budget.window,
                s.retry_budget.min_retries,
            ),
            limit: ConcurrencyLimit::new(
                s.concurrency.max_in_flight,
                s.concurrency.max_queue,
                s.concurrency.queue_timeout,
            ),
            backoff: Backoff {
                base: s.backoff.base,
                max: s.backoff.max,
            },
            retries: s.retries,
            timeout: s.timeout,
            required: s.required,
            metrics,
        }
    }

    /// Runs a call: `op` makes one attempt against an endpoint within the given time.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        kind: CallKind,
        deadline: &Deadline,
        op: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(E, Duration) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.call_excused(kind, deadline, |_| false, op).await
    }

    /// [`Self::call`] for a call the client takes part in (a pass-through request streaming its
    /// body): when `client_at_fault(&failure)` says the client broke a failed attempt, the
    /// failure is [`Failure::Client`] and counts against nobody.
    pub(crate) async fn call_excused<T, F, Fut>(
        &self,
        kind: CallKind,
        deadline: &Deadline,
        client_at_fault: impl Fn(&Failure) -> bool,
        mut op: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(E, Duration) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if kind == CallKind::Read {
            self.budget.record_request();
        }
        let _in_flight = self
            .metrics
            .as_ref()
            .map(|m| m.upstream_in_flight(&self.name));
        let mut attempt = 0u32;
        // The endpoint the last attempt failed on: a retry goes elsewhere when it can.
        let mut failed_on: Option<String> = None;
        loop {
            let left = deadline.left();
            if left == Some(Duration::ZERO) {
                return Err(Failure::Timeout);
            }
            let per_try = left.map_or(self.timeout, |l| l.min(self.timeout));
            let permit = match &self.breaker {
                Some(b) => Some(b.try_acquire().map_err(|_| Failure::Open)?),
                None => None,
            };
            let _slot = self
                .limit
                .acquire()
                .await
                .map_err(|_| Failure::Overloaded)?;
            let endpoint = self.pick_avoiding(failed_on.as_deref())?;
            let span = tracing::info_span!(
                "upstream.call",
                otel.name = %format!("{} call", self.name),
                backend = %self.name,
                endpoint = %endpoint.label(),
                attempt = attempt + 1,
                outcome = tracing::field::Empty,
                duration_ms = tracing::field::Empty,
            );
            let started = Instant::now();
            // The attempt is created inside its span so the `traceparent` it sends names this span.
            let attempt_fut = span.in_scope(|| op(endpoint.payload().clone(), per_try));
            // Cut at the backend's timeout, or at the deadline as it stands then (a load shared
            // by several requests runs until the latest of their deadlines, which may grow
            // while this attempt runs).
            let attempt_fut =
                tokio::time::timeout(self.timeout, attempt_fut.instrument(span.clone()));
            let outcome = tokio::select! {
                r = attempt_fut => r.unwrap_or(Err(Failure::Timeout)),
                () = deadline.passed() => Err(Failure::Timeout),
            };
            let outcome = match outcome {
                Err(f) if !matches!(f, Failure::Client(_)) && client_at_fault(&f) => {
                    Err(Failure::Client(format!("client broke the call ({f:?})")))
                }
                other => other,
            };
            let label = match &outcome {
                Ok(_) => "ok",
                Err(Failure::Timeout) => "timeout",
                Err(Failure::Rejected(_)) => "rejected",
                Err(Failure::Client(_)) => "client",
                Err(_) => "error",
            };
            span.record("outcome", label);
            span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
            if let Some(m) = &self.metrics {
                m.upstream_attempt(&self.name, endpoint.label(), label, started.elapsed());
            }
            let failure = match outcome {
                Ok(v) => {
                    endpoint.success();
                    if let Some(p) = permit {
                        p.success();
                    }
                    return Ok(v);
                }
                Err(f) => f,
            };
            failed_on = Some(endpoint.label().to_owned());
            if failure.is_health_failure() {
                endpoint.failure();
                if let Some(p) = permit {
                    p.failure();
                }
            } else if let Failure::Client(_) = failure {
                // Neither a success nor a failure of the backend: the permit is dropped
                // unsettled (not counted) and the endpoint's record is left alone.
                drop(permit);
            } else {
                // A rejected request is the caller's problem, not a sign the backend is down.
                endpoint.success();
                if let Some(p) = permit {
                    p.success();
                }
            }
            drop(endpoint);
            let may_retry = kind == CallKind::Read && failure.retryable() && attempt < self.retries;
            if !may_retry || !self.budget.try_withdraw() {
                return Err(failure);
            }
            let pause = self.backoff.delay_thread_rng(attempt);
            if deadline.get().is_some_and(|d| Instant::now() + pause >= d) {
                return Err(failure);
            }
            tracing::debug!(backend = %self.name, attempt = attempt + 1, error = ?failure, "retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// An endpoint, never `avoid` (the one the last attempt failed on) while another usable one
    /// exists.
    fn pick_avoiding(
        &self,
        avoid: Option<&str>,
    ) -> Result<super::resilience::EndpointGuard<E>, Failure> {
        match avoid {
            Some(label) => self.endpoints.pick_avoiding(label),
            None => self.endpoints.pick(),
        }
        .ok_or_else(|| Failure::Transport("no endpoints".into()))
    }

    pub(crate) fn status(&self) -> BackendStatus {
        BackendStatus {
            name: self.name.clone(),
            breaker: self.breaker.as_ref().map(CircuitBreaker::state),
            usable_endpoints: self.endpoints.usable_count(),
            endpoints: self.endpoints.snapshot(),
            in_flight: self.limit.in_flight(),
            required: self.required,
        }
    }
}
