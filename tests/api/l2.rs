//! The shared L2 cache tier (`cache.l2`) on the machine's Redis (127.0.0.1:6379, a key prefix of
//! each test's own) and on a three-master Redis Cluster the test starts itself: a second
//! instance answers from what the first loaded, with no backend call; users stay apart; a domain
//! event reaches L2 as well as L1; Redis cut by a proxy the test controls changes nothing a client
//! sees.

use std::sync::Arc;

use bff_fixtures::{
    Backend, FixtureOptions, Fixtures, proxy::TcpProxy, redis_cluster::RedisCluster,
};
use serde_json::{Value, json};
use shared::config::{Secret, Settings};

use crate::{
    events::{BROKER, names, url, wait_connected},
    helpers::*,
};

const REDIS: &str = "redis://127.0.0.1:6379";
const HOME: &str = "kind heading items { progress { positionSeconds } title { id name } }";

fn prefix(test: &str) -> String {
    format!("bfftest:l2:{test}:{}:", uuid::Uuid::new_v4().simple())
}

fn with_l2(url: &str, cluster: bool, prefix: &str) -> impl FnOnce(&mut Settings) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    move |s: &mut Settings| {
        s.cache.l2 = Some(Secret::new(url));
        s.cache.l2_cluster = cluster;
        s.cache.l2_prefix = prefix;
        // Debug builds on a busy machine: generous, the outage test cuts the link anyway.
        s.cache.l2_timeout = std::time::Duration::from_millis(500);
    }
}

/// Calls made to each backend so far.
fn calls(fixtures: &Fixtures) -> Vec<(Backend, u64)> {
    Backend::ALL
        .iter()
        .map(|b| (*b, fixtures.control().stats_of(*b).calls))
        .collect()
}

/// A warm instance, then a cold one on the same L2: the second answers the same homepage with
/// no backend call at all, and another user's homepage on it is that user's own.
async fn second_instance_starts_warm(l2: &str, cluster: bool, prefix: &str) -> Arc<Fixtures> {
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let first = spawn_app_on(web(), fixtures.clone(), with_l2(l2, cluster, prefix)).await;
    let token = first.token("u1");
    let warmed = first.homepage(HOME, Some(&token)).await;
    assert!(warmed.get("errors").is_none(), "{warmed}");
    assert!(
        first
            .metric_sum("bff_cache_l2_written_bytes_total", &[])
            .await
            > 0.0
    );

    let before = calls(&fixtures);
    let second = spawn_app_on(web(), fixtures.clone(), with_l2(l2, cluster, prefix)).await;
    let answered = second.homepage(HOME, Some(&second.token("u1"))).await;
    assert_eq!(answered["data"], warmed["data"]);
    assert_eq!(
        calls(&fixtures),
        before,
        "the second instance called a backend"
    );
    assert!(second.metric_sum("bff_cache_l2_hits_total", &[]).await > 0.0);
    assert_eq!(
        second.metric_sum("bff_cache_l2_errors_total", &[]).await,
        0.0
    );

    // Another user on the warm-by-L2 instance: their personal rows come from the backends (only
    // the shared fragments are reused), and are theirs.
    let personal = [
        Backend::ContinueWatching,
        Backend::MyList,
        Backend::Recommendations,
    ];
    let before: Vec<u64> = personal
        .iter()
        .map(|b| fixtures.control().stats_of(*b).calls)
        .collect();
    let other = second.homepage(HOME, Some(&second.token("u2"))).await;
    assert!(other.get("errors").is_none(), "{other}");
    for (b, was) in personal.iter().zip(before) {
        assert_eq!(
            fixtures.control().stats_of(*b).calls,
            was + 1,
            "{b:?}: u2's row must be loaded for u2"
        );
    }
    assert_ne!(ids(row(&other, "MY_LIST")), ids(row(&warmed, "MY_LIST")));
    // Anonymous never reads a signed-in user's fragments: no personal row, no personal call.
    let anonymous = second.homepage(HOME, None).await;
    assert!(!kinds(&anonymous).iter().any(|k| k == "MY_LIST"));
    fixtures
}

#[tokio::test]
async fn a_second_instance_answers_a_users_homepage_from_l2_with_no_backend_call() {
    require_redis();
    second_instance_starts_warm(REDIS, false, &prefix("warm")).await;
}

#[tokio::test]
async fn on_a_redis_cluster_fragments_spread_over_the_masters_and_a_second_instance_starts_warm() {
    let cluster = RedisCluster::start().expect("test Redis Cluster");
    second_instance_starts_warm(&cluster.url(), true, &prefix("cluster")).await;
    let per_node = cluster.keys_per_node();
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every master holds fragments: {per_node:?}"
    );
    // A client seeded with one node only finds every slot's owner (redirections followed).
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let one_seed = format!("redis://127.0.0.1:{}", cluster.ports()[0]);
    let p = prefix("oneseed");
    let a = spawn_app_on(web(), fixtures.clone(), with_l2(&one_seed, true, &p)).await;
    a.homepage(HOME, Some(&a.token("u7"))).await;
    let before = calls(&fixtures);
    let b = spawn_app_on(web(), fixtures.clone(), with_l2(&one_seed, true, &p)).await;
    b.homepage(HOME, Some(&b.token("u7"))).await;
    assert_eq!(calls(&fixtures), before);
    assert_eq!(b.metric_sum("bff_cache_l2_errors_total", &[]).await, 0.0);
}

