//! Prometheus metrics of one BFF instance: the registry, every `bff_*` metric family (declared
//! once, in one table), the bounding of label values, the counters mirrored from other
//! components' own totals, and the text exposition served on `/metrics`.
//!
//! Each [`Metrics`] owns its own [`Registry`] (never the process-global default one) because
//! several BFFs run in one test process and must not share counters. Every series carries a
//! constant `client` label (`web` | `mobile`).
//!
//! Label cardinality is bounded here, not by callers: GraphQL operation names are client-
//! controlled, so only well-formed names are admitted and at most `max_operation_names` of them
//! (first come) ever get their own series; endpoint labels are capped per backend because DNS
//! can grow them; HTTP methods, statuses, operation types and outcomes are mapped onto small
//! closed sets. Everything that does not fit lands in a catch-all value (`other`, `invalid`,
//! `unknown`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};

/// Content-Type of [`Metrics::render`]'s output (Prometheus text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Operation label for requests without an operation name (or an empty one).
pub(crate) const OPERATION_ANONYMOUS: &str = "anonymous";
/// Operation label for names that are not GraphQL-ish identifiers of at most 64 characters.
pub(crate) const OPERATION_INVALID: &str = "invalid";
/// Catch-all label value once a cap is reached or a value is outside its closed set.
pub(crate) const LABEL_OTHER: &str = "other";
/// Most distinct endpoint labels kept per backend; later endpoints are counted as `other`.
pub(crate) const MAX_ENDPOINTS_PER_BACKEND: usize = 32;

/// Longest operation name that gets its own series (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`).
const MAX_OPERATION_NAME_LEN: usize = 64;

/// Latency buckets (seconds) for every histogram: 1 ms up to 5 s, roughly 1-2.5-5 per decade,
/// which covers cache hits through slow upstream fan-outs; slower still lands in `+Inf`.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const OPERATION_TYPES: [&str; 3] = ["query", "mutation", "subscription"];
const GRAPHQL_OUTCOMES: [&str; 3] = ["ok", "partial", "error"];
const UPSTREAM_OUTCOMES: [&str; 5] = ["ok", "error", "timeout", "rejected", "client"];

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric family could not be created or registered (bad name, duplicate family).
    #[error("cannot register metric `{name}`: {source}")]
    Register {
        /// The family's name.
        name: &'static str,
        /// What the prometheus crate reported.
        source: prometheus::Error,
    },
    /// The gathered families could not be encoded as text.
    #[error("cannot encode metrics: {0}")]
    Encode(prometheus::Error),
}

/// Keeps a gauge one higher for as long as it lives: `+1` when created, `-1` when dropped.
#[must_use = "the in-flight gauge drops back as soon as the guard is dropped"]
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    gauge: IntGauge,
}

