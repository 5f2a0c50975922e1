//! The admission stage of the GraphQL service: a parameter map becomes an operation ready to run,
//! or a [`Refused`] — the persisted lookup (APQ, the allow list), the token count, parsing, the
//! GET-is-read-only rule, the analysis (cost, depth, variables, introspection), `@defer`'s own
//! rules and whether the answer is incremental, and the rate-limit policies that need the
//! operation. Everything here is decided per request, before identical
//! requests share an execution.

use std::sync::Arc;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use axum::http::Method;
use serde_json::{Map, Value as Json};

use super::{
    GraphqlService, Request,
    answer::Refused,
    execute::{Job, Op},
    wire::params,
};
use crate::{
    compose::RequestContext,
    error::ErrorCode,
    graphql::{analysis::Refusal, coalesce::Key, persisted::PersistedError},
    refusal::Mode,
};

impl From<PersistedError> for Refused {
    fn from(e: PersistedError) -> Self {
        let code = match e {
            PersistedError::NotFound => ErrorCode::PersistedQueryNotFound,
            PersistedError::NotAllowed => ErrorCode::Forbidden,
            _ => ErrorCode::BadUserInput,
        };
        Self::Request(code, e.to_string())
    }
}

impl From<Refusal> for Refused {
    fn from(e: Refusal) -> Self {
        match e {
            Refusal::TooComplex(msg) => Self::Request(ErrorCode::QueryTooComplex, msg),
            Refusal::BadVariables(msg) => Self::Request(ErrorCode::BadUserInput, msg),
            Refusal::Invalid(msg) => Self::Request(ErrorCode::GraphqlValidationFailed, msg),
            e @ Refusal::IntrospectionOff => {
                Self::Request(ErrorCode::GraphqlValidationFailed, e.to_string())
            }
        }
    }
}

/// Admits one operation of `request`, given as its parameter map.
pub(super) async fn admit(
    app: &GraphqlService,
    request: &Request,
    map: Map<String, Json>,
) -> Result<Job, Refused> {
    let (method, mode) = (request.method.clone(), request.mode);
    let viewer = request.viewer.clone();
    let p = params(map).map_err(|msg| Refused::Malformed(msg.into()))?;
    let personalized = viewer.is_some();

    // Persisted operations: the query the hash names, or the one sent (registered in APQ mode).
    let resolved = app.persisted.resolve(p.query, &p.extensions)?;
    if let Err(n) = crate::graphql::analysis::count_tokens(&resolved.query, app.settings.max_tokens)
    {
        let msg = format!(
            "the document has more than {} tokens (counted {n} before stopping)",
            app.settings.max_tokens
        );
        return Err(Refused::Request(ErrorCode::QueryTooComplex, msg));
    }
    let doc = app
        .schema
        .parse(&resolved.query)
        .map_err(|e| Refused::Request(ErrorCode::GraphqlParseFailed, e.message))?;
    let operation = operation_of(&doc.operations, p.operation_name.as_deref());
    let op_name = operation.as_ref().and_then(|(_, n)| n.clone());
    let operation = operation.map(|(t, _)| t);
    if method == Method::GET && operation.is_some_and(|op| op != OperationType::Query) {
        return Err(Refused::ReadOnlyGet);
    }
    // Limits and variables are decided before the engine validates: its validation is costly
    // on documents that expand far (see `analysis`).
    let analysis = app
        .schema
        .preflight(&doc, p.operation_name.as_deref(), p.variables.as_ref())?;
    // `@defer`'s rules the engine does not know; and whether the answer is incremental (a
    // quick look at the text first: nearly every document has no `@defer`).
    let mentions_defer = resolved
        .query
        .contains(crate::graphql::defer::directive::NAME);
    if mentions_defer {
        crate::graphql::defer::plan::check(&doc)
            .map_err(|msg| Refused::Request(ErrorCode::GraphqlValidationFailed, msg))?;
    }
    let defer = (mentions_defer && request.incremental)
        .then(|| {
            crate::graphql::defer::plan::plan(
                &doc,
                p.operation_name.as_deref(),
                p.variables.as_ref(),
            )
        })
        .flatten();
    // The allow list: only its operations, and introspection only where allowed.
    if app.persisted.allow_list() && !resolved.trusted {
        let introspection_only =
            analysis.is_some_and(|a| a.fields == 0 && a.introspection_fields > 0);
        if !(introspection_only && app.persisted.introspection_allowed()) {
            return Err(PersistedError::NotAllowed.into());
        }
    }
    // Rate limits that need the operation (its name, cost, type), per request and before
    // identical requests share an execution; the pipeline's stage adds the headers.
    if let Some(late) = &request.late {
        let op = crate::ratelimit::Operation {
            name: op_name.as_deref(),
            mutation: operation == Some(OperationType::Mutation),
            cost: analysis.as_ref().map_or(1, |a| a.cost),
        };
        if let Some(msg) = late.operation(op).await {
            return Err(Refused::RateLimited(msg));
        }
    }
    // See `render`: the engine's root merge cannot take rendered values twice.
    let renderable = app.settings.direct_json
        && crate::graphql::direct::root_renderable(&doc, p.operation_name.as_deref());
    // An incremental answer is a stream of its own: never shared.
    let coalesce = (app.settings.coalesce
        && operation == Some(OperationType::Query)
        && defer.is_none())
    .then(|| {
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
    let mut graphql_request = async_graphql::Request::new(resolved.query.to_string());
    if let Some(name) = p.operation_name.clone() {
        graphql_request = graphql_request.operation_name(name);
    }
    if let Some(vars) = p.variables {
        graphql_request =
            graphql_request.variables(async_graphql::Variables::from_json(Json::Object(vars)));
    }
    graphql_request.set_parsed_query(doc);
    let rq = Arc::new(RequestContext::new(viewer, app.request_budget));
    let mut graphql_request = graphql_request.data(rq.clone());
    if renderable {
        graphql_request = graphql_request.data(crate::graphql::direct::RenderJson::default());
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
    Ok(Job {
        request: graphql_request,
        op: Op {
            rq,
            method,
            mode,
            personalized,
            op_type,
            op_name,
            analysis,
            want_cost: p.extensions.get("cost") == Some(&Json::Bool(true)),
            hash: resolved.hash,
        },
        validated: resolved.validated,
        coalesce,
        defer,
    })
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
