//! A WebSocket's write side, shared by its socket's task and the fan-outs of the groups its
//! subscriptions belong to ([`super::group`]).
//!
//! Why it is shared: with 10,000 subscribers of one row, waking 10,000 socket tasks so that
//! each writes one message costs more than the writes themselves (BENCHMARKS.md, "The floor
//! under these figures"). So a group's fan-out writes a `next` straight into a member's socket
//! when the socket can take the whole frame at once, and hands it to the socket's task (the
//! socket's outbox, then one wake-up) only when it cannot: TLS (whose records only the task
//! writes), a socket whose send buffer is full, a socket the task is writing to, or messages
//! already waiting for it (order is kept: nothing overtakes the outbox). A frame the socket
//! took only part of is finished by the task before anything else ([`State::rest`]).
//!
//! The rules, all under the one lock of [`Wire::state`]:
//! - a fan-out writes only when the task is not writing (`busy`), nothing waits (`outbox`,
//!   `rest`) and the socket is open to them (`shut`); it writes without blocking, a whole frame
//!   or the start of one (the rest is kept);
//! - every write of the task (tungstenite's frames — acks, pings, pongs, close — and results
//!   from the outbox) goes through [`WireIo`], which marks the socket busy and first finishes
//!   a kept rest; the task marks it idle again ([`Wire::settle`]) only once everything it began
//!   is written whole;
//! - a subscription the task ended is no longer written by anyone ([`Wire::remove`]).
//!
//! Every message still passes the subscriber's bound: a subscription with
//! `subscriptions.buffer` messages waiting in the outbox is too slow, and its socket is closed
//! (`4413`).

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use super::{Live, Msg};

/// A socket's write side: see the module docs.
pub(crate) struct Wire {
    /// The plain TCP socket, which fan-outs may write; `None` under TLS.
    tcp: Option<TcpStream>,
    state: Mutex<State>,
    /// Wakes the socket's task: the outbox has messages, a frame's rest waits, or a
    /// subscription was too slow.
    wake: Notify,
    /// Messages one subscription may have waiting (`subscriptions.buffer`).
    buffer: usize,
    live: Arc<Live>,
}

#[derive(Default)]
struct State {
    /// Messages for the task to write, in order: (subscription, message).
    outbox: VecDeque<(u64, Msg)>,
    /// The end of a frame a fan-out began: written before any other byte.
    rest: Option<Bytes>,
    /// The task is writing, or tungstenite holds bytes it has not finished writing.
    busy: bool,
    /// Closed to fan-outs: the socket is closing.
    shut: bool,
    /// A subscription's waiting messages reached the bound.
    slow: bool,
    /// The subscriptions this socket serves now.
    subs: Vec<Sub>,
}

/// One subscription of the socket.
struct Sub {
    key: u64,
    id: Arc<str>,
    /// `{"id":…,"type":"next","payload":`: the envelope's head, made once.
    next_head: Box<[u8]>,
    /// Its messages in the outbox.
    waiting: usize,
}

/// What became of a message handed to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// Written (whole, or begun with the rest kept for the task).
    Written,
    /// In the outbox, for the task.
    Queued,
    /// The subscription had `buffer` messages waiting: the socket is closed as too slow.
    Slow,
    /// The subscription or the socket is over: dropped.
    Over,
}

/// What the task is to write next.
pub(crate) enum Next {
    /// A message of subscription `id` (the socket is marked busy until [`Wire::settle`]).
    Msg(Arc<str>, Msg),
    /// Nothing waits (but a frame's rest, which [`Wire::unsettled`] tells).
    Nothing,
    /// A subscription was too slow: close the socket.
    Slow,
}

