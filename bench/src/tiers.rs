//! The `tiers` scenario: what one signed-in web homepage (the full query, `WEB_FULL`) costs an instance whose fragments come
//! from the backends (cold: `cache.enabled = false`), from the shared L2 tier in Redis (L1 kept
//! empty: `cache.max_bytes = 1`, so every fragment is read from Redis at 127.0.0.1:6379 under a
//! key prefix of this run's own), and from its own L1 (warm) — measured side by side in one run,
//! in alternating rounds, one client at a time (latency is the homepage's own, not queueing).
//! Per homepage: backend calls (the fixtures' counters), latency p50/p99, CPU of the whole
//! process (BFF, fixtures and client alike), and compressed bytes read from L2.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bff_fixtures::Backend;
use shared::config::Secret;

use crate::{
    harness::{Env, RunningBff},
    procfs,
    scenario::{Bff, WEB_FULL},
    stats::percentile,
};

const REDIS: &str = "redis://127.0.0.1:6379";
/// Distinct users: each round asks every one's homepage once.
const USERS: usize = 100;
/// Rounds per tier, alternating (cold, L2, L1, cold, …).
const ROUNDS: usize = 5;
/// What each backend call takes (a LAN backend).
const BACKEND_LATENCY: Duration = Duration::from_millis(2);

/// One tier's figures.
#[derive(Debug)]
pub(crate) struct Tier {
    name: &'static str,
    calls_per_homepage: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
    l2_bytes: f64,
}

/// Where the fragments come from.
#[derive(Clone, Copy)]
enum Source {
    Backends,
    L2,
    L1,
}

async fn start(env: &Env, source: Source, prefix: &str) -> Result<RunningBff> {
    let prefix = prefix.to_owned();
    env.spawn_bff(Bff::Web, move |s| {
        s.metrics.enabled = true;
        match source {
            Source::Backends => s.cache.enabled = false,
            Source::L2 => {
                s.cache.l2 = Some(Secret::new(REDIS));
                s.cache.l2_prefix = prefix;
                // Nothing fits in L1: every fragment is read from (and written to) Redis.
                s.cache.max_bytes = 1;
            }
            Source::L1 => {}
        }
    })
    .await
}

/// Asks every user's homepage once through `bff`; per-request microseconds.
async fn round(http: &reqwest::Client, bff: &RunningBff, tokens: &[String]) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        let started = Instant::now();
        let resp = http
            .post(bff.graphql_url())
            .bearer_auth(t)
            .json(&serde_json::json!({ "query": WEB_FULL }))
            .send()
            .await?;
        ensure!(resp.status() == 200, "homepage answered {}", resp.status());
        let body: serde_json::Value = resp.json().await?;
        ensure!(body.get("errors").is_none(), "homepage errors: {body}");
        out.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    Ok(out)
}

fn backend_calls(env: &Env) -> u64 {
    Backend::ALL
        .iter()
        .map(|b| env.control().stats_of(*b).calls)
        .sum()
}

async fn l2_bytes(http: &reqwest::Client, bff: &RunningBff) -> Result<f64> {
    let text = http.get(bff.metrics_url()).send().await?.text().await?;
    Ok(crate::prom::sum_by(
        &text,
        "bff_cache_l2_read_bytes_total",
        ("client", "web"),
        &[],
    )
    .values()
    .sum())
}

/// Runs the scenario.
pub(crate) async fn measure(env: &Env) -> Result<Vec<Tier>> {
    let prefix = format!("bffbench:tiers:{}:", std::process::id());
    env.set_latency(BACKEND_LATENCY);
    let tokens: Vec<String> = (1..=USERS)
        .map(|i| env.token(&format!("u{i}")))
        .collect::<Result<_>>()?;
    let http = reqwest::Client::new();
    let cold = start(env, Source::Backends, &prefix).await?;
    let l2 = start(env, Source::L2, &prefix).await?;
    let l1 = start(env, Source::L1, &prefix).await?;
    // Warm-up: the L2 instance fills Redis (its first round reads from the backends), the L1
    // instance its own memory; neither round is measured.
    round(&http, &l2, &tokens).await.context("fill L2")?;
    round(&http, &l1, &tokens).await.context("fill L1")?;
    round(&http, &cold, &tokens).await.context("cold warm-up")?;
    let tiers: [(&'static str, &RunningBff); 3] = [
        ("cold (backends)", &cold),
        ("L2 hit (Redis)", &l2),
        ("L1 hit", &l1),
    ];
    let mut micros: [Vec<u64>; 3] = Default::default();
    let mut cpu = [0u64; 3];
    let mut calls = [0u64; 3];
    let mut bytes = [0f64; 3];
    for _ in 0..ROUNDS {
        for (i, (_, bff)) in tiers.iter().enumerate() {
            let (calls0, cpu0, bytes0) = (
                backend_calls(env),
                procfs::cpu_time_us()?,
                l2_bytes(&http, bff).await?,
            );
            micros[i].extend(round(&http, bff, &tokens).await?);
            cpu[i] += procfs::cpu_time_us()? - cpu0;
            calls[i] += backend_calls(env) - calls0;
            bytes[i] += l2_bytes(&http, bff).await? - bytes0;
        }
    }
    let n = (USERS * ROUNDS) as f64;
    let mut out = Vec::new();
    for (i, (name, _)) in tiers.iter().enumerate() {
        micros[i].sort_unstable();
        out.push(Tier {
            name,
            calls_per_homepage: calls[i] as f64 / n,
            p50_ms: percentile(&micros[i], 50.0).unwrap_or(0) as f64 / 1000.0,
            p99_ms: percentile(&micros[i], 99.0).unwrap_or(0) as f64 / 1000.0,
            cpu_us: cpu[i] as f64 / n,
            l2_bytes: bytes[i] / n,
        });
    }
    for b in [cold, l2, l1] {
        b.stop().await?;
    }
    env.set_latency(Duration::ZERO);
    clear(&prefix).await;
    Ok(out)
}

/// Deletes this run's L2 keys.
async fn clear(prefix: &str) {
    let Ok(client) = redis::Client::open(REDIS) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

/// The Markdown table.
pub(crate) fn render(tiers: &[Tier]) -> String {
    let mut s = String::from(
        "| homepage from | backend calls / homepage | p50 ms | p99 ms | CPU µs / homepage (whole process) | L2 bytes read / homepage |\n|---|---|---|---|---|---|\n",
    );
    for t in tiers {
        s.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            t.name, t.calls_per_homepage, t.p50_ms, t.p99_ms, t.cpu_us, t.l2_bytes
        ));
    }
    s
}
