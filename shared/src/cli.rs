//! The command line every BFF binary shares: `--config`, `--listen`, `--demo`, `--print-schema`,
//! `--healthcheck`, `--version`. A binary's `main` is one call to [`run`] with its [`Surface`], which also owns how
//! a failure is reported: one plain message (no backtrace, no repeated cause) and exit code 2 for
//! bad configuration or flags, 1 for anything else.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser};

#[cfg(feature = "demo")]
use crate::demo;
use crate::{
    compose::Composer,
    config::{ConfigError, LoadOptions, Settings},
    server::{Application, ConfigSource, ServerError, SettingsRewrite, StartOptions, Surface},
    upstream::Upstream,
};

/// The running demo environment. Without the `demo` feature (a production build) there is none:
/// the type has no values.
#[cfg(feature = "demo")]
type Demo = demo::Demo;
#[cfg(not(feature = "demo"))]
enum Demo {}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "GraphQL Backend-for-Frontend")]
pub struct Cli {
    /// TOML config file; every key can be overridden by `BFF_…` env vars (`BFF_BACKENDS__TOP10__URL`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, IP:PORT, e.g. 127.0.0.1:4000 (overrides `listen`).
    #[arg(long, value_name = "IP:PORT", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// Start the fixture backends in-process and print a demo token.
    #[arg(long)]
    pub demo: bool,
    /// Print the GraphQL schema (SDL) and exit.
    #[arg(long)]
    pub print_schema: bool,
    /// Print an Apollo persisted-query manifest of the operations in DIR (`*.graphql`, one named
    /// operation per file) and exit: the trusted documents of `graphql.persisted.mode = "allow_list"`.
    #[arg(long, value_name = "DIR")]
    pub persisted_manifest: Option<PathBuf>,
    /// Ask the running instance that the same config, env and `--listen` describe for its
    /// `/healthz` (on `admin.listen` when set, else `listen`) and exit 0 when it answers 200, 1
    /// otherwise: a container HEALTHCHECK needing no shell or curl in the image.
    #[arg(long)]
    pub healthcheck: bool,
}

/// `--listen`'s value: an IP and a port. A bare port is the common mistake, so the message says
/// what is expected rather than only that it failed.
fn listen_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| {
        let example = if raw.parse::<u16>().is_ok() {
            format!("127.0.0.1:{raw} (this machine only) or 0.0.0.0:{raw} (every interface)")
        } else {
            "127.0.0.1:4000".to_owned()
        };
        format!("expected an address as IP:PORT, e.g. {example}")
    })
}