impl Wire {
    /// The write side of a socket; `tcp` when it is plain TCP.
    pub(crate) fn new(tcp: Option<TcpStream>, buffer: usize, live: Arc<Live>) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            buffer: buffer.max(1),
            live,
        })
    }

    /// Adds subscription `key` (`id` on the wire): from now on messages for it are written.
    pub(crate) fn add(&self, key: u64, id: &str) {
        let next_head = envelope_head(id, "next", true);
        self.state.lock().subs.push(Sub {
            key,
            id: Arc::from(id),
            next_head: next_head.into_bytes().into_boxed_slice(),
            waiting: 0,
        });
    }

    /// Ends subscription `key`: nothing more is written for it, and what waits is dropped.
    pub(crate) fn remove(&self, key: u64) {
        let mut st = self.state.lock();
        st.subs.retain(|s| s.key != key);
        st.outbox.retain(|(k, _)| *k != key);
    }

    /// Closes the socket to fan-outs: nothing more is written or queued by them.
    pub(crate) fn shut(&self) {
        self.state.lock().shut = true;
    }

    /// Waits until the task has something to do.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Hands `msg` for subscription `key` to the socket: written now when it can be, else
    /// queued for the task.
    pub(crate) fn hand(&self, key: u64, msg: &Msg) -> Handed {
        let mut st = self.state.lock();
        let st = &mut *st;
        if st.shut {
            return Handed::Over;
        }
        let Some(sub) = st.subs.iter_mut().find(|s| s.key == key) else {
            return Handed::Over;
        };
        if let (Msg::Next(payload), Some(tcp)) = (msg, &self.tcp)
            && !st.busy
            && st.rest.is_none()
            && st.outbox.is_empty()
        {
            match write_now(tcp, &sub.next_head, payload) {
                Ok(None) => {
                    self.live.stats.ws_messages.fetch_add(1, Ordering::Relaxed);
                    return Handed::Written;
                }
                Ok(Some(rest)) => {
                    self.live.stats.ws_messages.fetch_add(1, Ordering::Relaxed);
                    st.rest = Some(rest);
                    self.wake.notify_one();
                    return Handed::Written;
                }
                // The socket cannot take it now: the task writes it when it can.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket is broken: its task finds out when it reads or writes.
                Err(_) => {
                    st.shut = true;
                    self.wake.notify_one();
                    return Handed::Over;
                }
            }
        }
        if sub.waiting >= self.buffer {
            st.slow = true;
            self.wake.notify_one();
            return Handed::Slow;
        }
        sub.waiting += 1;
        st.outbox.push_back((key, msg.clone()));
        self.wake.notify_one();
        Handed::Queued
    }

    /// The next message for the task to write; the socket is busy until [`Wire::settle`].
    pub(crate) fn next(&self) -> Next {
        let mut st = self.state.lock();
        while let Some((key, msg)) = st.outbox.pop_front() {
            let Some(sub) = st.subs.iter_mut().find(|s| s.key == key) else {
                continue;
            };
            sub.waiting = sub.waiting.saturating_sub(1);
            let id = sub.id.clone();
            st.busy = true;
            return Next::Msg(id, msg);
        }
        if st.slow { Next::Slow } else { Next::Nothing }
    }

    /// Whether the end of a frame a fan-out began is waiting to be written.
    #[cfg(test)]
    pub(crate) fn has_rest(&self) -> bool {
        self.state.lock().rest.is_some()
    }

    /// Whether there is anything to settle: the task (or tungstenite) has written since it
    /// last settled, or a frame's rest waits.
    pub(crate) fn unsettled(&self) -> bool {
        let st = self.state.lock();
        st.busy || st.rest.is_some()
    }

    /// The task has written everything it began: fan-outs may write again.
    pub(crate) fn settle(&self) {
        self.state.lock().busy = false;
    }
}

/// The head of a `graphql-transport-ws` message of subscription `id`: `{"id":…,"type":"kind"`,
/// then `,"payload":` when one follows; the message ends with `}`.
pub(super) fn envelope_head(id: &str, kind: &str, with_payload: bool) -> String {
    // A string always serializes; the fallback is never written.
    let id = serde_json::to_string(id).unwrap_or_else(|_| String::from("\"\""));
    let payload = if with_payload { ",\"payload\":" } else { "" };
    format!("{{\"id\":{id},\"type\":\"{kind}\"{payload}")
}

/// Writes `next_head`, `payload` and `}` as one text frame without waiting: `Ok(None)` when
/// the socket took it whole, `Ok(Some(rest))` when it took part of it (the rest, copied),
/// `WouldBlock` when it took nothing.
fn write_now(tcp: &TcpStream, next_head: &[u8], payload: &[u8]) -> io::Result<Option<Bytes>> {
    let (header, header_len) = text_frame_header(next_head.len() + payload.len() + 1);
    let parts: [&[u8]; 4] = [&header[..header_len], next_head, payload, b"}"];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let slices = parts.map(IoSlice::new);
    match tcp.try_write_vectored(&slices)? {
        0 => Err(io::ErrorKind::WouldBlock.into()),
        n if n == total => Ok(None),
        n => {
            let mut rest = Vec::with_capacity(total - n);
            let mut skip = n;
            for p in parts {
                let from = skip.min(p.len());
                rest.extend_from_slice(&p[from..]);
                skip -= from;
            }
            Ok(Some(Bytes::from(rest)))
        }
    }
}

/// The header of one final, unmasked text frame of `len` payload bytes (RFC 6455 §5.2: the
/// length in 7 bits, or 126 and 16 bits, or 127 and 64 bits), and how many of its bytes are
/// used.
pub(super) fn text_frame_header(len: usize) -> ([u8; 10], usize) {
    const FIN_TEXT: u8 = 0x81;
    let mut h = [0u8; 10];
    h[0] = FIN_TEXT;
    match (u8::try_from(len), u16::try_from(len)) {
        (Ok(n), _) if n < 126 => {
            h[1] = n;
            (h, 2)
        }
        (_, Ok(n)) => {
            h[1] = 126;
            h[2..4].copy_from_slice(&n.to_be_bytes());
            (h, 4)
        }
        (_, Err(_)) => {
            h[1] = 127;
            h[2..10].copy_from_slice(&u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes());
            (h, 10)
        }
    }
}

