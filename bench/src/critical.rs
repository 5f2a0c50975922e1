//! The `critical-path` scenario: where a homepage's time goes when nothing queues. One client
//! sends homepages one after another with every backend at +50 ms; for each request the fixtures'
//! own call spans split its time into the two backend rounds and what the BFF adds around them.
//!
//! - **row round**: first row-source call received → last row-source call answered (profile and
//!   the row sources, all concurrent);
//! - **catalog**: the one `BatchGetTitles` call, received → answered;
//! - **BFF own** = end-to-end − row round − catalog: request parsing, the JWT, dispatch, the gap
//!   between the rounds (collecting ids, building the batch) and decoding, shaping and writing
//!   the answer. The issue-3 budget for it is the "+ 5 ms" of its p50 target.
//! - Its parts, on the same clock (the fixtures' spans, with the client's send and last byte
//!   placed on it): **before rows** (send → first row call received), **between rounds** (last row
//!   answer → catalog call received) and **after catalog** (catalog answer → last byte at the
//!   client). **Dispatch skew** (first → last row call received) is BFF time hidden inside the row
//!   round.
//!
//! The `*-latency50` load scenarios measure the same homepage under 8 clients in lock step, whose
//! answers queue for the machine's two cores; this one measures the path itself.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use bff_fixtures::Backend;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio::time::Instant;

use crate::{
    harness::Env,
    load,
    scenario::{Bff, MOBILE_FULL, WEB_FULL},
    stats::percentile,
};

/// The latency every backend gets.
const LATENCY: Duration = Duration::from_millis(50);
/// Unmeasured homepages per surface and run (connections, allocator, caches of the CPU).
const WARMUP_REQUESTS: usize = 10;
/// The issue-3 target for the end-to-end p50: two dependent rounds × 50 ms + 5 ms.
const TARGET_P50_MS: f64 = 105.0;
/// The "+ 5 ms" of that target: what the BFF may add to the two rounds.
const TARGET_OWN_MS: f64 = 5.0;

/// One homepage on the fixtures' clock (microseconds since the server set started): the client's
/// send and last byte, and the backend calls' spans between them.
#[derive(Debug, Clone, Copy)]
struct Split {
    sent: u64,
    first_row_start: u64,
    last_row_start: u64,
    last_row_end: u64,
    catalog_start: u64,
    catalog_end: u64,
    received: u64,
}

impl Split {
    fn total(&self) -> u64 {
        self.received.saturating_sub(self.sent)
    }

    fn rows(&self) -> u64 {
        self.last_row_end.saturating_sub(self.first_row_start)
    }

    fn catalog(&self) -> u64 {
        self.catalog_end.saturating_sub(self.catalog_start)
    }

    fn own(&self) -> u64 {
        self.total().saturating_sub(self.rows() + self.catalog())
    }

    /// Request sent → first row-source call received: HTTP, parsing, validation, the JWT, dispatch.
    fn before_rows(&self) -> u64 {
        self.first_row_start.saturating_sub(self.sent)
    }

    /// First → last row-source call received: how staggered the "concurrent" dispatch is (inside
    /// the row round, so not part of `own`).
    fn dispatch_skew(&self) -> u64 {
        self.last_row_start.saturating_sub(self.first_row_start)
    }

    /// Last row-source answer → catalog call received: decoding the rows, the id union, the batch.
    fn between_rounds(&self) -> u64 {
        self.catalog_start.saturating_sub(self.last_row_end)
    }

    /// Catalog answered → client holds the last byte: decoding titles, shaping, JSON, the write.
    fn after_catalog(&self) -> u64 {
        self.received.saturating_sub(self.catalog_end)
    }
}

/// All measured homepages of one surface.
#[derive(Debug)]
pub(crate) struct SurfaceResult {
    bff: Bff,
    splits: Vec<Split>,
}

