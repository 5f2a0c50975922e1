//! The live homepage's doors: GraphQL subscriptions over WebSocket at `/graphql/ws`
//! (the `graphql-transport-ws` protocol GraphiQL and the `graphql-ws` client speak, [`ws`]) and
//! over Server-Sent Events at `/graphql/stream` (GraphQL over SSE, "distinct connections" mode,
//! [`sse`]), on both binaries.
//!
//! A subscription is admitted exactly like a request to `/graphql` (persisted lookup, token
//! count, parse, cost and depth limits, the rate-limit policies — each subscription is one
//! operation to them), then runs as a stream of the schema (`crate::graphql::subscription`),
//! fed by the fragment cache's change notices, which this instance's one bus consumer causes:
//! no queue per client. Subscribers of the same operation with the same view share one
//! execution ([`group`]): a change is reloaded and rendered once, and the same bytes reach every
//! one of them through a bounded queue each (on a plain WebSocket, straight into the socket when
//! it can take them at once: [`wire`]).
//!
//! [`Live`] is the process's part (the groups, the connection counts, the shutdown signal: it
//! outlives config reloads); [`LiveService`] is a stack's (the schema, the authenticator, the
//! limits of the running config).
//!
//! Bounds: connections in all, per client address and per user; subscriptions per connection;
//! `connection_init` within `subscriptions.init_timeout` (`4408`); keepalive pings; the message
//! size; a reader too slow for its queue is closed (`4413`); a token that expires closes its
//! socket (`4401`), one refused at `connection_init` too (`4403`). At shutdown every socket is
//! closed with `1001` after the messages already queued for it, and SSE streams end.

mod group;
mod multipart;
pub(crate) mod sse;
mod wire;
pub(crate) mod ws;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize},
    },
    time::Duration,
};

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use axum::{Router, routing::get};
use bytes::Bytes;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use serde_json::{Map, Value as Json};
use tokio::sync::{Notify, watch};

pub(crate) use group::{Groups, Member, Msg, WireMember};
pub(crate) use wire::Wire;

use crate::{
    auth::{Authenticator, Viewer},
    config::SubscriptionSettings,
    error::ErrorCode,
    graphql::{
        service::{GraphqlService, admit_live},
        subscription::{LoadBudget, SHARED_FIELDS},
    },
    ratelimit::{FailedAuth, LateLimits},
};

/// The process's part of the live doors: outlives config reloads.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) groups: Groups,
    counts: Mutex<Counts>,
    /// True once the process is shutting down: every connection closes.
    shutdown: watch::Sender<bool>,
    /// Signalled whenever a connection closes.
    closed: Notify,
    pub(crate) stats: LiveStats,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    per_user: HashMap<String, usize>,
}

/// Counters of the live doors (read by the metrics scrape and tests).
#[derive(Default)]
pub(crate) struct LiveStats {
    /// Connections open now, by transport.
    pub(crate) ws_open: AtomicUsize,
    pub(crate) sse_open: AtomicUsize,
    pub(crate) multipart_open: AtomicUsize,
    /// Subscriptions running now (on every connection).
    pub(crate) subscriptions: AtomicUsize,
    /// Messages written to subscribers (`next`, `error`, `complete`), ever.
    pub(crate) ws_messages: AtomicU64,
    pub(crate) sse_messages: AtomicU64,
    pub(crate) multipart_messages: AtomicU64,
    /// Connections refused or closed by a bound, by reason.
    pub(crate) refused: Mutex<HashMap<&'static str, u64>>,
}

impl LiveStats {
    pub(crate) fn refused(&self, reason: &'static str) {
        *self.refused.lock().entry(reason).or_default() += 1;
    }
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `subscriptions.max_connections`.
    Instance,
    /// `subscriptions.max_connections_per_address`.
    Address,
    /// `subscriptions.max_connections_per_user`.
    User,
}

impl Full {
    fn reason(self) -> &'static str {
        match self {
            Self::Instance => "max_connections",
            Self::Address => "max_connections_per_address",
            Self::User => "max_connections_per_user",
        }
    }

    pub(crate) fn message(self) -> String {
        format!(
            "too many subscription connections (subscriptions.{})",
            self.reason()
        )
    }

    /// The answer to the request refused for this, before any upgrade or stream: `503` when
    /// the instance is full, `429` for a client's own bounds.
    pub(crate) fn response(self, headers: &axum::http::HeaderMap) -> axum::response::Response {
        use axum::http::StatusCode;
        let (status, code) = match self {
            Self::Instance => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::BackendUnavailable,
            ),
            Self::Address | Self::User => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
        };
        crate::refusal::stage_refusal(true, headers, status, code, &self.message())
    }
}

