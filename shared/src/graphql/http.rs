//! The GraphQL service: GraphQL over HTTP, per the GraphQL-over-HTTP spec (the stock async-graphql
//! handler runs mutations over GET and ignores Accept: it scored 46/61 on the GraphQL-over-HTTP
//! audit, this handler 61/61). Owns: Accept negotiation,
//! content types, GET/POST parameter parsing, the GET-is-read-only rule, the limits decided before
//! execution ([`super::analysis`]), and the status code of every answer. It runs behind the
//! pipeline (`crate::pipeline`): the request's body is already held to its limits and its
//! [`Identity`] already verified. Execution is the schema's business. Its state
//! ([`GraphqlService`]) is its own, not the whole settings.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_graphql::parser::types::{DocumentOperations, OperationType};
use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::FutureExt as _;
use serde_json::{Map, Value as Json};
use tracing::Instrument;

use super::{
    analysis::{Analysis, Refusal},
    coalesce::{Coalescer, Key},
    errors::{Outcome, classify, stamp_trace_id},
    json::Chunks,
    persisted::{Persisted, PersistedError},
};
use crate::{
    auth::Identity,
    config::GraphqlSettings,
    error::ErrorCode,
    refusal::{Mode, VARY, error_body, negotiate, reject, respond_body},
    telemetry::metrics::Metrics,
};
use crate::{
    cache::{CacheLog, Freshness},
    compose::RequestContext,
};

/// What the GraphQL service needs, and nothing more.
pub(crate) struct GraphqlService {
    /// This binary's schema.
    pub(crate) schema: Arc<dyn super::GraphqlExecutor>,
    /// Limits, answer caps, introspection, rendering.
    pub(crate) settings: GraphqlSettings,
    /// Time budget of one request (`server.request_budget`).
    pub(crate) request_budget: std::time::Duration,
    /// `server.max_body_bytes`, for the message of a `413`.
    pub(crate) max_body_bytes: usize,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The GraphiQL page when enabled, rendered once: nothing in it changes while serving.
    pub(crate) graphiql_page: Option<Bytes>,
    /// Persisted operations (APQ, the allow list).
    pub(crate) persisted: Persisted,
    /// Identical queries in flight, sharing one execution.
    pub(crate) coalescer: Coalescer,
}

/// The service's routes (`GET`, `POST /graphql`); the pipeline's stages go around them.
pub(crate) fn router(service: Arc<GraphqlService>) -> axum::Router {
    axum::Router::new()
        .route("/graphql", axum::routing::get(get).post(post))
        .with_state(service)
}

/// The request parameters after decoding, before GraphQL parsing.
struct Params {
    /// `None` only with a persisted-query hash.
    query: Option<String>,
    operation_name: Option<String>,
    variables: Option<Map<String, Json>>,
    extensions: Map<String, Json>,
}

/// Validates the parameter map of a POST body or GET query string.
fn params(mut raw: Map<String, Json>) -> Result<Params, &'static str> {
    let persisted = raw
        .get("extensions")
        .and_then(|e| e.get("persistedQuery"))
        .is_some();
    let query = match raw.remove("query") {
        Some(Json::String(q)) => Some(q),
        Some(Json::Null) | None if persisted => None,
        Some(_) => return Err("`query` must be a string"),
        None => return Err("`query` is required"),
    };
    let operation_name = match raw.remove("operationName") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(_) => return Err("`operationName` must be a string"),
    };
    let variables = match raw.remove("variables") {
        None | Some(Json::Null) => None,
        Some(Json::Object(m)) => Some(m),
        Some(_) => return Err("`variables` must be an object"),
    };
    let extensions = match raw.remove("extensions") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => return Err("`extensions` must be an object"),
    };
    Ok(Params {
        query,
        operation_name,
        variables,
        extensions,
    })
}