/// The binary's command line: the shared flags under the binary's own name and version, and
/// where it listens and looks for its backends when nothing is configured.
pub fn command(surface: &Surface) -> clap::Command {
    Cli::command()
        .name(surface.name)
        .bin_name(surface.name)
        .version(surface.version)
        .after_help(format!(
            "With no config, listens on {} and calls the backends at fixture-backends' default \
             ports (REST 127.0.0.1:7001, gRPC 127.0.0.1:7002). Every config key, its default and \
             its BFF_… variable: docs/configuration.md",
            (surface.defaults)().listen
        ))
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
    #[cfg(feature = "demo")]
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    /// `--demo` on a build without the fixtures.
    #[error(
        "this build leaves out the demo and its fixture backends (built without the `demo` feature); run a development build, or point the BFF at real backends"
    )]
    NoDemo,
    /// Trace export could not be set up.
    #[error("cannot set up trace export: {0}")]
    Telemetry(#[from] crate::telemetry::otel::OtelError),
    /// `--healthcheck`: the instance did not answer 200.
    #[error(transparent)]
    Probe(#[from] crate::server::probe::ProbeError),
    /// An operation file for `--persisted-manifest` is unusable.
    #[error("{path}: {reason}")]
    Operation {
        /// The file (or folder).
        path: String,
        /// Why.
        reason: String,
    },
}

/// The Apollo persisted-query manifest of the operations in `dir`: every `*.graphql` file, in
/// name order, holding exactly one named operation (its body is the file's text, trimmed, so the
/// hash is the one a client computes from the same file).
pub fn persisted_manifest(dir: &std::path::Path) -> Result<serde_json::Value, RunError> {
    let failed = |path: &std::path::Path, reason: String| RunError::Operation {
        path: path.display().to_string(),
        reason,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| failed(dir, e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "graphql"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(failed(dir, "no *.graphql operation files".into()));
    }
    let mut ops = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| failed(&file, e.to_string()))?;
        let body = text.trim().to_owned();
        let doc =
            async_graphql::parser::parse_query(&body).map_err(|e| failed(&file, e.to_string()))?;
        let async_graphql::parser::types::DocumentOperations::Multiple(named) = &doc.operations
        else {
            return Err(failed(&file, "the operation needs a name".into()));
        };
        let [(name, op)] = named.iter().collect::<Vec<_>>()[..] else {
            return Err(failed(&file, "one operation per file".into()));
        };
        let ty = match op.node.ty {
            async_graphql::parser::types::OperationType::Query => "query",
            async_graphql::parser::types::OperationType::Mutation => "mutation",
            async_graphql::parser::types::OperationType::Subscription => "subscription",
        };
        ops.push((name.to_string(), ty.to_owned(), body));
    }
    Ok(crate::graphql::persisted::manifest_json(&ops))
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

/// Parses flags, loads settings and runs the server until Ctrl-C or SIGTERM; a failure is printed
/// once, plainly, and becomes the exit code (2: configuration or flags, 1: anything else).
pub async fn run(surface: Surface) -> ExitCode {
    // clap prints its own usage errors and exits 2; `--help`/`--version` exit 0.
    let cli = match command(&surface)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match serve(&surface, cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {}", surface.name, report(&e));
            match e {
                RunError::Config(_) | RunError::Operation { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// An error and its causes in one line, each cause once: a cause whose text its parent already
/// printed is skipped.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

async fn serve(surface: &Surface, cli: Cli) -> Result<(), RunError> {
    if cli.print_schema {
        print!("{}", sdl(surface)?);
        return Ok(());
    }
    if let Some(dir) = &cli.persisted_manifest {
        let manifest = persisted_manifest(dir)?;
        println!("{manifest:#}");
        return Ok(());
    }
    let opts = LoadOptions {
        file: cli.config.clone(),
        listen: cli.listen,
        env: std::env::vars().collect(),
    };
    let (mut settings, warnings) = Settings::load_reporting(&(surface.defaults)(), &opts)?;
    if cli.healthcheck {
        // Before logging is set up: the check prints one line and touches nothing else.
        let url = crate::server::probe::healthcheck(&settings).await?;
        println!("healthy: {url}");
        return Ok(());
    }
    let telemetry = crate::telemetry::init(&settings.log, &settings.telemetry.otlp, surface.name)?;
    // Found before logging could record them; logged now, so they are seen.
    for w in &warnings {
        tracing::warn!("{w}");
    }

    let demo = start_demo(cli.demo, &mut settings).await?;
    let mut start = demo_options(demo.as_ref());
    // SIGHUP and a change of the file reload it the same way, the demo's rewrite included.
    start.config = Some(ConfigSource {
        load: opts,
        adjust: demo_rewrite(demo.as_ref()),
    });
    let app = Application::build(settings, surface, start).await?;
    let addr = app.local_addr().map_err(ServerError::Serve)?;

    println!("{} listening on http://{addr}", surface.name);
    println!("  GraphQL   POST/GET http://{addr}/graphql  (GraphiQL: open it in a browser)");
    println!("  health    http://{addr}/healthz   readiness http://{addr}/readyz");
    if let Some(admin) = app.admin_addr() {
        println!("  admin     http://{admin}/readyz (backend detail)  http://{admin}/metrics");
    }
    if let Some(d) = &demo {
        print_demo(d);
    }
    app.run_until_stopped(shutdown_signal()).await?;
    if let Some(d) = demo {
        stop_demo(d).await;
    }
    telemetry.shutdown().await;
    Ok(())
}

/// The demo environment `--demo` asks for (the settings rewritten to use it).
#[cfg(feature = "demo")]
async fn start_demo(wanted: bool, settings: &mut Settings) -> Result<Option<Demo>, RunError> {
    Ok(if wanted {
        Some(demo::start(settings).await?)
    } else {
        None
    })
}

#[cfg(not(feature = "demo"))]
async fn start_demo(wanted: bool, _settings: &mut Settings) -> Result<Option<Demo>, RunError> {
    if wanted {
        return Err(RunError::NoDemo);
    }
    Ok(None)
}

/// GraphiQL pre-filled with the demo token, and the bus the demo's fixtures publish on.
#[cfg(feature = "demo")]
fn demo_options(demo: Option<&Demo>) -> StartOptions {
    StartOptions {
        graphiql_headers: demo.map(|d| {
            serde_json::json!({ "Authorization": format!("Bearer {}", d.token) }).to_string()
        }),
        events: demo.map(|d| d.events.clone()),
        config: None,
    }
}

/// The demo's rewrite of the settings, applied to each reloaded config too.
#[cfg(feature = "demo")]
fn demo_rewrite(demo: Option<&Demo>) -> Option<SettingsRewrite> {
    demo.map(|d| d.rewrite.clone())
}

#[cfg(not(feature = "demo"))]
fn demo_rewrite(_demo: Option<&Demo>) -> Option<SettingsRewrite> {
    None
}

#[cfg(not(feature = "demo"))]
fn demo_options(_demo: Option<&Demo>) -> StartOptions {
    StartOptions::default()
}

#[cfg(feature = "demo")]
fn print_demo(d: &Demo) {
    println!(
        "  fixtures  REST http://{}  gRPC http://{}",
        d.fixtures.rest_addr(),
        d.fixtures.grpc_addr()
    );
    println!("  fixture admin: {}/stats", d.fixtures.admin_url());
    println!("demo token: {}", d.token);
}

#[cfg(not(feature = "demo"))]
fn print_demo(d: &Demo) {
    match *d {}
}

#[cfg(feature = "demo")]
async fn stop_demo(d: Demo) {
    d.fixtures.stop().await;
}

#[cfg(not(feature = "demo"))]
async fn stop_demo(d: Demo) {
    match d {}
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A cause its parent already printed is not printed again ("Caused by" never repeats).
    #[test]
    fn a_report_names_each_cause_once() {
        let bind = ServerError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use"),
        };
        let text = report(&RunError::Server(bind));
        assert_eq!(
            text,
            "cannot listen on 127.0.0.1:4000: Address already in use"
        );
    }

    #[test]
    fn listen_wants_an_address_and_says_so_for_a_bare_port() {
        assert_eq!(
            listen_addr("0.0.0.0:4000"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 4000)))
        );
        let err = listen_addr("4000").unwrap_err();
        assert!(
            err.contains("127.0.0.1:4000") && err.contains("0.0.0.0:4000"),
            "{err}"
        );
        assert!(listen_addr("localhost").unwrap_err().contains("IP:PORT"));
    }
}
