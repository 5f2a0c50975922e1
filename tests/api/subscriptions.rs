//! Subscriptions: `/graphql/ws` (graphql-transport-ws), `/graphql/stream` (SSE) and a
//! subscription POSTed to `/graphql` accepting `multipart/mixed`, fed by the bus and trimmed per
//! client; identity and isolation; the bounds and close codes; one execution shared by the
//! subscribers of one operation; shutdown.
//!
//! Each test talks to a real BFF over real sockets (a Rust WebSocket client, so close codes and
//! hostile frames can be checked exactly); the npm `graphql-ws` / `graphql-sse` clients run
//! against both binaries in CI (`.ci/run`).

use std::{sync::Arc, time::Duration};

use bff_fixtures::{Backend, FixtureOptions, Fixtures, proxy::TcpProxy};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use shared::{config::Settings, events::EventBus};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::events::{BROKER, names, url, wait_connected};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws client for tests.
struct Ws {
    socket: Socket,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
struct Closed(u16, String);

impl Ws {
    /// Connects (subprotocol `graphql-transport-ws`), without `connection_init`.
    async fn connect(app: &TestApp, headers: &[(&str, &str)]) -> Ws {
        Self::try_connect(app, headers, "graphql-transport-ws")
            .await
            .expect("upgrade")
    }

    async fn try_connect(
        app: &TestApp,
        headers: &[(&str, &str)],
        protocol: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}/graphql/ws", app.addr)
            .into_client_request()
            .unwrap();
        if !protocol.is_empty() {
            req.headers_mut()
                .insert("sec-websocket-protocol", protocol.parse().unwrap());
        }
        for (k, v) in headers {
            req.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse::<axum::http::HeaderValue>().unwrap(),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws { socket })
    }

    /// Connects and initialises, with `token` in the payload when given.
    async fn init(app: &TestApp, token: Option<&str>) -> Ws {
        let mut ws = Self::connect(app, &[]).await;
        let payload = token.map_or(json!({}), |t| json!({ "token": t }));
        ws.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let ack = ws.recv().await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws
    }

    async fn send(&mut self, msg: Value) {
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .unwrap();
    }

    async fn subscribe(&mut self, id: &str, query: &str) {
        self.send(json!({"id": id, "type": "subscribe", "payload": {"query": query}}))
            .await;
    }

    /// The next protocol message (pings answered), or how the socket closed.
    async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(Closed(1005, String::new()), |f| {
                        Closed(u16::from(f.code), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Closed(1006, e.to_string())),
                None => return Err(Closed(1006, "ended".into())),
            }
        }
    }

    async fn recv(&mut self) -> Option<Value> {
        self.next().await.ok()
    }

    /// The next message, which must be `next` for `id`: its payload.
    async fn next_payload(&mut self, id: &str) -> Value {
        let m = self.next().await.expect("open");
        assert_eq!(m["type"], "next", "{m}");
        assert_eq!(m["id"], id, "{m}");
        m["payload"].clone()
    }

    /// The close code this socket ends with.
    async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.next().await {
                return c;
            }
        }
    }
}

/// Fixtures whose services publish on the app's in-process bus and apply progress reports.
async fn live_app(surface: shared::Surface, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(surface, adjust).await;
    let live = app.control().live().clone();
    live.attach(app.bus.clone());
    live.start_progress_consumer(Duration::ZERO).await.unwrap();
    app
}