/// One open connection's place in the counts; gives it back when dropped.
pub(crate) struct Slot {
    live: Arc<Live>,
    ip: IpAddr,
    user: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut c = self.live.counts.lock();
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_address.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_address.remove(&self.ip);
                }
            }
            if let Some(u) = &self.user
                && let Some(n) = c.per_user.get_mut(u)
            {
                *n -= 1;
                if *n == 0 {
                    c.per_user.remove(u);
                }
            }
        }
        self.live.closed.notify_waiters();
    }
}

impl Live {
    /// A place for a connection from `ip` (and `user`, when known), within `limits`.
    pub(crate) fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        user: Option<&str>,
        limits: &SubscriptionSettings,
    ) -> Result<Slot, Full> {
        let mut c = self.counts.lock();
        let full = if c.total >= limits.max_connections {
            Some(Full::Instance)
        } else if c.per_address.get(&ip).copied().unwrap_or(0) >= limits.max_connections_per_address
        {
            Some(Full::Address)
        } else if user.is_some_and(|u| {
            c.per_user.get(u).copied().unwrap_or(0) >= limits.max_connections_per_user
        }) {
            Some(Full::User)
        } else {
            None
        };
        if let Some(full) = full {
            drop(c);
            self.stats.refused(full.reason());
            return Err(full);
        }
        c.total += 1;
        *c.per_address.entry(ip).or_default() += 1;
        if let Some(u) = user {
            *c.per_user.entry(u.to_owned()).or_default() += 1;
        }
        Ok(Slot {
            live: self.clone(),
            ip,
            user: user.map(str::to_owned),
        })
    }

    /// Counts `slot`'s connection as `user`'s (known only after `connection_init`).
    pub(crate) fn claim_user(
        &self,
        slot: &mut Slot,
        user: &str,
        limits: &SubscriptionSettings,
    ) -> Result<(), Full> {
        if slot.user.as_deref() == Some(user) {
            return Ok(());
        }
        let mut c = self.counts.lock();
        // `connection_init` named another user than the upgrade's header: the connection is
        // that user's from now on.
        if let Some(previous) = slot.user.take()
            && let Some(n) = c.per_user.get_mut(&previous)
        {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&previous);
            }
        }
        let n = c.per_user.entry(user.to_owned()).or_default();
        if *n >= limits.max_connections_per_user {
            if *n == 0 {
                c.per_user.remove(user);
            }
            drop(c);
            self.stats.refused(Full::User.reason());
            return Err(Full::User);
        }
        *n += 1;
        slot.user = Some(user.to_owned());
        Ok(())
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.counts.lock().total
    }

    /// A receiver that turns true when the process starts shutting down.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Closes every connection (WebSockets with `1001` after what is queued for them; SSE
    /// streams end) and waits up to `within` for the last one to go.
    pub(crate) async fn shut_down(&self, within: Duration) {
        self.shutdown.send_replace(true);
        let _ = tokio::time::timeout(within, async {
            loop {
                let closed = self.closed.notified();
                if self.connections() == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await;
    }
}

/// The tokio instant of a Unix time in seconds, such as a token's `exp` (now, when it has
/// passed).
pub(crate) fn instant_of(unix_secs: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + Duration::from_secs(unix_secs).saturating_sub(now)
}

/// Sleeps until `at`, or forever without one.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `rx` (from [`Live::stopping`]) says the process is shutting down.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Joins admitted subscription operations to their shared executions: what every door needs
/// after admission (a stack's schema and limits over the process's groups).
pub(crate) struct Joiner {
    pub(crate) live: Arc<Live>,
    pub(crate) schema: Arc<dyn crate::graphql::GraphqlExecutor>,
    pub(crate) settings: SubscriptionSettings,
    /// Introspection is off: "Did you mean" suggestions are cut from errors.
    pub(crate) hide_suggestions: bool,
    /// `server.request_budget`: what one reload of a live row may take.
    pub(crate) budget: Duration,
}

/// Recovers the plain TCP socket under an upgraded connection (with the bytes read past the
/// upgrade request), or gives the connection back when it is not one (TLS). The server's
/// connection stage knows its own socket types and provides it.
pub(crate) type UpgradedTcp =
    fn(
        hyper::upgrade::Upgraded,
    ) -> Result<(tokio::net::TcpStream, Bytes), hyper::upgrade::Upgraded>;

/// A stack's part of the live doors.
pub(crate) struct LiveService {
    pub(crate) joiner: Arc<Joiner>,
    /// The GraphQL service whose admission subscriptions go through.
    pub(crate) graphql: Arc<GraphqlService>,
    /// Verifies a `connection_init` token.
    pub(crate) auth: Arc<Authenticator>,
    /// Counts refused `connection_init` tokens per address (`rate_limits.failed_auth`).
    pub(crate) failed_auth: Option<Arc<FailedAuth>>,
    pub(crate) settings: SubscriptionSettings,
    pub(crate) live: Arc<Live>,
    /// How `/graphql/ws` finds a plain socket under its upgrade ([`wire`]).
    pub(crate) upgraded_tcp: UpgradedTcp,
}

/// The doors' routes.
pub(crate) fn router(service: Arc<LiveService>) -> Router {
    Router::new()
        .route("/graphql/ws", get(ws::upgrade))
        .route("/graphql/stream", get(sse::get).post(sse::post))
        .with_state(service)
}

/// A subscription that could not start: a JSON array of GraphQL errors, and its first code.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) errors: Bytes,
}

impl Refusal {
    /// The refusal a JSON array of errors states (its first error's code; `INTERNAL` if none).
    pub(crate) fn from_errors(errors: Bytes) -> Self {
        let code = serde_json::from_slice::<Json>(&errors)
            .ok()
            .and_then(|e| {
                e.get(0)?
                    .get("extensions")?
                    .get("code")?
                    .as_str()
                    .and_then(ErrorCode::parse)
            })
            .unwrap_or(ErrorCode::Internal);
        Self { code, errors }
    }

    pub(crate) fn new(code: ErrorCode, message: &str) -> Self {
        let body = crate::refusal::error_body(code, message);
        let errors = serde_json::to_vec(&body["errors"]).unwrap_or_else(|_| b"[]".to_vec());
        Self {
            code,
            errors: Bytes::from(errors),
        }
    }

    /// The HTTP status of a door that answers it before streaming (SSE, multipart).
    pub(crate) fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self.code {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BackendUnavailable | ErrorCode::BackendTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// That answer: `{"errors": […]}` with its status.
    pub(crate) fn response(&self) -> axum::response::Response {
        use axum::{http::header, response::IntoResponse as _};
        let mut body = Vec::with_capacity(self.errors.len() + 12);
        body.extend_from_slice(b"{\"errors\":");
        body.extend_from_slice(&self.errors);
        body.push(b'}');
        let mut resp = (self.status(), body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        resp
    }
}

impl LiveService {
    /// Admits the operation `payload` describes (`query`, `operationName`, `variables`,
    /// `extensions`) for `viewer`, charging `late`, and joins (or starts) its execution.
    pub(crate) async fn subscribe(
        &self,
        viewer: Option<&Viewer>,
        late: Option<Arc<LateLimits>>,
        payload: Map<String, Json>,
    ) -> Result<Member, Refusal> {
        let request = self.admit(viewer, late, payload).await?;
        self.joiner.join(request, viewer)
    }

    /// [`LiveService::subscribe`] for subscription `sub` of the WebSocket `wire`.
    pub(crate) async fn subscribe_wire(
        &self,
        viewer: Option<&Viewer>,
        late: Option<Arc<LateLimits>>,
        payload: Map<String, Json>,
        wire: Arc<Wire>,
        sub: u64,
    ) -> Result<WireMember, Refusal> {
        let request = self.admit(viewer, late, payload).await?;
        let (key, start) = self.joiner.prepare(request, viewer)?;
        Ok(self
            .live
            .groups
            .join_wire(key, wire, sub, self.joiner.hide_suggestions, start))
    }

    /// Admits a subscription operation like a request to `/graphql`.
    async fn admit(
        &self,
        viewer: Option<&Viewer>,
        late: Option<Arc<LateLimits>>,
        payload: Map<String, Json>,
    ) -> Result<async_graphql::Request, Refusal> {
        // Every subscription is an operation to the client-keyed policies too: the connection
        // was charged once, each operation on it is charged again.
        if let Some(late) = &late
            && let Some(msg) = late.another_operation().await
        {
            return Err(Refusal::new(ErrorCode::RateLimited, &msg));
        }
        let op = admit_live(&self.graphql, viewer.cloned(), late, payload)
            .await
            .map_err(|r| {
                let (code, msg) = r.code_and_message();
                Refusal::new(code, &msg)
            })?;
        if op.op_type != "subscription" {
            return Err(Refusal::new(
                ErrorCode::GraphqlValidationFailed,
                "only subscription operations are served here; send queries and mutations to /graphql",
            ));
        }
        Ok(op.request)
    }
}

/// How a subscription's execution starts: the schema's stream of its responses.
type Start = Box<dyn FnOnce() -> BoxStream<'static, async_graphql::Response> + Send>;

impl Joiner {
    /// Joins the admitted subscription `request` of `viewer` to its execution (starting it
    /// when there is none).
    pub(crate) fn join(
        &self,
        request: async_graphql::Request,
        viewer: Option<&Viewer>,
    ) -> Result<Member, Refusal> {
        let (key, start) = self.prepare(request, viewer)?;
        Ok(self
            .live
            .groups
            .join(key, self.settings.buffer, self.hide_suggestions, start))
    }

    /// The group `request` of `viewer` belongs to, and how its execution starts.
    fn prepare(
        &self,
        mut request: async_graphql::Request,
        viewer: Option<&Viewer>,
    ) -> Result<(group::GroupKey, Start), Refusal> {
        let operation_name = request.operation_name.clone();
        let (field, named_args) = {
            let doc = request
                .parsed_query()
                .map_err(|e| Refusal::new(ErrorCode::GraphqlParseFailed, &e.message))?;
            root_field(doc, operation_name.as_deref()).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::GraphqlValidationFailed,
                    "a subscription selects exactly one root field",
                )
            })?
        };
        let shared = SHARED_FIELDS
            .iter()
            .any(|(f, arg)| *f == field && arg.is_none_or(|a| named_args.iter().any(|n| n == a)));
        let max_maturity = viewer.and_then(|v| v.max_maturity);
        let view = if shared {
            group::View::Shared { max_maturity }
        } else {
            group::View::Personal {
                user: viewer.map(|v| v.user_id.to_string()),
                token: viewer.and_then(|v| v.token.clone()),
                max_maturity,
            }
        };
        let key = group::GroupKey {
            query: Arc::from(request.query.as_str()),
            operation: request.operation_name.clone(),
            variables: serde_json::to_string(&request.variables).unwrap_or_default(),
            view,
        };
        let request = request.data(LoadBudget(self.budget));
        let schema = self.schema.clone();
        Ok((key, Box::new(move || schema.execute_stream(request))))
    }
}

