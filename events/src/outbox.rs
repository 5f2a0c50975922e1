//! The bounded, ordered outbox between "handed to the bus" and "confirmed by the broker": an
//! event leaves it only when the broker confirmed it, so a broker that is away or stops confirming
//! loses nothing this process holds, and a republish after a fault goes out in acceptance order.
//! Bounded twice: in all (`events.outbox_capacity`) and per subject (`events.outbox_share`), so
//! one user's flood cannot refuse everybody else's reports. Full → refused, never dropped.
//!
//! Work events carry a waiter: the request that sent them learns when the broker confirmed (or
//! returned) them. Owns no I/O: the RabbitMQ publisher drains it.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::{PublishError, WorkQueue};

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The topic exchange (routing key = event type).
    Topic,
    /// A durable work queue.
    Work(WorkQueue),
}

/// One event on its way to the broker.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Where to.
    pub target: Target,
    /// Event id (the AMQP `message_id`).
    pub id: String,
    /// Event type (the routing key of a domain event).
    pub kind: &'static str,
    /// Wire bytes.
    pub body: Arc<[u8]>,
    /// Whose share it counts against (the event's subject); `None`: not bounded per subject
    /// (replays of the spool, which were bounded when written).
    pub owner: Option<Arc<str>>,
    /// Also held by the spool: its loss from memory loses nothing.
    pub spooled: bool,
}

/// What became of a work event with a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed it.
    Confirmed,
    /// The broker returned it: no queue took it, even after the queue was declared again.
    Returned,
}

/// What [`Outbox::withdraw`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// It was waiting and is gone now: it will never be published.
    Removed,
    /// It is on the wire: only its confirm (or the link's failure) can tell.
    InFlight,
    /// It already left (confirmed or returned).
    Gone,
}

struct Entry {
    seq: u64,
    pending: Pending,
    in_flight: bool,
    /// Times the broker returned it.
    returns: u32,
    waiter: Option<oneshot::Sender<Outcome>>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Entry>,
    owners: HashMap<Arc<str>, usize>,
    next_seq: u64,
}

impl State {
    fn position(&self, seq: u64) -> Option<usize> {
        // Sequence numbers grow along the queue: binary search.
        self.items.binary_search_by_key(&seq, |e| e.seq).ok()
    }

    fn remove_at(&mut self, i: usize) -> Option<Entry> {
        let e = self.items.remove(i)?;
        if let Some(owner) = &e.pending.owner
            && let Some(n) = self.owners.get_mut(owner)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(owner);
            }
        }
        Some(e)
    }
}

/// The outbox. Only one drainer may take (the publisher), which keeps the order.
pub struct Outbox {
    capacity: usize,
    share: usize,
    state: Mutex<State>,
    arrived: Notify,
    changed: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Holds at most `capacity` events, at most `share` of one owner.
    pub fn new(capacity: usize, share: usize) -> Self {
        Self {
            capacity,
            share: share.max(1),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            changed: Notify::new(),
        }
    }