impl InFlightGuard {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Declares every metric family once — field, kind, label names, metric name, help — and
/// generates from that one table the [`Families`] struct and its registration. Plain families
/// come first; the `mirrored` groups are counter sets that copy a source's own cumulative totals
/// ([`Mirrored`]), declared in the order the source's totals are handed to [`Mirrored::observe`].
macro_rules! metric_families {
    (
        families {
            $(
                $(#[$doc:meta])*
                $field:ident: $kind:ident[$($label:literal),*] = $name:literal, $help:literal;
            )+
        }
        mirrored {
            $(
                $(#[$group_doc:meta])*
                $group:ident[$($group_label:literal),*] {
                    $($member:literal, $member_help:literal;)+
                }
            )+
        }
    ) => {
        /// Every metric family of one BFF, as declared in the table.
        struct Families {
            $($(#[$doc])* $field: $kind,)+
            $($(#[$group_doc])* $group: Mirrored<{ [$($member),+].len() }>,)+
        }

        impl Families {
            /// Creates every family and registers it with `f`'s registry.
            fn register(f: &Factory) -> Result<Self, MetricsError> {
                Ok(Self {
                    $($field: f.family($name, $help, &[$($label),*])?,)+
                    $($group: {
                        let labels: &[&str] = &[$($group_label),*];
                        Mirrored::new([$(f.family($member, $member_help, labels)?),+])
                    },)+
                })
            }
        }
    };
}

// The table. The exposition lists families by name, so the order here is only for reading.
metric_families! {
    families {
        // HTTP and connections.
        http_requests: IntCounterVec["route", "method", "status"] = "bff_http_requests_total",
            "HTTP requests finished by the BFF, by matched route template, method and response status.";
        http_duration: HistogramVec["route"] = "bff_http_request_duration_seconds",
            "Time from receiving an HTTP request to finishing its response, by matched route template.";
        http_in_flight: IntGauge[] = "bff_http_requests_in_flight",
            "HTTP requests currently being served by the BFF.";
        http_connections: IntGauge[] = "bff_http_connections",
            "Client connections currently open.";
        connections_refused: IntCounterVec["reason"] = "bff_http_connections_refused_total",
            "Client connections closed on arrival, by reason (limit: server.max_connections reached).";
        ip_refused: IntCounterVec["scope"] = "bff_ip_refused_total",
            "Requests refused by the client-address rules, by scope (global or the pass-through route's prefix).";
        tls_reloads: IntCounterVec["result"] = "bff_tls_reloads_total",
            "Reloads of the listener's TLS certificate, key and client CA after they changed on disk or on SIGHUP, by result (ok; error = the new files were refused and the running certificate kept).";
        config_reloads: IntCounterVec["result"] = "bff_config_reloads_total",
            "Reloads of the config file after it changed or on SIGHUP, by result (ok = the new config is in use; error = it was refused and the running one kept).";

        // GraphQL execution.
        graphql_operations: IntCounterVec["operation", "type", "outcome"] = "bff_graphql_operations_total",
            "GraphQL operations executed, by operation name (bounded: anonymous, invalid, other), type and outcome (ok, partial = data with errors, error = no data).";
        graphql_duration: HistogramVec["operation", "type"] = "bff_graphql_operation_duration_seconds",
            "Time to execute one GraphQL operation, by operation name (bounded) and type.";
        graphql_coalesced: IntCounterVec[] = "bff_graphql_coalesced_total",
            "GraphQL requests answered by another identical request's execution (graphql.coalesce).";
        graphql_deferred_parts: IntCounterVec["part"] = "bff_graphql_deferred_parts_total",
            "Parts of incremental answers sent (@defer on homepage rows, multipart/mixed), by part: first (the row list) or later (rows as they complete).";
        graphql_deferred_in_flight: IntGauge[] = "bff_graphql_deferred_in_flight",
            "Incremental answers (@defer) whose parts are still being composed and sent.";

        // Rate limits.
        ratelimit_decisions: IntCounterVec["policy", "outcome"] = "bff_ratelimit_decisions_total",
            "Rate-limit decisions per policy: allowed = the policy admitted the request (another may still refuse it), limited = it refused.";
        ratelimit_fallback: IntCounterVec["reason"] = "bff_ratelimit_store_fallback_total",
            "Rate-limit decisions made in-process because the Redis store failed (error), was too slow (timeout) or was being waited out after a failure (down).";

        // Backends.
        upstream_requests: IntCounterVec["backend", "endpoint", "outcome"] = "bff_upstream_requests_total",
            "Attempts to call a backend (each retry counts), by backend, endpoint (at most 32 per backend, then other) and outcome (ok, error, timeout, rejected = the backend refused the request, client = the client broke the call).";
        upstream_duration: HistogramVec["backend", "outcome"] = "bff_upstream_request_duration_seconds",
            "Time of one attempt to call a backend, by backend and outcome.";
        upstream_in_flight: IntGaugeVec["backend"] = "bff_upstream_in_flight",
            "Calls to a backend currently in flight.";
        breaker_state: IntGaugeVec["backend"] = "bff_upstream_breaker_state",
            "Circuit breaker state per backend: 0 closed (calls flow), 1 open (calls rejected), 2 half-open (probing).";
        endpoints: IntGaugeVec["backend", "state"] = "bff_upstream_endpoints",
            "Endpoints known per backend: state=total is all resolved endpoints, state=usable those currently eligible for calls.";

        // Cache (its counters are mirrored, below).
        cache_bytes: IntGaugeVec["kind"] = "bff_cache_bytes",
            "Approximate bytes currently held by the cache, by cache kind.";

        // Event bus (its counters are mirrored, below).
        events_outbox: IntGaugeVec["state"] = "bff_events_outbox",
            "The event outbox: state=depth is events accepted and not yet confirmed by the broker, state=capacity its bound (writes are refused beyond it).";
        events_spool: IntGaugeVec["unit"] = "bff_events_spool",
            "The local event spool: unit=events is accepted events waiting there for the broker, unit=bytes the bytes it holds.";
        events_connected: IntGauge[] = "bff_events_connected",
            "1 while connected to the event bus (domain events invalidate caches), 0 while caches rely on TTLs only.";
        events_lag: FloatGauge[] = "bff_events_lag_seconds",
            "Age of the last consumed event when this instance handled it.";

        // Subscriptions (the live doors' counters are mirrored, below).
        subscription_connections: IntGaugeVec["transport"] = "bff_subscription_connections",
            "Subscription connections open now, by transport (ws = /graphql/ws, sse = /graphql/stream, multipart = a subscription streamed from /graphql).";
        subscriptions_active: IntGauge[] = "bff_subscriptions",
            "Subscriptions running now, on every connection.";
        subscription_executions: IntGauge[] = "bff_subscription_executions",
            "Subscription executions running now: subscribers of the same operation and view share one.";
        subscription_watched: IntGauge[] = "bff_subscription_watched_fragments",
            "Fragment keys subscriptions are waiting on for a change.";
    }
    mirrored {
        /// The cache's own totals per kind, in the order of [`Metrics::set_cache`]'s arguments.
        cache_counters["kind"] {
            "bff_cache_hits_total",
                "Cache lookups answered from a fresh cached entry, by cache kind.";
            "bff_cache_misses_total",
                "Cache lookups that found no usable entry and went to the backend, by cache kind.";
            "bff_cache_stale_total",
                "Cache lookups answered from a stale entry (served while refreshing or while the backend failed), by cache kind.";
            "bff_cache_coalesced_total",
                "Cache misses that waited for an identical in-flight backend call instead of making their own, by cache kind.";
            "bff_cache_evictions_total",
                "Entries removed from the cache to respect its size or age limits, by cache kind.";
        }
        /// The shared L2 tier's own totals, in the order of [`Metrics::set_l2`]'s argument.
        l2_counters[] {
            "bff_cache_l2_hits_total",
                "Reads of the shared L2 tier (Redis) that found a usable fragment (after an L1 miss).";
            "bff_cache_l2_misses_total",
                "Reads of the shared L2 tier that found nothing usable.";
            "bff_cache_l2_errors_total",
                "Commands to the shared L2 tier that failed or took longer than cache.l2_timeout (the cache then went on with L1 and the backends).";
            "bff_cache_l2_skipped_total",
                "Commands not sent to the shared L2 tier because it had just failed (it is retried by one command every 500 ms).";
            "bff_cache_l2_too_large_total",
                "Fragments not written to the shared L2 tier for being over cache.l2_max_entry_bytes compressed.";
            "bff_cache_l2_read_bytes_total",
                "Compressed bytes read from the shared L2 tier.";
            "bff_cache_l2_written_bytes_total",
                "Compressed bytes written to the shared L2 tier.";
        }
        /// Messages written to subscribers, by transport.
        subscription_messages["transport"] {
            "bff_subscription_messages_total",
                "Messages written to subscribers (next, error, complete), by transport (ws, sse, multipart).";
        }
        /// Connections refused or closed by a bound, by reason.
        subscription_closed["reason"] {
            "bff_subscription_closed_total",
                "Subscription connections refused or closed by a bound or a protocol error, by reason (max_connections, max_connections_per_address, max_connections_per_user, max_subscriptions_per_connection, init_timeout, token_refused, token_expired, too_slow, keepalive, invalid_message, message_too_big, ...).";
        }
        /// The event bus's own totals, in the order [`Metrics::set_events`] reads them.
        events_counters[] {
            "bff_events_published_total",
                "Publishes sent to the event broker (a republish after a fault counts again).";
            "bff_events_confirmed_total",
                "Publishes the event broker confirmed (they left the outbox).";
            "bff_events_consumed_total",
                "Events this instance handled (applied, or recognised as already applied).";
            "bff_events_redelivered_total",
                "Deliveries the broker marked as redelivered.";
            "bff_events_duplicates_total",
                "Deliveries skipped because their event id had been applied already.";
            "bff_events_failed_total",
                "Deliveries a handler refused (each retry counts).";
            "bff_events_dead_lettered_total",
                "Deliveries given up on after bounded retries (to the dead-letter queue).";
            "bff_events_reconnects_total",
                "Connections to the event broker made after the first.";
            "bff_events_superseded_total",
                "Deliveries dropped as older than what was applied for their subject (last writer wins).";
            "bff_events_returned_total",
                "Work publishes the broker returned because no queue took them (declared again and retried, then refused).";
            "bff_events_too_large_total",
                "Events refused on publish or dead-lettered on consume for being over events.max_message_bytes.";
            "bff_events_spooled_total",
                "Events written to the local spool (the broker was unreachable or too slow to confirm).";
            "bff_events_unsettled_total",
                "Events neither confirmed by the broker nor spooled when a shutdown's grace ran out (lost).";
        }
    }
}

/// All metrics of one BFF instance. `Send + Sync`; share it by reference or `Arc`.
pub struct Metrics {
    client: &'static str,
    registry: Registry,
    family: Families,

    max_operation_names: usize,
    /// Operation names that own a series. Read-locked on the hot path; write-locked only while
    /// still below the cap and a new name shows up.
    operation_names: RwLock<HashSet<Box<str>>>,
    /// Endpoint labels admitted per backend, at most [`MAX_ENDPOINTS_PER_BACKEND`] each.
    endpoint_names: RwLock<HashMap<Box<str>, HashSet<Box<str>>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("client", &self.client)
            .field("max_operation_names", &self.max_operation_names)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the registry and every metric family for one BFF. `client` (`"web"` |
    /// `"mobile"`) becomes the constant `client` label; `max_operation_names` caps how many
    /// distinct operation names ever get their own series.
    pub fn new(client: &'static str, max_operation_names: usize) -> Result<Self, MetricsError> {
        let f = Factory {
            registry: Registry::new(),
            client,
        };
        let family = Families::register(&f)?;
        Ok(Self {
            client,
            registry: f.registry,
            family,
            max_operation_names,
            operation_names: RwLock::new(HashSet::new()),
            endpoint_names: RwLock::new(HashMap::new()),
        })
    }

    /// Records one finished HTTP request. `route` is the matched route template
    /// (`"/graphql"`, `"/healthz"`, `"/readyz"`, `"/metrics"`, `"/graphiql/assets"`, a
    /// pass-through prefix, or `"other"` for unmatched) — never a raw path. Methods outside
    /// the standard nine are counted as `OTHER`, statuses outside 100..=999 as `other`.
    pub(crate) fn http_request(&self, route: &str, method: &str, status: u16, duration: Duration) {
        let method = if HTTP_METHODS.contains(&method) {
            method
        } else {
            "OTHER"
        };
        let mut digits = [0u8; 3];
        let status = status_label(status, &mut digits);
        self.family
            .http_requests
            .with_label_values(&[route, method, status])
            .inc();
        self.family
            .http_duration
            .with_label_values(&[route])
            .observe(duration.as_secs_f64());
    }

    /// Counts one HTTP request as in flight until the returned guard is dropped.
    pub(crate) fn http_in_flight(&self) -> InFlightGuard {
        InFlightGuard::new(self.family.http_in_flight.clone())
    }

    /// Counts one client connection as open until the returned guard is dropped.
    pub(crate) fn http_connection(&self) -> InFlightGuard {
        InFlightGuard::new(self.family.http_connections.clone())
    }

    /// Counts one connection closed on arrival; `reason` is a fixed word (`limit`).
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.family
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts one request that shared another's execution.
    pub(crate) fn graphql_coalesced(&self) {
        self.family
            .graphql_coalesced
            .with_label_values::<&str>(&[])
            .inc();
    }

    /// Counts one part of an incremental answer: the `first` or a `later` one.
    pub(crate) fn graphql_deferred_part(&self, first: bool) {
        self.family
            .graphql_deferred_parts
            .with_label_values(&[if first { "first" } else { "later" }])
            .inc();
    }

    /// Counts one incremental answer as being sent until the returned guard is dropped (its last
    /// part went out, or the client left).
    pub(crate) fn graphql_deferred_in_flight(&self) -> InFlightGuard {
        InFlightGuard::new(self.family.graphql_deferred_in_flight.clone())
    }

    /// Counts one policy's decision; `policy` is a configured name (bounded by the config).
    pub(crate) fn ratelimit_decision(&self, policy: &str, allowed: bool) {
        let outcome = if allowed { "allowed" } else { "limited" };
        self.family
            .ratelimit_decisions
            .with_label_values(&[policy, outcome])
            .inc();
    }

    /// Counts one reload of the listener's TLS files (`ok`) or one refused (`error`).
    pub(crate) fn tls_reload(&self, ok: bool) {
        self.family
            .tls_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts one config reload applied (`ok`) or refused (`error`).
    pub(crate) fn config_reload(&self, ok: bool) {
        self.family
            .config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Counts one decision made locally because Redis could not make it; `reason` is `error`,
    /// `timeout` or `down`.
    pub(crate) fn ratelimit_fallback(&self, reason: &'static str) {
        self.family
            .ratelimit_fallback
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts one request refused by the client-address rules of `scope` (`global` or a route
    /// prefix: bounded by the config).
    pub(crate) fn ip_refused(&self, scope: &str) {
        self.family.ip_refused.with_label_values(&[scope]).inc();
    }

    /// Records one GraphQL operation. `operation` is the client's operationName (`None` =
    /// anonymous), bounded as the module doc says; `kind` is `query` | `mutation` |
    /// `subscription` (anything else: `unknown`); `outcome` is `ok` | `partial` (data with
    /// errors) | `error` (request error, no data) (anything else: `other`).
    pub(crate) fn graphql_operation(
        &self,
        operation: Option<&str>,
        kind: &str,
        outcome: &str,
        duration: Duration,
    ) {
        let operation = self.operation_label(operation);
        let kind = one_of(kind, &OPERATION_TYPES, "unknown");
        let outcome = one_of(outcome, &GRAPHQL_OUTCOMES, LABEL_OTHER);
        self.family
            .graphql_operations
            .with_label_values(&[operation, kind, outcome])
            .inc();
        self.family
            .graphql_duration
            .with_label_values(&[operation, kind])
            .observe(duration.as_secs_f64());
    }

    /// Records one attempt to call a backend. `outcome` is `ok` | `error` | `timeout` |
    /// `rejected` (anything else: `other`); `endpoint` gets its own series only among the
    /// first [`MAX_ENDPOINTS_PER_BACKEND`] endpoints seen for `backend`.
    pub(crate) fn upstream_attempt(
        &self,
        backend: &str,
        endpoint: &str,
        outcome: &str,
        duration: Duration,
    ) {
        let endpoint = self.endpoint_label(backend, endpoint);
        let outcome = one_of(outcome, &UPSTREAM_OUTCOMES, LABEL_OTHER);
        self.family
            .upstream_requests
            .with_label_values(&[backend, endpoint, outcome])
            .inc();
        self.family
            .upstream_duration
            .with_label_values(&[backend, outcome])
            .observe(duration.as_secs_f64());
    }

    /// Counts one call to `backend` as in flight until the returned guard is dropped.
    pub(crate) fn upstream_in_flight(&self, backend: &str) -> InFlightGuard {
        InFlightGuard::new(self.family.upstream_in_flight.with_label_values(&[backend]))
    }

    /// Sets the breaker state of `backend` (0 closed, 1 open, 2 half-open). Read from the
    /// breaker right before rendering.
    pub(crate) fn set_breaker_state(&self, backend: &str, state: u8) {
        self.family
            .breaker_state
            .with_label_values(&[backend])
            .set(i64::from(state));
    }

    /// Sets how many endpoints `backend` has in total and how many are usable. Read from the
    /// endpoint set right before rendering.
    pub(crate) fn set_endpoints(&self, backend: &str, usable: usize, total: usize) {
        self.family
            .endpoints
            .with_label_values(&[backend, "usable"])
            .set(saturating_i64(usable));
        self.family
            .endpoints
            .with_label_values(&[backend, "total"])
            .set(saturating_i64(total));
    }

    /// Mirrors one cache's own cumulative counters (and its current size) into the exposition,
    /// right before rendering.
    ///
    /// The counters only ever grow: each call adds what the cache counted since the previous
    /// call. If an observed value is *lower* than last time, the cache's counters were reset
    /// (the cache was rebuilt), so the whole new value counts as new events — the exported
    /// counter still never decreases, and `rate()` stays right across the reset. `bytes` is a
    /// gauge and is simply set.
    #[allow(clippy::too_many_arguments)] // the contract mirrors the cache's counter set 1:1
    pub(crate) fn set_cache(
        &self,
        kind: &str,
        hits: u64,
        misses: u64,
        stale: u64,
        coalesced: u64,
        evictions: u64,
        bytes: u64,
    ) {
        self.family
            .cache_counters
            .observe(&[kind], [hits, misses, stale, coalesced, evictions]);
        self.family
            .cache_bytes
            .with_label_values(&[kind])
            .set(saturating_i64(bytes));
    }

    /// Mirrors the live doors' state: connections by transport, subscriptions, shared
    /// executions, watched fragments, messages by transport, closes by reason.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_live(
        &self,
        (ws, sse, multipart): (usize, usize, usize),
        subscriptions: usize,
        executions: usize,
        watched: usize,
        (ws_messages, sse_messages, multipart_messages): (u64, u64, u64),
        closed: &[(&'static str, u64)],
    ) {
        let f = &self.family;
        f.subscription_connections
            .with_label_values(&["ws"])
            .set(saturating_i64(ws as u64));
        f.subscription_connections
            .with_label_values(&["sse"])
            .set(saturating_i64(sse as u64));
        f.subscription_connections
            .with_label_values(&["multipart"])
            .set(saturating_i64(multipart as u64));
        f.subscriptions_active
            .set(saturating_i64(subscriptions as u64));
        f.subscription_executions
            .set(saturating_i64(executions as u64));
        f.subscription_watched.set(saturating_i64(watched as u64));
        f.subscription_messages.observe(&["ws"], [ws_messages]);
        f.subscription_messages.observe(&["sse"], [sse_messages]);
        f.subscription_messages
            .observe(&["multipart"], [multipart_messages]);
        for (reason, n) in closed {
            f.subscription_closed.observe(&[reason], [*n]);
        }
    }

    /// Mirrors the shared L2 tier's totals (hits, misses, errors, skipped, too large, bytes read,
    /// bytes written) into the exposition, right before rendering.
    pub(crate) fn set_l2(&self, totals: [u64; 7]) {
        self.family.l2_counters.observe(&[], totals);
    }

    /// Mirrors the event bus's state into the exposition, right before rendering (counters as
    /// increments since the last scrape, like [`Metrics::set_cache`]).
    pub(crate) fn set_events(&self, s: &bff_schema::events::BusStatus) {
        self.family.events_counters.observe(
            &[],
            [
                s.published,
                s.confirmed,
                s.consumed,
                s.redelivered,
                s.duplicates,
                s.failed,
                s.dead_lettered,
                s.reconnects,
                s.superseded,
                s.returned,
                s.too_large,
                s.spooled,
                s.unsettled,
            ],
        );
        self.family
            .events_outbox
            .with_label_values(&["depth"])
            .set(saturating_i64(s.outbox_depth as u64));
        self.family
            .events_outbox
            .with_label_values(&["capacity"])
            .set(saturating_i64(s.outbox_capacity as u64));
        self.family
            .events_spool
            .with_label_values(&["events"])
            .set(saturating_i64(s.spool_depth));
        self.family
            .events_spool
            .with_label_values(&["bytes"])
            .set(saturating_i64(s.spool_bytes));
        self.family.events_connected.set(i64::from(s.connected));
        // Prometheus' base unit is the second.
        #[allow(clippy::cast_precision_loss)]
        self.family.events_lag.set(s.lag_ms as f64 / 1000.0);
    }

    /// Renders every family in the Prometheus text exposition format (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, MetricsError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }

    /// The label value for a client-supplied operation name.
    fn operation_label<'a>(&self, operation: Option<&'a str>) -> &'a str {
        let name = match operation {
            None | Some("") => return OPERATION_ANONYMOUS,
            Some(name) if !is_valid_operation_name(name) => return OPERATION_INVALID,
            // A client naming its operation like a catch-all shares that series; it must not
            // take one of the admission slots.
            Some(name @ (OPERATION_ANONYMOUS | OPERATION_INVALID | LABEL_OTHER)) => return name,
            Some(name) => name,
        };
        {
            let admitted = self
                .operation_names
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if admitted.contains(name) {
                return name;
            }
            // Once full, new names never need the write lock.
            if admitted.len() >= self.max_operation_names {
                return LABEL_OTHER;
            }
        }
        let mut admitted = self
            .operation_names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Re-check: another thread may have admitted this name or filled the set meanwhile.
        if admitted.contains(name) {
            name
        } else if admitted.len() < self.max_operation_names {
            admitted.insert(name.into());
            name
        } else {
            LABEL_OTHER
        }
    }

    /// The label value for an endpoint of `backend`.
    fn endpoint_label<'a>(&self, backend: &str, endpoint: &'a str) -> &'a str {
        {
            let seen = self
                .endpoint_names
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(endpoints) = seen.get(backend) {
                if endpoints.contains(endpoint) {
                    return endpoint;
                }
                if endpoints.len() >= MAX_ENDPOINTS_PER_BACKEND {
                    return LABEL_OTHER;
                }
            }
        }
        let mut seen = self
            .endpoint_names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let endpoints = match seen.get_mut(backend) {
            Some(endpoints) => endpoints,
            None => seen.entry(backend.into()).or_default(),
        };
        if endpoints.contains(endpoint) {
            endpoint
        } else if endpoints.len() < MAX_ENDPOINTS_PER_BACKEND {
            endpoints.insert(endpoint.into());
            endpoint
        } else {
            LABEL_OTHER
        }
    }
}

/// A float gauge (the table's name for prometheus' `Gauge`, beside the integer ones).
type FloatGauge = prometheus::Gauge;

/// A kind of family the table can declare, and how one is built from its options and labels.
trait Family: Collector + Clone + 'static {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self>;
}

impl Family for IntCounterVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        Self::new(opts, labels)
    }
}

impl Family for IntGaugeVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        Self::new(opts, labels)
    }
}

/// Every histogram uses [`LATENCY_BUCKETS`].
impl Family for HistogramVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        Self::new(
            HistogramOpts::from(opts).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
    }
}

impl Family for IntGauge {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        no_labels(labels)?;
        Self::with_opts(opts)
    }
}

impl Family for FloatGauge {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        no_labels(labels)?;
        Self::with_opts(opts)
    }
}

/// A single-series family declared with labels is a mistake in the table, not something to
/// drop silently.
fn no_labels(labels: &[&str]) -> prometheus::Result<()> {
    if labels.is_empty() {
        Ok(())
    } else {
        Err(prometheus::Error::Msg(format!(
            "a single-series family takes no labels, got {labels:?}"
        )))
    }
}

/// Creates metric families carrying the `client` const label and registers them.
struct Factory {
    registry: Registry,
    client: &'static str,
}

impl Factory {
    fn family<F: Family>(
        &self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<F, MetricsError> {
        let register_error = |source| MetricsError::Register { name, source };
        let opts = Opts::new(name, help).const_label("client", self.client);
        let family = F::build(opts, labels).map_err(register_error)?;
        self.registry
            .register(Box::new(family.clone()))
            .map_err(register_error)?;
        Ok(family)
    }
}

/// Counters mirroring a source's own cumulative totals (the cache's, the event bus's), read at
/// scrape time so the hot paths that count never touch the registry.
struct Mirrored<const N: usize> {
    counters: [IntCounterVec; N],
    /// The totals last observed, per label values. A `Mutex` (not atomics) because two
    /// concurrent scrapes must not both add the same delta; a list because the label sets are
    /// the few fixed ones the code passes (cache kinds, or none).
    last_seen: Mutex<Vec<Seen<N>>>,
}

/// The totals a [`Mirrored`] set last observed for one set of label values.
struct Seen<const N: usize> {
    labels: Box<[Box<str>]>,
    totals: [u64; N],
}

impl<const N: usize> Mirrored<N> {
    fn new(counters: [IntCounterVec; N]) -> Self {
        Self {
            counters,
            last_seen: Mutex::new(Vec::new()),
        }
    }

