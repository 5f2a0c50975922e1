//! `/graphql/stream`: subscriptions over Server-Sent Events (and the streaming answer of a
//! subscription sent to `/graphql` with `Accept: multipart/mixed`, [`Framing::Multipart`]), GraphQL over SSE in its "distinct
//! connections" mode (one HTTP request per subscription, as the `graphql-sse` client sends it):
//! `POST` with the usual JSON body (or `GET` with `query`, `operationName`, `variables`,
//! `extensions` parameters) and `Accept: text/event-stream`. The token comes as on `/graphql`
//! (`Authorization`, verified by the pipeline).
//!
//! A subscription that cannot start is answered like a request that cannot: a JSON body of
//! errors with its status (`400`, `401` UNAUTHENTICATED, `403` FORBIDDEN, `429` RATE_LIMITED).
//! Otherwise `200 text/event-stream`: `event: next` per result, `event: complete` at the end;
//! a comment line every `subscriptions.ping_interval` keeps proxies from closing the stream. A
//! reader too slow for its queue, an expired token and the server shutting down each end the
//! stream after one last `next` carrying the reason as a coded error (the shutdown: only
//! `complete`).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    Extension,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use super::{Live, LiveService, Member, Msg, Refusal, Slot};
use crate::{
    auth::{Identity, Viewer},
    error::ErrorCode,
    pipeline::client_addr::ClientAddr,
    ratelimit::LateLimits,
};

/// `GET /graphql/stream?query=…`.
pub(crate) async fn get(
    State(svc): State<Arc<LiveService>>,
    addr: Option<Extension<ClientAddr>>,
    identity: Option<Extension<Identity>>,
    late: Option<Extension<Arc<LateLimits>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = match k.as_ref() {
            "query" | "operationName" => Json::String(v.into_owned()),
            "variables" | "extensions" => match serde_json::from_str::<Json>(&v) {
                Ok(j) => j,
                Err(_) => {
                    return error_response(
                        &headers,
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadUserInput,
                        &format!("`{k}` must be a JSON object"),
                    );
                }
            },
            _ => continue,
        };
        if map.insert(k.into_owned(), value).is_some() {
            return error_response(
                &headers,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "each parameter may be given once",
            );
        }
    }
    serve(svc, addr, identity, late, headers, map).await
}

/// `POST /graphql/stream` with a JSON body.
pub(crate) async fn post(
    State(svc): State<Arc<LiveService>>,
    addr: Option<Extension<ClientAddr>>,
    identity: Option<Extension<Identity>>,
    late: Option<Extension<Arc<LateLimits>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return error_response(
            &headers,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "POST bodies must be `Content-Type: application/json`",
        );
    }
    let map = match serde_json::from_slice::<Json>(&body) {
        Ok(Json::Object(m)) => m,
        _ => {
            return error_response(
                &headers,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "the body must be a JSON object with `query`",
            );
        }
    };
    serve(svc, addr, identity, late, headers, map).await
}

async fn serve(
    svc: Arc<LiveService>,
    addr: Option<Extension<ClientAddr>>,
    identity: Option<Extension<Identity>>,
    late: Option<Extension<Arc<LateLimits>>>,
    headers: HeaderMap,
    map: Map<String, Json>,
) -> Response {
    let accepts = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if !accepts {
        return error_response(
            &headers,
            StatusCode::NOT_ACCEPTABLE,
            ErrorCode::BadUserInput,
            "accept text/event-stream",
        );
    }
    let ip = addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(a)| a.0);
    let viewer: Option<Viewer> = identity
        .and_then(|Extension(Identity(v))| v)
        .map(|v| v.as_ref().clone());
    let live = svc.live.clone();
    if *live.stopping().borrow() {
        return error_response(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BackendUnavailable,
            "the server is shutting down",
        );
    }
    let slot = match live.open(
        ip,
        viewer.as_ref().map(|v| v.user_id.as_str()),
        &svc.settings,
    ) {
        Ok(s) => s,
        Err(full) => return full.response(&headers),
    };
    let member = match svc
        .subscribe(viewer.as_ref(), late.map(|Extension(l)| l), map)
        .await
    {
        Ok(m) => m,
        Err(refusal) => return refused(refusal),
    };
    let ping = svc.settings.ping_interval;
    respond(live, slot, member, viewer.as_ref(), Framing::Sse { ping }).await
}

/// How results are framed on an HTTP stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// `text/event-stream`, with a comment every `ping` to keep proxies from closing it.
    Sse { ping: Duration },
    /// `multipart/mixed; boundary="-"`: one JSON part per result (the incremental-delivery
    /// framing GraphiQL and `meros` read), for subscriptions sent to `/graphql`.
    Multipart,
}

