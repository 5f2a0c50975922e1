//! The fragment cache end to end: coalescing across requests, partial title hits, SWR,
//! stale-if-error, read-your-writes, no cross-user data, Cache-Control.

use std::{collections::BTreeSet, time::Duration};

use bff_fixtures::Backend;
use futures::future::join_all;
use serde_json::{Value, json};
use shared::cache::FragmentKind;

use crate::helpers::*;

const ROW_BACKENDS: [Backend; 6] = [
    Backend::Profile,
    Backend::ContinueWatching,
    Backend::Recommendations,
    Backend::Top10,
    Backend::MyList,
    Backend::NewReleases,
];

fn union_of(body: &Value) -> BTreeSet<String> {
    body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(ids)
        .collect()
}

#[tokio::test]
async fn fifty_concurrent_cold_homepages_for_one_user_call_each_backend_once() {
    // The fragment cache's own coalescing is what is measured: identical requests would
    // otherwise share one execution before they reach it (`graphql.coalesce`).
    let app = spawn_app_with(web(), |s| s.graphql.coalesce = false).await;
    // Latency keeps the first loads in flight while the other 49 requests arrive.
    for b in Backend::ALL {
        app.fault(b, latency(50));
    }
    let token = app.token("u1");
    let bodies =
        join_all((0..50).map(|_| app.homepage("kind items { title { id } }", Some(&token)))).await;
    let first = union_of(&bodies[0]);
    assert!(
        bodies
            .iter()
            .all(|b| union_of(b) == first && b.get("errors").is_none())
    );
    let stats = app.control().stats();
    for b in ROW_BACKENDS.into_iter().chain([Backend::Catalog]) {
        assert_eq!(stats.get(b).calls, 1, "{b}");
    }
    assert_eq!(
        stats.get(Backend::Catalog).ids_requested,
        first.len() as u64
    );
    let s = app.cache.stats().kind(FragmentKind::Top10).snapshot();
    assert_eq!(s.misses + s.hits, 50);
    assert!(s.coalesced >= 1, "{s:?}");
}

/// A warm homepage is answered from the cache at once; the viewer's profile, cached too, still
/// names the personal headings (it used to lose the race against rows that were ready first).
#[tokio::test]
async fn a_warm_homepage_keeps_the_viewers_headings() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let name = app.data().profile("u1").unwrap().name.clone();
    let first_name = name.split_whitespace().next().unwrap();
    for round in 0..3 {
        let body = app.homepage("kind heading", Some(&token)).await;
        assert_eq!(
            row(&body, "CONTINUE_WATCHING")["heading"],
            format!("Continue Watching for {first_name}"),
            "round {round}"
        );
        assert_eq!(
            row(&body, "RECOMMENDED")["heading"],
            format!("Top Picks for {first_name}")
        );
    }
    // Rounds 2 and 3 came from the cache.
    assert_eq!(app.control().stats().get(Backend::Profile).calls, 1);
}

#[tokio::test]
async fn a_second_user_only_hydrates_titles_the_cache_lacks() {
    let app = spawn_app(web()).await;
    let one = app
        .homepage("kind items { title { id } }", Some(&app.token("u1")))
        .await;
    let before = app.control().stats().get(Backend::Catalog).ids_requested;
    let two = app
        .homepage("kind items { title { id } }", Some(&app.token("u2")))
        .await;
    let after = app.control().stats().get(Backend::Catalog);
    let missing: BTreeSet<_> = union_of(&two)
        .difference(&union_of(&one))
        .cloned()
        .collect();
    assert!(!missing.is_empty() && missing.len() < union_of(&two).len());
    assert_eq!(after.ids_requested - before, missing.len() as u64);
    assert_eq!(after.calls, 2);
    // Public rows came from the cache: top 10 and new releases were loaded once for both users.
    assert_eq!(app.control().stats().get(Backend::Top10).calls, 1);
}

#[tokio::test]
async fn stale_top10_is_served_at_once_refreshed_once_and_reported() {
    let app = spawn_app_with(web(), |s| s.cache.top10.ttl = Duration::from_millis(200)).await;
    app.homepage("kind", None).await;
    // Past the TTL on the cache's clock: time passes without waiting.
    app.cache.clock().advance(Duration::from_millis(250));
    // The refresh is slow; every request meanwhile is answered from the stale entry.
    app.fault(Backend::Top10, latency(300));
    for _ in 0..5 {
        let body = app.homepage("kind", None).await;
        assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
        let stale = &body["extensions"]["cache"]["stale"];
        assert_eq!(stale[0]["fragment"], "top10", "{body}");
        assert!(stale[0]["ageMs"].as_u64().unwrap() >= 200);
    }
    assert_eq!(
        app.control().stats().get(Backend::Top10).calls,
        2,
        "one load, one refresh"
    );
    eventually("the refresh finished", || async {
        app.control().stats().get(Backend::Top10).in_flight == 0
    })
    .await;
    let (_, body) = app
        .post_graphql(
            "{ homepage(region: \"US\") { rows { kind } } }",
            json!({}),
            None,
        )
        .await;
    assert!(body.get("extensions").is_none(), "fresh again: {body}");
    assert_eq!(app.control().stats().get(Backend::Top10).calls, 2);
}

