//! The RabbitMQ bus (lapin, AMQP 0.9.1, `amqp://` or `amqps://`): a durable topic exchange for
//! domain events (routing key = event type; each subscriber binds its own exclusive, auto-deleted
//! queue, so every instance gets every event), durable work queues with a dead-letter queue
//! (`<queue>.dlq`) for fire-and-forget writes, publisher confirms behind the [`Outbox`], and the
//! [`Spool`] for accepted work while the broker is unreachable.
//!
//! Work is accepted only once durable: [`EventBus::send_work`] resolves when the broker confirmed
//! the event (published `mandatory`: an event no queue takes comes back, the queue is declared
//! again and the event sent once more, then refused), or — the broker unreachable, or silent for
//! `events.accept_timeout` — when the spool has it on disk. Without a spool it is refused at once
//! while the link is down. The spool is replayed, oldest first, whenever the link comes up.
//!
//! One supervisor task owns the connection: it connects (bounded by a timeout), declares the
//! topology, runs the publisher and one task per registered consumer on their own channels, and
//! when any of them fails (the broker went away, a confirm did not come within
//! `events.confirm_timeout`) drops the connection and reconnects with a doubling delay. Events
//! accepted meanwhile wait in the outbox and are published in order once it is back;
//! subscriptions are re-bound and told what window they may have missed
//! ([`EventHandler::resumed`]). A republish after a lost confirm can deliver an event twice:
//! consumers skip ids they have applied.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesOrdered};
use lapin::{
    BasicProperties, Channel, Confirmation, Connect as _, Connection, ConnectionProperties,
    ExchangeKind,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};

use super::{
    Accepted, Attempts, BusError, BusOptions, BusStatus, Consumer, ConsumerTask, Counters, Drained,
    Envelope, EventBus, EventHandler, EventsInitError, PublishError, Settle, WorkQueue, deliver,
    outbox::{Outbox, Outcome, Pending, Target, Withdrawn},
    rfc3339,
    spool::{Spool, SpoolError},
};

/// Publishes in flight (sent, confirm not yet awaited) at most: enough to keep a local broker busy
/// without holding more than a moment's worth of unconfirmed events per round.
const PUBLISH_WINDOW: usize = 256;
/// The longest a reconnect delay grows to, as a multiple of `events.reconnect_delay`.
const MAX_BACKOFF_FACTOR: u32 = 10;
/// How long a stopped consumer's channel may take to close before the connection is remade.
const CHANNEL_CLOSE: Duration = Duration::from_secs(5);
/// How often the link's state is checked besides its error events.
const LINK_CHECK: Duration = Duration::from_millis(250);
/// Times the broker may return one work event (no queue took it) before it is refused: once
/// is an operator's deleted queue (declared again right away), twice means something routes it
/// nowhere on purpose.
const MAX_RETURNS: u32 = 2;
/// Spooled events of one subject (user) not yet replayed, at most, as a multiple of the outbox
/// share: a player reports every few seconds, an outage can last long, one flood must not fill
/// the disk for everybody.
const SPOOL_SHARE_FACTOR: usize = 16;

/// The RabbitMQ bus. Dropping the last handle closes the connection.
pub struct RabbitBus {
    inner: Arc<Inner>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("exchange", &self.inner.exchange)
            .finish_non_exhaustive()
    }
}

/// What a consumer consumes.
#[derive(Debug, Clone)]
enum Source {
    /// This instance's own queue, bound to these event types.
    Topic(Vec<String>),
    /// A durable work queue.
    Work(WorkQueue),
}

/// A registered consumer; outlives connections (it is restarted on each new one).
struct Spec {
    id: u64,
    source: Source,
    handler: Arc<dyn EventHandler>,
    attempts: Attempts,
    /// Set to true when the handle stopped it.
    stop: watch::Sender<bool>,
    /// True while a task consumes for it on some connection.
    running: watch::Sender<bool>,
}

struct Link {
    connected: bool,
    /// Since when there has been no connection (`Some` from the first failure until the next
    /// connection is up and its subscriptions are re-bound).
    down_since: Option<SystemTime>,
    connections: u64,
}

