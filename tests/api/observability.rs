//! Observability end to end: trace context through REST and gRPC backends, trace and request ids
//! on every response and error, and the Prometheus endpoint with bounded labels.

use bff_fixtures::Backend;
use serde_json::{Value, json};

use crate::helpers::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn trace_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

#[tokio::test]
async fn one_trace_id_reaches_rest_and_grpc_backends_and_the_response() {
    let app = spawn_app(web()).await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-42")
        .bearer_auth(app.token("u1"))
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    let trace_id = resp.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(trace_id.len(), 32);
    let stats = app.control().stats();
    for b in [
        Backend::Top10,
        Backend::ContinueWatching,
        Backend::Catalog,
        Backend::Recommendations,
    ] {
        let h = stats.get(b).last_headers;
        let tp = h.get("traceparent").unwrap_or_else(|| panic!("{b}: {h:?}"));
        assert_eq!(trace_of(tp), trace_id, "{b}");
        assert_eq!(
            h.get("x-request-id").map(String::as_str),
            Some("req-42"),
            "{b}"
        );
    }
    // Each backend call is its own span: the parent ids differ between backends.
    let parent = |b| {
        stats.get(b).last_headers["traceparent"]
            .split('-')
            .nth(2)
            .unwrap_or("")
            .to_owned()
    };
    assert_ne!(parent(Backend::Top10), parent(Backend::Catalog));
}

#[tokio::test]
async fn a_client_traceparent_is_continued_and_tracestate_passed_on() {
    let app = spawn_app(web()).await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01"),
        )
        .header("tracestate", "vendor=abc")
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-trace-id"], CLIENT_TRACE);
    let h = app.control().stats().get(Backend::Top10).last_headers;
    assert_eq!(trace_of(&h["traceparent"]), CLIENT_TRACE);
    assert_eq!(h.get("tracestate").map(String::as_str), Some("vendor=abc"));
    // A generated request id when the client sent none.
    assert_eq!(resp.headers()["x-request-id"].to_str().unwrap().len(), 36);
}

#[tokio::test]
async fn every_response_and_every_error_carries_the_trace_id() {
    let app = spawn_app(web()).await;
    for (req, status) in [
        (app.http.get(app.url("/healthz")), 200),
        (app.http.get(app.url("/nope")), 404),
        (
            app.http
                .post(app.url("/graphql"))
                .header("content-type", "text/plain")
                .body("x"),
            415,
        ),
        (
            app.http
                .post(app.url("/graphql"))
                .json(&json!({ "query": "{ x" })),
            200,
        ),
        (
            app.http
                .post(app.url("/graphql"))
                .bearer_auth("bad")
                .json(&json!({ "query": "{ __typename }" })),
            401,
        ),
        (
            app.http
                .post(app.url("/graphql"))
                .json(&json!({ "query": "{ viewer { id } }" })),
            200,
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let trace_id = resp.headers()["x-trace-id"].to_str().unwrap().to_owned();
        assert!(resp.headers().contains_key("x-request-id"));
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        for e in errors(&body) {
            assert_eq!(e["extensions"]["traceId"], trace_id.as_str(), "{body}");
        }
    }
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let r = app.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test]
async fn metrics_cover_http_graphql_upstream_breakers_and_cache() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    for _ in 0..3 {
        app.post_graphql(
            "query Home { homepage(region: \"US\") { rows { kind } } }",
            json!({}),
            Some(&token),
        )
        .await;
    }
    app.post_graphql("{ title(id: \"t1\") { id } }", json!({}), None)
        .await;
    let text = scrape(&app, &app.admin_url("/metrics")).await;
    for family in [
        "bff_http_requests_total",
        "bff_http_request_duration_seconds",
        "bff_http_requests_in_flight",
        "bff_graphql_operations_total",
        "bff_graphql_operation_duration_seconds",
        "bff_upstream_requests_total",
        "bff_upstream_request_duration_seconds",
        "bff_upstream_in_flight",
        "bff_upstream_breaker_state",
        "bff_upstream_endpoints",
        "bff_cache_hits_total",
        "bff_cache_misses_total",
        "bff_cache_stale_total",
        "bff_cache_coalesced_total",
        "bff_cache_evictions_total",
        "bff_cache_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert_eq!(
        value(
            &text,
            "bff_graphql_operations_total{client=\"web\",operation=\"Home\",outcome=\"ok\",type=\"query\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "bff_http_requests_total{client=\"web\",method=\"POST\",route=\"/graphql\",status=\"200\"}"
        ),
        4.0
    );
    // Cold then warm: the top 10 was loaded once, then served from the cache twice.
    assert_eq!(
        value(
            &text,
            "bff_cache_misses_total{client=\"web\",kind=\"top10\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "bff_cache_hits_total{client=\"web\",kind=\"top10\"}"),
        2.0
    );
    assert!(text.contains("bff_upstream_requests_total{backend=\"top10\""));
    assert!(text.contains("bff_upstream_breaker_state{backend=\"catalog\",client=\"web\"} 0"));
}

#[tokio::test]
async fn operation_name_labels_are_bounded() {
    let app = spawn_app_with(web(), |s| s.metrics.max_operation_names = 2).await;
    for name in ["A", "B", "C", "D"] {
        let q = format!("query {name} {{ __typename }}");
        app.http
            .post(app.url("/graphql"))
            .json(&json!({ "query": q, "operationName": name }))
            .send()
            .await
            .unwrap();
    }
    let text = scrape(&app, &app.admin_url("/metrics")).await;
    let ops: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("bff_graphql_operations_total{"))
        .filter_map(|l| l.split("operation=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        ops.contains(&"A") && ops.contains(&"B") && ops.contains(&"other"),
        "{ops:?}"
    );
    assert!(!ops.contains(&"C") && !ops.contains(&"D"), "{ops:?}");
}

#[tokio::test]
async fn the_admin_listener_takes_metrics_and_readiness_detail_off_the_public_one() {
    let app = spawn_app(web()).await;
    app.homepage("kind", None).await;
    assert_eq!(app.status_of("/metrics").await, 404);
    let text = scrape(&app, &app.admin_url("/metrics")).await;
    assert!(text.contains("bff_http_requests_total"));
    // Public readiness: a status and one word; the detail is the admin listener's.
    let public = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(public.text().await.unwrap(), "ready");
    let detail = app.readyz().await;
    assert_eq!(detail["status"], "ready");
    assert_eq!(
        detail["backends"]["catalog"]["breaker"], "closed",
        "{detail}"
    );
    assert!(
        detail["backends"]["top10"]["endpoints"]
            .as_array()
            .is_some()
    );

    // Without an admin listener, metrics stay on the public port and readiness detail is
    // served nowhere.
    let app = spawn_app_with(web(), |s| s.admin.listen = None).await;
    app.homepage("kind", None).await;
    let text = scrape(&app, &app.url("/metrics")).await;
    assert!(text.contains("bff_upstream_requests_total"));
    let public = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    let body = public.text().await.unwrap();
    assert_eq!(body, "ready");
    assert!(!body.contains("127.0.0.1"));
}
