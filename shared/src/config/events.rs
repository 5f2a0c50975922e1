//! Event bus settings (`events.*`): the broker, its exchange and work queue, the outbox and spool
//! bounds, timeouts, and how long event-kept fragments stay fresh while the bus is down. The
//! transport's defaults are declared once in `bff_events::BusOptions`; the bus itself is built by
//! `crate::events`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Invalid, Secret, duration, invalid};

/// The event bus (`events.*`): domain events from the services invalidate every instance's
/// fragments; fire-and-forget writes (playback progress) go to a durable work queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// RabbitMQ broker, `amqp://user:password@host:5672/%2f`. Unset: the in-process bus (one
    /// instance; enough for `--demo`), with nothing installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    /// Topic exchange of domain events (routing key = event type).
    pub exchange: String,
    /// Durable work queue of `playback.progress`; its dead-letter queue is `<name>.dlq`.
    pub progress_queue: String,
    /// Events waiting for the broker's confirm, at most; beyond it writes are refused with
    /// BACKEND_UNAVAILABLE naming `events` (never dropped silently).
    pub outbox_capacity: usize,
    /// Events of one user waiting for the broker, at most (and 16 times this in the spool): one
    /// client's flood cannot refuse everybody else's reports.
    pub outbox_share: usize,
    /// How long a publish may wait for its confirm before the connection counts as broken.
    #[serde(with = "duration")]
    pub confirm_timeout: Duration,
    /// How long `reportProgress` waits for the broker's confirm before the report is written to
    /// the spool instead (or refused, without a spool).
    #[serde(with = "duration")]
    pub accept_timeout: Duration,
    /// AMQP heartbeat: a silent link (a partition) is declared down after about two of these,
    /// and readiness says `events: down`. A `heartbeat=` in `events.url` wins.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// Largest event published or consumed, in bytes; bigger ones are refused on publish and
    /// dead-lettered on consume (counted, logged with a short sample).
    pub max_message_bytes: usize,
    /// Directory of this instance's spool: accepted work goes there (fsync'd) while the broker is
    /// unreachable, and is published from there when it is back or on the next start. Unset: no
    /// spool; reports are refused while the broker is away. One instance per directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Bytes the spool may hold; beyond it reports are refused.
    pub spool_max_bytes: u64,
    /// PEM file of the CA that signed the broker's certificate (`amqps://`); unset: the system's
    /// roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// While this instance's subscription is down, fragments that only events keep fresh
    /// (titles, top 10s, my list, continue watching) are served for at most this long, then
    /// refetched (stale-if-error still applies when the backend fails too).
    #[serde(with = "duration")]
    pub max_stale_while_disconnected: Duration,
    /// Delay before reconnecting (doubles per failed attempt, up to 10 times this).
    #[serde(with = "duration")]
    pub reconnect_delay: Duration,
    /// Times a delivery a consumer refuses is tried again before it goes to the dead-letter queue.
    pub max_retries: u32,
    /// Unacknowledged deliveries the broker may push to one consumer.
    pub prefetch: u16,
    /// Declare work queues as quorum queues (replicated across a RabbitMQ cluster; what
    /// production uses). Off: classic queues, enough for one broker. An existing queue keeps the
    /// type it was declared with: switching needs a new queue name.
    pub quorum_queues: bool,
    /// How long a reported progress overlays the continue-watching row of the instance that
    /// accepted it (read-your-writes until the service has applied it).
    #[serde(with = "duration")]
    pub read_your_writes_ttl: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        // The transport's defaults, declared once in `bff_events::BusOptions`.
        let bus = bff_events::BusOptions::default();
        Self {
            url: None,
            exchange: bus.exchange,
            progress_queue: bus.progress_queue,
            outbox_capacity: bus.outbox_capacity,
            outbox_share: bus.outbox_share,
            confirm_timeout: bus.confirm_timeout,
            accept_timeout: bus.accept_timeout,
            heartbeat: bus.heartbeat,
            max_message_bytes: bus.max_message_bytes,
            spool_dir: None,
            spool_max_bytes: bus.spool_max_bytes,
            tls_ca_file: None,
            max_stale_while_disconnected: Duration::from_secs(5),
            reconnect_delay: bus.reconnect_delay,
            max_retries: bus.max_retries,
            prefetch: bus.prefetch,
            quorum_queues: bus.quorum_queues,
            read_your_writes_ttl: Duration::from_secs(30),
        }
    }
}

impl EventsSettings {
    /// Checks the broker URL, the bounds and timeouts, and the exchange and queue names.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.url {
            let parsed = reqwest::Url::parse(url.expose())
                .map_err(|e| invalid("events.url", format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "amqp" | "amqps") || parsed.host_str().is_none() {
                return Err(invalid(
                    "events.url",
                    "must be an amqp:// or amqps:// URL with a host, e.g. amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                ));
            }
        }
        if self.outbox_capacity == 0 {
            return Err(invalid("events.outbox_capacity", "must be > 0".into()));
        }
        if self.outbox_share == 0 {
            return Err(invalid("events.outbox_share", "must be > 0".into()));
        }
        for (key, d) in [
            ("events.confirm_timeout", self.confirm_timeout),
            ("events.accept_timeout", self.accept_timeout),
            (
                "events.max_stale_while_disconnected",
                self.max_stale_while_disconnected,
            ),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat > Duration::from_secs(600) {
            return Err(invalid(
                "events.heartbeat",
                "must be within 1s..=10m (AMQP counts heartbeats in whole seconds)".into(),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid(
                "events.max_message_bytes",
                "must be within 1024..=16777216".into(),
            ));
        }
        if self.spool_max_bytes < 64 * 1024 {
            return Err(invalid(
                "events.spool_max_bytes",
                "must be at least 65536".into(),
            ));
        }
        if self.spool_dir.is_some() && self.url.is_none() {
            return Err(invalid(
                "events.spool_dir",
                "needs events.url: the in-process bus has no broker to be away from".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(invalid("events.prefetch", "must be > 0".into()));
        }
        for (key, name) in [
            ("events.exchange", &self.exchange),
            ("events.progress_queue", &self.progress_queue),
        ] {
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(invalid(
                    key,
                    "must be 1-200 characters and not start with `amq.` (reserved by the broker)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}
