//! Who is watching a fragment: the live homepage's subscriptions wait here for the fragment they
//! show to change. A fragment "changes" when it is invalidated — by a domain event from the bus
//! (`invalidate`, on every instance) or by this instance's own write (my list) — and every
//! watcher of its key is told, once per change however many watch it. While the instance's event
//! subscription is down, watchers are told that too (changes may go unseen), and again when it is
//! back (what was missed must be reloaded).
//!
//! A watcher holds a `tokio::sync::watch` receiver of its key's change count: changes that arrive
//! while a watcher is busy fold into one, so a slow watcher never queues changes here (its own
//! backlog is bounded where messages are written, `crate::live`). Keys nobody watches hold no
//! state: the map keeps only weak references and is swept as it grows.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use parking_lot::Mutex;
use tokio::sync::watch;

/// Whether this instance hears the bus (and so sees every change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusState {
    /// Subscribed: every change is seen.
    Up,
    /// The subscription is down: changes may go unseen until it is back.
    Down,
}

/// The watchers of every watched key.
pub(crate) struct Watchers {
    keys: Mutex<Keys>,
    bus: watch::Sender<BusState>,
}

struct Keys {
    by_key: HashMap<String, Weak<watch::Sender<u64>>>,
    /// Entries at the last sweep: the map is swept when it has doubled since.
    swept_at: usize,
}

impl Default for Watchers {
    fn default() -> Self {
        Self {
            keys: Mutex::new(Keys {
                by_key: HashMap::new(),
                swept_at: 0,
            }),
            bus: watch::Sender::new(BusState::Up),
        }
    }
}

/// One watcher of one key: waits for its changes and for the bus's state.
pub struct Watch {
    /// Keeps the key's sender alive while someone watches it.
    _sender: Arc<watch::Sender<u64>>,
    changes: watch::Receiver<u64>,
    bus: watch::Receiver<BusState>,
}

/// What a watcher is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The fragment changed (one or more times since the last call).
    Changed,
    /// The bus went down: changes may go unseen.
    BusDown,
    /// The bus is back: changes may have been missed.
    BusUp,
}

impl Watch {
    /// Waits for the next change of the key or of the bus's state.
    pub async fn next(&mut self) -> Change {
        tokio::select! {
            biased;
            changed = self.bus.changed() => {
                if changed.is_err() {
                    // The cache is gone; nothing will change again.
                    return std::future::pending().await;
                }
                match *self.bus.borrow_and_update() {
                    BusState::Up => Change::BusUp,
                    BusState::Down => Change::BusDown,
                }
            }
            changed = self.changes.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                self.changes.borrow_and_update();
                Change::Changed
            }
        }
    }

    /// Whether the bus is down now.
    pub fn bus_down(&self) -> bool {
        *self.bus.borrow() == BusState::Down
    }
}

impl Watchers {
    /// A watcher of `key`.
    pub(crate) fn watch(&self, key: &str) -> Watch {
        let mut keys = self.keys.lock();
        let sender = match keys.by_key.get(key).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Arc::new(watch::Sender::new(0));
                keys.by_key.insert(key.to_owned(), Arc::downgrade(&s));
                if keys.by_key.len() > (keys.swept_at * 2).max(1024) {
                    keys.by_key.retain(|_, w| w.strong_count() > 0);
                    keys.swept_at = keys.by_key.len();
                }
                s
            }
        };
        let mut bus = self.bus.subscribe();
        bus.mark_unchanged();
        Watch {
            changes: sender.subscribe(),
            _sender: sender,
            bus,
        }
    }

    /// Tells `key`'s watchers it changed.
    pub(crate) fn changed(&self, key: &str) {
        let sender = {
            let mut keys = self.keys.lock();
            match keys.by_key.get(key).map(Weak::upgrade) {
                Some(Some(s)) => s,
                Some(None) => {
                    keys.by_key.remove(key);
                    return;
                }
                None => return,
            }
        };
        sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells every watcher the bus is `state` now.
    pub(crate) fn bus(&self, state: BusState) {
        self.bus.send_if_modified(|s| {
            let modified = *s != state;
            *s = state;
            modified
        });
    }

    /// Keys watched now (for tests and metrics).
    pub(crate) fn watched(&self) -> usize {
        self.keys
            .lock()
            .by_key
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_change_reaches_every_watcher_of_its_key_and_no_other() {
        let w = Watchers::default();
        let mut a1 = w.watch("k:a");
        let mut a2 = w.watch("k:a");
        let mut b = w.watch("k:b");
        w.changed("k:a");
        assert_eq!(a1.next().await, Change::Changed);
        assert_eq!(a2.next().await, Change::Changed);
        assert!(
            futures::FutureExt::now_or_never(b.next()).is_none(),
            "b was not changed"
        );
    }

    #[tokio::test]
    async fn changes_while_busy_fold_into_one() {
        let w = Watchers::default();
        let mut a = w.watch("k");
        for _ in 0..100 {
            w.changed("k");
        }
        assert_eq!(a.next().await, Change::Changed);
        assert!(futures::FutureExt::now_or_never(a.next()).is_none());
    }

    #[tokio::test]
    async fn the_bus_state_reaches_watchers_and_unwatched_keys_hold_nothing() {
        let w = Watchers::default();
        let mut a = w.watch("k");
        w.bus(BusState::Down);
        w.bus(BusState::Down);
        assert_eq!(a.next().await, Change::BusDown);
        assert!(a.bus_down());
        w.bus(BusState::Up);
        assert_eq!(a.next().await, Change::BusUp);
        assert_eq!(w.watched(), 1);
        drop(a);
        assert_eq!(w.watched(), 0);
        // A change of a key nobody watches drops its entry.
        w.changed("k");
        assert!(w.keys.lock().by_key.is_empty());
    }
}
