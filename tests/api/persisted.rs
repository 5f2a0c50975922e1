//! Persisted operations (APQ over POST and GET, the allow list from a manifest) and identical
//! requests answered once (coalescing), end to end.

use std::path::PathBuf;

use bff_fixtures::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::graphql::persisted::{manifest_json, sha256_hex};

use crate::helpers::*;

const TOP10: &str =
    "query Top { homepage(region: \"US\") { rows { kind items { rank title { id } } } } }";

fn pq(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

impl TestApp {
    async fn post_json(&self, body: Value, token: Option<&str>) -> (StatusCode, Value) {
        let resp = self.post_body(&body, Some(GRAPHQL_RESPONSE), token).await;
        (resp.status(), resp.json().await.unwrap())
    }

    async fn get_query(&self, params: &[(&str, String)]) -> reqwest::Response {
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.http
            .get(self.url(&format!("/graphql?{qs}")))
            .header("accept", "application/graphql-response+json")
            .send()
            .await
            .unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[tokio::test]
async fn apq_over_post_not_found_then_registered_then_the_hash_is_enough() {
    let app = spawn_app(web()).await;
    let hash = sha256_hex(TOP10);

    let (status, body) = app
        .post_json(json!({ "extensions": pq(&hash) }), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_FOUND"]);
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");

    // The wrong query for the hash is refused and not registered.
    let (status, body) = app
        .post_json(
            json!({ "query": "{ viewer { id } }", "extensions": pq(&hash) }),
            None,
        )
        .await;
    assert_eq!(
        (status, codes(&body)),
        (StatusCode::BAD_REQUEST, vec!["BAD_USER_INPUT".to_owned()])
    );

    let (status, registered) = app
        .post_json(json!({ "query": TOP10, "extensions": pq(&hash) }), None)
        .await;
    assert_eq!(status, 200, "{registered}");
    assert!(errors(&registered).is_empty(), "{registered}");

    // Upper-case hex is the same hash.
    let (status, by_hash) = app
        .post_json(
            json!({ "extensions": pq(&hash.to_ascii_uppercase()) }),
            None,
        )
        .await;
    assert_eq!(status, 200, "{by_hash}");
    assert_eq!(by_hash["data"], registered["data"]);

    for bad in [
        json!({ "persistedQuery": { "version": 2, "sha256Hash": hash } }),
        json!({ "persistedQuery": { "version": 1, "sha256Hash": "abc" } }),
        json!({ "persistedQuery": { "version": 1, "sha256Hash": "g".repeat(64) } }),
        json!({ "persistedQuery": [] }),
    ] {
        let (status, body) = app.post_json(json!({ "extensions": bad }), None).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{body}");
    }
}

#[tokio::test]
async fn apq_over_get_is_cacheable_by_a_cdn_like_any_anonymous_get() {
    let app = spawn_app(web()).await;
    let hash = sha256_hex(TOP10);
    let ext = pq(&hash).to_string();

    let resp = app.get_query(&[("extensions", ext.clone())]).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_FOUND"]);

    // Apollo's client registers a query over GET too.
    let resp = app
        .get_query(&[("query", TOP10.to_owned()), ("extensions", ext.clone())])
        .await;
    assert_eq!(resp.status(), 200);

    let resp = app.get_query(&[("extensions", ext.clone())]).await;
    assert_eq!(resp.status(), 200);
    let cc = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    let vary = resp.headers()["vary"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        vary.contains("authorization") && vary.contains("accept"),
        "{vary}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);

    // Signed in, the same persisted GET is private.
    let resp = app
        .http
        .get(app.url(&format!(
            "/graphql?extensions={}",
            form_urlencoded::byte_serialize(ext.as_bytes()).collect::<String>()
        )))
        .bearer_auth(app.token("u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "private, no-store");

    // A persisted mutation is still refused over GET.
    let m = "mutation { addToMyList(titleId: \"t1\") { changed } }";
    let resp = app
        .get_query(&[
            ("query", m.to_owned()),
            ("extensions", pq(&sha256_hex(m)).to_string()),
        ])
        .await;
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn persisted_queries_off_refuses_the_extension() {
    let app = spawn_app_with(web(), |s| {
        s.graphql.persisted.mode = shared::config::PersistedMode::Off;
    })
    .await;
    let (status, body) = app
        .post_json(
            json!({ "query": TOP10, "extensions": pq(&sha256_hex(TOP10)) }),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not supported")
    );
    // Plain queries still run.
    let (status, _) = app.post_json(json!({ "query": TOP10 }), None).await;
    assert_eq!(status, 200);
}

fn manifest_with(ops: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bff-allow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manifest.json");
    let ops: Vec<(String, String, String)> = ops
        .iter()
        .map(|q| ("Op".to_owned(), "query".to_owned(), (*q).to_owned()))
        .collect();
    std::fs::write(&path, manifest_json(&ops).to_string()).unwrap();
    path
}

#[tokio::test]
async fn the_allow_list_runs_only_its_operations_and_hides_introspection_and_graphiql() {
    let manifest = manifest_with(&[TOP10]);
    let app = spawn_app_with(mobile(), |s| {
        s.graphql.persisted.mode = shared::config::PersistedMode::AllowList;
        s.graphql.persisted.manifest = Some(manifest.clone());
    })
    .await;

    // The manifest's operation by hash, and as text.
    let (status, body) = app
        .post_json(json!({ "extensions": pq(&sha256_hex(TOP10)) }), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kinds(&body), ["TOP_10"]);
    let (status, _) = app.post_json(json!({ "query": TOP10 }), None).await;
    assert_eq!(status, 200);

    // Anything else: refused, by text or by hash, and never registered.
    let other = "{ homepage(region: \"US\") { rows { kind } } }";
    for body in [
        json!({ "query": other }),
        json!({ "query": other, "extensions": pq(&sha256_hex(other)) }),
        json!({ "extensions": pq(&sha256_hex(other)) }),
        json!({ "query": "{ __schema { types { name } } }" }),
    ] {
        let (status, answer) = app.post_json(body.clone(), None).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(codes(&answer), ["FORBIDDEN"], "{body} → {answer}");
    }
    let (_, answer) = app
        .post_json(json!({ "extensions": pq(&sha256_hex(other)) }), None)
        .await;
    assert_eq!(
        codes(&answer),
        ["FORBIDDEN"],
        "not registered by the attempt"
    );
    assert_eq!(app.fixtures.control().stats_of(Backend::Top10).calls, 1);

    // No GraphiQL page: a browser gets the JSON refusal.
    let resp = app.browser_get_graphql().await;
    assert_ne!(resp.headers()["content-type"], "text/html; charset=utf-8");
    std::fs::remove_dir_all(manifest.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn the_allow_list_may_still_serve_introspection() {
    let manifest = manifest_with(&[TOP10]);
    let app = spawn_app_with(mobile(), |s| {
        s.graphql.persisted.mode = shared::config::PersistedMode::AllowList;
        s.graphql.persisted.manifest = Some(manifest.clone());
        s.graphql.persisted.allow_introspection = true;
    })
    .await;
    let (status, body) = app
        .post_json(
            json!({ "query": "{ __schema { queryType { name } } }" }),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
    // Introspection mixed with data is not introspection.
    let (status, body) = app
        .post_json(
            json!({ "query": "{ __typename homepage(region: \"US\") { region } }" }),
            None,
        )
        .await;
    assert_eq!(
        (status, codes(&body)),
        (StatusCode::BAD_REQUEST, vec!["FORBIDDEN".to_owned()])
    );
    std::fs::remove_dir_all(manifest.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn a_tampered_manifest_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("bff-tampered-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.json");
    std::fs::write(&path, json!({ sha256_hex("{ a }"): "{ b }" }).to_string()).unwrap();
    let mut settings = shared::config::Settings::defaults(&(web().defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.graphql.persisted.mode = shared::config::PersistedMode::AllowList;
    settings.graphql.persisted.manifest = Some(path.clone());
    let err = shared::server::Application::build(settings, &web(), Default::default())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("is not the SHA-256 of its body"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `n` copies of each request at once; the answers in order.
async fn concurrently(app: &TestApp, requests: Vec<(Value, Option<String>)>) -> Vec<Value> {
    let futures = requests.into_iter().map(|(body, token)| async move {
        let (status, answer) = app.post_json(body, token.as_deref()).await;
        assert_eq!(status, 200, "{answer}");
        answer
    });
    futures::future::join_all(futures).await
}

fn slow_backends(app: &TestApp) {
    for b in [
        Backend::Top10,
        Backend::NewReleases,
        Backend::MyList,
        Backend::Profile,
    ] {
        app.fault(b, latency(300));
    }
}

#[tokio::test]
async fn identical_anonymous_requests_share_one_execution() {
    let app = spawn_app_with(web(), |s| s.cache.enabled = false).await;
    slow_backends(&app);
    let answers = concurrently(&app, vec![(json!({ "query": TOP10 }), None); 8]).await;
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(app.fixtures.control().stats_of(Backend::Top10).calls, 1);
    assert_eq!(app.metric("bff_graphql_coalesced_total").await, 7.0);

    // Other variables are another request.
    let q = "query($r: String!) { homepage(region: $r) { region } }";
    let requests = vec![
        (json!({ "query": q, "variables": { "r": "US" } }), None),
        (json!({ "query": q, "variables": { "r": "GB" } }), None),
    ];
    let answers = concurrently(&app, requests).await;
    assert_ne!(answers[0], answers[1]);
    assert_eq!(app.metric("bff_graphql_coalesced_total").await, 7.0);
}

#[tokio::test]
async fn requests_of_different_viewers_never_share() {
    let app = spawn_app_with(web(), |s| s.cache.enabled = false).await;
    slow_backends(&app);
    let (t1, t2) = (app.token("u1"), app.token("u2"));
    let q = "{ viewer { id } homepage(region: \"US\") { rows { kind items { title { id } } } } }";
    let mut requests = Vec::new();
    for token in [None, Some(t1.clone()), Some(t2.clone())] {
        for _ in 0..3 {
            requests.push((json!({ "query": q }), token.clone()));
        }
    }
    let answers = concurrently(&app, requests).await;
    // Three executions: anonymous, u1, u2; each group shares one.
    assert_eq!(app.metric("bff_graphql_coalesced_total").await, 6.0);
    assert_eq!(app.fixtures.control().stats_of(Backend::Top10).calls, 3);
    assert_eq!(app.fixtures.control().stats_of(Backend::MyList).calls, 2);
    assert!(answers[0]["data"]["viewer"].is_null());
    assert_eq!(answers[3]["data"]["viewer"]["id"], "u1");
    assert_eq!(answers[6]["data"]["viewer"]["id"], "u2");
    assert_eq!(kinds(&answers[0]), ["TOP_10", "NEW_RELEASES"]);
    assert!(kinds(&answers[3]).contains(&"MY_LIST".to_owned()));
    for group in answers.chunks(3) {
        assert!(group.iter().all(|a| a == &group[0]));
    }
    // Mutations never coalesce: two identical adds are two calls.
    let add = json!({ "query": "mutation { addToMyList(titleId: \"t9\") { titleId } }" });
    let before = app.fixtures.control().stats_of(Backend::MyList).calls;
    concurrently(&app, vec![(add.clone(), Some(t1.clone())), (add, Some(t1))]).await;
    assert_eq!(
        app.fixtures.control().stats_of(Backend::MyList).calls,
        before + 2
    );
}

#[tokio::test]
async fn coalescing_off_runs_every_request() {
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        s.graphql.coalesce = false;
    })
    .await;
    slow_backends(&app);
    concurrently(&app, vec![(json!({ "query": TOP10 }), None); 4]).await;
    assert_eq!(app.fixtures.control().stats_of(Backend::Top10).calls, 4);
    assert_eq!(app.metric("bff_graphql_coalesced_total").await, 0.0);
}

/// The allow-list example of `docs/edge.md` ("Persisted operations"): a manifest made by `--persisted-manifest` from the repo's
/// example operations runs every one of them, by hash, on an allow-list BFF.
#[tokio::test]
async fn the_repos_example_operations_make_a_manifest_the_allow_list_runs() {
    for (surface, name) in [(web(), "web"), (mobile(), "mobile")] {
        let ops = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../schema/operations")
            .join(name);
        let manifest = shared::cli::persisted_manifest(&ops).unwrap();
        let dir = std::env::temp_dir().join(format!("bff-ops-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manifest.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        let app = spawn_app_with(surface, |s| {
            s.graphql.persisted.mode = shared::config::PersistedMode::AllowList;
            s.graphql.persisted.manifest = Some(path.clone());
        })
        .await;
        let token = app.token("u1");
        let operations = manifest["operations"].as_array().unwrap();
        assert_eq!(operations.len(), 4, "{name}: {manifest}");
        for op in operations {
            let id = op["id"].as_str().unwrap();
            assert_eq!(id, sha256_hex(op["body"].as_str().unwrap()));
            let variables = match op["name"].as_str().unwrap() {
                "Title" => json!({ "id": "t1" }),
                "AddToMyList" | "RemoveFromMyList" => json!({ "titleId": "t2" }),
                _ => json!({}),
            };
            let (status, body) = app
                .post_json(
                    json!({ "variables": variables, "extensions": pq(id) }),
                    Some(&token),
                )
                .await;
            assert_eq!(status, 200, "{name} {}: {body}", op["name"]);
            assert!(errors(&body).is_empty(), "{name} {}: {body}", op["name"]);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_manifest_refuses_unusable_operation_files() {
    let dir = std::env::temp_dir().join(format!("bff-badops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = |dir: &std::path::Path| {
        shared::cli::persisted_manifest(dir)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(&dir).contains("no *.graphql"));
    std::fs::write(dir.join("a.graphql"), "{ homepage { region } }").unwrap();
    assert!(err(&dir).contains("needs a name"));
    std::fs::write(dir.join("a.graphql"), "query A { x } query B { y }").unwrap();
    assert!(err(&dir).contains("one operation per file"));
    std::fs::write(dir.join("a.graphql"), "query A { x").unwrap();
    assert!(err(&dir).contains("a.graphql"));
    std::fs::remove_dir_all(dir).unwrap();
}
