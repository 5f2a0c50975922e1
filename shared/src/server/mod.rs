//! The HTTP server: binds the listener, assembles the router (GraphQL over HTTP, GraphiQL,
//! health, readiness), applies response compression, and runs until a shutdown future resolves,
//! then drains in-flight requests within a bound.
//!
//! Owns process-level wiring; the GraphQL protocol lives in `crate::graphql::http`, the schema in
//! the binaries.

mod conn;
pub mod graphiql;
mod health;
pub(crate) mod limits;
mod metrics;
mod observe;
mod proxy;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, routing::get};
use bytes::Bytes;
use tokio::net::TcpListener;
use tower_http::compression::CompressionLayer;

use crate::{
    auth::Authenticator,
    cache::FragmentCache,
    compose::Composer,
    config::{GraphqlSettings, Settings},
    graphql::{GraphqlExecutor, http},
    telemetry::metrics::Metrics,
    upstream::{Upstream, UpstreamInitError},
};

/// What a binary adds to the shared core: its name, defaults and schema.
#[derive(Clone, Copy)]
pub struct Surface {
    /// Binary name, e.g. `bff-web`.
    pub name: &'static str,
    /// The binary's version (`--version`).
    pub version: &'static str,
    /// Default listen address and client profile.
    pub defaults: fn() -> crate::config::BinaryDefaults,
    /// Builds this binary's schema over a composer, with the configured limits.
    pub schema: fn(Composer, &GraphqlSettings) -> Arc<dyn GraphqlExecutor>,
    /// The query GraphiQL opens with: this client's homepage, as the README shows it.
    pub example_query: &'static str,
}

