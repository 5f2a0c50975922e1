//! Identity: every JWT case, personalized fields without a user, and the identity header the
//! backends receive coming only from the verified token.

use bff_fixtures::Backend;
use serde_json::json;
use shared::auth::TokenSigner;

use crate::helpers::*;

async fn status_and_codes(app: &TestApp, auth: &str) -> (u16, Vec<String>) {
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("authorization", auth)
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").is_some();
    let body: serde_json::Value = resp.json().await.unwrap();
    if status == 401 {
        assert!(www, "401 must carry WWW-Authenticate");
        assert!(body.get("data").is_none(), "{body}");
    }
    (status, codes(&body))
}

#[tokio::test]
async fn invalid_tokens_get_401_unauthenticated_never_anonymous() {
    let app = spawn_app(web()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = app
        .signer
        .sign_with("u1", now - 7200, now - 3600, None)
        .unwrap();
    let not_yet = app
        .signer
        .sign_with("u1", now, now + 7200, Some(now + 3600))
        .unwrap();
    let wrong_key = TokenSigner::new(b"some-other-secret-entirely", None, None)
        .sign("u1", 600)
        .unwrap();
    let good = app.token("u1");
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        parts.join(".")
    };
    for auth in [
        format!("Bearer {expired}"),
        format!("Bearer {not_yet}"),
        format!("Bearer {wrong_key}"),
        format!("Bearer {tampered}"),
        "Bearer not-a-jwt".to_owned(),
        "Bearer ".to_owned(),
        format!("Basic {good}"),
    ] {
        assert_eq!(
            status_and_codes(&app, &auth).await,
            (401, vec!["UNAUTHENTICATED".to_owned()]),
            "{auth}"
        );
    }
    assert_eq!(
        status_and_codes(&app, &format!("Bearer {good}")).await,
        (200, vec![])
    );
}

#[tokio::test]
async fn without_a_configured_key_every_token_is_rejected_and_anonymous_works() {
    let app = spawn_app_with(web(), |s| s.auth.hs256_secret = None).await;
    let token = app.token("u1");
    assert_eq!(
        status_and_codes(&app, &format!("Bearer {token}")).await.0,
        401
    );
    let body = app.homepage("kind", None).await;
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(web(), |s| {
        s.auth.issuer = Some("https://id.example".into());
        s.auth.audience = Some("bff-web".into());
    })
    .await;
    let right = TokenSigner::new(
        SECRET.as_bytes(),
        Some("https://id.example".into()),
        Some("bff-web".into()),
    )
    .sign("u1", 600)
    .unwrap();
    assert_eq!(
        status_and_codes(&app, &format!("Bearer {right}")).await.0,
        200
    );
    let wrong_aud = TokenSigner::new(
        SECRET.as_bytes(),
        Some("https://id.example".into()),
        Some("other".into()),
    )
    .sign("u1", 600)
    .unwrap();
    assert_eq!(
        status_and_codes(&app, &format!("Bearer {wrong_aud}"))
            .await
            .0,
        401
    );
    assert_eq!(
        status_and_codes(&app, &format!("Bearer {}", app.token("u1")))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn personalized_fields_and_mutations_need_a_viewer() {
    let app = spawn_app(web()).await;
    let (status, body) = app
        .post_graphql("{ viewer { id name } }", json!({}), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    let (_, body) = app
        .post_graphql(
            "mutation { addToMyList(titleId: \"t5\") { changed } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    assert_eq!(app.control().stats().get(Backend::MyList).calls, 0);
    let (_, body) = app
        .post_graphql(
            "{ viewer { id name region } }",
            json!({}),
            Some(&app.token("u3")),
        )
        .await;
    let p = app.data().profile("u3").unwrap().clone();
    assert_eq!(body["data"]["viewer"]["name"], p.name.as_str());
    assert_eq!(body["data"]["viewer"]["region"], p.region.as_str());
}

#[tokio::test]
async fn backends_get_the_verified_user_id_never_the_clients() {
    let app = spawn_app(web()).await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("x-user-id", "u2")
        .bearer_auth(app.token("u1"))
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = app.control().stats();
    // Titles are shared fragments, cached for everyone: they are loaded with no identity at all.
    assert_eq!(stats.get(Backend::Catalog).calls, 1);
    assert!(
        !stats
            .get(Backend::Catalog)
            .last_headers
            .contains_key("x-user-id")
    );
    for b in [
        Backend::Profile,
        Backend::ContinueWatching,
        Backend::MyList,
        Backend::Recommendations,
    ] {
        assert_eq!(
            stats
                .get(b)
                .last_headers
                .get("x-user-id")
                .map(String::as_str),
            Some("u1"),
            "{b}"
        );
    }
    // Anonymous requests send no identity at all, whatever the client claims (another region, so
    // the top 10 is not already cached).
    app.control().reset();
    app.http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("x-user-id", "u2")
        .json(&json!({ "query": "{ homepage(region: \"GB\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    let stats = app.control().stats();
    assert_eq!(stats.get(Backend::Top10).calls, 1);
    assert!(
        !stats
            .get(Backend::Top10)
            .last_headers
            .contains_key("x-user-id")
    );
    assert_eq!(stats.get(Backend::MyList).calls, 0);
}
