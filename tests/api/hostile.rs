//! Hostile clients: each class of attack gets its exact refusal (status, code), within a time
//! bound, and another client is served during and after it. Paths stay inside their route;
//! queries that expand far are refused before they run; what a client breaks never trips a
//! breaker; connections cannot be held open; identities are unambiguous; the spec's answers
//! hold; pass-through routes send the BFF's own trace context.

use std::time::{Duration, Instant};

use bff_fixtures::{Backend, FixtureOptions, Fixtures};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::config::{BackendId, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Sends `request` as raw bytes (so no client library normalises it) and reads the answer until
/// the server closes or `within` passes.
async fn raw(addr: std::net::SocketAddr, request: &[u8], within: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// A route `/api/charts` onto a fixture's top10 service (root `/top10`).
fn charts_route(s: &mut Settings, url: String) {
    let mut charts = s.backends[BackendId::Top10].clone();
    charts.url = url;
    charts.endpoints.clear();
    charts.timeout = Duration::from_millis(300);
    charts.retries = 0;
    charts.breaker.min_calls = 5;
    charts.breaker.failure_ratio = 0.5;
    s.backends.extra.insert("charts".into(), charts);
    s.routes.push(shared::config::RouteSettings {
        max_body_bytes: 1024,
        ..shared::config::RouteSettings::new("/api/charts", "charts")
    });
}

async fn route_app(adjust: impl FnOnce(&mut Settings)) -> (TestApp, Fixtures) {
    let fx = Fixtures::start(FixtureOptions::default()).await.unwrap();
    let url = fx.url(Backend::Top10);
    let app = spawn_app_with(web(), |s| {
        charts_route(s, url);
        adjust(s);
    })
    .await;
    (app, fx)
}

/// Another client, unaffected: the anonymous homepage and the route both answer.
async fn others_are_served(app: &TestApp) {
    let body = app.homepage("kind", None).await;
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"], "{body}");
}

#[tokio::test]
async fn no_spelling_of_a_dot_segment_leaves_a_pass_through_route() {
    let (app, fx) = route_app(|_| {}).await;
    for path in [
        "/api/charts/../__admin/stats",
        "/api/charts/%2e%2e/__admin/stats",
        "/api/charts/%2E%2e/%2e%2e/__admin/stats",
        "/api/charts/.%2e/__admin/stats",
        "/api/charts/%252e%252e/__admin/stats",
        "/api/charts/..%2f__admin/stats",
        "/api/charts/..%5c__admin/stats",
        "/api/charts/..\\__admin/stats",
        "/api/charts/GB/../../__admin/stats",
        "/api/charts/%2e%2e%2f%2e%2e%2f__admin/reset",
    ] {
        let started = Instant::now();
        let answer = raw(
            app.addr,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(status_line(&answer).contains(" 400 "), "{path}: {answer}");
        assert!(answer.contains("BAD_USER_INPUT"), "{path}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(
        fx.control().stats_of(Backend::Top10).calls,
        0,
        "nothing reached the backend"
    );
    // Dot segments that stay inside the route resolve there.
    let answer = raw(
        app.addr,
        b"GET /api/charts/x/../GB HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(status_line(&answer).contains(" 200 "), "{answer}");
    assert!(answer.contains("\"region\":\"GB\""), "{answer}");
    others_are_served(&app).await;
}

#[tokio::test]
async fn queries_that_expand_far_are_refused_before_they_run() {
    let app = spawn_app(web()).await;
    // ~1.4 KB of nested spreads expanding to 2^20 fields.
    let mut bomb = String::from("{ ...F19 } fragment F0 on Query { __typename }");
    for i in 1..20 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ a{i}: __typename ...F{p} b{i}: __typename ...F{p} }}",
            p = i - 1
        ));
    }
    // ~20 KB of aliased homepages.
    let aliased = format!(
        "{{ {} }}",
        (0..150)
            .map(|i| format!(
                "h{i}: homepage {{ rows {{ items {{ title {{ id name synopsis }} }} }} }}"
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let before = app.control().stats().total_calls();
    for query in [&bomb, &aliased] {
        let started = Instant::now();
        let (status, body) = app.post_graphql(query, json!({}), None).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"], "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(app.control().stats().total_calls(), before, "nothing ran");
    // Many at once do not starve another client.
    let attacks =
        futures::future::join_all((0..20).map(|_| app.post_graphql(&bomb, json!({}), None)));
    let (answers, ()) = futures::join!(attacks, others_are_served(&app));
    assert!(answers.iter().all(|(s, _)| *s == 400));
    assert_eq!(app.status_of("/healthz").await, 200);
}

#[tokio::test]
async fn what_the_estimate_misses_is_cut_by_size() {
    let app = spawn_app_with(web(), |s| s.graphql.max_response_bytes = 2_000).await;
    let (status, body) = app
        .post_graphql(
            "{ homepage { rows { items { title { id name synopsis } } } } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"]);
    assert!(body.get("data").is_none());
    let (status, _) = app.post_graphql("{ __typename }", json!({}), None).await;
    assert_eq!(status, 200);
}

/// An upload service that reads every body it is sent, counting the ones it received whole.
async fn upload_backend() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    let router = axum::Router::new().route(
        "/uploads/{*rest}",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                body.len().to_string()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/uploads"), received)
}

#[tokio::test]
async fn one_clients_broken_uploads_never_open_the_breaker_for_others() {
    let (uploads, received) = upload_backend().await;
    let app = spawn_app_with(web(), |s| {
        charts_route(s, uploads.clone());
        s.server.body_read_timeout = Duration::from_millis(400);
    })
    .await;
    // Malformed chunk sizes, overflowing chunk sizes, bodies cut short, over-long bodies.
    let attacks: [&[u8]; 4] = [
        b"POST /api/charts/GB HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /api/charts/GB HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n",
        b"POST /api/charts/GB HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        b"POST /api/charts/GB HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n400\r\n",
    ];
    for round in 0..10 {
        for attack in attacks {
            let started = Instant::now();
            let answer = raw(app.addr, attack, Duration::from_secs(10)).await;
            let line = status_line(&answer);
            assert!(
                line.contains(" 400 ") || line.contains(" 408 ") || line.contains(" 413 "),
                "round {round}: {answer}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
    // A stalled upload: headers and a little of the body, then nothing.
    let answer = raw(
        app.addr,
        b"POST /api/charts/GB HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    )
    .await;
    assert!(status_line(&answer).contains(" 408 "), "{answer}");

    let detail = app.readyz().await;
    assert_eq!(
        detail["backends"]["charts"]["breaker"], "closed",
        "{detail}"
    );
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no broken body arrived whole"
    );
    for _ in 0..5 {
        let r = app
            .http
            .post(app.url("/api/charts/GB"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "another client is served");
        assert_eq!(r.text().await.unwrap(), "5");
    }
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 5);
    others_are_served(&app).await;
}

#[tokio::test]
async fn tokens_with_unusable_subjects_are_refused_before_any_backend_call() {
    let app = spawn_app(web()).await;
    let before = app.control().stats().total_calls();
    for sub in [
        ".",
        "..",
        " u2",
        "u2 ",
        "u\u{0}2",
        "u 2",
        "ü",
        &"u".repeat(300),
        "",
    ] {
        let token = app.signer.sign(sub, 60).unwrap();
        let (status, body) = app
            .post_graphql("{ homepage { rows { kind } } }", json!({}), Some(&token))
            .await;
        assert_eq!(status, 401, "{sub:?}: {body}");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"], "{sub:?}");
    }
    assert_eq!(
        app.control().stats().total_calls(),
        before,
        "no backend saw them"
    );
    let token = app.token("u2");
    let body = app.homepage("kind", Some(&token)).await;
    assert_eq!(kinds(&body)[0], "CONTINUE_WATCHING");
}

#[tokio::test]
async fn identity_is_unambiguous() {
    let app = spawn_app_with(web(), |s| s.auth.audience = Some("bff-web".into())).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign =
        |header: &Header, claims: Value| jsonwebtoken::encode(header, &claims, &key).unwrap();
    let hs = Header::new(Algorithm::HS256);
    let app = &app;
    let ask = |token: String| async move {
        app.post_graphql("{ viewer { id } }", json!({}), Some(&token))
            .await
    };
    // `aud` as a string or as an array holding the audience.
    for aud in [json!("bff-web"), json!(["other", "bff-web"])] {
        let (status, body) = ask(sign(
            &hs,
            json!({ "sub": "u4", "exp": now + 60, "aud": aud }),
        ))
        .await;
        assert_eq!(status, 200, "{aud}: {body}");
        assert_eq!(body["data"]["viewer"]["id"], "u4");
    }
    // Refused: the wrong audience (alone or in an array), no audience, `iat` in the future,
    // an unknown critical header.
    let mut crit = hs.clone();
    crit.crit = Some(vec!["exp-ext".into()]);
    for (what, token) in [
        (
            "other aud",
            sign(&hs, json!({ "sub": "u4", "exp": now + 60, "aud": "other" })),
        ),
        (
            "array without ours",
            sign(
                &hs,
                json!({ "sub": "u4", "exp": now + 60, "aud": ["a", "b"] }),
            ),
        ),
        ("no aud", sign(&hs, json!({ "sub": "u4", "exp": now + 60 }))),
        (
            "future iat",
            sign(
                &hs,
                json!({ "sub": "u4", "exp": now + 600, "iat": now + 300, "aud": "bff-web" }),
            ),
        ),
        (
            "crit",
            sign(
                &crit,
                json!({ "sub": "u4", "exp": now + 60, "aud": "bff-web" }),
            ),
        ),
    ] {
        let (status, body) = ask(token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"], "{what}");
    }
    // Two Authorization headers: which one counts would be a guess.
    let good = sign(
        &hs,
        json!({ "sub": "u4", "exp": now + 60, "aud": "bff-web" }),
    );
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", "Bearer x")
        .body(r#"{"query":"{ viewer { id } }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn connections_cannot_be_held_open() {
    let app = spawn_app_with(web(), |s| {
        s.server.header_read_timeout = Duration::from_millis(300);
        s.server.idle_timeout = Duration::from_millis(400);
        s.server.body_read_timeout = Duration::from_millis(500);
        s.server.max_body_bytes = 1024;
    })
    .await;
    let bound = Duration::from_secs(5);
    // Headers that never end: closed at the header timeout.
    let started = Instant::now();
    let answer = raw(
        app.addr,
        b"POST /graphql HTTP/1.1\r\nhost: x\r\nx-slow: ",
        bound,
    )
    .await;
    assert!(
        started.elapsed() < bound,
        "still open after {:?}",
        started.elapsed()
    );
    assert!(!answer.contains(" 200 "), "{answer}");
    // An idle keep-alive connection: closed after its request, at the idle timeout.
    let started = Instant::now();
    let answer = raw(app.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", bound).await;
    assert!(status_line(&answer).contains(" 200 "), "{answer}");
    assert!(
        started.elapsed() < bound,
        "idle connection kept {:?}",
        started.elapsed()
    );
    // A body that trickles: 408 at the body timeout.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    for _ in 0..20 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
    let answer = String::from_utf8_lossy(&out);
    assert!(status_line(&answer).contains(" 408 "), "{answer}");
    assert!(started.elapsed() < bound);
    // A declared length over the limit: 413 at once, the body never asked for.
    for request in [
        "POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n",
        "POST /graphql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\nexpect: 100-continue\r\n\r\n",
    ] {
        let started = Instant::now();
        let answer = raw(app.addr, request.as_bytes(), bound).await;
        assert!(status_line(&answer).contains(" 413 "), "{answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(started.elapsed() < bound);
    }
    others_are_served(&app).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_on_arrival() {
    let app = spawn_app_with(web(), |s| s.server.max_connections = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains(" 200 "));
        held.push(s);
    }
    let answer = raw(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.is_empty(),
        "the fifth connection was served: {answer}"
    );
    drop(held.pop());
    // The freed slot is usable again (bounded wait for the server to see the close).
    let mut served = false;
    for _ in 0..50 {
        let answer = raw(
            app.addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if answer.contains(" 200 ") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn http2_requests_are_served_and_oversized_header_lists_refused() {
    let app = spawn_app_with(web(), |s| s.server.max_header_bytes = 16 * 1024).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let huge = h2
        .get(app.url("/healthz"))
        .header("x-big", "v".repeat(64 * 1024))
        .send()
        .await;
    assert!(
        huge.as_ref().map_or(true, |r| r.status() == 431),
        "{:?}",
        huge.map(|r| r.status())
    );
    let r = h2.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the connection's other streams go on");
}

#[tokio::test]
async fn spec_answers_for_directives_variables_and_skipped_selections() {
    let app = spawn_app(web()).await;
    for (query, variables, status, code) in [
        (
            "{ homepage @nope { region } }",
            json!({}),
            400,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "{ homepage { region @skip(if: \"yes\") } }",
            json!({}),
            400,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "{ homepage { region @skip(unless: true) } }",
            json!({}),
            400,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "{ homepage(region: $r) { region } }",
            json!({}),
            400,
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "query($r: String!) { homepage(region: $r) { region } }",
            json!({}),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "query($r: String!) { homepage(region: $r) { region } }",
            json!({ "r": null }),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "query($r: String!) { homepage(region: $r) { region } }",
            json!({ "r": 7 }),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "query($s: Boolean!) { homepage { region @skip(if: $s) } }",
            json!({ "s": "no" }),
            400,
            "BAD_USER_INPUT",
        ),
    ] {
        let (s, body) = app.post_graphql(query, variables.clone(), None).await;
        let mut got = codes(&body);
        got.dedup();
        assert_eq!(
            (s.as_u16(), got),
            (status, vec![code.to_owned()]),
            "{query} {variables}: {body}"
        );
    }
    // Everything skipped: an empty object, at the root and inside.
    let (s, body) = app
        .post_graphql("{ homepage @skip(if: true) { region } }", json!({}), None)
        .await;
    assert_eq!((s.as_u16(), &body), (200, &json!({ "data": {} })));
    let (_, body) = app
        .post_graphql(
            "query($no: Boolean!) { homepage { rows { kind @include(if: $no) } } }",
            json!({ "no": false }),
            None,
        )
        .await;
    let rows = body["data"]["homepage"]["rows"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r == &json!({})),
        "{body}"
    );
}

#[tokio::test]
async fn pass_through_routes_send_the_bffs_own_trace_context() {
    let (app, fx) = route_app(|_| {}).await;
    let r = app
        .http
        .get(app.url("/api/charts/GB"))
        .header("traceparent", "garbage-not-a-traceparent")
        .header("x-request-id", "r".repeat(300))
        .header("tracestate", format!("k={}", "v".repeat(5000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answered_trace = r.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let seen = fx.control().stats_of(Backend::Top10).last_headers;
    let tp = seen.get("traceparent").expect("a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1]),
        ("00", answered_trace.as_str()),
        "{tp}"
    );
    assert!(
        parts[2].len() == 16 && parts[2] != "0000000000000000",
        "{tp}"
    );
    let rid = seen.get("x-request-id").expect("a request id");
    assert!(rid.len() <= 128 && !rid.starts_with("rrrr"), "{rid}");
    assert!(!seen.contains_key("tracestate"), "{seen:?}");
    // A valid one is continued, with its tracestate.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    app.http
        .get(app.url("/api/charts/GB"))
        .header("traceparent", parent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    let seen = fx.control().stats_of(Backend::Top10).last_headers;
    let tp = &seen["traceparent"];
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the proxy's own span is the parent: {tp}"
    );
    assert_eq!(
        seen.get("tracestate").map(String::as_str),
        Some("congo=t61rcWkgMzE")
    );
}

#[tokio::test]
async fn typename_only_documents_are_validated_like_any_other() {
    let app = spawn_app(web()).await;
    for q in [
        "{ __typename @x }",
        "{ __typename @include(if: 1) }",
        "{ __typename @skip(if: \"yes\") }",
        "{ __typename @include }",
        "{ __typename @skip(if: true) @skip(if: true) }",
        "{ __typename(id: 1) }",
        "{ __typename { x } }",
        "{ a: __typename @deprecated }",
        "{ ...F } fragment F on Query { __typename @x }",
        "query($v: String!) { __typename @include(if: $v) }",
        "{ homepage { __typename @x } }",
        "mutation { __typename @x }",
    ] {
        let (status, body) = app.post_graphql(q, json!({ "v": "s" }), None).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"], "{q}: {body}");
        assert!(body["data"].is_null(), "{q}: nothing ran: {body}");
    }
    // Over GET as well (queries only), and in the legacy JSON mode (200 with the error).
    let r = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "{ __typename @x }")])
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"], "{body}");
    // What is valid still answers.
    for (q, vars) in [
        ("{ __typename }", json!({})),
        ("{ t: __typename @include(if: true) }", json!({})),
        // (A variable used only on `__typename` is not: the engine's unused-variable rule does
        // not see `__typename` either, and refuses it; stricter than the spec, never looser.)
        (
            "query($b: Boolean!) { __typename @include(if: $b) homepage @include(if: $b) { region } }",
            json!({ "b": true }),
        ),
    ] {
        let (status, body) = app.post_graphql(q, vars, None).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert!(body["errors"].is_null(), "{q}: {body}");
    }
}

#[tokio::test]
async fn forged_forwarding_headers_on_raw_sockets_never_choose_the_address() {
    // Behind a trusted proxy (this test on 127.0.0.1) that appends X-Forwarded-For; every
    // request below carries the address the proxy saw last, which is denied.
    let app = spawn_app_with(web(), |s| {
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.ip_rules.deny = vec!["203.0.113.0/24".parse().unwrap()];
    })
    .await;
    let forged: [&[u8]; 9] = [
        b"Forwarded: for=198.51.100.1\r\nX-Forwarded-For: 203.0.113.66\r\n",
        b"Forwarded: for=unknown\r\nX-Forwarded-For: 203.0.113.66\r\n",
        b"Forwarded: For=\"_hidden\"\r\nX-Forwarded-For: 203.0.113.66\r\n",
        b"X-Forwarded-For: \xff\xfe, 203.0.113.66\r\n",
        b"X-Forwarded-For: \xff\xfe\r\nX-Forwarded-For: 203.0.113.66\r\n",
        b"X-Forwarded-For: 198.51.100.1, 203.0.113.66\r\n",
        b"X-Forwarded-For: 198.51.100.1,,\"\r\nx-forwarded-for: 203.0.113.66:4711\r\n",
        b"X-Forwarded-For: [2001:db8::1]:80, 203.0.113.66\r\nFORWARDED: for=\"[2001:db8::2]\"\r\n",
        b"x-FORWARDED-for: 127.0.0.1, unknown, 203.0.113.66\r\n",
    ];
    for headers in forged {
        let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        req.extend_from_slice(headers);
        req.extend_from_slice(b"\r\n");
        let answer = raw(app.addr, &req, Duration::from_secs(5)).await;
        assert!(
            status_line(&answer).contains(" 403 "),
            "{}: {answer}",
            String::from_utf8_lossy(headers)
        );
    }
    // Where the proxy's own entry is unreadable, nobody vouched for a client: the proxy stands.
    let answer = raw(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.66, unknown\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(status_line(&answer).contains(" 200 "), "{answer}");
    others_are_served(&app).await;
}

#[tokio::test]
async fn hostile_batches_are_charged_per_item_whatever_the_items_are() {
    use shared::config::{Algorithm, Cost, KeyPart, PolicySettings, Scope};
    let app = spawn_app_with(web(), |s| {
        s.graphql.max_batch = 20;
        s.rate_limits.policies = vec![PolicySettings {
            name: "per-ip".into(),
            algorithm: Algorithm::FixedWindow,
            limit: 12,
            period: Duration::from_secs(3600),
            burst: None,
            key: vec![KeyPart::Ip],
            scope: Scope::Graphql,
            cost: Cost::One,
        }];
    })
    .await;
    // Items that are not operations (numbers, nulls, arrays, broken queries) are charged as
    // each would be alone: the request reached the server either way.
    let items: Vec<Value> = vec![
        json!(1),
        json!(null),
        json!([]),
        json!({ "query": "{" }),
        json!({ "query": "{ __typename @x }" }),
        json!({}),
        json!({ "query": "{ __typename }" }),
        json!("{ __typename }"),
        json!({ "query": "{ __typename }", "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "00" } } }),
        json!({ "query": "{ __typename }" }),
    ];
    let r = app.post_body(&json!(items), None, None).await;
    assert_eq!(r.status(), 200);
    let state = r.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(state.starts_with("\"per-ip\";r=2;"), "{state}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 10);
    // Two left: a batch of five runs two, refuses three; then everything is refused.
    let five: Vec<Value> = (0..5)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let r = app.post_body(&json!(five), None, None).await;
    let body: Value = r.json().await.unwrap();
    let limited = body
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| codes(a) == ["RATE_LIMITED"])
        .count();
    assert_eq!(limited, 3, "{body}");
    let r = app.post_body(&json!(five), None, None).await;
    assert_eq!(r.status(), 429);
}

/// A REST backend that answers every call with `size` bytes, streamed without a length, and
/// counts what it managed to hand over.
async fn flooding_backend(size: u64) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || {
        let served = counter.clone();
        async move {
            const CHUNK: u64 = 64 * 1024;
            let stream = futures::stream::unfold(0u64, move |sent| {
                let served = served.clone();
                async move {
                    if sent >= size {
                        return None;
                    }
                    served.fetch_add(CHUNK, Ordering::SeqCst);
                    let chunk = axum::body::Bytes::from(vec![b' '; CHUNK as usize]);
                    Some((Ok::<_, std::io::Error>(chunk), sent + CHUNK))
                }
            });
            axum::body::Body::from_stream(stream)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, served)
}

#[tokio::test]
async fn a_backend_answering_100_mb_is_cut_off_at_its_bound_and_only_its_row_fails() {
    use std::sync::atomic::Ordering;
    let (base, served) = flooding_backend(100 * 1024 * 1024).await;
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::Top10].url = format!("{base}/top10");
        s.backends[BackendId::Top10].endpoints.clear();
        s.backends[BackendId::Top10].max_response_bytes = 256 * 1024;
    })
    .await;
    let body = app.homepage("kind", None).await;
    let rows = body["data"]["homepage"]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["kind"] == "NEW_RELEASES"), "{body}");
    assert!(
        rows.iter().any(Value::is_null),
        "the TOP_10 row is null: {body}"
    );
    let errors = errors(&body);
    assert!(
        errors
            .iter()
            .any(|e| e["extensions"]["code"] == "BACKEND_UNAVAILABLE"
                && e["extensions"]["backend"] == "top10"),
        "{body}"
    );
    // Every attempt (retries included) was abandoned near the bound.
    let served = served.load(Ordering::SeqCst);
    assert!(served < 32 * 1024 * 1024, "{served} of 100 MB handed over");
    // A too-small bound is refused at start, naming the key.
    let binary = (web().defaults)();
    let opts = shared::config::LoadOptions {
        env: vec![(
            "BFF_BACKENDS__TOP10__MAX_RESPONSE_BYTES".into(),
            "10".into(),
        )],
        ..Default::default()
    };
    let err = Settings::load(&binary, &opts).unwrap_err().to_string();
    assert!(err.contains("backends.top10.max_response_bytes"), "{err}");
}