/// Redis cut mid-stream (a proxy the test controls): a warm instance and a cold one both answer
/// with the same data, no error and no 5xx; the tier counts the failures and steps aside.
#[tokio::test]
async fn with_redis_cut_the_homepage_still_answers_the_same() {
    require_redis();
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let through = format!("redis://{}", proxy.addr());
    let p = prefix("cut");
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let warm = spawn_app_on(web(), fixtures.clone(), with_l2(&through, false, &p)).await;
    let token = warm.token("u3");
    let expected = warm.homepage(HOME, Some(&token)).await;
    proxy.cut();
    let again = warm.homepage(HOME, Some(&token)).await;
    assert_eq!(again["data"], expected["data"]);
    let cold = spawn_app_on(web(), fixtures.clone(), with_l2(&through, false, &p)).await;
    for _ in 0..3 {
        let (status, body) = cold
            .post_graphql(
                &format!("{{ homepage(region: \"US\") {{ rows {{ {HOME} }} }} }}"),
                json!({}),
                Some(&cold.token("u3")),
            )
            .await;
        assert_eq!(status, 200);
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(body["data"], expected["data"]);
    }
    let failed = cold.metric_sum("bff_cache_l2_errors_total", &[]).await
        + cold.metric_sum("bff_cache_l2_skipped_total", &[]).await;
    assert!(failed > 0.0, "the outage was counted");
    // Back: the tier is used again.
    proxy.restore();
    let hits = cold.metric_sum("bff_cache_l2_hits_total", &[]).await;
    eventually("L2 answers again", || async {
        cold.homepage(HOME, Some(&cold.token("u3"))).await;
        let fresh = spawn_app_on(web(), fixtures.clone(), with_l2(&through, false, &p)).await;
        fresh.homepage(HOME, Some(&fresh.token("u3"))).await;
        fresh.metric_sum("bff_cache_l2_hits_total", &[]).await > 0.0
    })
    .await;
    assert!(cold.metric_sum("bff_cache_l2_hits_total", &[]).await >= hits);
}

/// A `title.updated` event drops the title from L1 on every instance and from L2: both instances
/// and a new one serve the new name.
#[tokio::test]
async fn after_a_title_update_both_instances_and_redis_serve_the_new_title() {
    require_redis();
    require_rabbitmq();
    let events = names("l2title");
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let bus: Arc<dyn shared::events::EventBus> = Arc::new(
        shared::events::rabbit::RabbitBus::start(
            &url(BROKER),
            &shared::events::options(&events),
            "fixtures",
        )
        .unwrap(),
    );
    fixtures.control().live().attach(bus.clone());
    wait_connected(&*bus, 0).await;
    let p = prefix("title");
    let on_bus = |s: &mut Settings| {
        let mut e = events.clone();
        e.url = Some(Secret::new(url(BROKER)));
        s.events = e;
        with_l2(REDIS, false, &p)(s);
    };
    let a = spawn_app_on(web(), fixtures.clone(), on_bus).await;
    wait_connected(&*a.bus, 1).await;
    let b = spawn_app_on(web(), fixtures.clone(), on_bus).await;
    wait_connected(&*b.bus, 1).await;
    let q = r#"{ title(id: "t3") { name } }"#;
    let name = |body: &Value| {
        body["data"]["title"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let original = name(&a.post_graphql(q, json!({}), None).await.1);
    assert!(!original.is_empty());
    let catalog = fixtures.control().stats_of(Backend::Catalog).calls;
    assert_eq!(name(&b.post_graphql(q, json!({}), None).await.1), original);
    assert_eq!(
        fixtures.control().stats_of(Backend::Catalog).calls,
        catalog,
        "b read the title from L2"
    );

    fixtures
        .control()
        .live()
        .edit_title("t3", "Renamed everywhere");
    for app in [&a, &b] {
        eventually("the new name is served", || async {
            name(&app.post_graphql(q, json!({}), None).await.1) == "Renamed everywhere"
        })
        .await;
    }
    let c = spawn_app_on(web(), fixtures.clone(), with_l2(REDIS, false, &p)).await;
    assert_eq!(
        name(&c.post_graphql(q, json!({}), None).await.1),
        "Renamed everywhere",
        "L2 holds no old title"
    );
    drop((a, b, c));
    shared::events::rabbit::delete_topology(&url(BROKER), &events.exchange, &events.progress_queue)
        .await;
}
