//! The answer stage of the GraphQL service: what every request gets back. A finished execution
//! is an [`Answer`] (status, media type, `Cache-Control`, the body in pieces, shared by every
//! request that coalesced onto it); anything refused before or instead of execution is a
//! [`Refused`], and [`Refused::status_and_code`] is the one place that maps a refusal to its HTTP
//! status and GraphQL error code.

use std::{borrow::Cow, collections::VecDeque};

use axum::{
    body::{Body, Bytes, HttpBody},
    http::{HeaderValue, StatusCode, header},
    response::Response,
};

use crate::{
    error::ErrorCode,
    refusal::{Mode, error_body, reject, respond_body},
};

/// Why a request is answered without (or instead of) its execution's result.
#[derive(Debug)]
pub(crate) enum Refused {
    /// `Accept` names no media type this service answers with.
    NotAcceptable,
    /// A POST body that is not `application/json`.
    MediaType,
    /// The body broke its size or time limit (the status the body stage chose: 413, 408).
    Body(StatusCode, String),
    /// Not a GraphQL request: bad parameters, a malformed body or batch.
    Malformed(Cow<'static, str>),
    /// A mutation (or subscription) sent with `GET`.
    ReadOnlyGet,
    /// A GraphQL request error: the request never ran (or ran out of its limits).
    Request(ErrorCode, String),
    /// A rate-limit policy that needs the operation refused it.
    RateLimited(String),
}

/// The status of a GraphQL request error in `mode`: `400` for `application/graphql-response+json`
/// clients; legacy `application/json` clients get `200` for every well-formed request (GraphQL
/// over HTTP).
pub(super) fn request_error(mode: Mode) -> StatusCode {
    match mode {
        Mode::GraphqlResponse => StatusCode::BAD_REQUEST,
        Mode::Json => StatusCode::OK,
    }
}

impl Refused {
    /// The status and code of this refusal in `mode`, and its message.
    fn status_and_code(&self, mode: Mode) -> (StatusCode, ErrorCode, &str) {
        match self {
            Self::NotAcceptable => (
                StatusCode::NOT_ACCEPTABLE,
                ErrorCode::BadUserInput,
                "accept application/graphql-response+json or application/json",
            ),
            Self::MediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadUserInput,
                "POST bodies must be `Content-Type: application/json`",
            ),
            Self::Body(status, msg) => (*status, ErrorCode::BadUserInput, msg),
            Self::Malformed(msg) => (StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, msg),
            Self::ReadOnlyGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadUserInput,
                "only queries can be sent with GET; use POST for mutations",
            ),
            Self::Request(code, msg) => (request_error(mode), *code, msg),
            Self::RateLimited(msg) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, msg),
        }
    }

    /// The HTTP answer, in `mode`'s media type (`406` is always plain JSON: the client accepts
    /// neither of ours).
    pub(crate) fn response(self, mode: Mode) -> Response {
        let mode = match self {
            Self::NotAcceptable => Mode::Json,
            _ => mode,
        };
        let (status, code, msg) = self.status_and_code(mode);
        let mut resp = reject(status, mode, code, msg);
        if let Self::ReadOnlyGet = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }

    /// Its code and message, for a door that answers outside HTTP (a subscription's `error`).
    pub(crate) fn code_and_message(&self) -> (ErrorCode, String) {
        let (_, code, msg) = self.status_and_code(Mode::Json);
        (code, msg.to_owned())
    }

    /// The refusal as an execution's answer (limits the execution ran into).
    pub(super) fn answer(self, mode: Mode) -> Answer {
        let (status, code, msg) = self.status_and_code(mode);
        Answer::error(status, mode, code, msg)
    }
}

/// A finished GraphQL answer: what every request that shares an execution gets.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    mode: Mode,
    cache_control: HeaderValue,
    pieces: Vec<Bytes>,
}

impl Answer {
    pub(super) fn new(
        status: StatusCode,
        mode: Mode,
        cache_control: HeaderValue,
        pieces: Vec<Bytes>,
    ) -> Self {
        Self {
            status,
            mode,
            cache_control,
            pieces,
        }
    }

    fn error(status: StatusCode, mode: Mode, code: ErrorCode, message: &str) -> Self {
        let body =
            serde_json::to_vec(&error_body(code, message)).unwrap_or_else(|_| b"{}".to_vec());
        Self::new(
            status,
            mode,
            HeaderValue::from_static("no-store"),
            vec![Bytes::from(body)],
        )
    }