/// The name of the one root field of `doc`'s operation `name` (fragments followed) and the
/// names of its arguments; `None` unless there is exactly one.
fn root_field(doc: &ExecutableDocument, name: Option<&str>) -> Option<(String, Vec<String>)> {
    fn collect<'d>(
        doc: &'d ExecutableDocument,
        set: &'d SelectionSet,
        out: &mut Vec<&'d async_graphql::parser::types::Field>,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => out.push(&f.node),
                Selection::FragmentSpread(s) => {
                    if let Some(fragment) = doc.fragments.get(&s.node.fragment_name.node) {
                        collect(doc, &fragment.node.selection_set.node, out, depth + 1);
                    }
                }
                Selection::InlineFragment(i) => {
                    collect(doc, &i.node.selection_set.node, out, depth + 1);
                }
            }
        }
    }
    let op = crate::graphql::analysis::operation(doc, name)?;
    let mut fields = Vec::new();
    collect(doc, &op.selection_set.node, &mut fields, 0);
    let [field] = fields.as_slice() else {
        return None;
    };
    Some((
        field.name.node.to_string(),
        field
            .arguments
            .iter()
            .map(|(n, _)| n.node.to_string())
            .collect(),
    ))
}

/// The credentials a `connection_init` payload carries, as an `Authorization` value: `token`
/// (the bare JWT), or an `Authorization` entry (`Bearer …`, any case; at the top or under
/// `headers`), as GraphiQL's and Apollo's clients send connection params. `Err` when one of them
/// is there but not a string.
pub(crate) fn init_token(payload: Option<&Map<String, Json>>) -> Result<Option<String>, ()> {
    let Some(payload) = payload else {
        return Ok(None);
    };
    let authorization = |m: &Map<String, Json>| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
    };
    let found = match payload.get("token") {
        Some(Json::String(t)) => return Ok(Some(format!("Bearer {t}"))),
        Some(_) => return Err(()),
        None => authorization(payload).or_else(|| {
            payload
                .get("headers")
                .and_then(Json::as_object)
                .and_then(authorization)
        }),
    };
    match found {
        None => Ok(None),
        Some(Json::String(a)) => Ok(Some(a)),
        Some(_) => Err(()),
    }
}
