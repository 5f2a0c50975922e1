//! What a newcomer and every GraphQL tool meet first: the standard introspection query answered
//! under the default limits, GraphiQL opening on a runnable example that matches the README,
//! suggestions hidden when introspection is off, and answers a shared cache cannot mix up.

use serde_json::{Value, json};

use crate::helpers::*;

/// graphql-js's `getIntrospectionQuery()` with every option GraphiQL and graphql-js tools use.
const INTROSPECTION: &str = include_str!("introspection.graphql");

#[tokio::test]
async fn the_graphql_js_introspection_query_is_answered_on_both_binaries_with_default_limits() {
    for surface in [web(), mobile()] {
        let app = spawn_app(surface).await;
        let (status, body) = app.post_graphql(INTROSPECTION, json!({}), None).await;
        assert_eq!(status, 200, "{}: {body}", surface.name);
        assert!(body.get("errors").is_none(), "{}: {body}", surface.name);
        let schema = &body["data"]["__schema"];
        assert_eq!(schema["queryType"]["name"], "Query");
        let types = schema["types"].as_array().unwrap();
        assert!(
            types.iter().any(|t| t["name"] == "Title"),
            "{}",
            surface.name
        );
        let directives = schema["directives"].as_array().unwrap();
        assert!(
            directives
                .iter()
                .any(|d| d["name"] == "skip" && d["isRepeatable"] == false)
        );
    }
}

