//! What a BFF instance does with the domain events it receives on its own queue: drop the
//! fragments each one makes stale, so the next read on THIS instance loads the service's current
//! state (every instance has its own queue, so every instance does this).
//!
//! | event | dropped |
//! |---|---|
//! | `title.updated` | that title |
//! | `top10.changed` | that region's top 10 |
//! | `mylist.changed` | that user's list |
//! | `continue_watching.changed` | that user's continue-watching row (and its pending overlay) |
//!
//! After an outage of the bus ([`EventHandler::resumed`]) every fragment of those kinds (and new
//! releases) stored before the subscription was bound again is dropped: its invalidation may have
//! been missed. While the bus is down ([`EventHandler::interrupted`]), those fragments are served
//! for at most `events.max_stale_while_disconnected`, then refetched.

use std::{sync::Arc, time::SystemTime};

use futures::{FutureExt, future::BoxFuture};

use super::{FragmentCache, FragmentKey, FragmentKind};
use bff_events::{Delivery, EventHandler, Handled, HandlerError, Payload, SeenIds};

use crate::domain::{Region, UserId};

/// Told when the service applied a user's progress (the title and position), so that whoever
/// overlays not-yet-applied reports (composition's read-your-writes) can let go of it. A
/// callback rather than a type: the cache sits below composition and names nothing above it.
pub type ProgressApplied = Arc<dyn Fn(&UserId, &str, u32) + Send + Sync>;

/// The event types an instance subscribes to.
pub const SUBSCRIBED: [&str; 4] = [
    "title.updated",
    "top10.changed",
    "mylist.changed",
    "continue_watching.changed",
];

/// Kinds dropped after an outage: every kind an event can invalidate, plus new releases (a
/// shared row that changes with the catalog).
const DROPPED_AFTER_OUTAGE: [FragmentKind; 5] = [
    FragmentKind::Title,
    FragmentKind::Top10,
    FragmentKind::NewReleases,
    FragmentKind::MyList,
    FragmentKind::ContinueWatching,
];

/// Event ids remembered to recognise redeliveries.
const SEEN_IDS: usize = 100_000;

/// The handler of one instance's subscription.
pub struct Invalidator {
    cache: FragmentCache,
    /// `events.max_stale_while_disconnected`.
    stale_bound: std::time::Duration,
    /// Row length of this binary (the continue-watching key carries it).
    limit: usize,
    applied: Option<ProgressApplied>,
    seen: SeenIds,
}

impl Invalidator {
    /// Drops fragments of `cache` (rows of `limit` items), tells `applied` about applied
    /// progress; while the subscription is down, bounds staleness to `stale_bound`.
    pub fn new(
        cache: FragmentCache,
        limit: usize,
        applied: Option<ProgressApplied>,
        stale_bound: std::time::Duration,
    ) -> Self {
        Self {
            cache,
            stale_bound,
            limit,
            applied,
            seen: SeenIds::new(SEEN_IDS),
        }
    }
}

/// Ids in events come from the services, which this deployment trusts like the token issuer.
fn user(id: &str) -> Result<UserId, HandlerError> {
    UserId::from_verified_subject(id).ok_or_else(|| HandlerError(format!("bad user id `{id}`")))
}

impl EventHandler for Invalidator {
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, Result<Handled, HandlerError>> {
        let event = delivery.event;
        if !self.seen.first_time(&event.id) {
            return async { Ok(Handled::Duplicate) }.boxed();
        }
        let key = match &event.payload {
            Payload::TitleUpdated(t) => Ok(FragmentKey::title(&t.title_id)),
            Payload::Top10Changed(t) => Region::parse(&t.region)
                .map(|r| FragmentKey::top10(&r))
                .ok_or_else(|| HandlerError(format!("bad region `{}`", t.region))),
            Payload::MyListChanged(m) => user(&m.user_id).map(|u| FragmentKey::my_list(&u)),
            Payload::ContinueWatchingChanged(p) => user(&p.user_id).map(|u| {
                if let Some(applied) = &self.applied {
                    applied(&u, &p.title_id, p.position_seconds);
                }
                FragmentKey::continue_watching(&u, self.limit)
            }),
            Payload::PlaybackProgress(_) => {
                return async { Ok(Handled::Applied) }.boxed();
            }
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                // Not applied: a retry must not be taken for a duplicate.
                self.seen.forget(&event.id);
                return async move { Err(e) }.boxed();
            }
        };
        let cache = self.cache.clone();
        async move {
            cache.invalidate(&key).await;
            Ok(Handled::Applied)
        }
        .boxed()
    }

    fn resumed(&self, down_since: SystemTime) {
        tracing::info!(
            down_since = %bff_events::rfc3339(down_since),
            "event subscription resumed; dropping fragments that may have missed an invalidation"
        );
        self.cache
            .invalidate_stored_before(&DROPPED_AFTER_OUTAGE, self.cache.clock().now());
        self.cache.bus_resumed();
    }

    fn interrupted(&self, down_since: SystemTime) {
        tracing::warn!(
            down_since = %bff_events::rfc3339(down_since),
            bound = ?self.stale_bound,
            "event subscription down; fragments kept fresh by events are refetched once older than the bound"
        );
        self.cache.bus_interrupted(down_since, self.stale_bound);
    }
}
