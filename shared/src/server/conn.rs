//! The connection stage: accepts TCP connections, terminates TLS when configured ([`super::tls`]:
//! the handshake must finish within `server.header_read_timeout`; a verified client certificate's
//! subject goes on every request of the connection as [`ClientCert`]), serves HTTP/1.1 and HTTP/2
//! on them with hyper, and bounds what one connection can hold: how long its request headers may take to arrive
//! (`server.header_read_timeout`), how long it may sit idle between requests
//! (`server.idle_timeout`), how many connections are open at once (`server.max_connections`),
//! how large a request head may be, and HTTP/2's stream, header-list and reset-flood limits.
//! Each request carries the peer's socket address (`ConnectInfo`), and is served by the router
//! of the moment ([`Routes`], read once per request: a config reload swaps it, and a request
//! finishes on the router it started with).
//!
//! On shutdown it stops accepting, asks every connection to finish (HTTP/1.1: close after the
//! response in flight; HTTP/2: GOAWAY) and returns when the last one has closed; the caller
//! bounds that wait. Body limits and timeouts are the next stage's (`server::limits`).

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Semaphore, watch},
};

use super::tls::Tls;
use crate::{auth::ClientCert, config::ServerSettings, telemetry::metrics::Metrics};

/// The router each request is served by, read when the request arrives.
pub(crate) type Routes = Arc<dyn Fn() -> Router + Send + Sync>;

/// What the stage needs besides the listener and the router.
#[derive(Clone)]
pub(crate) struct ConnOptions {
    pub(crate) settings: ServerSettings,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// TLS termination, when configured.
    pub(crate) tls: Option<Arc<Tls>>,
}

/// Milliseconds since the process's first use of this clock: an instant that fits an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's activity: when bytes last moved, and requests being served.
#[derive(Default)]
struct Activity {
    last_io_ms: AtomicU64,
    active: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the connection has been idle (no request, no bytes) for `idle`; otherwise how
    /// long until it could be.
    fn idle_for(&self, idle: Duration) -> Result<(), Duration> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        if self.active.load(Ordering::Acquire) > 0 {
            return Err(idle);
        }
        let since = now_ms().saturating_sub(self.last_io_ms.load(Ordering::Relaxed));
        if since >= idle_ms {
            Ok(())
        } else {
            Err(Duration::from_millis(idle_ms - since))
        }
    }
}

/// A request being served on a connection: the connection is not idle while one lives.
struct ActiveGuard(Arc<Activity>);

impl ActiveGuard {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting every read and write that moves bytes.
pub(crate) struct Observed<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Observed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Observed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: each request gets the peer address and keeps
/// the connection busy while it is served.
#[derive(Clone)]
struct ConnService {
    routes: Routes,
    peer: SocketAddr,
    client_cert: Option<ClientCert>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(cert) = &self.client_cert {
            req.extensions_mut().insert(cert.clone());
        }
        let guard = ActiveGuard::new(&self.activity);
        let served = tower::ServiceExt::oneshot((self.routes)(), req);
        Box::pin(async move {
            let response = served.await;
            drop(guard);
            response
        })
    }
}

/// The hyper connection builder with this deployment's limits.
fn builder(s: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_headers(s.max_headers)
        // hyper's read buffer bounds the request head (it never holds more than this unparsed).
        .max_buf_size(s.max_header_bytes.max(8192));
    let h2 = &s.http2;
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_resets);
    b
}

/// Serves `routes` on `listener` until `shutdown` resolves, then until every connection has
/// closed.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Routes,
    opts: ConnOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let builder = Arc::new(builder(&opts.settings));
    let slots = Arc::new(Semaphore::new(opts.settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_logged = None::<Instant>;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so clients fail fast rather than queue unseen.
            if let Some(m) = &opts.metrics {
                m.connection_refused("limit");
            }
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max = opts.settings.max_connections,
                    "connection refused: server.max_connections reached"
                );
                refused_logged = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let idle = opts.settings.idle_timeout;
        let open = opts.metrics.as_ref().map(|m| m.http_connection());
        let routes = routes.clone();
        let tls = opts.tls.clone();
        let handshake = opts.settings.header_read_timeout;
        tokio::spawn(async move {
            let activity = Arc::new(Activity::default());
            activity.touch();
            match tls {
                None => {
                    let io = Observed {
                        io: stream,
                        activity: activity.clone(),
                    };
                    let service = ConnService {
                        routes,
                        peer,
                        client_cert: None,
                        activity,
                    };
                    connection(io, service, &builder, idle, &mut stop).await;
                }
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(handshake, tls.acceptor().accept(stream)).await;
                    let stream = match accepted {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(super::tls::client_subject)
                        .map(ClientCert);
                    let io = Observed {
                        io: stream,
                        activity: activity.clone(),
                    };
                    let service = ConnService {
                        routes,
                        peer,
                        client_cert,
                        activity,
                    };
                    connection(io, service, &builder, idle, &mut stop).await;
                }
            }
            drop(open);
            drop(slot);
        });
    }
    drop(listener);
    drop(stop_rx);
    // Every connection holds a receiver; this resolves when the last one has closed.
    stop_tx.send_replace(());
    stop_tx.closed().await;
    Ok(())
}

/// The plain TCP socket under a connection upgraded off this stage (a WebSocket), with the
/// bytes the HTTP server had already read past the upgrade request; the upgraded connection
/// back when it is not plain TCP (TLS).
pub(crate) fn upgraded_tcp(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(tokio::net::TcpStream, bytes::Bytes), hyper::upgrade::Upgraded> {
    // `auto` serves a connection wrapped in its own rewinding reader; its `downcast` sees
    // through it. What `Observed` noted is the HTTP stage's: it is over for this connection.
    let parts = auto::upgrade::downcast::<TokioIo<Observed<tokio::net::TcpStream>>>(upgraded)?;
    Ok((parts.io.into_inner().io, parts.read_buf))
}

async fn connection<I>(
    io: Observed<I>,
    service: ConnService,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    stop: &mut watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = service.activity.clone();
    let peer = service.peer;
    let io = TokioIo::new(io);
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let wait = match activity.idle_for(idle) {
            Ok(()) if !closing => {
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
                idle
            }
            Ok(()) => idle,
            Err(left) => left,
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    // Clients resetting or timing out are routine; nothing to act on.
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}
