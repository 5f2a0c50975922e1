//! The `subscribers` scenario (issue 25): [`SUBSCRIBERS`] (or `--concurrency`)
//! graphql-transport-ws subscribers of `top10(region: "US")` on ONE web BFF (in-process fixtures
//! and bus, as the other scenarios start it), and what a change of that top 10 costs it:
//! - **RSS per connection**: the BFF process's resident set before the first connection and with
//!   every subscriber connected, subscribed and idle for one keepalive period, over their number;
//! - **event → subscribers**: [`EVENTS`] changes one after another (the fixture top10 service
//!   reorders US through its admin API and publishes `top10.changed` on the bus), each timed from
//!   just before the admin request until every subscriber has read its `next`: per event the time
//!   to the first and to the last subscriber, and every message's own delay;
//! - **CPU per delivered message**: the BFF process's CPU time during the events over the
//!   messages delivered (and the clients' own, beside it);
//! - **losses**: every subscriber must read every event once, with the bytes every other one read;
//!   close codes the server sent are counted, not hidden.
//!
//! Ten thousand sockets at each end do not fit one process (`ulimit -n` is 20,000 here), and the
//! clients' CPU and memory must not count as the BFF's: the clients run in a child process — this
//! binary again, `--swarm`, reading a [`Spec`] on stdin and printing a [`Report`] on stdout — which
//! drives the whole measurement and reads the parent's (fixtures + BFF) `/proc` entries. Both
//! processes share the machine's 2 cores, so the delays include the clients' reading.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Notify, Semaphore, watch},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, client::IntoClientRequest as _, http::HeaderValue, protocol::WebSocketConfig,
    },
};

use crate::{harness::Env, procfs, scenario::Bff, stats::percentile};

/// Subscribers connected at once (`--concurrency` sets another number).
pub(crate) const SUBSCRIBERS: usize = 10_000;
/// Changes delivered, one after another.
pub(crate) const EVENTS: usize = 50;
/// Room beside the subscribers, under every connection limit of the instance, for the scrape.
const SPARE_CONNECTIONS: usize = 1_000;
/// Handshakes in flight at once while connecting: far below the listener's backlog.
const CONNECTING: usize = 64;
/// Quiet time after each event is complete, so late duplicates are seen and events never
/// overlap (the rest of the event phase is the deliveries themselves).
const GAP: Duration = Duration::from_millis(100);
/// Longest wait for one event to reach every subscriber before it counts as lost.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for every subscriber to connect and read its first value.
const CONNECT_DEADLINE: Duration = Duration::from_secs(180);
/// Longest the whole child process may take.
const CHILD_DEADLINE: Duration = Duration::from_secs(600);
/// A live top-10 row as an app's card shows it (not the web homepage's every title field).
const QUERY: &str = "subscription { top10(region: \"US\") { kind heading items { rank title { id name year maturityRating genres images { poster { url width height } } } } } }";
/// The id of the one subscription on each socket.
pub(crate) const ID: &str = "1";

/// What the parent tells the client process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The BFF's listener.
    pub(crate) addr: SocketAddr,
    /// The fixture admin API (`…/__admin`).
    pub(crate) admin_url: String,
    /// The process whose CPU and RSS are measured (fixtures + BFF).
    pub(crate) pid: u32,
    pub(crate) subscribers: usize,
    pub(crate) events: usize,
    /// `subscriptions.ping_interval`: how long the connected subscribers are left idle.
    pub(crate) ping_interval_ms: u64,
    /// Whether the server has the BFF's `/metrics` to read after the events (the floor's
    /// server has none).
    pub(crate) metrics: bool,
}

