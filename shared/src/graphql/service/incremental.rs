//! The execution and answer stages of an operation answered incrementally (`@defer` on homepage
//! rows; what and how: `graphql::defer`). The first part is executed like any operation
//! ([`super::execute`]'s timeout, coding, trace ids, `extensions.cost` / `.cache`); a document
//! the engine refuses, or whose homepage never started (skipped, bad arguments), gets the plain
//! JSON answer it gets without `@defer`. Otherwise the answer is `200`, `multipart/mixed`, never
//! stored by a cache, and its body is a stream that composes and executes each later part when
//! it is polled:
//! - `graphql.timeout` bounds the whole stream: rows still pending when it runs out get an
//!   entry with `data: null` and a `QUERY_TOO_COMPLEX` error, and the stream ends;
//! - `graphql.max_response_bytes` bounds the whole answer, all parts together: a first part over
//!   it is refused as any answer is; a later part that would take the total over it is
//!   replaced, with the rows still pending, by entries with `data: null` and the same error;
//! - the operation is counted once (`bff_graphql_operations_total`, its duration up to the last
//!   part), each part in `bff_graphql_deferred_parts_total`;
//! - a client gone mid-answer drops the body, and with it the composition: nothing is spawned.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use futures::{StreamExt as _, stream::BoxStream};
use tracing::Instrument as _;

use super::{
    GraphqlService,
    answer::Answer,
    execute::{Job, Meta, finish, record_operation, report_stale, settle, timed_out, too_large},
};
use crate::{
    compose::{Homepage, progressive::Step},
    error::ErrorCode,
    graphql::{
        defer::{
            Prepared,
            parts::{self, Entries},
            plan::Plan,
        },
        direct::{RenderJson, root_renderable},
        errors::{Outcome, classify, stamp_trace_id},
    },
    refusal::VARY,
    telemetry::RequestTrace,
};

/// Answers `job`, whose plan says its rows are deferred.
pub(super) async fn run(app: Arc<GraphqlService>, mut job: Job) -> Response {
    let Some(plan) = job.defer.take() else {
        return super::execute::run(app, job).await.response();
    };
    let later = Later {
        query: job.request.query.clone(),
        operation: job.request.operation_name.clone(),
        variables: job.request.variables.clone(),
        render: app.settings.direct_json
            && root_renderable(&plan.later, job.request.operation_name.as_deref()),
    };
    let prepared = Prepared::first(plan.needs);
    let (request, validated, meta) = job.start();
    let deadline = tokio::time::Instant::from_std(meta.started) + app.settings.timeout;
    let executed = tokio::time::timeout_at(
        deadline,
        app.schema
            .execute(request.data(prepared.clone()), validated)
            .instrument(meta.span.clone()),
    )
    .await;
    let Ok(mut response) = executed else {
        return timed_out(&app, &meta).response();
    };
    let outcome = settle(&app, &meta, &mut response);
    let started = match (outcome, prepared.take_started()) {
        (Outcome::Executed, Some(started)) => started,
        // Refused, or the homepage never started: the answer is complete as it is.
        _ => return finish(&app, &meta, &response, outcome).response(),
    };
    let listed = started.base.rows.len();
    if !parts::strip_pending(&mut response.data, &plan, listed) {
        // No row to defer (a homepage without rows): the answer is complete as it is.
        return finish(&app, &meta, &response, outcome).response();
    }
    let first = match parts::first(&response) {
        Ok(first) => first,
        Err(_) => return Answer::internal().response(),
    };
    let sent: usize = first.iter().map(Bytes::len).sum();
    let errors = !response.errors.is_empty();
    if sent > app.settings.max_response_bytes {
        record_operation(&app, &meta, Outcome::Executed, errors);
        return too_large(app.settings.max_response_bytes)
            .answer(meta.op.mode)
            .response();
    }
    if let Some(m) = &app.metrics {
        m.graphql_deferred_part(true);
    }
    let seen = meta.op.rq.cache_log.uses().len();
    let in_flight = app.metrics.as_ref().map(|m| m.graphql_deferred_in_flight());
    let personalized = meta.op.personalized;
    let stream = Stream {
        app,
        meta,
        plan,
        later,
        rest: started.rest,
        base: started.base,
        pending: vec![true; listed],
        sent,
        deadline,
        errors,
        seen,
        trace: crate::telemetry::current(),
        ended: false,
        in_flight,
    };
    let parts = futures::stream::unfold(stream, |mut stream| async move {
        let part = match stream.trace.clone() {
            Some(trace) => crate::telemetry::scope(trace, stream.next_part()).await,
            None => stream.next_part().await,
        };
        part.map(|part| (part, stream))
    });
    let body = futures::stream::iter([first])
        .chain(parts)
        .flat_map(futures::stream::iter)
        .map(Ok::<_, std::convert::Infallible>);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(parts::CONTENT_TYPE),
            ),
            (header::VARY, HeaderValue::from_static(VARY)),
            // Composed while it is sent: no cache may store it (nor, when personalized, share it).
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(if personalized {
                    "private, no-store"
                } else {
                    "no-store"
                }),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// What a later part's request is made of.
