//! Identical requests answered once: concurrent queries that are the same in everything their
//! answer depends on — the method, the media type asked for, the query, the operation name, the
//! variables, the extensions, and the verified identity (subject, scopes, maturity ceiling) or its
//! absence — share one execution and one answer (`graphql.coalesce`). Requests that differ in any
//! of these never do; mutations never coalesce.
//!
//! The first request of a key runs the execution in a task of its own, so the answer is finished
//! for the others even if that first client goes away (the execution is bounded by
//! `graphql.timeout` like any other); the key is forgotten the moment the answer is ready, so a
//! request arriving later runs afresh (the fragment cache, not this, is what serves repeats).

use std::{collections::HashMap, sync::Arc};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use parking_lot::Mutex;

/// Everything an answer depends on. Compared in full (no hash-only key): two requests that
/// differ must never be able to share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) get: bool,
    pub(crate) graphql_response: bool,
    pub(crate) query: Arc<str>,
    pub(crate) operation: Option<String>,
    /// The variables as canonical JSON (keys sorted).
    pub(crate) variables: String,
    /// The extensions that change an answer (e.g. `cost`), as canonical JSON.
    pub(crate) extensions: String,
    /// Subject, scopes and maturity ceiling of the verified viewer; `None` for anonymous.
    pub(crate) viewer: Option<(String, String, Option<u8>)>,
}

type Pending<A> = Shared<BoxFuture<'static, Arc<A>>>;

/// The executions in flight, by key, each making an answer `A` (the service's; this module
/// knows only that it is shared).
pub(crate) struct Coalescer<A> {
    inflight: Arc<Mutex<HashMap<Key, Pending<A>>>>,
    /// The answer of an execution that panicked.
    internal: fn() -> A,
}

impl<A: Send + Sync + 'static> Coalescer<A> {
    /// No execution in flight; a panicking one answers `internal()` to everyone waiting on it.
    pub(crate) fn new(internal: fn() -> A) -> Self {
        Self {
            inflight: Arc::default(),
            internal,
        }
    }

    /// The answer for `key`: the one already being made, or a new execution of `run` (spawned).
    /// The flag says whether this request shared another's execution.
    pub(crate) async fn answer(
        &self,
        key: Key,
        run: impl FnOnce() -> BoxFuture<'static, A>,
    ) -> (Arc<A>, bool) {
        let (pending, shared) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(p) => (p.clone(), true),
                None => {
                    let fut = run();
                    let (table, forget) = (self.inflight.clone(), key.clone());
                    let task = tokio::spawn(async move {
                        let answer = Arc::new(fut.await);
                        table.lock().remove(&forget);
                        answer
                    });
                    let (table, forget) = (self.inflight.clone(), key.clone());
                    let internal = self.internal;
                    let pending: Pending<A> = async move {
                        match task.await {
                            Ok(answer) => answer,
                            // The execution panicked: everyone waiting gets the internal error,
                            // and the key is free again.
                            Err(_) => {
                                table.lock().remove(&forget);
                                Arc::new(internal())
                            }
                        }
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, pending.clone());
                    (pending, false)
                }
            }
        };
        (pending.await, shared)
    }

    /// Executions in flight (tests and metrics).
    #[cfg(test)]
    #[allow(dead_code)] // no test reads it yet; `clippy -D warnings` must stay clean
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    fn key(query: &str, viewer: Option<&str>) -> Key {
        Key {
            get: false,
            graphql_response: true,
            query: Arc::from(query),
            operation: None,
            variables: String::new(),
            extensions: "{}".into(),
            viewer: viewer.map(|v| (v.to_owned(), String::new(), None)),
        }
    }

    /// Runs `n` requests of `key`s at once while a gate holds every execution; counts executions.
    /// What the tests' executions answer (the service's answer type is not needed here).
    type Answer = &'static str;
    const INTERNAL: fn() -> Answer = || "internal";

    async fn run_all(c: &Arc<Coalescer<Answer>>, keys: Vec<Key>) -> (usize, usize) {
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for k in keys {
            let (c, runs, gate) = (c.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.answer(k, move || {
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        "answered"
                    }
                    .boxed()
                })
                .await
            }));
        }
        // The test runtime has one thread: yielding lets every request task run until it waits
        // on an execution, so all have joined or started one before the gate opens.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let in_flight = c.in_flight();
        gate.notify_waiters();
        let mut shared = 0;
        for t in tasks {
            let (answer, was_shared) = t.await.unwrap();
            assert_eq!(*answer, "answered");
            shared += usize::from(was_shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), in_flight);
        (in_flight, shared)
    }

    #[tokio::test]
    async fn identical_requests_share_one_execution_and_different_ones_never() {
        let c = Arc::new(Coalescer::new(INTERNAL));
        let (runs, shared) = run_all(&c, vec![key("{ a }", None); 16]).await;
        assert_eq!((runs, shared), (1, 15));
        assert_eq!(c.in_flight(), 0, "the key is forgotten once answered");

        // Two users, anonymous vs signed-in, another query: four executions.
        let keys = vec![
            key("{ a }", Some("u1")),
            key("{ a }", Some("u1")),
            key("{ a }", Some("u2")),
            key("{ a }", None),
            key("{ b }", None),
        ];
        let (runs, shared) = run_all(&c, keys).await;
        assert_eq!((runs, shared), (4, 1));
    }

    #[tokio::test]
    async fn a_panicking_execution_answers_internal_and_frees_its_key() {
        let c = Coalescer::new(INTERNAL);
        let boom = || -> Answer { panic!("boom") };
        let (answer, _) = c
            .answer(key("{ a }", None), move || async move { boom() }.boxed())
            .await;
        assert_eq!(*answer, "internal");
        assert_eq!(c.in_flight(), 0);
    }
}