#[tokio::test]
async fn tight_data_limits_still_let_introspection_through() {
    let app = spawn_app_with(web(), |s| {
        s.graphql.max_depth = 3;
        s.graphql.max_complexity = 5;
    })
    .await;
    let (status, body) = app.post_graphql(INTROSPECTION, json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["__schema"]["types"].is_array());
    // The same limits stop a data query, with the code docs/edge.md promises.
    let (status, body) = app
        .post_graphql("{ homepage { rows { items { rank } } } }", json!({}), None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"]);
    // An introspection query deeper than introspection's own fixed bound is refused too.
    let mut deep = String::from("name");
    for _ in 0..30 {
        deep = format!("ofType {{ {deep} }}");
    }
    let (status, body) = app
        .post_graphql(
            &format!("{{ __type(name: \"Query\") {{ {deep} }} }}"),
            json!({}),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"]);
}

#[tokio::test]
async fn with_introspection_off_graphiql_says_so_and_errors_suggest_nothing() {
    let app = spawn_app_with(web(), |s| s.graphql.introspection = false).await;
    let page = app.browser_get_graphql().await.text().await.unwrap();
    assert!(page.contains("Introspection is off on this server"));
    assert!(page.contains("\"introspection\":false"));
    let (status, body) = app.post_graphql(INTROSPECTION, json!({}), None).await;
    assert_eq!(status, 400);
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"]);
    assert_eq!(
        errors(&body)[0]["message"],
        "introspection is disabled on this server"
    );

    let typo = "{ homepage { regio } }";
    let (_, body) = app.post_graphql(typo, json!({}), None).await;
    let message = errors(&body)[0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("Unknown field"), "{message}");
    assert!(!message.contains("Did you mean"), "{message}");
    let (_, body) = app
        .post_graphql("{ homepage(regoin: \"US\") { region } }", json!({}), None)
        .await;
    assert!(!body.to_string().contains("Did you mean"), "{body}");

    // With introspection on, the hint helps.
    let app = spawn_app(web()).await;
    let (_, body) = app.post_graphql(typo, json!({}), None).await;
    assert!(body.to_string().contains("Did you mean"), "{body}");
}

/// Every token of a query, so the README's one-line example and GraphiQL's laid-out one compare
/// equal when they are the same query.
fn tokens(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in query.chars() {
        if c.is_alphanumeric() || c == '_' || c == '"' {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() && c != ',' {
                out.push(c.to_string());
            }
        }
    }
    out.extend((!word.is_empty()).then_some(word));
    out
}

/// The `query` of the README's curl example that posts to `port`.
fn readme_query(port: u16) -> String {
    let readme = include_str!("../../README.md");
    let at = readme
        .find(&format!("curl -s http://127.0.0.1:{port}/graphql"))
        .unwrap_or_else(|| panic!("no curl example for port {port} in the README"));
    let rest = &readme[at..];
    let body = rest[rest.find("-d '").unwrap() + 4..]
        .split('\'')
        .next()
        .unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    body["query"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn graphiql_opens_on_the_binarys_homepage_query_as_the_readme_shows_it() {
    for (surface, port, example) in [
        (web(), 4000, bff_web::EXAMPLE_QUERY),
        (mobile(), 4001, bff_mobile::EXAMPLE_QUERY),
    ] {
        assert_eq!(
            tokens(example),
            tokens(&readme_query(port)),
            "{}",
            surface.name
        );
        let app = spawn_app(surface).await;
        let r = app.browser_get_graphql().await;
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(
            r.headers()["vary"],
            "authorization, accept, accept-encoding"
        );
        let page = r.text().await.unwrap();
        let start = page.find("const config = ").unwrap() + "const config = ".len();
        let config: Value =
            serde_json::from_str(&page[start..start + page[start..].find(";\n").unwrap()]).unwrap();
        let initial = config["initialQuery"].as_str().unwrap();
        assert!(
            initial.starts_with(&format!("# {} GraphiQL:", surface.name)),
            "{initial}"
        );
        assert!(initial.contains("Docs (book icon"), "{initial}");
        assert!(initial.ends_with(example), "{initial}");
        // The example runs as it stands, signed in.
        let token = app.token("u1");
        let (status, body) = app.post_graphql(example, json!({}), Some(&token)).await;
        assert_eq!(status, 200);
        assert!(body.get("errors").is_none(), "{}: {body}", surface.name);
        assert_eq!(kinds(&body)[0], "CONTINUE_WATCHING");
    }
}

#[tokio::test]
async fn every_graphql_answer_varies_on_authorization_accept_and_encoding() {
    let app = spawn_app(web()).await;
    let vary = "authorization, accept, accept-encoding";
    let token = app.token("u3");
    let get = |q: &str| {
        app.http
            .get(app.url("/graphql"))
            .query(&[("query", q)])
            .header("accept", "application/json")
    };
    // A cacheable anonymous GET, a personalized GET, a compressed one, a POST, and refusals.
    let public = get("{ homepage(region: \"GB\") { rows { kind } } }")
        .send()
        .await
        .unwrap();
    assert!(
        public.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public")
    );
    assert_eq!(public.headers()["vary"], vary);
    let private = get("{ homepage { rows { kind } } }")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(private.headers()["cache-control"], "private, no-store");
    assert_eq!(private.headers()["vary"], vary);
    let gzipped = get(
        "{ homepage(region: \"GB\") { rows { kind heading items { title { name synopsis } } } } }",
    )
    .header("accept-encoding", "gzip")
    .send()
    .await
    .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let all: Vec<_> = gzipped.headers().get_all("vary").iter().collect();
    assert_eq!(all, [vary], "compression adds no second Vary");
    let post = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(post.headers()["vary"], vary);
    assert_eq!(post.headers()["cache-control"], "no-store");
    for refused in [
        get("mutation { addToMyList(titleId: \"t1\") { changed } }"),
        get("{ homepage("),
        get("{ nope }"),
    ] {
        let r = refused.send().await.unwrap();
        assert!(r.status() != 200 || r.headers()["cache-control"] == "no-store");
        assert_eq!(r.headers()["vary"], vary);
        assert_eq!(r.headers()["cache-control"], "no-store", "{}", r.status());
    }
}

#[tokio::test]
async fn the_estimated_cost_is_reported_when_asked() {
    let app = spawn_app(web()).await;
    let ask = |extensions: Value| {
        app.http
            .post(app.url("/graphql"))
            .json(&json!({ "query": "{ homepage { rows { kind } } }", "extensions": extensions }))
            .send()
    };
    let body: Value = ask(json!({ "cost": true }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cost = &body["extensions"]["cost"];
    assert_eq!(cost["maxCost"], 25_000);
    assert_eq!(cost["depth"], 3);
    assert_eq!(cost["fields"], 3);
    // homepage 1 + 10 × (5 row sources + profile + catalog), rows 1 + 5 rows × kind 1.
    assert_eq!(cost["estimated"], 71 + 6, "{cost}");
    let body: Value = ask(json!({})).await.unwrap().json().await.unwrap();
    assert!(body.get("extensions").is_none(), "{body}");
}

/// The estimates of both binaries, pinned (docs/edge.md, "Limits and the cost model"): the full
/// homepage (web: 7 backend calls, 5 rows of 20 items; mobile: 6 calls, 4 rows of 10), one title,
/// the viewer and each mutation (one call each). Read from the refusal under
/// `graphql.max_cost = 0`, so nothing runs and no mutation takes effect.
#[tokio::test]
async fn both_binaries_estimate_the_documented_costs() {
    for (surface, full, figures) in [
        (web(), WEB_FULL, [10_991, 13, 13, 12, 12, 12]),
        (mobile(), MOBILE_FULL, [795, 13, 13, 12, 12, 12]),
    ] {
        let app = spawn_app_with(surface, |s| s.graphql.max_cost = 0).await;
        let queries = [
            full,
            "{ title(id: \"t1\") { id name } }",
            "{ viewer { id name } }",
            "mutation { addToMyList(titleId: \"t1\") { changed } }",
            "mutation { removeFromMyList(titleId: \"t1\") { changed } }",
            "mutation { reportProgress(titleId: \"t1\", positionSeconds: 5) { accepted } }",
        ];
        let mut found = Vec::new();
        for q in queries {
            let (status, body) = app.post_graphql(q, json!({}), None).await;
            assert_eq!(status, 400, "{q}: {body}");
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            let estimate = message
                .strip_prefix("the operation has an estimated cost of ")
                .and_then(|m| m.split(';').next())
                .and_then(|n| n.parse::<u64>().ok());
            found.push(estimate.unwrap_or_else(|| panic!("{q}: {body}")));
        }
        assert_eq!(found, figures, "{}", surface.name);
    }
}