/// GET query string → parameter map (`variables`/`extensions` are JSON-encoded strings).
fn get_params(raw: Option<&str>) -> Result<Map<String, Json>, &'static str> {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        let value = match k.as_str() {
            "variables" | "extensions" => {
                if v.is_empty() {
                    Json::Null
                } else {
                    serde_json::from_str(&v)
                        .map_err(|_| "`variables` and `extensions` must be JSON objects")?
                }
            }
            _ => Json::String(v),
        };
        map.insert(k, value);
    }
    Ok(map)
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|p| p.trim().starts_with("text/html")))
}

/// `GET /graphql`: GraphiQL for browsers, otherwise a read-only GraphQL request.
async fn get(
    State(app): State<Arc<GraphqlService>>,
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let no_query = raw
        .as_deref()
        .is_none_or(|q| !q.split('&').any(|p| p.starts_with("query=")));
    if no_query
        && wants_html(&headers)
        && let Some(page) = app.graphiql_page.clone()
    {
        // The page answers the same URL as JSON does, by `Accept`; it may hold a demo token.
        return (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::VARY, VARY),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page,
        )
            .into_response();
    }
    let Some(mode) = negotiate(&headers) else {
        return not_acceptable();
    };
    let map = match get_params(raw.as_deref()) {
        Ok(m) => m,
        Err(msg) => return reject(StatusCode::BAD_REQUEST, mode, ErrorCode::BadUserInput, msg),
    };
    serve(app, identity, Method::GET, mode, map).await
}

/// `POST /graphql`.
async fn post(
    State(app): State<Arc<GraphqlService>>,
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(mode) = negotiate(&headers) else {
        return not_acceptable();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            mode,
            ErrorCode::BadUserInput,
            "POST bodies must be `Content-Type: application/json`",
        );
    }
    // The body-limits stage bounds its size and time; a read error says which it was.
    let bytes: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let fault = crate::body::fault_of(&e);
            let msg = match fault {
                crate::body::BodyFault::TooLarge => {
                    format!("request body is larger than {} bytes", app.max_body_bytes)
                }
                other => other.to_string(),
            };
            return reject(fault.status(), mode, ErrorCode::BadUserInput, &msg);
        }
    };
    let map: Map<String, Json> = match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(m)) => m,
        Ok(Json::Array(items)) => return batch(app, identity, mode, items).await,
        Ok(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                mode,
                ErrorCode::BadUserInput,
                "the body must be a JSON object",
            );
        }
        Err(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                mode,
                ErrorCode::BadUserInput,
                "the body is not valid JSON",
            );
        }
    };
    serve(app, identity, Method::POST, mode, map).await
}

/// A batch (a JSON array of requests, as Apollo's and Relay's batching links send): each runs as
/// if sent alone, with the same identity and the same limits (every rate-limit policy charges
/// each operation, and admits or refuses each on its own), at once; the answer is the array of
/// their answers, in order, with `200`. At most `graphql.max_batch` operations (`1`, the default,
/// turns batching off); never stored by a shared cache.
async fn batch(
    app: Arc<GraphqlService>,
    identity: Option<axum::Extension<Identity>>,
    mode: Mode,
    items: Vec<Json>,
) -> Response {
    let max = app.settings.max_batch;
    let refusal = if max <= 1 {
        Some("batched requests are off on this server (graphql.max_batch)".to_owned())
    } else if items.is_empty() {
        Some("the batch is empty".to_owned())
    } else if items.len() > max {
        Some(format!(
            "a batch holds at most {max} operations (graphql.max_batch); this one has {}",
            items.len()
        ))
    } else {
        None
    };
    if let Some(msg) = refusal {
        return reject(StatusCode::BAD_REQUEST, mode, ErrorCode::BadUserInput, &msg);
    }
    // Rate limits count operations: the pipeline's stage charged this HTTP request once (the
    // first operation); each further one is charged now, in order, before any runs. Admission
    // is per operation, as if each were sent alone: those over a limit get `RATE_LIMITED` in
    // their place, the others run. After the first refusal the rest are refused without asking
    // again (a refused check charges nothing and would only repeat the answer).
    let mut refused: Vec<Option<String>> = vec![None];
    for _ in 1..items.len() {
        let last = refused.last().cloned().flatten();
        let verdict = match last {
            Some(msg) => Some(msg),
            None => crate::pipeline::ratelimit::batched_operation().await,
        };
        refused.push(verdict);
    }
    let answers =
        futures::future::join_all(items.into_iter().zip(refused).map(|(item, refused)| {
            let (app, identity) = (app.clone(), identity.clone());
            async move {
                if let Some(msg) = refused {
                    let body = error_body(ErrorCode::RateLimited, &msg);
                    return Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                }
                let Json::Object(map) = item else {
                    let body = error_body(
                        ErrorCode::BadUserInput,
                        "each batched request must be a JSON object",
                    );
                    return Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                };
                let resp = serve(app, identity, Method::POST, mode, map).await;
                // Answers are in memory already (`Pieces`); this only joins them.
                axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap_or_else(|_| Bytes::from_static(b"{}"))
            }
        }))
        .await;
    let mut pieces = Vec::with_capacity(answers.len() * 2 + 1);
    pieces.push(Bytes::from_static(b"["));
    for (i, a) in answers.into_iter().enumerate() {
        if i > 0 {
            pieces.push(Bytes::from_static(b","));
        }
        pieces.push(a);
    }
    pieces.push(Bytes::from_static(b"]"));
    respond_body(StatusCode::OK, mode, Pieces::body(pieces))
}

