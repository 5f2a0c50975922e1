//! Memory bounds measured as the process's resident set: a test binary of its own, with one
//! test, so nothing else in the process allocates while it measures.
//!
//! The probe that found the document cache unbounded sent 1,200 one-off ~120 KB queries to a
//! BFF with `graphql.document_cache_bytes = 4 MB` and saw ~85 MB held. Here the same flood goes
//! over HTTP to an in-process BFF, and the growth of VmRSS (after a warm-up that sizes the
//! allocator's arenas and the connection pool) must stay near the budget. The probe also saw a
//! 150 MB key set read whole (+174 MB); here a stub provider serves one, and RSS must not
//! follow it. The tests take turns ([`ONE_AT_A_TIME`]): each measures the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use bff_fixtures::{FixtureOptions, Fixtures};
use futures::StreamExt as _;
use serde_json::json;
use shared::{
    Application, StartOptions,
    config::{BackendsSettings, IssuerSettings, Settings},
    demo::fixture_backend,
};

/// Held by each test for its whole run, so no two measure at once.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _turn = ONE_AT_A_TIME.lock().await;
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

/// A stub identity provider whose JWKS is 150 MB, streamed without a length; counts the bytes
/// it managed to hand to the connection.
async fn huge_provider(served: Arc<AtomicU64>) -> String {
    use axum::{Router, body::Body, routing::get};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let discovery = json!({ "issuer": base, "jwks_uri": format!("{base}/jwks") }).to_string();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { discovery }),
        )
        .route(
            "/jwks",
            get(move || async move {
                const CHUNK: usize = 64 * 1024;
                let stream = futures::stream::unfold(0usize, move |i| {
                    let served = served.clone();
                    async move {
                        if i >= 150 * 16 {
                            return None;
                        }
                        let mut chunk = vec![b' '; CHUNK];
                        if i == 0 {
                            chunk[..9].copy_from_slice(b"{\"keys\":[");
                        }
                        served.fetch_add(CHUNK as u64, Ordering::SeqCst);
                        Some((
                            Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk)),
                            i + 1,
                        ))
                    }
                });
                Body::from_stream(stream)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_mb_key_set_costs_the_bound_not_150_mb() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let served = Arc::new(AtomicU64::new(0));
    let issuer = huge_provider(served.clone()).await;
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let surface = bff_web::surface();
    let mut settings = Settings::defaults(&(surface.defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    settings.backends = BackendsSettings::at(|b| fixtures.url(fixture_backend(b)));
    settings.auth.issuers = vec![IssuerSettings {
        issuer: issuer.clone(),
        jwks_url: None,
        jwks_file: None,
        audiences: vec!["bff".into()],
        algorithms: vec!["RS256".into()],
        refresh: std::time::Duration::from_secs(600),
        ca_file: None,
    }];
    let before = rss();
    let app = Application::build(settings, &surface, StartOptions::default())
        .await
        .unwrap();
    let admin = app.admin_addr().unwrap();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    // The fetch at start fails; the readiness detail says why.
    let http = reqwest::Client::new();
    let mut error = String::new();
    for _ in 0..500 {
        let detail: serde_json::Value = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = detail["identityProviders"][0]["lastError"].as_str() {
            error = e.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(error.contains("max_jwks_bytes"), "{error:?}");
    let grown = rss().saturating_sub(before);
    let served = served.load(Ordering::SeqCst);
    eprintln!("RSS +{grown} bytes; the provider handed over {served} of 157286400 bytes");
    assert!(served < 32 * 1024 * 1024, "{served}");
    assert!(grown < 48 * 1024 * 1024, "RSS grew by {grown} bytes");
}
