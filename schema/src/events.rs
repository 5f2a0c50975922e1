//! The event contract: the versioned envelope every message on the bus carries, the payload of each
//! event type, and the bus seam ([`EventBus`]) that producers and consumers are written against.
//!
//! Owns the shapes (documented once, as JSON Schema, in `schema/events/envelope.v1.schema.json`; a
//! test below keeps the two equal) and the trait. Does not own any transport: the in-process bus
//! and the RabbitMQ bus live in the BFF core (`shared::events`), which also hands them to the
//! fixture services — the fixtures cannot depend on the core (the core starts them for `--demo`),
//! so the seam both sides share lives here, beside the other backend contracts.

use std::{
    collections::{HashSet, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Version of [`Envelope`] this code writes and the only one it reads.
pub const SPEC_VERSION: u32 = 1;

/// The JSON Schema of the envelope (the one written description of these shapes).
pub const ENVELOPE_SCHEMA: &str = include_str!("../events/envelope.v1.schema.json");

/// One event: who produced what about which subject, when, with its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version ([`SPEC_VERSION`]).
    pub specversion: u32,
    /// Unique id (UUID v4): consumers skip ids they have applied, as delivery is at least once.
    pub id: String,
    /// RFC 3339 UTC creation time.
    pub time: String,
    /// The producer (`catalog`, `top10`, `my_list`, `continue_watching`, `bff-web`, …).
    pub source: String,
    /// What the event is about: a title id, a region or a user id.
    pub subject: String,
    /// `type` and `data`.
    #[serde(flatten)]
    pub payload: Payload,
}

/// The event types and their data (`type` + `data` in the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Payload {
    /// A catalog title was edited.
    #[serde(rename = "title.updated")]
    TitleUpdated(TitleUpdated),
    /// A region's top 10 was reordered.
    #[serde(rename = "top10.changed")]
    Top10Changed(Top10Changed),
    /// A title was added to or removed from a user's list.
    #[serde(rename = "mylist.changed")]
    MyListChanged(MyListChanged),
    /// Progress was applied to a user's continue-watching row.
    #[serde(rename = "continue_watching.changed")]
    ContinueWatchingChanged(ProgressData),
    /// Work: a player reported progress (durable queue, consumed by continue-watching).
    #[serde(rename = "playback.progress")]
    PlaybackProgress(ProgressData),
}

/// `title.updated` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TitleUpdated {
    /// The edited title.
    pub title_id: String,
}

/// `top10.changed` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Top10Changed {
    /// Uppercase region code.
    pub region: String,
}

/// `mylist.changed` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MyListChanged {
    /// Whose list.
    pub user_id: String,
    /// Which title.
    pub title_id: String,
    /// Whether the title is in the list now.
    pub in_list: bool,
}

/// `playback.progress` and `continue_watching.changed` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressData {
    /// Whose progress.
    pub user_id: String,
    /// Which title.
    pub title_id: String,
    /// Seconds watched.
    pub position_seconds: u32,
}

/// The event types as routing keys (a domain event's routing key is its type).
pub const EVENT_TYPES: [&str; 5] = [
    "title.updated",
    "top10.changed",
    "mylist.changed",
    "continue_watching.changed",
    "playback.progress",
];

impl Payload {
    /// The `type` (and routing key).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TitleUpdated(_) => EVENT_TYPES[0],
            Self::Top10Changed(_) => EVENT_TYPES[1],
            Self::MyListChanged(_) => EVENT_TYPES[2],
            Self::ContinueWatchingChanged(_) => EVENT_TYPES[3],
            Self::PlaybackProgress(_) => EVENT_TYPES[4],
        }
    }

    fn subject(&self) -> &str {
        match self {
            Self::TitleUpdated(d) => &d.title_id,
            Self::Top10Changed(d) => &d.region,
            Self::MyListChanged(d) => &d.user_id,
            Self::ContinueWatchingChanged(d) | Self::PlaybackProgress(d) => &d.user_id,
        }
    }
}

/// Why bytes are not an envelope this code can apply (a poison message).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the envelope's shape.
    #[error("not an event envelope: {0}")]
    Shape(#[from] serde_json::Error),
    /// A version this code does not know.
    #[error("unknown envelope version {0}")]
    Version(u32),
    /// A top-level field version 1 does not define. Version 1 is closed: a producer that needs a
    /// new field writes a new `specversion`, and consumers are upgraded first.
    #[error("unknown envelope field `{0}` (version 1 is closed)")]
    UnknownField(String),
    /// The id is empty or longer than [`MAX_ID_LEN`].
    #[error("event id must be 1..={MAX_ID_LEN} characters")]
    Id,
}

