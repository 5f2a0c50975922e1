//! Rate limits end to end: `429 RATE_LIMITED` with `Retry-After` and the IETF `RateLimit-Policy`
//! / `RateLimit` headers, on GraphQL and on a pass-through route; keys per user, per address for
//! anonymous requests; mutation-only scope; cost = the operation's estimate; stacked policies;
//! and what hostile clients try (forged forwarding headers, huge operation names).

use std::time::Duration;

use bff_fixtures::Backend;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shared::config::{
    Algorithm, Cost, KeyPart, PolicySettings, RateLimitSettings, RouteSettings, Scope, Settings,
};

use crate::helpers::{TestApp, codes, spawn_app_with, web};

const CHEAP: &str = "{ __typename }";

fn policy(name: &str, limit: u64, key: &[KeyPart]) -> PolicySettings {
    PolicySettings {
        name: name.into(),
        algorithm: Algorithm::FixedWindow,
        limit,
        // Long enough that no window ends during a test.
        period: Duration::from_secs(3600),
        burst: None,
        key: key.to_vec(),
        scope: Scope::Graphql,
        cost: Cost::One,
    }
}

async fn app_with(policies: Vec<PolicySettings>, more: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(web(), |s| {
        s.rate_limits = RateLimitSettings {
            policies,
            ..RateLimitSettings::default()
        };
        more(s);
    })
    .await
}

/// POSTs a GraphQL request, returning the whole response.
async fn post(app: &TestApp, body: Value, token: Option<&str>) -> Response {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", "application/graphql-response+json")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn query(app: &TestApp, q: &str, token: Option<&str>) -> Response {
    post(app, json!({ "query": q }), token).await
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Sends `q` until refused (at most `max` times); returns how many were admitted and the refusal.
async fn until_refused(
    app: &TestApp,
    q: &str,
    token: Option<&str>,
    max: usize,
) -> (usize, Response) {
    for n in 0..max {
        let r = query(app, q, token).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            return (n, r);
        }
        assert_eq!(r.status(), 200);
    }
    panic!("never refused after {max} requests");
}

async fn assert_limited_graphql(r: Response) -> Value {
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("integer Retry-After");
    assert!(retry >= 1);
    assert!(
        header(&r, "content-type").starts_with("application/graphql-response+json"),
        "{:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(codes(&body), ["RATE_LIMITED"], "{body}");
    body
}

/// [`assert_limited_graphql`], and the error names the policy that refused.
async fn assert_limited_by(r: Response, policy: &str) {
    let body = assert_limited_graphql(r).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(policy)
    );
}

