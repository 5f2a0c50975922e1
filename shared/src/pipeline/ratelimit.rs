//! The rate-limit stage, after authentication (the verified viewer is on the request): it
//! decides the policies that need only the client — address, subject, binary, route — before
//! anything is parsed, refuses with `429` (a GraphQL error on `/graphql`, the JSON error shape
//! on pass-through routes) and `Retry-After`, and puts `RateLimit-Policy` / `RateLimit` on every
//! answer a policy applied to.
//!
//! Policies that need the operation are decided by the GraphQL service after its analysis
//! ([`after_analysis`]). The stage hands that check its request's subject, and collects its
//! decisions for the headers, through a task-local: the service's handlers run inside this
//! stage's future, and their signatures stay the GraphQL layer's own.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};
use parking_lot::Mutex;

use super::client_addr::ClientAddr;
use crate::{
    auth::Identity,
    error::ErrorCode,
    ratelimit::{Operation, Outcome, RateLimiter, Subject, Target},
    refusal::stage_refusal,
};

/// The stage's state: the limiter and the group of routes it stands before.
#[derive(Clone)]
pub(crate) struct RateLimit {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) target: Target,
}

/// What the after-analysis check needs, and what it decided.
struct Late {
    limiter: Arc<RateLimiter>,
    subject: Subject,
    decided: Mutex<Outcome>,
}

tokio::task_local! {
    static LATE: Arc<Late>;
}

/// The middleware.
pub(crate) async fn limit(State(stage): State<RateLimit>, req: Request, next: Next) -> Response {
    let graphql = stage.target == Target::Graphql;
    // The client-address stage runs first on every request; without it (an in-process router)
    // the request is from nowhere in particular, never from a forwarded header.
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| {
            a.0
        });
    let user = req
        .extensions()
        .get::<Identity>()
        .and_then(|i| i.0.as_ref())
        .map(|v| v.user_id.to_string());
    let subject = Subject {
        ip,
        user,
        target: stage.target.clone(),
    };
    let early = stage.limiter.check_early(&subject).await;
    if !early.allowed() {
        tracing::info!(
            client_address = %subject.ip,
            policies = ?early.verdicts().filter(|(_, v)| !v.allowed).map(|(n, _)| n).collect::<Vec<_>>(),
            "request refused by a rate limit"
        );
        let mut resp = refusal(graphql, req.headers(), &early);
        early.apply(resp.headers_mut());
        return resp;
    }
    if !graphql {
        let mut resp = next.run(req).await;
        early.apply(resp.headers_mut());
        return resp;
    }
    let late = Arc::new(Late {
        limiter: stage.limiter.clone(),
        subject,
        decided: Mutex::new(Outcome::default()),
    });
    let mut resp = LATE.scope(late.clone(), next.run(req)).await;
    let mut all = early;
    all.extend(std::mem::take(&mut *late.decided.lock()));
    all.apply(resp.headers_mut());
    resp
}

fn refusal(graphql: bool, headers: &http::HeaderMap, outcome: &Outcome) -> Response {
    stage_refusal(
        graphql,
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        &outcome.message(),
    )
}

/// One more operation of a batch, charged to the policies that need only the client: the stage
/// charged the HTTP request (the batch's first operation) before the body was read; each further
/// operation is charged here, once the body shows how many there are, so a batch of `n` costs
/// what `n` requests sent alone would. `Some(message)` when a policy refuses this operation
/// (nothing is charged for it then). `None` outside the stage (no policies configured).
pub(crate) async fn batched_operation() -> Option<String> {
    let late = LATE.try_with(Arc::clone).ok()?;
    let outcome = late.limiter.check_early(&late.subject).await;
    if outcome.is_empty() {
        return None;
    }
    let refused = (!outcome.allowed()).then(|| outcome.message());
    if let Some(msg) = &refused {
        tracing::info!(client_address = %late.subject.ip, "batched operation refused by a rate limit: {msg}");
    }
    late.decided.lock().extend(outcome);
    refused
}

/// The policies that need the operation, decided once the GraphQL service has measured it:
/// `Some(message)` when one refuses (the service answers `429 RATE_LIMITED`; this stage adds
/// the headers). `None` outside the stage (no policies configured).
pub(crate) async fn after_analysis(op: Operation<'_>) -> Option<String> {
    let late = LATE.try_with(Arc::clone).ok()?;
    let outcome = late.limiter.check_late(&late.subject, op).await;
    if outcome.is_empty() {
        return None;
    }
    let refused = (!outcome.allowed()).then(|| outcome.message());
    if let Some(msg) = &refused {
        tracing::info!(client_address = %late.subject.ip, operation = op.name.unwrap_or("anonymous"), "operation refused by a rate limit: {msg}");
    }
    late.decided.lock().extend(outcome);
    refused
}
