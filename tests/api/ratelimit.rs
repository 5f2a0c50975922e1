//! Rate limits end to end: `429 RATE_LIMITED` with `Retry-After` and the IETF `RateLimit-Policy`
//! / `RateLimit` headers, on GraphQL and on a pass-through route; keys per user, per address for
//! anonymous requests; mutation-only scope; cost = the operation's estimate; stacked policies;
//! and what hostile clients try (forged forwarding headers, huge operation names).

use std::time::Duration;

use bff_fixtures::Backend;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shared::config::{
    Algorithm, BackendId, Cost, KeyPart, PolicySettings, RateLimitSettings, RouteSettings, Scope,
    Settings,
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

/// A key prefix of this test's own on the machine's Redis (which must be running).
fn redis_prefix(line: u32) -> String {
    crate::helpers::require_redis();
    format!("bff:test:e2e:{}:{line}:", std::process::id())
}

/// Policies kept in the machine's Redis under `prefix`.
fn in_redis(s: &mut Settings, prefix: &str) {
    s.rate_limits.store = "redis://127.0.0.1:6379".into();
    s.rate_limits.key_prefix = prefix.to_owned();
    s.rate_limits.redis_timeout = Duration::from_secs(2);
}

/// POSTs a GraphQL request, returning the whole response.
async fn post(app: &TestApp, body: Value, token: Option<&str>) -> Response {
    app.post_body(&body, Some(crate::helpers::GRAPHQL_RESPONSE), token)
        .await
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
        let mut charts = s.backends[BackendId::Top10].clone();
        charts.url = s.backends[BackendId::Top10].url.clone();
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
    let prefix = redis_prefix(line!());
    let limits = |s: &mut Settings| in_redis(s, &prefix);
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

// ---- Batches, IPv6 prefixes, forged forwarding behind a proxy, failed authentication ----

const ADD: &str = "mutation($id: ID!) { addToMyList(titleId: $id) { changed } }";

/// POSTs a batch (a JSON array) of `ops`, returning the response.
async fn post_batch(app: &TestApp, ops: &[Value], token: Option<&str>) -> Response {
    post(app, Value::Array(ops.to_vec()), token).await
}

/// `n` one-off `addToMyList` operations (distinct titles from `first`), each of which writes to
/// the my-list service when it runs.
fn adds(first: usize, n: usize) -> Vec<Value> {
    (first..first + n)
        .map(|i| json!({ "query": ADD, "variables": { "id": format!("t{}", 1000 + i) } }))
        .collect()
}

/// How many answers of a batch ran (data, no error) and how many were refused `RATE_LIMITED`.
fn ran_and_limited(answers: &Value) -> (usize, usize) {
    let answers = answers.as_array().expect("an array of answers");
    let ran = answers
        .iter()
        .filter(|a| a["errors"].is_null() && !a["data"].is_null())
        .count();
    let limited = answers
        .iter()
        .filter(|a| codes(a) == ["RATE_LIMITED"])
        .count();
    (ran, limited)
}

#[tokio::test]
async fn two_batches_of_ten_under_8_per_hour_per_ip_run_8_operations_not_20() {
    let app = app_with(vec![policy("per-ip", 8, &[KeyPart::Ip])], |s| {
        s.graphql.max_batch = 10;
    })
    .await;
    let token = app.token("u3");
    app.control().reset();
    let r = post_batch(&app, &adds(0, 10), Some(&token)).await;
    assert_eq!(r.status(), 200);
    // The headers describe the state after the whole batch: nothing left, and when to retry.
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=8;w=3600");
    assert!(
        header(&r, "ratelimit").starts_with("\"per-ip\";r=0;t="),
        "{}",
        header(&r, "ratelimit")
    );
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(ran_and_limited(&body), (8, 2), "{body}");
    // Per operation, in order: the first eight ran, the last two were refused.
    assert!(body[7]["errors"].is_null() && codes(&body[8]) == ["RATE_LIMITED"]);
    // The second batch is refused whole: its first operation is over the limit.
    let r = post_batch(&app, &adds(10, 10), Some(&token)).await;
    assert_limited_by(r, "per-ip").await;
    assert_eq!(
        app.control().stats().get(Backend::MyList).calls,
        8,
        "eight writes reached the service, not twenty"
    );
}

#[tokio::test]
async fn a_batch_within_the_limit_says_what_is_left_after_all_of_it() {
    let app = app_with(vec![policy("per-ip", 8, &[KeyPart::Ip])], |s| {
        s.graphql.max_batch = 10;
    })
    .await;
    let ops: Vec<Value> = (0..3).map(|_| json!({ "query": CHEAP })).collect();
    let r = post_batch(&app, &ops, None).await;
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "ratelimit").starts_with("\"per-ip\";r=5;t="),
        "three operations charged: {}",
        header(&r, "ratelimit")
    );
    assert!(r.headers().get("retry-after").is_none());
    // A single request afterwards sees the same count.
    let r = query(&app, CHEAP, None).await;
    assert!(header(&r, "ratelimit").starts_with("\"per-ip\";r=4;t="));
}

