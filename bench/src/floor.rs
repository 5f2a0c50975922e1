//! The `subscribers-floor` scenarios: the same client process and the same measurement as
//! `subscribers`, against the least a server can do on this machine — no GraphQL, no BFF: a
//! tokio WebSocket server that answers `connection_init` and `subscribe`, then on each event
//! writes ONE pre-built frame of the BFF's size (7,009 bytes) to every socket. Two ways:
//! - [`Design::Tasks`] (`subscribers-floor`): each socket's task is woken by a `watch` channel and
//!   does one `write_all` — the BFF's shape without anything of the BFF;
//! - [`Design::Loop`] (`subscribers-floor-loop`): no task per socket at all: the trigger writes
//!   every socket in a tight loop (`try_write`), half of them on each of 2 tasks.
//!
//! What they measure is the floor under `subscribers`' figures here: the loopback TCP path, the
//! wake-ups and the clients' reading on 2 shared cores.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::{Router, extract::State, routing::post};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::HeaderValue,
};

use crate::subscribers::{ID, Report, Spec, run_swarm};

/// How the floor server writes an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Design {
    /// A task per socket, woken per event.
    Tasks,
    /// Every socket written from the trigger, in a loop.
    Loop,
}

/// What the trigger and the sockets share.
struct Floor {
    design: Design,
    frames: watch::Sender<Bytes>,
    /// [`Design::Loop`]: the subscribed sockets.
    sockets: parking_lot::Mutex<Vec<Arc<TcpStream>>>,
}

/// Bytes of one `next` message, as the BFF's live top-10 row is (`subscribers`).
const MESSAGE_BYTES: usize = 7_009;

/// Runs the floor server and the client process against it.
pub(crate) async fn measure(subscribers: usize, design: Design, events: usize) -> Result<Report> {
    let floor = Arc::new(Floor {
        design,
        frames: watch::channel(frame(0)).0,
        sockets: parking_lot::Mutex::new(Vec::with_capacity(subscribers)),
    });
    let sockets = TcpListener::bind("127.0.0.1:0").await?;
    let addr = sockets.local_addr()?;
    let serving = tokio::spawn(serve(sockets, floor.clone()));
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let admin_url = format!("http://{}", admin.local_addr()?);
    let app = Router::new()
        .route("/top10/US", post(change))
        .with_state(floor);
    let admin_task = tokio::spawn(async move { axum::serve(admin, app).await });
    let spec = Spec {
        addr,
        admin_url,
        pid: std::process::id(),
        subscribers,
        events,
        // No keepalive here: a second's idle before the events.
        ping_interval_ms: 1_000,
        metrics: false,
    };
    let report = run_swarm(&spec).await;
    serving.abort();
    admin_task.abort();
    report
}

/// The admin trigger: the next event's frame, handed to every socket.
async fn change(State(floor): State<Arc<Floor>>) -> &'static str {
    floor.frames.send_modify(|f| {
        let next = event_of(f) + 1;
        *f = frame(next);
    });
    if floor.design == Design::Loop {
        let frame = floor.frames.borrow().clone();
        let sockets = floor.sockets.lock().clone();
        let half = sockets.len().div_ceil(2);
        let mut halves = Vec::new();
        for chunk in sockets.chunks(half.max(1)) {
            let (chunk, frame) = (chunk.to_vec(), frame.clone());
            halves.push(tokio::spawn(async move {
                for tcp in chunk {
                    match tcp.try_write(&frame) {
                        Ok(n) if n == frame.len() => {}
                        // The send buffer is full or took part of it: the rest waits on the
                        // socket's readiness (never seen with 7 KB per event).
                        Ok(n) => {
                            let rest = frame.slice(n..);
                            tokio::spawn(async move { write_rest(&tcp, &rest).await });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let rest = frame.clone();
                            tokio::spawn(async move { write_rest(&tcp, &rest).await });
                        }
                        Err(_) => {}
                    }
                }
            }));
        }
        for h in halves {
            let _ = h.await;
        }
    }
    "changed"
}

async fn write_rest(tcp: &TcpStream, mut rest: &[u8]) {
    while !rest.is_empty() {
        if tcp.writable().await.is_err() {
            return;
        }
        match tcp.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// One final text frame carrying `{"id":"1","type":"next","payload":…}` for event `k`, of
/// [`MESSAGE_BYTES`] payload bytes.
fn frame(k: u64) -> Bytes {
    let head = format!(
        r#"{{"id":"{ID}","type":"next","payload":{{"data":{{"top10":{{"event":{k},"pad":""#
    );
    let tail = r#""}}}}"#;
    let pad = MESSAGE_BYTES.saturating_sub(head.len() + tail.len());
    let message = format!("{head}{}{tail}", "x".repeat(pad));
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&[0x81, 126]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    Bytes::from(out)
}

/// The event number inside a frame built by [`frame`].
fn event_of(frame: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(frame.get(4..).unwrap_or_default());
    text.split("\"event\":")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn serve(sockets: TcpListener, floor: Arc<Floor>) {
    while let Ok((tcp, _)) = sockets.accept().await {
        let floor = floor.clone();
        // A socket ends when its client leaves (or fails, which the client reports).
        tokio::spawn(async move { socket(tcp, &floor).await });
    }
}

/// The handshake's answer selects `graphql-transport-ws`.
#[expect(
    clippy::result_large_err,
    reason = "the error type is tungstenite's handshake callback contract"
)]
fn select_protocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    Ok(response)
}

/// One subscriber's socket: the handshake, `connection_ack`, the current frame after
/// `subscribe`, then every new frame until the client leaves.
async fn socket(tcp: TcpStream, floor: &Floor) -> Result<()> {
    let mut current = floor.frames.subscribe();
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, select_protocol).await?;
    let mut acked = false;
    loop {
        let Some(msg) = ws.next().await else {
            return Ok(());
        };
        let Message::Text(text) = msg? else { continue };
        if !acked && text.contains("\"connection_init\"") {
            ws.send(Message::text(r#"{"type":"connection_ack"}"#))
                .await?;
            acked = true;
        } else if acked && text.contains("\"subscribe\"") {
            break;
        }
    }
    // Nothing more comes from the client until it closes: the rest is written raw.
    let mut tcp = ws.into_inner();
    let first = current.borrow_and_update().clone();
    if floor.design == Design::Loop {
        // The trigger writes to it from now on. Events start only once every subscriber has
        // read its first value (the client process waits for that), so the two cannot cross.
        let tcp = Arc::new(tcp);
        floor.sockets.lock().push(tcp.clone());
        write_rest(&tcp, &first).await;
        return Ok(());
    }
    tcp.write_all(&first).await.context("the first value")?;
    let mut byte = [0u8; 64];
    loop {
        tokio::select! {
            changed = current.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let frame = current.borrow_and_update().clone();
                tcp.write_all(&frame).await?;
            }
            read = tcp.read(&mut byte) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_its_event_and_the_bff_s_message_size() {
        let f = frame(41);
        assert_eq!(f.len(), 4 + MESSAGE_BYTES);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, MESSAGE_BYTES);
        assert_eq!(event_of(&f), 41);
        let v: serde_json::Value = serde_json::from_slice(&f[4..]).expect("JSON");
        assert_eq!(v["type"], "next");
        assert_eq!(v["payload"]["data"]["top10"]["event"], 41);
    }
}
