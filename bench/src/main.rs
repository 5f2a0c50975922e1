//! `bff-bench`: starts the fixture backends and the BFFs in-process (one tokio multi-thread
//! runtime), drives closed-loop HTTP load per scenario and prints one Markdown table row per
//! scenario with the median over `--runs`. Owns the CLI and the run loop; what a scenario sends
//! lives in [`scenario`], how load is driven in [`load`].
//!
//! ```text
//! cargo run --release -p bff-bench -- [--scenario NAME|GROUP ...] [--duration 10s]
//!     [--concurrency N] [--events N] [--warmup 2s] [--runs 3] [--telemetry off|on] [--list]
//! ```
//!
//! `-s cache` runs the fragment-cache matrix, `-s issue3` the first homepage figures, `-s faults`
//! the resilience scenarios, `-s live` the live homepage: `-s defer` the incremental homepage and
//! `-s subscribers` 10,000 graphql-ws subscribers (`--concurrency` sets how many; their clients
//! run in a child process, this binary with the hidden `--swarm`; `-s subscribers-floor` and
//! `-s subscribers-floor-loop` run the same clients against a bare WebSocket server, the floor
//! under those figures). `--telemetry on` installs the
//! BFF's tracing stack (log filter `info`,
//! OpenTelemetry layer with a local provider, text log lines formatted into a sink) and keeps
//! metrics on; `off` (default) has no subscriber and `metrics.enabled = false`. The subscriber is
//! global, so on/off are compared across processes (`bench/overhead.sh`).

mod critical;
mod defer;
mod events;
mod floor;
mod harness;
mod hostile;
mod load;
mod payload;
mod procfs;
mod prom;
mod ratelimit;
mod report;
mod scenario;
mod stats;
mod subscribers;
mod tiers;
mod tls;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use reqwest::header::HeaderValue;

use crate::{
    harness::Env,
    load::Plan,
    report::{Columns, ScenarioResult, Snapshot},
    scenario::{ENDPOINTS, Fault, Kind, LoadSpec, Scenario},
};

/// `--telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Telemetry {
    /// No tracing subscriber, `metrics.enabled = false`.
    Off,
    /// The BFF's tracing stack with log lines formatted into a sink, metrics on.
    On,
}

/// Load benchmark of the BFFs against in-process fixture backends.
#[derive(Debug, Parser)]
#[command(name = "bff-bench")]
struct Cli {
    /// Scenario or group of scenarios to run (repeatable); default: all, in catalogue order.
    /// See --list.
    #[arg(long = "scenario", short = 's', value_name = "NAME|GROUP")]
    scenarios: Vec<String>,
    /// Measurement window of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before the window (connections, caches, allocator settle).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent clients for every load scenario; default: each scenario's own (8 or 32; the
    /// `subscribers` scenario's 10,000 subscribers).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Changes the `subscribers` scenarios push, one after another (each gives one "event →
    /// last subscriber" sample: with the default 50, its p99 is the slowest event).
    #[arg(long, default_value_t = subscribers::EVENTS)]
    events: usize,
    /// Runs per scenario; columns report the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `on`: the BFF binaries' tracing stack (filter `info`, OpenTelemetry layer with a local
    /// provider, text log lines written to a sink) and metrics on; `off`: neither.
    #[arg(long, value_enum, default_value_t = Telemetry::Off)]
    telemetry: Telemetry,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Internal: the `subscribers` scenario's client process (reads its spec on stdin).
    #[arg(long, hide = true)]
    swarm: bool,
}

/// Installs the same global subscriber as `shared::telemetry::init` with `log.level = "info"`,
/// text format and no OTLP export — except that log lines are formatted into `io::sink` rather
/// than stdout, so their cost is paid without flooding the terminal. The returned provider must
/// live as long as the benchmark.
fn install_telemetry() -> Result<impl Sized> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::{EnvFilter, prelude::*};

    let provider = shared::telemetry::otel::local_provider("bff-bench");
    shared::telemetry::otel::install_propagator();
    tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bff")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(std::io::sink),
        )
        .try_init()
        .context("install the tracing subscriber")?;
    Ok(provider)
}

