//! The system under test, in-process: one set of fixture backends for the whole benchmark, and a
//! fresh BFF per run, wired exactly like `tests/api/helpers.rs::spawn_app_with` does it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bff_fixtures::{Backend, BackendServer, Control, FaultPatch, FixtureOptions, Fixtures};
use shared::{
    Application, StartOptions,
    auth::TokenSigner,
    cache::{FragmentCache, FragmentKind, stats::KindSnapshot},
    config::{BackendsSettings, Secret, Settings},
    demo::fixture_backend,
    server::ServerError,
};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::scenario::{Bff, ENDPOINTS, Fault};

/// The HS256 secret every benchmark BFF trusts.
const SECRET: &str = "bench-secret-0123456789abcdef";

/// Token lifetime: far longer than any benchmark, so no token expires mid-run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// How long a stopped BFF gets to close its connections before we move on without it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Fixture backends plus the token signer that matches [`SECRET`].
pub(crate) struct Env {
    fixtures: Fixtures,
    signer: TokenSigner,
    /// `metrics.enabled` of every BFF (`--telemetry`); a scenario's `adjust` may override it.
    metrics: bool,
}

impl Env {
    pub(crate) async fn start(metrics: bool) -> Result<Self> {
        let fixtures = Fixtures::start(FixtureOptions::default())
            .await
            .context("start fixture backends")?;
        Ok(Self {
            fixtures,
            signer: TokenSigner::new(SECRET.as_bytes(), None, None),
            metrics,
        })
    }

    /// The shared fixture backends.
    pub(crate) fn fixtures(&self) -> &Fixtures {
        &self.fixtures
    }

    /// Injects `fault` on the shared fixtures (on top of [`Env::set_latency`]); endpoint faults
    /// are set up by [`Env::endpoint_instances`] instead.
    pub(crate) fn inject(&self, fault: Fault) {
        let (b, patch) = match fault {
            Fault::None | Fault::EndpointDown(_) => return,
            Fault::Stall(b) => (
                b,
                FaultPatch {
                    stall: Some(true),
                    ..Default::default()
                },
            ),
            Fault::Errors(b, rate) => (
                b,
                FaultPatch {
                    error_rate: Some(rate),
                    ..Default::default()
                },
            ),
        };
        self.control().set_fault(fixture_backend(b), patch);
    }

    /// For [`Fault::EndpointDown`]: [`ENDPOINTS`] separate instances of the backend over the
    /// shared data set, the first already stopped (its port refuses connections). `None` for
    /// other faults.
    pub(crate) async fn endpoint_instances(
        &self,
        fault: Fault,
    ) -> Result<Option<Vec<BackendServer>>> {
        let Fault::EndpointDown(b) = fault else {
            return Ok(None);
        };
        let mut instances = bff_fixtures::start_instances(
            fixture_backend(b),
            ENDPOINTS,
            &FixtureOptions::default(),
            self.fixtures.dataset(),
        )
        .await
        .context("start endpoint instances")?;
        if let Some(first) = instances.first_mut() {
            first.stop().await;
        }
        Ok(Some(instances))
    }

    pub(crate) fn control(&self) -> Control {
        self.fixtures.control()
    }

    /// Clears the counters and faults, then sets every backend to `latency` with no jitter.
    pub(crate) fn set_latency(&self, latency: Duration) {
        let control = self.control();
        control.reset();
        for b in Backend::ALL {
            control.set_fault(
                b,
                FaultPatch {
                    latency: Some(latency),
                    jitter: Some(Duration::ZERO),
                    ..Default::default()
                },
            );
        }
    }

    /// A bearer token for fixture user `user`.
    pub(crate) fn token(&self, user: &str) -> Result<String> {
        self.signer
            .sign(user, TOKEN_TTL_SECS)
            .with_context(|| format!("sign a token for {user}"))
    }

    /// Builds and starts a BFF of `bff` on 127.0.0.1:0 against these fixtures.
    pub(crate) async fn spawn_bff(
        &self,
        bff: Bff,
        adjust: impl FnOnce(&mut Settings),
    ) -> Result<RunningBff> {
        let surface = bff.surface();
        let mut settings = Settings::defaults(&(surface.defaults)());
        settings.listen = "127.0.0.1:0".parse()?;
        settings.backends = BackendsSettings::at(|b| self.fixtures.url(fixture_backend(b)));
        settings.auth.hs256_secret = Some(Secret::new(SECRET));
        settings.metrics.enabled = self.metrics;
        adjust(&mut settings);
        let app = Application::build(settings, &surface, StartOptions::default())
            .await
            .with_context(|| format!("build the {} BFF", bff.name()))?;
        let addr = app.local_addr()?;
        let cache = app.fragment_cache();
        let bus = app.event_bus();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(RunningBff {
            addr,
            cache,
            bus,
            stop: Some(stop),
            task,
        })
    }
}

/// A BFF serving on `addr` until [`RunningBff::stop`] (or drop, which signals without waiting).
pub(crate) struct RunningBff {
    addr: SocketAddr,
    cache: FragmentCache,
    bus: std::sync::Arc<dyn shared::events::EventBus>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningBff {
    /// The listener's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// The instance's event bus.
    pub(crate) fn bus(&self) -> &std::sync::Arc<dyn shared::events::EventBus> {
        &self.bus
    }

    pub(crate) fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// The BFF's fragment-cache counters, per kind in [`FragmentKind::ALL`] order.
    pub(crate) fn cache_counters(&self) -> [KindSnapshot; FragmentKind::ALL.len()] {
        let stats = self.cache.stats();
        FragmentKind::ALL.map(|k| stats.kind(k).snapshot())
    }

    /// Signals shutdown and waits (bounded) for the server to finish, so a stopped BFF does not
    /// keep eating CPU during the next run.
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await {
            Ok(joined) => joined
                .context("BFF task panicked")?
                .context("BFF server failed"),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for RunningBff {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
