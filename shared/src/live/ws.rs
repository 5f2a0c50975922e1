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
//! Results are written straight from their group's fan-out when the socket takes the whole
//! frame at once, and by the socket's task from its outbox otherwise ([`super::wire`]: TLS, a
//! full send buffer, the task writing); tungstenite reads the client's frames and writes the
//! protocol's own messages through the same write side.
//!
//! Close codes: `4400` a message outside the protocol, `4401` subscribe before the ack or the
//! token expired, `4403` token refused, `4406` subprotocol, `4408` init timeout, `4409` an id
//! already running, `4413` a reader too slow for its queue, `4429` a second `connection_init`
//! or the user's connection limit, `4504` keepalive, `1009` a message over
//! `subscriptions.max_message_bytes`, `1001` the server is shutting down.

use std::{
    collections::HashMap,
    io::IoSlice,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    Extension,
    extract::{Request, State},
    http::{
        HeaderMap, HeaderValue, Method, StatusCode, Version,
        header::{
            CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
            SEC_WEBSOCKET_VERSION, UPGRADE,
        },
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value as Json};
use tokio::{io::AsyncWriteExt as _, time::Instant};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        error::CapacityError,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig},
    },
};

use super::{
    LiveService, Msg, Slot, WireMember, init_token,
    wire::{Next, Wire, WireIo, envelope_head, text_frame_header},
};
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

/// The socket: tungstenite reads the client's frames and writes the protocol's own messages;
/// results go out through [`Out::send_text`], or straight from their group's fan-out
/// ([`Wire`]).
type Socket = WebSocketStream<WireIo>;

/// The upgrade (RFC 6455 §4.2, HTTP/1.1): checked as axum's `WebSocketUpgrade` checks it, and
/// answered `101` with `graphql-transport-ws` when the client offers it. The door owns the
/// upgraded connection itself (not axum's `WebSocket`) so that a result can be written
/// straight from the bytes its group rendered once ([`Out::send_text`]).
pub(crate) async fn upgrade(
    State(svc): State<Arc<LiveService>>,
    addr: Option<Extension<ClientAddr>>,
    identity: Option<Extension<Identity>>,
    late: Option<Extension<Arc<LateLimits>>>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let headers = &parts.headers;
    let key = match handshake(parts.version, &parts.method, headers) {
        Ok(key) => key,
        Err((status, message)) => return (status, message).into_response(),
    };
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    };
    let speaks = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|p| p.trim_ascii() == PROTOCOL.as_bytes());
    let ip = addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(a)| a.0);
    let viewer = identity
        .and_then(|Extension(Identity(v))| v)
        .map(|v| v.as_ref().clone());
    if *svc.live.stopping().borrow() {
        return refuse(
            headers,
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
        Err(full) => return full.response(headers),
    };
    let limit = svc.settings.max_message_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Small buffers: thousands of mostly idle sockets; a message grows them as it needs.
        // The read buffer is allocated whole and zero-filled on every read attempt (tungstenite
        // resizes it to its capacity before each read, and the socket's loop polls the read side
        // after every message it writes), while what clients send is a few hundred bytes (pongs,
        // subscribe): 1 KiB instead of 4 saves ~3.4 KiB per connection (21.2 → 17.8 KiB RSS
        // with 10,000 subscribers, `bff-bench -s subscribers`); a larger message is read in
        // 1 KiB steps. Results do not pass through tungstenite's write buffer at all
        // ([`Out::send_text`]).
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let late = late.map(|Extension(l)| l);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "subscription socket upgrade failed");
                return;
            }
        };
        let buffer = svc.settings.buffer;
        let (io, wire) = match (svc.upgraded_tcp)(upgraded) {
            Ok((tcp, read_first)) => {
                // Even empty, a slice keeps the HTTP server's whole read buffer alive.
                let read_first = if read_first.is_empty() {
                    Bytes::new()
                } else {
                    read_first
                };
                let wire = Wire::new(Some(tcp), buffer, svc.live.clone());
                (
                    WireIo::Tcp {
                        wire: wire.clone(),
                        read_first,
                    },
                    wire,
                )
            }
            // TLS: only the socket's task writes its records.
            Err(upgraded) => (
                WireIo::Other(TokioIo::new(upgraded)),
                Wire::new(None, buffer, svc.live.clone()),
            ),
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        Conn {
            svc,
            ip,
            slot,
            viewer,
            late,
        }
        .run(socket, wire, speaks)
        .await;
    });
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (CONNECTION, HeaderValue::from_static("upgrade")),
            (UPGRADE, HeaderValue::from_static("websocket")),
        ],
    )
        .into_response();
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        response.headers_mut().insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if speaks {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    }
    response
}

