//! The GraphQL service: GraphQL over HTTP, per the GraphQL-over-HTTP spec (the stock async-graphql
//! handler runs mutations over GET and ignores Accept: it scored 46/61 on the GraphQL-over-HTTP
//! audit, this service 61/61). It runs behind the pipeline
//! (`crate::pipeline`): the request's body is already held to its limits and its [`Identity`]
//! already verified. Its state ([`GraphqlService`]) is its own, not the whole settings.
//!
//! A request walks four stages, each in its own module:
//! 1. [`wire`]: Accept negotiation, method, body and parameters (and batches, each of whose
//!    operations walks the rest on its own);
//! 2. [`admit`]: persisted lookup, token count, parse, the GET-is-read-only rule, analysis and
//!    limits, the rate limits that need the operation;
//! 3. [`execute`]: the schema runs it (document cache), shared with identical requests in flight;
//!    or [`incremental`] runs it part by part when rows are deferred (`@defer`);
//! 4. [`answer`]: status, headers and body; every refusal on the way is one [`answer::Refused`]
//!    mapped to its status and code in one place.

mod admit;
mod answer;
mod execute;
mod incremental;
mod wire;

use std::sync::Arc;

use axum::{body::Bytes, http::Method, response::Response};
use serde_json::{Map, Value as Json};

use super::direct::response_pieces;
pub(crate) use answer::Answer;

use super::{coalesce::Coalescer, persisted::Persisted};
use crate::{
    auth::{Identity, Viewer},
    config::GraphqlSettings,
    ratelimit::LateLimits,
    refusal::Mode,
    telemetry::metrics::Metrics,
};

/// Where a subscription sent to `/graphql` with `Accept: multipart/mixed` is streamed from
/// (the live doors, `crate::live`, above this service: it names them only through this).
pub(crate) trait SubscriptionDoor: Send + Sync + 'static {
    /// The streaming answer of the admitted subscription `request` of `viewer` from `ip`.
    fn multipart(
        self: Arc<Self>,
        request: async_graphql::Request,
        viewer: Option<Viewer>,
        ip: std::net::IpAddr,
    ) -> futures::future::BoxFuture<'static, Response>;
}

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
    pub(crate) coalescer: Coalescer<Answer>,
    /// Subscriptions sent here (`None`: `subscriptions.enabled` is off).
    pub(crate) subscriptions: Option<Arc<dyn SubscriptionDoor>>,
}

/// The service's routes (`GET`, `POST /graphql`); the pipeline's stages go around them.
pub(crate) fn router(service: Arc<GraphqlService>) -> axum::Router {
    axum::Router::new()
        .route("/graphql", axum::routing::get(wire::get).post(wire::post))
        .with_state(service)
}

/// What the stages before this service decided about a request, and how it came.
#[derive(Clone)]
struct Request {
    /// The verified viewer; `None` is anonymous.
    viewer: Option<Viewer>,
    /// The rate-limit checks still owed (absent when no policy applies).
    late: Option<Arc<LateLimits>>,
    method: Method,
    mode: Mode,
    /// `Accept` allows an incremental (`multipart/mixed`) answer (`@defer`, or a subscription's
    /// stream); never for a batch's operations.
    incremental: bool,
    /// The client's address (a subscription's stream takes a place in the connection counts).
    client: std::net::IpAddr,
}

impl Request {
    fn new(
        identity: Option<axum::Extension<Identity>>,
        late: Option<axum::Extension<Arc<LateLimits>>>,
        method: Method,
        mode: Mode,
        incremental: bool,
    ) -> Self {
        // The authentication stage runs before this service on every route that reaches it; an
        // absent identity (a router assembled without it) is anonymous, never trusted.
        let viewer = identity
            .and_then(|axum::Extension(Identity(v))| v)
            .map(|v| v.as_ref().clone());
        Self {
            viewer,
            late: late.map(|axum::Extension(l)| l),
            method,
            mode,
            incremental,
            client: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// A subscription operation admitted by the live doors (`crate::live`): the same admission as a
/// request's (persisted lookup, token count, parse, analysis and limits, late rate limits),
/// as the request the schema's stream runs.
pub(crate) struct LiveOperation {
    /// The request to run (parsed document and the request context attached).
    pub(crate) request: async_graphql::Request,
    /// `"subscription"`, `"query"`, …
    pub(crate) op_type: &'static str,
}

/// Admits one operation arriving at a live door, as `viewer`, charged to `late`.
pub(crate) async fn admit_live(
    app: &GraphqlService,
    viewer: Option<Viewer>,
    late: Option<Arc<LateLimits>>,
    map: Map<String, Json>,
) -> Result<LiveOperation, answer::Refused> {
    let request = Request {
        viewer,
        late,
        method: Method::POST,
        mode: Mode::Json,
        incremental: false,
        client: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let job = admit::admit(app, &request, map).await?;
    Ok(LiveOperation {
        request: job.request,
        op_type: job.op.op_type,
    })
}

/// One operation's walk after the wire: admitted (or refused), executed, answered.
async fn serve(app: Arc<GraphqlService>, request: Request, map: Map<String, Json>) -> Response {
    match admit::admit(&app, &request, map).await {
        Ok(job) if job.op.op_type == "subscription" => {
            match (app.subscriptions.clone(), request.incremental) {
                (Some(door), true) => {
                    door.multipart(job.request, request.viewer, request.client)
                        .await
                }
                _ => answer::Refused::Request(
                    crate::error::ErrorCode::GraphqlValidationFailed,
                    "subscriptions are served at /graphql/ws (graphql-transport-ws), at \
                     /graphql/stream (GraphQL over SSE), and here to a single POST that accepts \
                     multipart/mixed"
                        .to_owned(),
                )
                .response(request.mode),
            }
        }
        Ok(job) if job.defer.is_some() => incremental::run(app, job).await,
        Ok(job) => execute::run(app, job).await.response(),
        Err(refused) => refused.response(request.mode),
    }
}

/// The JSON body of an executed request in one buffer (see [`answer`]'s writer).
pub(crate) fn response_bytes(response: &async_graphql::Response) -> serde_json::Result<Vec<u8>> {
    Ok(response_pieces(response)?.concat())
}

/// No execution in flight yet; a panicking one answers [`Answer::internal`].
pub(crate) fn coalescer() -> Coalescer<Answer> {
    Coalescer::new(Answer::internal)
}
