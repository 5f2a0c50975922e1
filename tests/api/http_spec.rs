//! GraphQL over HTTP: statuses, content types and coded errors for bad requests; limits;
//! GET is read-only; compression.

use serde_json::{Value, json};

use crate::helpers::*;

async fn raw(app: &TestApp, req: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let _ = app;
    (status, ct, body)
}

#[tokio::test]
async fn bad_requests_get_the_spec_status_and_a_coded_error() {
    let app = spawn_app(web()).await;
    let post = || {
        app.http
            .post(app.url("/graphql"))
            .header("accept", "application/graphql-response+json")
    };

    let (s, ct, body) = raw(
        &app,
        post()
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((s, codes(&body)), (400, vec!["BAD_USER_INPUT".to_owned()]));
    assert_eq!(
        ct.as_deref(),
        Some("application/graphql-response+json; charset=utf-8")
    );

    let (s, _, body) = raw(&app, post().header("content-type", "text/plain").body("{}")).await;
    assert_eq!((s, codes(&body)), (415, vec!["BAD_USER_INPUT".to_owned()]));
    let (s, _, _) = raw(&app, post().body("{\"query\":\"{ __typename }\"}")).await;
    assert_eq!(s, 415, "a missing content type is unsupported");

    let (s, _, body) = raw(&app, post().json(&json!({ "query": 5 }))).await;
    assert_eq!((s, codes(&body)), (400, vec!["BAD_USER_INPUT".to_owned()]));
    let (s, _, _) = raw(
        &app,
        post().json(&json!({ "query": "{ __typename }", "variables": "x" })),
    )
    .await;
    assert_eq!(s, 400);

    let (s, _, body) = raw(&app, post().json(&json!({ "query": "{ homepage(" }))).await;
    assert_eq!(
        (s, codes(&body)),
        (400, vec!["GRAPHQL_PARSE_FAILED".to_owned()])
    );
    assert!(body.get("data").is_none());

    let (s, _, body) = raw(&app, post().json(&json!({ "query": "{ nope }" }))).await;
    assert_eq!(
        (s, codes(&body)),
        (400, vec!["GRAPHQL_VALIDATION_FAILED".to_owned()])
    );

    let (s, _, body) = raw(
        &app,
        post().json(&json!({ "query": "query($id: ID!) { title(id: $id) { id } }", "variables": { "id": { "a": 1 } } })),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        codes(&body)
            .iter()
            .all(|c| c == "BAD_USER_INPUT" || c == "GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );

    // Legacy application/json clients get 200 for documents that fail, as the spec says.
    let (s, ct, body) = raw(
        &app,
        app.http
            .post(app.url("/graphql"))
            .header("accept", "application/json")
            .json(&json!({ "query": "{ nope }" })),
    )
    .await;
    assert_eq!(
        (s, ct.as_deref()),
        (200, Some("application/json; charset=utf-8"))
    );
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"]);

    let csv_only = app
        .http
        .post(app.url("/graphql"))
        .header("accept", "text/csv");
    let (s, _, _) = raw(&app, csv_only.json(&json!({ "query": "{ __typename }" }))).await;
    assert_eq!(s, 406);
}

#[tokio::test]
async fn mutations_over_get_are_405_and_queries_over_get_work() {
    let app = spawn_app(web()).await;
    let get = |q: &str| {
        app.http
            .get(app.url("/graphql"))
            .query(&[("query", q)])
            .header("accept", "application/json")
    };
    let (s, _, body) = raw(
        &app,
        get("mutation { addToMyList(titleId: \"t1\") { changed } }").bearer_auth(app.token("u1")),
    )
    .await;
    assert_eq!(s, 405, "{body}");
    assert_eq!(
        app.control()
            .stats()
            .get(bff_fixtures::Backend::MyList)
            .calls,
        0
    );
    let (s, _, body) = raw(&app, get("{ title(id: \"t1\") { id } }")).await;
    assert_eq!((s, body["data"]["title"]["id"].as_str()), (200, Some("t1")));
    // operationName picks the operation on GET too.
    let doc = "query A { title(id: \"t1\") { id } } mutation B { addToMyList(titleId: \"t1\") { changed } }";
    let (s, _, _) = raw(&app, get(doc).query(&[("operationName", "B")])).await;
    assert_eq!(s, 405);
    let (s, _, _) = raw(&app, get(doc).query(&[("operationName", "A")])).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app(web()).await;
    let big = format!("{{ __typename }} # {}", "x".repeat(300 * 1024));
    let (s, ct, body) = raw(
        &app,
        app.http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .json(&json!({ "query": big })),
    )
    .await;
    assert_eq!(s, 413);
    assert!(ct.unwrap().contains("json"));
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn too_deep_queries_are_query_too_complex() {
    let app = spawn_app_with(web(), |s| s.graphql.max_depth = 4).await;
    let (s, body) = app
        .post_graphql(
            "{ homepage { rows { items { title { images { poster { url } } } } } } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(
        (s.as_u16(), codes(&body)),
        (400, vec!["QUERY_TOO_COMPLEX".to_owned()])
    );
    let (s, _) = app
        .post_graphql("{ homepage { rows { kind } } }", json!({}), None)
        .await;
    assert_eq!(s, 200);
}

/// The document cache hands each request its own copy: `@skip`/`@include` are applied to the
/// document with each request's variables, and validation still runs on a cached document.
#[tokio::test]
async fn repeated_operations_are_answered_per_request_from_the_document_cache() {
    let app = spawn_app(web()).await;
    let q = "query Q($full: Boolean!) { homepage(region: \"US\") { region rows { kind heading @include(if: $full) } } }";
    let mut answers = Vec::new();
    for full in [true, false, true, false] {
        let (s, body) = app.post_graphql(q, json!({ "full": full }), None).await;
        assert_eq!(s, 200, "{body}");
        let rows = body["data"]["homepage"]["rows"].as_array().unwrap().clone();
        assert!(!rows.is_empty(), "{body}");
        assert!(
            rows.iter().all(|r| r.get("heading").is_some() == full),
            "full={full}: {body}"
        );
        answers.push(rows);
    }
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[1], answers[3]);

    // A cached document with variables of the wrong type is still rejected by validation.
    let (s, body) = app.post_graphql(q, json!({ "full": "yes" }), None).await;
    assert_eq!(s, 400, "{body}");
    let errors = codes(&body);
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|c| c == "BAD_USER_INPUT" || c == "GRAPHQL_VALIDATION_FAILED"),
        "{body}"
    );
    // So is a malformed query, every time (only documents that parse are kept).
    for _ in 0..2 {
        let (s, body) = app.post_graphql("{ homepage {", json!({}), None).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(codes(&body), ["GRAPHQL_PARSE_FAILED"]);
    }
}

/// Compressed answers decode to exactly the uncompressed one (which goes out in pieces).
#[tokio::test]
async fn responses_are_compressed_when_the_client_accepts_it() {
    use std::io::Read as _;

    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let fetch = |enc: &'static str| {
        app.http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept-encoding", enc)
            .bearer_auth(&token)
            .json(&json!({ "query": WEB_FULL }))
            .send()
    };
    let plain = fetch("identity").await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 100_000, "{}", plain.len());
    for enc in ["gzip", "br", "zstd"] {
        let resp = fetch(enc).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("content-encoding").unwrap(), enc);
        let packed = resp.bytes().await.unwrap();
        assert!(packed.len() < plain.len() / 4, "{enc}: {}", packed.len());
        let mut unpacked = Vec::new();
        match enc {
            "gzip" => flate2::read::GzDecoder::new(&packed[..])
                .read_to_end(&mut unpacked)
                .map(drop),
            "br" => brotli_decompressor::Decompressor::new(&packed[..], 4096)
                .read_to_end(&mut unpacked)
                .map(drop),
            _ => zstd::stream::read::Decoder::new(&packed[..])
                .and_then(|mut d| d.read_to_end(&mut unpacked))
                .map(drop),
        }
        .unwrap();
        if unpacked != plain {
            let at = unpacked
                .iter()
                .zip(plain.iter())
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{enc} decodes to another answer: {} vs {} bytes, apart at {at}: {:?} / {:?}",
                unpacked.len(),
                plain.len(),
                String::from_utf8_lossy(
                    &unpacked[at.saturating_sub(80)..(at + 80).min(unpacked.len())]
                ),
                String::from_utf8_lossy(&plain[at.saturating_sub(80)..(at + 80).min(plain.len())])
            );
        }
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(web()).await;
    assert_eq!(app.status_of("/healthz").await, 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");
    let body = app.readyz().await;
    assert_eq!(body["backends"]["catalog"]["reachable"], true);
}

#[tokio::test]
async fn graphiql_is_served_to_browsers() {
    let app = spawn_app(web()).await;
    let r = app.browser_get_graphql().await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("GraphiQL"));
}