/// Longest event id accepted (a UUID is 36).
pub const MAX_ID_LEN: usize = 64;

/// The top-level fields of a version 1 envelope.
const ENVELOPE_FIELDS: [&str; 7] = [
    "specversion",
    "id",
    "time",
    "source",
    "subject",
    "type",
    "data",
];

impl Envelope {
    /// A new event from `source`, stamped now with a fresh id; the subject follows from the data.
    pub fn new(source: &str, payload: Payload) -> Self {
        Self {
            specversion: SPEC_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            source: source.to_owned(),
            subject: payload.subject().to_owned(),
            payload,
        }
    }

    /// The `type`.
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }

    /// The JSON bytes sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // An envelope is strings, numbers and booleans only: serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads wire bytes, refusing unknown versions and fields (the data of each type denies
    /// unknown fields too): a message this code cannot fully understand is never half-applied.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)?;
        if let Some(v) = value.get("specversion").and_then(serde_json::Value::as_u64)
            && v != u64::from(SPEC_VERSION)
        {
            return Err(DecodeError::Version(u32::try_from(v).unwrap_or(u32::MAX)));
        }
        if let Some(k) = value
            .keys()
            .find(|k| !ENVELOPE_FIELDS.contains(&k.as_str()))
        {
            return Err(DecodeError::UnknownField(k.chars().take(64).collect()));
        }
        let env: Envelope = serde_json::from_value(serde_json::Value::Object(value))?;
        if env.specversion != SPEC_VERSION {
            return Err(DecodeError::Version(env.specversion));
        }
        if env.id.is_empty() || env.id.len() > MAX_ID_LEN {
            return Err(DecodeError::Id);
        }
        Ok(env)
    }

    /// The creation time in microseconds since the Unix epoch (`None` when unreadable): the
    /// order of a user's reports (last writer wins).
    pub fn time_micros(&self) -> Option<u64> {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_micros()).ok())
    }

    /// How long ago the event was created (zero if its clock is ahead or the time is unreadable).
    pub fn age(&self) -> std::time::Duration {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }
}

/// The durable work queues (one consumer service each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkQueue {
    /// `playback.progress`, consumed by continue-watching.
    PlaybackProgress,
}

/// Why the bus did not take an event. In every case the event was NOT accepted: nothing of it
/// will be applied (but see [`PublishError::Unconfirmed`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The outbox is full (the broker has been away too long, or is slow).
    #[error("the event outbox is full ({capacity} events waiting for the broker)")]
    OutboxFull {
        /// Its bound.
        capacity: usize,
    },
    /// This producer already has its fair share of the outbox waiting: one flooding subject
    /// cannot refuse everybody else's events.
    #[error("too many events of one subject waiting for the broker (at most {share})")]
    SubjectShare {
        /// The per-subject bound.
        share: usize,
    },
    /// The broker is unreachable and there is no spool to hold the event.
    #[error("the event broker is unreachable and no spool is configured")]
    Unavailable,
    /// The publish was on the wire when the link to the broker died: the broker may or may not
    /// have it. Answered as not accepted; a retry is harmless (consumers skip older reports and
    /// known ids).
    #[error("the event broker did not confirm in time")]
    Unconfirmed,
    /// No queue took the event (the broker returned it, twice, after the queue was declared
    /// again): it was not stored anywhere.
    #[error("no queue took the event (returned by the broker)")]
    Returned,
    /// The encoded event is larger than `events.max_message_bytes`.
    #[error("the event is {bytes} bytes, over the {max}-byte bound")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The spool is full (`events.spool_max_bytes`).
    #[error("the event spool is full ({max_bytes} bytes)")]
    SpoolFull {
        /// Its bound.
        max_bytes: u64,
    },
    /// Writing to the spool failed.
    #[error("the event spool could not be written: {0}")]
    Spool(String),
    /// The process is shutting down and takes no new events.
    #[error("shutting down: no new events are accepted")]
    Draining,
}

/// How an accepted event is kept: it can no longer be lost by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The broker confirmed it (stored in a durable queue; with quorum queues, by a majority).
    Confirmed,
    /// The broker was unreachable: written and fsync'd to the local spool, published when the
    /// broker is back (or when this process starts again).
    Spooled,
    /// In-process bus: handed to the consumer in this process (nothing survives the process).
    InProcess,
}

/// What a drain at shutdown left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Events neither confirmed nor spooled when the grace ran out (lost with this process).
    pub unsettled: usize,
    /// Events left in the spool, published by the next process that opens it.
    pub spooled: u64,
}

