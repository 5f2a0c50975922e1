//! Resilience end to end: every backend down / failing / stalled within the request budget,
//! retries within their budget, the circuit breaker, balanced endpoints, /readyz, pass-through
//! routes and graceful shutdown. Proven with the fixtures' counters; time is only bounded from
//! above (a homepage must not outlive its budget), never used to prove ordering.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bff_fixtures::{Backend, BackendServer, FaultPatch, FixtureOptions, start_instances};
use futures::future::join_all;
use serde_json::{Value, json};
use shared::{config::Settings, demo::fixture_backend, upstream::BackendId};

use crate::helpers::*;

const BUDGET: Duration = Duration::from_millis(400);
/// Scheduling slack on a busy debug build; the tight figure lives in the benchmark.
const SLACK: Duration = Duration::from_millis(400);
const ROWS: [&str; 5] = [
    "CONTINUE_WATCHING",
    "RECOMMENDED",
    "TOP_10",
    "MY_LIST",
    "NEW_RELEASES",
];

fn tight(s: &mut Settings) {
    s.cache.enabled = false;
    s.server.request_budget = BUDGET;
    for b in BackendId::ALL {
        s.backends.get_mut(b).timeout = Duration::from_millis(250);
    }
}

async fn timed_homepage(app: &TestApp) -> (Duration, Value) {
    let started = Instant::now();
    let body = app
        .homepage(
            "kind heading items { title { id } }",
            Some(&app.token("u1")),
        )
        .await;
    (started.elapsed(), body)
}

/// Checks the homepage when `b` failed with `code`: every other row intact, coded errors naming it.
fn assert_contained(b: BackendId, code: &str, body: &Value) {
    let errs = errors(body);
    assert!(!errs.is_empty(), "{b}: {body}");
    for e in &errs {
        assert_eq!(e["extensions"]["code"], code, "{b}: {body}");
        assert_eq!(e["extensions"]["backend"], b.name(), "{b}: {body}");
    }
    let rows = body["data"]["homepage"]["rows"].as_array().unwrap();
    match (b, row_kind(fixture_backend(b))) {
        (BackendId::Catalog, _) => assert!(rows.iter().all(Value::is_null), "{body}"),
        (BackendId::Profile, _) => assert_eq!(kinds(body), ROWS),
        (_, Some(kind)) => {
            let expected: Vec<String> = ROWS
                .iter()
                .map(|k| {
                    if *k == kind {
                        "null".into()
                    } else {
                        (*k).to_owned()
                    }
                })
                .collect();
            assert_eq!(kinds(body), expected, "{b}");
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_backend_failing_every_way_is_contained_within_the_budget() {
    for b in BackendId::ALL {
        for (fault, code) in [
            (error_rate(1.0), "BACKEND_UNAVAILABLE"),
            (stalled(), "BACKEND_TIMEOUT"),
        ] {
            let app = spawn_app_with(web(), tight).await;
            app.fault(fixture_backend(b), fault);
            let (took, body) = timed_homepage(&app).await;
            if b == BackendId::Profile {
                // The profile only feeds headings: nothing fails, the headings are generic.
                assert!(body.get("errors").is_none(), "{body}");
                assert_eq!(kinds(&body), ROWS);
            } else {
                assert_contained(b, code, &body);
            }
            assert!(took < BUDGET + SLACK, "{b} {code}: took {took:?}");
        }
        // Down = connection refused: point the backend at a port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let app = spawn_app_with(web(), |s| {
            tight(s);
            let path = b.rest_path().unwrap_or("");
            s.backends.get_mut(b).url = format!("http://{closed}{path}");
        })
        .await;
        let (took, body) = timed_homepage(&app).await;
        if b != BackendId::Profile {
            assert_contained(b, "BACKEND_UNAVAILABLE", &body);
        }
        assert!(took < BUDGET + SLACK, "{b} down: took {took:?}");
    }
}

#[tokio::test]
async fn retries_ride_out_half_the_calls_failing_within_the_retry_budget() {
    // Each request finds the top 10 stale and refreshes it in the background; the refreshes meet
    // a backend failing half the time. Rows stay up; retries stay within 20% (+ the floor).
    let app = spawn_app_with(web(), |s| {
        s.cache.top10.ttl = Duration::from_millis(1);
        s.backends[BackendId::Top10].retries = 2;
    })
    .await;
    app.fault(Backend::Top10, error_rate(0.5));
    let requests = 300u64;
    let mut ok_rows = 0u64;
    for _ in 0..requests {
        let (_, body) = app
            .post_graphql(
                "{ homepage(region: \"US\") { rows { kind } } }",
                json!({}),
                None,
            )
            .await;
        ok_rows += u64::from(kinds(&body).contains(&"TOP_10".to_owned()));
    }
    assert!(
        ok_rows * 100 >= requests * 99,
        "only {ok_rows}/{requests} top-10 rows"
    );
    let calls = app.control().stats().get(Backend::Top10).calls;
    let min_retries = app_settings_min_retries();
    assert!(
        calls as f64 <= 1.2 * requests as f64 + f64::from(min_retries),
        "{calls} calls for {requests} requests"
    );
}

fn app_settings_min_retries() -> u32 {
    shared::config::RetryBudgetSettings::default().min_retries
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_a_probe_closes_it() {
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        let t = &mut s.backends[BackendId::Top10];
        t.retries = 0;
        t.breaker.min_calls = 5;
        t.breaker.failure_ratio = 0.5;
        t.breaker.open_for = Duration::from_millis(300);
        t.breaker.max_open_for = Duration::from_millis(300);
        t.breaker.close_after = 2;
        t.breaker.half_open_probes = 1;
    })
    .await;
    app.fault(Backend::Top10, error_rate(1.0));
    for _ in 0..5 {
        app.homepage("kind", None).await;
    }
    let calls = app.control().stats().get(Backend::Top10).calls;
    assert_eq!(calls, 5);
    let ready: Value = app.readyz().await;
    assert_eq!(ready["backends"]["top10"]["breaker"], "open", "{ready}");
    // Open: no call reaches the backend, the row fails fast with a coded error.
    for _ in 0..5 {
        let body = app.homepage("kind", None).await;
        assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"]);
        assert_eq!(errors(&body)[0]["extensions"]["backend"], "top10");
    }
    assert_eq!(
        app.control().stats().get(Backend::Top10).calls,
        calls,
        "open breaker must not call"
    );
    // The backend recovers; after open_for a probe goes through and successes close the breaker.
    app.fault(Backend::Top10, error_rate(0.0));
    // Until `open_for` has passed every request fails fast without a call (counted below); the
    // first to get through is the half-open probe.
    eventually("a probe goes through", || async {
        app.homepage("kind", None).await.get("errors").is_none()
    })
    .await;
    let body = app.homepage("kind", None).await;
    assert!(body.get("errors").is_none(), "{body}");
    let ready: Value = app.readyz().await;
    assert_eq!(ready["backends"]["top10"]["breaker"], "closed", "{ready}");
    assert_eq!(app.control().stats().get(Backend::Top10).calls, calls + 2);
}

