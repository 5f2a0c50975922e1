//! The `events` scenario, against the real RabbitMQ at 127.0.0.1:5672 (an exchange and queues of
//! its own, deleted at the end):
//! - **invalidation latency**: two web BFF instances subscribed to the broker; the fixture
//!   services make ≥ 200 changes one after another (alternately a top 10 reorder and a title
//!   edit, each published by the service); for each, the time from the change until BOTH
//!   instances have dropped the stale fragment (their invalidation handler has run), observed by
//!   polling each instance's bus counters every millisecond (so the resolution is ~1 ms);
//! - **accept latency**: `reportProgress` one at a time (1,000 reports), answered once durable —
//!   the broker confirmed it — next to the same on an instance with the in-process bus, whose
//!   "accepted" is "in this process's memory" (what every instance answered before issue 21);
//! - **progress burst**: one BFF, the continue-watching consumer stopped: `reportProgress` from 32
//!   clients for 200 users — reports accepted per second and their latency, time until the broker
//!   confirmed them all — then the consumer starts and the time to drain the queue is measured;
//! - **spool**: the same instance kind cut from the broker by a proxy, spooling to disk (fsync'd,
//!   group commit): reports accepted per second with 32 clients, their latency, and the time to
//!   publish the spool once the link is restored.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use shared::{
    config::{EventsSettings, Secret},
    events::{EventBus, rabbit::RabbitBus},
};

use crate::{harness::Env, scenario::Bff, stats::percentile};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Changes measured.
const CHANGES: usize = 300;
/// Progress reports in the burst.
const REPORTS: usize = 20_000;
/// Reports sent one at a time for the accept latency.
const SEQUENTIAL: usize = 1_000;
/// Reports in the spool burst.
const SPOOLED: usize = 5_000;
const CLIENTS: usize = 32;
const DEADLINE: Duration = Duration::from_secs(60);

/// What the scenario measured.
#[derive(Debug)]
pub(crate) struct Report {
    changes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    reports: usize,
    accepted_per_sec: f64,
    burst_p50_ms: f64,
    burst_p99_ms: f64,
    confirm_s: f64,
    drain_s: f64,
    drained_per_sec: f64,
    memory_p50_ms: f64,
    memory_p99_ms: f64,
    durable_p50_ms: f64,
    durable_p99_ms: f64,
    spooled: usize,
    spool_per_sec: f64,
    spool_p50_ms: f64,
    spool_p99_ms: f64,
    replay_s: f64,
}

/// What one burst of reports measured.
struct Burst {
    seconds: f64,
    /// Per-request latency, microseconds, sorted.
    micros: Vec<u64>,
    refused: usize,
}

impl Burst {
    fn ms(&self, p: f64) -> f64 {
        percentile(&self.micros, p).unwrap_or(0) as f64 / 1000.0
    }
}

/// `n` reports to `url` from `clients` concurrent clients, round-robin over `tokens`.
async fn burst(url: &str, tokens: &[String], n: usize, clients: usize) -> Result<Burst> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, tokens, next) = (
                client.clone(),
                url.to_owned(),
                tokens.to_vec(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut refused = 0usize;
                let mut micros = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return (refused, micros);
                    }
                    let body = serde_json::json!({
                        "query": "mutation($p: Int!) { reportProgress(titleId: \"t1\", positionSeconds: $p) { accepted } }",
                        "variables": { "p": (i / tokens.len()) % 3000 },
                    });
                    let sent = Instant::now();
                    let ok = match client
                        .post(&url)
                        .bearer_auth(&tokens[i % tokens.len()])
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) => r
                            .json::<serde_json::Value>()
                            .await
                            .is_ok_and(|v| v["data"]["reportProgress"]["accepted"] == true),
                        Err(_) => false,
                    };
                    micros.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                    if !ok {
                        refused += 1;
                    }
                }
            })
        })
        .collect();
    let mut refused = 0;
    let mut micros = Vec::with_capacity(n);
    for w in workers {
        let (r, m) = w.await.context("a client task")?;
        refused += r;
        micros.extend(m);
    }
    micros.sort_unstable();
    Ok(Burst {
        seconds: started.elapsed().as_secs_f64(),
        micros,
        refused,
    })
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub(crate) async fn measure(env: &Env) -> Result<Report> {
    let exchange = format!("bffbench.{}", uuid::Uuid::new_v4().simple());
    let events = EventsSettings {
        url: Some(Secret::new(BROKER)),
        progress_queue: format!("{exchange}.progress"),
        exchange: exchange.clone(),
        outbox_capacity: REPORTS * 2,
        ..EventsSettings::default()
    };
    let services: Arc<dyn EventBus> = Arc::new(RabbitBus::start(
        BROKER,
        &shared::events::options(&events),
        "bench-fixtures",
    )?);
    let live = env.fixtures().control().live().clone();
    live.attach(services.clone());
    wait("the services' bus", || services.status().connected).await?;

    let result = run(env, &events, &live).await;
    cleanup(&events).await;
    result
}