/// What the scenario measured (printed by the client process, read by the parent).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    subscribers: usize,
    /// Subscribers that connected and read their first value.
    subscribed: usize,
    connect_failures: usize,
    first_connect_error: Option<String>,
    /// From the first connection attempt until every subscriber read its first value.
    connect_s: f64,
    /// Bytes of one `next` message as read.
    message_bytes: usize,
    rss_before_kib: u64,
    rss_subscribed_kib: u64,
    /// BFF CPU over the idle keepalive period, in % of one core.
    idle_cpu_pct: f64,
    idle_s: f64,
    events: usize,
    delivered: u64,
    /// Subscriber × event pairs without a message within [`EVENT_DEADLINE`].
    lost: u64,
    duplicates: u64,
    /// Messages whose bytes differ from the event's first.
    mismatched: u64,
    /// Events whose message was the same as the one before (no change seen).
    unchanged_events: usize,
    /// Per event, microseconds: to the first subscriber, to the last.
    first_us: Vec<u64>,
    last_us: Vec<u64>,
    /// Every message's delay from its event, microseconds: p50, p99, max.
    message_us: [u64; 3],
    bff_cpu_us: u64,
    client_cpu_us: u64,
    event_phase_s: f64,
    /// Close codes sent by the server, and transport errors, by subscriber.
    closes: BTreeMap<String, u64>,
    /// From the BFF's `/metrics` after the events.
    executions: f64,
    server_messages: f64,
    server_closed: BTreeMap<String, f64>,
}

impl Report {
    fn ms(sorted: &[u64], p: f64) -> f64 {
        percentile(sorted, p).unwrap_or(0) as f64 / 1000.0
    }
}

/// The parent's part: one web BFF whose limits admit `subscribers`, the fixtures publishing on
/// its bus, and the client process.
pub(crate) async fn measure(env: &Env, subscribers: usize, events: usize) -> Result<Report> {
    env.set_latency(Duration::ZERO);
    let limit = subscribers + SPARE_CONNECTIONS;
    let mut ping_interval = Duration::ZERO;
    let bff = env
        .spawn_bff(Bff::Web, |s| {
            s.metrics.enabled = true;
            s.server.max_connections = limit;
            s.subscriptions.max_connections = limit;
            s.subscriptions.max_connections_per_address = limit;
            ping_interval = s.subscriptions.ping_interval;
        })
        .await?;
    env.fixtures().control().live().attach(bff.bus().clone());
    let spec = Spec {
        addr: bff.addr(),
        admin_url: env.fixtures().admin_url(),
        pid: std::process::id(),
        subscribers,
        events,
        ping_interval_ms: u64::try_from(ping_interval.as_millis()).unwrap_or(u64::MAX),
        metrics: true,
    };
    let report = run_swarm(&spec).await;
    bff.stop().await?;
    report
}

/// Runs the client process on `spec` and reads its report.
pub(crate) async fn run_swarm(spec: &Spec) -> Result<Report> {
    let mut child = tokio::process::Command::new(
        std::env::current_exe().context("the path of this benchmark binary")?,
    )
    .arg("--swarm")
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit())
    .kill_on_drop(true)
    .spawn()
    .context("start the client process")?;
    let mut stdin = child.stdin.take().context("the client's stdin")?;
    stdin.write_all(&serde_json::to_vec(spec)?).await?;
    drop(stdin);
    let out = tokio::time::timeout(CHILD_DEADLINE, child.wait_with_output())
        .await
        .context("the client process did not finish in time")??;
    ensure!(
        out.status.success(),
        "the client process failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("the client process's report")
}

