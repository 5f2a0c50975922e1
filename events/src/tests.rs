#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use parking_lot::Mutex;

use super::{
    BusOptions, Delivery, Envelope, EventBus, EventHandler, Handled, HandlerError, Payload,
    ProgressData, TitleUpdated, WorkQueue, memory::InProcessBus,
};

/// Records what it applied; refuses ids listed in `refuse` every time; skips ids it applied.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<Envelope>>,
    refuse: Mutex<Vec<String>>,
    attempts: AtomicU32,
    changed: tokio::sync::Notify,
}

struct Handle(Arc<Recorder>);

impl EventHandler for Handle {
    fn handle(&self, d: Delivery) -> BoxFuture<'static, Result<Handled, HandlerError>> {
        let me = self.0.clone();
        async move {
            me.attempts.fetch_add(1, Ordering::Relaxed);
            if me.refuse.lock().contains(&d.event.id) {
                return Err(HandlerError("refused".into()));
            }
            let dup = me.applied.lock().iter().any(|e| e.id == d.event.id);
            if !dup {
                me.applied.lock().push(d.event);
            }
            me.changed.notify_waiters();
            Ok(if dup {
                Handled::Duplicate
            } else {
                Handled::Applied
            })
        }
        .boxed()
    }
}

impl Recorder {
    async fn wait_for(&self, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.changed.notified();
            let have = self.applied.lock().len();
            if have >= n || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.applied.lock().len();
            }
        }
    }
}

fn progress(user: &str, pos: u32) -> Envelope {
    Envelope::new(
        "test",
        Payload::PlaybackProgress(ProgressData {
            user_id: user.into(),
            title_id: "t1".into(),
            position_seconds: pos,
        }),
    )
}

fn settings(capacity: usize) -> BusOptions {
    BusOptions {
        outbox_capacity: capacity,
        max_retries: 2,
        ..BusOptions::default()
    }
}

#[tokio::test]
async fn work_waits_while_no_consumer_runs_and_is_applied_in_order_after() {
    let bus = InProcessBus::new(&settings(100));
    for pos in 0..20 {
        bus.send_work(WorkQueue::PlaybackProgress, &progress("u1", pos))
            .await
            .unwrap();
    }
    assert_eq!(bus.depth(WorkQueue::PlaybackProgress), 20);
    let rec = Arc::new(Recorder::default());
    let consumer = bus
        .consume_work(WorkQueue::PlaybackProgress, Arc::new(Handle(rec.clone())))
        .await
        .unwrap();
    assert_eq!(rec.wait_for(20).await, 20);
    let order: Vec<u32> = rec
        .applied
        .lock()
        .iter()
        .map(|e| match &e.payload {
            Payload::PlaybackProgress(p) => p.position_seconds,
            _ => u32::MAX,
        })
        .collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    consumer.stop().await;
    assert_eq!(bus.status().consumed, 20);
}