struct Inner {
    uri: lapin::uri::AMQPUri,
    tls_ca: Option<String>,
    instance: String,
    exchange: String,
    progress_queue: String,
    queue_type: Option<String>,
    confirm_timeout: Duration,
    reconnect_delay: Duration,
    accept_timeout: Duration,
    max_retries: u32,
    prefetch: u16,
    max_message_bytes: usize,
    outbox: Outbox,
    spool: Option<Arc<Spool>>,
    spool_share: usize,
    /// Spooled events per subject since the spool was last empty.
    spool_owners: Mutex<HashMap<Arc<str>, usize>>,
    /// Something was spooled while the link is up (a confirm too slow): replay it soon.
    spool_kick: Notify,
    draining: std::sync::atomic::AtomicBool,
    counters: Counters,
    link: Mutex<Link>,
    /// True while connected (what the spool's replayer waits for).
    up: watch::Sender<bool>,
    specs: Mutex<Vec<Arc<Spec>>>,
    specs_changed: Notify,
    next_spec: AtomicU64,
}

impl RabbitBus {
    /// Starts the supervisor; returns at once (work is spooled or refused until the broker is
    /// up). `instance` names this process's queues and connection (e.g. `bff-web`). Opens the
    /// spool (refused if another process holds it) and replays what an earlier run left in it.
    pub fn start(url: &str, options: &BusOptions, instance: &str) -> Result<Self, EventsInitError> {
        let mut uri = url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(EventsInitError::Url)?;
        // A silent partition is noticed after about two heartbeats; AMQP's default (60 s, or
        // what the broker proposes) kept readiness wrong for minutes. A `heartbeat` in the URL
        // wins.
        if uri.query.heartbeat.is_none() {
            let secs = options.heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
            uri.query.heartbeat = Some(u16::try_from(secs).unwrap_or(u16::MAX));
        }
        let tls_ca =
            match &options.tls_ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                    EventsInitError::TlsCa {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let spool = match &options.spool_dir {
            Some(dir) => Some(Arc::new(Spool::open(dir, options.spool_max_bytes)?)),
            None => None,
        };
        let inner = Arc::new(Inner {
            uri,
            tls_ca,
            instance: instance.to_owned(),
            exchange: options.exchange.clone(),
            progress_queue: options.progress_queue.clone(),
            queue_type: options.quorum_queues.then(|| "quorum".to_owned()),
            confirm_timeout: options.confirm_timeout,
            reconnect_delay: options.reconnect_delay,
            accept_timeout: options.accept_timeout,
            max_retries: options.max_retries,
            prefetch: options.prefetch,
            max_message_bytes: options.max_message_bytes,
            outbox: Outbox::new(options.outbox_capacity, options.outbox_share),
            spool,
            spool_share: options.outbox_share.saturating_mul(SPOOL_SHARE_FACTOR),
            spool_owners: Mutex::new(HashMap::new()),
            spool_kick: Notify::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            counters: Counters::default(),
            up: watch::channel(false).0,
            link: Mutex::new(Link {
                connected: false,
                down_since: None,
                connections: 0,
            }),
            specs: Mutex::new(Vec::new()),
            specs_changed: Notify::new(),
            next_spec: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(supervise(inner.clone(), stopped));
        if inner.spool.is_some() {
            tokio::spawn(replay(Arc::downgrade(&inner)));
        }
        Ok(Self { inner, _stop: stop })
    }

    fn register(&self, source: Source, handler: Arc<dyn EventHandler>) -> Consumer {
        let (consumer, task) = Consumer::pair();
        let spec = Arc::new(Spec {
            id: self.inner.next_spec.fetch_add(1, Ordering::Relaxed),
            source,
            handler,
            attempts: Attempts::new(self.inner.max_retries),
            stop: watch::channel(false).0,
            running: watch::channel(false).0,
        });
        self.inner.specs.lock().push(spec.clone());
        self.inner.specs_changed.notify_one();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let ConsumerTask { cancelled, done } = task;
            let _ = cancelled.await;
            inner.specs.lock().retain(|s| s.id != spec.id);
            spec.stop.send_replace(true);
            // Wait until the consumer on the current connection has closed its channel (its
            // unacknowledged deliveries are back in the queue), bounded in case it is stuck.
            let mut running = spec.running.subscribe();
            let _ = tokio::time::timeout(CHANNEL_CLOSE * 2, running.wait_for(|r| !*r)).await;
            drop(done);
        });
        consumer
    }
}

impl Inner {
    fn queue_name(&self, q: WorkQueue) -> &str {
        match q {
            WorkQueue::PlaybackProgress => &self.progress_queue,
        }
    }

