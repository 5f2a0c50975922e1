//! Pass-through routes (`[[routes]]`): requests under a path prefix are proxied to a REST backend
//! through the same policy layer as GraphQL's backend calls (breaker, concurrency limit, balanced
//! endpoints, retries for bodiless GET/HEAD only). The forwarded path stays under the route's
//! backend path ([`path`]: dot segments in every spelling resolved or refused). Hop-by-hop headers
//! are removed both ways, the identity header is set from the verified token only (client-sent
//! `x-user-id` and the bearer token itself are not forwarded: the BFF is the trust boundary), and
//! so is the trace context: the backend gets the BFF's own `traceparent` (naming the attempt's
//! span), `tracestate` and request id, never the client's raw values. Bodies stream through the
//! body-limits stage; a body the client breaks (too large, too slow, malformed framing) is the
//! client's `413`/`408`/`400` and never counts against the backend. Upstream failures become clean
//! 502/503/504 answers that never echo upstream text.

pub(crate) mod path;

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, Method, StatusCode, header},
    response::Response,
    routing::any,
};
use futures::TryStreamExt;

use crate::{
    auth::Identity,
    body::BodyWatch,
    config::RouteSettings,
    error::ErrorCode,
    pipeline::{Edge, ip_rules::IpRules, limits::BodyLimit},
    refusal::json_error as error,
    upstream::policy::Failure,
    upstream::{CallContext, CallKind, Upstream, rest::RestBackend, rest::transport},
};

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1), plus `Host`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

struct Route {
    prefix: String,
    name: String,
    backend: Arc<RestBackend>,
    max_body: usize,
    require_auth: bool,
    /// Scopes a token must carry to use the route.
    scopes: Vec<String>,
}