/// Runs `runs` × (warmup + homepages for `duration`) per surface, a fresh BFF per run.
pub(crate) async fn measure(
    env: &Env,
    runs: usize,
    duration: Duration,
) -> Result<Vec<SurfaceResult>> {
    let token = env.token("u1")?;
    let client = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .build()?;
    let mut out = Vec::new();
    for (bff, query) in [(Bff::Web, WEB_FULL), (Bff::Mobile, MOBILE_FULL)] {
        let body = serde_json::to_vec(&serde_json::json!({ "query": query }))?;
        let mut splits = Vec::new();
        for run in 1..=runs {
            let server = env.spawn_bff(bff, |s| s.cache.enabled = false).await?;
            let url = server.graphql_url();
            for _ in 0..WARMUP_REQUESTS {
                one(env, &client, &url, &body, &token).await?;
            }
            let started = Instant::now();
            let before = splits.len();
            while started.elapsed() < duration {
                splits.push(one(env, &client, &url, &body, &token).await?);
            }
            server.stop().await?;
            eprintln!(
                "[critical-path] {} run {run}/{runs}: {} homepages",
                bff.name(),
                splits.len() - before
            );
        }
        env.set_latency(Duration::ZERO);
        out.push(SurfaceResult { bff, splits });
    }
    Ok(out)
}

/// One homepage with fresh fixture counters; its split from the fixtures' spans.
async fn one(
    env: &Env,
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    token: &str,
) -> Result<Split> {
    env.set_latency(LATENCY);
    let control = env.control();
    let sent = control.now_us();
    let resp = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(body.to_vec())
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    let received = control.now_us();
    ensure!(
        status.is_success() && !load::has_graphql_errors(&bytes),
        "homepage failed: {status}: {}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
    let stats = control.stats();
    let (mut first_row_start, mut last_row_start, mut last_row_end) = (u64::MAX, 0, 0);
    let mut catalog = None;
    for (backend, s) in &stats.backends {
        for span in &s.spans {
            let end = span
                .end_us
                .context("a backend call still open after the answer")?;
            if *backend == Backend::Catalog {
                if catalog.replace((span.start_us, end)).is_some() {
                    bail!("more than one catalog call for one homepage");
                }
            } else {
                first_row_start = first_row_start.min(span.start_us);
                last_row_start = last_row_start.max(span.start_us);
                last_row_end = last_row_end.max(end);
            }
        }
    }
    let (catalog_start, catalog_end) = catalog.context("no catalog call")?;
    ensure!(last_row_end >= first_row_start, "no row-source call");
    Ok(Split {
        sent,
        first_row_start,
        last_row_start,
        last_row_end,
        catalog_start,
        catalog_end,
        received,
    })
}

/// The Markdown table and the verdicts.
pub(crate) fn render(results: &[SurfaceResult]) -> String {
    let mut s = String::from(
        "| surface | homepages | p50 ms | p90 ms | row round p50 ms | catalog p50 ms | BFF own p50 ms | BFF own p90 ms | before rows | dispatch skew | between rounds | after catalog |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut verdicts = String::new();
    for r in results {
        // Milliseconds at percentile `p` of one column.
        let col = |f: fn(&Split) -> u64, p: f64| {
            let mut v: Vec<u64> = r.splits.iter().map(f).collect();
            v.sort_unstable();
            percentile(&v, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
        };
        let (p50, p90) = (col(Split::total, 50.0), col(Split::total, 90.0));
        let (own50, own90) = (col(Split::own, 50.0), col(Split::own, 90.0));
        let _ = writeln!(
            s,
            "| {} | {} | {p50:.1} | {p90:.1} | {:.2} | {:.2} | {own50:.2} | {own90:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.bff.name(),
            r.splits.len(),
            col(Split::rows, 50.0),
            col(Split::catalog, 50.0),
            col(Split::before_rows, 50.0),
            col(Split::dispatch_skew, 50.0),
            col(Split::between_rounds, 50.0),
            col(Split::after_catalog, 50.0),
        );
        let verdict = |v: f64, bound: f64| if v <= bound { "met" } else { "MISSED" };
        let _ = writeln!(
            verdicts,
            "{}-critical-path: p50 {p50:.2} ms, target ≤ {TARGET_P50_MS} ms → {}; BFF own p50 {own50:.2} ms, budget ≤ {TARGET_OWN_MS} ms → {}",
            r.bff.name(),
            verdict(p50, TARGET_P50_MS),
            verdict(own50, TARGET_OWN_MS),
        );
    }
    s.push('\n');
    s.push_str(&verdicts);
    s
}