    /// Adds to each counter (labelled `labels`) what its source counted since the last scrape:
    /// the one delta loop behind every mirrored counter set. A total *lower* than last time means
    /// the source was reset (rebuilt), so the whole new total counts as new events: the exported
    /// counter never decreases and `rate()` stays right across the reset. Called even with 0, so
    /// each series exists from the first scrape on.
    fn observe(&self, labels: &[&str], totals: [u64; N]) {
        // Poisoning only means another scrape panicked mid-update; the list stays usable.
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = last_seen.iter().position(|seen| {
            seen.labels
                .iter()
                .map(AsRef::as_ref)
                .eq(labels.iter().copied())
        });
        let seen = match at {
            Some(at) => &mut last_seen[at],
            None => {
                last_seen.push(Seen {
                    labels: labels.iter().map(|&l| l.into()).collect(),
                    totals: [0; N],
                });
                let new = last_seen.len() - 1;
                &mut last_seen[new]
            }
        };
        for ((counter, now), previous) in self.counters.iter().zip(totals).zip(&mut seen.totals) {
            let delta = if now >= *previous {
                now - *previous
            } else {
                now
            };
            counter.with_label_values(labels).inc_by(delta);
            *previous = now;
        }
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,63}$` without a regex engine on the hot path.
fn is_valid_operation_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_OPERATION_NAME_LEN
                && (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

/// `value` if it is one of `allowed`, else `fallback` — keeps caller typos from minting series.
fn one_of<'a>(value: &'a str, allowed: &[&str], fallback: &'static str) -> &'a str {
    if allowed.contains(&value) {
        value
    } else {
        fallback
    }
}

/// Three-digit status as a label without allocating; anything else is `other`.
fn status_label(status: u16, digits: &mut [u8; 3]) -> &str {
    if !(100..=999).contains(&status) {
        return LABEL_OTHER;
    }
    // Each digit is < 10, so the narrowing cannot lose anything.
    digits[0] = b'0' + (status / 100) as u8;
    digits[1] = b'0' + (status / 10 % 10) as u8;
    digits[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(digits).unwrap_or(LABEL_OTHER)
}

fn saturating_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The value of the sample whose line starts with exactly `series` (name plus labels).
    fn sample(rendered: &str, series: &str) -> Option<f64> {
        rendered.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    /// Every family recorded at least once — also what the promtool check renders.
    fn populated() -> Metrics {
        let m = Metrics::new("web", 100).unwrap();
        m.http_request("/graphql", "POST", 200, 3 * MS);
        let _http = m.http_in_flight();
        m.graphql_operation(Some("GetUser"), "query", "ok", 2 * MS);
        m.upstream_attempt("users", "10.0.0.1:50051", "ok", MS);
        let _upstream = m.upstream_in_flight("users");
        m.set_breaker_state("users", 1);
        m.set_endpoints("users", 2, 3);
        m.set_cache("response", 10, 4, 1, 2, 3, 4096);
        m
    }

    const FAMILIES: [(&str, &str); 16] = [
        ("bff_http_requests_total", "counter"),
        ("bff_http_request_duration_seconds", "histogram"),
        ("bff_http_requests_in_flight", "gauge"),
        ("bff_graphql_operations_total", "counter"),
        ("bff_graphql_operation_duration_seconds", "histogram"),
        ("bff_upstream_requests_total", "counter"),
        ("bff_upstream_request_duration_seconds", "histogram"),
        ("bff_upstream_in_flight", "gauge"),
        ("bff_upstream_breaker_state", "gauge"),
        ("bff_upstream_endpoints", "gauge"),
        ("bff_cache_hits_total", "counter"),
        ("bff_cache_misses_total", "counter"),
        ("bff_cache_stale_total", "counter"),
        ("bff_cache_coalesced_total", "counter"),
        ("bff_cache_evictions_total", "counter"),
        ("bff_cache_bytes", "gauge"),
    ];

    #[test]
    fn render_has_every_family_with_help_type_and_values() {
        let m = populated();
        let out = m.render().unwrap();
        for (name, kind) in FAMILIES {
            assert!(
                out.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{out}"
            );
            assert!(
                out.contains(&format!("# TYPE {name} {kind}\n")),
                "no TYPE {kind} for {name}:\n{out}"
            );
        }
        let expected = [
            (
                r#"bff_http_requests_total{client="web",method="POST",route="/graphql",status="200"}"#,
                1.0,
            ),
            (
                r#"bff_http_request_duration_seconds_count{client="web",route="/graphql"}"#,
                1.0,
            ),
            (
                r#"bff_graphql_operations_total{client="web",operation="GetUser",outcome="ok",type="query"}"#,
                1.0,
            ),
            (
                r#"bff_upstream_requests_total{backend="users",client="web",endpoint="10.0.0.1:50051",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"bff_upstream_request_duration_seconds_count{backend="users",client="web",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"bff_upstream_breaker_state{backend="users",client="web"}"#,
                1.0,
            ),
            (
                r#"bff_upstream_endpoints{backend="users",client="web",state="usable"}"#,
                2.0,
            ),
            (
                r#"bff_upstream_endpoints{backend="users",client="web",state="total"}"#,
                3.0,
            ),
            (
                r#"bff_cache_hits_total{client="web",kind="response"}"#,
                10.0,
            ),
            (
                r#"bff_cache_misses_total{client="web",kind="response"}"#,
                4.0,
            ),
            (
                r#"bff_cache_stale_total{client="web",kind="response"}"#,
                1.0,
            ),
            (
                r#"bff_cache_coalesced_total{client="web",kind="response"}"#,
                2.0,
            ),
            (
                r#"bff_cache_evictions_total{client="web",kind="response"}"#,
                3.0,
            ),
            (r#"bff_cache_bytes{client="web",kind="response"}"#, 4096.0),
            // The guards in `populated` are dropped by now.
            (r#"bff_http_requests_in_flight{client="web"}"#, 0.0),
            (
                r#"bff_upstream_in_flight{backend="users",client="web"}"#,
                0.0,
            ),
        ];
        for (series, value) in expected {
            assert_eq!(sample(&out, series), Some(value), "{series}:\n{out}");
        }
    }

    #[test]
    fn operation_names_are_bounded() {
        let m = Metrics::new("web", 2).unwrap();
        let record = |name: Option<&str>| m.graphql_operation(name, "query", "ok", MS);
        let long_ok = format!("A{}", "b".repeat(63)); // 64 characters: still valid
        let too_long = format!("A{}", "b".repeat(64)); // 65 characters
        record(Some("GetUser")); // admitted 1/2
        record(None);
        record(Some(""));
        record(Some("bad-name"));
        record(Some("1abc"));
        record(Some(&too_long));
        record(Some("Ünicode"));
        record(Some("other")); // a catch-all name takes no slot
        record(Some("ListOrders")); // admitted 2/2
        record(Some("Third")); // cap reached
        record(Some(&long_ok)); // valid but cap reached
        record(Some("GetUser")); // admitted names keep their series
        record(Some("ListOrders"));

        let out = m.render().unwrap();
        let count = |op: &str| {
            sample(
                &out,
                &format!(
                    r#"bff_graphql_operations_total{{client="web",operation="{op}",outcome="ok",type="query"}}"#
                ),
            )
        };
        assert_eq!(count("GetUser"), Some(2.0), "{out}");
        assert_eq!(count("ListOrders"), Some(2.0), "{out}");
        assert_eq!(count("anonymous"), Some(2.0), "{out}");
        assert_eq!(count("invalid"), Some(4.0), "{out}");
        assert_eq!(count("other"), Some(3.0), "{out}");
        for leaked in ["Third", "bad-name", "1abc", long_ok.as_str(), "Ünicode"] {
            assert!(
                !out.contains(&format!("operation=\"{leaked}\"")),
                "{leaked} leaked:\n{out}"
            );
        }
        // The histogram uses the same bounded label.
        assert_eq!(
            sample(
                &out,
                r#"bff_graphql_operation_duration_seconds_count{client="web",operation="other",type="query"}"#
            ),
            Some(3.0)
        );
    }

    #[test]
    fn closed_label_sets_fall_back() {
        let m = Metrics::new("mobile", 10).unwrap();
        m.http_request("other", "BREW", 1000, MS);
        m.graphql_operation(Some("Q"), "fragment", "weird", MS);
        m.upstream_attempt("users", "e1", "exploded", MS);
        let out = m.render().unwrap();
        for series in [
            r#"bff_http_requests_total{client="mobile",method="OTHER",route="other",status="other"}"#,
            r#"bff_graphql_operations_total{client="mobile",operation="Q",outcome="other",type="unknown"}"#,
            r#"bff_upstream_requests_total{backend="users",client="mobile",endpoint="e1",outcome="other"}"#,
        ] {
            assert_eq!(sample(&out, series), Some(1.0), "{series}:\n{out}");
        }
    }

    #[test]
    fn endpoint_labels_are_capped_per_backend() {
        let m = Metrics::new("web", 10).unwrap();
        for i in 0..40 {
            m.upstream_attempt("users", &format!("10.0.0.{i}:1"), "ok", MS);
        }
        m.upstream_attempt("users", "10.0.0.0:1", "ok", MS); // admitted: keeps its series
        m.upstream_attempt("orders", "10.0.1.0:1", "ok", MS); // its own budget
        let out = m.render().unwrap();
        let series = |backend: &str, endpoint: &str| {
            format!(
                r#"bff_upstream_requests_total{{backend="{backend}",client="web",endpoint="{endpoint}",outcome="ok"}}"#
            )
        };
        assert_eq!(sample(&out, &series("users", "10.0.0.0:1")), Some(2.0));
        assert_eq!(sample(&out, &series("users", "10.0.0.31:1")), Some(1.0));
        assert_eq!(sample(&out, &series("users", "10.0.0.32:1")), None);
        assert_eq!(sample(&out, &series("users", "other")), Some(8.0));
        assert_eq!(sample(&out, &series("orders", "10.0.1.0:1")), Some(1.0));
        let users = out
            .lines()
            .filter(|l| l.starts_with(r#"bff_upstream_requests_total{backend="users""#))
            .count();
        assert_eq!(users, MAX_ENDPOINTS_PER_BACKEND + 1);
    }

    #[test]
    fn instances_do_not_share_counts() {
        let a = Metrics::new("web", 10).unwrap();
        let b = Metrics::new("web", 1).unwrap();
        a.http_request("/graphql", "POST", 200, MS);
        a.http_request("/graphql", "POST", 200, MS);
        b.http_request("/graphql", "POST", 200, MS);
        b.graphql_operation(Some("OnlyInB"), "query", "ok", MS);
        a.graphql_operation(Some("OnlyInA"), "query", "ok", MS); // b's full admission set is not a's
        let series =
            r#"bff_http_requests_total{client="web",method="POST",route="/graphql",status="200"}"#;
        let (out_a, out_b) = (a.render().unwrap(), b.render().unwrap());
        assert_eq!(sample(&out_a, series), Some(2.0));
        assert_eq!(sample(&out_b, series), Some(1.0));
        assert!(out_a.contains(r#"operation="OnlyInA""#) && !out_a.contains("OnlyInB"));
        assert!(out_b.contains(r#"operation="OnlyInB""#) && !out_b.contains("OnlyInA"));
    }

    #[test]
    fn cache_counters_are_monotonic() {
        let m = Metrics::new("web", 10).unwrap();
        let hits = r#"bff_cache_hits_total{client="web",kind="response"}"#;
        let misses = r#"bff_cache_misses_total{client="web",kind="response"}"#;
        let bytes = r#"bff_cache_bytes{client="web",kind="response"}"#;
        let read = |series: &str| sample(&m.render().unwrap(), series);

        m.set_cache("response", 10, 0, 0, 0, 0, 100);
        assert_eq!(read(hits), Some(10.0));
        assert_eq!(
            read(misses),
            Some(0.0),
            "zero counters are exported from the start"
        );
        m.set_cache("response", 15, 1, 0, 0, 0, 100);
        assert_eq!(read(hits), Some(15.0));
        m.set_cache("response", 15, 1, 0, 0, 0, 100); // unchanged: no double counting
        assert_eq!(read(hits), Some(15.0));
        assert_eq!(read(misses), Some(1.0));
        // The cache was rebuilt and its counters restarted at 0 (now 3): never decrease,
        // count the 3 new hits.
        m.set_cache("response", 3, 0, 0, 0, 0, 50);
        assert_eq!(read(hits), Some(18.0));
        assert_eq!(read(misses), Some(1.0));
        m.set_cache("response", 5, 0, 0, 0, 0, 50);
        assert_eq!(read(hits), Some(20.0));
        // Bytes is a gauge: it follows the observed value down.
        assert_eq!(read(bytes), Some(50.0));
        // Kinds are tracked separately.
        m.set_cache("entity", 7, 0, 0, 0, 0, 0);
        assert_eq!(
            read(r#"bff_cache_hits_total{client="web",kind="entity"}"#),
            Some(7.0)
        );
        assert_eq!(read(hits), Some(20.0));
    }

    #[test]
    fn event_counters_are_monotonic() {
        use bff_schema::events::BusStatus;

        let m = Metrics::new("web", 10).unwrap();
        let published = r#"bff_events_published_total{client="web"}"#;
        let unsettled = r#"bff_events_unsettled_total{client="web"}"#;
        let read = |series: &str| sample(&m.render().unwrap(), series);
        let status = |published, unsettled| BusStatus {
            published,
            unsettled,
            ..BusStatus::default()
        };

        assert_eq!(read(published), None, "no series before the first scrape");
        m.set_events(&status(0, 0));
        assert_eq!(read(published), Some(0.0), "exported from the first scrape");
        assert_eq!(read(unsettled), Some(0.0));
        m.set_events(&status(5, 2));
        m.set_events(&status(5, 2)); // unchanged: no double counting
        assert_eq!(read(published), Some(5.0));
        assert_eq!(read(unsettled), Some(2.0));
        // The bus was rebuilt and its totals restarted: the 3 new publishes count.
        m.set_events(&status(3, 2));
        assert_eq!(read(published), Some(8.0));
        assert_eq!(read(unsettled), Some(2.0));
    }

    #[test]
    fn a_single_series_family_declared_with_labels_is_refused() {
        let f = Factory {
            registry: Registry::new(),
            client: "web",
        };
        let refused = f.family::<IntGauge>("bff_test_gauge", "A gauge.", &["kind"]);
        assert!(
            matches!(
                refused,
                Err(MetricsError::Register {
                    name: "bff_test_gauge",
                    ..
                })
            ),
            "{refused:?}"
        );
        let refused = f.family::<FloatGauge>("bff_test_float", "A gauge.", &["kind"]);
        assert!(refused.is_err(), "{refused:?}");
        assert!(f.registry.gather().is_empty(), "nothing registered");
        let gauge = f
            .family::<IntGauge>("bff_test_gauge", "A gauge.", &[])
            .unwrap();
        gauge.set(3);
        assert_eq!(f.registry.gather().len(), 1);
    }

    #[test]
    fn histograms_use_the_latency_buckets() {
        let m = Metrics::new("web", 10).unwrap();
        m.http_request("/graphql", "POST", 200, 3 * MS);
        m.http_request("/graphql", "POST", 200, Duration::from_secs(7));
        m.graphql_operation(None, "query", "ok", 3 * MS);
        m.upstream_attempt("users", "e", "ok", 3 * MS);
        let out = m.render().unwrap();
        let http = |le: &str| {
            sample(
                &out,
                &format!(
                    r#"bff_http_request_duration_seconds_bucket{{client="web",route="/graphql",le="{le}"}}"#
                ),
            )
        };
        assert_eq!(http("0.001"), Some(0.0));
        assert_eq!(http("0.0025"), Some(0.0));
        assert_eq!(http("0.005"), Some(1.0));
        assert_eq!(http("5"), Some(1.0));
        assert_eq!(http("+Inf"), Some(2.0));
        assert_eq!(
            sample(
                &out,
                r#"bff_http_request_duration_seconds_sum{client="web",route="/graphql"}"#
            ),
            Some(7.003)
        );
        for family in [
            "bff_http_request_duration_seconds",
            "bff_graphql_operation_duration_seconds",
            "bff_upstream_request_duration_seconds",
        ] {
            let bounds: Vec<f64> = out
                .lines()
                .filter(|l| l.starts_with(&format!("{family}_bucket{{")))
                .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
                .collect();
            let mut expected = LATENCY_BUCKETS.to_vec();
            expected.push(f64::INFINITY); // `le="+Inf"`
            assert_eq!(bounds, expected, "{family}");
        }
    }

    #[test]
    fn in_flight_guards_return_to_zero() {
        let m = Metrics::new("web", 10).unwrap();
        let http = r#"bff_http_requests_in_flight{client="web"}"#;
        let users = r#"bff_upstream_in_flight{backend="users",client="web"}"#;
        let read = |series: &str| sample(&m.render().unwrap(), series);
        assert_eq!(read(http), Some(0.0), "exported before any request");
        let a = m.http_in_flight();
        let b = m.http_in_flight();
        let u = m.upstream_in_flight("users");
        assert_eq!(read(http), Some(2.0));
        assert_eq!(read(users), Some(1.0));
        drop(a);
        assert_eq!(read(http), Some(1.0));
        drop((b, u));
        assert_eq!(read(http), Some(0.0));
        assert_eq!(read(users), Some(0.0));
    }

    #[test]
    fn operation_name_pattern() {
        for ok in ["a", "_", "GetUser", "get_user_2", &"x".repeat(64)] {
            assert!(is_valid_operation_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "a.b", "é", &"x".repeat(65)] {
            assert!(!is_valid_operation_name(bad), "{bad}");
        }
    }

    #[test]
    fn status_labels() {
        let mut digits = [0u8; 3];
        assert_eq!(status_label(200, &mut digits), "200");
        assert_eq!(status_label(503, &mut digits), "503");
        assert_eq!(status_label(101, &mut digits), "101");
        assert_eq!(status_label(99, &mut digits), "other");
        assert_eq!(status_label(1000, &mut digits), "other");
    }
}
