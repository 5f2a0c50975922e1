//! The per-config half of the server: everything built from [`Settings`] that a config reload
//! replaces — the public router (the pipeline's stages, the GraphQL service with its schema and
//! composer, the pass-through routes, GraphiQL, health) and the admin router, with the parts they
//! hold (backends, identity providers, rate limiters, persisted operations). A new stack is built
//! beside the running one, keeping the parts whose settings did not change (and the APQ hashes
//! clients registered), and swapped in whole
//! by `super::reload`; a request is served start to end by the stack it arrived on.
//!
//! What lives as long as the process — the listeners, the metrics registry, the fragment cache,
//! the event bus and this instance's subscription, readiness's own state — is [`Process`], over
//! which every stack is built. Does not own the listeners or the connection stage (`super`).

use std::sync::Arc;

use axum::{Router, routing::get};
use bytes::Bytes;

use super::{ServerError, Surface, graphiql, health, metrics};
use crate::{
    auth::Authenticator,
    cache::FragmentCache,
    compose::Composer,
    config::{RateLimitSettings, Settings, same},
    graphql::{self, service::GraphqlService},
    pipeline::{
        Edge, authn::Authn, client_addr::TrustedProxies, ip_rules::IpRules, limits::BodyLimit,
        observe::Observe,
    },
    ratelimit::{FailedAuth, RateLimiter},
    telemetry::metrics::Metrics,
    upstream::Upstream,
};

/// What every stack is built over and no reload replaces.
pub(crate) struct Process {
    /// The binary's schema, name and defaults.
    pub(crate) surface: Surface,
    /// The binary's client name (`web`, `mobile`).
    pub(crate) client: &'static str,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// The fragment cache: its entries outlive reloads (new TTLs apply to them).
    pub(crate) cache: FragmentCache,
    pub(crate) events: Arc<dyn crate::events::EventBus>,
    /// Progress reports not yet applied by the service (read-your-writes), fed by the
    /// subscription.
    pub(crate) recent: Arc<crate::compose::progress::RecentProgress>,
    /// Readiness's own state (draining, reachability probes).
    pub(crate) instance: Arc<health::Instance>,
    /// Headers GraphiQL starts with (`--demo`'s token).
    pub(crate) graphiql_headers: Option<String>,
    /// The live doors' process part: running subscriptions and connection counts outlive a
    /// reload (a reload's new limits apply to new connections).
    pub(crate) live: Arc<crate::live::Live>,
}