/// The socket as tungstenite (and the task's own result frames) read and write it: on plain
/// TCP, through the [`Wire`] (every write marks it busy, after finishing a fan-out's rest);
/// under TLS, the upgraded connection as it is.
pub(crate) enum WireIo {
    Tcp {
        wire: Arc<Wire>,
        /// Bytes the HTTP server had read past the upgrade request.
        read_first: Bytes,
    },
    Other(TokioIo<Upgraded>),
}

impl WireIo {
    /// The TCP socket of a plain connection.
    fn tcp(wire: &Wire) -> io::Result<&TcpStream> {
        wire.tcp
            .as_ref()
            .ok_or_else(|| io::Error::other("a plain socket's wire without its socket"))
    }

    /// Finishes a fan-out's rest (none under TLS) and marks the socket busy: the task is
    /// about to write.
    fn poll_rest(wire: &Wire, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp = Self::tcp(wire)?;
        loop {
            {
                let mut st = wire.state.lock();
                st.busy = true;
                let Some(rest) = &mut st.rest else {
                    return Poll::Ready(Ok(()));
                };
                match tcp.try_write(rest) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        rest.advance(n);
                        if rest.is_empty() {
                            st.rest = None;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(tcp.poll_write_ready(cx))?;
        }
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Other(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tcp { wire, read_first } => {
                if !read_first.is_empty() {
                    let n = read_first.len().min(buf.remaining());
                    buf.put_slice(&read_first.split_to(n));
                    if read_first.is_empty() {
                        // Even empty, a slice keeps the server's whole read buffer alive.
                        *read_first = Bytes::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                let tcp = Self::tcp(wire)?;
                loop {
                    ready!(tcp.poll_read_ready(cx))?;
                    match tcp.try_read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
        }
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tcp { wire, .. } => {
                let tcp = Self::tcp(wire)?;
                loop {
                    ready!(Self::poll_rest(wire, cx))?;
                    match tcp.try_write_vectored(bufs) {
                        Ok(n) => return Poll::Ready(Ok(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    ready!(tcp.poll_write_ready(cx))?;
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Other(io) => io.is_write_vectored(),
            Self::Tcp { .. } => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Other(io) => Pin::new(io).poll_flush(cx),
            // TCP holds nothing back; a fan-out's rest is part of what was written.
            Self::Tcp { wire, .. } => Self::poll_rest(wire, cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Other(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tcp { wire, .. } => {
                ready!(Self::poll_rest(wire, cx))?;
                let tcp = Self::tcp(wire)?;
                Poll::Ready(socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{Handed, Next, Wire};
    use crate::live::{Live, Msg};

    /// A connected pair: the server's end (for the wire) and the client's.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.map(|(s, _)| s)
        });
        (accepted.expect("accept"), client.expect("connect"))
    }

    fn next(n: usize) -> Msg {
        Msg::Next(Bytes::from(format!("{{\"data\":{n}}}")))
    }

    #[tokio::test]
    async fn a_message_for_a_subscription_the_socket_does_not_serve_is_dropped() {
        let (server, _client) = pair().await;
        let wire = Wire::new(Some(server), 4, Arc::new(Live::default()));
        assert_eq!(wire.hand(1, &next(0)), Handed::Over, "never added");
        wire.add(1, "a");
        wire.add(2, "b");
        // Queued behind a message the task is writing (busy), then the subscription ends.
        wire.state.lock().busy = true;
        assert_eq!(wire.hand(1, &next(1)), Handed::Queued);
        assert_eq!(wire.hand(2, &next(2)), Handed::Queued);
        wire.remove(1);
        assert_eq!(wire.hand(1, &next(3)), Handed::Over, "removed");
        let Next::Msg(id, Msg::Next(b)) = wire.next() else {
            panic!("b's message")
        };
        assert_eq!((&*id, &b[..]), ("b", &br#"{"data":2}"#[..]));
        assert!(matches!(wire.next(), Next::Nothing));
        wire.shut();
        assert_eq!(wire.hand(2, &next(4)), Handed::Over, "shut");
    }

    #[tokio::test]
    async fn a_subscription_with_its_buffer_waiting_is_too_slow() {
        // TLS: nothing is written by a fan-out, everything waits for the task.
        let wire = Wire::new(None, 3, Arc::new(Live::default()));
        wire.add(7, "x");
        wire.add(8, "y");
        for n in 0..3 {
            assert_eq!(wire.hand(7, &next(n)), Handed::Queued);
        }
        assert_eq!(wire.hand(8, &next(0)), Handed::Queued, "a bound each");
        assert_eq!(wire.hand(7, &next(3)), Handed::Slow);
        // What waits still goes out in order, then the socket is closed.
        let mut got = Vec::new();
        while let Next::Msg(id, Msg::Next(b)) = wire.next() {
            got.push(format!("{id}{}", String::from_utf8_lossy(&b)));
        }
        assert_eq!(
            got,
            [
                r#"x{"data":0}"#,
                r#"x{"data":1}"#,
                r#"x{"data":2}"#,
                r#"y{"data":0}"#
            ]
        );
        assert!(matches!(wire.next(), Next::Slow));
    }
}