/// Why a consumer could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus has stopped.
    #[error("the event bus has stopped")]
    Stopped,
}

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Applied now.
    Applied,
    /// Already applied before (same id): nothing changed.
    Duplicate,
    /// Older than what was applied already for its subject (last writer wins): dropped.
    Superseded,
}

/// A handler's refusal: retried, then dead-lettered after the bus's bound.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// One delivery to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: Envelope,
    /// The broker delivered it before (not acknowledged then).
    pub redelivered: bool,
}

/// Consumes events. Deliveries to one handler arrive one at a time, in queue order.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies one event; idempotently (a redelivered id must change nothing twice).
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, Result<Handled, HandlerError>>;

    /// The subscription was away since `down_since` and is back: events of that time may have
    /// been missed (an instance queue does not outlive its connection).
    fn resumed(&self, _down_since: SystemTime) {}

    /// The subscription is away since `down_since` (the link to the broker failed): events may
    /// be missed until [`EventHandler::resumed`].
    fn interrupted(&self, _down_since: SystemTime) {}
}

/// A running consumer; [`Consumer::stop`] (or dropping it) ends it. A delivery being handled
/// when it stops is not acknowledged, so the broker delivers it again later.
pub struct Consumer {
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

/// The consumer task's side of a [`Consumer`].
pub struct ConsumerTask {
    /// Resolves when the consumer should stop (stop called or the handle dropped).
    pub cancelled: tokio::sync::oneshot::Receiver<()>,
    /// Dropped (or sent) when the consumer has stopped.
    pub done: tokio::sync::oneshot::Sender<()>,
}

impl Consumer {
    /// A handle and the task side it controls.
    pub fn pair() -> (Consumer, ConsumerTask) {
        let (cancel, cancelled) = tokio::sync::oneshot::channel();
        let (done, done_rx) = tokio::sync::oneshot::channel();
        (
            Consumer {
                cancel: Some(cancel),
                done: Some(done_rx),
            },
            ConsumerTask { cancelled, done },
        )
    }

    /// Stops consuming and waits until the consumer has let go of its deliveries.
    pub async fn stop(mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
    }
}

/// What the bus reports for readiness and metrics.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusStatus {
    /// `in-process` or `rabbitmq`.
    pub kind: &'static str,
    /// Connected to the broker (always true in-process).
    pub connected: bool,
    /// Since when it is disconnected, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<String>,
    /// Events accepted and not yet confirmed by the broker.
    pub outbox_depth: usize,
    /// The outbox's bound.
    pub outbox_capacity: usize,
    /// Publish attempts (republishes after a fault count again).
    pub published: u64,
    /// Publishes the broker confirmed.
    pub confirmed: u64,
    /// Deliveries handled (applied or recognised as duplicates).
    pub consumed: u64,
    /// Deliveries the broker marked as redelivered.
    pub redelivered: u64,
    /// Deliveries whose id had been applied already.
    pub duplicates: u64,
    /// Deliveries a handler refused (each retry counts).
    pub failed: u64,
    /// Deliveries sent to the dead-letter queue (or dropped, for instance queues, which have none).
    pub dead_lettered: u64,
    /// Age of the last consumed event when it was handled, milliseconds.
    pub lag_ms: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Consumers (subscriptions and work consumers) currently receiving.
    pub consumers: usize,
    /// Deliveries dropped as older than what was applied (last writer wins).
    pub superseded: u64,
    /// Work publishes the broker returned (no queue took them).
    pub returned: u64,
    /// Events refused or dead-lettered for being over `events.max_message_bytes`.
    pub too_large: u64,
    /// Events written to the spool (the broker was unreachable).
    pub spooled: u64,
    /// Events in the spool, not yet published.
    pub spool_depth: u64,
    /// Bytes the spool holds.
    pub spool_bytes: u64,
    /// Events neither confirmed nor spooled when a shutdown's grace ran out.
    pub unsettled: u64,
}

