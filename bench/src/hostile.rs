//! The `hostile-rss` scenario: what hostile queries cost the process in memory. Four kinds of
//! queries that expand far (nested fragment spreads, aliased homepages, deep nesting, a deep
//! introspection query) are sent many times, eight at once, while one client keeps asking for
//! the normal homepage. Every attack must be refused `QUERY_TOO_COMPLEX`, the homepages must keep
//! answering, and the process's peak RSS (VmHWM, fixtures and load generator included) may grow
//! by at most [`TARGET_GROWTH_MIB`].

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{harness::Env, load, procfs, scenario::Bff};

/// Most the peak RSS may grow over the attack (before the limits, one ~800-byte bomb alone grew
/// it by ~670 MB).
pub(crate) const TARGET_GROWTH_MIB: f64 = 64.0;
/// Requests of each attack kind.
const PER_KIND: usize = 250;
/// Attack requests in flight at once.
const CONCURRENCY: usize = 8;

/// What the run saw.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) attacks: usize,
    pub(crate) refused: usize,
    pub(crate) homepages: usize,
    pub(crate) homepage_p50_ms: f64,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) took: Duration,
}

impl Report {
    pub(crate) fn growth_mib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / 1024.0
    }
}

fn attacks() -> Vec<(&'static str, String)> {
    let mut bomb = String::from("{ ...F19 } fragment F0 on Query { __typename }");
    for i in 1..20 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ a{i}: __typename ...F{p} b{i}: __typename ...F{p} }}",
            p = i - 1
        ));
    }
    let aliased = format!(
        "{{ {} }}",
        (0..150)
            .map(|i| format!(
                "h{i}: homepage {{ rows {{ items {{ title {{ id name synopsis }} }} }} }}"
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut deep = String::from("id");
    for _ in 0..60 {
        deep = format!("title(id: \"t1\") {{ {deep} }}");
    }
    let mut intro = String::from("name");
    for _ in 0..40 {
        intro = format!("ofType {{ {intro} }}");
    }
    vec![
        ("fragment bomb", bomb),
        ("aliased homepages", aliased),
        ("deep nesting", format!("{{ {deep} }}")),
        (
            "deep introspection",
            format!("{{ __type(name: \"Query\") {{ {intro} }} }}"),
        ),
    ]
}

/// Runs the attack against a fresh web BFF.
pub(crate) async fn measure(env: &Env) -> Result<Report> {
    env.set_latency(Duration::ZERO);
    let server = env.spawn_bff(Bff::Web, |_| {}).await?;
    let url = server.graphql_url();
    let client = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .build()?;
    let post = |body: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(url)
                .header("accept", "application/graphql-response+json")
                .json(&body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await?;
            anyhow::Ok((status, body))
        }
    };
    let homepage = json!({ "query": "{ homepage(region: \"US\") { rows { kind items { title { id name } } } } }" });
    // Warm the process up (connections, caches, allocator) before the baseline.
    for _ in 0..50 {
        post(homepage.clone()).await?;
    }
    let rss_before_kib = procfs::peak_rss_kib()?;
    let started = Instant::now();
    let requests: Vec<Value> = attacks()
        .into_iter()
        .flat_map(|(_, q)| std::iter::repeat_n(json!({ "query": q }), PER_KIND))
        .collect();
    let attacks_total = requests.len();
    let attack = futures::stream::iter(requests.into_iter().map(post))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    let done = std::sync::atomic::AtomicBool::new(false);
    let normal = async {
        let mut times = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let (status, body) = post(homepage.clone()).await?;
            ensure!(
                status == 200 && body.get("errors").is_none(),
                "homepage failed during the attack: {status} {body}"
            );
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(times)
    };
    let attack = async {
        let answers = attack.await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        answers
    };
    let (answers, times) = futures::join!(attack, normal);
    let mut times = times?;
    let took = started.elapsed();
    let rss_after_kib = procfs::peak_rss_kib()?;
    let mut refused = 0;
    for a in answers {
        let (status, body) = a.context("attack request")?;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("");
        if status == 400 && code == "QUERY_TOO_COMPLEX" {
            refused += 1;
        }
    }
    server.stop().await?;
    times.sort_by(f64::total_cmp);
    Ok(Report {
        attacks: attacks_total,
        refused,
        homepages: times.len(),
        homepage_p50_ms: times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        rss_before_kib,
        rss_after_kib,
        took,
    })
}

/// The report as Markdown, with the verdict.
pub(crate) fn render(r: &Report) -> String {
    let verdict = if r.refused == r.attacks && r.growth_mib() <= TARGET_GROWTH_MIB {
        "PASS"
    } else {
        "FAIL"
    };
    format!(
        "| attacks | refused QUERY_TOO_COMPLEX | took | homepages meanwhile | their p50 | peak RSS before | after | growth |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {:.1} s | {} | {:.1} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\n\
         {verdict}: every attack refused and peak RSS growth ≤ {TARGET_GROWTH_MIB} MiB\n",
        r.attacks,
        r.refused,
        r.took.as_secs_f64(),
        r.homepages,
        r.homepage_p50_ms,
        r.rss_before_kib as f64 / 1024.0,
        r.rss_after_kib as f64 / 1024.0,
        r.growth_mib(),
    )
}
