//! The command line every BFF binary shares: `--config`, `--listen`, `--demo`, `--print-schema`.
//! A binary's `main` is one call to [`run`] with its [`Surface`].

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::{
    compose::Composer,
    config::{ConfigError, LoadOptions, Settings},
    demo,
    server::{Application, ServerError, StartOptions, Surface},
    upstream::Upstream,
};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(version, about = "GraphQL Backend-for-Frontend")]
pub struct Cli {
    /// TOML config file; every key can be overridden by `BFF_…` env vars (`BFF_BACKENDS__TOP10__URL`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Start the fixture backends in-process and print a demo token.
    #[arg(long)]
    pub demo: bool,
    /// Print the GraphQL schema (SDL) and exit.
    #[arg(long)]
    pub print_schema: bool,
}

/// Why a binary could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Server failure.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Demo set-up failure.
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    /// Trace export could not be set up.
    #[error("cannot set up trace export: {0}")]
    Telemetry(#[from] crate::telemetry::otel::OtelError),
}

/// The SDL of a surface with default settings (what `--print-schema` prints).
pub fn sdl(surface: &Surface) -> Result<String, RunError> {
    let settings = Settings::defaults(&(surface.defaults)());
    let upstream = Upstream::new(&settings.backends, None).map_err(ServerError::from)?;
    let cache = crate::cache::FragmentCache::new(settings.cache.clone());
    let composer = Composer::new(
        upstream,
        cache,
        std::sync::Arc::new(settings.profile.clone()),
    );
    Ok((surface.schema)(composer, &settings.graphql).sdl())
}

/// Parses flags, loads settings and runs the server until Ctrl-C or SIGTERM.
pub async fn run(surface: Surface) -> Result<(), RunError> {
    let cli = Cli::parse();
    if cli.print_schema {
        print!("{}", sdl(&surface)?);
        return Ok(());
    }
    let opts = LoadOptions {
        file: cli.config.clone(),
        listen: cli.listen,
        env: std::env::vars().collect(),
    };
    let mut settings = Settings::load(&(surface.defaults)(), &opts)?;
    let telemetry = crate::telemetry::init(&settings.log, &settings.telemetry.otlp, surface.name)?;

    let demo = if cli.demo {
        Some(demo::start(&mut settings).await?)
    } else {
        None
    };
    let graphiql_headers = demo
        .as_ref()
        .map(|d| serde_json::json!({ "Authorization": format!("Bearer {}", d.token) }).to_string());
    let app = Application::build(settings, &surface, StartOptions { graphiql_headers }).await?;
    let addr = app.local_addr().map_err(ServerError::Serve)?;

    println!("{} listening on http://{addr}", surface.name);
    println!("  GraphQL   POST/GET http://{addr}/graphql  (GraphiQL: open it in a browser)");
    println!("  health    http://{addr}/healthz   readiness http://{addr}/readyz");
    if let Some(d) = &demo {
        println!(
            "  fixtures  REST http://{}  gRPC http://{}",
            d.fixtures.rest_addr(),
            d.fixtures.grpc_addr()
        );
        println!("  fixture admin: {}/stats", d.fixtures.admin_url());
        println!("demo token: {}", d.token);
    }
    app.run_until_stopped(shutdown_signal()).await?;
    if let Some(d) = demo {
        d.fixtures.stop().await;
    }
    telemetry.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
