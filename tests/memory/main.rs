//! Memory bounds measured as the process's resident set: a test binary of its own, with one
//! test, so nothing else in the process allocates while it measures.
//!
//! The probe that found the document cache unbounded sent 1,200 one-off ~120 KB queries to a
//! BFF with `graphql.document_cache_bytes = 4 MB` and saw ~85 MB held. Here the same flood goes
//! over HTTP to an in-process BFF, and the growth of VmRSS (after a warm-up that sizes the
//! allocator's arenas and the connection pool) must stay near the budget.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;

use bff_fixtures::{FixtureOptions, Fixtures};
use futures::StreamExt as _;
use serde_json::json;
use shared::{
    Application, StartOptions,
    config::{BackendsSettings, Settings},
    demo::fixture_backend,
};

/// Resident set size of this process, in bytes (Linux `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// A distinct ~120 KB query: a long argument the parser copies into the document.
fn one_off(i: usize) -> String {
    format!(
        "{{ q{i}: title(id: \"{}\") {{ id name }} }}",
        "x".repeat(120_000)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_off_120_kb_queries_grows_rss_by_about_the_document_cache_budget() {
    const BUDGET: u64 = 4 * 1024 * 1024;
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let surface = bff_web::surface();
    let mut settings = Settings::defaults(&(surface.defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.backends = BackendsSettings::at(|b| fixtures.url(fixture_backend(b)));
    settings.graphql.document_cache_bytes = BUDGET;
    settings.server.request_budget = std::time::Duration::from_secs(5);
    settings.graphql.timeout = std::time::Duration::from_secs(10);
    let app = Application::build(settings, &surface, StartOptions::default())
        .await
        .unwrap();
    let url = format!("http://{}/graphql", app.local_addr().unwrap());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = reqwest::Client::new();
    let send = |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .json(&json!({ "query": one_off(i) }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    };
    let flood = |range: std::ops::Range<usize>| {
        futures::stream::iter(range.map(send))
            .buffer_unordered(4)
            .collect::<Vec<()>>()
    };
    // Warm-up: connections, buffers and the allocator's arenas reach their working size (20
    // documents also fill the cache to its budget).
    flood(0..20).await;
    let before = rss();
    flood(20..1_220).await;
    let after = rss();
    let grown = after.saturating_sub(before);
    eprintln!("RSS {before} → {after} bytes (+{grown}) over 1,200 one-off 120 KB queries");
    // Keyed by query text (moka keeps removed keys in tombstones) and weighed by text only, the
    // same flood held ~70–85 MB more. What is left is the budget plus allocator slack.
    assert!(
        grown < BUDGET + 16 * 1024 * 1024,
        "RSS grew by {grown} bytes with a {BUDGET}-byte document cache"
    );
}
