//! Shared executions: subscribers of the same operation who must see the same thing — the same
//! document, operation name and variables, and the same view (the same viewer and token for a
//! personal row; only the same maturity ceiling for a title or a named region's top 10) — share
//! ONE execution of it. Its responses are classified, serialized once and handed to every
//! member as the same bytes; 10,000 phones watching the US top 10 cost one reload and one
//! rendering per change, not 10,000.
//!
//! Each member has a bounded queue (`subscriptions.buffer` messages): a channel its connection
//! reads (SSE, multipart), or its WebSocket's [`Wire`], which takes a message straight into the
//! socket when it can and queues it for the socket's task otherwise. A member whose queue is
//! full when a message is handed out is dropped from the group and marked slow: its connection
//! closes it with a code (`4413`, or an SSE error event) instead of letting it grow the process.
//! A group ends when its last member leaves (its execution is dropped with it) or when its
//! execution ends.
//!
//! A message is handed out from a snapshot of the members, outside the group's lock, yielding
//! to the runtime every [`CHUNK`] members: writing 10,000 sockets takes tens of milliseconds,
//! and members joining or leaving meanwhile must not wait for it (a joiner gets the message as
//! the current value; a leaver's queue or wire refuses it). Members are handed it in the order
//! they joined: oldest first, and their sockets — accepted, and allocated in the kernel, in
//! about that order — are written in the order they lie in memory, which measured ~8% less
//! CPU per message than the map's hash order with 10,000 WebSockets (`BENCHMARKS.md`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::wire::{Handed, Wire};
use crate::graphql::errors::{Outcome, classify};

/// Members a lane claims at once, and hands a message between two yields to the runtime.
const CHUNK: usize = 128;

/// From this many members a message is handed out on several tasks at once (one per core, at
/// most [`MAX_LANES`]): with 10,000 WebSockets, writing them is most of the work of a change.
const PARALLEL_FROM: usize = 1024;
const MAX_LANES: usize = 8;

/// Who may share an execution: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub(crate) query: Arc<str>,
    pub(crate) operation: Option<String>,
    pub(crate) variables: String,
    pub(crate) view: View,
}

/// What of the viewer an execution's answers depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum View {
    /// Shared data: only the maturity ceiling changes what is shown.
    Shared { max_maturity: Option<u8> },
    /// Per viewer: the user and the very token (whose scopes and claims the loads carry);
    /// `None` is anonymous.
    Personal {
        user: Option<String>,
        token: Option<Arc<str>>,
        max_maturity: Option<u8>,
    },
}

/// A message for a subscriber.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    /// A result: the GraphQL response's JSON (`data`, `errors`).
    Next(Bytes),
    /// The operation could not run: a JSON array of GraphQL errors. The last message.
    Error(Bytes),
    /// The execution ended. The last message.
    Complete,
}

/// One member's end of its group: its messages, and whether it was dropped as too slow.
pub(crate) struct Member {
    pub(crate) rx: mpsc::Receiver<Msg>,
    slow: Arc<AtomicBool>,
    /// Leaves the group when dropped.
    _seat: Seat,
}

impl Member {
    /// Whether the group dropped this member because its queue was full.
    pub(crate) fn too_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }
}

struct Seat {
    group: Arc<Group>,
    id: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.group.leave(self.id);
    }
}

/// Where a member's messages go.
enum Seated {
    /// A channel its connection reads; `slow` is set when it overflows.
    Queue {
        tx: mpsc::Sender<Msg>,
        slow: Arc<AtomicBool>,
    },
    /// Subscription `key` of a WebSocket.
    Wire { wire: Arc<Wire>, key: u64 },
}

impl Seated {
    /// Hands `msg` over; `false` when the member is too slow and must be dropped.
    fn hand(&self, msg: &Msg) -> bool {
        match self {
            Self::Queue { tx, slow } => match tx.try_send(msg.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slow.store(true, Ordering::Relaxed);
                    false
                }
                // Its connection is gone; its seat leaves on its own.
                Err(mpsc::error::TrySendError::Closed(_)) => true,
            },
            Self::Wire { wire, key } => wire.hand(*key, msg) != Handed::Slow,
        }
    }
}

/// A WebSocket subscription's place in its group: leaves it when dropped.
pub(crate) struct WireMember {
    _seat: Seat,
}

struct Group {
    key: GroupKey,
    registry: Weak<GroupsInner>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By seat id, which grows as members join: iterated in the order they joined.
    members: BTreeMap<u64, Arc<Seated>>,
    /// The last result, for members who join after it was sent.
    last: Option<Bytes>,
    /// The execution was started (by the first member).
    started: bool,
    /// The execution ended (the group is out of the registry).
    ended: bool,
    task: Option<tokio::task::AbortHandle>,
}