fn not_acceptable() -> Response {
    reject(
        StatusCode::NOT_ACCEPTABLE,
        Mode::Json,
        ErrorCode::BadUserInput,
        "accept application/graphql-response+json or application/json",
    )
}

/// A finished GraphQL answer: what every request that shares an execution gets.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    mode: Mode,
    cache_control: HeaderValue,
    pieces: Vec<Bytes>,
}

impl Answer {
    fn refusal(status: StatusCode, mode: Mode, code: ErrorCode, message: &str) -> Self {
        let body =
            serde_json::to_vec(&error_body(code, message)).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            status,
            mode,
            cache_control: HeaderValue::from_static("no-store"),
            pieces: vec![Bytes::from(body)],
        }
    }

    /// The answer of an execution that failed inside (a panic): coded, with nothing internal.
    pub(crate) fn internal() -> Self {
        Self::refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            Mode::Json,
            ErrorCode::Internal,
            "internal error",
        )
    }

    fn response(&self) -> Response {
        let mut resp = respond_body(self.status, self.mode, Pieces::body(self.pieces.clone()));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, self.cache_control.clone());
        resp
    }
}

/// An operation ready to run, and what its answer needs to know.
struct Job {
    request: async_graphql::Request,
    rq: Arc<RequestContext>,
    method: Method,
    mode: Mode,
    request_error: StatusCode,
    personalized: bool,
    op_type: &'static str,
    op_name: Option<String>,
    analysis: Option<Analysis>,
    want_cost: bool,
    /// The persisted operation's hash, to record that it validated.
    hash: Option<String>,
    validated: bool,
}