// The same allocator as the `bff-web`/`bff-mobile` binaries, so the in-process BFF costs what it
// costs in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.swarm {
        return subscribers::swarm().await;
    }
    let catalogue = scenario::catalogue();
    if cli.list {
        println!("groups (-s GROUP):");
        for (group, about) in scenario::GROUPS {
            println!("  {group:<28} {about}");
        }
        println!("scenarios (-s NAME):");
        for s in &catalogue {
            println!("  {:<28} [{}] {}", s.name, s.groups.join(","), s.about);
        }
        return Ok(());
    }
    ensure!(cli.runs >= 1, "--runs must be at least 1");
    ensure!(!cli.duration.is_zero(), "--duration must be positive");
    ensure!(
        cli.concurrency != Some(0),
        "--concurrency must be at least 1"
    );
    let selected = select(&catalogue, &cli.scenarios)?;

    let _telemetry = match cli.telemetry {
        Telemetry::On => Some(install_telemetry()?),
        Telemetry::Off => None,
    };
    eprintln!("telemetry {:?}", cli.telemetry);
    let env = Env::start(cli.telemetry == Telemetry::On).await?;
    let mut results = Vec::new();
    let mut payload_table = None;
    let mut critical_table = None;
    let mut hostile_table = None;
    let mut tls_table = None;
    let mut ratelimit_table = None;
    let mut events_table = None;
    let mut tiers_table = None;
    let mut defer_table = None;
    let mut subscribers_table = None;
    let mut floor_tables = Vec::new();
    for s in selected {
        match &s.kind {
            Kind::Load(spec) => {
                let result = run_load(&env, s, spec, &cli).await?;
                results.push(result);
            }
            Kind::CriticalPath => {
                let measured = critical::measure(&env, cli.runs, cli.duration).await?;
                critical_table = Some(critical::render(&measured));
            }
            Kind::Payload => {
                eprintln!("[{}] one request per surface and encoding", s.name);
                let rows = payload::measure(&env).await?;
                payload_table = Some(payload::render(&rows));
            }
            Kind::Tls => {
                eprintln!("[{}] TLS vs plain", s.name);
                let report = tls::measure(&env, cli.duration).await?;
                tls_table = Some(tls::render(&report));
            }
            Kind::RateLimit => {
                eprintln!("[{}] rate limits", s.name);
                let report = ratelimit::measure(&env, cli.duration).await?;
                ratelimit_table = Some(ratelimit::render(&report));
            }
            Kind::Events => {
                eprintln!("[{}] events over RabbitMQ", s.name);
                let report = events::measure(&env).await?;
                events_table = Some(events::render(&report));
            }
            Kind::Tiers => {
                eprintln!("[{}] homepage from backends, L2 and L1", s.name);
                let tiers = tiers::measure(&env).await?;
                tiers_table = Some(tiers::render(&tiers));
            }
            Kind::Defer => {
                eprintln!("[{}] the web homepage with @defer, top 10 +300 ms", s.name);
                let report = defer::measure(&env).await?;
                defer_table = Some(defer::render(&report)?);
            }
            Kind::Subscribers => {
                let n = cli.concurrency.unwrap_or(subscribers::SUBSCRIBERS);
                eprintln!("[{}] {n} graphql-ws subscribers on one web BFF", s.name);
                let report = subscribers::measure(&env, n, cli.events).await?;
                subscribers_table = Some(subscribers::render(&report));
            }
            Kind::SubscribersFloor(design) => {
                let n = cli.concurrency.unwrap_or(subscribers::SUBSCRIBERS);
                eprintln!(
                    "[{}] {n} graphql-ws subscribers on the floor server",
                    s.name
                );
                let report = floor::measure(n, *design, cli.events).await?;
                floor_tables.push((s.name.clone(), subscribers::render(&report)));
            }
            Kind::Hostile => {
                eprintln!("[{}] hostile queries against one web BFF", s.name);
                let report = hostile::measure(&env).await?;
                hostile_table = Some(hostile::render(&report));
            }
        }
    }

    println!(
        "\n{} run(s) per scenario, {:?} warmup + {:?} measured; medians:\n",
        cli.runs, cli.warmup, cli.duration
    );
    if !results.is_empty() {
        print!("{}", report::render_table(&results));
        if let Some(faults) = report::render_fault_table(&results) {
            println!(
                "\nresilience (HTTP err = non-200 or transport error; GraphQL err = 200 with `errors`, some rows missing):\n"
            );
            print!("{faults}");
        }
        if let Some(cache) = report::render_cache_table(&results) {
            println!(
                "\nfragment cache, measurement window only (hit % = (hits + stale) / lookups):\n"
            );
            print!("{cache}");
        }
        println!();
        for r in &results {
            for v in r.verdicts() {
                println!("{v}");
            }
        }
        for r in &results {
            for n in &r.notes {
                println!("{}: {n}", r.name);
            }
        }
        for t in &scenario::RATIO_TARGETS {
            if let Some(v) = report::ratio_verdict(&results, t) {
                println!("{v}");
            }
        }
    }
    if let Some(table) = critical_table {
        println!(
            "\ncritical path (one client, backends +50 ms, cache off; row round and catalog from the fixtures' spans):\n\n{table}"
        );
    }
    if let Some(table) = tls_table {
        println!(
            "\nTLS termination (web BFF, 8 clients, CPU per request or connection for the whole process):\n\n{table}"
        );
    }
    if let Some(table) = ratelimit_table {
        println!(
            "\nrate limits (web BFF, `{{ __typename }}` for accuracy; CPU for the whole process):\n\n{table}"
        );
    }
    if let Some(table) = events_table {
        println!(
            "\nevents (RabbitMQ at 127.0.0.1:5672, web BFFs, fixtures publishing):\n\n{table}"
        );
    }
    if let Some(table) = tiers_table {
        println!(
            "\ncache tiers (signed-in web homepage, 100 users × 5 alternating rounds, one client, backends +2 ms; L2 = Redis at 127.0.0.1:6379 with L1 kept empty):\n\n{table}"
        );
    }
    if let Some(table) = defer_table {
        println!(
            "\n@defer (full web homepage, u1, cache off, backends +2 ms, one request at a time, alternating):\n\n{table}"
        );
    }
    if let Some(table) = subscribers_table {
        println!(
            "\nsubscribers (one web BFF with in-process fixtures and bus; the clients in a child process; CPU and RSS of the BFF's process):\n\n{table}"
        );
    }
    for (name, table) in floor_tables {
        println!(
            "\n{name} (the same clients against a bare tokio WebSocket server writing one pre-built frame to every socket; \"BFF\" is that server's process):\n\n{table}"
        );
    }
    if let Some(table) = hostile_table {
        println!("\nhostile queries (web BFF, 8 attackers + 1 normal client):\n\n{table}");
    }
    if let Some(table) = payload_table {
        println!("\npayload (user u1, one request each):\n\n{table}");
    }
    Ok(())
}

