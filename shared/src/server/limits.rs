//! The body-limits stage: a request body may be at most so large and must arrive within
//! `server.body_read_timeout`, however slowly it trickles.
//!
//! A declared `Content-Length` over the limit is answered `413` before a byte of the body is read
//! (so a client waiting on `Expect: 100-continue` is never asked to send it: hyper sends
//! `100 Continue` only when the body is first read). Everything else is enforced while the body
//! is read, by [`GuardedBody`]: too many bytes, too slow, or malformed framing (a bad chunk
//! size, a connection cut mid-body) each end the body with a [`BodyFault`] that the handler
//! answers `413`, `408` or `400`, and that a pass-through call reads to know the failure was the
//! client's, not the backend's ([`BodyWatch`]).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{error::ErrorCode, graphql::errors::error_body};

/// Why a request body was cut off: always the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyFault {
    /// More bytes than the limit.
    #[error("the request body is larger than the limit")]
    TooLarge,
    /// Not complete within the body timeout.
    #[error("the request body did not arrive in time")]
    TimedOut,
    /// Malformed framing or a connection cut mid-body.
    #[error("the request body is malformed or incomplete")]
    Malformed,
}

impl BodyFault {
    /// The status and message the client gets.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TimedOut => StatusCode::REQUEST_TIMEOUT,
            Self::Malformed => StatusCode::BAD_REQUEST,
        }
    }

    /// A JSON error answer (the GraphQL error shape, code `BAD_USER_INPUT`); the connection is
    /// closed after it, since the rest of the body was never read.
    pub(crate) fn response(self, limit: usize) -> Response {
        let message = match self {
            Self::TooLarge => format!("request body is larger than {limit} bytes"),
            other => other.to_string(),
        };
        refuse(self.status(), &message)
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut resp = (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        error_body(ErrorCode::BadUserInput, message).to_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

const RECEIVING: u8 = 0;
const COMPLETE: u8 = 1;

/// How a request's body is doing: still arriving, complete, or cut off by a fault. Shared by the
/// body and whoever forwards it.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch(AtomicU8);

impl BodyWatch {
    fn set(&self, state: u8) {
        // The first fault or completion sticks.
        let _ = self
            .0
            .compare_exchange(RECEIVING, state, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The fault that cut the body off, if any.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            2 => Some(BodyFault::TooLarge),
            3 => Some(BodyFault::TimedOut),
            4 => Some(BodyFault::Malformed),
            _ => None,
        }
    }

    /// Whether the whole body arrived.
    pub(crate) fn complete(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMPLETE
    }

    fn record(&self, fault: BodyFault) {
        self.set(match fault {
            BodyFault::TooLarge => 2,
            BodyFault::TimedOut => 3,
            BodyFault::Malformed => 4,
        });
    }
}

/// A request body held to a size and a deadline (see the module docs).
pub(crate) struct GuardedBody {
    inner: Body,
    left: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    watch: Arc<BodyWatch>,
}

impl GuardedBody {
    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        self.watch.record(fault);
        Poll::Ready(Some(Err(fault)))
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let this = self.get_mut();
        if let Some(fault) = this.watch.fault() {
            return Poll::Ready(Some(Err(fault)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        return this.fail(BodyFault::TooLarge);
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(BodyFault::Malformed),
            Poll::Ready(None) => {
                this.watch.set(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail(BodyFault::TimedOut),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
    let watch = Arc::new(BodyWatch::default());
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(watch.clone());
    let guarded = GuardedBody {
        inner: body,
        left: limit.max_bytes,
        deadline: Box::pin(tokio::time::sleep(limit.timeout)),
        watch,
    };
    next.run(Request::from_parts(parts, Body::new(guarded)))
        .await
}

/// The fault behind a failed read of a guarded body (`axum::body::to_bytes` and friends).
pub(crate) fn fault_of(e: &axum::Error) -> BodyFault {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<BodyFault>() {
            return *f;
        }
        cur = err.source();
    }
    BodyFault::Malformed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::{Router, routing::post};
    use tower::ServiceExt;

    use super::*;

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