    fn connected(&self) -> bool {
        self.link.lock().connected
    }

    /// The link is down. The first time in an outage, subscriptions are told (their caches may
    /// miss invalidations from now on).
    fn set_down(&self) {
        let since = {
            let mut link = self.link.lock();
            link.connected = false;
            if link.down_since.is_some() {
                None
            } else {
                let now = SystemTime::now();
                link.down_since = Some(now);
                Some(now)
            }
        };
        self.up.send_replace(false);
        if let Some(since) = since {
            let specs: Vec<Arc<Spec>> = self.specs.lock().clone();
            for spec in specs {
                if matches!(spec.source, Source::Topic(_)) {
                    spec.handler.interrupted(since);
                }
            }
        }
    }

    fn encoded(&self, event: &Envelope) -> Result<Arc<[u8]>, PublishError> {
        self.counters.encode(event, self.max_message_bytes)
    }

    /// Accepts work: confirmed by the broker, or spooled, or refused — within
    /// `accept_timeout` (+ `confirm_timeout` for a publish already on the wire without a spool).
    async fn accept_work(
        &self,
        target: Target,
        id: String,
        kind: &'static str,
        body: Arc<[u8]>,
        owner: Arc<str>,
    ) -> Result<Accepted, PublishError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(PublishError::Draining);
        }
        if !self.connected() {
            return self.spool_only(target, &body, &owner).await;
        }
        let (tx, mut rx) = oneshot::channel();
        let pending = Pending {
            target,
            id,
            kind,
            body: body.clone(),
            owner: Some(owner.clone()),
            spooled: false,
        };
        let seq = self.outbox.push(pending, Some(tx))?;
        if let Ok(outcome) = tokio::time::timeout(self.accept_timeout, &mut rx).await {
            return answer(outcome);
        }
        // No confirm in time: the broker is slow or the link is dying.
        match self.outbox.withdraw(seq) {
            Withdrawn::Removed => self.spool_only(target, &body, &owner).await,
            Withdrawn::Gone => answer(rx.try_recv().map_err(|_| ())),
            Withdrawn::InFlight => {
                if let Some(spool) = &self.spool {
                    // Held twice from here: the broker may still confirm it, and the spool
                    // replays it later (a duplicate id the consumer skips).
                    self.append_spool(spool, target, &body, &owner).await?;
                    self.outbox.mark_spooled(seq);
                    self.spool_kick.notify_one();
                    return Ok(Accepted::Spooled);
                }
                // Its confirm (or the publisher giving up on it) comes within confirm_timeout.
                match tokio::time::timeout(self.confirm_timeout, &mut rx).await {
                    Ok(outcome) => answer(outcome),
                    Err(_) => {
                        let _ = self.outbox.withdraw(seq);
                        Err(PublishError::Unconfirmed)
                    }
                }
            }
        }
    }

    /// The broker is away: the spool takes it, or it is refused.
    async fn spool_only(
        &self,
        target: Target,
        body: &[u8],
        owner: &Arc<str>,
    ) -> Result<Accepted, PublishError> {
        let Some(spool) = &self.spool else {
            return Err(PublishError::Unavailable);
        };
        self.append_spool(spool, target, body, owner).await?;
        Ok(Accepted::Spooled)
    }

    async fn append_spool(
        &self,
        spool: &Spool,
        target: Target,
        body: &[u8],
        owner: &Arc<str>,
    ) -> Result<(), PublishError> {
        {
            let mut owners = self.spool_owners.lock();
            let n = owners.entry(owner.clone()).or_insert(0);
            if *n >= self.spool_share {
                return Err(PublishError::SubjectShare {
                    share: self.spool_share,
                });
            }
            *n += 1;
        }
        match spool.append(target, body).await {
            Ok(()) => {
                self.counters.spooled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                if let Some(n) = self.spool_owners.lock().get_mut(owner) {
                    *n = n.saturating_sub(1);
                }
                Err(match e {
                    SpoolError::Full(max_bytes) => PublishError::SpoolFull { max_bytes },
                    e => {
                        tracing::error!(error = %e, "event spool write failed");
                        PublishError::Spool(e.to_string())
                    }
                })
            }
        }
    }
}