impl Surface {
    /// A surface over the binary's title and homepage types, with the shared root query: the
    /// binary's `(name, version)`, its defaults, and the example GraphiQL opens with.
    pub fn new<T: crate::graphql::TitleView, H: crate::graphql::types::HomepageView>(
        (name, version): (&'static str, &'static str),
        defaults: fn() -> crate::config::BinaryDefaults,
        example_query: &'static str,
    ) -> Self {
        Self {
            name,
            version,
            defaults,
            schema: crate::graphql::build_schema::<T, H>,
            example_query,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Upstream clients could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamInitError),
    /// The metrics registry could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[source] crate::telemetry::metrics::MetricsError),
    /// The server loop failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// Shared by every handler.
pub(crate) struct AppState {
    /// Client label for logs and metrics: `web`, `mobile`.
    pub(crate) client: &'static str,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) cache: FragmentCache,
    pub(crate) settings: Settings,
    pub(crate) auth: Authenticator,
    pub(crate) schema: Arc<dyn GraphqlExecutor>,
    pub(crate) upstream: Upstream,
    /// The GraphiQL page when enabled, rendered once: nothing in it changes while serving.
    pub(crate) graphiql_page: Option<Bytes>,
    /// Which backend endpoints answer, probed at most once per TTL.
    pub(crate) reachability: health::Reachability,
    ready: AtomicBool,
}

impl AppState {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Options beyond settings, set by `--demo`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// JSON object of headers GraphiQL starts with (the demo token).
    pub graphiql_headers: Option<String>,
}

/// A bound, ready-to-run BFF.
pub struct Application {
    listener: TcpListener,
    admin: Option<(TcpListener, Router)>,
    router: Router,
    state: Arc<AppState>,
    cache: FragmentCache,
}

impl Application {
    /// Builds everything and binds the listener, so `port()` is known before serving (port 0 works).
    pub async fn build(
        settings: Settings,
        surface: &Surface,
        opts: StartOptions,
    ) -> Result<Self, ServerError> {
        let client = surface.name.strip_prefix("bff-").unwrap_or(surface.name);
        let metrics = if settings.metrics.enabled {
            Some(Arc::new(
                Metrics::new(client, settings.metrics.max_operation_names)
                    .map_err(ServerError::Metrics)?,
            ))
        } else {
            None
        };
        let upstream = Upstream::new(&settings.backends, metrics.clone())?;
        let cache = FragmentCache::new(settings.cache.clone());
        let composer = Composer::new(
            upstream.clone(),
            cache.clone(),
            Arc::new(settings.profile.clone()),
        );
        let schema = (surface.schema)(composer, &settings.graphql);
        let graphiql = settings
            .graphiql
            .enabled
            .then(|| graphiql::GraphiqlAssets::locate(settings.graphiql.assets_dir.as_deref()));
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let state = Arc::new(AppState {
            client,
            metrics: metrics.clone(),
            auth: Authenticator::new(&settings.auth),
            schema,
            upstream,
            cache: cache.clone(),
            graphiql_page: graphiql.as_ref().map(|assets| {
                Bytes::from(assets.page(&graphiql::Page {
                    endpoint: "/graphql",
                    subscription_endpoint: "/graphql/ws",
                    headers: opts.graphiql_headers.as_deref(),
                    binary: surface.name,
                    example_query: surface.example_query,
                    introspection: settings.graphql.introspection,
                }))
            }),
            reachability: health::Reachability::tcp(),
            ready: AtomicBool::new(true),
            settings,
        });
        let body_limit = limits::BodyLimit {
            max_bytes: state.settings.server.max_body_bytes,
            timeout: state.settings.server.body_read_timeout,
        };
        let mut router = Router::new()
            .route("/graphql", get(http::get).post(http::post))
            .route_layer(axum::middleware::from_fn_with_state(
                body_limit,
                limits::limit_body,
            ))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .with_state(state.clone());
        // The admin listener: readiness detail, and metrics, which then leave the public port.
        let mut admin_listener = None;
        let metrics_router = state.metrics.is_some().then(|| {
            Router::new()
                .route("/metrics", get(metrics::serve))
                .with_state(state.clone())
        });
        match state.settings.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let mut admin = Router::new()
                    .route("/healthz", get(health::healthz))
                    .route("/readyz", get(health::readyz_detail))
                    .with_state(state.clone());
                if let Some(m) = metrics_router {
                    admin = admin.merge(m);
                }
                admin_listener = Some((l, admin));
            }
            None => {
                if let Some(m) = metrics_router {
                    router = router.merge(m);
                }
            }
        }
        router = router.merge(proxy::router(&state, &state.settings.routes));
        if let Some(assets) = &graphiql {
            router = router.merge(assets.router());
        }
        let router = router
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                observe::observe,
            ))
            .layer(CompressionLayer::new().gzip(true).br(true).zstd(true));
        Ok(Self {
            listener,
            admin: admin_listener,
            router,
            state,
            cache,
        })
    }

    /// The fragment cache (its counters are what tests and metrics read).
    pub fn fragment_cache(&self) -> FragmentCache {
        self.cache.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address (`admin.listen`), when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves; then readiness turns false, the listener closes and
    /// in-flight requests get `server.shutdown_grace` to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let state = self.state.clone();
        let opts = conn::ConnOptions {
            settings: state.settings.server.clone(),
            metrics: state.metrics.clone(),
        };
        // The admin listener lives exactly as long as the public one.
        let admin = self.admin.map(|(l, r)| {
            let opts = opts.clone();
            tokio::spawn(conn::serve(l, r, opts, std::future::pending()))
        });
        let grace = state.settings.server.shutdown_grace;
        let delay = state.settings.server.shutdown_delay;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = conn::serve(self.listener, self.router, opts, async move {
            shutdown.await;
            // Readiness goes false first; the listener stays open for `shutdown_delay` so load
            // balancers notice and stop sending before connections are refused.
            state.ready.store(false, Ordering::Relaxed);
            tracing::info!(delay = ?delay, "shutting down: readiness is false");
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting; draining in-flight requests");
            let _ = stopping_tx.send(());
        });
        let drain_deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            served = serve => served.map_err(ServerError::Serve),
            () = drain_deadline => {
                tracing::warn!(grace = ?grace, "shutdown grace elapsed with requests still in flight");
                Ok(())
            }
        };
        if let Some(admin) = admin {
            admin.abort();
        }
        result
    }
}
