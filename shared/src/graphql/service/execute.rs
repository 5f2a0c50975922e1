//! The execution stage of the GraphQL service: an admitted operation runs on the schema (its
//! document already parsed and analysed; the schema's document cache skips re-validation of
//! known documents), under `graphql.timeout`, shared with identical requests in flight when
//! `graphql.coalesce` allows ([`crate::graphql::coalesce`]), and becomes an [`Answer`]: status,
//! `Cache-Control`, `extensions.cost` / `extensions.cache`, the answer-size cap. Its steps
//! ([`Meta`], [`settle`], [`finish`]) are also the incremental stage's (`super::incremental`).

use std::sync::Arc;

use axum::{
    body::Bytes,
    http::{HeaderValue, Method, StatusCode},
};
use futures::FutureExt as _;
use serde_json::Value as Json;
use tracing::Instrument;

use super::{
    GraphqlService,
    answer::{Answer, Refused, request_error},
};
use crate::graphql::direct::response_pieces;
use crate::{
    cache::{CacheLog, FragmentUse, Freshness},
    compose::RequestContext,
    error::ErrorCode,
    graphql::{
        analysis::Analysis,
        coalesce::Key,
        errors::{Outcome, classify, stamp_trace_id},
    },
    refusal::Mode,
};

/// What answering an operation needs besides its response.
pub(super) struct Op {
    pub(super) rq: Arc<RequestContext>,
    pub(super) method: Method,
    pub(super) mode: Mode,
    pub(super) personalized: bool,
    pub(super) op_type: &'static str,
    pub(super) op_name: Option<String>,
    pub(super) analysis: Option<Analysis>,
    pub(super) want_cost: bool,
    /// The persisted operation's hash, to record that it validated.
    pub(super) hash: Option<String>,
}

/// An operation ready to run, and what its answer needs to know.
pub(super) struct Job {
    pub(super) request: async_graphql::Request,
    pub(super) op: Op,
    pub(super) validated: bool,
    /// What identical requests share, when this one may share an execution.
    pub(super) coalesce: Option<Key>,
    /// How the answer is delivered incrementally (`@defer` on rows), when it is.
    pub(super) defer: Option<crate::graphql::defer::plan::Plan>,
}

/// The answer of `job`: its own execution's, or the one an identical request in flight makes.
pub(super) async fn run(app: Arc<GraphqlService>, mut job: Job) -> Arc<Answer> {
    let Some(key) = job.coalesce.take() else {
        return Arc::new(execute(app, job).await);
    };
    let trace = crate::telemetry::current();
    // The spawned execution's spans stay under this request's span (and trace).
    let parent = tracing::Span::current();
    let runner = app.clone();
    let (answer, shared) = app
        .coalescer
        .answer(key, move || {
            let run = execute(runner, job).instrument(parent);
            // The execution runs in a task of its own: it keeps the request's trace.
            match trace {
                Some(t) => crate::telemetry::scope(t, run).boxed(),
                None => run.boxed(),
            }
        })
        .await;
    if shared && let Some(m) = &app.metrics {
        m.graphql_coalesced();
    }
    answer
}

/// An operation being answered: what the answer needs, its span and when it started.
pub(super) struct Meta {
    pub(super) op: Op,
    /// The operation's span, under the request's.
    pub(super) span: tracing::Span,
    pub(super) started: std::time::Instant,
}

impl Job {
    /// The request for the engine, whether it validated before, and what its answer needs; the
    /// operation's span starts here.
    pub(super) fn start(self) -> (async_graphql::Request, bool, Meta) {
        let Job {
            request,
            op,
            validated,
            coalesce: _,
            defer: _,
        } = self;
        let name = op.op_name.as_deref().unwrap_or("anonymous");
        let span = tracing::info_span!(
            "graphql.operation",
            otel.name = %format!("{} {name}", op.op_type),
            graphql.operation.name = name,
            graphql.operation.type = op.op_type,
            outcome = tracing::field::Empty,
        );
        let meta = Meta {
            op,
            span,
            started: std::time::Instant::now(),
        };
        (request, validated, meta)
    }
}

/// Runs one operation and makes its answer.
async fn execute(app: Arc<GraphqlService>, job: Job) -> Answer {
    let (request, validated, meta) = job.start();
    // The estimate bounds the work; this bounds the time, whatever the estimate missed.
    let executed = tokio::time::timeout(
        app.settings.timeout,
        app.schema
            .execute(request, validated)
            .instrument(meta.span.clone()),
    )
    .await;
    match executed {
        Ok(mut response) => {
            let outcome = settle(&app, &meta, &mut response);
            finish(&app, &meta, &response, outcome)
        }
        Err(_) => timed_out(&app, &meta),
    }
}

/// The answer of an operation cut off by `graphql.timeout`.
pub(super) fn timed_out(app: &GraphqlService, meta: &Meta) -> Answer {
    meta.span.record("outcome", "error");
    if let Some(m) = &app.metrics {
        m.graphql_operation(
            meta.op.op_name.as_deref(),
            meta.op.op_type,
            "error",
            meta.started.elapsed(),
        );
    }
    let timeout = app.settings.timeout;
    tracing::warn!(parent: &meta.span, timeout = ?timeout, "operation cut off");
    let msg = format!(
        "the operation ran longer than {}",
        humantime::format_duration(timeout)
    );
    Refused::Request(ErrorCode::QueryTooComplex, msg).answer(meta.op.mode)
}

