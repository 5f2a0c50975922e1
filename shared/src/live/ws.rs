//! `/graphql/ws`: subscriptions over WebSocket, the `graphql-transport-ws` protocol (the one the
//! `graphql-ws` client and GraphiQL speak; the legacy `graphql-ws` subprotocol of
//! subscriptions-transport-ws is refused with `4406`).
//!
//! The walk of a socket: the upgrade passes the pipeline like any request (client-address
//! rules, an `Authorization` header verified, the client-keyed rate limits) and takes a place
//! in the connection counts (`503`/`429` before upgrading when there is none); the client has
//! `subscriptions.init_timeout` to send `connection_init` (`4408`), whose payload may carry the
//! token (`token`, or `Authorization`: verified like a request's; refused → `4403`); then
//! `connection_ack`, and `subscribe`/`complete` by id, `ping`/`pong` both ways. The server pings
//! every `subscriptions.ping_interval` and closes a socket silent for
//! `subscriptions.idle_timeout` (`4504`); a socket that takes no message for that long (its
//! reader stopped reading) is closed as too slow (`4413`, or dropped when even the close frame
//! does not fit).
//!
//! Close codes: `4400` a message outside the protocol, `4401` subscribe before the ack or the
//! token expired, `4403` token refused, `4406` subprotocol, `4408` init timeout, `4409` an id
//! already running, `4413` a reader too slow for its queue, `4429` a second `connection_init`
//! or the user's connection limit, `4504` keepalive, `1009` a message over
//! `subscriptions.max_message_bytes`, `1001` the server is shutting down.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    Extension,
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _, stream::BoxStream};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use super::{LiveService, Member, Msg, Slot, init_token};
use crate::{
    auth::{AuthError, Identity, Viewer},
    error::ErrorCode,
    pipeline::client_addr::ClientAddr,
    ratelimit::LateLimits,
};

/// The subprotocol this door speaks.
const PROTOCOL: &str = "graphql-transport-ws";

/// Longest subscription id accepted.
const MAX_ID_BYTES: usize = 128;