/// The streaming answer of `member`'s subscription: its first message decides the status (an
/// operation that cannot start is answered as a request error), then one frame per result.
pub(crate) async fn respond(
    live: Arc<Live>,
    slot: Slot,
    mut member: Member,
    viewer: Option<&Viewer>,
    framing: Framing,
) -> Response {
    let first = match member.rx.recv().await {
        Some(Msg::Error(errors)) => return refused(Refusal::from_errors(errors)),
        Some(m) => m,
        None => Msg::Complete,
    };
    let transport = match framing {
        Framing::Sse { .. } => &live.stats.sse_open,
        Framing::Multipart => &live.stats.multipart_open,
    };
    transport.fetch_add(1, Ordering::Relaxed);
    live.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
    let stream = Stream {
        live: live.clone(),
        stop: live.stopping(),
        _slot: slot,
        member,
        first: Some(first),
        framing,
        expires: viewer.and_then(|v| v.expires_at).map(super::instant_of),
        done: false,
        opened: false,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match framing {
            Framing::Sse { .. } => "text/event-stream; charset=utf-8",
            Framing::Multipart => "multipart/mixed; boundary=\"-\"",
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer (nginx) must pass events through as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// What woke a stream.
enum Next {
    Stop,
    Msg(Option<Msg>),
    Expired,
    Ping,
}

/// One open stream's state.
struct Stream {
    live: Arc<Live>,
    stop: tokio::sync::watch::Receiver<bool>,
    _slot: Slot,
    member: Member,
    first: Option<Msg>,
    framing: Framing,
    expires: Option<Instant>,
    done: bool,
    /// The multipart preamble (the first boundary) is written.
    opened: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let transport = match self.framing {
            Framing::Sse { .. } => &self.live.stats.sse_open,
            Framing::Multipart => &self.live.stats.multipart_open,
        };
        transport.fetch_sub(1, Ordering::Relaxed);
        self.live
            .stats
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stream {
    /// The next bytes to write; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(m) = self.first.take() {
            return Some(self.event(&m));
        }
        let expires = self.expires;
        let ping = match self.framing {
            Framing::Sse { ping } => Some(ping),
            Framing::Multipart => None,
        };
        let next = tokio::select! {
            biased;
            () = super::stopped(&mut self.stop) => Next::Stop,
            m = self.member.rx.recv() => Next::Msg(m),
            () = super::sleep_until_opt(expires), if expires.is_some() => Next::Expired,
            () = sleep_opt(ping) => Next::Ping,
        };
        match next {
            Next::Stop => {
                // Messages already queued go out first (one chunk), then `complete`.
                let mut out = Vec::new();
                while let Ok(m) = self.member.rx.try_recv() {
                    out.extend_from_slice(&self.event(&m));
                    if self.done {
                        return Some(Bytes::from(out));
                    }
                }
                out.extend_from_slice(&self.event(&Msg::Complete));
                Some(Bytes::from(out))
            }
            Next::Msg(Some(m)) => Some(self.event(&m)),
            Next::Msg(None) if self.member.too_slow() => {
                self.live.stats.refused("too_slow");
                Some(self.end_with(
                    ErrorCode::RateLimited,
                    "subscriber too slow: its message queue is full; subscribe again",
                ))
            }
            Next::Msg(None) => Some(self.event(&Msg::Complete)),
            Next::Expired => {
                self.live.stats.refused("token_expired");
                Some(self.end_with(
                    ErrorCode::Unauthenticated,
                    "the token expired; subscribe again with a new one",
                ))
            }
            Next::Ping => Some(Bytes::from_static(b":\n\n")),
        }
    }

    /// One error result, then `complete`.
    fn end_with(&mut self, code: ErrorCode, message: &str) -> Bytes {
        self.event(&Msg::Error(Refusal::new(code, message).errors))
    }

    fn event(&mut self, m: &Msg) -> Bytes {
        let messages = match self.framing {
            Framing::Sse { .. } => &self.live.stats.sse_messages,
            Framing::Multipart => &self.live.stats.multipart_messages,
        };
        messages.fetch_add(1, Ordering::Relaxed);
        let (result, last): (Option<Vec<u8>>, bool) = match m {
            Msg::Next(p) => (Some(p.to_vec()), false),
            Msg::Error(errors) => {
                // After the start an operation error is a result with errors, and the end.
                let mut r = Vec::with_capacity(errors.len() + 12);
                r.extend_from_slice(b"{\"errors\":");
                r.extend_from_slice(errors);
                r.push(b'}');
                (Some(r), true)
            }
            Msg::Complete => (None, true),
        };
        let mut out = Vec::with_capacity(result.as_ref().map_or(0, Vec::len) + 64);
        match self.framing {
            Framing::Sse { .. } => {
                if let Some(r) = &result {
                    out.extend_from_slice(b"event: next\ndata: ");
                    out.extend_from_slice(r);
                    out.extend_from_slice(b"\n\n");
                }
                if last {
                    out.extend_from_slice(b"event: complete\ndata: \n\n");
                }
            }
            Framing::Multipart => {
                // Every part is followed by the boundary at once (not by the next part's), so
                // a reader can hand it on as soon as it arrives.
                if !self.opened {
                    out.extend_from_slice(b"\r\n---");
                    self.opened = true;
                }
                if let Some(r) = &result {
                    out.extend_from_slice(
                        b"\r\ncontent-type: application/json; charset=utf-8\r\n\r\n",
                    );
                    out.extend_from_slice(r);
                    out.extend_from_slice(b"\r\n---");
                }
                if last {
                    out.extend_from_slice(b"--\r\n");
                }
            }
        }
        self.done |= last;
        Bytes::from(out)
    }
}

fn refused(r: Refusal) -> Response {
    r.response()
}

fn error_response(headers: &HeaderMap, status: StatusCode, code: ErrorCode, msg: &str) -> Response {
    crate::refusal::stage_refusal(true, headers, status, code, msg)
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
