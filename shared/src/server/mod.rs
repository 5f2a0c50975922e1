//! The HTTP server: binds the listeners, builds every part and assembles the public router (the
//! GraphQL service, pass-through routes, GraphiQL, health) inside the request pipeline
//! (`crate::pipeline`), and the admin router (readiness detail, metrics); serves both through the
//! connection stage ([`conn`]) until a shutdown future resolves, then drains in-flight requests
//! within a bound.
//!
//! Owns process-level wiring only; the GraphQL protocol lives in `crate::graphql::service`, the stages
//! in `crate::pipeline`, the schema in the binaries.

mod conn;
pub mod graphiql;
mod health;
mod metrics;
pub mod probe;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{Router, routing::get};
use bytes::Bytes;
use tokio::net::TcpListener;

use crate::{
    auth::Authenticator,
    cache::FragmentCache,
    compose::Composer,
    config::{GraphqlSettings, ServerSettings, Settings},
    graphql::{self, GraphqlExecutor, service::GraphqlService},
    pipeline::{
        Edge, authn::Authn, client_addr::TrustedProxies, ip_rules::IpRules, limits::BodyLimit,
        observe::Observe,
    },
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
}

/// A bound, ready-to-run BFF.
pub struct Application {
    listener: TcpListener,
    admin: Option<(TcpListener, Router)>,
    router: Router,
    health: Arc<health::Health>,
    server: ServerSettings,
    metrics: Option<Arc<Metrics>>,
    tls: Option<Arc<tls::Tls>>,
    cache: FragmentCache,
    events: Arc<dyn crate::events::EventBus>,
    /// This instance's subscription to domain events (ends with the server).
    subscription: crate::events::Consumer,
    /// Background work that lives as long as the server (identity providers' key refreshes).
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        let composer = Composer::new(
            upstream.clone(),
            cache.clone(),
            Arc::new(settings.profile.clone()),
        )
        .with_access(crate::compose::Access {
            mutation_scopes: settings.auth.mutation_scopes.clone(),
        })
        .with_events(crate::compose::progress::Events {
            bus: events.clone(),
            source: surface.name,
            recent,
        });
        let schema = (surface.schema)(composer, &settings.graphql);
        let graphiql = settings
            .graphiql
            .enabled
            .then(|| graphiql::GraphiqlAssets::locate(settings.graphiql.assets_dir.as_deref()));
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

        let ratelimit =
            crate::ratelimit::RateLimiter::new(&settings.rate_limits, client, metrics.clone())?
                .map(Arc::new);
        let auth = Arc::new(Authenticator::new(&settings.auth));
        let auth_tasks = auth.start();
        let edge = Edge {
            trusted: Arc::new(TrustedProxies {
                cidrs: settings.server.trusted_proxies.clone(),
                header: settings.server.forwarded_header,
            }),
            observe: Arc::new(Observe {
                client,
                metrics: metrics.clone(),
            }),
            ip_rules: Arc::new(IpRules::new(
                &settings.ip_rules.allow,
                &settings.ip_rules.deny,
                "global",
                metrics.clone(),
            )),
            cors: crate::pipeline::cors::layer(&settings.cors),
            authn: Authn {
                auth: auth.clone(),
                graphql: true,
                client_cert_identity: settings.tls.client_cert_identity,
                failed_auth: crate::ratelimit::FailedAuth::new(
                    &settings.rate_limits,
                    metrics.clone(),
                )?
                .map(Arc::new),
            },
            ratelimit,
        };
        let persisted = crate::graphql::persisted::Persisted::new(&settings.graphql.persisted)?;
        // GraphiQL is useless where introspection is not served (an allow list without it).
        let graphiql = graphiql.filter(|_| persisted.introspection_allowed());
        let graphql = Arc::new(GraphqlService {
            schema,
            persisted,
            coalescer: graphql::service::coalescer(),
            settings: settings.graphql.clone(),
            request_budget: settings.server.request_budget,
            max_body_bytes: settings.server.max_body_bytes,
            metrics: metrics.clone(),
            graphiql_page: graphiql.as_ref().map(|assets| {
                Bytes::from(assets.page(&graphiql::Page {
                    endpoint: "/graphql",
                    // Subscriptions are not served yet (the live-homepage issue): GraphiQL
                    // must not be pointed at a WebSocket endpoint that answers 404.
                    subscription_endpoint: None,
                    headers: opts.graphiql_headers.as_deref(),
                    binary: surface.name,
                    example_query: surface.example_query,
                    introspection: settings.graphql.introspection,
                }))
            }),
        });
        let body_limit = BodyLimit {
            max_bytes: settings.server.max_body_bytes,
            timeout: settings.server.body_read_timeout,
        };
        let health = Arc::new(health::Health::new(
            upstream.clone(),
            auth.clone(),
            events.clone(),
        ));
        let scrape = metrics.clone().map(|metrics| {
            let scrape = Arc::new(metrics::Scrape {
                metrics,
                upstream: upstream.clone(),
                cache: cache.clone(),
                events: events.clone(),
            });
            Router::new()
                .route("/metrics", get(metrics::serve))
                .with_state(scrape)
        });

