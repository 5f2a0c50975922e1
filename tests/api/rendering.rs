//! Direct JSON rendering (`graphql.direct_json`, on by default) answers over HTTP exactly what
//! the engine's value tree answers, byte for byte, on both surfaces: full homepages, queries that
//! select the same fields twice through fragments and aliases, and a root that repeats a field
//! (which turns rendering off for that request).

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::Surface;

use crate::helpers::*;

/// The same title fields selected twice below the root, through fragments, aliases and
/// `__typename`, on web.
const WEB_OVERLAPS: &str = r#"
    query Overlaps($skip: Boolean!) {
      homepage(region: "US") {
        rows {
          kind
          items { rank title { id ...T } title { images { hero { url } } __typename } }
          items { title { name } progress { fraction } reason @skip(if: $skip) }
        }
        ...H
      }
      title(id: "t7") { id ...T cast }
    }
    fragment T on Title { name genres images { poster { width } } }
    fragment H on Homepage { hero { id ... on Title { cast } } rows { heading } }
"#;

/// The same on mobile, with the poster's arguments from a variable.
const MOBILE_OVERLAPS: &str = r#"
    query Overlaps($w: Int!, $skip: Boolean!) {
      homepage(region: "US") {
        rows {
          items { title { id image(width: $w) { url } } title { synopsis ...C } }
          items { rank reason @skip(if: $skip) title { a: image { width } } }
        }
      }
      title(id: "t7") { ...C }
    }
    fragment C on Title { name genres image(width: $w) { height } }
"#;

/// The root selects `homepage` twice: the engine merges it, so the request runs on the value tree.
const ROOT_REPEAT: &str = r#"{ homepage(region: "US") { region } homepage(region: "US") { rows { items { title { id name } } } } }"#;

async fn body(app: &TestApp, query: &str, variables: Value, token: Option<&str>) -> Vec<u8> {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Rendered answers go out in pieces; the client still learns the length up front.
    let length = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse::<usize>();
    let bytes = resp.bytes().await.unwrap().to_vec();
    assert_eq!(length, Ok(bytes.len()));
    bytes
}

async fn same_bytes(surface: fn() -> Surface, queries: &[(&str, Value)]) {
    let direct = spawn_app(surface()).await;
    let tree = spawn_app_with(surface(), |s| s.graphql.direct_json = false).await;
    for token in [Some(direct.token("u1")), None] {
        for (query, variables) in queries {
            let a = body(&direct, query, variables.clone(), token.as_deref()).await;
            let b = body(&tree, query, variables.clone(), token.as_deref()).await;
            let parsed: Value = serde_json::from_slice(&a).unwrap();
            assert!(parsed["errors"].is_null(), "{parsed}");
            assert!(a.len() > 200, "{parsed}");
            if a != b {
                // Where they part, with some context (whole answers are ~200 KB).
                let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                let around = |v: &[u8]| {
                    String::from_utf8_lossy(&v[at.saturating_sub(150)..(at + 150).min(v.len())])
                        .into_owned()
                };
                panic!(
                    "direct and value-tree answers differ at byte {at} for {query}:\ndirect: {}\ntree:   {}",
                    around(&a),
                    around(&b)
                );
            }
        }
    }
}

#[tokio::test]
async fn web_answers_are_the_same_bytes_either_way() {
    same_bytes(
        web,
        &[
            (WEB_FULL, json!({})),
            (WEB_OVERLAPS, json!({ "skip": false })),
            (WEB_OVERLAPS, json!({ "skip": true })),
            (ROOT_REPEAT, json!({})),
        ],
    )
    .await;
}

#[tokio::test]
async fn mobile_answers_are_the_same_bytes_either_way() {
    same_bytes(
        mobile,
        &[
            (MOBILE_FULL, json!({})),
            (MOBILE_OVERLAPS, json!({ "w": 500, "skip": false })),
            (MOBILE_OVERLAPS, json!({ "w": 100, "skip": true })),
            (ROOT_REPEAT, json!({})),
        ],
    )
    .await;
}

/// Overlapping selections really merge (not merely agree between two wrong answers).
#[tokio::test]
async fn repeated_selections_merge_into_one_value() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let (_, out) = app
        .post_graphql(WEB_OVERLAPS, json!({ "skip": false }), Some(&token))
        .await;
    let item = &row(&out, "TOP_10")["items"][0];
    let title = &item["title"];
    // (serde_json's map sorts keys; the byte comparisons above cover their order.)
    let keys: Vec<&str> = title
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["__typename", "genres", "id", "images", "name"],
        "{title}"
    );
    let images: Vec<&str> = title["images"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(images, ["hero", "poster"]);
    assert_eq!(item["rank"], 1);
    assert!(out["data"]["homepage"]["hero"]["cast"].is_array());
    assert!(out["data"]["homepage"]["rows"][0]["heading"].is_string());

    let (_, out) = app.post_graphql(ROOT_REPEAT, json!({}), Some(&token)).await;
    let home = &out["data"]["homepage"];
    assert_eq!(home["region"], "US");
    assert!(
        home["rows"][0]["items"][0]["title"]["name"].is_string(),
        "{out}"
    );
}