/// The upgrade.
pub(crate) async fn upgrade(
    State(svc): State<Arc<LiveService>>,
    addr: Option<Extension<ClientAddr>>,
    identity: Option<Extension<Identity>>,
    late: Option<Extension<Arc<LateLimits>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ip = addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(a)| a.0);
    let viewer = identity
        .and_then(|Extension(Identity(v))| v)
        .map(|v| v.as_ref().clone());
    if *svc.live.stopping().borrow() {
        return refuse(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    let slot = match svc.live.open(
        ip,
        viewer.as_ref().map(|v| v.user_id.as_str()),
        &svc.settings,
    ) {
        Ok(s) => s,
        Err(full) => return full.response(&headers),
    };
    let limit = svc.settings.max_message_bytes;
    let ws = ws
        .protocols([PROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        // Small buffers: thousands of mostly idle sockets; a message grows them as it needs.
        // The read buffer is allocated whole and zero-filled on every read attempt (tungstenite
        // resizes it to its capacity before each read, and the socket's loop polls the read side
        // after every message it writes), while what clients send is a few hundred bytes (pongs,
        // subscribe): 1 KiB instead of 4 saves ~3.4 KiB per connection (21.2 → 17.8 KiB RSS
        // with 10,000 subscribers, `bff-bench -s subscribers`); a larger message is read in
        // 1 KiB steps.
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let speaks = ws.selected_protocol().is_some();
    let late = late.map(|Extension(l)| l);
    ws.on_upgrade(move |socket| async move {
        Conn {
            svc,
            ip,
            slot,
            viewer,
            late,
        }
        .run(socket, speaks)
        .await;
    })
}

fn refuse(headers: &HeaderMap, status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::TOO_MANY_REQUESTS {
        ErrorCode::RateLimited
    } else {
        ErrorCode::BackendUnavailable
    };
    crate::refusal::stage_refusal(true, headers, status, code, message).into_response()
}

/// Why a socket is closed, with its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Invalid,
    Unauthorized,
    Expired,
    Forbidden,
    Subprotocol,
    InitTimeout,
    Duplicate,
    TooSlow,
    TooManyInits,
    TooManyForUser,
    Keepalive,
    TooBig,
    Shutdown,
}

impl Close {
    fn frame(self) -> (u16, &'static str) {
        match self {
            Self::Invalid => (4400, "Invalid message received"),
            Self::Unauthorized => (4401, "Unauthorized"),
            Self::Expired => (4401, "Unauthorized: the token expired"),
            Self::Forbidden => (4403, "Forbidden"),
            Self::Subprotocol => (4406, "Subprotocol not acceptable"),
            Self::InitTimeout => (4408, "Connection initialisation timeout"),
            Self::Duplicate => (4409, "Subscriber for this id already exists"),
            Self::TooSlow => (4413, "Subscriber too slow: its message queue is full"),
            Self::TooManyInits => (4429, "Too many initialisation requests"),
            Self::TooManyForUser => (4429, "Too many connections for this user"),
            Self::Keepalive => (4504, "Keepalive timed out"),
            Self::TooBig => (1009, "Message too big"),
            Self::Shutdown => (1001, "Server shutting down"),
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "invalid_message",
            Self::Unauthorized => "unauthorized",
            Self::Expired => "token_expired",
            Self::Forbidden => "token_refused",
            Self::Subprotocol => "subprotocol",
            Self::InitTimeout => "init_timeout",
            Self::Duplicate => "duplicate_id",
            Self::TooSlow => "too_slow",
            Self::TooManyInits => "too_many_inits",
            Self::TooManyForUser => "max_connections_per_user",
            Self::Keepalive => "keepalive",
            Self::TooBig => "message_too_big",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The socket's writing half: every write must finish within `timeout` (`subscriptions.idle_timeout`),
/// or the reader is taken for one that stopped reading.
struct Out {
    tx: futures::stream::SplitSink<WebSocket, Message>,
    timeout: Duration,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteError {
    /// The peer took nothing for `timeout`.
    Stalled,
    /// The socket is gone.
    Gone,
}

impl Out {
    async fn send(&mut self, msg: Message) -> Result<(), WriteError> {
        match tokio::time::timeout(self.timeout, self.tx.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stalled),
        }
    }
}

/// What a subscription's queue gives the socket.
enum Feed {
    Msg(Msg),
    /// The queue ended without a last message: the group dropped it as too slow.
    Slow,
    /// The queue ended otherwise (its execution is gone).
    Gone,
}

fn feed(member: Member) -> BoxStream<'static, Feed> {
    futures::stream::unfold(Some(member), |m| async move {
        let mut m = m?;
        match m.rx.recv().await {
            Some(msg) => Some((Feed::Msg(msg), Some(m))),
            None => Some((if m.too_slow() { Feed::Slow } else { Feed::Gone }, None)),
        }
    })
    .boxed()
}

/// One socket.
struct Conn {
    svc: Arc<LiveService>,
    ip: IpAddr,
    slot: Slot,
    /// The upgrade request's verified viewer; `connection_init` may name another.
    viewer: Option<Viewer>,
    late: Option<Arc<LateLimits>>,
}

/// Counts an open socket while it lives.
struct OpenSocket(Arc<super::Live>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.stats.ws_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket's state between messages.
struct Session {
    acked: bool,
    viewer: Option<Viewer>,
    expires: Option<Instant>,
    ids: HashSet<String>,
    feeds: StreamMap<String, BoxStream<'static, Feed>>,
}

impl Conn {
    async fn run(mut self, socket: WebSocket, speaks: bool) {
        let live = self.svc.live.clone();
        live.stats.ws_open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenSocket(live.clone());
        let (tx, mut rx) = socket.split();
        let mut tx = Out {
            tx,
            timeout: self.svc.settings.idle_timeout,
        };
        if !speaks {
            close(&mut tx, Close::Subprotocol, &live).await;
            return;
        }
        let settings = self.svc.settings.clone();
        let mut stopping = live.stopping();
        // One wait for the whole life of the socket: a fresh one per wake-up would re-register
        // on the shared shutdown signal every time a message goes out, 10,000 sockets at once.
        let stop = super::stopped(&mut stopping);
        tokio::pin!(stop);
        let init_deadline = Instant::now() + settings.init_timeout;
        let mut ping = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut s = Session {
            acked: false,
            viewer: None,
            expires: None,
            ids: HashSet::new(),
            feeds: StreamMap::new(),
        };
        let outcome: Close = loop {
            let expires = s.expires;
            tokio::select! {
                biased;
                () = &mut stop => {
                    // What is already queued for this socket goes out first.
                    while let Some(Some((id, item))) =
                        futures::FutureExt::now_or_never(s.feeds.next())
                    {
                        if let Feed::Msg(m) = item
                            && send(&mut tx, &live, &id, &m).await.is_err()
                        {
                            break;
                        }
                    }
                    break Close::Shutdown;
                }
                incoming = rx.next() => {
                    last_heard = Instant::now();
                    let text = match incoming {
                        None | Some(Ok(Message::Close(_))) => return,
                        Some(Err(e)) => {
                            if is_too_big(&e) {
                                break Close::TooBig;
                            }
                            tracing::debug!(error = %e, "subscription socket read failed");
                            return;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(_))) => break Close::Invalid,
                        Some(Ok(Message::Text(t))) => t,
                    };
                    match self.on_message(&mut s, &mut tx, text.as_str()).await {
                        Ok(()) => {}
                        Err(c) => break c,
                    }
                }
                Some((id, item)) = s.feeds.next(), if !s.feeds.is_empty() => {
                    match item {
                        Feed::Msg(m) => {
                            let last = matches!(m, Msg::Error(_) | Msg::Complete);
                            if last {
                                self.end(&mut s, &id);
                            }
                            match send(&mut tx, &live, &id, &m).await {
                                Ok(()) => {}
                                Err(WriteError::Stalled) => break Close::TooSlow,
                                Err(WriteError::Gone) => return,
                            }
                        }
                        Feed::Slow => {
                            self.end(&mut s, &id);
                            break Close::TooSlow;
                        }
                        Feed::Gone => {
                            self.end(&mut s, &id);
                            match send(&mut tx, &live, &id, &Msg::Complete).await {
                                Ok(()) => {}
                                Err(WriteError::Stalled) => break Close::TooSlow,
                                Err(WriteError::Gone) => return,
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(init_deadline), if !s.acked => break Close::InitTimeout,
                () = super::sleep_until_opt(expires), if expires.is_some() => break Close::Expired,
                _ = ping.tick() => {
                    if last_heard.elapsed() >= settings.idle_timeout {
                        break Close::Keepalive;
                    }
                    if s.acked {
                        match tx.send(text(br#"{"type":"ping"}"#.to_vec())).await {
                            Ok(()) => {}
                            Err(WriteError::Stalled) => break Close::TooSlow,
                            Err(WriteError::Gone) => return,
                        }
                    }
                }
            }
        };
        for id in std::mem::take(&mut s.ids) {
            self.end(&mut s, &id);
        }
        close(&mut tx, outcome, &live).await;
    }

    /// Handles one client message; `Err` closes the socket.
    async fn on_message(&mut self, s: &mut Session, tx: &mut Out, raw: &str) -> Result<(), Close> {
        let Ok(Json::Object(mut msg)) = serde_json::from_str::<Json>(raw) else {
            return Err(Close::Invalid);
        };
        let kind = match msg.get("type") {
            Some(Json::String(t)) => t.clone(),
            _ => return Err(Close::Invalid),
        };
        let payload = match msg.remove("payload") {
            None | Some(Json::Null) => None,
            Some(Json::Object(p)) => Some(p),
            Some(_) if kind == "subscribe" || kind == "connection_init" => {
                return Err(Close::Invalid);
            }
            // A ping's or pong's payload may be anything the protocol allows; not read.
            Some(_) => None,
        };
        match kind.as_str() {
            "connection_init" => self.init(s, tx, payload.as_ref()).await,
            "ping" => tx
                .send(text(br#"{"type":"pong"}"#.to_vec()))
                .await
                .map_err(|_| Close::TooSlow),
            "pong" => Ok(()),
            "subscribe" => {
                if !s.acked {
                    return Err(Close::Unauthorized);
                }
                let id = subscription_id(&msg)?;
                let Some(payload) = payload else {
                    return Err(Close::Invalid);
                };
                if s.ids.contains(&id) {
                    return Err(Close::Duplicate);
                }
                if s.ids.len() >= self.svc.settings.max_subscriptions_per_connection {
                    self.svc
                        .live
                        .stats
                        .refused("max_subscriptions_per_connection");
                    let errors = super::Refusal::new(
                        ErrorCode::RateLimited,
                        &format!(
                            "too many subscriptions on this connection (subscriptions.max_subscriptions_per_connection = {})",
                            self.svc.settings.max_subscriptions_per_connection
                        ),
                    );
                    return send(tx, &self.svc.live, &id, &Msg::Error(errors.errors))
                        .await
                        .map_err(|_| Close::TooSlow);
                }
                match self
                    .svc
                    .subscribe(s.viewer.as_ref(), self.late.clone(), payload)
                    .await
                {
                    Ok(member) => {
                        self.svc
                            .live
                            .stats
                            .subscriptions
                            .fetch_add(1, Ordering::Relaxed);
                        s.ids.insert(id.clone());
                        s.feeds.insert(id, feed(member));
                        Ok(())
                    }
                    Err(refusal) => send(tx, &self.svc.live, &id, &Msg::Error(refusal.errors))
                        .await
                        .map_err(|_| Close::TooSlow),
                }
            }
            "complete" => {
                let id = subscription_id(&msg)?;
                self.end(s, &id);
                Ok(())
            }
            _ => Err(Close::Invalid),
        }
    }

    /// `connection_init`: the viewer is settled, counted, and acknowledged.
    async fn init(
        &mut self,
        s: &mut Session,
        tx: &mut Out,
        payload: Option<&Map<String, Json>>,
    ) -> Result<(), Close> {
        if s.acked {
            return Err(Close::TooManyInits);
        }
        let token = init_token(payload).map_err(|()| Close::Forbidden)?;
        let viewer = match token {
            None => self.viewer.clone(),
            Some(token) => {
                if let Some(limit) = &self.svc.failed_auth
                    && limit.refuses(self.ip).await.is_some()
                {
                    return Err(Close::Forbidden);
                }
                match self.svc.auth.authenticate(Some(token.as_bytes())).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::info!(error = %e, "subscription connection refused by authentication");
                        if let Some(limit) = &self.svc.failed_auth
                            && !matches!(e, AuthError::KeysUnavailable)
                        {
                            limit.failed(self.ip).await;
                        }
                        return Err(Close::Forbidden);
                    }
                }
            }
        };
        if let Some(v) = &viewer {
            self.svc
                .live
                .claim_user(&mut self.slot, v.user_id.as_str(), &self.svc.settings)
                .map_err(|_| Close::TooManyForUser)?;
            s.expires = v.expires_at.map(super::instant_of);
        }
        s.viewer = viewer;
        s.acked = true;
        tx.send(text(br#"{"type":"connection_ack"}"#.to_vec()))
            .await
            .map_err(|_| Close::TooSlow)
    }

    /// Ends subscription `id` on this socket (its seat in the group is given back).
    fn end(&self, s: &mut Session, id: &str) {
        if s.feeds.remove(id).is_some() {
            self.svc
                .live
                .stats
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
        }
        s.ids.remove(id);
    }
}

/// The `id` of a `subscribe` or `complete`: a non-empty string of at most [`MAX_ID_BYTES`].
fn subscription_id(msg: &Map<String, Json>) -> Result<String, Close> {
    match msg.get("id") {
        Some(Json::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id.clone()),
        _ => Err(Close::Invalid),
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

fn text(bytes: Vec<u8>) -> Message {
    // Every message is made from JSON written here or by serde: valid UTF-8.
    Message::Text(Utf8Bytes::from(
        String::from_utf8(bytes).unwrap_or_default(),
    ))
}

/// Writes one message for subscription `id`.
async fn send(tx: &mut Out, live: &super::Live, id: &str, msg: &Msg) -> Result<(), WriteError> {
    let (kind, payload): (&str, Option<&Bytes>) = match msg {
        Msg::Next(p) => ("next", Some(p)),
        Msg::Error(p) => ("error", Some(p)),
        Msg::Complete => ("complete", None),
    };
    let id = serde_json::to_string(id).map_err(|_| WriteError::Gone)?;
    let mut out = Vec::with_capacity(40 + id.len() + payload.map_or(0, Bytes::len));
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    if let Some(p) = payload {
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(p);
    }
    out.push(b'}');
    live.stats.ws_messages.fetch_add(1, Ordering::Relaxed);
    tx.send(text(out)).await
}

async fn close(tx: &mut Out, why: Close, live: &super::Live) {
    let (code, reason) = why.frame();
    if !matches!(why, Close::Shutdown) {
        live.stats.refused(why.reason());
    }
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    // A reader that stopped reading cannot take the close frame either: it gets a moment, then
    // the socket is dropped.
    tx.timeout = tx.timeout.min(Duration::from_secs(1));
    if tx.send(frame).await.is_ok() {
        let _ = tokio::time::timeout(tx.timeout, tx.tx.close()).await;
    }
}
