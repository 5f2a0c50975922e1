//! The event bus transports behind the [`EventBus`] seam (the seam and the envelope live in
//! `bff_schema::events`): the in-process bus ([`memory`], the default: one process, nothing
//! installed) and the RabbitMQ bus ([`rabbit`]): a topic exchange for domain events, durable work
//! queues (each with a dead-letter queue) for fire-and-forget writes, publisher confirms and
//! mandatory returns behind a bounded, ordered [`outbox`], and a local fsync'd [`spool`] that
//! holds accepted work while the broker is unreachable.
//!
//! Its own crate so that the BFF core and the fixture services (separate processes on one broker)
//! share one transport. Owns transports, delivery accounting, bounds and retries. Does not own
//! what an event means: the fixtures' handlers and the BFF's invalidator decide that.
//!
//! # Layout
//! - [`outbox`]: accepted events in acceptance order until the broker confirms them.
//! - [`spool`]: append-only segment files, fsync'd, replayed in order.
//! - [`rabbit`]: the RabbitMQ bus (connection supervisor, publisher, consumers, drain).
//! - [`memory`]: the in-process bus.

pub mod memory;
pub mod outbox;
pub mod rabbit;
pub mod spool;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub use bff_schema::events::{
    Accepted, BusError, BusStatus, Consumer, ConsumerTask, Delivery, Drained, Envelope, EventBus,
    EventHandler, Handled, HandlerError, MyListChanged, Payload, ProgressData, PublishError,
    SeenIds, TitleUpdated, Top10Changed, WorkQueue,
};

/// What a bus is built from (the BFF maps its `events.*` settings here; the fixture services
/// their flags).
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// RabbitMQ broker (`amqp://` or `amqps://`); `None`: the in-process bus.
    pub url: Option<String>,
    /// Topic exchange of domain events.
    pub exchange: String,
    /// Work queue of `playback.progress` (its dead-letter queue is `<name>.dlq`).
    pub progress_queue: String,
    /// Events waiting for the broker's confirm, at most.
    pub outbox_capacity: usize,
    /// Events of one subject (a user) waiting for the broker, at most.
    pub outbox_share: usize,
    /// How long a sent publish may wait for its confirm before the link counts as broken.
    pub confirm_timeout: Duration,
    /// How long work waits for the broker's confirm before it is spooled (or refused).
    pub accept_timeout: Duration,
    /// Delay before reconnecting (doubles per failed attempt, up to 10 times this).
    pub reconnect_delay: Duration,
    /// AMQP heartbeat: a silent link is declared dead after about two of these.
    pub heartbeat: Duration,
    /// Redeliveries of a refused event before it is dead-lettered.
    pub max_retries: u32,
    /// Unacknowledged deliveries per consumer.
    pub prefetch: u16,
    /// Declare work queues as quorum queues.
    pub quorum_queues: bool,
    /// Largest event published or consumed, in bytes.
    pub max_message_bytes: usize,
    /// Directory of the local spool (`None`: no spool; work is refused while the broker is away).
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// PEM file of the CA that signed the broker's certificate (amqps); else the system roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            url: None,
            exchange: "bff.events".into(),
            progress_queue: "bff.playback-progress".into(),
            outbox_capacity: 10_000,
            outbox_share: 256,
            confirm_timeout: Duration::from_secs(5),
            accept_timeout: Duration::from_secs(2),
            reconnect_delay: Duration::from_millis(200),
            heartbeat: Duration::from_secs(5),
            max_retries: 3,
            prefetch: 64,
            quorum_queues: false,
            max_message_bytes: 64 * 1024,
            spool_dir: None,
            spool_max_bytes: 256 * 1024 * 1024,
            tls_ca_file: None,
        }
    }
}

/// Why a bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EventsInitError {
    /// The broker URL is not usable.
    #[error("invalid events.url: {0}")]
    Url(String),
    /// The spool could not be opened.
    #[error("events.spool_dir: {0}")]
    Spool(#[from] spool::SpoolError),
    /// The CA file could not be read.
    #[error("events.tls_ca_file `{path}`: {source}")]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The bus `options` ask for: RabbitMQ when `url` is set (connecting in the background), else the
/// in-process bus. `instance` names this process's queues and connection (e.g. `bff-web`).
pub fn from_options(
    options: &BusOptions,
    instance: &str,
) -> Result<Arc<dyn EventBus>, EventsInitError> {
    match &options.url {
        Some(url) => Ok(Arc::new(rabbit::RabbitBus::start(url, options, instance)?)),
        None => Ok(Arc::new(memory::InProcessBus::new(options))),
    }
}

/// Delivery accounting both buses share; read into [`BusStatus`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) confirmed: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) lag_ms: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) returned: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) unsettled: AtomicU64,
}

