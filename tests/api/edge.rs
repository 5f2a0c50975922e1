//! The edge stages end to end: tokens from a real (fixture) identity provider verified against its
//! JWKS found through discovery, rotation, a provider that is down at start, scopes per mutation
//! and per route, the maturity ceiling across every row, client addresses behind trusted and
//! untrusted proxies with allow/deny per route, CORS preflights and credentialed requests, and
//! identity forwarded to backends only as configured.

use std::time::Duration;

use bff_fixtures::{Backend, FixtureOptions, Fixtures, idp};
use serde_json::{Map, Value, json};
use shared::config::{BackendId, RouteSettings, Settings};

use shared::demo::trust_fixture_idp;

use crate::helpers::*;

/// A BFF trusting its own fixtures' identity provider.
async fn idp_app(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut issuer = String::new();
    let app = spawn_app_with(web(), |s| {
        // The fixtures are started by spawn_app_with before `adjust`; their REST root is the
        // issuer (see `TestApp::fixtures`).
        issuer = s.backends[BackendId::Profile]
            .url
            .trim_end_matches("/profile")
            .to_owned();
        trust_fixture_idp(s, &issuer);
        adjust(s);
    })
    .await;
    assert_eq!(app.fixtures.idp().issuer(), issuer);
    app
}

fn idp_token(app: &TestApp, sub: &str, scope: &str, extra: Value) -> String {
    let extra: Map<String, Value> = extra.as_object().cloned().unwrap_or_default();
    app.fixtures
        .idp()
        .token(sub, scope, extra, Duration::from_secs(600))
        .unwrap()
}

#[tokio::test]
async fn provider_tokens_verify_through_discovery_and_survive_a_rotation() {
    let app = idp_app(|_| {}).await;
    let viewer = |token: String| {
        let app = &app;
        async move {
            app.post_graphql("{ viewer { id } }", json!({}), Some(&token))
                .await
        }
    };
    let before = idp_token(&app, "u3", idp::DEFAULT_SCOPES, json!({}));
    let (s, body) = viewer(before.clone()).await;
    assert_eq!(
        (s.as_u16(), &body["data"]["viewer"]["id"]),
        (200, &json!("u3")),
        "{body}"
    );
    // The provider rotates and signs with the new key at once: the unknown kid is fetched.
    app.fixtures.idp().rotate().unwrap();
    let after = idp_token(&app, "u4", idp::DEFAULT_SCOPES, json!({}));
    let (s, body) = viewer(after).await;
    assert_eq!(
        (s.as_u16(), &body["data"]["viewer"]["id"]),
        (200, &json!("u4")),
        "{body}"
    );
    // Tokens the old key signed still verify while it is published.
    let (s, _) = viewer(before).await;
    assert_eq!(s, 200);
    // The fixtures' HS256 test secret is still trusted too (development); a token of another
    // provider is not.
    let (s, _) = viewer(app.token("u5")).await;
    assert_eq!(s, 200);
    let other = Fixtures::start(FixtureOptions::default()).await.unwrap();
    let foreign = other
        .idp()
        .token(
            "u3",
            idp::DEFAULT_SCOPES,
            Map::new(),
            Duration::from_secs(60),
        )
        .unwrap();
    let (s, body) = viewer(foreign).await;
    assert_eq!(
        (s.as_u16(), codes(&body)),
        (401, vec!["UNAUTHENTICATED".to_owned()])
    );
}

#[tokio::test]
async fn a_provider_down_at_start_makes_tokens_unavailable_and_the_instance_unready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let issuer = format!("http://{closed}");
    let app = spawn_app_with(web(), |s| trust_fixture_idp(s, &issuer)).await;
    // A token of that provider (whatever key signed it: none can be checked yet).
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({ "iss": issuer, "aud": idp::AUDIENCE, "sub": "u1", "exp": now + 60 }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (s, body) = app
        .post_graphql("{ viewer { id } }", json!({}), Some(&token))
        .await;
    assert_eq!(
        (s.as_u16(), codes(&body)),
        (503, vec!["BACKEND_UNAVAILABLE".to_owned()]),
        "{body}"
    );
    // The provider's outage is not the clients' failed authentication: never 429, however
    // many signed-in requests arrive meanwhile (the limit is 30 a minute).
    for _ in 0..40 {
        let (s, _) = app
            .post_graphql("{ viewer { id } }", json!({}), Some(&token))
            .await;
        assert_eq!(s, 503);
    }
    // Anonymous requests are still served; readiness says why not.
    let body = app.homepage("kind", None).await;
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
    assert_eq!(app.status_of("/readyz").await, 503);
    let detail = app.readyz().await;
    assert_eq!(detail["identityProviders"][0]["loaded"], false, "{detail}");
    assert!(detail["identityProviders"][0]["lastError"].is_string());
}