    /// The answer of an execution that failed inside (a panic, an answer that cannot be
    /// written): coded, with nothing internal.
    pub(crate) fn internal() -> Self {
        Self::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Mode::Json,
            ErrorCode::Internal,
            "internal error",
        )
    }

    pub(super) fn response(&self) -> Response {
        let mut resp = respond_body(self.status, self.mode, Pieces::body(self.pieces.clone()));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, self.cache_control.clone());
        resp
    }
}

/// A response body of JSON pieces with its exact length, so the client still gets a
/// `Content-Length` (and hyper writes the pieces with one vectored write).
pub(super) struct Pieces {
    pieces: VecDeque<Bytes>,
    left: u64,
}

impl Pieces {
    pub(super) fn body(pieces: Vec<Bytes>) -> Body {
        match <[Bytes; 1]>::try_from(pieces) {
            Ok([one]) => Body::from(one),
            Err(pieces) => {
                let left = pieces.iter().map(|p| p.len() as u64).sum();
                Body::new(Self {
                    pieces: pieces.into(),
                    left,
                })
            }
        }
    }
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let piece = this.pieces.pop_front().map(|piece| {
            this.left -= piece.len() as u64;
            Ok(http_body::Frame::data(piece))
        });
        std::task::Poll::Ready(piece)
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{Name, ServerError, Value};

    use super::*;
    use crate::graphql::direct::{raw, raw_json, response_pieces};

    /// The direct writer produces the same JSON values as the `serde_json` round trip, with
    /// `data`'s fields in selection order (not re-sorted) and data, errors, extensions in that order.
    #[test]
    fn response_bytes_keep_values_and_selection_order() {
        let obj = |pairs: &[(&str, Value)]| {
            Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (Name::new(k), v.clone()))
                    .collect(),
            )
        };
        let image = obj(&[
            ("width", Value::from(342)),
            ("url", Value::from("https://x/\"q\"\u{e9}.jpg")),
            ("height", Value::from(513)),
        ]);
        let data = obj(&[
            ("zeta", Value::Null),
            ("rows", Value::List(vec![image.clone(), Value::Null, image])),
            ("fraction", Value::from(0.366_319_444_444_444_4)),
            ("alpha", Value::Boolean(true)),
            ("kind", Value::Enum(Name::new("TOP_10"))),
        ]);
        let mut response = async_graphql::Response::new(data);
        let mut error = ServerError::new("row failed", None);
        error.path = vec![async_graphql::PathSegment::Field("rows".to_owned())];
        response.errors.push(error);
        response
            .extensions
            .insert("cache".to_owned(), obj(&[("stale", Value::List(vec![]))]));

        for response in [response, async_graphql::Response::new(Value::Null)] {
            let bytes = response_pieces(&response).unwrap().concat();
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, serde_json::to_value(&response).unwrap());
            let text = String::from_utf8(bytes).unwrap();
            if response.data != Value::Null {
                // Selection order at every depth: zeta before rows before alpha; width before url.
                let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
                assert!(
                    pos("zeta") < pos("rows")
                        && pos("rows") < pos("fraction")
                        && pos("fraction") < pos("alpha")
                );
                assert!(pos("width") < pos("url") && pos("url") < pos("height"));
                assert!(pos("data") < pos("errors") && pos("errors") < pos("extensions"));
            }
        }
    }

    /// Rendered values reach the body as the very bytes they were written to (no copy), between
    /// pieces written here, and the body announces the exact total length.
    #[tokio::test]
    async fn rendered_values_go_out_as_shared_pieces_with_an_exact_length() {
        use http_body_util::BodyExt as _;

        let row = br#"[{"title":{"id":"t1"}},{"title":{"id":"t2"}}]"#.to_vec();
        let marker = raw(row.clone());
        let shared = raw_json(&marker).unwrap().clone();
        let data = Value::Object(
            [
                (Name::new("kind"), Value::from("TOP_10")),
                (Name::new("items"), marker),
                (Name::new("n"), Value::from(2)),
            ]
            .into_iter()
            .collect(),
        );
        let pieces = response_pieces(&async_graphql::Response::new(data)).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces[1].as_ptr(),
            shared.as_ptr(),
            "the rendered row was copied"
        );
        let expected = format!(
            r#"{{"data":{{"kind":"TOP_10","items":{},"n":2}}}}"#,
            String::from_utf8(row).unwrap()
        );
        assert_eq!(pieces.concat(), expected.as_bytes());

        let body = Pieces::body(pieces);
        assert_eq!(body.size_hint().exact(), Some(expected.len() as u64));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, expected.as_bytes());
    }
}