/// A waiter's outcome as the caller's answer (a dropped waiter: the event left unconfirmed).
fn answer<E>(outcome: Result<Outcome, E>) -> Result<Accepted, PublishError> {
    match outcome {
        Ok(Outcome::Confirmed) => Ok(Accepted::Confirmed),
        Ok(Outcome::Returned) => Err(PublishError::Returned),
        Err(_) => Err(PublishError::Unconfirmed),
    }
}

/// Replays the spool whenever the link is up: oldest segment first, each record back into the
/// outbox (waiting for room), the segment deleted once all of its records are confirmed. Runs
/// for the bus's life; a link that fails mid-way leaves the records in the outbox, which sends
/// them again on the next link.
async fn replay(inner: std::sync::Weak<Inner>) {
    loop {
        let (spool, mut up) = {
            let Some(inner) = inner.upgrade() else { return };
            let Some(spool) = inner.spool.clone() else {
                return;
            };
            (spool, inner.up.subscribe())
        };
        // Wait for a link (checking now and then that the bus still exists).
        if !*up.borrow() {
            let _ = tokio::time::timeout(Duration::from_secs(1), up.wait_for(|u| *u)).await;
            continue;
        }
        spool.rotate().await;
        for segment in spool.closed() {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let s = spool.clone();
            let records = match tokio::task::spawn_blocking(move || s.read(segment)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read a spool segment; it stays for the next start");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool reader failed");
                    break;
                }
            };
            let count = records.len();
            let mut waiters = Vec::with_capacity(count);
            for (target, body) in records {
                let Ok(event) = Envelope::from_bytes(&body) else {
                    tracing::warn!(sample = %super::sample(&body), "a spooled record is not an event envelope; skipped");
                    continue;
                };
                let pending = Pending {
                    target,
                    id: event.id.clone(),
                    kind: event.kind(),
                    body: body.clone(),
                    owner: None,
                    spooled: true,
                };
                let rx = loop {
                    let (tx, rx) = oneshot::channel();
                    match strong.outbox.push(pending.clone(), Some(tx)) {
                        Ok(_) => break rx,
                        // Full: wait for room; live work keeps its place.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
                waiters.push(rx);
            }
            drop(strong);
            // Spooled entries are never refused: each waiter resolves once its event is confirmed.
            for w in waiters {
                let _ = w.await;
            }
            match spool.remove(segment) {
                Ok(()) => tracing::info!(
                    events = count,
                    "a spool segment was published and confirmed"
                ),
                Err(e) => tracing::error!(error = %e, "cannot delete a replayed spool segment"),
            }
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if spool.depth().0 == 0 {
            strong.spool_owners.lock().clear();
        }
        // Not holding the bus while waiting: dropping its last handle must stop it.
        let kicked = async {
            let kick = strong.spool_kick.notified();
            let mut up = strong.up.subscribe();
            tokio::select! {
                () = kick => {}
                _ = up.wait_for(|u| !*u) => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), kicked).await;
        drop(strong);
    }
}

/// Connect, run, and on any failure reconnect — until the bus is dropped.
async fn supervise(inner: Arc<Inner>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let mut failures: u32 = 0;
    loop {
        let connected = tokio::select! {
            _ = &mut stopped => return,
            c = connect(&inner) => c,
        };
        match connected {
            Ok((conn, publish_channel)) => {
                failures = 0;
                let missed_since = {
                    let mut link = inner.link.lock();
                    link.connected = true;
                    link.connections += 1;
                    if link.connections > 1 {
                        inner.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    link.down_since.take()
                };
                inner.up.send_replace(true);
                if missed_since.is_some() {
                    tracing::info!(
                        depth = inner.outbox.len(),
                        "event bus connected again; republishing the outbox"
                    );
                }
                let stop_now = tokio::select! {
                    _ = &mut stopped => true,
                    why = run(&inner, &conn, publish_channel, missed_since) => {
                        tracing::warn!(reason = %why, "event bus connection lost; events wait in the outbox or the spool");
                        false
                    }
                };
                // Whatever was on the wire is unconfirmed: it goes out again, in its place.
                inner.outbox.requeue_in_flight();
                inner.set_down();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, "bye".into()))
                    .await;
                if stop_now {
                    return;
                }
            }
            Err(e) => {
                inner.set_down();
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot connect to the event broker; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        let factor = 2u32
            .saturating_pow(failures.saturating_sub(1))
            .min(MAX_BACKOFF_FACTOR);
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(inner.reconnect_delay * factor) => {}
        }
    }
}

fn broken(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A connection with the topology declared and a confirming publish channel.
async fn connect(inner: &Inner) -> Result<(Connection, Channel), String> {
    let setup = async {
        let props =
            ConnectionProperties::default().with_connection_name(inner.instance.clone().into());
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: inner.tls_ca.clone(),
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| broken("runtime", e))?;
        let conn = inner
            .uri
            .clone()
            .connect_with_config(props, tls, runtime)
            .await
            .map_err(|e| broken("connect", e))?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| broken("channel", e))?;
        ch.exchange_declare(
            inner.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broken("declare exchange", e))?;
        for q in [WorkQueue::PlaybackProgress] {
            declare_work_queue(inner, &ch, inner.queue_name(q)).await?;
        }
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broken("confirm.select", e))?;
        Ok::<_, String>((conn, ch))
    };
    // A broker that accepts TCP and never answers must not hang the supervisor.
    tokio::time::timeout(inner.confirm_timeout.max(Duration::from_secs(1)) * 2, setup)
        .await
        .map_err(|_| "connect: no answer from the broker in time".to_owned())?
}

