//! Request bodies held to a size and a deadline: [`GuardedBody`] ends a body that grows too large,
//! arrives too slowly (however it trickles) or is malformed (a bad chunk size, a connection cut
//! mid-body) with a [`BodyFault`], which the GraphQL handler answers `413`, `408` or `400`, and
//! which a pass-through call reads through [`BodyWatch`] to know a failure was the client's, not
//! the backend's. The pipeline's body-limits stage (`pipeline::limits`) installs it.

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
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{error::ErrorCode, refusal::json_error};

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

/// A `BAD_USER_INPUT` refusal of a request whose body is not (fully) read: the connection is
/// closed after it, since what is left of the body cannot be told from the next request.
pub(crate) fn refuse(status: StatusCode, message: &str) -> Response {
    let mut resp = json_error(status, ErrorCode::BadUserInput, message, None);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

const RECEIVING: u8 = 0;
pub(crate) const COMPLETE: u8 = 1;

/// How a request's body is doing: still arriving, complete, or cut off by a fault. Shared by the
/// body and whoever forwards it.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch(AtomicU8);

impl BodyWatch {
    pub(crate) fn set(&self, state: u8) {
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

    pub(crate) fn record(&self, fault: BodyFault) {
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
    /// `inner` held to `max_bytes` arriving within `timeout`, and the watch that reports how it
    /// went.
    pub(crate) fn new(inner: Body, max_bytes: usize, timeout: Duration) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        let body = Self {
            inner,
            left: max_bytes,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            watch: watch.clone(),
        };
        (body, watch)
    }

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