async fn two_top10_endpoints() -> (Vec<BackendServer>, Arc<bff_fixtures::Dataset>) {
    let data = Arc::new(bff_fixtures::Dataset::generate(42));
    let servers = start_instances(Backend::Top10, 2, &FixtureOptions::default(), data.clone())
        .await
        .unwrap();
    (servers, data)
}

#[tokio::test]
async fn a_refused_endpoint_is_routed_around_without_client_errors() {
    let (mut servers, _) = two_top10_endpoints().await;
    let urls: Vec<String> = servers.iter().map(BackendServer::url).collect();
    servers[0].stop().await;
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        s.backends[BackendId::Top10].endpoints = urls.clone();
    })
    .await;
    for _ in 0..40 {
        let body = app.homepage("kind", None).await;
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
    }
    assert_eq!(
        servers[1].control().stats_of(Backend::Top10).calls,
        40,
        "every call ends on the live endpoint"
    );
    let ready: Value = app.readyz().await;
    let eps = ready["backends"]["top10"]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        eps.iter().any(|e| e["ejected"] == true),
        "the dead endpoint is ejected: {ready}"
    );
}

#[tokio::test]
async fn least_outstanding_favours_the_faster_endpoint() {
    let (servers, _) = two_top10_endpoints().await;
    servers[0].control().set_fault(Backend::Top10, latency(200));
    let urls: Vec<String> = servers.iter().map(BackendServer::url).collect();
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        // Every client's request is a call of its own (identical ones would share one).
        s.graphql.coalesce = false;
        s.backends[BackendId::Top10].endpoints = urls.clone();
        s.backends[BackendId::Top10].balance =
            shared::upstream::resilience::Strategy::LeastOutstanding;
        // Eighty identical requests: each must reach the balancer, not share an answer.
        s.graphql.coalesce = false;
    })
    .await;
    // Eight clients in closed loops: the slow endpoint builds a backlog of outstanding calls,
    // which is what power-of-two-choices steers away from.
    join_all((0..8).map(|_| async {
        for _ in 0..10 {
            app.homepage("kind", None).await;
        }
    }))
    .await;
    let slow = servers[0].control().stats_of(Backend::Top10).calls;
    let fast = servers[1].control().stats_of(Backend::Top10).calls;
    assert_eq!(slow + fast, 80);
    assert!(fast > slow * 2, "fast {fast} vs slow {slow}");
}

#[tokio::test]
async fn readyz_is_503_while_the_catalog_has_no_usable_endpoint() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::Catalog].url = format!("http://{closed}")
    })
    .await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "unready");
    let r = app.http.get(app.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["backends"]["catalog"]["reachable"], false);
    assert_eq!(app.status_of("/healthz").await, 200);
    // A non-required backend being down does not make the instance unready.
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::Top10].url = format!("http://{closed}/top10")
    })
    .await;
    assert_eq!(app.status_of("/readyz").await, 200);
}