#[tokio::test]
async fn graphql_over_the_limit_is_429_rate_limited_with_retry_after_and_ratelimit_headers() {
    let app = app_with(vec![policy("per-ip", 3, &[KeyPart::Ip])], |_| {}).await;
    for left in [2, 1, 0] {
        let r = query(&app, CHEAP, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=3;w=3600");
        let state = header(&r, "ratelimit");
        assert!(
            state.starts_with(&format!("\"per-ip\";r={left};t=")),
            "{state}"
        );
        assert!(r.headers().get("retry-after").is_none());
    }
    let r = query(&app, CHEAP, None).await;
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=3;w=3600");
    assert!(header(&r, "ratelimit").starts_with("\"per-ip\";r=0;t="));
    let t: u64 = header(&r, "ratelimit")
        .rsplit("t=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry) && t == retry, "{t} {retry}");
    assert_limited_by(r, "per-ip").await;
    // Legacy JSON clients get the same 429 (a refusal before the request ran).
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .json(&json!({ "query": CHEAP }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "content-type").starts_with("application/json"));
    // Health is never limited; the decisions are counted.
    assert_eq!(app.status_of("/healthz").await, 200);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            "bff_ratelimit_decisions_total{client=\"web\",outcome=\"allowed\",policy=\"per-ip\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "bff_ratelimit_decisions_total{client=\"web\",outcome=\"limited\",policy=\"per-ip\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_pass_through_route_answers_a_json_429_and_graphql_is_not_charged() {
    let mut p = policy("charts", 2, &[KeyPart::Ip, KeyPart::Route]);
    p.scope = Scope::Route("/api/charts".into());
    let app = app_with(vec![p], |s| {
        let mut charts = s.backends.top10.clone();
        charts.url = s.backends.top10.url.clone();
        s.backends.extra.insert("charts".into(), charts);
        s.routes.push(RouteSettings::new("/api/charts", "charts"));
    })
    .await;
    let get = || app.http.get(app.url("/api/charts/GB")).send();
    for left in [1, 0] {
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit").starts_with(&format!("\"charts\";r={left};")));
    }
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(header(&r, "ratelimit-policy"), "\"charts\";q=2;w=3600");
    assert!(header(&r, "content-type").starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(codes(&body), ["RATE_LIMITED"], "{body}");
    assert_eq!(
        app.control().stats().get(Backend::Top10).calls,
        2,
        "the refused request never reached the backend"
    );
    // GraphQL has no policy here: no headers, no limit.
    for _ in 0..4 {
        let r = query(&app, CHEAP, None).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn users_have_their_own_limits_and_anonymous_requests_are_keyed_by_address() {
    let app = app_with(vec![policy("per-user", 2, &[KeyPart::User])], |_| {}).await;
    let (u1, u2) = (app.token("u1"), app.token("u2"));
    let (n, r) = until_refused(&app, CHEAP, Some(&u1), 10).await;
    assert_eq!(n, 2);
    assert_limited_graphql(r).await;
    // u2 is not u1: a fresh limit.
    let (n, _) = until_refused(&app, CHEAP, Some(&u2), 10).await;
    assert_eq!(n, 2);
    // Anonymous requests share their address's limit, apart from any user's.
    let (n, _) = until_refused(&app, CHEAP, None, 10).await;
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_mutations_policy_limits_mutations_and_leaves_queries_alone() {
    let mut p = policy("writes", 1, &[KeyPart::User]);
    p.scope = Scope::Mutations;
    let app = app_with(vec![p], |_| {}).await;
    let token = app.token("u7");
    for _ in 0..5 {
        let r = query(&app, CHEAP, Some(&token)).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("ratelimit").is_none(),
            "queries are not subject"
        );
    }
    let add = "mutation { addToMyList(titleId: \"t42\") { inMyList } }";
    let r = query(&app, add, Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit").starts_with("\"writes\";r=0;"));
    let calls = app.control().stats().get(Backend::MyList).calls;
    let r = query(
        &app,
        "mutation { removeFromMyList(titleId: \"t42\") { inMyList } }",
        Some(&token),
    )
    .await;
    assert_limited_graphql(r).await;
    assert_eq!(
        app.control().stats().get(Backend::MyList).calls,
        calls,
        "the refused mutation wrote nothing"
    );
}

#[tokio::test]
async fn cost_operation_charges_each_request_its_estimated_cost() {
    let mut p = policy("budget", 100, &[KeyPart::Ip]);
    p.cost = Cost::Operation;
    let app = app_with(vec![p], |_| {}).await;
    let q = "{ title(id: \"t1\") { id name year } }";
    let r = post(
        &app,
        json!({ "query": q, "extensions": { "cost": true } }),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let state = header(&r, "ratelimit");
    let body: Value = r.json().await.unwrap();
    let cost = body["extensions"]["cost"]["estimated"].as_u64().unwrap();
    assert!(cost > 1 && cost < 50, "{body}");
    assert!(
        state.starts_with(&format!("\"budget\";r={};", 100 - cost)),
        "{state}"
    );
    let (more, r) = until_refused(&app, q, None, 100).await;
    assert_eq!(
        1 + more as u64,
        100 / cost,
        "admitted while the budget lasted"
    );
    assert_limited_graphql(r).await;
    // What is left still admits a cheaper operation (cost 1 for `__typename` alone).
    let left = 100 - (100 / cost) * cost;
    if left >= 1 {
        assert_eq!(query(&app, CHEAP, None).await.status(), 200);
    }
}

#[tokio::test]
async fn stacked_policies_admit_only_when_all_do_and_a_refusal_charges_neither() {
    let app = app_with(
        vec![
            policy("per-ip", 5, &[KeyPart::Ip]),
            policy("per-user", 2, &[KeyPart::User]),
        ],
        |_| {},
    )
    .await;
    let (u1, u2) = (app.token("u1"), app.token("u2"));
    let (n, r) = until_refused(&app, CHEAP, Some(&u1), 10).await;
    assert_eq!(n, 2);
    let policies = header(&r, "ratelimit-policy");
    assert_eq!(policies, "\"per-ip\";q=5;w=3600, \"per-user\";q=2;w=3600");
    // The refusal named the user's policy, and the address's was not charged for it.
    assert!(
        header(&r, "ratelimit").starts_with("\"per-ip\";r=3;"),
        "{:?}",
        r.headers()
    );
    assert_limited_by(r, "per-user").await;
    assert_eq!(until_refused(&app, CHEAP, Some(&u2), 10).await.0, 2);
    // 4 charged to the address: one more anonymous request, then the address is refused too.
    let (n, r) = until_refused(&app, CHEAP, None, 10).await;
    assert_eq!(n, 1);
    assert_limited_by(r, "per-ip").await;
}

#[tokio::test]
async fn forged_forwarding_headers_from_an_untrusted_peer_do_not_change_the_key() {
    let app = app_with(vec![policy("per-ip", 2, &[KeyPart::Ip])], |_| {}).await;
    let mut admitted = 0;
    for i in 0..6 {
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .json(&json!({ "query": CHEAP }))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            admitted += 1;
        } else {
            assert_eq!(r.status(), 429);
        }
    }
    assert_eq!(admitted, 2);
}

#[tokio::test]
async fn a_per_operation_policy_takes_huge_operation_names_without_growing_keys() {
    let mut p = policy("per-op", 1, &[KeyPart::Ip, KeyPart::Operation]);
    p.scope = Scope::Graphql;
    let app = app_with(vec![p], |_| {}).await;
    let huge = format!("query {} {{ __typename }}", "Q".repeat(50_000));
    assert_eq!(query(&app, &huge, None).await.status(), 200);
    assert_limited_graphql(query(&app, &huge, None).await).await;
    // Another name, another key.
    assert_eq!(
        query(&app, "query Other { __typename }", None)
            .await
            .status(),
        200
    );
    assert_limited_graphql(query(&app, "query Other { __typename }", None).await).await;
}

#[tokio::test]
async fn policies_in_redis_are_shared_by_two_instances() {
    let prefix = format!("bff:test:e2e:{}:{}:", std::process::id(), line!());
    let limits = |s: &mut Settings| {
        s.rate_limits.store = "redis://127.0.0.1:6379".into();
        s.rate_limits.key_prefix = prefix.clone();
        s.rate_limits.redis_timeout = Duration::from_secs(2);
    };
    let mut p = policy("fleet", 4, &[KeyPart::Ip]);
    p.algorithm = Algorithm::SlidingWindow;
    let a = app_with(vec![p.clone()], limits).await;
    let b = app_with(vec![p], limits).await;
    let mut admitted = 0;
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        if query(app, CHEAP, None).await.status() == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
}

#[tokio::test]
async fn bad_policies_are_refused_at_start_naming_the_key() {
    use shared::config::{LoadOptions, Settings};
    let dir = std::env::temp_dir().join(format!("bff-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[[rate_limits.policies]]\nname = \"a\"\nalgorithm = \"fixed_window\"\nlimit = 10\nperiod = \"1m\"\nburst = 5\nkey = [\"ip\"]\n",
            "rate_limits.policies[0].burst",
        ),
        (
            "[[rate_limits.policies]]\nname = \"a\"\nalgorithm = \"token_bucket\"\nlimit = 10\nperiod = \"1m\"\nkey = [\"ip\"]\nscope = \"route:/nowhere\"\n",
            "rate_limits.policies[0].scope",
        ),
        (
            "[[rate_limits.policies]]\nname = \"a\"\nalgorithm = \"token_bucket\"\nlimit = 10\nperiod = \"1m\"\nkey = [\"operation\"]\nscope = \"all\"\n",
            "rate_limits.policies[0].scope",
        ),
        (
            "[rate_limits]\nstore = \"memcached://x\"\n",
            "rate_limits.store",
        ),
        (
            "[[rate_limits.policies]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 10\nperiod = \"1m\"\nkey = [\"ip\"]\n",
            "rate_limits.policies[0].algorithm",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let opts = LoadOptions {
            file: Some(path.clone()),
            ..LoadOptions::default()
        };
        let err = Settings::load(&(web().defaults)(), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
