//! Events over the real RabbitMQ (127.0.0.1:5672, guest/guest; `.ci/run` starts it when it is not
//! running): invalidation on two instances for every event kind, fire-and-forget progress with
//! the consumer stopped, a broker cut by a proxy the test controls (never the machine's broker),
//! a full outbox, redeliveries and dead letters. Every test has its own exchange and queues, so
//! they run in parallel; they are deleted at the end.

use std::{sync::Arc, time::Duration};

use crate::helpers::*;
use bff_fixtures::{FixtureOptions, Fixtures, proxy::TcpProxy};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use shared::{
    config::{EventsSettings, Secret},
    events::{Envelope, EventBus, Payload, ProgressData, WorkQueue, rabbit::RabbitBus},
};

pub(crate) const BROKER: &str = "127.0.0.1:5672";
const REPORT: &str = "mutation($id: ID!, $pos: Int!) { reportProgress(titleId: $id, positionSeconds: $pos) { accepted eventId } }";
const ADD: &str = "mutation($id: ID!) { addToMyList(titleId: $id) { changed } }";
const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) fn url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// Names of its own for one test.
pub(crate) fn names(test: &str) -> EventsSettings {
    let exchange = format!("bfftest.{test}.{}", uuid::Uuid::new_v4().simple());
    EventsSettings {
        progress_queue: format!("{exchange}.progress"),
        exchange,
        confirm_timeout: Duration::from_secs(2),
        reconnect_delay: Duration::from_millis(50),
        max_retries: 2,
        ..EventsSettings::default()
    }
}

/// Fixtures publishing on (and consuming from) the broker directly, plus the names in use.
struct World {
    fixtures: Arc<Fixtures>,
    bus: Arc<dyn EventBus>,
    events: EventsSettings,
}

impl World {
    async fn new(test: &str) -> World {
        require_rabbitmq();
        let events = names(test);
        let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
        let bus: Arc<dyn EventBus> = Arc::new(
            RabbitBus::start(&url(BROKER), &shared::events::options(&events), "fixtures").unwrap(),
        );
        fixtures.control().live().attach(bus.clone());
        wait_connected(&*bus, 0).await;
        World {
            fixtures,
            bus,
            events,
        }
    }

    /// A web BFF on these fixtures whose bus is the broker at `broker` (a proxy, or the broker).
    async fn bff(&self, broker: &str, adjust: impl FnOnce(&mut EventsSettings)) -> TestApp {
        let mut events = self.events.clone();
        events.url = Some(Secret::new(url(broker)));
        adjust(&mut events);
        let app = spawn_app_on(web(), self.fixtures.clone(), move |s| s.events = events).await;
        wait_connected(&*app.bus, 1).await;
        app
    }

    async fn start_consumer(&self) {
        self.fixtures
            .control()
            .live()
            .start_progress_consumer(Duration::ZERO)
            .await
            .unwrap();
        wait_connected(&*self.bus, 1).await;
    }

    /// Deletes this test's exchange and queues.
    async fn cleanup(self) {
        shared::events::rabbit::delete_topology(
            &url(BROKER),
            &self.events.exchange,
            &self.events.progress_queue,
        )
        .await;
    }
}

/// Polls until the bus is connected with at least `consumers` consumers receiving.
pub(crate) async fn wait_connected(bus: &dyn EventBus, consumers: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = bus.status();
        if s.connected && s.consumers >= consumers {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bus not connected: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const HOME: &str = "kind items { progress { positionSeconds } title { id name } }";

fn row_items(body: &Value, kind: &str) -> Vec<(String, String, Option<i64>)> {
    body["data"]["homepage"]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == kind)
        .flat_map(|r| r["items"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                i["title"]["id"].as_str().unwrap_or_default().to_owned(),
                i["title"]["name"].as_str().unwrap_or_default().to_owned(),
                i["progress"]["positionSeconds"].as_i64(),
            )
        })
        .collect()
}

