//! The event bus behind [`EventBus`] (the seam, with the envelope, lives in `bff_schema::events`):
//! the in-process bus ([`memory`], the default: one process, nothing installed) and the RabbitMQ
//! bus ([`rabbit`], `events.url`): a topic exchange for domain events, a durable work queue (with
//! a dead-letter queue) for fire-and-forget writes, publisher confirms behind a bounded, ordered
//! [`outbox`]. Also what a BFF instance does with the domain events it receives ([`invalidate`]):
//! drop the fragments they make stale, on every instance.
//!
//! Owns transports, delivery accounting and retries. Does not own what an event means to a
//! service: the fixtures' handlers and the BFF's invalidator decide that.

pub mod invalidate;
pub mod memory;
pub mod outbox;
pub mod rabbit;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

pub use bff_schema::events::{
    BusError, BusStatus, Consumer, ConsumerTask, Delivery, Envelope, EventBus, EventHandler,
    Handled, HandlerError, MyListChanged, Payload, ProgressData, PublishError, SeenIds,
    TitleUpdated, Top10Changed, WorkQueue,
};

use crate::config::EventsSettings;

/// Why a bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EventsInitError {
    /// `events.url` is not usable.
    #[error("invalid events.url: {0}")]
    Url(String),
}

/// The bus `settings` ask for: RabbitMQ when `events.url` is set (connecting in the background;
/// events wait in the outbox until it is up), else the in-process bus.
pub fn from_settings(
    settings: &EventsSettings,
    instance: &str,
) -> Result<Arc<dyn EventBus>, EventsInitError> {
    match &settings.url {
        Some(url) => Ok(Arc::new(rabbit::RabbitBus::start(
            url.expose(),
            settings,
            instance,
        )?)),
        None => Ok(Arc::new(memory::InProcessBus::new(settings))),
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
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) lag_ms: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Counters {
    fn fill(&self, s: &mut BusStatus) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.published = r(&self.published);
        s.confirmed = r(&self.confirmed);
        s.consumed = r(&self.consumed);
        s.redelivered = r(&self.redelivered);
        s.duplicates = r(&self.duplicates);
        s.failed = r(&self.failed);
        s.dead_lettered = r(&self.dead_lettered);
        s.lag_ms = r(&self.lag_ms);
        s.reconnects = r(&self.reconnects);
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

/// Retry bookkeeping of one consumer: attempts per event id, bounded by `events.max_retries`.
pub(crate) struct Attempts {
    max_retries: u32,
    counts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Attempts {
    pub(crate) fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            counts: Default::default(),
        }
    }

    fn failed(&self, id: &str) -> Settle {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(id);
        }
    }
}

/// Decodes and hands one delivery to `handler`, counting what happened; says how to settle it.
pub(crate) async fn deliver(
    bytes: &[u8],
    redelivered: bool,
    handler: &Arc<dyn EventHandler>,
    attempts: &Attempts,
    counters: &Counters,
) -> Settle {
    if redelivered {
        counters.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let event = match Envelope::from_bytes(bytes) {
        Ok(e) => e,
        Err(e) => {
            // Retrying cannot make these bytes an envelope.
            tracing::warn!(error = %e, "poison message: not an event envelope; dead-lettering");
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
            if handled == Handled::Duplicate {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
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
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
