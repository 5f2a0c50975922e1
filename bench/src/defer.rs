//! The `defer` scenario: what `@defer` on the homepage's rows buys when one backend is slow. The
//! full web homepage (`WEB_FULL`, user u1, cache off so every row goes to its backend, every
//! backend +2 ms) is asked one request at a time, in alternating rounds of three variants:
//!
//! - **plain, top 10 fast**: the homepage without `@defer`, every backend +2 ms — the fast rows'
//!   latency, the yardstick of the target;
//! - **plain, top 10 +300 ms**: what a slow top 10 does to the whole answer;
//! - **@defer, top 10 +300 ms**: the rows' items deferred (`rows { kind heading ... @defer {
//!   items { … } } }`, `hero` still in the first part): the time to the first part (row list and
//!   hero), to the last fast row, and to the full answer (the top 10's part).
//!
//! Target (issue 25): the first part's p50 within the fast rows' latency (plain, top 10 fast) + 5 ms.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Result, bail, ensure};
use bff_fixtures::Backend;
use bff_fixtures::FaultPatch;
use tokio::time::Instant;

use crate::{
    harness::{Env, RunningBff},
    load,
    scenario::{Bff, WEB_FULL},
    stats::percentile,
};

/// Requests per variant (one at a time): bounded, the slow ones take 300 ms each.
const REQUESTS: usize = 100;
/// Unmeasured requests per variant first (connections, allocator).
const WARMUP: usize = 5;
/// What every backend call takes (a LAN backend).
const BACKEND_LATENCY: Duration = Duration::from_millis(2);
/// The slow top 10.
const SLOW: Duration = Duration::from_millis(300);
/// The target: the first part within the fast rows' latency plus this.
const TARGET_MARGIN_MS: f64 = 5.0;
/// What Apollo Client 3 sends with a deferred query.
const ACCEPT: &str = "multipart/mixed;deferSpec=20220824,application/json";

/// `WEB_FULL` with each row's items deferred.
fn deferred_query() -> String {
    // The fragment closes with the other braces the query ends with.
    WEB_FULL
        .replace(
            "rows { kind heading items {",
            "rows { kind heading ... @defer { items {",
        )
        .replacen("} } } } } } }", "} } } } } } } }", 1)
}

/// One variant's samples, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Variant {
    name: &'static str,
    first: Vec<u64>,
    fast_rows: Vec<u64>,
    full: Vec<u64>,
}

/// The scenario's figures.
#[derive(Debug)]
pub(crate) struct Report {
    variants: Vec<Variant>,
}

#[derive(Clone, Copy)]
enum Kind {
    PlainFast,
    PlainSlow,
    Deferred,
}