async fn report(app: &TestApp, token: &str, title: &str, pos: u32) -> Value {
    let (status, body) = app
        .post_graphql(REPORT, json!({ "id": title, "pos": pos }), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn accepted(body: &Value) -> bool {
    body["data"]["reportProgress"]["accepted"] == true
}

#[tokio::test]
async fn each_event_kind_invalidates_the_fragment_on_both_instances() {
    let world = World::new("kinds").await;
    world.start_consumer().await;
    let a = world.bff(BROKER, |_| {}).await;
    let b = world.bff(BROKER, |_| {}).await;
    let token = a.token("u1");
    let (home_a, home_b) = (
        a.homepage(HOME, Some(&token)).await,
        b.homepage(HOME, Some(&token)).await,
    );
    let top = row_items(&home_a, "TOP_10");
    assert_eq!(top, row_items(&home_b, "TOP_10"));

    // title.updated: the catalog renames the number one; both instances show the new name.
    let (first, _, _) = top[0].clone();
    assert!(
        world
            .fixtures
            .control()
            .live()
            .edit_title(&first, "Renamed By Catalog")
    );
    for app in [&a, &b] {
        eventually("title renamed on an instance", || async {
            let home = app.homepage(HOME, Some(&token)).await;
            row_items(&home, "TOP_10")
                .iter()
                .any(|(id, name, _)| *id == first && name == "Renamed By Catalog")
        })
        .await;
    }

    // top10.changed: the top10 service reorders US; number two leads on both.
    let second = top[1].0.clone();
    assert!(world.fixtures.control().live().rotate_top10("US"));
    for app in [&a, &b] {
        eventually("top 10 reordered on an instance", || async {
            let home = app.homepage(HOME, Some(&token)).await;
            row_items(&home, "TOP_10").first().map(|t| t.0.clone()) == Some(second.clone())
        })
        .await;
    }

    // mylist.changed: a my-list mutation on A shows on B's next homepage.
    let in_list: Vec<String> = a
        .data()
        .my_list_seed("u1")
        .unwrap()
        .iter()
        .map(|e| e.title_id.clone())
        .collect();
    let new_id = (1..2000)
        .map(|i| format!("t{i}"))
        .find(|id| !in_list.contains(id))
        .unwrap();
    let (_, body) = a
        .post_graphql(ADD, json!({ "id": new_id }), Some(&token))
        .await;
    assert_eq!(body["data"]["addToMyList"]["changed"], true, "{body}");
    eventually("my-list change visible on B", || async {
        let home = b.homepage(HOME, Some(&token)).await;
        row_items(&home, "MY_LIST").iter().any(|t| t.0 == new_id)
    })
    .await;

    // continue_watching.changed: progress reported on A, applied by the service, shown on B.
    let (cw_title, _, _) = row_items(&home_b, "CONTINUE_WATCHING")[0].clone();
    let body = report(&a, &token, &cw_title, 7).await;
    assert!(accepted(&body), "{body}");
    // Read-your-writes on A at once (the overlay), whatever the service's pace.
    let home = a.homepage(HOME, Some(&token)).await;
    assert_eq!(
        row_items(&home, "CONTINUE_WATCHING")[0],
        (
            cw_title.clone(),
            row_items(&home, "CONTINUE_WATCHING")[0].1.clone(),
            Some(7)
        )
    );
    eventually("progress visible on B", || async {
        let home = b.homepage(HOME, Some(&token)).await;
        row_items(&home, "CONTINUE_WATCHING")
            .first()
            .is_some_and(|t| t.0 == cw_title && t.2 == Some(7))
    })
    .await;
    let detail = a.readyz().await;
    assert_eq!(detail["events"]["status"], "up", "{detail}");
    assert!(
        detail["events"]["consumed"].as_u64().unwrap() >= 4,
        "{detail}"
    );
    let metrics = a.metrics_text().await;
    for family in [
        "bff_events_published_total",
        "bff_events_confirmed_total",
        "bff_events_consumed_total",
        "bff_events_redelivered_total",
        "bff_events_outbox{",
        "bff_events_lag_seconds",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    drop((a, b));
    world.cleanup().await;
}

#[tokio::test]
async fn progress_is_accepted_with_the_consumer_stopped_and_all_applied_in_order_after() {
    let world = World::new("drain").await;
    let a = world.bff(BROKER, |_| {}).await;
    let users = ["u1", "u2", "u3"];
    let tokens: Vec<String> = users.iter().map(|u| a.token(u)).collect();
    const PER_USER: u32 = 15;
    for pos in 0..PER_USER {
        for t in &tokens {
            assert!(accepted(&report(&a, t, "t1", pos).await));
        }
    }
    let n = u64::from(PER_USER) * users.len() as u64;
    let live = world.fixtures.control().live().clone();
    assert_eq!(
        live.progress_stats().applied,
        0,
        "nothing applied while stopped"
    );
    eventually("all confirmed by the broker", || async {
        a.bus.status().confirmed == n
    })
    .await;

    world.start_consumer().await;
    assert_eq!(live.wait_applied(n, DEADLINE).await, n);
    // N accepted = N applied, and each user's in the order reported.
    let log = live.applied_progress();
    assert_eq!(log.len() as u64, n);
    for u in users {
        let positions: Vec<u32> = log
            .iter()
            .filter(|p| p.user_id == u)
            .map(|p| p.position_seconds)
            .collect();
        assert_eq!(positions, (0..PER_USER).collect::<Vec<_>>(), "{u}");
    }
    drop(a);
    world.cleanup().await;
}

/// A proxy in front of the machine's broker that the test controls.
async fn proxy() -> TcpProxy {
    TcpProxy::start(BROKER.parse().unwrap()).await.unwrap()
}

/// A spool directory of its own for one test.
fn spool_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "bff-spool-{test}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

#[tokio::test]
async fn a_broker_cut_mid_stream_spools_every_report_and_loses_nothing_after() {
    let world = World::new("cut").await;
    world.start_consumer().await;
    let proxy = proxy().await;
    let dir = spool_dir("cut");
    let spool = dir.clone();
    let a = world
        .bff(&proxy.addr().to_string(), move |e| {
            e.spool_dir = Some(spool)
        })
        .await;
    let token = a.token("u1");
    let live = world.fixtures.control().live().clone();
    for pos in 0..20 {
        assert!(accepted(&report(&a, &token, "t1", pos).await));
    }
    proxy.cut();
    eventually("the instance sees the bus down", || async {
        !a.bus.status().connected
    })
    .await;
    let detail = a.readyz().await;
    assert_eq!(detail["events"]["status"], "down", "{detail}");
    assert_eq!(
        detail["status"], "ready",
        "the bus being away is no reason to stop serving"
    );
    for pos in 20..40 {
        assert!(accepted(&report(&a, &token, "t1", pos).await));
    }
    let s = a.bus.status();
    assert_eq!((s.spooled, s.spool_depth), (20, 20), "on disk: {s:?}");
    proxy.restore();
    assert_eq!(live.wait_applied(40, DEADLINE).await, 40);
    eventually("the spool replayed and emptied", || async {
        let s = a.bus.status();
        s.spool_depth == 0 && s.outbox_depth == 0
    })
    .await;
    let positions: Vec<u32> = live
        .applied_progress()
        .iter()
        .map(|p| p.position_seconds)
        .collect();
    assert_eq!(
        positions,
        (0..40).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert!(a.bus.status().reconnects >= 1);
    drop(a);
    world.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_a_spool_a_cut_broker_refuses_reports_at_once_naming_events() {
    let world = World::new("nospool").await;
    let proxy = proxy().await;
    let a = world.bff(&proxy.addr().to_string(), |_| {}).await;
    let token = a.token("u1");
    for pos in 0..5 {
        assert!(accepted(&report(&a, &token, "t1", pos).await));
    }
    proxy.cut();
    eventually("the instance sees the bus down", || async {
        !a.bus.status().connected
    })
    .await;
    let started = std::time::Instant::now();
    let body = report(&a, &token, "t1", 5).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused without waiting for the broker"
    );
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"], "{body}");
    assert_eq!(
        errors(&body)[0]["extensions"]["backend"],
        "events",
        "{body}"
    );
    proxy.restore();
    world.start_consumer().await;
    // The five accepted ones are not lost; the refused one was never sent.
    let live = world.fixtures.control().live().clone();
    assert_eq!(live.wait_applied(5, DEADLINE).await, 5);
    eventually("the instance reconnected", || async {
        a.bus.status().connected
    })
    .await;
    assert!(accepted(&report(&a, &token, "t1", 6).await));
    assert_eq!(live.wait_applied(6, DEADLINE).await, 6);
    let positions: Vec<u32> = live
        .applied_progress()
        .iter()
        .map(|p| p.position_seconds)
        .collect();
    assert_eq!(positions, [0, 1, 2, 3, 4, 6], "nothing half-done");
    drop(a);
    world.cleanup().await;
}

#[tokio::test]
async fn a_redelivered_event_changes_nothing_twice() {
    let world = World::new("redeliver").await;
    world.start_consumer().await;
    let event = Envelope::new(
        "test",
        Payload::PlaybackProgress(ProgressData {
            user_id: "u1".into(),
            title_id: "t1".into(),
            position_seconds: 30,
        }),
    );
    // The same event id twice, as a republish after a lost confirm would send it.
    world
        .bus
        .send_work(WorkQueue::PlaybackProgress, &event)
        .await
        .unwrap();
    world
        .bus
        .send_work(WorkQueue::PlaybackProgress, &event)
        .await
        .unwrap();
    let live = world.fixtures.control().live().clone();
    eventually("both delivered", || async {
        let s = live.progress_stats();
        s.applied + s.duplicates == 2
    })
    .await;
    let s = live.progress_stats();
    assert_eq!((s.applied, s.duplicates), (1, 1));
    assert_eq!(live.applied_progress().len(), 1);
    world.cleanup().await;
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_without_blocking_the_queue() {
    let world = World::new("poison").await;
    world.start_consumer().await;
    let conn = Connection::connect(&url(BROKER), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = world.events.progress_queue.clone();
    // Not an envelope at all, then an envelope the service refuses every time (unknown user),
    // then a good one behind them.
    let refused = Envelope::new(
        "test",
        Payload::PlaybackProgress(ProgressData {
            user_id: "u999999".into(),
            title_id: "t1".into(),
            position_seconds: 1,
        }),
    );
    let good = Envelope::new(
        "test",
        Payload::PlaybackProgress(ProgressData {
            user_id: "u2".into(),
            title_id: "t1".into(),
            position_seconds: 2,
        }),
    );
    // A valid envelope of 30 MiB (over events.max_message_bytes) and one with a field version 1
    // does not define: poison too, never applied.
    let huge = Envelope::new(
        "test",
        Payload::PlaybackProgress(ProgressData {
            user_id: "u3".into(),
            title_id: "t".repeat(30 * 1024 * 1024),
            position_seconds: 3,
        }),
    );
    let mut unknown: Value = serde_json::from_slice(&good.to_bytes()).unwrap();
    unknown["id"] = "another-id".into();
    unknown["priority"] = "high".into();
    for body in [
        b"not json".to_vec(),
        refused.to_bytes(),
        huge.to_bytes(),
        serde_json::to_vec(&unknown).unwrap(),
        good.to_bytes(),
    ] {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let live = world.fixtures.control().live().clone();
    assert_eq!(live.wait_applied(1, DEADLINE).await, 1);
    let dlq = format!("{queue}.dlq");
    eventually("four dead letters", || async {
        let q = ch
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count() == 4
    })
    .await;
    // Refused: 1 try + max_retries (2) retries.
    assert_eq!(live.progress_stats().refused, 3);
    assert_eq!(live.applied_progress().len(), 1, "only the good one");
    let s = world.bus.status();
    assert_eq!((s.too_large, s.dead_lettered), (1, 4), "{s:?}");
    let _ = conn.close(200, "bye".into()).await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_silent_partition_shows_events_down_within_about_two_heartbeats() {
    let world = World::new("silent").await;
    let proxy = proxy().await;
    let a = world
        .bff(&proxy.addr().to_string(), |e| {
            e.heartbeat = Duration::from_secs(1);
        })
        .await;
    // No bytes move, the sockets stay open: only heartbeats can tell.
    proxy.silence();
    let started = std::time::Instant::now();
    eventually("the instance sees the bus down", || async {
        !a.bus.status().connected
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "a 1 s heartbeat notices a silent partition in about two heartbeats, took {took:?}"
    );
    assert_eq!(a.readyz().await["events"]["status"], "down");
    proxy.restore();
    eventually("reconnected", || async { a.bus.status().connected }).await;
    drop(a);
    world.cleanup().await;
}

#[tokio::test]
async fn a_deleted_work_queue_is_declared_again_and_no_report_is_confirmed_into_nothing() {
    let world = World::new("deleted").await;
    let a = world.bff(BROKER, |_| {}).await;
    let token = a.token("u1");
    assert!(accepted(&report(&a, &token, "t1", 1).await));
    // An operator deletes the work queue (a migration, an x-expires policy).
    let conn = Connection::connect(&url(BROKER), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        world.events.progress_queue.as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    // Reports go on: each is returned once (no queue), the queue is declared again, and the
    // report is confirmed into it — none is confirmed into nothing.
    for pos in 2..=20 {
        assert!(accepted(&report(&a, &token, "t1", pos).await), "{pos}");
    }
    assert!(a.bus.status().returned >= 1, "{:?}", a.bus.status());
    world.start_consumer().await;
    let live = world.fixtures.control().live().clone();
    // The one report sent before the deletion went with the queue; every later one is applied.
    assert_eq!(live.wait_applied(19, DEADLINE).await, 19);
    assert_eq!(live.applied_position("u1", "t1"), Some(20));
    let _ = conn.close(200, "bye".into()).await;
    drop(a);
    world.cleanup().await;
}

#[tokio::test]
async fn cut_from_the_bus_an_instance_serves_titles_boundedly_stale_then_refetches() {
    let world = World::new("stale").await;
    let proxy = proxy().await;
    let a = world
        .bff(&proxy.addr().to_string(), |e| {
            e.max_stale_while_disconnected = Duration::from_millis(300);
        })
        .await;
    let name = |body: &Value| {
        body["data"]["title"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let q = r#"{ title(id: "t3") { name } }"#;
    let (_, before) = a.post_graphql(q, json!({}), None).await;
    let original = name(&before);
    assert!(!original.is_empty(), "{before}");
    proxy.cut();
    eventually("the instance sees the bus down", || async {
        !a.bus.status().connected
    })
    .await;
    // The catalog changes; its event cannot reach this instance.
    world
        .fixtures
        .control()
        .live()
        .edit_title("t3", "Edited while cut off");
    // Within the 5-minute TTL, but past the bound: refetched, not served stale for the outage.
    eventually("the edit is served", || async {
        name(&a.post_graphql(q, json!({}), None).await.1) == "Edited while cut off"
    })
    .await;
    // The catalog down too: stale-if-error still answers.
    a.fault(bff_fixtures::Backend::Catalog, error_rate(1.0));
    // Past the bound again, on the cache's clock.
    a.cache.clock().advance(Duration::from_millis(350));
    let (_, body) = a.post_graphql(q, json!({}), None).await;
    assert_eq!(name(&body), "Edited while cut off", "{body}");
    proxy.restore();
    drop(a);
    world.cleanup().await;
}

#[tokio::test]
async fn amqps_with_a_verified_certificate_carries_reports_and_an_untrusted_one_is_refused() {
    // A TLS listener of the test's own in front of the machine's broker (its configuration is
    // never touched), with a certificate from a CA made now.
    let pki = crate::pki::Pki::new("amqps");
    let server = pki.issue("broker", "localhost", false);
    let front = crate::pki::tls_front(BROKER.parse().unwrap(), &server, None).await;
    let tls_url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", front.port());
    let events = names("amqps");
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let services = shared::events::from_settings(
        &EventsSettings {
            url: Some(Secret::new(tls_url.clone())),
            tls_ca_file: Some(pki.ca_file()),
            ..events.clone()
        },
        "fixtures",
    )
    .unwrap();
    fixtures.control().live().attach(services.clone());
    fixtures
        .control()
        .live()
        .start_progress_consumer(Duration::ZERO)
        .await
        .unwrap();
    wait_connected(&*services, 1).await;
    // Trusting the test CA: connected over TLS, reports accepted and applied.
    let ca = pki.ca_file();
    let (e1, url1) = (events.clone(), tls_url.clone());
    let a = spawn_app_on(web(), fixtures.clone(), move |s| {
        s.events = EventsSettings {
            url: Some(Secret::new(url1)),
            tls_ca_file: Some(ca),
            ..e1
        };
    })
    .await;
    wait_connected(&*a.bus, 1).await;
    let token = a.token("u1");
    assert!(accepted(&report(&a, &token, "t1", 42).await));
    let live = fixtures.control().live().clone();
    assert_eq!(live.wait_applied(1, DEADLINE).await, 1);
    // Not trusting it (the system's roots only): the certificate is refused, nothing connects.
    let (e2, url2) = (events.clone(), tls_url.clone());
    let b = spawn_app_on(web(), fixtures.clone(), move |s| {
        s.events = EventsSettings {
            url: Some(Secret::new(url2)),
            ..e2
        };
    })
    .await;
    eventually("the first TLS handshake fails", || async {
        b.bus.status().down_since.is_some()
    })
    .await;
    let s = b.bus.status();
    assert!(!s.connected && s.reconnects == 0, "{s:?}");
    let body = report(&b, &token, "t1", 43).await;
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"], "{body}");
    drop((a, b));
    World {
        fixtures,
        bus: services,
        events,
    }
    .cleanup()
    .await;
}

#[tokio::test]
async fn one_users_flood_gets_their_share_refused_and_nobody_elses() {
    let world = World::new("share").await;
    let proxy = proxy().await;
    let dir = spool_dir("share");
    let spool = dir.clone();
    let a = world
        .bff(&proxy.addr().to_string(), move |e| {
            e.spool_dir = Some(spool);
            // 16 × 2 = 32 spooled reports per user while the broker is away.
            e.outbox_share = 2;
        })
        .await;
    proxy.cut();
    eventually("the instance sees the bus down", || async {
        !a.bus.status().connected
    })
    .await;
    let flooder = a.token("u1");
    for pos in 0..32 {
        assert!(accepted(&report(&a, &flooder, "t1", pos).await), "{pos}");
    }
    let body = report(&a, &flooder, "t1", 32).await;
    assert_eq!(codes(&body), ["RATE_LIMITED"], "{body}");
    // Everybody else still gets in.
    let other = a.token("u2");
    assert!(accepted(&report(&a, &other, "t1", 1).await));
    proxy.restore();
    world.start_consumer().await;
    let live = world.fixtures.control().live().clone();
    assert_eq!(live.wait_applied(33, DEADLINE).await, 33);
    drop(a);
    world.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