/// A durable work queue whose refused deliveries go to `<name>.dlq` (through the default
/// exchange), and that dead-letter queue.
async fn declare_work_queue(inner: &Inner, ch: &Channel, name: &str) -> Result<(), String> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dlq = format!("{name}.dlq");
    ch.queue_declare(dlq.as_str().into(), durable, FieldTable::default())
        .await
        .map_err(|e| broken("declare dead-letter queue", e))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    if let Some(t) = &inner.queue_type {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(t.as_str().into()),
        );
    }
    ch.queue_declare(name.into(), durable, args)
        .await
        .map_err(|e| broken("declare work queue", e))?;
    Ok(())
}

/// Runs the publisher and the consumers on `conn` until one of them fails; returns why.
async fn run(
    inner: &Arc<Inner>,
    conn: &Connection,
    publish_channel: Channel,
    missed_since: Option<SystemTime>,
) -> String {
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks: HashMap<u64, (Arc<Spec>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let publisher = {
        let inner = inner.clone();
        let failed = failed_tx.clone();
        tokio::spawn(async move {
            let why = publish(&inner, &publish_channel).await;
            let _ = failed.send(why);
        })
    };
    // The connection's own word on its health: an idle publisher and a consumer between
    // deliveries do not always hear that the socket closed, so the link is watched directly
    // (its error events, and its state now and then).
    let watcher = {
        let failed = failed_tx.clone();
        let mut events = Box::pin(conn.events_listener());
        let status = conn.status().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LINK_CHECK);
            loop {
                tokio::select! {
                    e = events.next() => match e {
                        Some(lapin::Event::Error(e)) => {
                            let _ = failed.send(broken("connection", e));
                            return;
                        }
                        Some(_) => {}
                        None => {
                            let _ = failed.send("the connection closed".to_owned());
                            return;
                        }
                    },
                    _ = tick.tick() => if !status.connected() {
                        let _ = failed.send("the connection is no longer connected".to_owned());
                        return;
                    },
                }
            }
        })
    };
    let why = 'run: loop {
        // Start a consumer for every registered spec not yet running on this connection.
        let specs: Vec<Arc<Spec>> = inner.specs.lock().clone();
        tasks.retain(|id, (_, t)| !t.is_finished() || specs.iter().any(|s| s.id == *id));
        for spec in specs {
            if tasks.contains_key(&spec.id) {
                continue;
            }
            let (inner, failed) = (inner.clone(), failed_tx.clone());
            let channel = match conn.create_channel().await {
                Ok(c) => c,
                Err(e) => break 'run broken("consumer channel", e),
            };
            let id = spec.id;
            let held = spec.clone();
            tasks.insert(
                id,
                (
                    held,
                    tokio::spawn(async move {
                        let result = consume(&inner, &channel, &spec, missed_since).await;
                        // Closing the channel hands its unacknowledged deliveries back to the
                        // queue. A channel that does not close in time would keep them until the
                        // connection dies, so the connection is remade instead.
                        let closed = tokio::time::timeout(
                            CHANNEL_CLOSE,
                            channel.close(200, "done".into()),
                        )
                        .await;
                        spec.running.send_replace(false);
                        match result {
                            Err(why) => {
                                let _ = failed.send(why);
                            }
                            Ok(()) if !matches!(closed, Ok(Ok(()))) => {
                                let _ = failed.send(
                                    "a stopped consumer's channel did not close; remaking the connection so its deliveries go back to the queue".to_owned(),
                                );
                            }
                            Ok(()) => {}
                        }
                    }),
                ),
            );
        }
        tokio::select! {
            why = failed_rx.recv() => break why.unwrap_or_else(|| "stopped".to_owned()),
            () = inner.specs_changed.notified() => {}
        }
    };
    publisher.abort();
    watcher.abort();
    for (_, (spec, t)) in tasks {
        t.abort();
        // An aborted task cannot say so itself: nothing consumes until the next connection.
        spec.running.send_replace(false);
    }
    why
}

