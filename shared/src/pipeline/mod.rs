//! The request pipeline: the stages every request passes before the GraphQL service or a
//! pass-through route, each a middleware in its own module with its errors and tests, assembled
//! here in one place and in this order (outermost first):
//!
//! 1. connection (`server::conn`): TLS, the socket peer, limits per connection;
//! 2. [`client_addr`]: the client's address (trusted proxies' forwarding headers);
//! 3. [`observe`]: trace context, request id, the `http.request` span, the access log;
//! 4. [`ip_rules`]: global allow/deny lists → `403`;
//! 5. [`cors`]: preflights answered, `Access-Control-*` on allowed origins;
//! 6. [`limits`]: body size and time (per group of routes: GraphQL, each route);
//! 7. [`authn`]: the verified viewer or anonymous, as an `Identity` on the request;
//! 8. [`ratelimit`]: the policies that need only the client (address, subject, binary,
//!    route) → `429`; the GraphQL service decides those needing the operation after its
//!    analysis, through the same stage;
//! 9. the GraphQL service (`graphql::service`) or a pass-through route (`proxy`, which adds its own
//!    client-address rules and identity requirements).
//!
//! Stages 2–5 wrap the whole public router ([`Edge::around_app`]); 6–8 wrap each group of routes
//! that takes bodies and identities ([`Edge::around_service`]), so `/healthz` never needs a token.
//! Compression wraps everything, so every answer, refusals included, is compressed alike — except
//! incremental (`multipart/mixed`) answers: an encoder holds output back until it has enough to
//! compress, so the first part would wait for the last.

pub(crate) mod authn;
pub mod client_addr;
pub(crate) mod cors;
pub(crate) mod ip_rules;
pub(crate) mod limits;
pub(crate) mod observe;
pub(crate) mod ratelimit;

use std::sync::Arc;

use axum::{Router, middleware::from_fn_with_state};
use tower_http::{
    compression::{
        CompressionLayer,
        predicate::{DefaultPredicate, NotForContentType, Predicate as _},
    },
    cors::CorsLayer,
};

/// The default rule (not tiny bodies, not images, gRPC or server-sent events) and not incremental
/// answers, whose parts must leave as they are written.
fn streamed_uncompressed() -> impl tower_http::compression::Predicate {
    DefaultPredicate::new().and(NotForContentType::const_new("multipart/mixed"))
}

/// The stages built once from the settings.
pub(crate) struct Edge {
    pub(crate) trusted: Arc<client_addr::TrustedProxies>,
    pub(crate) observe: Arc<observe::Observe>,
    pub(crate) ip_rules: Arc<ip_rules::IpRules>,
    pub(crate) cors: Option<CorsLayer>,
    pub(crate) authn: authn::Authn,
    /// Rate limits, when any policy is configured.
    pub(crate) ratelimit: Option<Arc<crate::ratelimit::RateLimiter>>,
}

impl Edge {
    /// Body limits, then authentication, then rate limits, around one group of routes (the
    /// GraphQL service or one pass-through route: refusals are GraphQL answers on the first).
    pub(crate) fn around_service(
        &self,
        routes: Router,
        limit: limits::BodyLimit,
        target: crate::ratelimit::Target,
    ) -> Router {
        let authn = authn::Authn {
            graphql: target == crate::ratelimit::Target::Graphql,
            ..self.authn.clone()
        };
        let mut routes = routes;
        if let Some(limiter) = self.ratelimit.as_ref().filter(|l| l.applies_to(&target)) {
            let stage = ratelimit::RateLimit {
                limiter: limiter.clone(),
                target,
            };
            routes = routes.route_layer(from_fn_with_state(stage, ratelimit::limit));
        }
        // `route_layer`s run outermost-last: limits first, then authentication, then rate limits.
        routes
            .route_layer(from_fn_with_state(authn, authn::authenticate))
            .route_layer(from_fn_with_state(limit, limits::limit_body))
    }

    /// The request-wide stages around the whole public router.
    pub(crate) fn around_app(&self, app: Router) -> Router {
        let mut app = app;
        if let Some(cors) = &self.cors {
            app = app.layer(cors.clone());
        }
        if !self.ip_rules.is_open() {
            app = app.layer(from_fn_with_state(self.ip_rules.clone(), ip_rules::check));
        }
        app.layer(from_fn_with_state(self.observe.clone(), observe::observe))
            .layer(from_fn_with_state(
                self.trusted.clone(),
                client_addr::client_addr,
            ))
            .layer(
                CompressionLayer::new()
                    .gzip(true)
                    .br(true)
                    .zstd(true)
                    .compress_when(streamed_uncompressed()),
            )
    }

    /// The stages an operator's admin listener keeps: the client address and observation.
    pub(crate) fn around_admin(&self, admin: Router) -> Router {
        admin
            .layer(from_fn_with_state(self.observe.clone(), observe::observe))
            .layer(from_fn_with_state(
                self.trusted.clone(),
                client_addr::client_addr,
            ))
    }
}