fn with_route(s: &mut Settings, url: String) {
    let mut charts = s.backends[BackendId::Top10].clone();
    charts.url = url;
    charts.endpoints.clear();
    charts.timeout = Duration::from_millis(300);
    charts.retries = 0;
    s.backends.extra.insert("charts".into(), charts);
    s.routes.push(shared::config::RouteSettings {
        max_body_bytes: 1024,
        ..shared::config::RouteSettings::new("/api/charts", "charts")
    });
}

#[tokio::test]
async fn pass_through_routes_proxy_strip_hop_headers_and_set_identity() {
    let fx = bff_fixtures::Fixtures::start(FixtureOptions::default())
        .await
        .unwrap();
    let top10_url = fx.url(Backend::Top10);
    let app = spawn_app_with(web(), |s| with_route(s, top10_url.clone())).await;
    let resp = app
        .http
        .get(app.url("/api/charts/GB?x=1"))
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-user-id", "u2")
        .header("x-custom", "kept")
        .bearer_auth(app.token("u7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["region"], "GB");
    let seen = fx.control().stats_of(Backend::Top10).last_headers;
    assert_eq!(
        seen.get("x-user-id").map(String::as_str),
        Some("u7"),
        "{seen:?}"
    );
    assert_eq!(seen.get("x-custom").map(String::as_str), Some("kept"));
    for h in ["x-secret-hop", "keep-alive", "authorization"] {
        assert!(!seen.contains_key(h), "{h} leaked: {seen:?}");
    }
    // Bodies over the route's limit are refused before anything is sent.
    let big = app
        .http
        .post(app.url("/api/charts/GB"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    // Upstream failures become clean 503 / 504 / 502 answers.
    fx.control().set_fault(Backend::Top10, error_rate(1.0));
    let r = app
        .http
        .get(app.url("/api/charts/GB"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    // A clean, coded answer naming the route's backend; the upstream's own body is not echoed.
    assert!(
        text.contains("BACKEND_UNAVAILABLE") && text.contains("charts"),
        "{text}"
    );
    assert!(!text.contains("\"UNAVAILABLE\""), "{text}");
    fx.control().set_fault(
        Backend::Top10,
        FaultPatch {
            error_rate: Some(0.0),
            stall: Some(true),
            ..FaultPatch::default()
        },
    );
    assert_eq!(app.status_of("/api/charts/GB").await, 504);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(web(), |s| with_route(s, format!("http://{closed}/top10"))).await;
    assert_eq!(app.status_of("/api/charts/GB").await, 502);
}

#[tokio::test]
async fn shutdown_finishes_every_request_in_flight() {
    let fixtures = bff_fixtures::Fixtures::start(FixtureOptions::default())
        .await
        .unwrap();
    fixtures.control().set_fault(Backend::Top10, latency(200));
    let mut settings = Settings::defaults(&(web().defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.backends =
        shared::config::BackendsSettings::at(|b| fixtures.url(shared::demo::fixture_backend(b)));
    settings.cache.enabled = false;
    // Twenty executions in flight, not one shared by twenty identical requests.
    settings.graphql.coalesce = false;
    let app = shared::Application::build(settings, &web(), shared::StartOptions::default())
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/graphql");
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
                    .send()
                    .await
            })
        })
        .collect();
    // Shut down once every request is inside the BFF (the slow top-10 call holds them there).
    while fixtures.control().stats_of(Backend::Top10).in_flight < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    let mut ok = 0;
    for r in requests {
        let resp = r
            .await
            .unwrap()
            .expect("no request may fail during shutdown");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
        ok += 1;
    }
    assert_eq!(ok, 20);
    server.await.unwrap().unwrap();
    // Stopped: the port refuses new connections.
    assert!(
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap_err()
            .is_connect()
    );
}

#[tokio::test]
async fn a_host_name_endpoint_is_re_resolved_into_one_endpoint_per_address() {
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        s.backends[BackendId::Top10].url = s.backends[BackendId::Top10]
            .url
            .replace("127.0.0.1", "localhost");
        s.backends[BackendId::Top10].dns_refresh = Duration::from_millis(50);
    })
    .await;
    // Bounded wait for the first resolution (it runs at start).
    let mut labels = Vec::new();
    for _ in 0..100 {
        let ready: Value = app.readyz().await;
        labels = ready["backends"]["top10"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["label"].as_str().unwrap_or_default().to_owned())
            .collect();
        if labels.iter().any(|l| l.contains("127.0.0.1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        labels.iter().any(|l| l.starts_with("http://127.0.0.1:")),
        "{labels:?}"
    );
    assert!(
        labels.iter().all(|l| !l.contains("localhost")),
        "{labels:?}"
    );
    // Traffic flows through the resolved endpoints (a Host header keeps the original name).
    for _ in 0..5 {
        let body = app.homepage("kind", None).await;
        assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"], "{body}");
    }
    let h = app.control().stats().get(Backend::Top10).last_headers;
    assert!(
        h.get("host").is_some_and(|v| v.starts_with("localhost:")),
        "{h:?}"
    );
}