async fn run(env: &Env, events: &EventsSettings, live: &Arc<bff_fixtures::Live>) -> Result<Report> {
    // Invalidation latency on two instances.
    let a = env
        .spawn_bff(Bff::Web, |s| s.events = events.clone())
        .await?;
    let b = env
        .spawn_bff(Bff::Web, |s| s.events = events.clone())
        .await?;
    for bff in [&a, &b] {
        wait("an instance's subscription", || {
            let s = bff.bus().status();
            s.connected && s.consumers >= 1
        })
        .await?;
    }
    let titles = env.fixtures().dataset();
    let mut micros = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let before = [a.bus().status().consumed, b.bus().status().consumed];
        let started = Instant::now();
        if i % 2 == 0 {
            live.rotate_top10("US");
        } else {
            let t = &titles.titles()[i % titles.titles().len()];
            live.edit_title(&t.id, &format!("{} (edit {i})", t.name));
        }
        wait("both instances to invalidate", || {
            a.bus().status().consumed > before[0] && b.bus().status().consumed > before[1]
        })
        .await?;
        micros.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    micros.sort_unstable();
    let ms = |p: f64| percentile(&micros, p).unwrap_or(0) as f64 / 1000.0;
    let (p50_ms, p99_ms) = (ms(50.0), ms(99.0));
    let max_ms = micros.last().copied().unwrap_or(0) as f64 / 1000.0;
    eprintln!(
        "[events] invalidation on 2 instances over {CHANGES} changes: p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms, max {max_ms:.1} ms"
    );
    b.stop().await?;

    // Progress burst into one BFF, consumer stopped.
    live.stop_progress_consumer().await;
    let handled_before = {
        let s = live.progress_stats();
        s.applied + s.superseded
    };
    let tokens: Vec<String> = (1..=200)
        .map(|u| env.token(&format!("u{u}")))
        .collect::<Result<_>>()?;
    let url = a.graphql_url();

    // Accept latency, one report at a time: durable (confirmed) vs in memory (in-process bus).
    let durable = burst(&url, &tokens, SEQUENTIAL, 1).await?;
    ensure!(durable.refused == 0, "{} reports refused", durable.refused);
    let memory_bff = env.spawn_bff(Bff::Web, |_| {}).await?;
    let memory = burst(&memory_bff.graphql_url(), &tokens, SEQUENTIAL, 1).await?;
    memory_bff.stop().await?;
    eprintln!(
        "[events] accept latency, one at a time: confirmed by the broker p50 {:.2} ms p99 {:.2} ms; in memory (in-process bus) p50 {:.2} ms p99 {:.2} ms",
        durable.ms(50.0),
        durable.ms(99.0),
        memory.ms(50.0),
        memory.ms(99.0)
    );

    let confirmed_before = a.bus().status().confirmed;
    let started = Instant::now();
    let load = burst(&url, &tokens, REPORTS, CLIENTS).await?;
    let refused = load.refused;
    let accept_s = load.seconds;
    ensure!(refused == 0, "{refused} progress reports were not accepted");
    wait("the broker to confirm every report", || {
        a.bus().status().confirmed - confirmed_before >= REPORTS as u64
    })
    .await?;
    let confirm_s = started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    live.start_progress_consumer(Duration::ZERO)
        .await
        .map_err(anyhow::Error::msg)?;
    // Last writer wins: a report older than one applied for its user is handled as superseded.
    let target = handled_before + (SEQUENTIAL + REPORTS) as u64;
    ensure!(
        live.wait_until(DEADLINE, |l| {
            let s = l.progress_stats();
            s.applied + s.superseded >= target
        })
        .await,
        "the consumer did not drain the queue in time"
    );
    let drain_s = drain_started.elapsed().as_secs_f64();
    a.stop().await?;

    // The spool: an instance cut from the broker by a proxy.
    let proxy = bff_fixtures::proxy::TcpProxy::start("127.0.0.1:5672".parse()?).await?;
    let spool_dir =
        std::env::temp_dir().join(format!("bff-bench-spool-{}", uuid::Uuid::new_v4().simple()));
    let mut cut_events = events.clone();
    cut_events.url = Some(Secret::new(format!(
        "amqp://guest:guest@{}/%2f",
        proxy.addr()
    )));
    cut_events.spool_dir = Some(spool_dir.clone());
    let c = env.spawn_bff(Bff::Web, |s| s.events = cut_events).await?;
    wait("the spooling instance's link", || {
        c.bus().status().connected
    })
    .await?;
    proxy.cut();
    wait("the link to drop", || !c.bus().status().connected).await?;
    let spool = burst(&c.graphql_url(), &tokens, SPOOLED, CLIENTS).await?;
    ensure!(
        spool.refused == 0,
        "{} reports refused while spooling",
        spool.refused
    );
    ensure!(
        c.bus().status().spool_depth == SPOOLED as u64,
        "every report is in the spool"
    );
    let replay_started = Instant::now();
    proxy.restore();
    wait("the spool to be published", || {
        c.bus().status().spool_depth == 0
    })
    .await?;
    let replay_s = replay_started.elapsed().as_secs_f64();
    eprintln!(
        "[events] spool: {SPOOLED} reports accepted at {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); published in {replay_s:.2} s once the link was back",
        SPOOLED as f64 / spool.seconds,
        spool.ms(50.0),
        spool.ms(99.0)
    );
    c.stop().await?;
    let _ = std::fs::remove_dir_all(&spool_dir);
    live.stop_progress_consumer().await;
    let report = Report {
        changes: CHANGES,
        p50_ms,
        p99_ms,
        max_ms,
        reports: REPORTS,
        accepted_per_sec: REPORTS as f64 / accept_s,
        burst_p50_ms: load.ms(50.0),
        burst_p99_ms: load.ms(99.0),
        confirm_s,
        drain_s,
        drained_per_sec: REPORTS as f64 / drain_s,
        memory_p50_ms: memory.ms(50.0),
        memory_p99_ms: memory.ms(99.0),
        durable_p50_ms: durable.ms(50.0),
        durable_p99_ms: durable.ms(99.0),
        spooled: SPOOLED,
        spool_per_sec: SPOOLED as f64 / spool.seconds,
        spool_p50_ms: spool.ms(50.0),
        spool_p99_ms: spool.ms(99.0),
        replay_s,
    };
    eprintln!("[events] {report:?}");
    Ok(report)
}