/// The router for every configured route, each inside the pipeline's service stages (body
/// limits at the route's own size, authentication) and its own client-address rules.
pub(crate) fn router(
    edge: &Edge,
    upstream: &Upstream,
    routes: &[RouteSettings],
    body_timeout: std::time::Duration,
) -> Router {
    let mut router = Router::new();
    for r in routes {
        // Validation guarantees the backend exists; a missing one is skipped rather than panicking.
        let Some(backend) = upstream.rest_by_name(&r.backend) else {
            tracing::error!(route = %r.prefix, backend = %r.backend, "route backend missing; route disabled");
            continue;
        };
        let route = Arc::new(Route {
            prefix: r.prefix.clone(),
            name: r.backend.clone(),
            backend,
            max_body: r.max_body_bytes,
            require_auth: r.require_auth,
            scopes: r.scopes.clone(),
        });
        let handler =
            |State(route): State<Arc<Route>>, req: Request| async move { proxy(&route, req).await };
        let routes = Router::new()
            .route(&r.prefix, any(handler))
            .route(&format!("{}/{{*rest}}", r.prefix), any(handler))
            .with_state(route);
        let limit = BodyLimit {
            max_bytes: r.max_body_bytes,
            timeout: body_timeout,
        };
        let mut routes = edge.around_service(
            routes,
            limit,
            crate::ratelimit::Target::Route(r.prefix.clone()),
        );
        let rules = IpRules::new(&r.allow, &r.deny, &r.prefix, edge.observe.metrics.clone());
        if !rules.is_open() {
            routes = routes.route_layer(axum::middleware::from_fn_with_state(
                Arc::new(rules),
                crate::pipeline::ip_rules::check,
            ));
        }
        router = router.merge(routes);
    }
    router
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

async fn proxy(route: &Route, req: Request) -> Response {
    // The authentication stage put the verified identity here; none means anonymous.
    let viewer = req.extensions().get::<Identity>().and_then(|i| i.0.clone());
    if (route.require_auth || !route.scopes.is_empty()) && viewer.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "sign in to use this endpoint",
            None,
        );
    }
    if let Some(missing) = viewer
        .as_deref()
        .and_then(|v| route.scopes.iter().find(|s| !v.has_scope(s)))
    {
        return error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            &format!("this route needs the `{missing}` scope"),
            None,
        );
    }
    let (parts, body) = req.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix(route.prefix.as_str())
        .unwrap_or("");
    let rest = match path::forward(rest) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(route = %route.prefix, error = %e, "pass-through path refused");
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &e.to_string(),
                None,
            );
        }
    };
    let path = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    // Identity and trace context are the BFF's to set (`RestBackend::request`), never the
    // client's to pass through.
    for h in [
        header::AUTHORIZATION.as_str(),
        crate::upstream::USER_ID_HEADER,
        crate::upstream::SCOPES_HEADER,
        crate::telemetry::trace::TRACEPARENT,
        crate::telemetry::trace::TRACESTATE,
        crate::telemetry::trace::REQUEST_ID,
    ] {
        headers.remove(h);
    }

    // The body-limits stage put a watch on every routed request; without one (never expected)
    // the body is treated as complete.
    let watch = parts
        .extensions
        .get::<Arc<BodyWatch>>()
        .cloned()
        .unwrap_or_default();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    // Only a bodiless idempotent request can be replayed; everything else gets one attempt.
    let replayable = matches!(parts.method, Method::GET | Method::HEAD)
        && declared.unwrap_or(0) == 0
        && !chunked;
    let kind = if replayable {
        CallKind::Read
    } else {
        CallKind::Write
    };
    let body = Mutex::new(Some(body));
    let cx = CallContext::for_subject(
        viewer.as_deref().map(crate::auth::Viewer::subject),
        crate::upstream::Deadline::default(),
        crate::telemetry::current(),
    );
    let method = parts.method.clone();
    // A failure is the client's when its body broke (too large, too slow, malformed), or when
    // the attempt ran out of time while the body was still arriving (a stalled upload). A
    // refused connection with the body unread is still the backend's.
    let client_at_fault = |f: &Failure| {
        watch.fault().is_some()
            || (matches!(f, Failure::Timeout) && !replayable && !watch.complete())
    };
    let sent = route
        .backend
        .policy
        .call_excused(
            kind,
            &crate::upstream::Deadline::default(),
            client_at_fault,
            |ep, _| {
                let mut req = route
                    .backend
                    .request(&ep, &cx, method.clone(), &path)
                    .headers(headers.clone());
                if let Some(b) = body.lock().ok().and_then(|mut b| b.take()) {
                    req = req.body(reqwest::Body::wrap_stream(b.into_data_stream()));
                }
                async move {
                    let resp = req.send().await.map_err(|e| transport(&e))?;
                    if resp.status().is_server_error() {
                        return Err(Failure::Unavailable(resp.status().as_u16().to_string()));
                    }
                    Ok(resp)
                }
            },
        )
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(Failure::Client(why)) => {
            // Without a recorded fault, the excuse was a stalled upload.
            let fault = watch.fault().unwrap_or(crate::body::BodyFault::TimedOut);
            tracing::info!(route = %route.prefix, reason = %why, "pass-through call broken by the client");
            return fault.response(route.max_body);
        }
        Err(f) => return upstream_failure(route, &f),
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    if let Some(h) = out.headers_mut() {
        for (k, v) in resp.headers() {
            h.append(k.clone(), v.clone());
        }
        strip_hop_by_hop(h);
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream)).unwrap_or_else(|_| {
        error(
            StatusCode::BAD_GATEWAY,
            ErrorCode::BackendUnavailable,
            "bad upstream response",
            Some(&route.name),
        )
    })
}

fn upstream_failure(route: &Route, f: &Failure) -> Response {
    tracing::warn!(route = %route.prefix, backend = %route.name, error = ?f, "pass-through call failed");
    let b = Some(route.name.as_str());
    match f {
        Failure::Timeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::BackendTimeout,
            "the service did not answer in time",
            b,
        ),
        Failure::Open | Failure::Overloaded => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BackendUnavailable,
            "the service is unavailable",
            b,
        ),
        Failure::Unavailable(status) if status == "503" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BackendUnavailable,
            "the service is unavailable",
            b,
        ),
        Failure::Unavailable(status) if status == "504" => error(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::BackendTimeout,
            "the service did not answer in time",
            b,
        ),
        Failure::Transport(_)
        | Failure::Unavailable(_)
        | Failure::Rejected(_)
        | Failure::Client(_) => error(
            StatusCode::BAD_GATEWAY,
            ErrorCode::BackendUnavailable,
            "the service failed",
            b,
        ),
    }
}
