//! The wire stage of the GraphQL service: what arrives over HTTP becomes a parameter map, or is
//! refused before anything GraphQL happens — Accept negotiation (`406`; and whether an
//! incremental `multipart/mixed` answer is accepted), GraphiQL for browsers on
//! `GET`, the GET query string, the POST body's media type (`415`) and JSON shape, the body's
//! size and time faults, and batches (a JSON array of requests).

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value as Json};

use super::{GraphqlService, Request, answer::Pieces, answer::Refused, serve};
use crate::{
    auth::Identity,
    error::ErrorCode,
    ratelimit::LateLimits,
    refusal::{Mode, VARY, error_body, negotiate, respond_body},
};

/// The request parameters after decoding, before GraphQL parsing.
pub(super) struct Params {
    /// `None` only with a persisted-query hash.
    pub(super) query: Option<String>,
    pub(super) operation_name: Option<String>,
    pub(super) variables: Option<Map<String, Json>>,
    pub(super) extensions: Map<String, Json>,
}

/// Validates the parameter map of a POST body or GET query string.
pub(super) fn params(mut raw: Map<String, Json>) -> Result<Params, &'static str> {
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
pub(super) async fn get(
    State(app): State<Arc<GraphqlService>>,
    identity: Option<axum::Extension<Identity>>,
    late: Option<axum::Extension<Arc<LateLimits>>>,
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
        return Refused::NotAcceptable.response(Mode::Json);
    };
    let incremental = crate::graphql::defer::parts::accepted(&headers);
    let request = Request::new(identity, late, Method::GET, mode, incremental);
    match get_params(raw.as_deref()) {
        Ok(map) => serve(app, request, map).await,
        Err(msg) => Refused::Malformed(msg.into()).response(mode),
    }
}

/// `POST /graphql`.
pub(super) async fn post(
    State(app): State<Arc<GraphqlService>>,
    identity: Option<axum::Extension<Identity>>,
    late: Option<axum::Extension<Arc<LateLimits>>>,
    addr: Option<axum::Extension<crate::pipeline::client_addr::ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(mode) = negotiate(&headers) else {
        return Refused::NotAcceptable.response(Mode::Json);
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
        return Refused::MediaType.response(mode);
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
            return Refused::Body(fault.status(), msg).response(mode);
        }
    };
    let incremental = crate::graphql::defer::parts::accepted(&headers);
    let mut request = Request::new(identity, late, Method::POST, mode, incremental);
    if let Some(axum::Extension(a)) = addr {
        request.client = a.0;
    }
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(map)) => serve(app, request, map).await,
        // A batch's answer is one JSON array: its operations' answers are never incremental.
        Ok(Json::Array(items)) => {
            batch(
                app,
                Request {
                    incremental: false,
                    ..request
                },
                items,
            )
            .await
        }
        Ok(_) => Refused::Malformed("the body must be a JSON object".into()).response(mode),
        Err(_) => Refused::Malformed("the body is not valid JSON".into()).response(mode),
    }
}

/// A batch (a JSON array of requests, as Apollo's and Relay's batching links send): each runs as
/// if sent alone, with the same identity and the same limits (every rate-limit policy charges
/// each operation, and admits or refuses each on its own), at once; the answer is the array of
/// their answers, in order, with `200`. At most `graphql.max_batch` operations (`1`, the default,
/// turns batching off); never stored by a shared cache.
async fn batch(app: Arc<GraphqlService>, request: Request, items: Vec<Json>) -> Response {
    let mode = request.mode;
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
        return Refused::Malformed(msg.into()).response(mode);
    }
    // Rate limits count operations: the pipeline's stage charged this HTTP request once (the
    // first operation); each further one is charged now, in order, before any runs. Admission
    // is per operation, as if each were sent alone: those over a limit get `RATE_LIMITED` in
    // their place, the others run. After the first refusal the rest are refused without asking
    // again (a refused check charges nothing and would only repeat the answer).
    let mut refused: Vec<Option<String>> = vec![None];
    for _ in 1..items.len() {
        let last = refused.last().cloned().flatten();
        let verdict = match (last, &request.late) {
            (Some(msg), _) => Some(msg),
            // Outside the rate-limit stage (no policies): nothing to charge.
            (None, None) => None,
            (None, Some(late)) => late.another_operation().await,
        };
        refused.push(verdict);
    }
    let answers =
        futures::future::join_all(items.into_iter().zip(refused).map(|(item, refused)| {
            let (app, request) = (app.clone(), request.clone());
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
                let resp = serve(app, request, map).await;
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