    /// Accepts `p` at the back (its sequence number), or refuses it when full or when its owner
    /// has its share waiting already. `waiter` hears the outcome.
    pub fn push(
        &self,
        p: Pending,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> Result<u64, PublishError> {
        let seq = {
            let mut st = self.state.lock();
            if st.items.len() >= self.capacity {
                return Err(PublishError::OutboxFull {
                    capacity: self.capacity,
                });
            }
            if let Some(owner) = &p.owner {
                let n = st.owners.entry(owner.clone()).or_insert(0);
                if *n >= self.share {
                    return Err(PublishError::SubjectShare { share: self.share });
                }
                *n += 1;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.items.push_back(Entry {
                seq,
                pending: p,
                in_flight: false,
                returns: 0,
                waiter,
            });
            seq
        };
        self.arrived.notify_one();
        Ok(seq)
    }

    /// Takes up to `n` waiting events from the front, in order, and marks them in flight.
    pub fn take(&self, n: usize) -> Vec<(u64, Pending)> {
        let mut st = self.state.lock();
        st.items
            .iter_mut()
            .filter(|e| !e.in_flight)
            .take(n)
            .map(|e| {
                e.in_flight = true;
                (e.seq, e.pending.clone())
            })
            .collect()
    }

    /// The broker confirmed (or finally returned) `seq`: it leaves, and its waiter hears it.
    pub fn settle(&self, seq: u64, outcome: Outcome) {
        let entry = {
            let mut st = self.state.lock();
            st.position(seq).and_then(|i| st.remove_at(i))
        };
        if let Some(Entry {
            waiter: Some(w), ..
        }) = entry
        {
            let _ = w.send(outcome);
        }
        self.changed.notify_waiters();
    }

    /// The broker returned `seq`; it waits to be sent again. Returns how often it was returned.
    pub fn returned(&self, seq: u64) -> u32 {
        let mut st = self.state.lock();
        let Some(i) = st.position(seq) else {
            return 0;
        };
        let e = &mut st.items[i];
        e.in_flight = false;
        e.returns += 1;
        e.returns
    }

    /// The link failed: everything on the wire waits to be sent again, in its place.
    pub fn requeue_in_flight(&self) {
        let mut st = self.state.lock();
        for e in st.items.iter_mut() {
            e.in_flight = false;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Removes `seq` if it is not on the wire (the request that sent it gives up, or spools it).
    pub fn withdraw(&self, seq: u64) -> Withdrawn {
        let mut st = self.state.lock();
        match st.position(seq) {
            None => Withdrawn::Gone,
            Some(i) if st.items[i].in_flight => Withdrawn::InFlight,
            Some(i) => {
                st.remove_at(i);
                Withdrawn::Removed
            }
        }
    }

    /// Marks `seq` as held by the spool too.
    pub fn mark_spooled(&self, seq: u64) {
        let mut st = self.state.lock();
        if let Some(i) = st.position(seq) {
            st.items[i].pending.spooled = true;
        }
    }

    /// Copies of the events not held by the spool (what a shutdown must still save).
    pub fn unspooled(&self) -> Vec<(u64, Pending)> {
        self.state
            .lock()
            .items
            .iter()
            .filter(|e| !e.pending.spooled)
            .map(|e| (e.seq, e.pending.clone()))
            .collect()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.state.lock().items.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resolves after the next push (or at once if one happened since the last wait).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Waits until every event not held by the spool has left.
    pub async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            if self.state.lock().items.iter().all(|e| e.pending.spooled) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn p(id: &str, owner: Option<&str>) -> Pending {
        Pending {
            target: Target::Topic,
            id: id.into(),
            kind: "title.updated",
            body: Arc::from(&b"{}"[..]),
            owner: owner.map(Arc::from),
            spooled: false,
        }
    }

    fn ids(v: &[(u64, Pending)]) -> Vec<&str> {
        v.iter().map(|(_, p)| p.id.as_str()).collect()
    }

    #[test]
    fn keeps_order_until_confirmed_and_refuses_when_full() {
        let o = Outbox::new(2, 10);
        let a = o.push(p("a", None), None).unwrap();
        o.push(p("b", None), None).unwrap();
        assert_eq!(
            o.push(p("c", None), None),
            Err(PublishError::OutboxFull { capacity: 2 })
        );
        assert_eq!(ids(&o.take(5)), ["a", "b"]);
        // The link failed: both go out again, in the same order.
        o.requeue_in_flight();
        assert_eq!(ids(&o.take(1)), ["a"]);
        o.settle(a, Outcome::Confirmed);
        assert_eq!(ids(&o.take(5)), ["b"]);
        o.push(p("c", None), None).unwrap();
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn one_owner_gets_its_share_and_no_more() {
        let o = Outbox::new(100, 2);
        o.push(p("1", Some("u1")), None).unwrap();
        let second = o.push(p("2", Some("u1")), None).unwrap();
        assert_eq!(
            o.push(p("3", Some("u1")), None),
            Err(PublishError::SubjectShare { share: 2 })
        );
        // Somebody else is not refused.
        o.push(p("4", Some("u2")), None).unwrap();
        // Once one of u1's events has left, u1 may send again.
        o.take(1);
        assert_eq!(o.withdraw(second), Withdrawn::Removed);
        o.push(p("5", Some("u1")), None).unwrap();
    }

    #[tokio::test]
    async fn a_waiter_hears_the_outcome_and_withdrawing_in_flight_is_refused() {
        let o = Outbox::new(10, 10);
        let (tx, rx) = oneshot::channel();
        let seq = o.push(p("a", None), Some(tx)).unwrap();
        assert_eq!(o.take(1).len(), 1);
        assert_eq!(o.withdraw(seq), Withdrawn::InFlight);
        assert_eq!(o.returned(seq), 1);
        assert_eq!(ids(&o.take(1)), ["a"], "a returned event is sent again");
        o.settle(seq, Outcome::Confirmed);
        assert_eq!(rx.await.unwrap(), Outcome::Confirmed);
        assert_eq!(o.withdraw(seq), Withdrawn::Gone);
        assert!(o.is_empty());
    }
}