impl Group {
    fn leave(&self, id: u64) {
        let empty = {
            let mut st = self.state.lock();
            st.members.remove(&id);
            st.members.is_empty() && !st.ended
        };
        if empty && let Some(reg) = self.registry.upgrade() {
            reg.remove_if_empty(&self.key);
        }
    }

    /// Hands `msg` to every member; a member whose queue is full is dropped as too slow.
    async fn fan_out(&self, msg: &Msg) {
        let members: Arc<[(u64, Arc<Seated>)]> = {
            let mut st = self.state.lock();
            if let Msg::Next(bytes) = msg {
                st.last = Some(bytes.clone());
            }
            st.members.iter().map(|(id, m)| (*id, m.clone())).collect()
        };
        let lanes = if members.len() >= PARALLEL_FROM {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_LANES))
        } else {
            1
        };
        // Members are claimed a chunk at a time from one cursor: a lane whose thread the OS
        // has taken away holds up one chunk, not its share, and the others take the rest. Each
        // member is handed the message once, and the next message waits for every lane: a
        // member's messages keep their order.
        let cursor = Arc::new(AtomicUsize::new(0));
        let helpers: Vec<_> = (1..lanes)
            .map(|_| {
                let (members, msg, cursor) = (members.clone(), msg.clone(), cursor.clone());
                tokio::spawn(async move { hand_out(&members, &cursor, &msg).await })
            })
            .collect();
        let mut slow = hand_out(&members, &cursor, msg).await;
        for task in helpers {
            // A lane that panicked handed out part of its chunk; those members see the next
            // message.
            if let Ok(s) = task.await {
                slow.extend(s);
            }
        }
        if !slow.is_empty() {
            let mut st = self.state.lock();
            for id in &slow {
                // Dropping the sender ends the member's queue after what it holds.
                st.members.remove(id);
            }
        }
    }
}

