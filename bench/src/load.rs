//! The closed-loop load generator: `concurrency` tasks, each sending the next request as soon as
//! the previous one's body has arrived, over one shared keep-alive client. Owns timing (warmup,
//! measurement window, hard stop) and per-request bookkeeping (latency, errors, bytes).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use reqwest::{
    StatusCode,
    header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};

/// A request slower than this counts as an error; it also bounds how long a stuck run can last.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to send, how hard and for how long.
pub(crate) struct Plan {
    pub(crate) url: String,
    /// The JSON request bodies, built once (cloning `Bytes` is a refcount bump), sent in turn.
    pub(crate) bodies: Vec<Bytes>,
    /// When set, requests are `GET`s of these URLs in turn instead of POSTs.
    pub(crate) get_urls: Vec<String>,
    /// `Bearer …` values to rotate through.
    pub(crate) auth: Vec<HeaderValue>,
    pub(crate) accept_encoding: Option<HeaderValue>,
    pub(crate) concurrency: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// What the measurement window saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Latencies of the requests that completed in the window, in µs, ascending.
    pub(crate) latencies_us: Vec<u64>,
    /// Of those, how many failed (transport error, non-200, or GraphQL `errors`).
    pub(crate) errors: u64,
    /// Of those, transport errors and non-200 responses.
    pub(crate) http_errors: u64,
    /// Of those, 200 responses whose body carries GraphQL `errors` (partial data).
    pub(crate) graphql_errors: u64,
    /// Response body bytes as received (compressed when `Accept-Encoding` was sent).
    pub(crate) body_bytes: u64,
    /// The window's actual length (≈ `Plan::duration`).
    pub(crate) window: Duration,
    /// What the first failed request of the window looked like, for the log.
    pub(crate) first_error: Option<String>,
}

impl Outcome {
    pub(crate) fn requests(&self) -> u64 {
        self.latencies_us.len() as u64
    }
}

/// One request's result.
pub(crate) struct Response {
    /// 200 without GraphQL errors.
    pub(crate) ok: bool,
    /// A 200 came back (whatever its body says).
    pub(crate) http_ok: bool,
    pub(crate) bytes: u64,
    /// For a failure: status or transport error, and the start of the body.
    pub(crate) error: Option<String>,
}

/// How much of a failed response's body to keep for the log.
const ERROR_SAMPLE_BYTES: usize = 300;

/// Sends one request of `plan` with the `i`-th body and auth value (mod the lists; no auth
/// values: anonymous).
pub(crate) async fn send(client: &reqwest::Client, plan: &Plan, i: usize) -> Response {
    let mut req = if plan.get_urls.is_empty() {
        let body = plan.bodies[i % plan.bodies.len().max(1)].clone();
        client
            .post(&plan.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
    } else {
        client.get(&plan.get_urls[i % plan.get_urls.len()])
    };
    if let Some(auth) = plan.auth.get(i % plan.auth.len().max(1)) {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    if let Some(enc) = &plan.accept_encoding {
        req = req.header(ACCEPT_ENCODING, enc.clone());
    }
    let failed = |error: String| Response {
        ok: false,
        http_ok: false,
        bytes: 0,
        error: Some(error),
    };
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return failed(format!("transport: {e}")),
    };
    let status = resp.status();
    let compressed = resp
        .headers()
        .contains_key(reqwest::header::CONTENT_ENCODING);
    let body = match resp.bytes().await {
        Ok(body) => body,
        Err(e) => return failed(format!("{status}, body: {e}")),
    };
    // A compressed body cannot be searched cheaply; it is judged by status alone.
    let http_ok = status == StatusCode::OK;
    let ok = http_ok && (compressed || !has_graphql_errors(&body));
    Response {
        ok,
        http_ok,
        bytes: body.len() as u64,
        // Only failures pay for the copy.
        error: (!ok).then(|| {
            let sample = &body[..body.len().min(ERROR_SAMPLE_BYTES)];
            format!("{status}: {}", String::from_utf8_lossy(sample))
        }),
    }
}

/// Whether a JSON GraphQL response carries a top-level-or-nested `"errors":` key. A SIMD substring
/// search rather than a parse: the load generator shares the BFF's cores, and a byte-by-byte
/// window scan of a 210 KB web homepage was ~11% of all instructions in a callgrind profile.
pub(crate) fn has_graphql_errors(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"errors\":").is_some()
}

/// Requests in flight while priming a cache.
pub(crate) const PRIME_CONCURRENCY: usize = 16;