struct Later {
    query: String,
    operation: Option<String>,
    variables: async_graphql::Variables,
    /// Whether the later document may render directly (see `direct::root_renderable`).
    render: bool,
}

/// The body after the first part.
struct Stream {
    app: Arc<GraphqlService>,
    meta: Meta,
    plan: Plan,
    later: Later,
    /// The composition's steps still to come.
    rest: BoxStream<'static, Step>,
    /// The homepage of the first part: every row pending.
    base: Homepage,
    /// Per row of the list: still to be delivered.
    pending: Vec<bool>,
    /// Bytes sent so far.
    sent: usize,
    /// When `graphql.timeout` runs out.
    deadline: tokio::time::Instant,
    /// Whether any part had errors.
    errors: bool,
    /// Fragment uses already reported (`extensions.cache`).
    seen: usize,
    trace: Option<Arc<RequestTrace>>,
    ended: bool,
    /// Counts this answer in `bff_graphql_deferred_in_flight` while it lives.
    in_flight: Option<crate::telemetry::metrics::InFlightGuard>,
}

impl Stream {
    /// The next part's bytes; `None` after the last.
    async fn next_part(&mut self) -> Option<Vec<Bytes>> {
        if self.ended {
            return None;
        }
        let part = match tokio::time::timeout_at(self.deadline, self.rest.next()).await {
            Ok(Some(Step::Rows(rows))) => self.rows(rows).await,
            Ok(Some(Step::First(_)) | None) => {
                tracing::error!("the progressive homepage ended with rows still pending");
                self.close(ErrorCode::Internal, "internal error".to_owned())
            }
            Err(_) => self.cut_off(),
        };
        if let Some(m) = &self.app.metrics {
            m.graphql_deferred_part(false);
        }
        if !self.pending.contains(&true) {
            // The last part: the answer is complete once it is written.
            self.ended = true;
            self.in_flight = None;
            record_operation(&self.app, &self.meta, Outcome::Executed, self.errors);
        }
        Some(part)
    }

