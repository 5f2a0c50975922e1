//! Operation limits beside the cost model (aliases, root fields, directives, tokens) and batched
//! requests, end to end.

use serde_json::{Value, json};

use crate::helpers::*;

async fn post_raw(app: &TestApp, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", "application/graphql-response+json")
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn message(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn each_operation_limit_refuses_with_its_code_and_says_which() {
    let app = spawn_app(web()).await;
    let aliases: String = (0..31).map(|i| format!("a{i}: __typename ")).collect();
    let roots: String = (0..21)
        .map(|i| format!("t{i}: title(id: \"t1\") {{ id }} "))
        .collect();
    let directives = "{ __typename @include(if: true) @include(if: true) @include(if: true) @skip(if: false) @skip(if: false) @skip(if: false) }";
    let tokens = format!("{{ __typename {} }}", "__typename ".repeat(5_000));
    for (query, code, says) in [
        (format!("{{ {aliases} }}"), "QUERY_TOO_COMPLEX", "aliases"),
        (format!("{{ {roots} }}"), "QUERY_TOO_COMPLEX", "root"),
        (directives.to_owned(), "QUERY_TOO_COMPLEX", "directives"),
        (tokens, "QUERY_TOO_COMPLEX", "tokens"),
    ] {
        let (status, body) = post_raw(&app, &json!({ "query": query }), None).await;
        assert_eq!(status, 400, "{says}: {body}");
        assert_eq!(codes(&body), [code], "{says}: {body}");
        assert!(message(&body).contains(says), "{says}: {body}");
    }
    // At the limits, they run.
    let aliases: String = (0..30).map(|i| format!("a{i}: region ")).collect();
    let query = format!("{{ homepage(region: \"US\") {{ {aliases} }} }}");
    let (status, body) = post_raw(&app, &json!({ "query": query }), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn batches_are_off_by_default_and_bounded_when_on() {
    let app = spawn_app(web()).await;
    let one = json!({ "query": "{ __typename }" });
    let (status, body) = post_raw(&app, &json!([one, one]), None).await;
    assert_eq!(
        (status, codes(&body)),
        (400, vec!["BAD_USER_INPUT".to_owned()])
    );
    assert!(message(&body).contains("graphql.max_batch"), "{body}");

    let app = spawn_app_with(web(), |s| s.graphql.max_batch = 3).await;
    let token = app.token("u1");
    let batch = json!([
        { "query": "{ viewer { id } }" },
        { "query": "{ nope }" },
        "not an object",
    ]);
    let (status, body) = post_raw(&app, &batch, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let answers = body.as_array().unwrap();
    assert_eq!(answers.len(), 3);
    assert_eq!(
        answers[0]["data"]["viewer"]["id"], "u1",
        "same identity for each: {body}"
    );
    assert_eq!(codes(&answers[1]), ["GRAPHQL_VALIDATION_FAILED"]);
    assert_eq!(codes(&answers[2]), ["BAD_USER_INPUT"]);

    let (status, body) = post_raw(&app, &json!([one, one, one, one]), None).await;
    assert_eq!(
        (status, codes(&body)),
        (400, vec!["BAD_USER_INPUT".to_owned()])
    );
    assert!(message(&body).contains("at most 3"), "{body}");
    let (status, body) = post_raw(&app, &json!([]), None).await;
    assert_eq!(
        (status, codes(&body)),
        (400, vec!["BAD_USER_INPUT".to_owned()])
    );

    // Each operation of a batch is held to the limits alone.
    let deep = format!(
        "{{ {} }}",
        (0..31)
            .map(|i| format!("a{i}: __typename "))
            .collect::<String>()
    );
    let (status, body) = post_raw(&app, &json!([one, { "query": deep }]), None).await;
    assert_eq!(status, 200);
    assert_eq!(codes(&body[1]), ["QUERY_TOO_COMPLEX"]);
}

#[tokio::test]
async fn max_batch_out_of_range_is_a_config_error() {
    for n in ["0", "101"] {
        let opts = shared::config::LoadOptions {
            env: vec![("BFF_GRAPHQL__MAX_BATCH".into(), n.into())],
            ..Default::default()
        };
        let err = shared::config::Settings::load(&(web().defaults)(), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("graphql.max_batch") && err.contains("BFF_GRAPHQL__MAX_BATCH"),
            "{err}"
        );
    }
}