#[tokio::test]
async fn mutations_and_routes_need_their_scopes() {
    let fx = Fixtures::start(FixtureOptions::default()).await.unwrap();
    let top10 = fx.url(Backend::Top10);
    let app = idp_app(|s| {
        let mut charts = s.backends[BackendId::Top10].clone();
        charts.url = top10.clone();
        charts.forward_scopes = true;
        s.backends.extra.insert("charts".into(), charts);
        s.routes.push(RouteSettings {
            scopes: vec!["charts:read".into()],
            ..RouteSettings::new("/api/charts", "charts")
        });
    })
    .await;
    let add = "mutation { addToMyList(titleId: \"t42\") { inMyList } }";
    let reader = idp_token(&app, "u2", "openid profile", json!({}));
    let (s, body) = app.post_graphql(add, json!({}), Some(&reader)).await;
    assert_eq!(s, 200);
    assert_eq!(codes(&body), ["FORBIDDEN"], "{body}");
    assert_eq!(errors(&body)[0]["extensions"]["scope"], "mylist:write");
    assert!(
        errors(&body)[0]["message"]
            .as_str()
            .unwrap()
            .contains("mylist:write")
    );
    assert_eq!(
        app.control().stats().get(Backend::MyList).calls,
        0,
        "nothing was written"
    );
    let writer = idp_token(&app, "u2", "openid mylist:write", json!({}));
    let (_, body) = app.post_graphql(add, json!({}), Some(&writer)).await;
    assert_eq!(body["data"]["addToMyList"]["inMyList"], true, "{body}");

    let get = |token: Option<String>| {
        let app = &app;
        async move {
            let mut r = app.http.get(app.url("/api/charts/GB"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap()
        }
    };
    assert_eq!(get(None).await.status(), 401);
    let r = get(Some(reader)).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("charts:read"));
    let r = get(Some(idp_token(&app, "u2", "charts:read openid", json!({})))).await;
    assert_eq!(r.status(), 200);
    // The backend got the verified scopes it is configured for, never the token.
    let seen = fx.control().stats_of(Backend::Top10).last_headers;
    assert_eq!(
        seen.get("x-user-scopes").map(String::as_str),
        Some("charts:read openid")
    );
    assert!(!seen.contains_key("authorization"), "{seen:?}");
    // A client-sent x-user-scopes never passes.
    let r = app
        .http
        .get(app.url("/api/charts/GB"))
        .bearer_auth(idp_token(&app, "u2", "charts:read", json!({})))
        .header("x-user-scopes", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = fx.control().stats_of(Backend::Top10).last_headers;
    assert_eq!(
        seen.get("x-user-scopes").map(String::as_str),
        Some("charts:read")
    );
}

#[tokio::test]
async fn a_maturity_ceiling_hides_titles_above_it_everywhere() {
    let app = idp_app(|s| s.cache.enabled = true).await;
    let kid = idp_token(
        &app,
        "u1",
        idp::DEFAULT_SCOPES,
        json!({ "max_rating": "PG" }),
    );
    let adult = idp_token(&app, "u1", idp::DEFAULT_SCOPES, json!({}));
    let q = "{ homepage(region: \"US\") { hero { id maturityRating } rows { kind items { title { id maturityRating } } } } }";
    let allowed = ["G", "PG", "TV-Y", "TV-PG"];
    let (_, full) = app.post_graphql(q, json!({}), Some(&adult)).await;
    let (_, kids) = app.post_graphql(q, json!({}), Some(&kid)).await;
    assert!(kids.get("errors").is_none(), "{kids}");
    let ratings = |body: &Value| -> Vec<(String, String)> {
        body["data"]["homepage"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r["items"].as_array().unwrap().iter().map(|i| {
                    (
                        i["title"]["id"].as_str().unwrap().to_owned(),
                        i["title"]["maturityRating"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect()
    };
    let (all, seen) = (ratings(&full), ratings(&kids));
    assert!(
        all.iter().any(|(_, r)| !allowed.contains(&r.as_str())),
        "the adult sees more"
    );
    assert!(!seen.is_empty());
    for (id, rating) in &seen {
        assert!(allowed.contains(&rating.as_str()), "{id} is {rating}");
    }
    let rows = kids["data"]["homepage"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "every row is still there: {kids}");
    if let Some(r) = kids["data"]["homepage"]["hero"]["maturityRating"].as_str() {
        assert!(allowed.contains(&r));
    }
    // title(id) of a title above the ceiling is null, as an unknown title is.
    let (above, _) = all
        .iter()
        .find(|(_, r)| !allowed.contains(&r.as_str()))
        .unwrap();
    let q = format!("{{ title(id: \"{above}\") {{ id }} }}");
    let (_, body) = app.post_graphql(&q, json!({}), Some(&kid)).await;
    assert_eq!(body, json!({ "data": { "title": null } }));
    let (_, body) = app.post_graphql(&q, json!({}), Some(&adult)).await;
    assert_eq!(body["data"]["title"]["id"], json!(above));
}

#[tokio::test]
async fn client_addresses_come_from_trusted_proxies_only_and_rules_apply_per_route() {
    let fx = Fixtures::start(FixtureOptions::default()).await.unwrap();
    let top10 = fx.url(Backend::Top10);
    let with_rules = |trusted: bool| {
        let top10 = top10.clone();
        move |s: &mut Settings| {
            if trusted {
                s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            }
            s.ip_rules.deny = vec!["203.0.113.0/24".parse().unwrap()];
            let mut charts = s.backends[BackendId::Top10].clone();
            charts.url = top10;
            s.backends.extra.insert("charts".into(), charts);
            s.routes.push(RouteSettings {
                allow: vec![
                    "198.51.100.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                ..RouteSettings::new("/api/charts", "charts")
            });
        }
    };
    let app = spawn_app_with(web(), with_rules(true)).await;
    let from = |ip: &str, path: &str| {
        let (app, ip, path) = (&app, ip.to_owned(), path.to_owned());
        async move {
            app.http
                .get(app.url(&path))
                .header("x-forwarded-for", format!("6.6.6.6, {ip}"))
                .send()
                .await
                .unwrap()
        }
    };
    // Behind the trusted proxy (this test, on 127.0.0.1): the forwarded address counts.
    let r = from("203.0.113.7", "/healthz").await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(codes(&body), ["FORBIDDEN"]);
    assert_eq!(from("198.51.100.9", "/healthz").await.status(), 200);
    assert_eq!(from("198.51.100.9", "/api/charts/GB").await.status(), 200);
    assert_eq!(from("2001:db8::9", "/api/charts/GB").await.status(), 200);
    assert_eq!(
        from("192.0.2.1", "/api/charts/GB").await.status(),
        403,
        "not on the route's allow list"
    );
    assert_eq!(
        from("192.0.2.1", "/healthz").await.status(),
        200,
        "the route's rules are its own"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("bff_ip_refused_total{client=\"web\",scope=\"global\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("scope=\"/api/charts\"} 1"), "{metrics}");

    // Not trusted: forwarding headers are ignored; the socket peer (127.0.0.1) is the client.
    let app = spawn_app_with(web(), with_rules(false)).await;
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/api/charts/GB"))
        .header("x-forwarded-for", "198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a forged header cannot pass the route's allow list"
    );
}

#[tokio::test]
async fn cors_answers_preflights_and_credentialed_requests_for_allowed_origins() {
    let app = spawn_app_with(web(), |s| {
        s.cors.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.tv".into(),
        ];
        s.cors.allow_credentials = true;
    })
    .await;
    let preflight = |origin: &str| {
        let (app, origin) = (&app, origin.to_owned());
        async move {
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/graphql"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
                .await
                .unwrap()
        }
    };
    for origin in [
        "https://app.example.com",
        "https://tv.living-room.example.tv",
    ] {
        let r = preflight(origin).await;
        assert!(r.status().is_success(), "{origin}: {}", r.status());
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-credentials"], "true");
        let methods = h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(methods.contains("POST"), "{methods}");
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert_eq!(h["access-control-max-age"], "600");
    }
    for origin in [
        "https://evil.test",
        "https://example.tv",
        "http://app.example.com",
    ] {
        let r = preflight(origin).await;
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin}"
        );
    }
    // A credentialed request from an allowed origin gets the headers a browser needs.
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .bearer_auth(app.token("u1"))
        .json(&json!({ "query": "{ viewer { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("x-trace-id")
            && exposed.contains("ratelimit-policy")
            && exposed.contains("retry-after"),
        "{exposed}"
    );

    // A wildcard with credentials is refused at start.
    let binary = (web().defaults)();
    let opts = shared::config::LoadOptions {
        env: vec![
            ("BFF_CORS__ALLOWED_ORIGINS".into(), "[\"*\"]".into()),
            ("BFF_CORS__ALLOW_CREDENTIALS".into(), "true".into()),
        ],
        ..Default::default()
    };
    let err = Settings::load(&binary, &opts).unwrap_err().to_string();
    assert!(
        err.contains("cors.allowed_origins") && err.contains("credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn behind_a_forwarded_proxy_only_forwarded_counts_and_x_forwarded_for_is_the_clients() {
    let app = spawn_app_with(web(), |s| {
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.server.forwarded_header = shared::config::ForwardedHeader::Forwarded;
        s.ip_rules.deny = vec!["203.0.113.0/24".parse().unwrap()];
    })
    .await;
    let get = |headers: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            let mut req = app.http.get(app.url("/healthz"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.unwrap().status()
        }
    };
    // The proxy appended `for=203.0.113.66` (denied); the client's X-Forwarded-For is ignored.
    assert_eq!(
        get(vec![
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=203.0.113.66;proto=https"),
        ])
        .await,
        403
    );
    assert_eq!(
        get(vec![(
            "forwarded",
            "for=unknown, For=\"203.0.113.66:4711\""
        )])
        .await,
        403
    );
    assert_eq!(
        get(vec![
            ("forwarded", "for=203.0.113.66"),
            ("forwarded", "for=198.51.100.7")
        ])
        .await,
        200,
        "the last line is the proxy's"
    );
    // X-Forwarded-For alone is the client's own: the proxy (127.0.0.1) is all that is known.
    assert_eq!(get(vec![("x-forwarded-for", "203.0.113.66")]).await, 200);
}

#[test]
fn a_bad_forwarded_header_family_is_refused_at_start_naming_the_key() {
    let binary = (web().defaults)();
    let opts = shared::config::LoadOptions {
        env: vec![("BFF_SERVER__FORWARDED_HEADER".into(), "x-real-ip".into())],
        ..Default::default()
    };
    let err = Settings::load(&binary, &opts).unwrap_err().to_string();
    assert!(
        err.contains("server.forwarded_header") && err.contains("BFF_SERVER__FORWARDED_HEADER"),
        "{err}"
    );
}

#[tokio::test]
async fn credentialed_wildcards_are_refused_at_start_except_below_a_registrable_domain() {
    let binary = (web().defaults)();
    for origin in [
        "https://*",
        "https://*.com",
        "https://*.co.uk",
        "https://a*.example.com",
    ] {
        let opts = shared::config::LoadOptions {
            env: vec![
                (
                    "BFF_CORS__ALLOWED_ORIGINS".into(),
                    format!("[\"{origin}\"]"),
                ),
                ("BFF_CORS__ALLOW_CREDENTIALS".into(), "true".into()),
            ],
            ..Default::default()
        };
        let err = Settings::load(&binary, &opts).unwrap_err().to_string();
        assert!(err.contains("cors.allowed_origins[0]"), "{origin}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // The accepted shape works, for its subdomains only.
    let app = spawn_app_with(web(), |s| {
        s.cors.allowed_origins = vec!["https://*.example.com".into()];
        s.cors.allow_credentials = true;
    })
    .await;
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://a.b.example.com", true),
        ("https://example.com", false),
        ("https://example.com.evil.test", false),
        ("https://evilexample.com", false),
        ("http://app.example.com", false),
    ] {
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .json(&json!({ "query": "{ __typename }" }))
            .send()
            .await
            .unwrap();
        let echoed = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            echoed.as_deref() == Some(origin),
            allowed,
            "{origin}: {echoed:?}"
        );
    }
}
