//! The rate-limit stage, after authentication (the verified viewer is on the request): it
//! decides the policies that need only the client — address, subject, binary, route — before
//! anything is parsed, refuses with `429` (a GraphQL error on `/graphql`, the JSON error shape
//! on pass-through routes) and `Retry-After`, and puts `RateLimit-Policy` / `RateLimit` on every
//! answer a policy applied to.
//!
//! Policies that need the operation are decided by the GraphQL service after its analysis: the
//! stage puts a [`LateLimits`] (the request's subject and the limiter) on the request as an
//! extension, the service asks it, and the stage adds what it decided to the answer's headers.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use super::client_addr::ClientAddr;
use crate::{
    auth::Identity,
    error::ErrorCode,
    ratelimit::{LateLimits, Outcome, RateLimiter, Subject, Target},
    refusal::stage_refusal,
};

/// The stage's state: the limiter and the group of routes it stands before.
#[derive(Clone)]
pub(crate) struct RateLimit {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) target: Target,
}

/// The middleware.
pub(crate) async fn limit(
    State(stage): State<RateLimit>,
    mut req: Request,
    next: Next,
) -> Response {
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
    let late = Arc::new(LateLimits::new(stage.limiter.clone(), subject));
    req.extensions_mut().insert(late.clone());
    let mut resp = next.run(req).await;
    let mut all = early;
    all.extend(late.take_decided());
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