/// Drains the outbox in order, keeping up to [`PUBLISH_WINDOW`] publishes on the wire: an event
/// leaves the outbox only once confirmed. Work is published `mandatory`: a returned event (no
/// queue took it) makes the publisher declare the work queues again and send it once more;
/// returned again, it is refused (or, if spooled, kept and retried later). Returns (why) when
/// the channel fails or a confirm does not come in time.
async fn publish(inner: &Inner, ch: &Channel) -> String {
    let mut confirms = FuturesOrdered::new();
    let mut redeclare = false;
    loop {
        if redeclare {
            redeclare = false;
            for q in [WorkQueue::PlaybackProgress] {
                if let Err(why) = declare_work_queue(inner, ch, inner.queue_name(q)).await {
                    return why;
                }
            }
        }
        let room = PUBLISH_WINDOW.saturating_sub(confirms.len());
        for (seq, p) in inner.outbox.take(room) {
            let (exchange, routing_key, mandatory) = match p.target {
                Target::Topic => (inner.exchange.as_str(), p.kind, false),
                Target::Work(q) => ("", inner.queue_name(q), true),
            };
            let props = BasicProperties::default()
                .with_message_id(p.id.as_str().into())
                .with_type(p.kind.into())
                .with_content_type("application/json".into())
                // Persistent: a durable queue keeps it across a broker restart.
                .with_delivery_mode(2);
            match ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &p.body,
                    props,
                )
                .await
            {
                Ok(c) => {
                    inner.counters.published.fetch_add(1, Ordering::Relaxed);
                    let timeout = inner.confirm_timeout;
                    let spooled = p.spooled;
                    confirms.push_back(async move {
                        (seq, spooled, tokio::time::timeout(timeout, c).await)
                    });
                }
                Err(e) => return broken("publish", e),
            }
        }
        tokio::select! {
            Some((seq, spooled, result)) = confirms.next(), if !confirms.is_empty() => match result {
                Ok(Ok(Confirmation::Ack(None))) => {
                    inner.outbox.settle(seq, Outcome::Confirmed);
                    inner.counters.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                    inner.counters.returned.fetch_add(1, Ordering::Relaxed);
                    let returns = inner.outbox.returned(seq);
                    redeclare = true;
                    if returns >= MAX_RETURNS {
                        if spooled {
                            // Accepted already: never refused, kept for a later try.
                            tracing::warn!(returns, "a spooled work event keeps coming back (no queue takes it); retrying later");
                            tokio::time::sleep(inner.reconnect_delay * MAX_BACKOFF_FACTOR).await;
                        } else {
                            tracing::warn!("a work event came back twice (no queue takes it); refused");
                            inner.outbox.settle(seq, Outcome::Returned);
                        }
                    }
                }
                Ok(Ok(Confirmation::Nack(None))) => return "the broker refused (nacked) a publish".to_owned(),
                Ok(Ok(Confirmation::NotRequested)) => return "the channel is not in confirm mode".to_owned(),
                Ok(Err(e)) => return broken("confirm", e),
                Err(_) => return "the broker did not confirm in time".to_owned(),
            },
            () = inner.outbox.arrived(), if confirms.len() < PUBLISH_WINDOW => {}
        }
    }
}