async fn serve(
    app: Arc<GraphqlService>,
    identity: Option<axum::Extension<Identity>>,
    method: Method,
    mode: Mode,
    map: Map<String, Json>,
) -> Response {
    // The authentication stage runs before this service on every route that reaches it; an
    // absent identity (a router assembled without it) is anonymous, never trusted.
    let viewer = identity
        .and_then(|axum::Extension(Identity(v))| v)
        .map(|v| v.as_ref().clone());
    let p = match params(map) {
        Ok(p) => p,
        Err(msg) => return reject(StatusCode::BAD_REQUEST, mode, ErrorCode::BadUserInput, msg),
    };
    let personalized = viewer.is_some();
    // Request errors (the request never ran) are 4xx in graphql-response+json mode; legacy JSON
    // clients get 200 for every well-formed request (GraphQL over HTTP).
    let request_error = if mode == Mode::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };

    // Persisted operations: the query the hash names, or the one sent (registered in APQ mode).
    let resolved = match app.persisted.resolve(p.query, &p.extensions) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                PersistedError::NotFound => ErrorCode::PersistedQueryNotFound,
                PersistedError::NotAllowed => ErrorCode::Forbidden,
                _ => ErrorCode::BadUserInput,
            };
            return reject(request_error, mode, code, &e.to_string());
        }
    };
    if let Err(n) = super::analysis::count_tokens(&resolved.query, app.settings.max_tokens) {
        let msg = format!(
            "the document has more than {} tokens (counted {n} before stopping)",
            app.settings.max_tokens
        );
        return reject(request_error, mode, ErrorCode::QueryTooComplex, &msg);
    }
    let doc = match app.schema.parse(&resolved.query) {
        Ok(doc) => doc,
        Err(e) => {
            return reject(
                request_error,
                mode,
                ErrorCode::GraphqlParseFailed,
                &e.message,
            );
        }
    };
    let operation = operation_of(&doc.operations, p.operation_name.as_deref());
    let op_name = operation.as_ref().and_then(|(_, n)| n.clone());
    let operation = operation.map(|(t, _)| t);
    if method == Method::GET && operation.is_some_and(|op| op != OperationType::Query) {
        let mut resp = reject(
            StatusCode::METHOD_NOT_ALLOWED,
            mode,
            ErrorCode::BadUserInput,
            "only queries can be sent with GET; use POST for mutations",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    // Limits and variables are decided before the engine validates: its validation is costly
    // on documents that expand far (see `analysis`).
    let analysis =
        match app
            .schema
            .preflight(&doc, p.operation_name.as_deref(), p.variables.as_ref())
        {
            Ok(a) => a,
            Err(Refusal::TooComplex(msg)) => {
                return reject(request_error, mode, ErrorCode::QueryTooComplex, &msg);
            }
            Err(Refusal::BadVariables(msg)) => {
                return reject(request_error, mode, ErrorCode::BadUserInput, &msg);
            }
            Err(Refusal::Invalid(msg)) => {
                return reject(
                    request_error,
                    mode,
                    ErrorCode::GraphqlValidationFailed,
                    &msg,
                );
            }
            Err(e @ Refusal::IntrospectionOff) => {
                return reject(
                    request_error,
                    mode,
                    ErrorCode::GraphqlValidationFailed,
                    &e.to_string(),
                );
            }
        };
    // The allow list: only its operations, and introspection only where allowed.
    if app.persisted.allow_list() && !resolved.trusted {
        let introspection_only =
            analysis.is_some_and(|a| a.fields == 0 && a.introspection_fields > 0);
        if !(introspection_only && app.persisted.introspection_allowed()) {
            return reject(
                request_error,
                mode,
                ErrorCode::Forbidden,
                &PersistedError::NotAllowed.to_string(),
            );
        }
    }
    // Rate limits that need the operation (its name, cost, type), per request and before
    // identical requests share an execution; the pipeline's stage adds the headers.
    let op = crate::ratelimit::Operation {
        name: op_name.as_deref(),
        mutation: operation == Some(OperationType::Mutation),
        cost: analysis.as_ref().map_or(1, |a| a.cost),
    };
    if let Some(msg) = crate::pipeline::ratelimit::after_analysis(op).await {
        return reject(
            StatusCode::TOO_MANY_REQUESTS,
            mode,
            ErrorCode::RateLimited,
            &msg,
        );
    }
    // See `render`: the engine's root merge cannot take rendered values twice.
    let renderable = app.settings.direct_json
        && super::render::root_renderable(&doc, p.operation_name.as_deref());
    let coalesce_key =
        (app.settings.coalesce && operation == Some(OperationType::Query)).then(|| {
            let mut extensions = p.extensions.clone();
            extensions.remove("persistedQuery");
            Key {
                get: method == Method::GET,
                graphql_response: mode == Mode::GraphqlResponse,
                query: resolved.query.clone(),
                operation: p.operation_name.clone(),
                variables: p
                    .variables
                    .as_ref()
                    .map(|v| Json::Object(v.clone()).to_string())
                    .unwrap_or_default(),
                extensions: Json::Object(extensions).to_string(),
                viewer: viewer.as_ref().map(|v| {
                    let scopes: Vec<&str> = v.scopes.iter().map(String::as_str).collect();
                    (v.user_id.to_string(), scopes.join(" "), v.max_maturity)
                }),
            }
        });
    let mut request = async_graphql::Request::new(resolved.query.to_string());
    if let Some(name) = p.operation_name.clone() {
        request = request.operation_name(name);
    }
    if let Some(vars) = p.variables {
        request = request.variables(async_graphql::Variables::from_json(Json::Object(vars)));
    }
    request.set_parsed_query(doc);
    let rq = Arc::new(RequestContext::new(viewer, app.request_budget));
    let mut request = request.data(rq.clone());
    if renderable {
        request = request.data(super::render::RenderJson::default());
    }
    let op_type = match operation {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "unknown",
    };
    // The request span (current here) names the operation too, for the access log's readers.
    tracing::Span::current().record(
        "graphql.operation",
        op_name.as_deref().unwrap_or("anonymous"),
    );
    let job = Job {
        request,
        rq,
        method,
        mode,
        request_error,
        personalized,
        op_type,
        op_name,
        analysis,
        want_cost: p.extensions.get("cost") == Some(&Json::Bool(true)),
        hash: resolved.hash,
        validated: resolved.validated,
    };
    match coalesce_key {
        Some(key) => {
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
            answer.response()
        }
        None => execute(app, job).await.response(),
    }
}

/// Runs one operation and makes its answer.
async fn execute(app: Arc<GraphqlService>, job: Job) -> Answer {
    let Job {
        request,
        rq,
        method,
        mode,
        request_error,
        personalized,
        op_type,
        op_name,
        analysis,
        want_cost,
        hash,
        validated,
    } = job;
    let op_name = op_name.as_deref();
    let span = tracing::info_span!(
        "graphql.operation",
        otel.name = %format!("{op_type} {}", op_name.unwrap_or("anonymous")),
        graphql.operation.name = op_name.unwrap_or("anonymous"),
        graphql.operation.type = op_type,
        outcome = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let limits = &app.settings;
    // The estimate bounds the work; this bounds the time, whatever the estimate missed.
    let executed = tokio::time::timeout(
        limits.timeout,
        app.schema
            .execute(request, validated)
            .instrument(span.clone()),
    )
    .await;
    let Ok(mut response) = executed else {
        span.record("outcome", "error");
        if let Some(m) = &app.metrics {
            m.graphql_operation(op_name, op_type, "error", started.elapsed());
        }
        tracing::warn!(parent: &span, timeout = ?limits.timeout, "operation cut off");
        let msg = format!(
            "the operation ran longer than {}",
            humantime::format_duration(limits.timeout)
        );
        return Answer::refusal(request_error, mode, ErrorCode::QueryTooComplex, &msg);
    };
    let outcome = classify(&mut response, !limits.introspection);
    if outcome == Outcome::Executed {
        // It validated: a persisted operation may skip validation from now on.
        if let Some(h) = &hash {
            app.persisted.mark_valid(h);
        }
        if response.data == async_graphql::Value::Null && response.errors.is_empty() {
            // The engine answers a selection whose every field was skipped with null; the
            // spec's answer is an empty object.
            response.data = async_graphql::Value::Object(Default::default());
        }
    }
    let outcome_label = match outcome {
        Outcome::RequestError => "error",
        Outcome::Executed if response.errors.is_empty() => "ok",
        Outcome::Executed => "partial",
    };
    span.record("outcome", outcome_label);
    if let Some(m) = &app.metrics {
        m.graphql_operation(op_name, op_type, outcome_label, started.elapsed());
    }
    stamp_trace_id(&mut response);
    report_stale(&mut response, &rq.cache_log);
    if let Some(a) = analysis.filter(|_| want_cost) {
        report_cost(&mut response, &a, limits);
    }
    let status = match outcome {
        Outcome::RequestError => request_error,
        Outcome::Executed => StatusCode::OK,
    };
    let cache_control = cache_control(
        personalized,
        method == Method::GET && response.errors.is_empty(),
        &rq.cache_log,
    );
    match response_pieces(&response) {
        Ok(pieces) if pieces.iter().map(Bytes::len).sum::<usize>() > limits.max_response_bytes => {
            tracing::warn!(
                limit = limits.max_response_bytes,
                "answer over the size limit"
            );
            let msg = format!(
                "the answer is larger than {} bytes; select less",
                limits.max_response_bytes
            );
            Answer::refusal(request_error, mode, ErrorCode::QueryTooComplex, &msg)
        }
        Ok(pieces) => Answer {
            status,
            mode,
            cache_control,
            pieces,
        },
        Err(_) => Answer::refusal(status, mode, ErrorCode::Internal, "internal error"),
    }
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

/// `extensions.cache.stale`: which fragments were served past their TTL and how old they were, so
/// clients and operators can tell a degraded answer from a fresh one.
fn report_stale(response: &mut async_graphql::Response, log: &CacheLog) {
    let stale: Vec<Json> = log
        .uses()
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

/// The type and name of the operation that will run; `None` when the name matches nothing (the
/// engine then reports it). A document with one named operation is that operation even when the
/// request names none.
fn operation_of(
    ops: &DocumentOperations,
    name: Option<&str>,
) -> Option<(OperationType, Option<String>)> {
    match (ops, name) {
        (DocumentOperations::Single(op), _) => Some((op.node.ty, None)),
        (DocumentOperations::Multiple(map), Some(name)) => {
            map.get(name).map(|op| (op.node.ty, Some(name.to_owned())))
        }
        (DocumentOperations::Multiple(map), None) if map.len() == 1 => map
            .iter()
            .next()
            .map(|(n, op)| (op.node.ty, Some(n.to_string()))),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// The JSON body of an executed request, in pieces: written straight from the engine's value tree
/// (building, printing and dropping a second tree cost about a third of a warm web homepage's
/// instructions) by [`super::json`], with rendered rows and titles ([`super::render`]) passed on
/// as they are rather than copied. `data` keeps the engine's order, which is the query's selection
/// order, as the GraphQL spec asks of response maps; errors and extensions are small and keep the
/// plain `serde_json` round trip.
fn response_pieces(response: &async_graphql::Response) -> serde_json::Result<Vec<Bytes>> {
    use super::json::JsonOut as _;
    // Sized like the last answer's own bytes: a client's homepages are alike, and growing a
    // 210 KB value-tree answer by doubling from 4 KB copied ~250 KB per request. Only a hint,
    // capped so a burst of small answers after a huge one cannot reserve much.
    static LAST_OWN: AtomicUsize = AtomicUsize::new(4096);
    let mut out = Chunks::with_capacity(LAST_OWN.load(Ordering::Relaxed).clamp(4096, 1 << 20));
    out.buf().extend_from_slice(b"{\"data\":");
    super::json::write_value(&mut out, &response.data);
    if !response.errors.is_empty() {
        out.buf().extend_from_slice(b",\"errors\":");
        serde_json::to_writer(out.buf(), &serde_json::to_value(&response.errors)?)?;
    }
    if !response.extensions.is_empty() {
        out.buf().extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(out.buf(), &serde_json::to_value(&response.extensions)?)?;
    }
    out.buf().push(b'}');
    let own = out.own_len();
    LAST_OWN.store(own + own / 16, Ordering::Relaxed);
    Ok(out.finish())
}

/// The JSON body of an executed request in one buffer (see [`response_pieces`]).
pub(crate) fn response_bytes(response: &async_graphql::Response) -> serde_json::Result<Vec<u8>> {
    Ok(response_pieces(response)?.concat())
}

/// A response body of JSON pieces with its exact length, so the client still gets a
/// `Content-Length` (and hyper writes the pieces with one vectored write).
struct Pieces {
    pieces: VecDeque<Bytes>,
    left: u64,
}

impl Pieces {
    fn body(pieces: Vec<Bytes>) -> Body {
        match <[Bytes; 1]>::try_from(pieces) {
            Ok([one]) => Body::from(one),
            Err(pieces) => {
                let left = pieces.iter().map(|p| p.len() as u64).sum();
                Body::new(Self {
                    pieces: pieces.into(),
                    left,
                })
            }
        }
    }
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let piece = this.pieces.pop_front().map(|piece| {
            this.left -= piece.len() as u64;
            Ok(http_body::Frame::data(piece))
        });
        std::task::Poll::Ready(piece)
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{Name, ServerError, Value};

    use super::*;

    /// The direct writer produces the same JSON values as the `serde_json` round trip, with
    /// `data`'s fields in selection order (not re-sorted) and data, errors, extensions in that order.
    #[test]
    fn response_bytes_keep_values_and_selection_order() {
        let obj = |pairs: &[(&str, Value)]| {
            Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (Name::new(k), v.clone()))
                    .collect(),
            )
        };
        let image = obj(&[
            ("width", Value::from(342)),
            ("url", Value::from("https://x/\"q\"\u{e9}.jpg")),
            ("height", Value::from(513)),
        ]);
        let data = obj(&[
            ("zeta", Value::Null),
            ("rows", Value::List(vec![image.clone(), Value::Null, image])),
            ("fraction", Value::from(0.366_319_444_444_444_4)),
            ("alpha", Value::Boolean(true)),
            ("kind", Value::Enum(Name::new("TOP_10"))),
        ]);
        let mut response = async_graphql::Response::new(data);
        let mut error = ServerError::new("row failed", None);
        error.path = vec![async_graphql::PathSegment::Field("rows".to_owned())];
        response.errors.push(error);
        response
            .extensions
            .insert("cache".to_owned(), obj(&[("stale", Value::List(vec![]))]));

        for response in [response, async_graphql::Response::new(Value::Null)] {
            let bytes = response_bytes(&response).unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, serde_json::to_value(&response).unwrap());
            let text = String::from_utf8(bytes).unwrap();
            if response.data != Value::Null {
                // Selection order at every depth: zeta before rows before alpha; width before url.
                let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
                assert!(
                    pos("zeta") < pos("rows")
                        && pos("rows") < pos("fraction")
                        && pos("fraction") < pos("alpha")
                );
                assert!(pos("width") < pos("url") && pos("url") < pos("height"));
                assert!(pos("data") < pos("errors") && pos("errors") < pos("extensions"));
            }
        }
    }

    /// Rendered values reach the body as the very bytes they were written to (no copy), between
    /// pieces written here, and the body announces the exact total length.
    #[tokio::test]
    async fn rendered_values_go_out_as_shared_pieces_with_an_exact_length() {
        use http_body_util::BodyExt as _;

        let row = br#"[{"title":{"id":"t1"}},{"title":{"id":"t2"}}]"#.to_vec();
        let marker = super::super::render::raw(row.clone());
        let shared = super::super::render::raw_json(&marker).unwrap().clone();
        let data = Value::Object(
            [
                (Name::new("kind"), Value::from("TOP_10")),
                (Name::new("items"), marker),
                (Name::new("n"), Value::from(2)),
            ]
            .into_iter()
            .collect(),
        );
        let pieces = response_pieces(&async_graphql::Response::new(data)).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces[1].as_ptr(),
            shared.as_ptr(),
            "the rendered row was copied"
        );
        let expected = format!(
            r#"{{"data":{{"kind":"TOP_10","items":{},"n":2}}}}"#,
            String::from_utf8(row).unwrap()
        );
        assert_eq!(pieces.concat(), expected.as_bytes());

        let body = Pieces::body(pieces);
        assert_eq!(body.size_hint().exact(), Some(expected.len() as u64));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, expected.as_bytes());
    }
}