/// Hands `msg` to the members it claims from `cursor`, [`CHUNK`] at a time, yielding to the
/// runtime between chunks: the ids of those too slow for it.
async fn hand_out(members: &[(u64, Arc<Seated>)], cursor: &AtomicUsize, msg: &Msg) -> Vec<u64> {
    let mut slow = Vec::new();
    loop {
        let start = cursor.fetch_add(CHUNK, Ordering::Relaxed);
        let end = members.len().min(start.saturating_add(CHUNK));
        let Some(chunk) = members.get(start..end).filter(|c| !c.is_empty()) else {
            return slow;
        };
        for (id, m) in chunk {
            if !m.hand(msg) {
                slow.push(*id);
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Every group of this instance.
pub(crate) struct Groups {
    inner: Arc<GroupsInner>,
}

struct GroupsInner {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    next_id: AtomicU64,
}

impl GroupsInner {
    fn remove_if_empty(&self, key: &GroupKey) {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get(key) else { return };
        let mut st = group.state.lock();
        if st.members.is_empty() {
            st.ended = true;
            if let Some(t) = st.task.take() {
                // Dropping the execution drops its feed and its fragment watch.
                t.abort();
            }
            drop(st);
            groups.remove(key);
        }
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            inner: Arc::new(GroupsInner {
                groups: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

impl Groups {
    /// Joins the group of `key` with a queue of `buffer` messages, starting its execution with
    /// `start` when there is none (`hide_suggestions`: introspection is off).
    pub(crate) fn join(
        &self,
        key: GroupKey,
        buffer: usize,
        hide_suggestions: bool,
        start: impl FnOnce() -> BoxStream<'static, async_graphql::Response>,
    ) -> Member {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let slow = Arc::new(AtomicBool::new(false));
        let seat = self.seat(
            key,
            Seated::Queue {
                tx,
                slow: slow.clone(),
            },
            hide_suggestions,
            start,
        );
        Member {
            rx,
            slow,
            _seat: seat,
        }
    }

    /// Joins the group of `key` as subscription `sub` of WebSocket `wire` (which bounds what
    /// waits for it), starting its execution with `start` when there is none.
    pub(crate) fn join_wire(
        &self,
        key: GroupKey,
        wire: Arc<Wire>,
        sub: u64,
        hide_suggestions: bool,
        start: impl FnOnce() -> BoxStream<'static, async_graphql::Response>,
    ) -> WireMember {
        WireMember {
            _seat: self.seat(
                key,
                Seated::Wire { wire, key: sub },
                hide_suggestions,
                start,
            ),
        }
    }

    fn seat(
        &self,
        key: GroupKey,
        seated: Seated,
        hide_suggestions: bool,
        start: impl FnOnce() -> BoxStream<'static, async_graphql::Response>,
    ) -> Seat {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.inner.groups.lock();
        let group = match groups.get(&key) {
            Some(g) => g.clone(),
            None => {
                let group = Arc::new(Group {
                    key: key.clone(),
                    registry: Arc::downgrade(&self.inner),
                    state: Mutex::new(State::default()),
                });
                groups.insert(key, group.clone());
                // The task is started below, after this member is seated, so it cannot end
                // (an immediate request error) before anyone hears it.
                group
            }
        };
        let fresh = {
            let mut st = group.state.lock();
            if let Some(last) = &st.last {
                // The current value, at once: a late joiner does not wait for the next change.
                seated.hand(&Msg::Next(last.clone()));
            }
            st.members.insert(id, Arc::new(seated));
            !std::mem::replace(&mut st.started, true)
        };
        drop(groups);
        if fresh {
            let stream = start();
            let task = tokio::spawn(run(
                Arc::downgrade(&group),
                stream,
                hide_suggestions,
                Arc::downgrade(&self.inner),
            ));
            let mut st = group.state.lock();
            if st.ended {
                // Every member left while it was being started.
                task.abort();
            } else {
                st.task = Some(task.abort_handle());
            }
        }
        Seat { group, id }
    }

    /// Groups running now.
    pub(crate) fn len(&self) -> usize {
        self.inner.groups.lock().len()
    }
}

/// Runs a group's execution: every response classified (coded errors, internal text masked),
/// serialized once and handed out.
async fn run(
    group: Weak<Group>,
    mut stream: BoxStream<'static, async_graphql::Response>,
    hide_suggestions: bool,
    registry: Weak<GroupsInner>,
) {
    let mut first = true;
    let mut refused_at_start = false;
    let mut pending: Option<async_graphql::Response> = None;
    loop {
        let next = match pending.take() {
            Some(r) => Some(r),
            None => stream.next().await,
        };
        let Some(mut response) = next else { break };
        let outcome = classify(&mut response, hide_suggestions);
        // A request error, or a field that could not start (no viewer, a missing scope, a bad
        // argument): the engine answers once with errors and no data, and its stream is over.
        let refused = first
            && response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && (outcome == Outcome::RequestError
                || match stream.next().now_or_never() {
                    Some(None) => true,
                    Some(Some(more)) => {
                        pending = Some(more);
                        false
                    }
                    None => false,
                });
        first = false;
        let msg = if refused {
            match serde_json::to_vec(&response.errors) {
                Ok(b) => Msg::Error(Bytes::from(b)),
                Err(_) => Msg::Error(Bytes::from_static(
                    br#"[{"message":"internal error","extensions":{"code":"INTERNAL"}}]"#,
                )),
            }
        } else {
            match crate::graphql::response_json(&response) {
                Ok(b) => Msg::Next(Bytes::from(b)),
                Err(e) => {
                    tracing::error!(error = %e, "subscription result not serializable");
                    continue;
                }
            }
        };
        let Some(g) = group.upgrade() else { return };
        g.fan_out(&msg).await;
        drop(g);
        if refused {
            refused_at_start = true;
            break;
        }
    }
    // Over: out of the registry first, so a new subscriber starts a new execution, then tell
    // every member.
    let Some(g) = group.upgrade() else { return };
    if let Some(reg) = registry.upgrade() {
        let mut groups = reg.groups.lock();
        if groups.get(&g.key).is_some_and(|x| Arc::ptr_eq(x, &g)) {
            groups.remove(&g.key);
        }
    }
    let mut st = g.state.lock();
    st.ended = true;
    st.task = None;
    if !refused_at_start {
        for m in st.members.values() {
            m.hand(&Msg::Complete);
        }
    }
    st.members.clear();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(q: &str) -> GroupKey {
        GroupKey {
            query: Arc::from(q),
            operation: None,
            variables: String::new(),
            view: View::Shared { max_maturity: None },
        }
    }

    fn response(n: i32) -> async_graphql::Response {
        async_graphql::Response::new(
            async_graphql::Value::from_json(serde_json::json!({ "n": n })).unwrap(),
        )
    }

    /// An execution fed by hand.
    fn feed() -> (
        futures::channel::mpsc::UnboundedSender<async_graphql::Response>,
        impl FnOnce() -> BoxStream<'static, async_graphql::Response>,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (tx, move || rx.boxed())
    }

    #[tokio::test]
    async fn members_share_one_execution_and_a_late_joiner_gets_the_current_value() {
        let groups = Groups::default();
        let (tx, start) = feed();
        let mut a = groups.join(key("q"), 8, false, start);
        let mut b = groups.join(key("q"), 8, false, || panic!("one execution only"));
        assert_eq!(groups.len(), 1);
        tx.unbounded_send(response(1)).unwrap();
        for m in [&mut a, &mut b] {
            let Msg::Next(bytes) = m.rx.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(&bytes[..], br#"{"data":{"n":1}}"#);
        }
        let mut c = groups.join(key("q"), 8, false, || panic!("one execution only"));
        let Msg::Next(bytes) = c.rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(&bytes[..], br#"{"data":{"n":1}}"#);
        drop((a, b, c));
        assert_eq!(groups.len(), 0, "the last member's leaving ends it");
        // The abort lands when the runtime next gets to the task.
        for _ in 0..1000 {
            if tx.is_closed() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(tx.is_closed(), "and drops its execution");
    }

    /// Past [`PARALLEL_FROM`] members a message is handed out on several tasks: every member
    /// still gets every message once and in order, and members leaving meanwhile are skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_group_hands_out_on_several_lanes_in_order() {
        let groups = Groups::default();
        let (tx, start) = feed();
        let n = PARALLEL_FROM + 500;
        let mut members: Vec<Member> = vec![groups.join(key("q"), 8, false, start)];
        for _ in 1..n {
            members.push(groups.join(key("q"), 8, false, || panic!("one execution only")));
        }
        for i in 0..5 {
            tx.unbounded_send(response(i)).unwrap();
        }
        // Some members leave while the messages are handed out.
        let leaving: Vec<Member> = members.drain(..100).collect();
        drop(leaving);
        for m in &mut members {
            for i in 0..5 {
                let Msg::Next(bytes) = m.rx.recv().await.unwrap() else {
                    panic!("a result")
                };
                assert_eq!(bytes, format!(r#"{{"data":{{"n":{i}}}}}"#).as_bytes());
            }
            assert!(m.rx.try_recv().is_err(), "each message once");
            assert!(!m.too_slow());
        }
    }

    #[tokio::test]
    async fn a_member_whose_queue_is_full_is_dropped_as_too_slow_and_the_others_go_on() {
        let groups = Groups::default();
        let (tx, start) = feed();
        let mut slow = groups.join(key("q"), 2, false, start);
        let mut fast = groups.join(key("q"), 2, false, || panic!());
        for n in 0..5 {
            tx.unbounded_send(response(n)).unwrap();
            let Msg::Next(_) = fast.rx.recv().await.unwrap() else {
                panic!()
            };
        }
        // The slow one got what fit in its queue, then its queue ended.
        assert!(matches!(slow.rx.recv().await, Some(Msg::Next(_))));
        assert!(matches!(slow.rx.recv().await, Some(Msg::Next(_))));
        assert!(slow.rx.recv().await.is_none());
        assert!(slow.too_slow());
        assert!(!fast.too_slow());
        tx.unbounded_send(response(9)).unwrap();
        assert!(matches!(fast.rx.recv().await, Some(Msg::Next(_))));
    }

    #[tokio::test]
    async fn an_execution_that_cannot_start_is_one_error_then_nothing() {
        let groups = Groups::default();
        let (tx, start) = feed();
        let mut m = groups.join(key("q"), 4, false, start);
        let mut err = async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
            "unknown field",
            None,
        )]);
        err.data = async_graphql::Value::Null;
        tx.unbounded_send(err).unwrap();
        drop(tx);
        let Msg::Error(errors) = m.rx.recv().await.unwrap() else {
            panic!()
        };
        let errors: serde_json::Value = serde_json::from_slice(&errors).unwrap();
        assert_eq!(errors[0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
        assert!(m.rx.recv().await.is_none(), "no complete after an error");
        assert_eq!(groups.len(), 0);
    }

    #[tokio::test]
    async fn an_execution_that_ends_completes_every_member() {
        let groups = Groups::default();
        let (tx, start) = feed();
        let mut m = groups.join(key("q"), 4, false, start);
        tx.unbounded_send(response(1)).unwrap();
        drop(tx);
        assert!(matches!(m.rx.recv().await, Some(Msg::Next(_))));
        assert!(matches!(m.rx.recv().await, Some(Msg::Complete)));
        assert_eq!(groups.len(), 0);
    }
}