#[tokio::test]
async fn a_down_backend_is_covered_by_stale_data_within_max_stale() {
    let app = spawn_app_with(web(), |s| {
        s.cache.recommendations.ttl = Duration::from_millis(100)
    })
    .await;
    let token = app.token("u1");
    let warm = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    app.fault(Backend::Recommendations, error_rate(1.0));
    app.cache.clock().advance(Duration::from_millis(150));
    for _ in 0..3 {
        let body = app
            .homepage("kind items { title { id } }", Some(&token))
            .await;
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(
            ids(row(&body, "RECOMMENDED")),
            ids(row(&warm, "RECOMMENDED"))
        );
        assert_eq!(
            body["extensions"]["cache"]["stale"][0]["fragment"],
            "recommendations"
        );
    }
    eventually("a refresh was tried (and failed)", || async {
        app.control().stats().get(Backend::Recommendations).calls >= 2
    })
    .await;
}

#[tokio::test]
async fn my_list_changes_show_at_once_despite_the_cache() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let home = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    let listed = ids(row(&home, "MY_LIST"));
    let first = listed[0].clone();
    let q = format!("mutation {{ removeFromMyList(titleId: \"{first}\") {{ changed }} }}");
    let (_, body) = app.post_graphql(&q, json!({}), Some(&token)).await;
    assert_eq!(body["data"]["removeFromMyList"]["changed"], true, "{body}");
    let home = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    assert!(!ids(row(&home, "MY_LIST")).contains(&first));
    // Other fragments of the user stayed cached: only my list was read again.
    let stats = app.control().stats();
    assert_eq!(
        stats.get(Backend::MyList).calls,
        3,
        "read, write, read again"
    );
    assert_eq!(stats.get(Backend::ContinueWatching).calls, 1);
}

#[tokio::test]
async fn twenty_users_interleaved_never_see_each_others_rows() {
    let app = spawn_app(mobile()).await;
    let data = app.data();
    let users: Vec<String> = (1..=20).map(|i| format!("u{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| app.token(u)).collect();
    let rounds = join_all((0..200).map(|i| {
        let k = (i * 7) % users.len();
        let (user, token) = (users[k].clone(), tokens[k].clone());
        let app = &app;
        async move {
            (
                user,
                app.homepage("kind items { title { id } }", Some(&token))
                    .await,
            )
        }
    }))
    .await;
    let mut leaks = 0;
    for (user, body) in &rounds {
        let rows = body["data"]["homepage"]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{user}: {body}"));
        for r in rows {
            let kind = r["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("failed row for {user}: {}", body["errors"]));
            let expected: Vec<String> = match kind {
                "CONTINUE_WATCHING" => data
                    .continue_watching(user)
                    .unwrap()
                    .iter()
                    .take(10)
                    .map(|e| e.title_id.clone())
                    .collect(),
                "MY_LIST" => data
                    .my_list_seed(user)
                    .unwrap()
                    .iter()
                    .take(10)
                    .map(|e| e.title_id.clone())
                    .collect(),
                "RECOMMENDED" => data
                    .recommendations(user)
                    .unwrap()
                    .iter()
                    .take(10)
                    .map(|e| e.title_id.clone())
                    .collect(),
                _ => continue,
            };
            if ids(r) != expected {
                leaks += 1;
            }
        }
    }
    assert_eq!(leaks, 0);
    // 200 requests, 20 users: per-user fragments loaded at most once per user.
    assert!(app.control().stats().get(Backend::ContinueWatching).calls <= 20);
}

#[tokio::test]
async fn a_client_header_never_changes_whose_fragments_are_read() {
    let app = spawn_app(web()).await;
    app.homepage("kind", Some(&app.token("u1"))).await;
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("x-user-id", "u1")
        .header("x-forwarded-user", "u1")
        .bearer_auth(app.token("u2"))
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind items { title { id } } } } }" }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let expected: Vec<String> = app
        .data()
        .my_list_seed("u2")
        .unwrap()
        .iter()
        .take(20)
        .map(|e| e.title_id.clone())
        .collect();
    assert_eq!(ids(row(&body, "MY_LIST")), expected);
}

#[tokio::test]
async fn the_byte_budget_evicts_entries() {
    let app = spawn_app_with(web(), |s| s.cache.max_bytes = 60_000).await;
    for u in 1..=5 {
        app.homepage(
            "kind items { title { id } }",
            Some(&app.token(&format!("u{u}"))),
        )
        .await;
    }
    app.cache.maintain().await;
    let s = app.cache.stats().snapshot();
    let (evicted, held): (u64, u64) = (
        s.values().map(|k| k.evictions).sum(),
        s.values().map(|k| k.bytes).sum(),
    );
    assert!(evicted > 0, "{s:?}");
    assert!(held <= 60_000, "held {held} bytes");
}

#[tokio::test]
async fn cache_control_is_public_for_anonymous_gets_and_private_otherwise() {
    let app = spawn_app(web()).await;
    let get = |q: &str| app.http.get(app.url("/graphql")).query(&[("query", q)]);
    let anon = get("{ homepage(region: \"US\") { rows { kind items { title { id } } } } }")
        .send()
        .await
        .unwrap();
    // Smallest TTL among the fragments used: top10 (60 s) < new releases, titles (300 s).
    assert_eq!(anon.headers()["cache-control"], "public, max-age=60");
    let only_titles = get("{ title(id: \"t1\") { id } }").send().await.unwrap();
    assert_eq!(
        only_titles.headers()["cache-control"],
        "public, max-age=300"
    );
    let personal = get("{ homepage(region: \"US\") { rows { kind } } }")
        .bearer_auth(app.token("u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(personal.headers()["cache-control"], "private, no-store");
    let post = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(post.headers()["cache-control"], "no-store");
    let failed = get("{ title(id: \"bad id\") { id } }")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.headers()["cache-control"], "no-store");
}