/// A stopped consumer: the broker must stop pushing to it at once (what it already pushed goes
/// back to the queue when the channel closes), or deliveries would pile up, unread, on a
/// consumer nobody polls.
async fn cancel(ch: &Channel, tag: &str) -> Result<(), String> {
    let _ = tokio::time::timeout(
        CHANNEL_CLOSE,
        ch.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await;
    Ok(())
}

/// Consumes for `spec` on `ch` until stopped (Ok) or the channel fails (Err).
async fn consume(
    inner: &Inner,
    ch: &Channel,
    spec: &Spec,
    missed_since: Option<SystemTime>,
) -> Result<(), String> {
    let mut stop = spec.stop.subscribe();
    if *stop.borrow() {
        return Ok(());
    }
    ch.basic_qos(inner.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| broken("qos", e))?;
    let queue = match &spec.source {
        Source::Work(q) => inner.queue_name(*q).to_owned(),
        Source::Topic(types) => {
            // A new name per connection: the old exclusive queue may not be gone yet.
            let name = format!(
                "{}.instance.{}.{}",
                inner.exchange,
                inner.instance,
                uuid::Uuid::new_v4().simple()
            );
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| broken("declare instance queue", e))?;
            for t in types {
                ch.queue_bind(
                    name.as_str().into(),
                    inner.exchange.as_str().into(),
                    t.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broken("bind instance queue", e))?;
            }
            name
        }
    };
    let tag = format!("{}-{}", inner.instance, spec.id);
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broken("consume", e))?;

    spec.running.send_replace(true);
    // Bound and consuming again: from here on nothing is missed, so what the outage may have
    // hidden can be dropped now.
    if let (Source::Topic(_), Some(since)) = (&spec.source, missed_since) {
        spec.handler.resumed(since);
    }
    loop {
        let delivery = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            d = consumer.next() => match d {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => return Err(broken("delivery", e)),
                None => return Err("the broker cancelled the consumer".to_owned()),
            },
        };
        let Some(delivery) = delivery else {
            return cancel(ch, &tag).await;
        };
        let settle = tokio::select! {
            // Stopped mid-way: not acknowledged, so the broker delivers it again later.
            _ = stop.wait_for(|s| *s) => None,
            s = deliver(&delivery.data, delivery.redelivered, inner.max_message_bytes, &spec.handler, &spec.attempts, &inner.counters) => Some(s),
        };
        let Some(settle) = settle else {
            return cancel(ch, &tag).await;
        };
        let settled = match settle {
            Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settle::Retry => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
            // To the queue's dead-letter exchange (instance queues have none: dropped, counted).
            Settle::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
        };
        settled.map_err(|e| broken("settle", e))?;
    }
}