/// Codes the response's errors and says how it ended; adds what every answer carries (trace
/// ids, `extensions.cache`, `extensions.cost`).
pub(super) fn settle(
    app: &GraphqlService,
    meta: &Meta,
    response: &mut async_graphql::Response,
) -> Outcome {
    let limits = &app.settings;
    let outcome = classify(response, !limits.introspection);
    if outcome == Outcome::Executed {
        // It validated: a persisted operation may skip validation from now on.
        if let Some(h) = &meta.op.hash {
            app.persisted.mark_valid(h);
        }
        if response.data == async_graphql::Value::Null && response.errors.is_empty() {
            // The engine answers a selection whose every field was skipped with null; the
            // spec's answer is an empty object.
            response.data = async_graphql::Value::Object(Default::default());
        }
    }
    stamp_trace_id(response);
    report_stale(response, &meta.op.rq.cache_log.uses());
    if let Some(a) = meta.op.analysis.filter(|_| meta.op.want_cost) {
        report_cost(response, &a, limits);
    }
    outcome
}

/// The `outcome` label of metrics and spans.
fn outcome_label(outcome: Outcome, has_errors: bool) -> &'static str {
    match outcome {
        Outcome::RequestError => "error",
        Outcome::Executed if has_errors => "partial",
        Outcome::Executed => "ok",
    }
}

/// Records the operation's outcome once, on its span and in `bff_graphql_operations_total`
/// (with its duration so far: an incremental answer records it after its last part).
pub(super) fn record_operation(app: &GraphqlService, meta: &Meta, outcome: Outcome, errors: bool) {
    let label = outcome_label(outcome, errors);
    meta.span.record("outcome", label);
    if let Some(m) = &app.metrics {
        m.graphql_operation(
            meta.op.op_name.as_deref(),
            meta.op.op_type,
            label,
            meta.started.elapsed(),
        );
    }
}

/// The answer of a settled response: status, `Cache-Control`, the size cap; records the
/// operation's outcome.
pub(super) fn finish(
    app: &GraphqlService,
    meta: &Meta,
    response: &async_graphql::Response,
    outcome: Outcome,
) -> Answer {
    let limits = &app.settings;
    record_operation(app, meta, outcome, !response.errors.is_empty());
    let status = match outcome {
        Outcome::RequestError => request_error(meta.op.mode),
        Outcome::Executed => StatusCode::OK,
    };
    let cache_control = cache_control(
        meta.op.personalized,
        meta.op.method == Method::GET && response.errors.is_empty(),
        &meta.op.rq.cache_log,
    );
    match response_pieces(response) {
        Ok(pieces) if pieces.iter().map(Bytes::len).sum::<usize>() > limits.max_response_bytes => {
            too_large(limits.max_response_bytes).answer(meta.op.mode)
        }
        Ok(pieces) => Answer::new(status, meta.op.mode, cache_control, pieces),
        Err(_) => Answer::internal(),
    }
}

/// The refusal of an answer over `graphql.max_response_bytes`.
pub(super) fn too_large(limit: usize) -> Refused {
    tracing::warn!(limit, "answer over the size limit");
    let msg = format!("the answer is larger than {limit} bytes; select less");
    Refused::Request(ErrorCode::QueryTooComplex, msg)
}

/// `extensions.cost` when the request asked for it (`"extensions": {"cost": true}`): the estimate
/// the operation was admitted with, and the limits it was held to.
fn report_cost(
    response: &mut async_graphql::Response,
    a: &Analysis,
    limits: &crate::config::GraphqlSettings,
) {
    let cost = serde_json::json!({
        "estimated": a.cost,
        "maxCost": limits.max_cost,
        "fields": a.fields,
        "depth": a.depth,
        "maxDepth": limits.max_depth,
    });
    if let Ok(value) = async_graphql::Value::from_json(cost) {
        response.extensions.insert("cost".to_owned(), value);
    }
}

/// `extensions.cache.stale`: which fragments (of `uses`) were served past their TTL and how old
/// they were, so clients and operators can tell a degraded answer from a fresh one.
pub(super) fn report_stale(response: &mut async_graphql::Response, uses: &[FragmentUse]) {
    let stale: Vec<Json> = uses
        .iter()
        .filter(|u| u.freshness == Freshness::Stale)
        .map(|u| serde_json::json!({ "fragment": u.kind.name(), "ageMs": u64::try_from(u.age.as_millis()).unwrap_or(u64::MAX) }))
        .collect();
    if stale.is_empty() {
        return;
    }
    if let Ok(value) = async_graphql::Value::from_json(serde_json::json!({ "stale": stale })) {
        response.extensions.insert("cache".to_owned(), value);
    }
}

/// Personalized answers are never stored by shared caches. Anonymous, error-free GET answers may
/// be cached publicly for as long as the least fresh fragment they were built from stays fresh.
fn cache_control(personalized: bool, cacheable_get: bool, log: &CacheLog) -> HeaderValue {
    if personalized {
        return HeaderValue::from_static("private, no-store");
    }
    match log.max_age() {
        Some(age) if cacheable_get => {
            HeaderValue::from_str(&format!("public, max-age={}", age.as_secs()))
                .unwrap_or(HeaderValue::from_static("no-store"))
        }
        _ => HeaderValue::from_static("no-store"),
    }
}
