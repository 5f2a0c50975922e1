//! The body-limits stage: a request body may be at most so large and must arrive within
//! `server.body_read_timeout`, however slowly it trickles.
//!
//! A declared `Content-Length` over the limit is answered `413` before a byte of the body is read
//! (so a client waiting on `Expect: 100-continue` is never asked to send it: hyper sends
//! `100 Continue` only when the body is first read); a `Content-Length` that is no number is
//! `400`. Everything else is enforced while the body is read, by [`GuardedBody`], whose
//! [`crate::body::BodyWatch`] goes on the request's extensions.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::Response,
};

use crate::body::{BodyFault, GuardedBody, refuse};

/// The limit of one group of routes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit {
    /// Most bytes.
    pub(crate) max_bytes: usize,
    /// Longest the whole body may take.
    pub(crate) timeout: Duration,
}

/// The middleware: `413` for a declared length over the limit, else the body guarded and its
/// [`BodyWatch`] on the request's extensions.
pub(crate) async fn limit_body(
    State(limit): State<BodyLimit>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>());
    match declared {
        Some(Ok(n)) if n > limit.max_bytes as u64 => {
            return BodyFault::TooLarge.response(limit.max_bytes);
        }
        // All digits but too large to hold: over any limit.
        Some(Err(e)) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
            return BodyFault::TooLarge.response(limit.max_bytes);
        }
        Some(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "invalid Content-Length"),
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let (guarded, watch) = GuardedBody::new(body, limit.max_bytes, limit.timeout);
    parts.extensions.insert(watch);
    next.run(Request::from_parts(parts, Body::new(guarded)))
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::{Router, response::IntoResponse, routing::post};
    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;
    use crate::body::{BodyWatch, COMPLETE, fault_of};

    fn app(max_bytes: usize, timeout: Duration) -> Router {
        Router::new()
            .route(
                "/",
                post(|body: Body| async move {
                    match axum::body::to_bytes(body, usize::MAX).await {
                        Ok(b) => (StatusCode::OK, b.len().to_string()).into_response(),
                        Err(e) => fault_of(&e).response(4),
                    }
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                BodyLimit { max_bytes, timeout },
                limit_body,
            ))
    }

    async fn status(router: Router, req: Request) -> StatusCode {
        router.oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        // The body stream would never end: answering at all proves it was not read.
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let req = Request::post("/")
            .header("content-length", "5")
            .header("expect", "100-continue")
            .body(never)
            .unwrap();
        assert_eq!(
            status(app(4, Duration::from_secs(60)), req).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let req = Request::post("/")
            .header("content-length", "99999999999999999999999")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            status(app(4, Duration::from_secs(60)), req).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let req = Request::post("/")
            .header("content-length", "x")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            status(app(4, Duration::from_secs(60)), req).await,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn an_undeclared_body_over_the_limit_is_cut_off() {
        let chunks = futures::stream::iter(["ab", "cd", "e"].map(Ok::<_, std::io::Error>));
        let req = Request::post("/").body(Body::from_stream(chunks)).unwrap();
        assert_eq!(
            status(app(4, Duration::from_secs(60)), req).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let req = Request::post("/").body(Body::from("abcd")).unwrap();
        assert_eq!(
            status(app(4, Duration::from_secs(60)), req).await,
            StatusCode::OK
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_times_out_as_a_whole() {
        // One byte every second keeps any per-read timeout happy; the whole body may not.
        let trickle = futures::stream::unfold(0u8, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (n < 100).then(|| (Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let req = Request::post("/").body(Body::from_stream(trickle)).unwrap();
        assert_eq!(
            status(app(1000, Duration::from_secs(5)), req).await,
            StatusCode::REQUEST_TIMEOUT
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients_fault_and_the_watch_says_so() {
        let broken = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("bad chunk size")),
        ]);
        let req = Request::post("/").body(Body::from_stream(broken)).unwrap();
        assert_eq!(
            status(app(100, Duration::from_secs(60)), req).await,
            StatusCode::BAD_REQUEST
        );
        let watch = BodyWatch::default();
        assert!(!watch.complete() && watch.fault().is_none());
        watch.record(BodyFault::TimedOut);
        watch.set(COMPLETE);
        assert_eq!(
            watch.fault(),
            Some(BodyFault::TimedOut),
            "the first outcome sticks"
        );
    }
}