impl EventBus for RabbitBus {
    fn publish(&self, event: &Envelope) -> Result<(), PublishError> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(PublishError::Draining);
        }
        let body = self.inner.encoded(event)?;
        self.inner
            .outbox
            .push(
                Pending {
                    target: Target::Topic,
                    id: event.id.clone(),
                    kind: event.kind(),
                    body,
                    owner: None,
                    spooled: false,
                },
                None,
            )
            .map(|_| ())
    }

    fn send_work(
        &self,
        queue: WorkQueue,
        event: &Envelope,
    ) -> BoxFuture<'static, Result<Accepted, PublishError>> {
        let inner = self.inner.clone();
        let encoded = inner.encoded(event);
        let id = event.id.clone();
        let kind = event.kind();
        let owner: Arc<str> = Arc::from(event.subject.as_str());
        async move {
            inner
                .accept_work(Target::Work(queue), id, kind, encoded?, owner)
                .await
        }
        .boxed()
    }

    fn drain(&self, grace: Duration) -> BoxFuture<'_, Drained> {
        let inner = self.inner.clone();
        async move {
            inner.draining.store(true, Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + grace;
            // Most of the grace for confirms; the rest to write what is left to the spool.
            let confirm_by = tokio::time::Instant::now() + grace.mul_f32(0.8);
            let _ = tokio::time::timeout_at(confirm_by, inner.outbox.settled()).await;
            let left = inner.outbox.unspooled();
            let mut unsettled = 0usize;
            for (seq, p) in left {
                let saved = match &inner.spool {
                    Some(spool) => {
                        tokio::time::timeout_at(deadline, spool.append(p.target, &p.body))
                            .await
                            .is_ok_and(|r| r.is_ok())
                    }
                    None => false,
                };
                if saved {
                    inner.outbox.mark_spooled(seq);
                    inner.counters.spooled.fetch_add(1, Ordering::Relaxed);
                } else {
                    unsettled += 1;
                }
            }
            inner
                .counters
                .unsettled
                .fetch_add(unsettled as u64, Ordering::Relaxed);
            let spooled = inner.spool.as_ref().map_or(0, |s| s.depth().0);
            if unsettled > 0 {
                tracing::error!(
                    unsettled,
                    "shutting down with events neither confirmed by the broker nor spooled: they are lost"
                );
            }
            if spooled > 0 {
                tracing::warn!(
                    spooled,
                    "shutting down with events in the spool: the next start on this spool publishes them"
                );
            }
            Drained { unsettled, spooled }
        }
        .boxed()
    }

    fn subscribe(
        &self,
        types: &[&str],
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        let c = self.register(
            Source::Topic(types.iter().map(|t| (*t).to_owned()).collect()),
            handler,
        );
        async move { Ok(c) }.boxed()
    }

    fn consume_work(
        &self,
        queue: WorkQueue,
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        let c = self.register(Source::Work(queue), handler);
        async move { Ok(c) }.boxed()
    }

    fn status(&self) -> BusStatus {
        let link = self.inner.link.lock();
        let mut s = BusStatus {
            kind: "rabbitmq",
            connected: link.connected,
            down_since: link.down_since.map(rfc3339),
            outbox_depth: self.inner.outbox.len(),
            outbox_capacity: self.inner.outbox.capacity(),
            ..BusStatus::default()
        };
        if let Some(spool) = &self.inner.spool {
            (s.spool_depth, s.spool_bytes) = spool.depth();
        }
        drop(link);
        s.consumers = self
            .inner
            .specs
            .lock()
            .iter()
            .filter(|sp| *sp.running.borrow())
            .count();
        self.inner.counters.fill(&mut s);
        s
    }
}

/// Deletes `exchange`, the work queue `queue` and its dead-letter queue from the broker at `url`:
/// for tests and tear-down tooling that made names of their own. Best effort: what does not
/// exist is skipped.
pub async fn delete_topology(url: &str, exchange: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [queue.to_owned(), format!("{queue}.dlq")] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}