/// The opening handshake's checks: the client's `Sec-WebSocket-Key`, or the status and reason
/// it is refused with.
fn handshake(
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Result<HeaderValue, (StatusCode, &'static str)> {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v: &HeaderValue| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if version > Version::HTTP_11 {
        // The server does not offer RFC 8441 (WebSocket over HTTP/2).
        return Err((
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket subscriptions are served over HTTP/1.1",
        ));
    }
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        ));
    }
    if !has(CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if !has(UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        ));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    headers.get(SEC_WEBSOCKET_KEY).cloned().ok_or((
        StatusCode::BAD_REQUEST,
        "`Sec-WebSocket-Key` header missing",
    ))
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

/// The socket, for writing: every write must finish within `timeout`
/// (`subscriptions.idle_timeout`), or the reader is taken for one that stopped reading.
struct Out {
    ws: Socket,
    /// The write side shared with the fan-outs: told when this task has written everything
    /// it began ([`Wire::settle`]).
    wire: Arc<Wire>,
    timeout: Duration,
    /// A write of [`Out::send_text`] was cut short: the stream ends inside a frame, and nothing
    /// more (not even a close frame) may be written.
    torn: bool,
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
    /// Writes a message of the protocol's own (an ack, a ping, a close) through tungstenite.
    async fn send(&mut self, msg: Message) -> Result<(), WriteError> {
        if self.torn {
            return Err(WriteError::Gone);
        }
        match tokio::time::timeout(self.timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => {
                self.wire.settle();
                Ok(())
            }
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Finishes what tungstenite or a fan-out began writing (the rest of a frame the socket
    /// took part of; with `owed`, a pong tungstenite owes for a ping), then lets fan-outs write
    /// again.
    async fn settle(&mut self, owed: bool) -> Result<(), WriteError> {
        if self.torn {
            return Err(WriteError::Gone);
        }
        if !owed && !self.wire.unsettled() {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.ws.flush()).await {
            Ok(Ok(())) => {
                self.wire.settle();
                Ok(())
            }
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Writes ONE text frame made of `parts` (valid UTF-8 together).
    ///
    /// The one place this door writes WebSocket frames itself instead of through tungstenite:
    /// a result's payload is the same `Bytes` for every member of its group, and written from
    /// there (a gathered write: the frame header and the envelope's few bytes, the payload, the
    /// closing brace), instead of being copied into an envelope and again into tungstenite's
    /// write buffer for each of 10,000 sockets — a buffer each socket then keeps at the size
    /// of its largest message. A server's frame is unmasked and this one is never fragmented
    /// (RFC 6455 §5.2, [`text_frame_header`]); tungstenite's own pending writes (a pong it owes)
    /// are flushed first, so frames never interleave. The tests read these frames with
    /// tungstenite and with the npm `graphql-ws` client.
    async fn send_text(&mut self, parts: [&[u8]; 3]) -> Result<(), WriteError> {
        if self.torn {
            return Err(WriteError::Gone);
        }
        let write = async {
            self.ws.flush().await.map_err(|_| WriteError::Gone)?;
            write_text_frame(self.ws.get_mut(), parts)
                .await
                .map_err(|_| WriteError::Gone)
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {
                self.wire.settle();
                Ok(())
            }
            Ok(Err(e)) => {
                self.torn = true;
                self.wire.shut();
                Err(e)
            }
            Err(_) => {
                self.torn = true;
                self.wire.shut();
                Err(WriteError::Stalled)
            }
        }
    }
}

/// Writes `parts` (valid UTF-8 together) to `io` as one final, unmasked text frame, in one
/// gathered write when the socket takes it whole.
async fn write_text_frame<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    parts: [&[u8]; 3],
) -> std::io::Result<()> {
    let (header, header_len) = text_frame_header(parts.iter().map(|p| p.len()).sum());
    let mut slices = [
        IoSlice::new(&header[..header_len]),
        IoSlice::new(parts[0]),
        IoSlice::new(parts[1]),
        IoSlice::new(parts[2]),
    ];
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match io.write_vectored(rest).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut rest, n),
        }
    }
    // A TLS stream holds the record until flushed.
    io.flush().await
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
    /// Running subscriptions by id: their key on the wire and their seat in their group.
    subs: HashMap<String, (u64, WireMember)>,
    next_key: u64,
    wire: Arc<Wire>,
}

/// Why the socket's loop ends: closed with a code, or gone without one.
type Ended = Option<Close>;

/// Closes the socket to fan-outs however its task ends.
struct ShutOnDrop(Arc<Wire>);

impl Drop for ShutOnDrop {
    fn drop(&mut self) {
        self.0.shut();
    }
}

impl Conn {
    async fn run(mut self, socket: Socket, wire: Arc<Wire>, speaks: bool) {
        let live = self.svc.live.clone();
        live.stats.ws_open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenSocket(live.clone());
        let _shut = ShutOnDrop(wire.clone());
        let mut tx = Out {
            ws: socket,
            wire: wire.clone(),
            timeout: self.svc.settings.idle_timeout,
            torn: false,
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
            subs: HashMap::new(),
            next_key: 1,
            wire: wire.clone(),
        };
        let outcome: Close = loop {
            let expires = s.expires;
            tokio::select! {
                biased;
                () = &mut stop => {
                    // What is already queued for this socket goes out first; nothing more
                    // joins it.
                    wire.shut();
                    match self.drain(&mut s, &mut tx).await {
                        Ok(()) | Err(Some(_)) => break Close::Shutdown,
                        Err(None) => return,
                    }
                }
                incoming = tx.ws.next() => {
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
                        Some(Ok(Message::Ping(_))) => {
                            // The pong tungstenite owes for a ping is written now, whole.
                            match tx.settle(true).await {
                                Ok(()) => continue,
                                Err(WriteError::Stalled) => break Close::TooSlow,
                                Err(WriteError::Gone) => return,
                            }
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Binary(_))) => break Close::Invalid,
                        Some(Ok(Message::Text(t))) => t,
                    };
                    match self.on_message(&mut s, &mut tx, text.as_str()).await {
                        Ok(()) => {}
                        Err(c) => break c,
                    }
                    match tx.settle(false).await {
                        Ok(()) => {}
                        Err(WriteError::Stalled) => break Close::TooSlow,
                        Err(WriteError::Gone) => return,
                    }
                }
                () = wire.woken() => match self.drain(&mut s, &mut tx).await {
                    Ok(()) => {}
                    Err(Some(c)) => break c,
                    Err(None) => return,
                },
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
        let ids: Vec<String> = s.subs.keys().cloned().collect();
        for id in ids {
            self.end(&mut s, &id);
        }
        close(&mut tx, outcome, &live).await;
    }