/// The identity providers of one `auth.*`, with their key-refresh tasks, which stop when the
/// last stack using them is dropped.
struct Providers {
    auth: Arc<Authenticator>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Providers {
    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One config's routers and the parts they hold.
pub(crate) struct Stack {
    /// The settings it was built from (the restart-only keys at their running values).
    pub(crate) settings: Arc<Settings>,
    /// The public router, with every stage around it.
    pub(crate) router: Router,
    /// The admin listener's router, when `admin.listen` is set.
    pub(crate) admin: Option<Router>,
    upstream: Upstream,
    providers: Arc<Providers>,
    ratelimit: Option<Arc<RateLimiter>>,
    failed_auth: Option<Arc<FailedAuth>>,
    /// GraphiQL's files, when enabled.
    graphiql: Option<graphiql::GraphiqlAssets>,
    /// The GraphQL service (its registered APQ hashes carry over).
    graphql: Arc<GraphqlService>,
}

/// `rate_limits` without its policies: what the failed-authentication limit is built from.
fn failed_auth_part(s: &RateLimitSettings) -> RateLimitSettings {
    RateLimitSettings {
        policies: Vec::new(),
        ..s.clone()
    }
}

impl Stack {
    /// Builds the stack for `settings` over `process`. With `previous` (a reload), its parts
    /// whose settings are the same are kept rather than rebuilt: each unchanged backend (breaker,
    /// retry budget, endpoint health, connection pool), the rate limiters (their counters) and
    /// the identity providers (their key sets).
    pub(crate) fn build(
        settings: Arc<Settings>,
        process: &Process,
        previous: Option<&Stack>,
    ) -> Result<Self, ServerError> {
        let metrics = &process.metrics;
        let client = process.client;
        let upstream = match previous {
            Some(p) => p
                .upstream
                .reconfigured(&settings.backends, metrics.clone())?,
            None => Upstream::new(&settings.backends, metrics.clone())?,
        };
        let ratelimit = match previous
            .filter(|p| same(&p.settings.rate_limits, &settings.rate_limits))
        {
            Some(p) => p.ratelimit.clone(),
            None => RateLimiter::new(&settings.rate_limits, client, metrics.clone())?.map(Arc::new),
        };
        let failed_auth = match previous.filter(|p| {
            same(
                &failed_auth_part(&p.settings.rate_limits),
                &failed_auth_part(&settings.rate_limits),
            )
        }) {
            Some(p) => p.failed_auth.clone(),
            None => FailedAuth::new(&settings.rate_limits, metrics.clone())?.map(Arc::new),
        };
        let providers = match previous.filter(|p| same(&p.settings.auth, &settings.auth)) {
            Some(p) => p.providers.clone(),
            None => {
                let auth = Arc::new(Authenticator::new(&settings.auth));
                let tasks = auth.start();
                Arc::new(Providers { auth, tasks })
            }
        };
        let auth = providers.auth.clone();

        let composer = Composer::new(
            upstream.clone(),
            process.cache.clone(),
            Arc::new(settings.profile.clone()),
        )
        .with_access(crate::compose::Access {
            mutation_scopes: settings.auth.mutation_scopes.clone(),
            subscription_scopes: settings.auth.subscription_scopes.clone(),
        })
        .with_events(crate::compose::progress::Events {
            bus: process.events.clone(),
            source: process.surface.name,
            recent: process.recent.clone(),
        });
        let schema = (process.surface.schema)(composer, &settings.graphql);
        // Located again only when `graphiql.*` changed (locating logs what is missing).
        let assets = match previous.filter(|p| same(&p.settings.graphiql, &settings.graphiql)) {
            Some(p) => p.graphiql.clone(),
            None => settings
                .graphiql
                .enabled
                .then(|| graphiql::GraphiqlAssets::locate(settings.graphiql.assets_dir.as_deref())),
        };
        let graphiql = assets.clone();
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
                failed_auth: failed_auth.clone(),
            },
            ratelimit: ratelimit.clone(),
        };
        let persisted = match previous {
            Some(p) => p
                .graphql
                .persisted
                .reconfigured(&settings.graphql.persisted)?,
            None => crate::graphql::persisted::Persisted::new(&settings.graphql.persisted)?,
        };
        // GraphiQL is useless where introspection is not served (an allow list without it).
        let graphiql = graphiql.filter(|_| persisted.introspection_allowed());
        let joiner = Arc::new(crate::live::Joiner {
            live: process.live.clone(),
            schema: schema.clone(),
            settings: settings.subscriptions.clone(),
            hide_suggestions: !settings.graphql.introspection,
            budget: settings.server.request_budget,
        });
        let graphql = Arc::new(GraphqlService {
            subscriptions: settings
                .subscriptions
                .enabled
                .then(|| joiner.clone() as Arc<dyn crate::graphql::service::SubscriptionDoor>),
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
                    // Only where the WebSocket door is open: never a URL that answers 404.
                    subscription_endpoint: settings.subscriptions.enabled.then_some("/graphql/ws"),
                    headers: process.graphiql_headers.as_deref(),
                    binary: process.surface.name,
                    example_query: process.surface.example_query,
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
            auth,
            process.events.clone(),
            process.instance.clone(),
        ));
        let scrape = metrics.clone().map(|metrics| {
            let scrape = Arc::new(metrics::Scrape {
                metrics,
                upstream: upstream.clone(),
                cache: process.cache.clone(),
                events: process.events.clone(),
                live: process.live.clone(),
            });
            Router::new()
                .route("/metrics", get(metrics::serve))
                .with_state(scrape)
        });

        let mut router = edge
            .around_service(
                graphql::service::router(graphql.clone()),
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
        if settings.subscriptions.enabled {
            let live = Arc::new(crate::live::LiveService {
                joiner,
                graphql: graphql.clone(),
                auth: providers.auth.clone(),
                failed_auth: failed_auth.clone(),
                settings: settings.subscriptions.clone(),
                live: process.live.clone(),
                upgraded_tcp: super::conn::upgraded_tcp,
            });
            router = router.merge(edge.around_service(
                crate::live::router(live),
                body_limit,
                crate::ratelimit::Target::Graphql,
            ));
        }
        if let Some(assets) = &graphiql {
            router = router.merge(assets.router());
        }
        // The admin listener: readiness detail, and metrics, which then leave the public port.
        let admin = match settings.admin.listen {
            Some(_) => {
                let mut admin = Router::new()
                    .route("/healthz", get(health::healthz))
                    .route("/readyz", get(health::readyz_detail))
                    .with_state(health);
                if let Some(m) = scrape {
                    admin = admin.merge(m);
                }
                Some(edge.around_admin(admin))
            }
            None => {
                if let Some(m) = scrape {
                    router = router.merge(m);
                }
                None
            }
        };
        let router = edge.around_app(router);
        Ok(Self {
            settings,
            router,
            admin,
            upstream,
            providers,
            ratelimit,
            failed_auth,
            graphiql: assets,
            graphql,
        })
    }

    /// Stops the identity providers' key refreshes (at shutdown: requests still being answered
    /// keep the keys they have).
    pub(crate) fn stop(&self) {
        self.providers.stop();
    }
}