/// Sends exactly one request per auth value of `plan`, [`PRIME_CONCURRENCY`] at a time, and
/// fails on the first failed one: fills the BFF's cache before the warmup and the window.
pub(crate) async fn prime(client: &reqwest::Client, plan: &Arc<Plan>) -> Result<()> {
    let users = plan.auth.len();
    let mut tasks = tokio::task::JoinSet::new();
    for start in 0..PRIME_CONCURRENCY.min(users) {
        let (client, plan) = (client.clone(), plan.clone());
        tasks.spawn(async move {
            for i in (start..users).step_by(PRIME_CONCURRENCY) {
                let resp = send(&client, &plan, i).await;
                if !resp.ok {
                    anyhow::bail!(
                        "priming request for user #{i} failed: {}",
                        resp.error.unwrap_or_default()
                    );
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("priming task panicked")??;
    }
    Ok(())
}

/// Per-task tallies, merged after the run.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    http_errors: u64,
    body_bytes: u64,
    first_error: Option<String>,
}

/// Runs `plan`: warmup, then the measurement window. `probe` is called right at the start and
/// the end of the window (e.g. to read CPU time and backend call counters); its two results are
/// returned with the outcome, so deltas cover exactly the requests counted.
pub(crate) async fn drive<S>(
    client: &reqwest::Client,
    plan: Arc<Plan>,
    probe: impl Fn() -> S,
) -> Result<(Outcome, S, S)> {
    ensure!(plan.concurrency > 0, "concurrency must be at least 1");
    ensure!(
        !plan.bodies.is_empty() || !plan.get_urls.is_empty(),
        "a load plan needs something to send"
    );
    let begin = Instant::now();
    let window_start = begin + plan.warmup;
    let window_end = window_start + plan.duration;

    let mut tasks = Vec::with_capacity(plan.concurrency);
    for task in 0..plan.concurrency {
        let client = client.clone();
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Task k sends users k, k + c, k + 2c, …: with as many users as tasks, every task
            // sticks to one user; with more users, every request is a different one in turn.
            let mut i = task;
            // Closed loop: no new request after the window; a request straddling the end is
            // finished but not counted (completion time decides, which keeps rps unbiased).
            while Instant::now() < window_end {
                let sent = Instant::now();
                let resp = send(&client, &plan, i).await;
                let done = Instant::now();
                i = i.wrapping_add(plan.concurrency);
                if done >= window_start && done <= window_end {
                    let us =
                        u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    tally.latencies_us.push(us);
                    tally.body_bytes += resp.bytes;
                    if !resp.http_ok {
                        tally.http_errors += 1;
                    }
                    if !resp.ok {
                        tally.errors += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = resp.error;
                        }
                    }
                }
            }
            tally
        }));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let before = probe();
    let actual_start = Instant::now();
    tokio::time::sleep_until(window_end.into()).await;
    let after = probe();
    let window = actual_start.elapsed();

    // Every task ends within one request of `window_end`, and a request within REQUEST_TIMEOUT;
    // the margin only guards against a hang we did not foresee.
    let deadline =
        tokio::time::Instant::from(window_end) + REQUEST_TIMEOUT + Duration::from_secs(5);
    let mut outcome = Outcome {
        window,
        ..Outcome::default()
    };
    for task in tasks {
        let abort = task.abort_handle();
        let tally = match tokio::time::timeout_at(deadline, task).await {
            Ok(joined) => joined.context("load task panicked")?,
            Err(_) => {
                abort.abort();
                anyhow::bail!("a load task did not stop within the request timeout");
            }
        };
        outcome.latencies_us.extend(tally.latencies_us);
        outcome.errors += tally.errors;
        outcome.http_errors += tally.http_errors;
        outcome.body_bytes += tally.body_bytes;
        outcome.first_error = outcome.first_error.or(tally.first_error);
    }
    outcome.graphql_errors = outcome.errors - outcome.http_errors;
    outcome.latencies_us.sort_unstable();
    Ok((outcome, before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_errors_are_spotted_anywhere() {
        assert!(has_graphql_errors(
            br#"{"data":null,"errors":[{"message":"x"}]}"#
        ));
        assert!(has_graphql_errors(br#"{"errors":[]}"#));
        assert!(!has_graphql_errors(
            br#"{"data":{"homepage":{"errors_seen":1}}}"#
        ));
        assert!(!has_graphql_errors(b""));
    }
}

/// What [`one_query`] measured over its window.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    /// CPU of the whole process (fixtures, BFFs and this load generator) per request, µs.
    pub(crate) cpu_us: f64,
}

/// One query POSTed by `concurrency` clients with one `Bearer` token for `duration` (after a
/// check request and a 1-s warmup); every request in the window must succeed.
pub(crate) async fn one_query(
    client: &reqwest::Client,
    url: String,
    query: &str,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<Measured> {
    let plan = Arc::new(Plan {
        url,
        bodies: vec![Bytes::from(serde_json::to_vec(
            &serde_json::json!({ "query": query }),
        )?)],
        get_urls: Vec::new(),
        auth: vec![HeaderValue::try_from(format!("Bearer {token}"))?],
        accept_encoding: None,
        concurrency,
        warmup: Duration::from_secs(1),
        duration,
    });
    let first = send(client, &plan, 0).await;
    ensure!(first.ok, "the first request failed: {:?}", first.error);
    let (outcome, before, after) = drive(client, plan, crate::procfs::cpu_time_us).await?;
    let (before, after) = (before?, after?);
    ensure!(outcome.errors == 0, "{:?}", outcome.first_error);
    let n = outcome.requests().max(1) as f64;
    Ok(Measured {
        rps: outcome.requests() as f64 / outcome.window.as_secs_f64(),
        p50_ms: outcome
            .latencies_us
            .get(outcome.latencies_us.len() / 2)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0,
        cpu_us: (after - before) as f64 / n,
    })
}
