//! The HTTP server: binds the listeners, builds what lives as long as the process (metrics, the
//! fragment cache, the event bus and this instance's subscription) and the per-config request
//! stack ([`stack`]: the public router — the GraphQL service, pass-through routes, GraphiQL,
//! health — inside the request pipeline (`crate::pipeline`), and the admin router), serves both
//! through the connection stage ([`conn`]) until a shutdown future resolves, then drains in-flight
//! requests within a bound. A config reload ([`reload`]) swaps in a new stack while serving.
//!
//! Owns process-level wiring only; the GraphQL protocol lives in `crate::graphql::service`, the stages
//! in `crate::pipeline`, the schema in the binaries.

mod conn;
pub mod graphiql;
mod health;
mod metrics;
pub mod probe;
pub mod reload;
mod stack;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::{
    cache::FragmentCache,
    compose::Composer,
    config::{GraphqlSettings, ServerSettings, Settings},
    graphql::GraphqlExecutor,
    telemetry::metrics::Metrics,
    upstream::UpstreamInitError,
};
pub use reload::{ConfigSource, ReloadError, Reloaded, Reloader, SettingsRewrite};
use stack::{Process, Stack};

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
    /// The shared cache tier could not be set up.
    #[error("{0}")]
    CacheL2(#[from] crate::cache::l2::L2Error),
    /// The metrics registry could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[source] crate::telemetry::metrics::MetricsError),
    /// The server loop failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    /// TLS could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The rate limiter could not be built (a bad Redis URL).
    #[error(transparent)]
    RateLimit(#[from] crate::ratelimit::RateLimitError),
    /// The event bus could not be set up.
    #[error(transparent)]
    Events(#[from] crate::events::EventsInitError),
    /// The instance could not subscribe to domain events.
    #[error("cannot subscribe to domain events: {0}")]
    Subscribe(#[from] crate::events::BusError),
    /// The persisted-operation manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] crate::graphql::persisted::ManifestError),
}

/// Options beyond settings, set by `--demo`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// JSON object of headers GraphiQL starts with (the demo token).
    pub graphiql_headers: Option<String>,
    /// An event bus to use instead of the one `events.*` describes (`--demo` shares its
    /// in-process bus with the fixtures it starts).
    pub events: Option<Arc<dyn crate::events::EventBus>>,
    /// Where the settings came from, to reload them on SIGHUP, when the file changes, or through
    /// [`Application::reloader`]; `None`: they cannot be reloaded.
    pub config: Option<ConfigSource>,
}

/// A bound, ready-to-run BFF.
pub struct Application {
    listener: TcpListener,
    admin: Option<TcpListener>,
    /// The request stack of the running config; a reload swaps it.
    live: Arc<ArcSwap<Stack>>,
    /// Readiness's own state (false once shutting down).
    instance: Arc<health::Instance>,
    /// The connection stage's settings (a restart applies new ones).
    server: ServerSettings,
    metrics: Option<Arc<Metrics>>,
    tls: Option<Arc<tls::Tls>>,
    cache: FragmentCache,
    events: Arc<dyn crate::events::EventBus>,
    /// This instance's subscription to domain events (ends with the server).
    subscription: crate::events::Consumer,
    /// The live doors' sockets and streams (closed at shutdown).
    doors: Arc<crate::live::Live>,
    reloader: Option<Reloader>,
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
        let cache = FragmentCache::from_settings(settings.cache.clone())?;
        let events = match opts.events.clone() {
            Some(bus) => bus,
            None => crate::events::from_settings(&settings.events, surface.name)?,
        };
        let recent = Arc::new(crate::compose::progress::RecentProgress::new(
            settings.events.read_your_writes_ttl,
        ));
        let subscription = events
            .subscribe(
                &crate::cache::invalidate::SUBSCRIBED,
                Arc::new(crate::cache::invalidate::Invalidator::new(
                    cache.clone(),
                    settings.profile.items_per_row,
                    Some({
                        let recent = recent.clone();
                        Arc::new(
                            move |user: &crate::domain::UserId, title: &str, position: u32| {
                                recent.applied(user, title, position);
                            },
                        )
                    }),
                    settings.events.max_stale_while_disconnected,
                )),
            )
            .await?;
        let instance = Arc::new(health::Instance::new());
        let doors = Arc::new(crate::live::Live::default());
        let process = Arc::new(Process {
            surface: *surface,
            client,
            metrics: metrics.clone(),
            cache: cache.clone(),
            events: events.clone(),
            recent,
            instance: instance.clone(),
            graphiql_headers: opts.graphiql_headers.clone(),
            live: doors.clone(),
        });
        let settings = Arc::new(settings);
        let stack = Stack::build(settings.clone(), &process, None)?;
        let tls = if settings.tls.enabled() {
            Some(tls::Tls::load(&settings.tls, metrics.clone())?)
        } else {
            None
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        // The admin listener: readiness detail, and metrics, which then leave the public port.
        let admin = match settings.admin.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let live = Arc::new(ArcSwap::from_pointee(stack));
        let reloader = opts.config.map(|source| {
            Reloader::new(
                source,
                (surface.defaults)(),
                live.clone(),
                process.clone(),
                tls.clone(),
            )
        });
        Ok(Self {
            listener,
            admin,
            live,
            instance,
            server: settings.server.clone(),
            metrics,
            tls,
            cache,
            events,
            subscription,
            doors,
            reloader,
        })
    }

    /// Reloads this application's config while it runs (as SIGHUP does), when it was started
    /// with [`StartOptions::config`].
    pub fn reloader(&self) -> Option<Reloader> {
        self.reloader.clone()
    }

    /// The event bus this instance publishes to and is subscribed on.
    pub fn event_bus(&self) -> Arc<dyn crate::events::EventBus> {
        self.events.clone()
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
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves; then readiness turns false, the listener closes and
    /// in-flight requests get `server.shutdown_grace` to finish. Reloads the config on SIGHUP
    /// and when its file changes, when it was started with [`StartOptions::config`].
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let instance = self.instance.clone();
        let opts = conn::ConnOptions {
            settings: self.server.clone(),
            metrics: self.metrics.clone(),
            tls: self.tls.clone(),
        };
        let tls_watch = self.tls.as_ref().map(tls::Tls::watch);
        let reload_watch = self.reloader.as_ref().map(Reloader::watch);
        // Every request is served by the stack of the moment (a reload swaps it).
        let live = self.live.clone();
        let public: conn::Routes = Arc::new(move || live.load().router.clone());
        // The admin listener lives exactly as long as the public one; it is for operators on a
        // private network and speaks plain HTTP.
        let admin = self.admin.map(|l| {
            let opts = conn::ConnOptions {
                tls: None,
                ..opts.clone()
            };
            let live = self.live.clone();
            let routes: conn::Routes =
                Arc::new(move || live.load().admin.clone().unwrap_or_default());
            tokio::spawn(conn::serve(l, routes, opts, std::future::pending()))
        });
        // Shutdown's timing is the running config's (a reload may have changed it).
        let server = {
            let live = self.live.clone();
            move || live.load().settings.server.clone()
        };
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let stopping_at = Arc::new(parking_lot::Mutex::new(None::<tokio::time::Instant>));
        let stopping_mark = stopping_at.clone();
        let delay_of = server.clone();
        let doors = self.doors.clone();
        let serve = conn::serve(self.listener, public, opts, async move {
            shutdown.await;
            // Readiness goes false first; the listener stays open for `shutdown_delay` so load
            // balancers notice and stop sending before connections are refused.
            instance.ready.store(false, Ordering::Relaxed);
            let delay = delay_of().shutdown_delay;
            tracing::info!(delay = ?delay, "shutting down: readiness is false");
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting; draining in-flight requests");
            *stopping_mark.lock() = Some(tokio::time::Instant::now());
            // Subscription sockets close with 1001 after what is queued for them, and SSE
            // streams end, so the drain below is not held up by streams that never finish.
            tokio::spawn(async move { doors.shut_down(std::time::Duration::MAX).await });
            let _ = stopping_tx.send(());
        });
        let grace_of = server.clone();
        let drain_deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace_of().shutdown_grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            served = serve => served.map_err(ServerError::Serve),
            () = drain_deadline => {
                tracing::warn!(grace = ?server().shutdown_grace, "shutdown grace elapsed with requests still in flight");
                Ok(())
            }
        };
        if let Some(admin) = admin {
            admin.abort();
        }
        if let Some(watch) = tls_watch {
            watch.abort();
        }
        if let Some(watch) = reload_watch {
            watch.abort();
        }
        // Sockets still closing get what is left of the grace period.
        let grace = server().shutdown_grace;
        let left = stopping_at
            .lock()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()));
        self.doors.shut_down(left).await;
        self.live.load().stop();
        self.subscription.stop().await;
        // Accepted work is confirmed or spooled already; what the bus still holds gets the rest
        // of a grace period (logged and counted if it cannot be settled).
        let grace = server().shutdown_grace;
        let left = stopping_at
            .lock()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()));
        let drained = self
            .events
            .drain(left.max(std::time::Duration::from_millis(100)))
            .await;
        if drained.unsettled > 0 {
            tracing::error!(
                unsettled = drained.unsettled,
                "events lost at shutdown: neither confirmed by the broker nor spooled"
            );
        }
        result
    }
}