/// Deletes the scenario's queues and exchange.
async fn cleanup(events: &EventsSettings) {
    shared::events::rabbit::delete_topology(BROKER, &events.exchange, &events.progress_queue).await;
}

pub(crate) fn render(r: &Report) -> String {
    format!(
        "| measure | value |\n|---|---|\n\
         | change → stale fragment gone on both instances, p50 ({} changes) | {:.1} ms |\n\
         | same, p99 | {:.1} ms |\n\
         | same, max | {:.1} ms |\n\
         | reportProgress one at a time, accepted once the broker confirmed it: p50 / p99 | {:.2} / {:.2} ms |\n\
         | same on an in-process bus (accepted = in memory, as before issue 21): p50 / p99 | {:.2} / {:.2} ms |\n\
         | progress reports accepted by one BFF, consumer stopped ({} reports, {CLIENTS} clients) | {:.0} /s (p50 {:.2} ms, p99 {:.2} ms) |\n\
         | time until the broker confirmed all of them (from the first report) | {:.2} s |\n\
         | consumer restarted: time to drain the queue | {:.2} s ({:.0} /s) |\n\
         | broker cut, reports spooled to disk ({} reports, {CLIENTS} clients) | {:.0} /s (p50 {:.2} ms, p99 {:.2} ms) |\n\
         | link restored: time to publish the whole spool | {:.2} s |\n",
        r.changes,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.durable_p50_ms,
        r.durable_p99_ms,
        r.memory_p50_ms,
        r.memory_p99_ms,
        r.reports,
        r.accepted_per_sec,
        r.burst_p50_ms,
        r.burst_p99_ms,
        r.confirm_s,
        r.drain_s,
        r.drained_per_sec,
        r.spooled,
        r.spool_per_sec,
        r.spool_p50_ms,
        r.spool_p99_ms,
        r.replay_s
    )
}