/// The event bus: domain events on a topic (every subscriber gets each), work on durable queues
/// (one consumer service). A domain event is handed to a bounded outbox and published in the
/// background (a lost invalidation is bounded by TTLs); work resolves only once it is durable.
pub trait EventBus: Send + Sync + fmt::Debug + 'static {
    /// Accepts a domain event for every subscriber of its type (into the outbox: at least once
    /// while this process lives).
    fn publish(&self, event: &Envelope) -> Result<(), PublishError>;

    /// Sends work to `queue`; resolves once the event can no longer be lost by this process
    /// ([`Accepted`]), or says why it was not accepted, within a bounded time.
    fn send_work(
        &self,
        queue: WorkQueue,
        event: &Envelope,
    ) -> BoxFuture<'static, Result<Accepted, PublishError>>;

    /// Stops taking events and waits up to `grace` for every accepted one to be confirmed (or
    /// spooled); says what it could not settle.
    fn drain(&self, _grace: std::time::Duration) -> BoxFuture<'_, Drained> {
        Box::pin(async { Drained::default() })
    }

    /// Subscribes this instance (its own queue) to the domain events of `types`.
    fn subscribe(
        &self,
        types: &[&str],
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>>;

    /// Consumes `queue` (one delivery at a time, in order).
    fn consume_work(
        &self,
        queue: WorkQueue,
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>>;

    /// Counters and connection state.
    fn status(&self) -> BusStatus;
}

/// The ids a consumer applied recently, to recognise redeliveries. Bounded: the oldest ids are
/// forgotten first, far beyond any redelivery window at the bound chosen by the caller.
#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl SeenIds {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Records `id`; `false` if it was seen already.
    pub fn first_time(&self, id: &str) -> bool {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *g;
        if !set.insert(id.to_owned()) {
            return false;
        }
        order.push_back(id.to_owned());
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Forgets `id` (its application failed and will be retried).
    pub fn forget(&self, id: &str) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0.remove(id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn samples() -> Vec<Envelope> {
        let p = ProgressData {
            user_id: "u1".into(),
            title_id: "t7".into(),
            position_seconds: 42,
        };
        vec![
            Envelope::new(
                "catalog",
                Payload::TitleUpdated(TitleUpdated {
                    title_id: "t7".into(),
                }),
            ),
            Envelope::new(
                "top10",
                Payload::Top10Changed(Top10Changed {
                    region: "US".into(),
                }),
            ),
            Envelope::new(
                "my_list",
                Payload::MyListChanged(MyListChanged {
                    user_id: "u1".into(),
                    title_id: "t7".into(),
                    in_list: true,
                }),
            ),
            Envelope::new(
                "continue_watching",
                Payload::ContinueWatchingChanged(p.clone()),
            ),
            Envelope::new("bff-web", Payload::PlaybackProgress(p)),
        ]
    }

    #[test]
    fn every_type_round_trips_and_matches_the_json_schema() {
        let schema: serde_json::Value = serde_json::from_str(ENVELOPE_SCHEMA).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let types: Vec<&str> = schema["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(types, EVENT_TYPES);
        let defs = [
            "titleUpdated",
            "top10Changed",
            "myListChanged",
            "continueWatchingChanged",
            "playbackProgress",
        ];
        for (env, def) in samples().into_iter().zip(defs) {
            let json = serde_json::to_value(&env).unwrap();
            let obj = json.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut want = required.clone();
            want.sort_unstable();
            assert_eq!(keys, want, "envelope keys of {}", env.kind());
            let data_keys: Vec<&str> = obj["data"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut schema_keys: Vec<&str> = schema["$defs"][def]["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let mut data_keys = data_keys;
            data_keys.sort_unstable();
            schema_keys.sort_unstable();
            assert_eq!(data_keys, schema_keys, "data keys of {}", env.kind());
            assert_eq!(Envelope::from_bytes(&env.to_bytes()).unwrap(), env);
        }
    }

    #[test]
    fn unknown_versions_and_shapes_are_refused() {
        let mut v = serde_json::to_value(&samples()[0]).unwrap();
        v["specversion"] = 2.into();
        assert!(matches!(
            Envelope::from_bytes(&serde_json::to_vec(&v).unwrap()),
            Err(DecodeError::Version(2))
        ));
        assert!(Envelope::from_bytes(b"{\"nope\":1}").is_err());
    }

    #[test]
    fn version_one_is_closed_unknown_fields_anywhere_are_refused() {
        let good = serde_json::to_value(&samples()[4]).unwrap();
        let mut top = good.clone();
        top["extra"] = "x".into();
        assert!(matches!(
            Envelope::from_bytes(&serde_json::to_vec(&top).unwrap()),
            Err(DecodeError::UnknownField(f)) if f == "extra"
        ));
        let mut data = good.clone();
        data["data"]["priority"] = 1.into();
        assert!(Envelope::from_bytes(&serde_json::to_vec(&data).unwrap()).is_err());
        let mut long_id = good;
        long_id["id"] = "x".repeat(MAX_ID_LEN + 1).into();
        assert!(matches!(
            Envelope::from_bytes(&serde_json::to_vec(&long_id).unwrap()),
            Err(DecodeError::Id)
        ));
    }

    #[test]
    fn seen_ids_forget_the_oldest_beyond_their_bound() {
        let seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert!(seen.first_time("a"), "a was the oldest and is forgotten");
    }
}
