//! The bounded, ordered outbox between "accepted" and "confirmed by the broker": a publish is
//! accepted once it is in here; it leaves only when the broker confirmed it, so a broker that is
//! away or stops confirming loses nothing, and a republish after a fault goes out in the order
//! of acceptance. Full → the publish is refused (the caller answers BACKEND_UNAVAILABLE), never
//! dropped. Owns no I/O: the RabbitMQ publisher drains it.

use std::{collections::VecDeque, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{PublishError, WorkQueue};

/// Where an accepted event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The topic exchange (routing key = event type).
    Topic,
    /// A durable work queue.
    Work(WorkQueue),
}

/// One accepted event.
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
}

/// The outbox. Only one drainer may pop (the publisher), which keeps the order.
#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    items: Mutex<VecDeque<Pending>>,
    arrived: Notify,
}

impl Outbox {
    /// Holds at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
        }
    }

    /// Accepts `p` at the back, or refuses it when full.
    pub fn push(&self, p: Pending) -> Result<(), PublishError> {
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity {
                return Err(PublishError::OutboxFull {
                    capacity: self.capacity,
                });
            }
            items.push_back(p);
        }
        self.arrived.notify_one();
        Ok(())
    }

    /// Copies of the first `n` events (left in place until confirmed).
    pub fn front(&self, n: usize) -> Vec<Pending> {
        self.items.lock().iter().take(n).cloned().collect()
    }

    /// Drops the first event (it was confirmed).
    pub fn confirmed_front(&self) {
        self.items.lock().pop_front();
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.lock().is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resolves after the next push (or at once if one happened since the last wait).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn p(id: &str) -> Pending {
        Pending {
            target: Target::Topic,
            id: id.into(),
            kind: "title.updated",
            body: Arc::from(&b"{}"[..]),
        }
    }

    #[test]
    fn keeps_order_until_confirmed_and_refuses_when_full() {
        let o = Outbox::new(2);
        o.push(p("a")).unwrap();
        o.push(p("b")).unwrap();
        assert_eq!(
            o.push(p("c")),
            Err(PublishError::OutboxFull { capacity: 2 })
        );
        let ids: Vec<String> = o.front(5).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["a", "b"]);
        // Still there until confirmed: a republish starts from `a` again.
        assert_eq!(o.front(1)[0].id, "a");
        o.confirmed_front();
        assert_eq!(o.front(5)[0].id, "b");
        o.push(p("c")).unwrap();
        assert_eq!(o.len(), 2);
    }
}