/// The client process (`bff-bench --swarm`): reads a [`Spec`] on stdin, measures, prints the
/// [`Report`] as JSON on stdout.
pub(crate) async fn swarm() -> Result<()> {
    let mut input = Vec::new();
    tokio::io::stdin().read_to_end(&mut input).await?;
    let spec: Spec = serde_json::from_slice(&input).context("the spec on stdin")?;
    let report = run(&spec).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// What every subscriber task shares with the driver.
struct Swarm {
    base: Instant,
    n: usize,
    /// The event being delivered now; [`NONE`] before the first (the initial value).
    current: AtomicUsize,
    /// Nanoseconds after `base` + 1 at which subscriber `i` read event `k`, at `k * n + i`
    /// (0: not yet).
    arrivals: Vec<AtomicU64>,
    /// Subscribers that read event `k`.
    received: Vec<AtomicUsize>,
    /// Subscribers that read their first value, or gave up.
    settled: AtomicUsize,
    subscribed: AtomicUsize,
    /// The bytes of each event's first message (the others must match it).
    first: Vec<OnceLock<Vec<u8>>>,
    initial: OnceLock<Vec<u8>>,
    duplicates: AtomicU64,
    mismatched: AtomicU64,
    /// Woken when an event (or the initial value) has reached everyone.
    complete: Notify,
    /// Why subscribers ended before being told to stop (close codes, errors), by count.
    closes: Mutex<BTreeMap<String, u64>>,
    first_error: OnceLock<String>,
    /// Subscribers that ended after their first value (closed by the server, an error): the
    /// events still to come cannot reach them.
    gone: AtomicUsize,
}

const NONE: usize = usize::MAX;

impl Swarm {
    /// Subscriber `i` read a `next` (`text`) now.
    fn next(&self, i: usize, seen_initial: &mut bool, text: &[u8]) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1;
        let k = self.current.load(Ordering::Acquire);
        if k == NONE {
            if std::mem::replace(seen_initial, true) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.check(&self.initial, text);
            self.subscribed.fetch_add(1, Ordering::Relaxed);
            self.settle();
            return;
        }
        let (Some(slot), Some(first)) = (self.arrivals.get(k * self.n + i), self.first.get(k))
        else {
            return;
        };
        if slot
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.check(first, text);
        self.received[k].fetch_add(1, Ordering::AcqRel);
        if self.reached_all(k) {
            self.complete.notify_one();
        }
    }

    /// Whether event `k` reached every subscriber still connected.
    fn reached_all(&self, k: usize) -> bool {
        let expected = self
            .subscribed
            .load(Ordering::Acquire)
            .saturating_sub(self.gone.load(Ordering::Acquire));
        self.received[k].load(Ordering::Acquire) >= expected
    }

    fn check(&self, first: &OnceLock<Vec<u8>>, text: &[u8]) {
        // The first copy of each message is checked as tungstenite would (UTF-8 text); every
        // other is compared with it byte for byte.
        if std::str::from_utf8(first.get_or_init(|| text.to_vec())).is_err()
            || first.get().is_some_and(|f| f.as_slice() != text)
        {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Subscriber ended for `why` before being told to stop.
    fn ended(&self, why: String) {
        if let Ok(mut m) = self.closes.lock() {
            *m.entry(why).or_default() += 1;
        }
    }

    /// One more subscriber has its first value, or will never have it.
    fn settle(&self) {
        if self.settled.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.complete.notify_one();
        }
    }

    /// Waits until `done` holds (re-checked on every wake-up), at most `within`.
    async fn wait(&self, within: Duration, done: impl Fn() -> bool) -> bool {
        tokio::time::timeout(within, async {
            while !done() {
                self.complete.notified().await;
            }
        })
        .await
        .is_ok()
    }
}

/// The client process's measurement.
async fn run(spec: &Spec) -> Result<Report> {
    let n = spec.subscribers;
    ensure!(n > 0 && spec.events > 0, "nothing to measure");
    let sw = Arc::new(Swarm {
        base: Instant::now(),
        n,
        current: AtomicUsize::new(NONE),
        arrivals: (0..n * spec.events).map(|_| AtomicU64::new(0)).collect(),
        received: (0..spec.events).map(|_| AtomicUsize::new(0)).collect(),
        settled: AtomicUsize::new(0),
        subscribed: AtomicUsize::new(0),
        first: (0..spec.events).map(|_| OnceLock::new()).collect(),
        initial: OnceLock::new(),
        duplicates: AtomicU64::new(0),
        mismatched: AtomicU64::new(0),
        complete: Notify::new(),
        closes: Mutex::new(BTreeMap::new()),
        first_error: OnceLock::new(),
        gone: AtomicUsize::new(0),
    });
    let http = reqwest::Client::new();
    let rss_before_kib = procfs::rss_kib_of(spec.pid)?;

    // Connect everyone, a bounded number of handshakes at a time.
    let connect_started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (sw, gate, stop) = (sw.clone(), gate.clone(), stop_rx.clone());
            let addr = spec.addr;
            tokio::spawn(async move { subscriber(i, addr, &sw, &gate, stop).await })
        })
        .collect();
    let all_settled = sw
        .wait(CONNECT_DEADLINE, || sw.settled.load(Ordering::Acquire) >= n)
        .await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let subscribed = sw.subscribed.load(Ordering::Acquire);
    eprintln!(
        "[subscribers] {subscribed} of {n} subscribed in {connect_s:.1} s{}",
        if all_settled {
            ""
        } else {
            " (gave up waiting)"
        }
    );
    ensure!(
        subscribed > 0,
        "no subscriber connected: {:?}",
        sw.first_error.get()
    );

    // Idle for one keepalive period: every socket pinged once, the RSS settled.
    let idle = Duration::from_millis(spec.ping_interval_ms);
    let cpu0 = procfs::cpu_time_us_of(spec.pid)?;
    tokio::time::sleep(idle).await;
    let idle_cpu_us = procfs::cpu_time_us_of(spec.pid)? - cpu0;
    let rss_subscribed_kib = procfs::rss_kib_of(spec.pid)?;
    eprintln!(
        "[subscribers] RSS {rss_before_kib} KiB before, {rss_subscribed_kib} KiB subscribed; idle CPU {:.1}% of a core",
        idle_cpu_us as f64 / idle.as_micros().max(1) as f64 * 100.0
    );

    // The events, one after another.
    let trigger = format!("{}/top10/US", spec.admin_url);
    let mut started_at = Vec::with_capacity(spec.events);
    let (bff0, me0, phase0) = (
        procfs::cpu_time_us_of(spec.pid)?,
        procfs::cpu_time_us()?,
        Instant::now(),
    );
    for k in 0..spec.events {
        sw.current.store(k, Ordering::Release);
        started_at.push(sw.base.elapsed());
        let resp = http.post(&trigger).send().await?;
        ensure!(
            resp.status().is_success(),
            "the fixture admin answered {} to {trigger}",
            resp.status()
        );
        if !sw.wait(EVENT_DEADLINE, || sw.reached_all(k)).await {
            eprintln!(
                "[subscribers] event {k}: {} of {subscribed} after {EVENT_DEADLINE:?}",
                sw.received[k].load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(GAP).await;
    }
    let event_phase_s = phase0.elapsed().as_secs_f64();
    let bff_cpu_us = procfs::cpu_time_us_of(spec.pid)? - bff0;
    let client_cpu_us = procfs::cpu_time_us()? - me0;

    let metrics = if spec.metrics {
        http.get(format!("http://{}/metrics", spec.addr))
            .send()
            .await?
            .text()
            .await?
    } else {
        String::new()
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    // Per event and per message, from the arrivals.
    let mut first_us = Vec::new();
    let mut last_us = Vec::new();
    let mut message_us = Vec::new();
    let mut lost = 0u64;
    for (k, at) in started_at.iter().enumerate() {
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let mut got: Vec<u64> = sw.arrivals[k * n..(k + 1) * n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .map(|t| (t - 1).saturating_sub(at) / 1000)
            .collect();
        lost += (subscribed - got.len().min(subscribed)) as u64;
        got.sort_unstable();
        if let (Some(f), Some(l)) = (got.first(), got.last()) {
            first_us.push(*f);
            last_us.push(*l);
        }
        message_us.extend(got);
    }
    message_us.sort_unstable();
    eprintln!(
        "[subscribers] event → last subscriber, ms, in order: {}",
        last_us
            .iter()
            .map(|us| format!("{:.0}", *us as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let unchanged_events = sw.first.windows(2).filter(|w| same(&w[0], &w[1])).count()
        + usize::from(same(&sw.initial, &sw.first[0]));
    let web = |family: &str| -> f64 {
        crate::prom::sum_by(&metrics, family, ("client", "web"), &[])
            .values()
            .sum()
    };
    let server_closed = crate::prom::sum_by(
        &metrics,
        "bff_subscription_closed_total",
        ("client", "web"),
        &["reason"],
    )
    .into_iter()
    .map(|(k, v)| (k.join(","), v))
    .collect();
    let pct = |p| percentile(&message_us, p).unwrap_or(0);
    Ok(Report {
        subscribers: n,
        subscribed,
        connect_failures: n - subscribed,
        first_connect_error: sw.first_error.get().cloned(),
        connect_s,
        message_bytes: sw.first[0].get().map_or(0, |t| t.len()),
        rss_before_kib,
        rss_subscribed_kib,
        idle_cpu_pct: idle_cpu_us as f64 / idle.as_micros().max(1) as f64 * 100.0,
        idle_s: idle.as_secs_f64(),
        events: spec.events,
        delivered: message_us.len() as u64,
        lost,
        duplicates: sw.duplicates.load(Ordering::Relaxed),
        mismatched: sw.mismatched.load(Ordering::Relaxed),
        unchanged_events,
        first_us,
        last_us,
        message_us: [
            pct(50.0),
            pct(99.0),
            message_us.last().copied().unwrap_or(0),
        ],
        bff_cpu_us,
        client_cpu_us,
        event_phase_s,
        closes: sw
            .closes
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default(),
        executions: web("bff_subscription_executions"),
        server_messages: web("bff_subscription_messages_total"),
        server_closed,
    })
}

/// Whether two messages were both read and are the same bytes.
fn same(a: &OnceLock<Vec<u8>>, b: &OnceLock<Vec<u8>>) -> bool {
    matches!((a.get(), b.get()), (Some(a), Some(b)) if a == b)
}

/// One subscriber: connects, subscribes, reads its first value, then reads frames straight off
/// the socket ([`Frames`]) until told to stop (or closed).
async fn subscriber(
    i: usize,
    addr: SocketAddr,
    sw: &Swarm,
    gate: &Semaphore,
    mut stop: watch::Receiver<bool>,
) {
    let permit = gate.acquire().await;
    let mut ws = match connect(addr).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = sw.first_error.set(format!("{e:#}"));
            sw.ended("connect failed".into());
            sw.settle();
            return;
        }
    };
    drop(permit);
    let mut seen_initial = false;
    // The first value through tungstenite; nothing else is sent before the first event or the
    // first keepalive ping (`subscriptions.ping_interval` later), so no byte is left in its
    // buffer when the socket is taken back.
    let first = loop {
        tokio::select! {
            _ = stop.changed() => break Err(None),
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match classify(text.as_bytes()) {
                    Incoming::Next => {
                        sw.next(i, &mut seen_initial, text.as_bytes());
                        break Ok(());
                    }
                    Incoming::Ping => {
                        if ws.send(Message::text(r#"{"type":"pong"}"#)).await.is_err() {
                            break Err(Some("write failed".to_owned()));
                        }
                    }
                    Incoming::Pong | Incoming::Ack => {}
                    Incoming::Other(kind) => break Err(Some(format!("unexpected `{kind}` message"))),
                },
                Some(Ok(Message::Close(frame))) => {
                    break Err(Some(frame.map_or("close without a code".to_owned(), |f| {
                        format!("closed {} {}", u16::from(f.code), f.reason)
                    })));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(Some(format!("transport error: {e}"))),
                None => break Err(Some("closed without a close frame".to_owned())),
            },
        }
    };
    let outcome = match first {
        Ok(()) => {
            Frames::new(ws.into_inner())
                .read(i, sw, &mut seen_initial, stop)
                .await
        }
        Err(None) => {
            let _ = ws.close(None).await;
            None
        }
        Err(Some(why)) => Some(why),
    };
    if let Some(why) = outcome {
        sw.ended(why);
        if seen_initial {
            sw.gone.fetch_add(1, Ordering::AcqRel);
            sw.complete.notify_one();
        } else {
            sw.settle();
        }
    }
}

thread_local! {
    /// Where every socket of a client worker thread reads into: one buffer that stays in the
    /// cache, instead of ten thousand cold per-socket buffers (tungstenite zero-fills its own,
    /// 16 KiB, before every read: 15% of the client process's `perf` samples).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// The client's reading after the first value: the server's frames taken straight off the
/// socket, so that the clients — on the same 2 cores as the BFF — cost as little as possible
/// beside it. What is checked is what tungstenite checked: whole text frames (FIN set, no
/// mask, no reserved bits), their bytes compared with the event's first (which must be UTF-8);
/// `ping` messages answered with `pong`; a close frame's code reported. Anything else (a masked
/// or fragmented frame, reserved bits, another message) ends the subscriber as an error, which
/// the report counts.
struct Frames {
    tcp: TcpStream,
    /// The start of a frame whose rest has not arrived yet.
    partial: Vec<u8>,
}

/// What one read produced.
enum Read {
    More,
    /// The server sent `ping`: a `pong` is due.
    Pong,
    End(String),
}

impl Frames {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            partial: Vec::new(),
        }
    }

    async fn read(
        mut self,
        i: usize,
        sw: &Swarm,
        seen_initial: &mut bool,
        mut stop: watch::Receiver<bool>,
    ) -> Option<String> {
        // One registration on the stop signal for the socket's whole life.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    // A close frame (masked, as a client's must be; code 1000), then the socket
                    // is dropped.
                    let _ = self.tcp.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await;
                    return None;
                }
                ready = self.tcp.readable() => {
                    if let Err(e) = ready {
                        return Some(format!("transport error: {e}"));
                    }
                }
            }
            let read = SCRATCH.with_borrow_mut(|buf| {
                // A read that leaves room in the buffer drained the socket: its readiness is
                // cleared then and there (tokio keeps it if an edge arrived meanwhile), instead
                // of by a second `recv` answering EAGAIN — one system call per message, not two.
                let mut got = None;
                let read = self.tcp.try_io(tokio::io::Interest::READABLE, || {
                    let n = self.tcp.try_read(buf)?;
                    got = Some(n);
                    if n > 0 && n < buf.len() {
                        Err(std::io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match (got, read) {
                    (Some(0), _) => Read::End("closed without a close frame".to_owned()),
                    (Some(n), _) => self.frames(i, sw, seen_initial, &buf[..n]),
                    (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Read::More,
                    (None, Err(e)) => Read::End(format!("transport error: {e}")),
                    (None, Ok(())) => Read::More,
                }
            });
            match read {
                Read::More => {}
                Read::Pong => {
                    // `{"type":"pong"}`, masked with a zero key.
                    let mut frame = vec![0x81, 0x80 | 15, 0, 0, 0, 0];
                    frame.extend_from_slice(br#"{"type":"pong"}"#);
                    if self.tcp.write_all(&frame).await.is_err() {
                        return Some("write failed".to_owned());
                    }
                }
                Read::End(why) => return Some(why),
            }
        }
    }

    /// Handles the frames in `data` (after what was left of the previous read).
    fn frames(&mut self, i: usize, sw: &Swarm, seen_initial: &mut bool, data: &[u8]) -> Read {
        let joined;
        let mut rest = if self.partial.is_empty() {
            data
        } else {
            self.partial.extend_from_slice(data);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut outcome = Read::More;
        while !rest.is_empty() {
            if rest.get(1).is_some_and(|b1| b1 & 0x80 != 0) {
                return Read::End("transport error: a masked frame from the server".to_owned());
            }
            let Some((header, len)) = frame_header(rest) else {
                break;
            };
            let Some(end) = header.checked_add(len).filter(|&e| e <= rest.len()) else {
                break;
            };
            let (b0, payload) = (rest[0], &rest[header..end]);
            rest = &rest[end..];
            match (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f) {
                (true, 0, 0x1) => match classify(payload) {
                    Incoming::Next => sw.next(i, seen_initial, payload),
                    Incoming::Ping => outcome = Read::Pong,
                    Incoming::Pong | Incoming::Ack => {}
                    Incoming::Other(kind) => {
                        return Read::End(format!("unexpected `{kind}` message"));
                    }
                },
                (true, 0, 0x8) => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return Read::End(code.map_or("close without a code".to_owned(), |c| {
                        format!("closed {c} {reason}")
                    }));
                }
                // A WebSocket ping or pong: tungstenite answered pings on its own; the server
                // sends none (its keepalive is the protocol's `ping` message).
                (true, 0, 0x9 | 0xa) => {}
                (fin, rsv, op) => {
                    return Read::End(format!(
                        "transport error: unexpected frame (fin {fin}, rsv {rsv:#x}, opcode {op:#x})"
                    ));
                }
            }
        }
        self.partial.extend_from_slice(rest);
        outcome
    }
}

/// The header length and payload length of the (unmasked) server frame at the start of
/// `data`, once its header is complete.
fn frame_header(data: &[u8]) -> Option<(usize, usize)> {
    match *data.get(1)? & 0x7f {
        126 => Some((
            4,
            usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])),
        )),
        127 => {
            let bytes: [u8; 8] = data.get(2..10)?.try_into().ok()?;
            Some((10, usize::try_from(u64::from_be_bytes(bytes)).ok()?))
        }
        n => Some((2, usize::from(n))),
    }
}

/// A socket past `connection_ack` with the subscription sent.
async fn connect(addr: SocketAddr) -> Result<WebSocketStream<TcpStream>> {
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let tcp = TcpStream::connect(addr).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    // A `next` (a few KiB) fits one read; nothing is buffered for writing.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, response) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .context("WebSocket handshake")?;
    ensure!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|p| p == "graphql-transport-ws"),
        "the server did not select graphql-transport-ws"
    );
    ws.send(Message::text(r#"{"type":"connection_init","payload":{}}"#))
        .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match classify(t.as_bytes()) {
                Incoming::Ack => break,
                Incoming::Ping => ws.send(Message::text(r#"{"type":"pong"}"#)).await?,
                other => bail!("expected connection_ack, got {other:?}"),
            },
            Some(Ok(Message::Close(f))) => bail!("closed before the ack: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before the ack"),
        }
    }
    let subscribe =
        serde_json::json!({ "id": ID, "type": "subscribe", "payload": { "query": QUERY } });
    ws.send(Message::text(subscribe.to_string())).await?;
    Ok(ws)
}

/// A server message, as far as a subscriber needs to know.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    Next,
    Ping,
    Pong,
    Ack,
    /// `error`, `complete` or anything else: the subscription is over or broken.
    Other(String),
}

/// Classifies a server message. A `next` is recognised by the server's fixed prefix without
/// parsing its payload (ten thousand of them per event, on the cores the BFF needs); anything
/// else is small and parsed.
fn classify(text: &[u8]) -> Incoming {
    const NEXT: &[u8] = b"{\"id\":\"1\",\"type\":\"next\",";
    if text.starts_with(NEXT) {
        return Incoming::Next;
    }
    let kind = serde_json::from_slice::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unparsable".to_owned());
    match kind.as_str() {
        "next" => Incoming::Next,
        "ping" => Incoming::Ping,
        "pong" => Incoming::Pong,
        "connection_ack" => Incoming::Ack,
        _ => Incoming::Other(kind),
    }
}

/// The Markdown table.
pub(crate) fn render(r: &Report) -> String {
    let mut first = r.first_us.clone();
    let mut last = r.last_us.clone();
    first.sort_unstable();
    last.sort_unstable();
    let per_conn =
        (r.rss_subscribed_kib as f64 - r.rss_before_kib as f64) / r.subscribed.max(1) as f64;
    let closes = counts(r.closes.iter().map(|(k, v)| (k, *v as f64)));
    let server_closed = counts(r.server_closed.iter().map(|(k, v)| (k, *v)));
    format!(
        "| measure | value |\n|---|---|\n\
         | subscribers connected and subscribed (one shared `top10(region: \"US\")` each) | {} of {} in {:.1} s; {} connect failures |\n\
         | executions running for them (`bff_subscription_executions`) | {:.0} |\n\
         | BFF process RSS before / subscribed (after {:.0} s idle) | {:.1} / {:.1} MiB |\n\
         | RSS per connection | {:.1} KiB |\n\
         | BFF CPU while idle (keepalive pings) | {:.1}% of one core |\n\
         | events, one after another ({} B per `next`) | {} |\n\
         | event → first subscriber: p50 / p99 | {:.1} / {:.1} ms |\n\
         | event → last subscriber: p50 / p99 / max (target p99 < 100 ms) | {:.1} / {:.1} / {:.1} ms |\n\
         | per message, event → read: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n\
         | messages delivered / lost / duplicated / with other bytes than the event's first | {} / {} / {} / {} |\n\
         | messages the BFF wrote (`bff_subscription_messages_total`: the first values and the events) | {:.0} |\n\
         | events whose message was the previous one's | {} |\n\
         | BFF CPU per delivered message (events phase, {:.1} s) | {:.1} µs |\n\
         | client CPU per message (the subscriber process, same machine) | {:.1} µs |\n\
         | closes and failures seen by subscribers | {} |\n\
         | refusals and closes the BFF counted (`bff_subscription_closed_total`) | {} |\n",
        r.subscribed,
        r.subscribers,
        r.connect_s,
        r.connect_failures,
        r.executions,
        r.idle_s,
        r.rss_before_kib as f64 / 1024.0,
        r.rss_subscribed_kib as f64 / 1024.0,
        per_conn,
        r.idle_cpu_pct,
        r.message_bytes,
        r.events,
        Report::ms(&first, 50.0),
        Report::ms(&first, 99.0),
        Report::ms(&last, 50.0),
        Report::ms(&last, 99.0),
        last.last().copied().unwrap_or(0) as f64 / 1000.0,
        r.message_us[0] as f64 / 1000.0,
        r.message_us[1] as f64 / 1000.0,
        r.message_us[2] as f64 / 1000.0,
        r.delivered,
        r.lost,
        r.duplicates,
        r.mismatched,
        r.server_messages,
        r.unchanged_events,
        r.event_phase_s,
        r.bff_cpu_us as f64 / r.delivered.max(1) as f64,
        r.client_cpu_us as f64 / r.delivered.max(1) as f64,
        closes,
        server_closed,
    )
}

/// `key: n, …`, or "none".
fn counts<'a>(items: impl Iterator<Item = (&'a String, f64)>) -> String {
    let parts: Vec<String> = items
        .filter(|(_, n)| *n > 0.0)
        .map(|(k, n)| format!("{k}: {n:.0}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_is_recognised_by_its_prefix_and_the_rest_by_parsing() {
        assert_eq!(
            classify(br#"{"id":"1","type":"next","payload":{"data":{}}}"#),
            Incoming::Next
        );
        assert_eq!(
            classify(br#"{"type":"next","id":"1","payload":{}}"#),
            Incoming::Next
        );
        assert_eq!(classify(br#"{"type":"ping"}"#), Incoming::Ping);
        assert_eq!(classify(br#"{"type":"connection_ack"}"#), Incoming::Ack);
        assert_eq!(
            classify(br#"{"id":"1","type":"error","payload":[]}"#),
            Incoming::Other("error".into())
        );
        assert_eq!(classify(b"nope"), Incoming::Other("unparsable".into()));
    }

    #[test]
    fn a_server_frame_header_is_read_in_each_length_form() {
        assert_eq!(frame_header(&[0x81, 5, b'h']), Some((2, 5)));
        assert_eq!(frame_header(&[0x81, 126, 0x1b]), None, "incomplete");
        assert_eq!(frame_header(&[0x81, 126, 0x1b, 0x61]), Some((4, 7009)));
        let long = [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(frame_header(&long), Some((10, 65_536)));
        assert_eq!(frame_header(&long[..9]), None, "incomplete");
        assert_eq!(frame_header(&[0x81]), None);
    }
}
