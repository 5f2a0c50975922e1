//! The one place every backend call passes through. Per backend: the request's deadline caps
//! every attempt (`min(timeout, time left)`, sent to gRPC servers as `grpc-timeout`); a circuit
//! breaker fails fast while the backend is failing; a concurrency limit with a short queue sheds
//! load instead of piling it up; calls are balanced over endpoints with passive outlier ejection;
//! idempotent reads are retried with jittered exponential backoff, within a retry budget so
//! retries cannot multiply load on a backend that is already failing. Writes are never retried.
//!
//! A call that fails in the end (after its retries) logs one warn line, `backend call failed`,
//! with the backend, the error class, the endpoint of the last attempt and the request's trace id;
//! at most one a second per backend, the next one counting those held back (`suppressed`), so an
//! operator sees why without the log drowning. A failure the client caused is not logged.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::Instrument;

use super::deadline::Deadline;
use super::resilience::{
    Backoff, BreakerConfig, BreakerState, CircuitBreaker, ConcurrencyLimit, EjectionConfig,
    EndpointSet, EndpointStatus, LogLimit, RetryBudget,
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

/// At most one `backend call failed` line per backend this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

impl Failure {
    /// The error class a failed call is logged with; `None` for a failure the client caused,
    /// which says nothing an operator of the backend could act on.
    fn class(&self) -> Option<&'static str> {
        Some(match self {
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(_) => "rejected",
            Self::Open => "breaker_open",
            Self::Overloaded => "overloaded",
            Self::Client(_) => return None,
        })
    }

    /// What the backend or the transport said, when anything.
    fn detail(&self) -> &str {
        match self {
            Self::Transport(d) | Self::Unavailable(d) | Self::Rejected(d) | Self::Client(d) => d,
            Self::Timeout | Self::Open | Self::Overloaded => "",
        }
    }

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
    /// Rate of this backend's `backend call failed` lines.
    failure_log: LogLimit,
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
            CircuitBreaker::for_backend(
                name,
                BreakerConfig {
                    failure_ratio: b.failure_ratio,
                    min_calls: b.min_calls,
                    window: b.window,
                    open_for: b.open_for,
                    half_open_probes: b.half_open_probes,
                    close_after: b.close_after,
                    max_open_for: b.max_open_for,
                },
            )
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
            endpoints: Arc::new(EndpointSet::for_backend(
                name, s.balance, ejection, endpoints,
            )),
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
            failure_log: LogLimit::new(FAILURE_LOG_EVERY),
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
        op: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(E, Duration) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut last_endpoint = None;
        let result = self
            .attempts(kind, deadline, client_at_fault, op, &mut last_endpoint)
            .await;
        if let Err(failure) = &result {
            self.log_failure(failure, last_endpoint.as_deref());
        }
        result
    }

    /// The warn line of a failed call (rate-limited per backend, see the module doc).
    fn log_failure(&self, failure: &Failure, endpoint: Option<&str>) {
        let Some(class) = failure.class() else {
            return;
        };
        let Some(suppressed) = self.failure_log.admit() else {
            return;
        };
        tracing::warn!(
            backend = %self.name,
            error = class,
            endpoint = endpoint.unwrap_or("none"),
            trace_id = %current_trace_id().as_deref().unwrap_or("none"),
            detail = failure.detail(),
            suppressed,
            "backend call failed"
        );
    }

    /// The attempts of one call; `failed_on` ends as the endpoint the last failed attempt used.
    async fn attempts<T, F, Fut>(
        &self,
        kind: CallKind,
        deadline: &Deadline,
        client_at_fault: impl Fn(&Failure) -> bool,
        mut op: F,
        failed_on: &mut Option<String>,
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
        // `failed_on`, the endpoint the last attempt failed on: a retry goes elsewhere when it can.
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
            *failed_on = Some(endpoint.label().to_owned());
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

/// The trace id of the request a call is made for: the request task's own, else (in a shared
/// load running in a task of its own) the OpenTelemetry context of the current span, which the
/// request's span parents.
fn current_trace_id() -> Option<String> {
    if let Some(t) = crate::telemetry::current() {
        return Some(t.trace.trace_id_hex());
    }
    crate::telemetry::current_otel_span().map(|sc| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        collections::BTreeMap,
        fmt,
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tracing::{
        Event, Level, Subscriber,
        field::{Field, Visit},
    };
    use tracing_subscriber::{
        Layer, Registry,
        layer::{Context, SubscriberExt as _},
    };

    use super::*;
    use crate::{
        config::{BackendsSettings, Strategy},
        telemetry::{RequestTrace, trace::TraceContext},
    };

    /// One captured log line: its level, message and fields as text.
    #[derive(Debug, Clone)]
    struct Line {
        level: Level,
        fields: BTreeMap<String, String>,
    }

    impl Line {
        fn message(&self) -> &str {
            self.fields.get("message").map_or("", String::as_str)
        }

        fn field(&self, name: &str) -> &str {
            self.fields.get(name).map_or("<absent>", String::as_str)
        }
    }

    /// Every event of the thread's subscriber, kept for assertions.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<Line>>>);

    impl Captured {
        /// The lines with `message`.
        fn lines(&self, message: &str) -> Vec<Line> {
            let all = self.0.lock().unwrap();
            all.iter()
                .filter(|l| l.message() == message)
                .cloned()
                .collect()
        }

        /// The lines with `message` naming `backend`.
        fn of(&self, message: &str, backend: &str) -> Vec<Line> {
            let mut lines = self.lines(message);
            lines.retain(|l| l.field("backend") == backend);
            lines
        }
    }

    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }

    impl<S: Subscriber> Layer<S> for Captured {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(Line {
                level: *event.metadata().level(),
                fields: fields.0,
            });
        }
    }

    fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let guard = tracing::subscriber::set_default(Registry::default().with(captured.clone()));
        (captured, guard)
    }

    /// A backend's settings with `retries` and everything else at its default.
    fn settings(retries: u32) -> BackendSettings {
        let mut s = BackendsSettings::local_fixtures()
            .get(crate::config::BackendId::Top10)
            .clone();
        s.retries = retries;
        s
    }

    fn traced() -> Arc<RequestTrace> {
        Arc::new(RequestTrace {
            trace: TraceContext::new_root(),
            request_id: "req-1".into(),
        })
    }

    /// A hundred failing calls to one backend within a second log one warn line naming the
    /// backend, the error class, the endpoint and the trace id; a second backend failing at the
    /// same time gets its own line; the next line, a second later, counts the 99 held back. The
    /// breaker the failures open logs its opening once, and the calls it refuses are failures of
    /// class `breaker_open` with no endpoint.
    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_logs_one_warn_line_a_second_with_what_failed() {
        let (logs, _guard) = capture();
        let top10 = BackendPolicy::new(
            "top10",
            &settings(0),
            vec![("http://top10-a:7001/top10".to_owned(), ())],
            None,
        );
        let catalog = BackendPolicy::new(
            "catalog",
            &settings(0),
            vec![("http://catalog-a:7002".to_owned(), ())],
            None,
        );
        let trace = traced();
        let trace_id = trace.trace.trace_id_hex();
        crate::telemetry::scope(trace, async {
            for _ in 0..100 {
                let r: Result<(), Failure> = top10
                    .call(CallKind::Read, &Deadline::new(None), |(), _| async {
                        Err(Failure::Unavailable("HTTP 503 Service Unavailable".into()))
                    })
                    .await;
                assert!(r.is_err());
                let r: Result<(), Failure> = catalog
                    .call(CallKind::Read, &Deadline::new(None), |(), _| async {
                        Err(Failure::Timeout)
                    })
                    .await;
                assert!(r.is_err());
            }
        })
        .await;

        let lines = logs.lines("backend call failed");
        assert_eq!(lines.len(), 2, "one line per backend: {lines:#?}");
        let top = &logs.of("backend call failed", "top10")[0];
        assert_eq!(top.level, Level::WARN);
        assert_eq!(top.field("error"), "unavailable");
        assert_eq!(top.field("endpoint"), "http://top10-a:7001/top10");
        assert_eq!(top.field("trace_id"), trace_id);
        assert_eq!(top.field("detail"), "HTTP 503 Service Unavailable");
        assert_eq!(top.field("suppressed"), "0");
        let cat = &logs.of("backend call failed", "catalog")[0];
        assert_eq!(cat.level, Level::WARN);
        assert_eq!(cat.field("error"), "timeout");
        assert_eq!(cat.field("endpoint"), "http://catalog-a:7002");
        assert_eq!(cat.field("trace_id"), trace_id);
        // Both breakers opened (20 calls, all failed), each logged once, naming its backend.
        for backend in ["top10", "catalog"] {
            let opened = logs.of("circuit breaker opened", backend);
            assert_eq!(opened.len(), 1, "{backend}: {opened:#?}");
            assert_eq!(opened[0].level, Level::WARN);
        }

        // A second later (the breaker still open): one line, counting the 99 held back.
        tokio::time::advance(FAILURE_LOG_EVERY).await;
        let r: Result<(), Failure> = top10
            .call(CallKind::Read, &Deadline::new(None), |(), _| async {
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(Failure::Open)));
        let top = logs.of("backend call failed", "top10");
        assert_eq!(top.len(), 2, "{top:#?}");
        assert_eq!(top[1].field("error"), "breaker_open");
        assert_eq!(top[1].field("endpoint"), "none");
        assert_eq!(top[1].field("suppressed"), "99");
        assert_eq!(
            top[1].field("trace_id"),
            "none",
            "outside a request there is no trace"
        );
        assert_eq!(logs.of("backend call failed", "catalog").len(), 1);
    }

    /// A failure the client caused is not the backend's: no line.
    #[tokio::test(start_paused = true)]
    async fn a_call_the_client_broke_logs_nothing() {
        let (logs, _guard) = capture();
        let p = BackendPolicy::new(
            "my_list",
            &settings(2),
            vec![("http://m:1".into(), ())],
            None,
        );
        let r: Result<(), Failure> = p
            .call(CallKind::Write, &Deadline::new(None), |(), _| async {
                Err(Failure::Client("body too large".into()))
            })
            .await;
        assert!(matches!(r, Err(Failure::Client(_))));
        assert!(logs.lines("backend call failed").is_empty());
    }

    /// An endpoint's ejection and its return are logged once each, naming the backend and the
    /// endpoint, however many calls go by; so are the breaker's opening, half-opening and closing.
    #[tokio::test]
    async fn ejection_and_breaker_changes_are_logged_once_each_with_the_backend() {
        let (logs, _guard) = capture();
        let mut s = settings(0);
        s.balance = Strategy::RoundRobin;
        s.ejection.consecutive_failures = 3;
        s.ejection.base = Duration::from_millis(40);
        s.ejection.max = Duration::from_millis(40);
        s.breaker.enabled = false;
        let p = BackendPolicy::new(
            "profile",
            &s,
            vec![("a".to_owned(), "a"), ("b".to_owned(), "b")],
            None,
        );
        let a_fails = AtomicBool::new(true);
        let run = |n: usize| {
            let (p, a_fails) = (&p, &a_fails);
            async move {
                for _ in 0..n {
                    let _ = p
                        .call(CallKind::Read, &Deadline::new(None), |ep, _| async move {
                            if ep == "a" && a_fails.load(Ordering::Relaxed) {
                                Err(Failure::Transport("connection refused".into()))
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                }
            }
        };
        run(40).await;
        let ejected = logs.of("endpoint ejected after consecutive failures", "profile");
        assert_eq!(ejected.len(), 1, "{ejected:#?}");
        assert_eq!(ejected[0].field("endpoint"), "a");
        assert_eq!(ejected[0].level, Level::WARN);
        let failed = logs.of("backend call failed", "profile");
        assert!(!failed.is_empty());
        for line in &failed {
            assert_eq!(line.field("error"), "transport");
            assert_eq!(line.field("endpoint"), "a", "only `a` failed");
        }

        // The ejection runs out (the balancer's clock is the real one); `a` recovers.
        std::thread::sleep(Duration::from_millis(60));
        a_fails.store(false, Ordering::Relaxed);
        run(40).await;
        let back = logs.of("endpoint back in rotation: its ejection ran out", "profile");
        assert_eq!(back.len(), 1, "{back:#?}");
        assert_eq!(back[0].field("endpoint"), "a");
        assert_eq!(back[0].level, Level::INFO);
        assert_eq!(
            logs.lines("endpoint ejected after consecutive failures")
                .len(),
            1
        );

        // The breaker: opened, half-open and closed, once each.
        let mut s = settings(0);
        s.breaker.min_calls = 5;
        s.breaker.open_for = Duration::from_millis(30);
        s.breaker.max_open_for = Duration::from_millis(30);
        s.breaker.half_open_probes = 1;
        s.breaker.close_after = 2;
        let p = BackendPolicy::new("recommendations", &s, vec![("r".into(), ())], None);
        for _ in 0..20 {
            let r: Result<(), Failure> = p
                .call(CallKind::Read, &Deadline::new(None), |(), _| async {
                    Err(Failure::Unavailable("HTTP 500".into()))
                })
                .await;
            assert!(r.is_err());
        }
        std::thread::sleep(Duration::from_millis(40));
        for _ in 0..10 {
            let r = p
                .call(CallKind::Read, &Deadline::new(None), |(), _| async {
                    Ok(())
                })
                .await;
            assert!(r.is_ok());
        }
        for (message, level) in [
            ("circuit breaker opened", Level::WARN),
            ("circuit breaker half-open: probing", Level::INFO),
            ("circuit breaker closed", Level::INFO),
        ] {
            let lines = logs.of(message, "recommendations");
            assert_eq!(lines.len(), 1, "{message}: {lines:#?}");
            assert_eq!(lines[0].level, level, "{message}");
        }
    }
}
