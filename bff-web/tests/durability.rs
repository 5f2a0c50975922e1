//! "Accepted means durable", proved by killing real `bff-web` processes (issue 21). The fixture
//! services run in this test process on the machine's RabbitMQ (an exchange and work queue of
//! this test's own); each instance is a child process with its own spool directory. Users report
//! progress in a burst through two instances, one report after the other per user, alternating
//! instances; the victim instance is killed (SIGKILL or SIGTERM) at a random moment, sometimes
//! after its link to the broker was cut by a proxy this test controls (never the machine's
//! broker), and the continue-watching consumer is sometimes stopped and restarted mid-burst.
//! After each trial: every report answered `accepted` was handled (applied, or dropped as
//! older), none was applied twice, and every user's position is their last report.

#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bff_fixtures::{Backend, FixtureOptions, Fixtures, proxy::TcpProxy};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use shared::{
    auth::TokenSigner,
    events::{BusOptions, EventBus},
};

const BIN: &str = env!("CARGO_BIN_EXE_bff-web");
const BROKER: &str = "127.0.0.1:5672";
const SECRET: &str = "durability-test-secret-0123456789";
const REPORT: &str = "mutation($id: ID!, $pos: Int!) { reportProgress(titleId: $id, positionSeconds: $pos) { accepted eventId } }";
/// Users reporting at once in a burst (each one report at a time, like a player).
const USERS: usize = 12;
const DEADLINE: Duration = Duration::from_secs(30);

