//! Fire-and-forget playback progress and its read-your-writes: a report is validated, handed to
//! the event bus's durable work queue (`playback.progress`) and answered at once; until the
//! continue-watching service has applied it (its `continue_watching.changed` event arrives) or
//! `events.read_your_writes_ttl` passes, this instance overlays it on the viewer's
//! continue-watching row, so the viewer's next homepage shows where they stopped.
//!
//! Owns the overlay. Does not own the transport (`crate::events`) or the GraphQL field.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::{
    domain::{ContinueWatchingEntry, UserId},
    events::EventBus,
};

/// What composition needs from the bus: where to send writes, and who it is as a producer.
#[derive(Clone)]
pub struct Events {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// Producer name in envelopes (`bff-web`, `bff-mobile`).
    pub source: &'static str,
    /// Reported progress not yet applied by the service.
    pub recent: Arc<RecentProgress>,
}

#[derive(Debug, Clone)]
struct Reported {
    title_id: String,
    position_seconds: u32,
    duration_seconds: u32,
    at: Instant,
}

/// Progress this instance accepted and the service may not have applied yet, per user (newest
/// last). Bounded per user: a player reports every few seconds, only the latest per title counts.
#[derive(Debug)]
pub struct RecentProgress {
    ttl: Duration,
    by_user: Mutex<HashMap<UserId, Vec<Reported>>>,
}

/// Titles remembered per user; far more than one viewer watches at once.
const MAX_PER_USER: usize = 32;

impl RecentProgress {
    /// Overlays live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_user: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers a report just accepted.
    pub fn record(
        &self,
        user: &UserId,
        title_id: &str,
        position_seconds: u32,
        duration_seconds: u32,
    ) {
        let mut map = self.by_user.lock();
        let list = map.entry(user.clone()).or_default();
        list.retain(|r| r.title_id != title_id && r.at.elapsed() < self.ttl);
        list.push(Reported {
            title_id: title_id.to_owned(),
            position_seconds,
            duration_seconds,
            at: Instant::now(),
        });
        if list.len() > MAX_PER_USER {
            list.remove(0);
        }
    }

    /// The service applied `position_seconds` for this title: the overlay is no longer needed
    /// (a later report for the same title stays).
    pub fn applied(&self, user: &UserId, title_id: &str, position_seconds: u32) {
        let mut map = self.by_user.lock();
        if let Some(list) = map.get_mut(user) {
            list.retain(|r| !(r.title_id == title_id && r.position_seconds == position_seconds));
            if list.is_empty() {
                map.remove(user);
            }
        }
    }

    /// `row` with this user's pending reports applied: the title's position updated, and the
    /// title moved (or added) to the front, as the service will do; cut to `limit`.
    pub fn overlay(
        &self,
        user: &UserId,
        row: &[ContinueWatchingEntry],
        limit: usize,
    ) -> Option<Vec<ContinueWatchingEntry>> {
        let pending: Vec<Reported> = {
            let mut map = self.by_user.lock();
            let list = map.get_mut(user)?;
            list.retain(|r| r.at.elapsed() < self.ttl);
            if list.is_empty() {
                map.remove(user);
                return None;
            }
            list.clone()
        };
        let mut out = row.to_vec();
        // Oldest first, so the newest report ends up at the front.
        for r in pending {
            let existing = out.iter().position(|e| e.title_id == r.title_id);
            let mut entry = match existing {
                Some(i) => out.remove(i),
                None => ContinueWatchingEntry {
                    title_id: r.title_id.clone(),
                    position_seconds: 0,
                    duration_seconds: r.duration_seconds,
                    updated_at: String::new(),
                },
            };
            entry.position_seconds = r.position_seconds;
            out.insert(0, entry);
        }
        out.truncate(limit);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(id: &str, pos: u32) -> ContinueWatchingEntry {
        ContinueWatchingEntry {
            title_id: id.into(),
            position_seconds: pos,
            duration_seconds: 3600,
            updated_at: String::new(),
        }
    }

    #[test]
    fn pending_reports_move_their_title_first_until_applied() {
        let recent = RecentProgress::new(Duration::from_secs(30));
        let u = UserId::from_verified_subject("u1").unwrap();
        let row = vec![entry("t1", 10), entry("t2", 20)];
        assert!(recent.overlay(&u, &row, 10).is_none());
        recent.record(&u, "t2", 99, 3600);
        recent.record(&u, "t9", 5, 1200);
        let got = recent.overlay(&u, &row, 10).unwrap();
        let ids: Vec<(&str, u32)> = got
            .iter()
            .map(|e| (e.title_id.as_str(), e.position_seconds))
            .collect();
        assert_eq!(ids, [("t9", 5), ("t2", 99), ("t1", 10)]);
        recent.applied(&u, "t2", 99);
        recent.applied(&u, "t9", 5);
        assert!(recent.overlay(&u, &row, 10).is_none());
    }
}
