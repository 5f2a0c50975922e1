//! The in-process bus: the default, for `--demo` and single-instance use. Same semantics as the
//! broker within one process: every subscriber gets each domain event of its types; a work queue
//! keeps its events while no consumer runs (bounded by `events.outbox_capacity`) and hands them
//! out one at a time, in order; a refused event is retried up to `events.max_retries` times, then
//! kept in the queue's dead-letter list. Nothing survives the process.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering},
};

use futures::{FutureExt, future::BoxFuture};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::{
    Accepted, Attempts, BusError, BusOptions, BusStatus, Consumer, ConsumerTask, Counters,
    Envelope, EventBus, EventHandler, PublishError, Settle, WorkQueue, deliver,
};

type Body = Arc<[u8]>;

struct Subscriber {
    types: Vec<String>,
    tx: mpsc::UnboundedSender<Body>,
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Body>>,
    dead: Mutex<Vec<Body>>,
    arrived: Notify,
}

/// Counts one running consumer for as long as it lives.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The in-process bus. Cheap to share behind an `Arc`.
pub struct InProcessBus {
    capacity: usize,
    max_retries: u32,
    max_message_bytes: usize,
    counters: Arc<Counters>,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    queues: Mutex<HashMap<WorkQueue, Arc<Queue>>>,
    consumers: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

impl InProcessBus {
    /// A bus with the bounds of `options`.
    pub fn new(options: &BusOptions) -> Self {
        Self {
            capacity: options.outbox_capacity,
            max_retries: options.max_retries,
            max_message_bytes: options.max_message_bytes,
            counters: Arc::default(),
            subscribers: Arc::default(),
            queues: Mutex::default(),
            consumers: Arc::default(),
        }
    }

    fn queue(&self, q: WorkQueue) -> Arc<Queue> {
        self.queues.lock().entry(q).or_default().clone()
    }

    /// Events of `q` that went to its dead-letter list.
    pub fn dead_letters(&self, q: WorkQueue) -> Vec<Envelope> {
        self.queue(q)
            .dead
            .lock()
            .iter()
            .filter_map(|b| Envelope::from_bytes(b).ok())
            .collect()
    }

    /// Events waiting in `q`.
    pub fn depth(&self, q: WorkQueue) -> usize {
        self.queue(q).items.lock().len()
    }
}

impl InProcessBus {
    fn encoded(&self, event: &Envelope) -> Result<Body, PublishError> {
        self.counters.encode(event, self.max_message_bytes)
    }

    fn enqueue(&self, queue: WorkQueue, event: &Envelope) -> Result<Accepted, PublishError> {
        let body = self.encoded(event)?;
        let q = self.queue(queue);
        {
            let mut items = q.items.lock();
            if items.len() >= self.capacity {
                return Err(PublishError::OutboxFull {
                    capacity: self.capacity,
                });
            }
            items.push_back(body);
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
        q.arrived.notify_one();
        Ok(Accepted::InProcess)
    }
}

impl EventBus for InProcessBus {
    fn publish(&self, event: &Envelope) -> Result<(), PublishError> {
        let body: Body = self.encoded(event)?;
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
        let kind = event.kind();
        // Subscribers that have gone away are forgotten here.
        self.subscribers.lock().retain(|s| {
            if s.types.iter().any(|t| t == kind) {
                s.tx.send(body.clone()).is_ok()
            } else {
                !s.tx.is_closed()
            }
        });
        Ok(())
    }

    fn send_work(
        &self,
        queue: WorkQueue,
        event: &Envelope,
    ) -> BoxFuture<'static, Result<Accepted, PublishError>> {
        let result = self.enqueue(queue, event);
        async move { result }.boxed()
    }

    fn subscribe(
        &self,
        types: &[&str],
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Body>();
        self.subscribers.lock().push(Subscriber {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            tx,
        });
        let (consumer, task) = Consumer::pair();
        let counters = self.counters.clone();
        let attempts = Attempts::new(self.max_retries);
        let max = self.max_message_bytes;
        let ConsumerTask {
            mut cancelled,
            done,
        } = task;
        let running = Running::new(&self.consumers);
        tokio::spawn(async move {
            let _done = done;
            let _running = running;
            loop {
                let body = tokio::select! {
                    _ = &mut cancelled => break,
                    b = rx.recv() => match b { Some(b) => b, None => break },
                };
                let mut redelivered = false;
                // A topic event has no queue to go back to: retry in place, up to the bound.
                while deliver(&body, redelivered, max, &handler, &attempts, &counters).await
                    == Settle::Retry
                {
                    redelivered = true;
                }
            }
        });
        async move { Ok(consumer) }.boxed()
    }

    fn consume_work(
        &self,
        queue: WorkQueue,
        handler: Arc<dyn EventHandler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        let q = self.queue(queue);
        let (consumer, task) = Consumer::pair();
        let counters = self.counters.clone();
        let attempts = Attempts::new(self.max_retries);
        let max = self.max_message_bytes;
        let ConsumerTask {
            mut cancelled,
            done,
        } = task;
        let running = Running::new(&self.consumers);
        tokio::spawn(async move {
            let _done = done;
            let _running = running;
            let mut redelivered = false;
            loop {
                let front = q.items.lock().front().cloned();
                let Some(body) = front else {
                    tokio::select! {
                        _ = &mut cancelled => break,
                        () = q.arrived.notified() => continue,
                    }
                };
                // The event stays at the front until settled: a consumer stopped mid-way leaves
                // it for the next one, like an unacknowledged delivery.
                let settle = tokio::select! {
                    _ = &mut cancelled => break,
                    s = deliver(&body, redelivered, max, &handler, &attempts, &counters) => s,
                };
                match settle {
                    Settle::Ack => {
                        q.items.lock().pop_front();
                        redelivered = false;
                    }
                    Settle::Retry => redelivered = true,
                    Settle::DeadLetter => {
                        if let Some(b) = q.items.lock().pop_front() {
                            q.dead.lock().push(b);
                        }
                        redelivered = false;
                    }
                }
            }
        });
        async move { Ok(consumer) }.boxed()
    }

    fn status(&self) -> BusStatus {
        let mut s = BusStatus {
            kind: "in-process",
            connected: true,
            outbox_depth: 0,
            outbox_capacity: self.capacity,
            consumers: self.consumers.load(Ordering::Relaxed),
            ..BusStatus::default()
        };
        self.counters.fill(&mut s);
        s
    }
}