#[tokio::test]
async fn a_batch_is_charged_per_operation_by_operation_policies_and_stacked_ones() {
    // A per-user mutations policy (decided after analysis) and a per-ip one (before parsing).
    let mut writes = policy("writes", 3, &[KeyPart::User]);
    writes.scope = Scope::Mutations;
    let app = app_with(vec![writes, policy("per-ip", 100, &[KeyPart::Ip])], |s| {
        s.graphql.max_batch = 10
    })
    .await;
    let token = app.token("u4");
    app.control().reset();
    // Mutations and queries mixed: the queries are not mutations, only the writes count.
    let mut ops = adds(0, 5);
    ops.insert(2, json!({ "query": CHEAP }));
    let r = post_batch(&app, &ops, Some(&token)).await;
    assert_eq!(r.status(), 200);
    let state = header(&r, "ratelimit");
    assert!(
        state.contains("\"per-ip\";r=94;"),
        "six operations: {state}"
    );
    assert!(state.contains("\"writes\";r=0;"), "{state}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(ran_and_limited(&body), (4, 2), "{body}");
    assert_eq!(app.control().stats().get(Backend::MyList).calls, 3);
}

#[tokio::test]
async fn a_cost_policy_charges_each_batched_operation_its_own_cost() {
    let mut p = policy("cost", 30, &[KeyPart::Ip]);
    p.cost = Cost::Operation;
    let app = app_with(vec![p], |s| s.graphql.max_batch = 10).await;
    // `title` makes a backend call: 1 + 10 (the call) + 1 (id) = 12 each; two fit in 30.
    let ops: Vec<Value> = (1..=4)
        .map(|i| json!({ "query": format!("{{ title(id: \"t{i}\") {{ id }} }}") }))
        .collect();
    let r = post_batch(&app, &ops, None).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(ran_and_limited(&body), (2, 2), "{body}");
}

/// A BFF behind a trusted proxy (this test, on 127.0.0.1) that appends `X-Forwarded-For`.
async fn behind_proxy(policies: Vec<PolicySettings>) -> TestApp {
    app_with(policies, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
}

async fn from(app: &TestApp, headers: &[(&str, &[u8])], token: Option<&str>) -> Response {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .json(&json!({ "query": CHEAP }));
    for (k, v) in headers {
        req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn eight_ipv6_addresses_of_one_64_share_one_per_ip_bucket() {
    let app = behind_proxy(vec![policy("per-ip", 5, &[KeyPart::Ip])]).await;
    let mut admitted = 0;
    for i in 1..=8 {
        let ip = format!("2001:db8:4:7:{i:x}:{i:x}::{i:x}");
        let r = from(&app, &[("x-forwarded-for", ip.as_bytes())], None).await;
        admitted += usize::from(r.status() == 200);
    }
    assert_eq!(admitted, 5, "one /64 is one client");
    // The neighbouring /64 is another client.
    let r = from(&app, &[("x-forwarded-for", b"2001:db8:4:8::1")], None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_client_behind_the_proxy_cannot_pick_a_fresh_address_per_request() {
    let app = behind_proxy(vec![policy("per-ip", 5, &[KeyPart::Ip])]).await;
    let mut admitted = 0;
    // The probe: a new `Forwarded: for=` per request, the proxy appending X-Forwarded-For; and
    // its neighbours (`unknown`, obfuscated, prepended X-Forwarded-For hops, non-ASCII bytes).
    for i in 0..8u8 {
        let forged = format!("for=203.0.113.{i}");
        let prepended = format!("198.51.100.{i}, 198.51.100.66");
        let spellings: [(&str, &[u8]); 2] = match i % 4 {
            0 => [
                ("forwarded", forged.as_bytes()),
                ("x-forwarded-for", b"198.51.100.66"),
            ],
            1 => [
                ("forwarded", b"for=unknown"),
                ("x-forwarded-for", b"198.51.100.66"),
            ],
            2 => [
                ("forwarded", b"for=_hidden"),
                ("x-forwarded-for", prepended.as_bytes()),
            ],
            _ => [
                ("x-forwarded-for", &[0xff, 0xfe, b'a' + i]),
                ("x-forwarded-for", b"198.51.100.66"),
            ],
        };
        let r = from(&app, &spellings, None).await;
        admitted += usize::from(r.status() == 200);
    }
    assert_eq!(admitted, 5);
}

fn failed_auth(app_limit: u64) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.rate_limits.failed_auth.limit = app_limit;
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    }
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_before_verification() {
    let app = spawn_app_with(web(), failed_auth(3)).await;
    let good = app.token("u5");
    let xff: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.20")];
    for _ in 0..3 {
        assert_eq!(from(&app, xff, Some("not.a.token")).await.status(), 401);
    }
    // Over the limit: refused before the token is looked at — a valid one too.
    for token in ["not.a.token", good.as_str()] {
        let r = from(&app, xff, Some(token)).await;
        assert_eq!(r.status(), 429);
        assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
        assert!(header(&r, "ratelimit").starts_with("\"failed-auth\";r=0;"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(codes(&body), ["RATE_LIMITED"]);
    }
    // Anonymous requests from that address, and tokens from other addresses, are not affected.
    assert_eq!(from(&app, xff, None).await.status(), 200);
    let other: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.21")];
    assert_eq!(from(&app, other, Some(&good)).await.status(), 200);
    assert_eq!(from(&app, other, Some("bad")).await.status(), 401);
    // An IPv6 client rotating addresses in its /64 is one address here too.
    let mut refused = 0;
    for i in 1..=6 {
        let ip = format!("2001:db8:9:9::{i:x}");
        let r = from(&app, &[("x-forwarded-for", ip.as_bytes())], Some("bad")).await;
        refused += usize::from(r.status() == 429);
    }
    assert_eq!(refused, 3);
}

#[tokio::test]
async fn successful_authentications_are_never_counted_and_a_zero_limit_turns_it_off() {
    let app = spawn_app_with(web(), failed_auth(2)).await;
    let good = app.token("u6");
    let xff: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.30")];
    for _ in 0..10 {
        assert_eq!(from(&app, xff, Some(&good)).await.status(), 200);
    }
    let app = spawn_app_with(web(), failed_auth(0)).await;
    for _ in 0..10 {
        assert_eq!(from(&app, xff, Some("bad")).await.status(), 401);
    }
}

#[tokio::test]
async fn in_redis_batches_and_failed_authentications_are_counted_across_two_instances() {
    let prefix = redis_prefix(line!());
    let limits = |s: &mut Settings| {
        in_redis(s, &prefix);
        s.rate_limits.failed_auth.limit = 4;
        s.graphql.max_batch = 10;
    };
    let mut p = policy("fleet", 8, &[KeyPart::Ip]);
    p.algorithm = Algorithm::SlidingWindow;
    let a = app_with(vec![p.clone()], limits).await;
    let b = app_with(vec![p], limits).await;
    let ops: Vec<Value> = (0..10).map(|_| json!({ "query": CHEAP })).collect();
    let r = post_batch(&a, &ops, None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(ran_and_limited(&body), (8, 2), "{body}");
    assert_limited_by(post_batch(&b, &ops, None).await, "fleet").await;
    // Failures at either instance count once, fleet-wide; the fifth token is not verified.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .bearer_auth("forged")
            .json(&json!({ "query": CHEAP }))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn ambiguous_and_malformed_credentials_count_as_failures_too() {
    let app = spawn_app_with(web(), failed_auth(4)).await;
    let xff: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.40")];
    let twice = |app: &TestApp| {
        app.http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", "198.51.100.40")
            .header("authorization", "Bearer a")
            .header("authorization", "Bearer b")
            .json(&json!({ "query": CHEAP }))
            .send()
    };
    assert_eq!(twice(&app).await.unwrap().status(), 400);
    let basic: &[(&str, &[u8])] = &[
        ("x-forwarded-for", b"198.51.100.40"),
        ("authorization", b"Basic dXNlcjpwYXNz"),
    ];
    assert_eq!(from(&app, basic, None).await.status(), 401);
    let junk: &[(&str, &[u8])] = &[
        ("x-forwarded-for", b"198.51.100.40"),
        ("authorization", b"Bearer \xff\xfe"),
    ];
    assert_eq!(from(&app, junk, None).await.status(), 401);
    assert_eq!(from(&app, xff, Some("x.y.z")).await.status(), 401);
    // Four failures: whatever the shape of the next credential, it is not looked at.
    assert_eq!(twice(&app).await.unwrap().status(), 429);
    assert_eq!(from(&app, basic, None).await.status(), 429);
    assert_eq!(from(&app, xff, Some("x.y.z")).await.status(), 429);
}