    /// Writes what waits for the socket's task: the messages fan-outs could not write, in
    /// order, and the rest of a frame one began.
    async fn drain(&self, s: &mut Session, tx: &mut Out) -> Result<(), Ended> {
        loop {
            match tx.wire.next() {
                Next::Msg(id, m) => {
                    if matches!(m, Msg::Error(_) | Msg::Complete) {
                        self.end(s, &id);
                    }
                    match send(tx, &self.svc.live, &id, &m).await {
                        Ok(()) => {}
                        Err(WriteError::Stalled) => return Err(Some(Close::TooSlow)),
                        Err(WriteError::Gone) => return Err(None),
                    }
                }
                Next::Slow => return Err(Some(Close::TooSlow)),
                Next::Nothing => {
                    return match tx.settle(false).await {
                        Ok(()) => Ok(()),
                        Err(WriteError::Stalled) => Err(Some(Close::TooSlow)),
                        Err(WriteError::Gone) => Err(None),
                    };
                }
            }
        }
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
                if s.subs.contains_key(&id) {
                    return Err(Close::Duplicate);
                }
                if s.subs.len() >= self.svc.settings.max_subscriptions_per_connection {
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
                let key = s.next_key;
                s.next_key += 1;
                // On the wire before it joins: its group hands it the current value at once.
                tx.wire.add(key, &id);
                match self
                    .svc
                    .subscribe_wire(
                        s.viewer.as_ref(),
                        self.late.clone(),
                        payload,
                        tx.wire.clone(),
                        key,
                    )
                    .await
                {
                    Ok(member) => {
                        self.svc
                            .live
                            .stats
                            .subscriptions
                            .fetch_add(1, Ordering::Relaxed);
                        s.subs.insert(id, (key, member));
                        Ok(())
                    }
                    Err(refusal) => {
                        tx.wire.remove(key);
                        send(tx, &self.svc.live, &id, &Msg::Error(refusal.errors))
                            .await
                            .map_err(|_| Close::TooSlow)
                    }
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

    /// Ends subscription `id` on this socket: nothing more is written for it, and its seat in
    /// the group is given back.
    fn end(&self, s: &mut Session, id: &str) {
        if let Some((key, member)) = s.subs.remove(id) {
            // Off the wire first: a fan-out under way writes nothing more for it.
            s.wire.remove(key);
            drop(member);
            self.svc
                .live
                .stats
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The `id` of a `subscribe` or `complete`: a non-empty string of at most [`MAX_ID_BYTES`].
fn subscription_id(msg: &Map<String, Json>) -> Result<String, Close> {
    match msg.get("id") {
        Some(Json::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id.clone()),
        _ => Err(Close::Invalid),
    }
}

fn is_too_big(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. })
    )
}

fn text(bytes: Vec<u8>) -> Message {
    // Every message is made from JSON written here or by serde: valid UTF-8.
    Message::Text(Utf8Bytes::from(
        String::from_utf8(bytes).unwrap_or_default(),
    ))
}

/// Writes one message for subscription `id`: the envelope around the payload the group
/// rendered, in one frame ([`Out::send_text`]).
async fn send(tx: &mut Out, live: &super::Live, id: &str, msg: &Msg) -> Result<(), WriteError> {
    let (kind, payload): (&str, Option<&Bytes>) = match msg {
        Msg::Next(p) => ("next", Some(p)),
        Msg::Error(p) => ("error", Some(p)),
        Msg::Complete => ("complete", None),
    };
    let head = envelope_head(id, kind, payload.is_some());
    live.stats.ws_messages.fetch_add(1, Ordering::Relaxed);
    tx.send_text([head.as_bytes(), payload.map_or(&[][..], |p| &p[..]), b"}"])
        .await
}

async fn close(tx: &mut Out, why: Close, live: &super::Live) {
    // The close frame is the last: no fan-out writes after it.
    tx.wire.shut();
    let (code, reason) = why.frame();
    if !matches!(why, Close::Shutdown) {
        live.stats.refused(why.reason());
    }
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }));
    // A reader that stopped reading cannot take the close frame either: it gets a moment, then
    // the socket is dropped (at once when a frame was cut short: `Out::send` refuses).
    tx.timeout = tx.timeout.min(Duration::from_secs(1));
    if tx.send(frame).await.is_ok() {
        let _ = tokio::time::timeout(tx.timeout, tx.ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
    use futures::StreamExt as _;
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{
            Message,
            protocol::{Role, WebSocketConfig},
        },
    };

    use std::{sync::Arc, time::Duration};

    use bytes::Bytes;

    use super::{Out, handshake, send, write_text_frame};
    use crate::live::{
        Live, Msg,
        wire::{Handed, Next, Wire, WireIo},
    };

    /// The frames this door writes itself are read by tungstenite (as a client) as the text
    /// messages they carry, at every length encoding and across the 16/64-bit boundaries.
    #[tokio::test]
    async fn the_frames_written_here_are_read_by_tungstenite_as_the_messages_they_carry() {
        let lengths = [
            0usize, 1, 124, 125, 126, 127, 65_534, 65_535, 65_536, 200_000,
        ];
        let (mut server, client) = tokio::io::duplex(64 * 1024);
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await;
        let writer = tokio::spawn(async move {
            for len in lengths {
                // `{"id":"1","type":"next","payload":"ééé…"}` with a multi-byte character
                // split across the parts.
                let payload: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
                let body = format!("\"{payload}\"");
                let (a, b) = body.as_bytes().split_at(body.len() / 2);
                let head = [br#"{"id":"1","type":"next","payload":"#.as_slice(), a].concat();
                write_text_frame(&mut server, [&head, b, b"}"]).await?;
            }
            std::io::Result::Ok(())
        });
        for len in lengths {
            let Some(Ok(Message::Text(text))) = client.next().await else {
                panic!("no text message for length {len}");
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            let payload = v["payload"].as_str().expect("the payload string");
            assert_eq!(payload.chars().count(), len / 2 + len % 2, "length {len}");
            assert_eq!(v["type"], "next");
        }
        writer
            .await
            .expect("the writer")
            .expect("every frame written");
    }

    /// A fan-out writing straight into a socket whose buffers are small (so that frames are
    /// taken in part, or not at all), while the socket's task writes what waits and pings
    /// through tungstenite, and the reader reads slowly: tungstenite reads every frame whole,
    /// every result in the order handed out, none lost, and the pings between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_written_by_the_fan_out_and_by_the_task_never_tear_or_reorder() {
        const RESULTS: usize = 600;
        let listener = tokio::net::TcpSocket::new_v4().expect("socket");
        listener.set_send_buffer_size(4096).expect("sndbuf");
        listener
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = listener.listen(8).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("rcvbuf");
        let (client, accepted) = tokio::join!(client.connect(addr), listener.accept());
        let (client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));

        let wire = Wire::new(Some(server), RESULTS, Arc::new(Live::default()));
        wire.add(1, "s");
        let io = WireIo::Tcp {
            wire: wire.clone(),
            read_first: Bytes::new(),
        };
        let mut tx = Out {
            ws: WebSocketStream::from_raw_socket(io, Role::Server, None).await,
            wire: wire.clone(),
            timeout: Duration::from_secs(20),
            torn: false,
        };
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        // The socket's task: what waits, pings, and the client's pongs read.
        let task = tokio::spawn(async move {
            let live = Live::default();
            let mut ping = tokio::time::interval(Duration::from_millis(2));
            let mut pings = 0usize;
            // One waiting result per turn, so that pings and pongs go between them.
            let mut more = false;
            loop {
                tokio::select! {
                    _ = &mut done_rx => break,
                    () = tx.wire.woken(), if !more => more = true,
                    () = std::future::ready(()), if more => match tx.wire.next() {
                        Next::Msg(id, m) => send(&mut tx, &live, &id, &m).await.expect("send"),
                        Next::Nothing => {
                            tx.settle(false).await.expect("settle");
                            more = false;
                        }
                        Next::Slow => panic!("no subscription is too slow here"),
                    },
                    _ = ping.tick() => {
                        tx.send(Message::Ping(Bytes::from_static(b"p"))).await.expect("ping");
                        pings += 1;
                    }
                    incoming = tx.ws.next() => match incoming {
                        Some(Ok(_)) => tx.settle(true).await.expect("settle"),
                        other => panic!("the client went away: {other:?}"),
                    },
                }
            }
            // Whatever is still waiting goes out.
            while let Next::Msg(id, m) = tx.wire.next() {
                send(&mut tx, &live, &id, &m).await.expect("send");
            }
            tx.settle(false).await.expect("settle");
            pings
        });
        // The fan-out: results of many sizes, some larger than both buffers together.
        let (read_tx, mut read) = tokio::sync::watch::channel(0usize);
        let handing = {
            let wire = wire.clone();
            tokio::spawn(async move {
                let (mut written, mut queued, mut rests) = (0, 0, 0);
                for n in 0..RESULTS {
                    let pad = "x".repeat((n * 7919) % 20_000);
                    let msg = Msg::Next(Bytes::from(format!("{{\"n\":{n},\"pad\":\"{pad}\"}}")));
                    match wire.hand(1, &msg) {
                        Handed::Written => written += 1,
                        Handed::Queued => queued += 1,
                        other => panic!("result {n}: {other:?}"),
                    }
                    if wire.has_rest() {
                        rests += 1;
                    }
                    if n % 3 == 2 {
                        // Changes come and go: now and then the socket has drained before the
                        // next one, which the fan-out then writes itself.
                        let _ = read.wait_for(|r| *r > n).await;
                    }
                }
                (written, queued, rests)
            })
        };
        let mut client = WebSocketStream::from_raw_socket(
            client,
            Role::Client,
            Some(WebSocketConfig::default().max_message_size(Some(1 << 20))),
        )
        .await;
        let (mut expect, mut pings_seen) = (0usize, 0usize);
        while expect < RESULTS {
            match client.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    assert_eq!(v["id"], "s");
                    assert_eq!(v["type"], "next");
                    assert_eq!(v["payload"]["n"], expect, "results in order");
                    expect += 1;
                    read_tx.send_replace(expect);
                    if expect % 50 == 0 {
                        // A slow reader: the server's buffers fill meanwhile.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Some(Ok(Message::Ping(_))) => pings_seen += 1,
                other => panic!("after {expect} results: {other:?}"),
            }
        }
        let (written, queued, rests) = handing.await.expect("the fan-out");
        done_tx.send(()).expect("the task");
        let pings = task.await.expect("the task");
        assert!(
            pings > 0 && pings_seen > 0,
            "pings went between results: {pings} sent, {pings_seen} read; {written} written, {queued} queued, {rests} rests"
        );
        assert!(
            written >= RESULTS / 10,
            "results written by the fan-out: {written}"
        );
        assert!(queued > 0, "some results waited for the task");
        assert!(
            rests > 0,
            "some frames were taken in part and finished by the task"
        );
    }

    fn upgrade_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn the_opening_handshake_is_checked_as_rfc_6455_asks() {
        let ok = upgrade_headers();
        assert_eq!(
            handshake(Version::HTTP_11, &Method::GET, &ok).ok(),
            ok.get("sec-websocket-key").cloned()
        );
        let bad = StatusCode::BAD_REQUEST;
        // (version, method, header left out, header set to another value, refusal)
        type Case = (
            Version,
            Method,
            Option<&'static str>,
            Option<(&'static str, &'static str)>,
            StatusCode,
        );
        let cases: [Case; 9] = [
            (
                Version::HTTP_11,
                Method::POST,
                None,
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Version::HTTP_2,
                Method::GET,
                None,
                None,
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ),
            (Version::HTTP_11, Method::GET, Some("connection"), None, bad),
            (
                Version::HTTP_11,
                Method::GET,
                None,
                Some(("connection", "upgraded")),
                bad,
            ),
            (Version::HTTP_11, Method::GET, Some("upgrade"), None, bad),
            (
                Version::HTTP_11,
                Method::GET,
                None,
                Some(("upgrade", "h2c")),
                bad,
            ),
            (
                Version::HTTP_11,
                Method::GET,
                Some("sec-websocket-version"),
                None,
                bad,
            ),
            (
                Version::HTTP_11,
                Method::GET,
                None,
                Some(("sec-websocket-version", "8")),
                bad,
            ),
            (
                Version::HTTP_11,
                Method::GET,
                Some("sec-websocket-key"),
                None,
                bad,
            ),
        ];
        for (version, method, drop, set, want) in cases {
            let mut h = upgrade_headers();
            if let Some(name) = drop {
                h.remove(name);
            }
            if let Some((name, value)) = set {
                h.insert(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_static(value),
                );
            }
            let got = handshake(version, &method, &h)
                .err()
                .map(|(status, _)| status);
            assert_eq!(
                got,
                Some(want),
                "{version:?} {method} without {drop:?}, with {set:?}"
            );
        }
    }
}
