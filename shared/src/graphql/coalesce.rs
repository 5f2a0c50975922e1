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

use super::http::Answer;

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

type Pending = Shared<BoxFuture<'static, Arc<Answer>>>;

/// The executions in flight, by key.
#[derive(Default)]
pub(crate) struct Coalescer {
    inflight: Arc<Mutex<HashMap<Key, Pending>>>,
}

impl Coalescer {
    /// The answer for `key`: the one already being made, or a new execution of `run` (spawned).
    /// The flag says whether this request shared another's execution.
    pub(crate) async fn answer(
        &self,
        key: Key,
        run: impl FnOnce() -> BoxFuture<'static, Answer>,
    ) -> (Arc<Answer>, bool) {
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
                    let pending: Pending = async move {
                        match task.await {
                            Ok(answer) => answer,
                            // The execution panicked: everyone waiting gets the internal error,
                            // and the key is free again.
                            Err(_) => {
                                table.lock().remove(&forget);
                                Arc::new(Answer::internal())
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
}