impl Counters {
    fn fill(&self, s: &mut BusStatus) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.published = r(&self.published);
        s.confirmed = r(&self.confirmed);
        s.consumed = r(&self.consumed);
        s.redelivered = r(&self.redelivered);
        s.duplicates = r(&self.duplicates);
        s.superseded = r(&self.superseded);
        s.failed = r(&self.failed);
        s.dead_lettered = r(&self.dead_lettered);
        s.lag_ms = r(&self.lag_ms);
        s.reconnects = r(&self.reconnects);
        s.returned = r(&self.returned);
        s.too_large = r(&self.too_large);
        s.spooled = r(&self.spooled);
        s.unsettled = r(&self.unsettled);
    }

    /// `event`'s wire bytes, or the refusal (counted) when they are over `max` bytes.
    pub(crate) fn encode(&self, event: &Envelope, max: usize) -> Result<Arc<[u8]>, PublishError> {
        let body = event.to_bytes();
        if body.len() > max {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::TooLarge {
                bytes: body.len(),
                max,
            });
        }
        Ok(Arc::from(body))
    }
}

/// What became of one delivery, for the transport to settle (ack, retry, dead-letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done with it: acknowledge.
    Ack,
    /// The handler refused it: deliver again.
    Retry,
    /// Refused too often, or not an envelope at all: dead-letter it.
    DeadLetter,
}

/// Retry bookkeeping of one consumer: attempts per event id, bounded by `max_retries`.
pub(crate) struct Attempts {
    max_retries: u32,
    counts: parking_lot::Mutex<std::collections::HashMap<String, u32>>,
}

impl Attempts {
    pub(crate) fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            counts: Default::default(),
        }
    }

    fn failed(&self, id: &str) -> Settle {
        let mut counts = self.counts.lock();
        let n = counts.entry(id.to_owned()).or_insert(0);
        *n += 1;
        if *n > self.max_retries {
            counts.remove(id);
            Settle::DeadLetter
        } else {
            Settle::Retry
        }
    }

    fn done(&self, id: &str) {
        self.counts.lock().remove(id);
    }
}

/// At most this many bytes of a poison message go into its log line.
const SAMPLE_BYTES: usize = 96;

/// The first bytes of a message, printable, for a log line about it.
pub(crate) fn sample(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(SAMPLE_BYTES)];
    let mut s: String = head.escape_ascii().to_string();
    if bytes.len() > SAMPLE_BYTES {
        s.push('…');
    }
    s
}

/// Decodes and hands one delivery to `handler`, counting what happened; says how to settle it.
/// Messages over `max_bytes` or that are not a version-1 envelope are dead-lettered at once,
/// counted and logged with a short sample.
pub(crate) async fn deliver(
    bytes: &[u8],
    redelivered: bool,
    max_bytes: usize,
    handler: &Arc<dyn EventHandler>,
    attempts: &Attempts,
    counters: &Counters,
) -> Settle {
    if redelivered {
        counters.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    if bytes.len() > max_bytes {
        tracing::warn!(
            bytes = bytes.len(),
            max = max_bytes,
            sample = %sample(bytes),
            "poison message: over events.max_message_bytes; dead-lettering"
        );
        counters.too_large.fetch_add(1, Ordering::Relaxed);
        counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        return Settle::DeadLetter;
    }
    let event = match Envelope::from_bytes(bytes) {
        Ok(e) => e,
        Err(e) => {
            // Retrying cannot make these bytes an envelope.
            tracing::warn!(error = %e, sample = %sample(bytes), "poison message: not an event envelope; dead-lettering");
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return Settle::DeadLetter;
        }
    };
    let id = event.id.clone();
    let age = event.age();
    match handler.handle(Delivery { event, redelivered }).await {
        Ok(handled) => {
            attempts.done(&id);
            counters.consumed.fetch_add(1, Ordering::Relaxed);
            counters.lag_ms.store(
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            match handled {
                Handled::Duplicate => {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Handled::Superseded => {
                    counters.superseded.fetch_add(1, Ordering::Relaxed);
                }
                Handled::Applied => {}
            }
            Settle::Ack
        }
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let settle = attempts.failed(&id);
            if settle == Settle::DeadLetter {
                tracing::warn!(event = %id, error = %e, "event refused too often; dead-lettering");
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            } else {
                tracing::debug!(event = %id, error = %e, "event refused; it will be delivered again");
            }
            settle
        }
    }
}

/// RFC 3339 of a time, for status reports.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