        let mut router = edge
            .around_service(
                graphql::service::router(graphql),
                body_limit,
                crate::ratelimit::Target::Graphql,
            )
            .merge(
                Router::new()
                    .route("/healthz", get(health::healthz))
                    .route("/readyz", get(health::readyz))
                    .with_state(health.clone()),
            )
            .merge(crate::proxy::router(
                &edge,
                &upstream,
                &settings.routes,
                settings.server.body_read_timeout,
            ));
        if let Some(assets) = &graphiql {
            router = router.merge(assets.router());
        }
        // The admin listener: readiness detail, and metrics, which then leave the public port.
        let mut admin_listener = None;
        match settings.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let mut admin = Router::new()
                    .route("/healthz", get(health::healthz))
                    .route("/readyz", get(health::readyz_detail))
                    .with_state(health.clone());
                if let Some(m) = scrape {
                    admin = admin.merge(m);
                }
                admin_listener = Some((l, edge.around_admin(admin)));
            }
            None => {
                if let Some(m) = scrape {
                    router = router.merge(m);
                }
            }
        }
        let router = edge.around_app(router);
        Ok(Self {
            listener,
            admin: admin_listener,
            router,
            health,
            server: settings.server,
            metrics,
            tls,
            cache,
            events,
            subscription,
            tasks: auth_tasks,
        })
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
        let health = self.health.clone();
        let opts = conn::ConnOptions {
            settings: self.server.clone(),
            metrics: self.metrics.clone(),
            tls: self.tls.clone(),
        };
        let tls_watch = self.tls.as_ref().map(tls::Tls::watch);
        // The admin listener lives exactly as long as the public one; it is for operators on a
        // private network and speaks plain HTTP.
        let admin = self.admin.map(|(l, r)| {
            let opts = conn::ConnOptions {
                tls: None,
                ..opts.clone()
            };
            tokio::spawn(conn::serve(l, r, opts, std::future::pending()))
        });
        let grace = self.server.shutdown_grace;
        let delay = self.server.shutdown_delay;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let stopping_at = Arc::new(parking_lot::Mutex::new(None::<tokio::time::Instant>));
        let stopping_mark = stopping_at.clone();
        let serve = conn::serve(self.listener, self.router, opts, async move {
            shutdown.await;
            // Readiness goes false first; the listener stays open for `shutdown_delay` so load
            // balancers notice and stop sending before connections are refused.
            health.ready.store(false, Ordering::Relaxed);
            tracing::info!(delay = ?delay, "shutting down: readiness is false");
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting; draining in-flight requests");
            *stopping_mark.lock() = Some(tokio::time::Instant::now());
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
        if let Some(watch) = tls_watch {
            watch.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
        self.subscription.stop().await;
        // Accepted work is confirmed or spooled already; what the bus still holds gets the rest
        // of a grace period (logged and counted if it cannot be settled).
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