fn amqp(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

fn temp(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "bff-durability-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// The fixture services on the broker, and what the instances need to join them.
struct Stack {
    fixtures: Arc<Fixtures>,
    services: Arc<dyn EventBus>,
    exchange: String,
    queue: String,
    signer: TokenSigner,
    http: reqwest::Client,
}

impl Stack {
    async fn new(test: &str) -> Stack {
        bff_fixtures::proxy::require_server(
            BROKER,
            "RabbitMQ (guest/guest)",
            "rabbitmq-server -detached",
        );
        let exchange = format!(
            "bfftest.durability.{test}.{}",
            uuid::Uuid::new_v4().simple()
        );
        let queue = format!("{exchange}.progress");
        let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
        let services = bff_events::from_options(
            &BusOptions {
                url: Some(amqp(BROKER)),
                exchange: exchange.clone(),
                progress_queue: queue.clone(),
                reconnect_delay: Duration::from_millis(50),
                ..BusOptions::default()
            },
            "fixtures",
        )
        .unwrap();
        let live = fixtures.control().live().clone();
        live.attach(services.clone());
        live.start_progress_consumer(Duration::ZERO).await.unwrap();
        Stack {
            fixtures,
            services,
            exchange,
            queue,
            signer: TokenSigner::new(SECRET.as_bytes(), None, None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// A `bff-web` process whose broker is `broker` (the broker or a proxy), spooling to `spool`.
    fn spawn(&self, name: &str, broker: SocketAddr, spool: &Path) -> Instance {
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("BFF_AUTH__HS256_SECRET", SECRET)
            .env("BFF_EVENTS__URL", amqp(&broker.to_string()))
            .env("BFF_EVENTS__EXCHANGE", &self.exchange)
            .env("BFF_EVENTS__PROGRESS_QUEUE", &self.queue)
            .env("BFF_EVENTS__SPOOL_DIR", spool)
            .env("BFF_EVENTS__ACCEPT_TIMEOUT", "300ms")
            .env("BFF_EVENTS__CONFIRM_TIMEOUT", "1s")
            .env("BFF_EVENTS__RECONNECT_DELAY", "50ms")
            .env("BFF_GRAPHQL__COALESCE", "false")
            .env("BFF_SERVER__REQUEST_BUDGET", "5s")
            .env("BFF_GRAPHQL__TIMEOUT", "10s")
            .env("BFF_SERVER__SHUTDOWN_GRACE", "5s");
        for b in Backend::ALL {
            let key = format!("BFF_BACKENDS__{}__URL", b.name().to_uppercase());
            cmd.env(key, self.fixtures.url(b));
        }
        let log = temp(&format!("{name}.log"));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} did not start; log: {}", log.display()));
        Instance {
            child: Some(child),
            url: format!("{url}/graphql"),
            log,
        }
    }

    fn token(&self, user: &str) -> String {
        self.signer.sign(user, 3600).unwrap()
    }

    /// One report; the event id if it was accepted.
    async fn report(&self, url: &str, token: &str, title: &str, pos: u32) -> Option<String> {
        let r = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "query": REPORT, "variables": { "id": title, "pos": pos } }))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["data"]["reportProgress"]["accepted"] == true)
            .then(|| {
                v["data"]["reportProgress"]["eventId"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten()
    }

    async fn cleanup(self) {
        bff_events::rabbit::delete_topology(&amqp(BROKER), &self.exchange, &self.queue).await;
        drop(self.services);
    }
}

/// A running `bff-web`; killed when dropped.
struct Instance {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl Instance {
    /// SIGKILL: no destructor, no drain, nothing flushed.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit on its own; its exit status.
    fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = c.wait().ok()?;
        status.code()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        // Kept when a test fails: its message names the log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// How a trial treats the victim.
#[derive(Debug, Clone, Copy)]
enum Death {
    Kill,
    Term,
}

/// What one user saw in a burst.
#[derive(Default)]
struct Seen {
    accepted: Vec<String>,
    last_pos: u32,
}

/// Reports for `user` until `stop`, alternating between `urls`, one at a time with increasing
/// positions starting after `from`.
async fn burst_user(
    stack: Arc<Stack>,
    urls: [String; 2],
    user: String,
    title: String,
    from: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let token = stack.token(&user);
    let mut seen = Seen {
        last_pos: from,
        ..Seen::default()
    };
    let mut k = 0usize;
    while !*stop.borrow() {
        let pos = from + 1 + u32::try_from(k).unwrap();
        let url = &urls[k % 2];
        if let Some(id) = stack.report(url, &token, &title, pos).await {
            seen.accepted.push(id);
            seen.last_pos = pos;
        }
        k += 1;
    }
    seen
}

/// Runs `trials` trials; `cut` makes the victim's broker link go through a proxy that is cut
/// before it dies.
async fn trials(test: &str, trials: usize, cut: bool) {
    let stack = Arc::new(Stack::new(test).await);
    let proxy = TcpProxy::start(BROKER.parse().unwrap()).await.unwrap();
    let broker: SocketAddr = BROKER.parse().unwrap();
    let (spool_a, spool_b) = (temp("a"), temp("b"));
    let b = stack.spawn("b", broker, &spool_b);
    let victim_broker = if cut { proxy.addr() } else { broker };
    let mut a = stack.spawn("a", victim_broker, &spool_a);
    let live = stack.fixtures.control().live().clone();
    let mut rng = StdRng::seed_from_u64(0x2121 + u64::from(cut));
    let mut positions: HashMap<String, u32> = HashMap::new();
    let mut all_accepted: Vec<String> = Vec::new();
    let (mut killed_mid_flight, mut spooled_at_death) = (0usize, 0usize);
    for trial in 0..trials {
        let death = if trial % 2 == 0 {
            Death::Kill
        } else {
            Death::Term
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let urls = [a.url.clone(), b.url.clone()];
        let workers: Vec<_> = (0..USERS)
            .map(|i| {
                let user = format!("u{}", i + 1);
                let from = *positions.get(&user).unwrap_or(&0);
                tokio::spawn(burst_user(
                    stack.clone(),
                    urls.clone(),
                    user,
                    format!("t{}", i + 1),
                    from,
                    stop_rx.clone(),
                ))
            })
            .collect();
        let bounce_consumer = rng.random_bool(0.3);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        if bounce_consumer {
            live.stop_progress_consumer().await;
        }
        if cut {
            proxy.cut();
            // Keep reporting while the victim spools.
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..700))).await;
        }
        // The victim dies mid-burst.
        match death {
            Death::Kill => a.kill(),
            Death::Term => {
                let code = a.terminate();
                assert_eq!(code, Some(0), "trial {trial}: SIGTERM exits cleanly");
            }
        }
        killed_mid_flight += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..100))).await;
        stop_tx.send_replace(true);
        let mut seen = Vec::with_capacity(USERS);
        for w in workers {
            seen.push(w.await.unwrap());
        }
        if bounce_consumer {
            live.start_progress_consumer(Duration::ZERO).await.unwrap();
        }
        // Each user's last report goes through the survivor, so "last" is unambiguous.
        for (i, s) in seen.iter_mut().enumerate() {
            let user = format!("u{}", i + 1);
            let pos = s.last_pos + 1;
            let id = stack
                .report(&b.url, &stack.token(&user), &format!("t{}", i + 1), pos)
                .await
                .unwrap_or_else(|| panic!("trial {trial}: the survivor refused {user}'s report"));
            s.accepted.push(id);
            s.last_pos = pos;
            positions.insert(user, pos);
        }
        if cut {
            spooled_at_death += std::fs::read_dir(&spool_a)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                        .count()
                })
                .unwrap_or(0);
            proxy.restore();
        }
        // Back up on the same spool: whatever it holds is published now.
        a = stack.spawn("a", victim_broker, &spool_a);
        let accepted: Vec<String> = seen.iter().flat_map(|s| s.accepted.clone()).collect();
        assert!(
            accepted.len() > USERS,
            "trial {trial}: the burst ran ({} accepted)",
            accepted.len()
        );
        all_accepted.extend(accepted);
        let handled = live
            .wait_until(DEADLINE, |l| {
                let ledger = l.progress_ledger();
                all_accepted.iter().all(|id| ledger.contains_key(id))
            })
            .await;
        let ledger = live.progress_ledger();
        let lost: Vec<&String> = all_accepted
            .iter()
            .filter(|id| !ledger.contains_key(*id))
            .collect();
        assert!(
            handled && lost.is_empty(),
            "trial {trial} ({death:?}, cut {cut}): {} of {} accepted reports never handled; victim log {}",
            lost.len(),
            all_accepted.len(),
            a.log.display()
        );
        let twice: Vec<_> = ledger.iter().filter(|(_, o)| o.applied > 1).collect();
        assert!(twice.is_empty(), "trial {trial}: applied twice: {twice:?}");
        for (i, s) in seen.iter().enumerate() {
            let user = format!("u{}", i + 1);
            assert_eq!(
                live.applied_position(&user, &format!("t{}", i + 1)),
                Some(s.last_pos),
                "trial {trial}: {user}'s position is their last report"
            );
        }
    }
    let stats = live.progress_stats();
    if cut {
        assert!(
            spooled_at_death > 0 && stats.superseded > 0,
            "the cut trials exercised the spool ({spooled_at_death} segments) and last-writer-wins ({} superseded)",
            stats.superseded
        );
    }
    eprintln!(
        "[durability {test}] {trials} trials, {} accepted reports, all handled: applied {}, superseded {}, duplicates {}; spool segments at death {spooled_at_death}; deaths {killed_mid_flight}",
        all_accepted.len(),
        stats.applied,
        stats.superseded,
        stats.duplicates
    );
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&spool_a);
    let _ = std::fs::remove_dir_all(&spool_b);
    match Arc::try_unwrap(stack) {
        Ok(stack) => stack.cleanup().await,
        Err(_) => panic!("the stack is still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_sigterm_mid_burst_lose_no_accepted_report_and_the_newest_wins() {
    trials("kill", 20, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_broker_then_a_death_loses_no_spooled_report_and_the_newest_wins() {
    trials("cut", 20, true).await;
}

/// A graphql-transport-ws subscriber of `url`'s instance (`http://…/graphql`).
async fn subscriber(
    url: &str,
    token: &str,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let ws_url = url.replacen("http:", "ws:", 1) + "/ws";
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let init = json!({"type": "connection_init", "payload": {"token": token}});
    ws.send(Message::text(init.to_string())).await.unwrap();
    let sub = json!({"id": "cw", "type": "subscribe", "payload": {"query": query}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    ws
}

/// The next result (`next` payload) of a subscriber, or the close code it ended with.
async fn next_result(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<Value, u16> {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "next" {
                    return Ok(v["payload"].clone());
                }
            }
            Some(Ok(Message::Close(f))) => return Err(f.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(1006),
        }
    }
}

/// The position a continue-watching result shows for `title`.
fn position_of(result: &Value, title: &str) -> Option<u64> {
    result["data"]["continueWatching"]["items"]
        .as_array()?
        .iter()
        .find(|i| i["title"]["id"] == title)
        .and_then(|i| i["progress"]["positionSeconds"].as_u64())
}

/// A subscription holds nothing the services do not: when the instance holding a socket dies
/// (SIGKILL, or SIGTERM at a deploy) the client sees the socket end (1006, or 1001 after what was
/// queued), subscribes again on another instance and gets the current row at once — every report
/// accepted meanwhile, through any instance, included.
#[tokio::test]
async fn a_subscriber_whose_instance_dies_resubscribes_elsewhere_and_loses_nothing() {
    const CW: &str =
        "subscription { continueWatching { items { progress { positionSeconds } title { id } } } }";
    let stack = Stack::new("live").await;
    let broker: SocketAddr = BROKER.parse().unwrap();
    let (spool_a, spool_b) = (temp("live-a"), temp("live-b"));
    let mut survivor = stack.spawn("live-b", broker, &spool_b);
    let title = stack.fixtures.dataset().titles()[4].id.clone();
    let token = stack.token("u1");
    let mut rng = StdRng::seed_from_u64(25);
    let (mut codes, trials) = (HashMap::<u16, usize>::new(), 10u32);
    for trial in 0..trials {
        let mut victim = stack.spawn("live-a", broker, &spool_a);
        let mut ws = subscriber(&victim.url, &token, CW).await;
        next_result(&mut ws).await.expect("the current row");
        // A report through the other instance, then the victim dies: before or after it
        // pushed the change, whichever comes first.
        let pos = 1000 + trial;
        stack
            .report(&survivor.url, &token, &title, pos)
            .await
            .expect("accepted");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let death = if rng.random_bool(0.5) {
            Death::Kill
        } else {
            Death::Term
        };
        match death {
            Death::Kill => victim.kill(),
            Death::Term => assert_eq!(victim.terminate(), Some(0)),
        }
        let code = loop {
            match next_result(&mut ws).await {
                Ok(_) => continue,
                Err(code) => break code,
            }
        };
        *codes.entry(code).or_default() += 1;
        match death {
            Death::Term => assert_eq!(code, 1001, "SIGTERM closes with 1001"),
            Death::Kill => assert_ne!(code, 1001),
        }
        // Subscribed again elsewhere: the newest report is there at once or arrives.
        let mut again = subscriber(&survivor.url, &token, CW).await;
        loop {
            let row = next_result(&mut again)
                .await
                .expect("the row on the survivor");
            if position_of(&row, &title) == Some(u64::from(pos)) {
                break;
            }
        }
    }
    println!("[live failover] {trials} deaths, close codes seen: {codes:?}");
    survivor.kill();
    let _ = std::fs::remove_dir_all(&spool_a);
    let _ = std::fs::remove_dir_all(&spool_b);
    stack.cleanup().await;
}