/// A progress report of `token`'s viewer through `app`, accepted.
async fn report(app: &TestApp, token: &str, title: &str, pos: u32) {
    let (s, body) = app
        .post_graphql(
            "mutation($t: ID!, $p: Int!) { reportProgress(titleId: $t, positionSeconds: $p) { accepted } }",
            json!({"t": title, "p": pos}),
            Some(token),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"]["reportProgress"]["accepted"], true, "{body}");
}

/// The first item of a pushed continue-watching row: its title id and position.
fn first_item(pushed: &Value) -> (String, u64) {
    let first = &pushed["data"]["continueWatching"]["items"][0];
    (
        first["title"]["id"].as_str().unwrap_or_default().to_owned(),
        first["progress"]["positionSeconds"]
            .as_u64()
            .unwrap_or_default(),
    )
}

const TOP10: &str =
    r#"subscription { top10(region: "US") { kind heading items { rank title { id name } } } }"#;
const CW: &str = "subscription { continueWatching { kind items { progress { positionSeconds } title { id } } } }";

#[tokio::test]
async fn top10_is_sent_now_and_again_when_the_bus_says_it_changed() {
    let app = live_app(web(), |_| {}).await;
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("1", TOP10).await;
    let first = ws.next_payload("1").await;
    let row = &first["data"]["top10"];
    assert_eq!(row["kind"], "TOP_10");
    assert_eq!(row["heading"], "Top 10 in US Today");
    let before = ids(row);
    assert_eq!(before.len(), 10);
    let calls = app.control().stats_of(Backend::Top10).calls;
    assert!(app.control().live().rotate_top10("US"));
    let second = ws.next_payload("1").await;
    let after = ids(&second["data"]["top10"]);
    // The service rotated it by one: number one dropped to the end.
    assert_eq!(after[..9], before[1..]);
    assert_eq!(after[9], before[0]);
    // One reload for the change.
    assert_eq!(app.control().stats_of(Backend::Top10).calls, calls + 1);
    // `complete` ends it; the socket stays usable.
    ws.send(json!({"id": "1", "type": "complete"})).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn one_execution_serves_every_subscriber_of_the_same_operation() {
    let app = live_app(mobile(), |_| {}).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut ws = Ws::init(&app, None).await;
        ws.subscribe("a", TOP10).await;
        ws.next_payload("a").await;
        sockets.push(ws);
    }
    assert_eq!(
        app.metric_sum("bff_subscription_executions", &[]).await,
        1.0
    );
    assert_eq!(app.metric_sum("bff_subscriptions", &[]).await, 20.0);
    let calls = app.control().stats_of(Backend::Top10).calls;
    let titles = app.control().stats_of(Backend::Catalog).calls;
    assert!(app.control().live().rotate_top10("US"));
    let mut payloads = Vec::new();
    for ws in &mut sockets {
        payloads.push(ws.next_payload("a").await);
    }
    assert!(
        payloads.windows(2).all(|w| w[0] == w[1]),
        "every subscriber got the same"
    );
    assert_eq!(
        app.control().stats_of(Backend::Top10).calls,
        calls + 1,
        "one reload"
    );
    assert!(app.control().stats_of(Backend::Catalog).calls <= titles + 1);
    drop(sockets);
    eventually("executions end with their subscribers", || async {
        app.metric_sum("bff_subscription_executions", &[]).await == 0.0
            && app
                .metric_sum("bff_subscription_connections", &["ws"])
                .await
                == 0.0
            && app.cache.watched_keys() == 0
    })
    .await;
}

#[tokio::test]
async fn a_title_is_pushed_in_each_binarys_own_shape() {
    for (surface, compact) in [(web(), false), (mobile(), true)] {
        let app = live_app(surface, |_| {}).await;
        let id = app.data().titles()[0].id.clone();
        let mut ws = Ws::init(&app, None).await;
        let q = format!(r#"subscription {{ title(id: "{id}") {{ id name synopsis }} }}"#);
        ws.subscribe("t", &q).await;
        let first = ws.next_payload("t").await;
        assert_eq!(first["data"]["title"]["id"], id.as_str());
        assert!(app.control().live().edit_title(&id, "Renamed Live"));
        let second = ws.next_payload("t").await;
        assert_eq!(second["data"]["title"]["name"], "Renamed Live");
        let synopsis = second["data"]["title"]["synopsis"].as_str().unwrap();
        if compact {
            assert!(synopsis.chars().count() <= 141, "mobile trims: {synopsis}");
        }
        // Web has fields mobile does not: asking mobile for them is a validation error.
        let mut other = Ws::init(&app, None).await;
        other
            .subscribe(
                "x",
                &format!(r#"subscription {{ title(id: "{id}") {{ cast }} }}"#),
            )
            .await;
        let m = other.next().await.unwrap();
        if compact {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(
                m["payload"][0]["extensions"]["code"],
                "GRAPHQL_VALIDATION_FAILED"
            );
        } else {
            assert_eq!(m["type"], "next", "{m}");
        }
    }
}

#[tokio::test]
async fn each_user_receives_only_their_own_rows() {
    let app = live_app(web(), |_| {}).await;
    let (u1, u2) = (app.token("u1"), app.token("u2"));
    let mut a = Ws::init(&app, Some(&u1)).await;
    let mut b = Ws::init(&app, Some(&u2)).await;
    a.subscribe("cw", CW).await;
    b.subscribe("cw", CW).await;
    let a0 = a.next_payload("cw").await;
    let b0 = b.next_payload("cw").await;
    assert_ne!(a0, b0, "two users, two rows");
    let title = app.data().titles()[5].id.clone();
    report(&app, &u1, &title, 61).await;
    let a1 = a.next_payload("cw").await;
    assert_eq!(first_item(&a1), (title.clone(), 61));
    // u2's next message is u2's own change, not u1's row.
    let title2 = app.data().titles()[6].id.clone();
    report(&app, &u2, &title2, 62).await;
    let b1 = b.next_payload("cw").await;
    assert_eq!(first_item(&b1), (title2, 62));
    let b_ids = ids(&b1["data"]["continueWatching"]);
    assert!(!b_ids.contains(&title) || ids(&b0["data"]["continueWatching"]).contains(&title));
}

#[tokio::test]
async fn a_report_through_the_mobile_instance_reaches_the_web_session_over_rabbitmq() {
    require_rabbitmq();
    let events = names("live_cross");
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let services: Arc<dyn EventBus> = Arc::new(
        shared::events::rabbit::RabbitBus::start(
            &url(BROKER),
            &shared::events::options(&events),
            "fixtures",
        )
        .unwrap(),
    );
    fixtures.control().live().attach(services.clone());
    fixtures
        .control()
        .live()
        .start_progress_consumer(Duration::ZERO)
        .await
        .unwrap();
    let mut cfg = events.clone();
    cfg.url = Some(shared::config::Secret::new(url(BROKER)));
    let (c1, c2) = (cfg.clone(), cfg);
    let web_app = spawn_app_on(web(), fixtures.clone(), move |s| s.events = c1).await;
    let mobile_app = spawn_app_on(mobile(), fixtures.clone(), move |s| s.events = c2).await;
    wait_connected(&*web_app.bus, 1).await;
    wait_connected(&*mobile_app.bus, 1).await;
    let token = web_app.token("u1");
    let mut ws = Ws::init(&web_app, Some(&token)).await;
    ws.subscribe("cw", CW).await;
    ws.next_payload("cw").await;
    let title = web_app.data().titles()[9].id.clone();
    report(&mobile_app, &token, &title, 123).await;
    let pushed = ws.next_payload("cw").await;
    assert_eq!(first_item(&pushed), (title, 123), "{pushed}");
}

#[tokio::test]
async fn subscribers_are_told_when_the_bus_is_down_and_get_the_row_again_when_it_is_back() {
    require_rabbitmq();
    let events = names("live_busdown");
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let proxy = TcpProxy::start(BROKER.parse().unwrap()).await.unwrap();
    let mut cfg = events.clone();
    cfg.url = Some(shared::config::Secret::new(url(&proxy.addr().to_string())));
    let app = spawn_app_on(web(), fixtures.clone(), move |s| s.events = cfg).await;
    wait_connected(&*app.bus, 1).await;
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("t", TOP10).await;
    ws.next_payload("t").await;
    proxy.cut();
    let down = ws.next_payload("t").await;
    let err = &down["errors"][0];
    assert_eq!(err["extensions"]["code"], "BACKEND_UNAVAILABLE", "{down}");
    assert_eq!(err["extensions"]["backend"], "events");
    proxy.restore();
    let back = ws.next_payload("t").await;
    assert_eq!(back["data"]["top10"]["kind"], "TOP_10", "{back}");
    assert!(back.get("errors").is_none());
}

#[tokio::test]
async fn the_token_comes_from_connection_init_or_the_upgrade_and_is_verified() {
    let app = live_app(web(), |_| {}).await;
    // A refused token closes the socket with 4403.
    let mut ws = Ws::connect(&app, &[]).await;
    ws.send(json!({"type": "connection_init", "payload": {"token": "not-a-jwt"}}))
        .await;
    assert_eq!(ws.closed().await.0, 4403);
    let mut ws = Ws::connect(&app, &[]).await;
    ws.send(json!({"type": "connection_init", "payload": {"token": 42}}))
        .await;
    assert_eq!(ws.closed().await.0, 4403);
    // The upgrade's Authorization header: a bad one is refused before the upgrade.
    let refused = Ws::try_connect(
        &app,
        &[("authorization", "Bearer nope")],
        "graphql-transport-ws",
    )
    .await;
    assert!(refused.is_err());
    let bearer = format!("Bearer {}", app.token("u1"));
    let mut ws = Ws::connect(&app, &[("authorization", bearer.as_str())]).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.next().await.unwrap()["type"], "connection_ack");
    ws.subscribe("cw", CW).await;
    let row = ws.next_payload("cw").await;
    assert_eq!(row["data"]["continueWatching"]["kind"], "CONTINUE_WATCHING");
    // `Authorization` in the payload, as GraphiQL sends its headers.
    let mut ws = Ws::connect(&app, &[]).await;
    ws.send(json!({"type": "connection_init", "payload": {"Authorization": bearer}}))
        .await;
    assert_eq!(ws.next().await.unwrap()["type"], "connection_ack");
    // Anonymous: a personal row is UNAUTHENTICATED, the public ones work.
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("cw", CW).await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["payload"][0]["extensions"]["code"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_socket_closes_with_4401_when_its_token_expires() {
    let app = live_app(web(), |_| {}).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = app.signer.sign_with("u1", now, now + 1, None).unwrap();
    let mut ws = Ws::init(&app, Some(&token)).await;
    ws.subscribe("cw", CW).await;
    ws.next_payload("cw").await;
    assert_eq!(
        ws.closed().await,
        Closed(4401, "Unauthorized: the token expired".into())
    );
}

fn claims_token(sub: &str, extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"sub": sub, "exp": now + 600, "iat": now});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn scopes_and_the_maturity_ceiling_apply_to_what_is_pushed() {
    let app = live_app(web(), |s| {
        s.auth
            .subscription_scopes
            .insert("continueWatching".into(), "history:read".into());
        s.auth.maturity_claim = Some("max_rating".into());
    })
    .await;
    let without = claims_token("u1", json!({"scope": "mylist:write"}));
    let mut ws = Ws::init(&app, Some(&without)).await;
    ws.subscribe("cw", CW).await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["payload"][0]["extensions"]["code"], "FORBIDDEN");
    let with = claims_token("u1", json!({"scope": "history:read"}));
    let mut ws = Ws::init(&app, Some(&with)).await;
    ws.subscribe("cw", CW).await;
    assert_eq!(
        ws.next_payload("cw").await["data"]["continueWatching"]["kind"],
        "CONTINUE_WATCHING"
    );
    // A title above the ceiling is null, live as on a request.
    let adult = app
        .data()
        .titles()
        .iter()
        .find(|t| t.maturity_rating == "R" || t.maturity_rating == "TV-MA")
        .expect("an adult title")
        .id
        .clone();
    let kid = claims_token("u2", json!({"max_rating": "PG"}));
    let q = format!(r#"subscription {{ title(id: "{adult}") {{ id }} }}"#);
    let mut ws = Ws::init(&app, Some(&kid)).await;
    ws.subscribe("t", &q).await;
    assert_eq!(ws.next_payload("t").await["data"]["title"], Value::Null);
    let mut grown = Ws::init(&app, None).await;
    grown.subscribe("t", &q).await;
    assert_eq!(
        grown.next_payload("t").await["data"]["title"]["id"],
        adult.as_str()
    );
}

/// What is not a WebSocket upgrade is refused at `/graphql/ws` with a status, and takes no
/// place in the connection counts.
#[tokio::test]
async fn requests_that_are_not_upgrades_are_refused_at_the_socket_door() {
    let app = live_app(web(), |_| {}).await;
    let url = app.url("/graphql/ws");
    let http = reqwest::Client::new();
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let status = |without: Option<&'static str>, with: Option<(&'static str, &'static str)>| {
        let mut req = http.get(&url);
        for (name, value) in upgrade {
            if Some(name) != without && with.is_none_or(|(n, _)| n != name) {
                req = req.header(name, value);
            }
        }
        if let Some((name, value)) = with {
            req = req.header(name, value);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A plain GET, a POST.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 400);
    assert_eq!(http.post(&url).send().await.unwrap().status(), 405);
    // Each header missing or wrong.
    assert_eq!(status(Some("connection"), None).await, 400);
    assert_eq!(status(None, Some(("connection", "keep-alive"))).await, 400);
    assert_eq!(status(Some("upgrade"), None).await, 400);
    assert_eq!(status(None, Some(("upgrade", "h2c"))).await, 400);
    assert_eq!(status(Some("sec-websocket-version"), None).await, 400);
    assert_eq!(
        status(None, Some(("sec-websocket-version", "8"))).await,
        400
    );
    assert_eq!(status(Some("sec-websocket-key"), None).await, 400);
    // Over HTTP/2 (no RFC 8441 here).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 505)
    );
    // None of them holds a connection place; a real socket still works.
    assert_eq!(
        app.metric_sum("bff_subscription_connections", &["ws"])
            .await,
        0.0
    );
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("1", TOP10).await;
    assert_eq!(
        ws.next_payload("1").await["data"]["top10"]["kind"],
        "TOP_10"
    );
}

/// A client frame as RFC 6455 asks (final text frame, masked), by hand.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let len = text.len();
    let mut f = vec![0x81u8];
    if len < 126 {
        f.push(0x80 | u8::try_from(len).unwrap());
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_are_read() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = live_app(web(), |_| {}).await;
    // The upgrade request, `connection_init` and a subscribe in one write: the HTTP server
    // reads past the request, and the socket must still see both frames first.
    let mut bytes = format!(
        "GET /graphql/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
        app.addr
    )
    .into_bytes();
    bytes.extend(masked_text(r#"{"type":"connection_init"}"#));
    bytes.extend(masked_text(
        &json!({"id": "1", "type": "subscribe", "payload": {"query": TOP10}}).to_string(),
    ));
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    // The response head, byte by byte: what follows it is the socket's.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        stream,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let mut texts = Vec::new();
    while texts.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                texts.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("after {texts:?}: {other:?}"),
        }
    }
    assert_eq!(texts[0]["type"], "connection_ack");
    assert_eq!(texts[1]["type"], "next");
    assert_eq!(texts[1]["id"], "1");
    assert_eq!(texts[1]["payload"]["data"]["top10"]["kind"], "TOP_10");
}

#[tokio::test]
async fn protocol_violations_close_the_socket_with_their_codes() {
    let app = live_app(web(), |s| {
        s.subscriptions.init_timeout = Duration::from_millis(300);
        s.subscriptions.max_message_bytes = 4096;
    })
    .await;
    // No connection_init in time: 4408.
    let mut ws = Ws::connect(&app, &[]).await;
    assert_eq!(ws.closed().await.0, 4408);
    // Subscribe before the ack: 4401.
    let mut ws = Ws::connect(&app, &[]).await;
    ws.subscribe("1", TOP10).await;
    assert_eq!(ws.closed().await.0, 4401);
    // A second connection_init: 4429.
    let mut ws = Ws::init(&app, None).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.closed().await.0, 4429);
    // Not JSON, not an object, an unknown type, a binary frame, a missing id: 4400.
    for bad in [
        Message::text("{"),
        Message::text("[]"),
        Message::text(r#"{"type":"launch"}"#),
        Message::binary(vec![1, 2, 3]),
        Message::text(
            r#"{"type":"subscribe","payload":{"query":"subscription { top10 { kind } }"}}"#,
        ),
        Message::text(
            r#"{"type":"subscribe","id":"","payload":{"query":"subscription { top10 { kind } }"}}"#,
        ),
        Message::text(
            r#"{"type":"subscribe","id":"1","payload":"subscription { top10 { kind } }"}"#,
        ),
    ] {
        let mut ws = Ws::init(&app, None).await;
        ws.socket.send(bad).await.unwrap();
        assert_eq!(ws.closed().await.0, 4400);
    }
    // An id already running: 4409.
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("1", TOP10).await;
    ws.next_payload("1").await;
    ws.subscribe("1", TOP10).await;
    assert_eq!(ws.closed().await.0, 4409);
    // A message over subscriptions.max_message_bytes: 1009.
    let mut ws = Ws::init(&app, None).await;
    let huge = format!("subscription {{ top10 {{ kind }} }} # {}", "x".repeat(8192));
    ws.subscribe("1", &huge).await;
    assert_eq!(ws.closed().await.0, 1009);
    // No subprotocol: 4406. Only the legacy subscriptions-transport-ws one: none is agreed,
    // which that client refuses itself.
    let mut ws = Ws::try_connect(&app, &[], "").await.unwrap();
    assert_eq!(ws.closed().await.0, 4406);
    assert!(Ws::try_connect(&app, &[], "graphql-ws").await.is_err());
    // The process is fine: a new socket works.
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("ok", TOP10).await;
    ws.next_payload("ok").await;
    assert!(
        app.metric_sum("bff_subscription_closed_total", &["init_timeout"])
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn operations_are_held_to_the_same_rules_as_requests() {
    let app = live_app(web(), |s| {
        s.graphql.max_depth = 4;
        s.subscriptions.max_subscriptions_per_connection = 2;
    })
    .await;
    let mut ws = Ws::init(&app, None).await;
    let cases = [
        ("{ homepage { region } }", "GRAPHQL_VALIDATION_FAILED"),
        (
            "mutation { addToMyList(titleId: \"t1\") { changed } }",
            "GRAPHQL_VALIDATION_FAILED",
        ),
        ("subscription {", "GRAPHQL_PARSE_FAILED"),
        ("subscription { nope }", "GRAPHQL_VALIDATION_FAILED"),
        (
            "subscription { top10 { kind } title(id: \"t1\") { id } }",
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "subscription { top10(region: \"Mars\") { kind } }",
            "BAD_USER_INPUT",
        ),
        (
            "subscription { title(id: \"../../etc\") { id } }",
            "BAD_USER_INPUT",
        ),
        (
            "subscription { top10 { items { title { images { poster { url } } } } } }",
            "QUERY_TOO_COMPLEX",
        ),
    ];
    for (i, (query, code)) in cases.iter().enumerate() {
        let id = format!("c{i}");
        ws.subscribe(&id, query).await;
        let m = ws.next().await.unwrap();
        assert_eq!(m["type"], "error", "{query}: {m}");
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["payload"][0]["extensions"]["code"], *code, "{query}: {m}");
    }
    // Subscriptions per connection.
    for id in ["a", "b"] {
        ws.subscribe(id, TOP10).await;
        ws.next_payload(id).await;
    }
    ws.subscribe("c", TOP10).await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "error");
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    // Completing one frees its place.
    ws.send(json!({"id": "a", "type": "complete"})).await;
    ws.subscribe("c", TOP10).await;
    ws.next_payload("c").await;
}

#[tokio::test]
async fn rate_limit_policies_count_each_subscription() {
    let app = live_app(web(), |s| {
        s.rate_limits.policies = vec![shared::config::PolicySettings {
            name: "per-ip".into(),
            algorithm: shared::config::Algorithm::FixedWindow,
            limit: 3,
            period: Duration::from_secs(3600),
            burst: None,
            key: vec![shared::config::KeyPart::Ip],
            scope: shared::config::Scope::Graphql,
            cost: shared::config::Cost::One,
        }];
    })
    .await;
    // The upgrade is one request; then each subscription is one more.
    let mut ws = Ws::init(&app, None).await;
    ws.subscribe("1", TOP10).await;
    ws.next_payload("1").await;
    ws.subscribe("2", TOP10).await;
    ws.next_payload("2").await;
    ws.subscribe("3", TOP10).await;
    let m = ws.next().await.unwrap();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED");
}

#[tokio::test]
async fn connections_are_bounded_per_address_per_user_and_in_all() {
    let app = live_app(web(), |s| {
        s.subscriptions.max_connections_per_address = 3;
        s.subscriptions.max_connections_per_user = 1;
    })
    .await;
    let token = app.token("u1");
    let _first = Ws::init(&app, Some(&token)).await;
    // The same user again, known only at connection_init: 4429.
    let mut second = Ws::connect(&app, &[]).await;
    second
        .send(json!({"type": "connection_init", "payload": {"token": token}}))
        .await;
    assert_eq!(
        second.closed().await,
        Closed(4429, "Too many connections for this user".into())
    );
    // Known at the upgrade: refused before it (429).
    let bearer = format!("Bearer {token}");
    assert!(
        Ws::try_connect(
            &app,
            &[("authorization", bearer.as_str())],
            "graphql-transport-ws"
        )
        .await
        .is_err()
    );
    let _b = Ws::init(&app, None).await;
    let _c = Ws::init(&app, None).await;
    // The fourth from this address: 429 before the upgrade, also for SSE.
    let err = Ws::try_connect(&app, &[], "graphql-transport-ws")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("429"), "{err}");
    let resp = stream_post(&app, TOP10, "text/event-stream", None).await;
    assert_eq!(resp.status(), 429);
    assert!(
        app.metric_sum(
            "bff_subscription_closed_total",
            &["max_connections_per_address"]
        )
        .await
            >= 2.0
    );
}

/// `POST /graphql/stream` with `query`, accepting `accept`, as `token`'s viewer.
async fn stream_post(
    app: &TestApp,
    query: &str,
    accept: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/graphql/stream"))
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(json!({ "query": query }).to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Reads an SSE or multipart body until `n` results arrived (or it ended).
async fn read_results(resp: reqwest::Response, n: usize, multipart: bool) -> (Vec<Value>, bool) {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let mut ended = false;
    while out.len() < n && !ended {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("a chunk in time");
        let Some(Ok(chunk)) = chunk else { break };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        out.clear();
        if multipart {
            ended = buf.ends_with("-----\r\n");
            for part in buf.split("\r\n---").skip(1) {
                if let Some((_, json)) = part.split_once("\r\n\r\n") {
                    out.push(serde_json::from_str(json).unwrap());
                }
            }
        } else {
            ended = buf.contains("event: complete");
            for event in buf.split("\n\n") {
                if let Some(data) = event.strip_prefix("event: next\ndata: ") {
                    out.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
    (out, ended)
}

#[tokio::test]
async fn sse_and_multipart_stream_the_same_results() {
    let app = live_app(web(), |_| {}).await;
    let token = app.token("u1");
    let sse = stream_post(&app, TOP10, "text/event-stream", Some(&token)).await;
    assert_eq!(sse.status(), 200);
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let multipart = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", "application/json, multipart/mixed")
        .body(json!({"query": TOP10}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 200);
    assert!(
        multipart.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/mixed")
    );
    let control = app.control();
    let sse_task = tokio::spawn(read_results(sse, 2, false));
    let mp_task = tokio::spawn(read_results(multipart, 2, true));
    eventually("both streams subscribed", || async {
        app.metric_sum("bff_subscriptions", &[]).await == 2.0
    })
    .await;
    assert!(control.live().rotate_top10("US"));
    let (sse_results, _) = sse_task.await.unwrap();
    let (mp_results, _) = mp_task.await.unwrap();
    assert_eq!(sse_results.len(), 2);
    assert_eq!(sse_results, mp_results);
    assert_ne!(sse_results[0], sse_results[1]);
    // A subscription that cannot start is a request error, with its status.
    let resp = stream_post(&app, CW, "text/event-stream", None).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    // GET works too; a client that does not accept the stream is 406.
    let q: String = form_urlencoded::byte_serialize(TOP10.as_bytes()).collect();
    let get = app
        .http
        .get(app.url(&format!("/graphql/stream?query={q}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let (first, _) = read_results(get, 1, false).await;
    assert_eq!(first[0]["data"]["top10"]["kind"], "TOP_10");
    let no = stream_post(&app, TOP10, "application/json", None).await;
    assert_eq!(no.status(), 406);
    // A subscription to /graphql without multipart: a clear error, not a hang.
    let (s, body) = app.post_graphql(TOP10, json!({}), None).await;
    assert_eq!(s, 400);
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"]);
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_and_ends_every_stream() {
    let mut app = live_app(web(), |s| s.server.shutdown_grace = Duration::from_secs(5)).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut ws = Ws::init(&app, None).await;
        ws.subscribe("t", TOP10).await;
        ws.next_payload("t").await;
        sockets.push(ws);
    }
    let sse = stream_post(&app, TOP10, "text/event-stream", None).await;
    let sse_task = tokio::spawn(read_results(sse, 100, false));
    eventually("the stream is open", || async {
        app.metric_sum("bff_subscription_connections", &["sse"])
            .await
            == 1.0
    })
    .await;
    app.stop();
    for ws in &mut sockets {
        assert_eq!(
            ws.closed().await,
            Closed(1001, "Server shutting down".into())
        );
    }
    let (results, ended) = sse_task.await.unwrap();
    assert_eq!(results.len(), 1);
    assert!(ended, "the SSE stream ended with `complete`");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_and_the_others_keep_getting_every_change() {
    let app = live_app(web(), |s| {
        s.subscriptions.buffer = 8;
        // Long enough that the stalled reader (which never answers pings either) fills its
        // buffers before it could be closed for silence.
        s.subscriptions.ping_interval = Duration::from_millis(1500);
        s.subscriptions.idle_timeout = Duration::from_secs(3);
    })
    .await;
    const BIG: &str = r#"subscription { top10(region: "US") { items { rank title { id name synopsis cast genres images { poster { url width height } backdrop { url width height } hero { url width height } } } } } }"#;
    // A reader with a tiny receive window that stops reading after the first result.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut req = format!("ws://{}/graphql/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut stalled, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    stalled
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .unwrap();
    stalled
        .send(Message::text(
            json!({"id": "s", "type": "subscribe", "payload": {"query": BIG}}).to_string(),
        ))
        .await
        .unwrap();
    // A reader that keeps up, on the same execution.
    let mut fast = Ws::init(&app, None).await;
    fast.subscribe("f", BIG).await;
    fast.next_payload("f").await;
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while let Ok(m) = fast.next().await {
            if m["type"] == "next" {
                got += 1;
            }
        }
        got
    });
    let mut changes = 0u64;
    while app
        .metric_sum("bff_subscription_closed_total", &["too_slow"])
        .await
        < 1.0
    {
        assert!(changes < 5000, "the stalled reader was never closed");
        let calls = app.control().stats_of(Backend::Top10).calls;
        assert!(app.control().live().rotate_top10("US"));
        changes += 1;
        // One reload per change: wait for it, so no two changes fold into one result.
        eventually("the change was reloaded", || async {
            app.control().stats_of(Backend::Top10).calls > calls
        })
        .await;
    }
    eventually("the stalled socket is gone", || async {
        app.metric_sum("bff_subscription_connections", &["ws"])
            .await
            == 1.0
    })
    .await;
    // The reader that kept up got every change.
    let last = app.control().stats_of(Backend::Top10).calls;
    eventually("the last change reached the fast reader", || async {
        app.metric_sum("bff_subscription_messages_total", &["ws"])
            .await
            > 0.0
    })
    .await;
    drop(stalled);
    app.stop_and_wait().await;
    let got = reader.await.unwrap();
    assert!(
        got >= changes,
        "the fast reader got {got} of {changes} changes (reloads {last})"
    );
}

#[tokio::test]
async fn the_npm_graphql_ws_and_graphql_sse_clients_receive_the_row_and_its_change() {
    for surface in [web(), mobile()] {
        let app = live_app(surface, |_| {}).await;
        let token = app.token("u1");
        let rotate = format!("{}/top10/US", app.fixtures.admin_url());
        for (transport, url) in [
            ("ws", format!("ws://{}/graphql/ws", app.addr)),
            ("sse", app.url("/graphql/stream")),
        ] {
            let out = node_client(
                "live.mjs",
                &[
                    transport,
                    &url,
                    TOP10,
                    "--token",
                    &token,
                    "--after-post",
                    &rotate,
                ],
            )
            .await;
            let report: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(report["error"], Value::Null, "{transport}: {report}");
            let events = report["events"].as_array().unwrap();
            assert_eq!(events.len(), 2, "{transport}: {report}");
            let (before, after) = (
                ids(&events[0]["data"]["top10"]),
                ids(&events[1]["data"]["top10"]),
            );
            assert_eq!(
                after[..9],
                before[1..],
                "{transport}: the change, rotated by one"
            );
        }
    }
}
