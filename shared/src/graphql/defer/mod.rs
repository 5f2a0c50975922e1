//! `@defer` on the homepage: incremental delivery over `multipart/mixed`, in the format Apollo
//! Client 3 reads (`deferSpec=20220824`), the fast rows first. async-graphql 7 has no `@defer`;
//! this folder adds it without touching the engine's execution.
//!
//! **When.** A query whose rows defer fragments — `rows { kind heading ... @defer { items { … } }
//! }` (a row's items) or `rows { ... @defer { kind heading items { … } } }` (a whole row), inline
//! fragments or spreads, `if` defaulting to true, an optional `label` — sent with an `Accept`
//! that allows `multipart/mixed` ([`parts::accepted`]) is answered incrementally when
//! [`plan::plan`] finds a plan for it. Anywhere else (`@defer` elsewhere, two `homepage` fields,
//! a client that does not accept multipart, a batch) the directive is honoured by delivering the
//! fragment inline, as the incremental-delivery proposal allows: a plain JSON answer, the very
//! bytes the query without `@defer` gets. [`plan::check`] refuses what the engine's validation
//! does not know to (duplicate or variable labels, `@defer` on a mutation's root).
//!
//! **How.** The engine ignores directives on fragments ([`directive`] only declares `@defer`, so
//! documents validate and it shows in the SDL). The `homepage` resolver answers from
//! [`Prepared`] request data instead of composing the whole homepage:
//! 1. The first part executes the document as it is, with [`Prepared::first`]: the resolver
//!    starts the progressive composition (`compose::progressive`), waits for its first step
//!    (the row list; the region, profile and hero the first part needs) and hands the rest of
//!    it over. Every row is pending, so the answer is cut ([`parts::strip_pending`]) to what the
//!    rows show outside their deferred fragments. This execution also validates the whole
//!    document: a refused document is a plain JSON error, as without `@defer`.
//! 2. Each later part executes [`plan::Plan::later`] (the root cut to `homepage`, the
//!    directive still ignored) with [`Prepared::later`]: a homepage whose rows of this wave are
//!    complete. Each such row is cut out of the answer (`rows[i]`, restricted to each deferred
//!    fragment's keys) with its errors into an `incremental` entry at its path. A failed row's
//!    entry has `data: null` and its error (`BACKEND_UNAVAILABLE` / `BACKEND_TIMEOUT`, with
//!    `backend`); an empty row's has `items: []`: the first part listed it, so it keeps its place.
//!
//! The stream, its limits and metrics are the service's (`graphql::service`'s incremental
//! stage); the wire format is [`parts`].

pub(crate) mod directive;
pub(crate) mod parts;
pub(crate) mod plan;

use std::sync::Arc;

use futures::{StreamExt as _, stream::BoxStream};
use parking_lot::Mutex;

use crate::{
    compose::{
        Composer, Homepage, HomepageRequest, RequestContext,
        progressive::{FirstNeeds, Step},
    },
    error::ErrorCode,
};

/// Request data the `homepage` resolver answers from instead of composing (see the module
/// docs). Clones share one state: the service keeps one to take the composition back.
#[derive(Clone)]
pub(crate) struct Prepared(Arc<Inner>);

enum Inner {
    /// The first part: start the progressive composition; what it leaves lands in `started`.
    First {
        needs: FirstNeeds,
        started: Mutex<Option<Started>>,
    },
    /// A later part: this homepage, once.
    Later(Mutex<Option<Homepage>>),
}

/// A progressive composition after its first step.
pub(crate) struct Started {
    /// The first step's homepage (every row pending).
    pub(crate) base: Homepage,
    /// The steps still to come.
    pub(crate) rest: BoxStream<'static, Step>,
}

impl Prepared {
    /// For the first part, waiting for what `needs` names.
    pub(crate) fn first(needs: FirstNeeds) -> Self {
        Self(Arc::new(Inner::First {
            needs,
            started: Mutex::new(None),
        }))
    }

    /// For a later part, answering `home`.
    pub(crate) fn later(home: Homepage) -> Self {
        Self(Arc::new(Inner::Later(Mutex::new(Some(home)))))
    }

    /// The composition the first part started, once; `None` when the resolver never ran (the
    /// homepage was skipped, or its arguments refused): the answer is then complete.
    pub(crate) fn take_started(&self) -> Option<Started> {
        match &*self.0 {
            Inner::First { started, .. } => started.lock().take(),
            Inner::Later(_) => None,
        }
    }

    /// The homepage the resolver answers with.
    pub(crate) async fn homepage(
        &self,
        composer: &Composer,
        rq: &Arc<RequestContext>,
        req: &HomepageRequest,
    ) -> async_graphql::Result<Homepage> {
        let internal = || ErrorCode::Internal.error("internal error");
        match &*self.0 {
            Inner::First { needs, started } => {
                let mut rest = composer.homepage_progressive(rq.clone(), req.clone(), *needs);
                let Some(Step::First(base)) = rest.next().await else {
                    tracing::error!("the progressive homepage ended before its row list");
                    return Err(internal());
                };
                *started.lock() = Some(Started {
                    base: base.clone(),
                    rest,
                });
                Ok(base)
            }
            Inner::Later(home) => home.lock().take().ok_or_else(internal),
        }
    }
}
