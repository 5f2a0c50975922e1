//! The RabbitMQ bus (lapin, AMQP 0.9.1): a durable topic exchange for domain events (routing key =
//! event type; each subscriber binds its own exclusive, auto-deleted queue, so every instance gets
//! every event), durable work queues with a dead-letter queue (`<queue>.dlq`) for
//! fire-and-forget writes, and publisher confirms behind the [`Outbox`].
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

use futures::{FutureExt, StreamExt, future::BoxFuture};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::{
    Attempts, BusError, BusStatus, Consumer, ConsumerTask, Counters, Envelope, EventBus,
    EventHandler, EventsInitError, PublishError, Settle, WorkQueue, deliver,
    outbox::{Outbox, Pending, Target},
    rfc3339,
};
use crate::config::EventsSettings;

/// Publishes in flight (sent, confirm not yet awaited) at most: enough to keep a local broker busy
/// without holding more than a moment's worth of unconfirmed events per round.
const PUBLISH_WINDOW: usize = 256;
/// The longest a reconnect delay grows to, as a multiple of `events.reconnect_delay`.
const MAX_BACKOFF_FACTOR: u32 = 10;

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
    url: String,
    instance: String,
    exchange: String,
    progress_queue: String,
    queue_type: Option<String>,
    confirm_timeout: Duration,
    reconnect_delay: Duration,
    max_retries: u32,
    prefetch: u16,
    outbox: Outbox,
    counters: Counters,
    link: Mutex<Link>,
    specs: Mutex<Vec<Arc<Spec>>>,
    specs_changed: Notify,
    next_spec: AtomicU64,
}

impl RabbitBus {
    /// Starts the supervisor; returns at once (events wait in the outbox until the broker is up).
    /// `instance` names this process's queues and connection (e.g. `bff-web`).
    pub fn start(
        url: &str,
        settings: &EventsSettings,
        instance: &str,
    ) -> Result<Self, EventsInitError> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(EventsInitError::Url)?;
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            instance: instance.to_owned(),
            exchange: settings.exchange.clone(),
            progress_queue: settings.progress_queue.clone(),
            queue_type: settings.quorum_queues.then(|| "quorum".to_owned()),
            confirm_timeout: settings.confirm_timeout,
            reconnect_delay: settings.reconnect_delay,
            max_retries: settings.max_retries,
            prefetch: settings.prefetch,
            outbox: Outbox::new(settings.outbox_capacity),
            counters: Counters::default(),
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
        Ok(Self { inner, _stop: stop })
    }

    fn accept(&self, target: Target, event: &Envelope) -> Result<(), PublishError> {
        self.inner.outbox.push(Pending {
            target,
            id: event.id.clone(),
            kind: event.kind(),
            body: Arc::from(event.to_bytes()),
        })
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
            let _ = tokio::time::timeout(Duration::from_secs(5), running.wait_for(|r| !*r)).await;
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

    fn set_down(&self) {
        let mut link = self.link.lock();
        link.connected = false;
        link.down_since.get_or_insert_with(SystemTime::now);
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
                if missed_since.is_some() {
                    tracing::info!(
                        depth = inner.outbox.len(),
                        "event bus connected again; republishing the outbox"
                    );
                }
                let stop_now = tokio::select! {
                    _ = &mut stopped => true,
                    why = run(&inner, &conn, publish_channel, missed_since) => {
                        tracing::warn!(reason = %why, "event bus connection lost; events wait in the outbox");
                        false
                    }
                };
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
        let conn = Connection::connect(&inner.url, props)
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
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            channel.close(200, "done".into()),
                        )
                        .await;
                        spec.running.send_replace(false);
                        if let Err(why) = result {
                            let _ = failed.send(why);
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
    for (_, (spec, t)) in tasks {
        t.abort();
        // An aborted task cannot say so itself: nothing consumes until the next connection.
        spec.running.send_replace(false);
    }
    why
}

/// Drains the outbox in order: publishes a window, then awaits each confirm; an event leaves the
/// outbox only once confirmed. Returns (why) when the channel fails or a confirm does not come.
async fn publish(inner: &Inner, ch: &Channel) -> String {
    loop {
        let batch = inner.outbox.front(PUBLISH_WINDOW);
        if batch.is_empty() {
            inner.outbox.arrived().await;
            continue;
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for p in &batch {
            let (exchange, routing_key) = match p.target {
                Target::Topic => (inner.exchange.as_str(), p.kind),
                Target::Work(q) => ("", inner.queue_name(q)),
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
                    BasicPublishOptions::default(),
                    &p.body,
                    props,
                )
                .await
            {
                Ok(c) => {
                    inner.counters.published.fetch_add(1, Ordering::Relaxed);
                    confirms.push(c);
                }
                Err(e) => return broken("publish", e),
            }
        }
        for c in confirms {
            match tokio::time::timeout(inner.confirm_timeout, c).await {
                Ok(Ok(confirmation)) if confirmation.is_ack() => {
                    inner.outbox.confirmed_front();
                    inner.counters.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(_)) => return "the broker refused (nacked) a publish".to_owned(),
                Ok(Err(e)) => return broken("confirm", e),
                Err(_) => return "the broker did not confirm in time".to_owned(),
            }
        }
    }
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
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            format!("{}-{}", inner.instance, spec.id).into(),
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
            _ = stop.wait_for(|s| *s) => return Ok(()),
            d = consumer.next() => match d {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(broken("delivery", e)),
                None => return Err("the broker cancelled the consumer".to_owned()),
            },
        };
        let settle = tokio::select! {
            // Stopped mid-way: not acknowledged, so the broker delivers it again later.
            _ = stop.wait_for(|s| *s) => return Ok(()),
            s = deliver(&delivery.data, delivery.redelivered, &spec.handler, &spec.attempts, &inner.counters) => s,
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
        self.accept(Target::Topic, event)
    }

    fn send_work(&self, queue: WorkQueue, event: &Envelope) -> Result<(), PublishError> {
        self.accept(Target::Work(queue), event)
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
