//! Shared executions: subscribers of the same operation who must see the same thing — the same
//! document, operation name and variables, and the same view (the same viewer and token for a
//! personal row; only the same maturity ceiling for a title or a named region's top 10) — share
//! ONE execution of it. Its responses are classified, serialized once and handed to every
//! member as the same bytes; 10,000 phones watching the US top 10 cost one reload and one
//! rendering per change, not 10,000.
//!
//! Each member has a bounded queue (`subscriptions.buffer` messages). A member whose queue is
//! full when a message is handed out is dropped from the group and marked slow: its connection
//! closes it with a code (`4413`, or an SSE error event) instead of letting it grow the process.
//! A group ends when its last member leaves (its execution is dropped with it) or when its
//! execution ends.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::graphql::errors::{Outcome, classify};

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

struct Seated {
    tx: mpsc::Sender<Msg>,
    slow: Arc<AtomicBool>,
}

struct Group {
    key: GroupKey,
    registry: Weak<GroupsInner>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    members: HashMap<u64, Seated>,
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
    fn fan_out(&self, msg: &Msg) -> usize {
        let mut st = self.state.lock();
        if let Msg::Next(bytes) = msg {
            st.last = Some(bytes.clone());
        }
        let mut slow = Vec::new();
        for (id, m) in &st.members {
            match m.tx.try_send(msg.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    m.slow.store(true, Ordering::Relaxed);
                    slow.push(*id);
                }
                // Its connection is gone; its seat leaves on its own.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in &slow {
            // Dropping the sender ends the member's queue after what it holds.
            st.members.remove(id);
        }
        slow.len()
    }
}

/// Every group of this instance.
pub(crate) struct Groups {
    inner: Arc<GroupsInner>,
}

struct GroupsInner {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    next_id: AtomicU64,
    /// Members dropped as too slow, ever.
    slow: AtomicU64,
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
                slow: AtomicU64::new(0),
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
                let _ = tx.try_send(Msg::Next(last.clone()));
            }
            st.members.insert(
                id,
                Seated {
                    tx,
                    slow: slow.clone(),
                },
            );
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
        Member {
            rx,
            slow,
            _seat: Seat { group, id },
        }
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
        let dropped = g.fan_out(&msg);
        if dropped > 0
            && let Some(reg) = registry.upgrade()
        {
            reg.slow.fetch_add(dropped as u64, Ordering::Relaxed);
        }
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
            let _ = m.tx.try_send(Msg::Complete);
        }
    }
    st.members.clear();
}