    /// The part of rows that completed together.
    async fn rows(
        &mut self,
        rows: Vec<(
            usize,
            Result<crate::compose::HomeRow, crate::upstream::BackendError>,
        )>,
    ) -> Vec<Bytes> {
        let mut home = self.base.clone();
        let mut indices = Vec::with_capacity(rows.len());
        for (i, row) in rows {
            if let (Some(slot), Some(true)) = (home.rows.get_mut(i), self.pending.get(i)) {
                *slot = row;
                indices.push(i);
            }
        }
        let mut request = async_graphql::Request::new(self.later.query.clone())
            .variables(self.later.variables.clone())
            .data(self.meta.op.rq.clone())
            .data(Prepared::later(home));
        if let Some(name) = &self.later.operation {
            request = request.operation_name(name.clone());
        }
        if self.later.render {
            request = request.data(RenderJson::default());
        }
        request.set_parsed_query(self.plan.later.clone());
        // The document validated with the first part: only the engine's cheap checks again.
        let executed = tokio::time::timeout_at(
            self.deadline,
            self.app
                .schema
                .execute(request, true)
                .instrument(self.meta.span.clone()),
        )
        .await;
        let Ok(mut response) = executed else {
            return self.cut_off();
        };
        classify(&mut response, !self.app.settings.introspection);
        stamp_trace_id(&mut response);
        let entries: Vec<Entries> = indices
            .iter()
            .map(|&i| parts::take_row(&mut response, &self.plan, i))
            .collect();
        let has_next = self
            .pending
            .iter()
            .enumerate()
            .any(|(i, &p)| p && !indices.contains(&i));
        // Fragments served stale for these rows (`extensions.cache`, as on a plain answer).
        let uses = self.meta.op.rq.cache_log.uses();
        let mut stale = async_graphql::Response::new(async_graphql::Value::Null);
        report_stale(&mut stale, uses.get(self.seen..).unwrap_or_default());
        self.seen = uses.len();
        let extensions = stale
            .extensions
            .get("cache")
            .and_then(|c| serde_json::to_value(c).ok())
            .map(|c| serde_json::json!({ "cache": c }));
        let Ok(part) = parts::later(&self.plan, &entries, has_next, extensions.as_ref()) else {
            return self.close(ErrorCode::Internal, "internal error".to_owned());
        };
        let size: usize = part.iter().map(Bytes::len).sum();
        if self.sent.saturating_add(size) > self.app.settings.max_response_bytes {
            let limit = self.app.settings.max_response_bytes;
            tracing::warn!(limit, "incremental answer over the size limit");
            return self.close(
                ErrorCode::QueryTooComplex,
                format!("the answer is larger than {limit} bytes; select less"),
            );
        }
        self.sent += size;
        self.errors |= entries.iter().any(|e| !e.errors.is_empty());
        for i in indices {
            if let Some(p) = self.pending.get_mut(i) {
                *p = false;
            }
        }
        part
    }

    /// The last part when `graphql.timeout` ran out.
    fn cut_off(&mut self) -> Vec<Bytes> {
        let timeout = self.app.settings.timeout;
        tracing::warn!(parent: &self.meta.span, timeout = ?timeout, "incremental answer cut off");
        let msg = format!(
            "the operation ran longer than {}",
            humantime::format_duration(timeout)
        );
        self.close(ErrorCode::QueryTooComplex, msg)
    }

    /// The last part: every row still pending gets `data: null` and an error with `code`; the
    /// composition stops.
    fn close(&mut self, code: ErrorCode, message: String) -> Vec<Bytes> {
        self.rest = futures::stream::empty().boxed();
        let mut failed = async_graphql::Response::new(async_graphql::Value::Null);
        let mut indices = Vec::new();
        for (i, pending) in self.pending.iter_mut().enumerate() {
            if std::mem::take(pending) {
                failed
                    .errors
                    .push(parts::error_at(&self.plan, i, code, &message));
                indices.push(i);
            }
        }
        stamp_trace_id(&mut failed);
        let entries: Vec<Entries> = indices
            .iter()
            .map(|&i| Entries {
                index: i,
                value: async_graphql::Value::Null,
                errors: failed
                    .errors
                    .iter()
                    .filter(|e| e.path.get(2) == Some(&async_graphql::PathSegment::Index(i)))
                    .cloned()
                    .collect(),
            })
            .collect();
        self.errors = true;
        parts::later(&self.plan, &entries, false, None).unwrap_or_else(|_| {
            vec![Bytes::from_static(
                b"content-type: application/json; charset=utf-8\r\n\r\n{\"hasNext\":false}\r\n-----\r\n",
            )]
        })
    }
}