/// The scenarios named on the command line, in the order given, a group expanding to its
/// members in catalogue order; each scenario once. All of them for no names.
fn select<'a>(catalogue: &'a [Scenario], names: &[String]) -> Result<Vec<&'a Scenario>> {
    if names.is_empty() {
        return Ok(catalogue.iter().collect());
    }
    let mut selected: Vec<&Scenario> = Vec::new();
    for n in names {
        let found: Vec<&Scenario> = if scenario::GROUPS.iter().any(|(g, _)| g == n) {
            catalogue
                .iter()
                .filter(|s| s.groups.contains(&n.as_str()))
                .collect()
        } else {
            let s = catalogue.iter().find(|s| &s.name == n).with_context(|| {
                let known: Vec<_> = scenario::GROUPS
                    .iter()
                    .map(|(g, _)| *g)
                    .chain(catalogue.iter().map(|s| s.name.as_str()))
                    .collect();
                format!(
                    "unknown scenario or group `{n}` (known: {})",
                    known.join(", ")
                )
            })?;
            vec![s]
        };
        for s in found {
            if !selected.iter().any(|t| t.name == s.name) {
                selected.push(s);
            }
        }
    }
    Ok(selected)
}

/// Runs a load scenario `cli.runs` times, each against a fresh BFF and reset fixtures.
async fn run_load(env: &Env, s: &Scenario, spec: &LoadSpec, cli: &Cli) -> Result<ScenarioResult> {
    let concurrency = cli.concurrency.unwrap_or(spec.concurrency);
    let bodies: Vec<Bytes> = match spec.request {
        scenario::Request::PostDistinct => (0..4096)
            .map(|n| {
                serde_json::to_vec(
                    &serde_json::json!({ "query": spec.query, "extensions": { "n": n } }),
                )
                .map(Bytes::from)
            })
            .collect::<Result<_, _>>()?,
        _ => vec![Bytes::from(serde_json::to_vec(
            &serde_json::json!({ "query": spec.query }),
        )?)],
    };
    let hash = shared::graphql::persisted::sha256_hex(spec.query);
    let persisted_ext =
        serde_json::json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let auth = spec
        .users
        .iter()
        .map(|u| Ok(HeaderValue::try_from(format!("Bearer {}", env.token(u)?))?))
        .collect::<Result<Vec<_>>>()?;
    let mut runs = Vec::with_capacity(cli.runs);
    let mut notes = Vec::new();
    for run in 1..=cli.runs {
        env.set_latency(spec.latency);
        let instances = env.endpoint_instances(spec.fault).await?;
        let instances = instances.unwrap_or_default();
        let endpoint_urls: Vec<String> = instances.iter().map(|i| i.url()).collect();
        let (adjust, fault) = (spec.adjust, spec.fault);
        let bff = env
            .spawn_bff(spec.bff, move |settings| {
                adjust(settings);
                if let Fault::EndpointDown(b) = fault {
                    settings.backends.get_mut(b).endpoints = endpoint_urls;
                }
            })
            .await?;
        let client = reqwest::Client::builder()
            .timeout(load::REQUEST_TIMEOUT)
            .pool_max_idle_per_host(concurrency)
            .build()?;
        if spec.request == scenario::Request::PersistedGet {
            // Registered once (APQ), as a client does on its first use.
            let registered = client
                .post(bff.graphql_url())
                .json(&serde_json::json!({ "query": spec.query, "extensions": persisted_ext }))
                .send()
                .await?;
            ensure!(
                registered.status().is_success(),
                "{}: APQ registration failed",
                s.name
            );
        }
        let get_urls = if spec.request == scenario::Request::PersistedGet {
            let ext = persisted_ext.to_string();
            let ext: String = form_urlencoded::byte_serialize(ext.as_bytes()).collect();
            vec![format!("{}?extensions={ext}", bff.graphql_url())]
        } else {
            Vec::new()
        };
        let plan = Arc::new(Plan {
            url: bff.graphql_url(),
            bodies: bodies.clone(),
            get_urls,
            auth: auth.clone(),
            accept_encoding: spec.accept_encoding.map(HeaderValue::from_static),
            concurrency,
            warmup: cli.warmup,
            duration: cli.duration,
        });
        // One request up front: a misconfigured scenario should fail loudly, not report a
        // beautiful rps of instant errors. Faults are injected only after it, except a dead
        // endpoint, which is there from the start: there only a 200 is required.
        let first = load::send(&client, &plan, 0).await;
        let valid = if matches!(spec.fault, Fault::EndpointDown(_)) {
            first.http_ok
        } else {
            first.ok
        };
        if !valid {
            bail!(
                "{}: the first request failed ({}); is the scenario valid?",
                s.name,
                first.error.unwrap_or_default()
            );
        }
        env.inject(spec.fault);
        if spec.prime {
            let started = std::time::Instant::now();
            load::prime(&client, &plan)
                .await
                .with_context(|| format!("{}: priming the cache", s.name))?;
            eprintln!(
                "[{}] run {run}: cache primed with {} user(s) in {:.1} s",
                s.name,
                plan.auth.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let control = env.control();
        let endpoint_controls: Vec<_> = instances.iter().map(|i| i.control()).collect();
        let probe = || -> Result<Snapshot> {
            let endpoint_calls: [u64; ENDPOINTS] = std::array::from_fn(|i| {
                endpoint_controls
                    .get(i)
                    .map_or(0, |c| c.stats().total_calls())
            });
            Ok(Snapshot {
                cpu_us: procfs::cpu_time_us()?,
                upstream_calls: control.stats().total_calls() + endpoint_calls.iter().sum::<u64>(),
                endpoint_calls,
                cache: bff.cache_counters(),
            })
        };
        let (outcome, before, after) = load::drive(&client, plan, probe).await?;
        if let Fault::EndpointDown(b) = spec.fault {
            let note = endpoint_attempts(&client, &bff.metrics_url(), b.name(), &instances)
                .await
                .with_context(|| format!("{}: read the BFF's /metrics", s.name))?;
            notes.push(format!("run {run}: {note}"));
        }
        drop(client);
        bff.stop().await?;
        for mut i in instances {
            i.stop().await;
        }
        let columns = Columns::from_run(&outcome, before?, after?, procfs::peak_rss_kib()?);
        eprintln!(
            "[{}] run {run}/{}: {:.0} requests, {:.0} rps, p50 {:.1} ms, p99 {:.1} ms, {} errors (HTTP {:.2}%, GraphQL {:.2}%), {:.2} upstream/req, cache hit {:.1}%",
            s.name,
            cli.runs,
            columns.requests,
            columns.rps,
            columns.p50_ms,
            columns.p99_ms,
            columns.errors,
            columns.http_err_pct,
            columns.graphql_err_pct,
            columns.upstream_per_req,
            columns.cache.hit_pct
        );
        if let Some(error) = &outcome.first_error {
            eprintln!("[{}] run {run}: first error: {error}", s.name);
        }
        runs.push(columns);
    }
    env.set_latency(Duration::ZERO);
    Ok(ScenarioResult {
        name: s.name.clone(),
        concurrency,
        runs,
        targets: spec.targets.clone(),
        fault: spec.fault,
        notes,
    })
}

/// The BFF's attempts on each endpoint of `backend` since it started (first request, warmup
/// and window), by outcome, from its `/metrics`: e.g. `dead 127.0.0.1:41001: error 12; live …`.
async fn endpoint_attempts(
    client: &reqwest::Client,
    metrics_url: &str,
    backend: &str,
    instances: &[bff_fixtures::BackendServer],
) -> Result<String> {
    let resp = client.get(metrics_url).send().await?;
    ensure!(resp.status().is_success(), "status {}", resp.status());
    let text = resp.text().await?;
    let sums = prom::sum_by(
        &text,
        "bff_upstream_requests_total",
        ("backend", backend),
        &["endpoint", "outcome"],
    );
    let parts: Vec<String> = instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let addr = inst.addr().to_string();
            let by_outcome: Vec<String> = sums
                .iter()
                .filter(|(k, _)| k.first().is_some_and(|label| label.contains(&addr)))
                .map(|(k, n)| format!("{} {n:.0}", k.get(1).map_or("?", String::as_str)))
                .collect();
            let state = if i == 0 { "stopped" } else { "live" };
            let counts = if by_outcome.is_empty() {
                "no attempts".to_owned()
            } else {
                by_outcome.join(", ")
            };
            format!("{state} {addr}: {counts}")
        })
        .collect();
    if sums.is_empty() {
        bail!("no bff_upstream_requests_total samples for backend {backend}");
    }
    Ok(format!(
        "BFF attempts on {backend} (whole run): {}",
        parts.join("; ")
    ))
}
