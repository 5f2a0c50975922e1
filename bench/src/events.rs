//! The `events` scenario, against the real RabbitMQ at 127.0.0.1:5672 (an exchange and queues of
//! its own, deleted at the end):
//! - **invalidation latency**: two web BFF instances subscribed to the broker; the fixture
//!   services make ≥ 200 changes one after another (alternately a top 10 reorder and a title
//!   edit, each published by the service); for each, the time from the change until BOTH
//!   instances have dropped the stale fragment (their invalidation handler has run), observed by
//!   polling each instance's bus counters every millisecond (so the resolution is ~1 ms);
//! - **progress burst**: one BFF, the continue-watching consumer stopped: `reportProgress` from 32
//!   clients for 200 users — reports accepted per second, time until the broker confirmed them
//!   all — then the consumer starts and the time to drain the queue is measured.

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
    confirm_s: f64,
    drain_s: f64,
    drained_per_sec: f64,
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let tokens: Vec<String> = (1..=200)
        .map(|u| env.token(&format!("u{u}")))
        .collect::<Result<_>>()?;
    let url = a.graphql_url();
    let confirmed_before = a.bus().status().confirmed;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, tokens, next) =
                (client.clone(), url.clone(), tokens.clone(), next.clone());
            tokio::spawn(async move {
                let mut refused = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= REPORTS {
                        return refused;
                    }
                    let body = serde_json::json!({
                        "query": "mutation($p: Int!) { reportProgress(titleId: \"t1\", positionSeconds: $p) { accepted } }",
                        "variables": { "p": (i / tokens.len()) % 3000 },
                    });
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
                    if !ok {
                        refused += 1;
                    }
                }
            })
        })
        .collect();
    let mut refused = 0;
    for w in workers {
        refused += w.await.context("a client task")?;
    }
    let accept_s = started.elapsed().as_secs_f64();
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
    let target = handled_before + REPORTS as u64;
    ensure!(
        live.wait_until(DEADLINE, |l| {
            let s = l.progress_stats();
            s.applied + s.superseded >= target
        })
        .await,
        "the consumer did not drain the queue in time"
    );
    let drain_s = drain_started.elapsed().as_secs_f64();
    live.stop_progress_consumer().await;
    a.stop().await?;
    let report = Report {
        changes: CHANGES,
        p50_ms,
        p99_ms,
        max_ms,
        reports: REPORTS,
        accepted_per_sec: REPORTS as f64 / accept_s,
        confirm_s,
        drain_s,
        drained_per_sec: REPORTS as f64 / drain_s,
    };
    eprintln!("[events] {report:?}");
    Ok(report)
}

/// Deletes the scenario's queues and exchange.
async fn cleanup(events: &EventsSettings) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) = lapin::Connection::connect(BROKER, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [
            events.progress_queue.clone(),
            format!("{}.dlq", events.progress_queue),
        ] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(
                events.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

pub(crate) fn render(r: &Report) -> String {
    format!(
        "| measure | value |\n|---|---|\n\
         | change → stale fragment gone on both instances, p50 ({} changes) | {:.1} ms |\n\
         | same, p99 | {:.1} ms |\n\
         | same, max | {:.1} ms |\n\
         | progress reports accepted by one BFF, consumer stopped ({} reports, {CLIENTS} clients) | {:.0} /s |\n\
         | time until the broker confirmed all of them (from the first report) | {:.2} s |\n\
         | consumer restarted: time to drain the queue | {:.2} s ({:.0} /s) |\n",
        r.changes,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.reports,
        r.accepted_per_sec,
        r.confirm_s,
        r.drain_s,
        r.drained_per_sec
    )
}