#[tokio::test]
async fn a_full_queue_refuses_instead_of_dropping() {
    let bus = InProcessBus::new(&settings(3));
    for pos in 0..3 {
        bus.send_work(WorkQueue::PlaybackProgress, &progress("u1", pos))
            .await
            .unwrap();
    }
    assert!(
        bus.send_work(WorkQueue::PlaybackProgress, &progress("u1", 9))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_refused_event_is_retried_a_bounded_number_of_times_then_dead_lettered() {
    let bus = InProcessBus::new(&settings(100));
    let poison = progress("u1", 1);
    let good = progress("u1", 2);
    let rec = Arc::new(Recorder::default());
    rec.refuse.lock().push(poison.id.clone());
    bus.send_work(WorkQueue::PlaybackProgress, &poison)
        .await
        .unwrap();
    bus.send_work(WorkQueue::PlaybackProgress, &good)
        .await
        .unwrap();
    let _consumer = bus
        .consume_work(WorkQueue::PlaybackProgress, Arc::new(Handle(rec.clone())))
        .await
        .unwrap();
    // The poison does not block the queue: the next event is applied.
    assert_eq!(rec.wait_for(1).await, 1);
    assert_eq!(rec.applied.lock()[0].id, good.id);
    // 1 try + 2 retries, then dead-lettered.
    assert_eq!(rec.attempts.load(Ordering::Relaxed), 3 + 1);
    let dead = bus.dead_letters(WorkQueue::PlaybackProgress);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, poison.id);
    assert_eq!(bus.status().dead_lettered, 1);
}

#[tokio::test]
async fn every_subscriber_gets_each_event_of_its_types_only() {
    let bus = InProcessBus::new(&settings(100));
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let _ca = bus
        .subscribe(&["title.updated"], Arc::new(Handle(a.clone())))
        .await
        .unwrap();
    let _cb = bus
        .subscribe(
            &["title.updated", "top10.changed"],
            Arc::new(Handle(b.clone())),
        )
        .await
        .unwrap();
    let title = Envelope::new(
        "catalog",
        Payload::TitleUpdated(TitleUpdated {
            title_id: "t1".into(),
        }),
    );
    let top = Envelope::new(
        "top10",
        Payload::Top10Changed(super::Top10Changed {
            region: "US".into(),
        }),
    );
    bus.publish(&title).unwrap();
    bus.publish(&top).unwrap();
    assert_eq!(b.wait_for(2).await, 2);
    assert_eq!(a.wait_for(1).await, 1);
    assert_eq!(a.applied.lock().len(), 1);
}

#[tokio::test]
async fn oversized_and_unknown_field_messages_are_dead_lettered_not_applied() {
    let bus = InProcessBus::new(&BusOptions {
        max_message_bytes: 400,
        ..settings(100)
    });
    let big = Envelope::new(
        "test",
        Payload::TitleUpdated(TitleUpdated {
            title_id: "t".repeat(500),
        }),
    );
    // Refused on publish, counted.
    assert!(matches!(
        bus.publish(&big),
        Err(super::PublishError::TooLarge { max: 400, .. })
    ));
    assert_eq!(bus.status().too_large, 1);
    // On consume (a producer with a larger bound): dead-lettered, counted, not applied.
    let rec = Arc::new(Recorder::default());
    let handler: Arc<dyn EventHandler> = Arc::new(Handle(rec.clone()));
    let counters = super::Counters::default();
    let attempts = super::Attempts::new(2);
    let settle = super::deliver(&big.to_bytes(), false, 400, &handler, &attempts, &counters).await;
    assert_eq!(settle, super::Settle::DeadLetter);
    assert_eq!(counters.too_large.load(Ordering::Relaxed), 1);
    // A field version 1 does not define: refused as poison (documented policy: v1 is closed).
    let mut v: serde_json::Value = serde_json::from_slice(&progress("u1", 1).to_bytes()).unwrap();
    v["traceparent"] = "00-abc".into();
    let settle = super::deliver(
        &serde_json::to_vec(&v).unwrap(),
        false,
        400,
        &handler,
        &attempts,
        &counters,
    )
    .await;
    assert_eq!(settle, super::Settle::DeadLetter);
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 2);
    assert!(rec.applied.lock().is_empty());
}

/// A broker address nothing listens on (a port bound and released at once).
fn dead_broker() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

fn title(n: u32) -> Envelope {
    Envelope::new(
        "catalog",
        Payload::TitleUpdated(TitleUpdated {
            title_id: format!("t{n}"),
        }),
    )
}

#[tokio::test]
async fn a_drain_counts_what_it_could_not_settle_and_spools_it_when_it_can() {
    // No spool: three domain events wait for a broker that never answers.
    let url = dead_broker();
    let bus = super::rabbit::RabbitBus::start(&url, &settings(100), "test").unwrap();
    for n in 0..3 {
        bus.publish(&title(n)).unwrap();
    }
    let drained = bus.drain(Duration::from_millis(100)).await;
    assert_eq!(drained.unsettled, 3);
    assert_eq!(bus.status().unsettled, 3);
    // Draining: nothing new is taken.
    assert_eq!(bus.publish(&title(9)), Err(super::PublishError::Draining));

    // With a spool: the same events are saved for the next start, none lost.
    let dir = std::env::temp_dir().join(format!("bff-drain-{}", uuid::Uuid::new_v4().simple()));
    let bus = super::rabbit::RabbitBus::start(
        &url,
        &BusOptions {
            spool_dir: Some(dir.clone()),
            ..settings(100)
        },
        "test",
    )
    .unwrap();
    for n in 0..3 {
        bus.publish(&title(n)).unwrap();
    }
    // Work while the broker is away goes straight to the spool.
    assert_eq!(
        bus.send_work(WorkQueue::PlaybackProgress, &progress("u1", 1))
            .await,
        Ok(super::Accepted::Spooled)
    );
    // A fifth of the grace is for writing to the spool (fsync per event): generous, so that a
    // loaded machine's disk does not decide the test (200 ms left 3 of 4 unspooled in one CI run).
    let drained = bus.drain(Duration::from_secs(3)).await;
    assert_eq!((drained.unsettled, drained.spooled), (0, 4));
    drop(bus);
    // The next process on this spool finds all four (once the dropped bus's tasks have let go of
    // its lock).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spool = loop {
        match super::spool::Spool::open(&dir, 1 << 20) {
            Ok(s) => break s,
            Err(super::spool::SpoolError::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(spool.depth().0, 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn without_a_spool_work_is_refused_at_once_while_the_broker_is_away() {
    let bus = super::rabbit::RabbitBus::start(&dead_broker(), &settings(100), "test").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        bus.send_work(WorkQueue::PlaybackProgress, &progress("u1", 1))
            .await,
        Err(super::PublishError::Unavailable)
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}
