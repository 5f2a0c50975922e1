//! The BFF's side of the event bus: transport only. The transports (in-process, RabbitMQ with its
//! outbox and spool) live in the `bff-events` crate, which the fixture services share; this module
//! builds the bus the settings ask for ([`from_settings`]). What a domain event means to a BFF
//! instance lives beside the cache it invalidates (`crate::cache::invalidate`).

use std::sync::Arc;

pub use bff_events::{
    Accepted, BusError, BusOptions, BusStatus, Consumer, Delivery, Drained, Envelope, EventBus,
    EventHandler, EventsInitError, Handled, HandlerError, MyListChanged, Payload, ProgressData,
    PublishError, SeenIds, TitleUpdated, Top10Changed, WorkQueue, memory, rabbit, rfc3339,
};

use crate::config::EventsSettings;

/// The transport options of `settings`.
pub fn options(settings: &EventsSettings) -> BusOptions {
    BusOptions {
        url: settings.url.as_ref().map(|u| u.expose().to_owned()),
        exchange: settings.exchange.clone(),
        progress_queue: settings.progress_queue.clone(),
        outbox_capacity: settings.outbox_capacity,
        outbox_share: settings.outbox_share,
        confirm_timeout: settings.confirm_timeout,
        accept_timeout: settings.accept_timeout,
        reconnect_delay: settings.reconnect_delay,
        heartbeat: settings.heartbeat,
        max_retries: settings.max_retries,
        prefetch: settings.prefetch,
        quorum_queues: settings.quorum_queues,
        max_message_bytes: settings.max_message_bytes,
        spool_dir: settings.spool_dir.clone(),
        spool_max_bytes: settings.spool_max_bytes,
        tls_ca_file: settings.tls_ca_file.clone(),
    }
}

/// The bus `settings` ask for: RabbitMQ when `events.url` is set (connecting in the background),
/// else the in-process bus.
pub fn from_settings(
    settings: &EventsSettings,
    instance: &str,
) -> Result<Arc<dyn EventBus>, EventsInitError> {
    bff_events::from_options(&options(settings), instance)
}