/// Runs the scenario.
pub(crate) async fn measure(env: &Env) -> Result<Report> {
    let token = env.token("u1")?;
    let http = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .build()?;
    let bff = env.spawn_bff(Bff::Web, |s| s.cache.enabled = false).await?;
    let deferred = deferred_query();
    let kinds = [
        (
            Kind::PlainFast,
            "plain, top 10 fast (the fast rows' latency)",
        ),
        (Kind::PlainSlow, "plain, top 10 +300 ms"),
        (Kind::Deferred, "@defer on rows' items, top 10 +300 ms"),
    ];
    let mut variants: Vec<Variant> = kinds
        .iter()
        .map(|(_, name)| Variant {
            name,
            ..Variant::default()
        })
        .collect();
    for (kind, _) in &kinds {
        for _ in 0..WARMUP {
            one(env, &http, &bff, *kind, &deferred, &token).await?;
        }
    }
    // Alternating rounds: drift (another process, the allocator) hits every variant alike.
    for round in 0..REQUESTS {
        for (i, (kind, _)) in kinds.iter().enumerate() {
            let (first, fast_rows, full) = one(env, &http, &bff, *kind, &deferred, &token).await?;
            let v = &mut variants[i];
            v.first.extend(first);
            v.fast_rows.extend(fast_rows);
            v.full.push(full);
        }
        if (round + 1) % 25 == 0 {
            eprintln!("[defer] {}/{REQUESTS} rounds", round + 1);
        }
    }
    bff.stop().await?;
    env.set_latency(Duration::ZERO);
    Ok(Report { variants })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One homepage of `kind`: the time to its first part and to its last fast row (deferred only)
/// and to the full answer, in microseconds.
async fn one(
    env: &Env,
    http: &reqwest::Client,
    bff: &RunningBff,
    kind: Kind,
    deferred: &str,
    token: &str,
) -> Result<(Option<u64>, Option<u64>, u64)> {
    env.set_latency(BACKEND_LATENCY);
    if !matches!(kind, Kind::PlainFast) {
        env.control().set_fault(
            Backend::Top10,
            FaultPatch {
                latency: Some(SLOW),
                ..FaultPatch::default()
            },
        );
    }
    let (query, accept) = match kind {
        Kind::Deferred => (deferred, ACCEPT),
        Kind::PlainFast | Kind::PlainSlow => (WEB_FULL, "application/json"),
    };
    let started = Instant::now();
    let mut resp = http
        .post(bff.graphql_url())
        .bearer_auth(token)
        .header("accept", accept)
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await?;
    ensure!(resp.status() == 200, "homepage answered {}", resp.status());
    if !matches!(kind, Kind::Deferred) {
        let body = resp.bytes().await?;
        ensure!(
            !load::has_graphql_errors(&body),
            "homepage errors: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        return Ok((None, None, micros(started.elapsed())));
    }
    // Parts end at the delimiter written with them: `\r\n---\r\n`, the last `\r\n-----\r\n`
    // (the body opens with one, before the first part).
    let mut buf: Vec<u8> = Vec::new();
    let (mut first, mut fast_rows) = (None, None);
    let (mut rows_in, mut delimiters) = (0, 0);
    loop {
        let Some(chunk) = resp.chunk().await? else {
            bail!("the incremental answer ended without its last part");
        };
        buf.extend_from_slice(&chunk);
        // Each complete delimiter (with the two bytes that say whether another part follows).
        while let Some(at) = find(&buf, b"\r\n---").filter(|at| buf.len() >= at + 7) {
            delimiters += 1;
            let part = &buf[..at];
            ensure!(
                !load::has_graphql_errors(part),
                "part with errors: {}",
                String::from_utf8_lossy(&part[part.len().saturating_sub(300)..])
            );
            if delimiters == 2 {
                first = Some(micros(started.elapsed()));
            } else if delimiters > 2 {
                // One entry per row (one deferred fragment); only the top 10 has ranks.
                rows_in += memchr::memmem::find_iter(part, b"\"path\":[").count();
                let top10 = memchr::memmem::find(part, b"\"rank\":1,").is_some();
                if !top10 && rows_in >= 4 && fast_rows.is_none() {
                    fast_rows = Some(micros(started.elapsed()));
                }
            }
            if buf[at + 5..].starts_with(b"--") {
                let full = micros(started.elapsed());
                ensure!(rows_in == 5, "{rows_in} rows arrived, not 5");
                return Ok((first, fast_rows.or(Some(full)), full));
            }
            buf.drain(..at + 7);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn ms(sample: &[u64], p: f64) -> f64 {
    let mut v = sample.to_vec();
    v.sort_unstable();
    percentile(&v, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// The Markdown table and the verdict.
pub(crate) fn render(report: &Report) -> Result<String> {
    let mut s = String::from(
        "| variant | requests | first part p50 / p99 ms | fast rows in p50 / p99 ms | full answer p50 / p99 ms |\n|---|---:|---:|---:|---:|\n",
    );
    let cell = |v: &[u64]| {
        if v.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.1} / {:.1}", ms(v, 50.0), ms(v, 99.0))
        }
    };
    for v in &report.variants {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            v.name,
            v.full.len(),
            cell(&v.first),
            cell(&v.fast_rows),
            cell(&v.full)
        );
    }
    let [fast, _, deferred] = report.variants.as_slice() else {
        bail!("three variants expected");
    };
    let yardstick = ms(&fast.full, 50.0);
    let first = ms(&deferred.first, 50.0);
    let bound = yardstick + TARGET_MARGIN_MS;
    let _ = writeln!(
        s,
        "\ndefer: first part p50 {first:.1} ms, target ≤ fast rows' latency p50 {yardstick:.1} + {TARGET_MARGIN_MS} = {bound:.1} ms → {}",
        if first <= bound { "met" } else { "MISSED" }
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_deferred_query_defers_the_items_of_the_full_homepage() {
        let q = deferred_query();
        assert!(
            q.contains("rows { kind heading ... @defer { items {"),
            "{q}"
        );
        let open = q.chars().filter(|c| *c == '{').count();
        assert_eq!(open, q.chars().filter(|c| *c == '}').count(), "{q}");
        assert!(q.ends_with("height } } } } } } } }"), "{q}");
    }

    #[test]
    fn samples_render_with_a_verdict() {
        let v = |name, first: Vec<u64>, full: Vec<u64>| Variant {
            name,
            fast_rows: first.clone(),
            first,
            full,
        };
        let report = Report {
            variants: vec![
                v("fast", vec![], vec![10_000; 4]),
                v("slow", vec![], vec![310_000; 4]),
                v("deferred", vec![12_000; 4], vec![311_000; 4]),
            ],
        };
        let text = render(&report).unwrap();
        assert!(
            text.contains("| deferred | 4 | 12.0 / 12.0 | 12.0 / 12.0 | 311.0 / 311.0 |"),
            "{text}"
        );
        assert!(text.contains("→ met"), "{text}");
    }
}
