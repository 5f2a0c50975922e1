//! Upstream calls: one client per backend (reqwest for REST, tonic for gRPC) behind one policy
//! layer that every call goes through, returning domain values.
//!
//! Owns: backend identity ([`BackendId`]), the error type of this boundary ([`BackendError`]), the
//! policy choke point ([`policy`]), the wire clients ([`rest`], [`grpc`]). Does not own caching or
//! composition (callers above decide what to ask for) nor GraphQL error mapping (`crate::error`).

mod deadline;
mod discovery;
mod error;
mod grpc;
pub(crate) mod policy;
pub mod resilience;
pub(crate) mod rest;
mod titles_codec;

use std::{collections::HashMap, sync::Arc};

pub use crate::config::BackendId;
pub use deadline::Deadline;
pub use error::BackendError;
use policy::Failure;
pub use policy::{BackendStatus, CallKind};

use crate::{
    config::BackendsSettings,
    domain::{
        ContinueWatchingEntry, MyListEntry, NewRelease, Profile, Recommendation, Region,
        TitleBatch, Top10Entry, UserId,
    },
    telemetry::metrics::Metrics,
};

/// Who a call is made for and until when; the identity header comes from here and nowhere else.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The verified user, for personalized calls.
    pub user: Option<UserId>,
    /// When the call must be done by (the request's budget, or the latest of the budgets of the
    /// requests sharing a load); every attempt gets at most the time left.
    pub deadline: Deadline,
    /// The request's trace: every attempt sends `traceparent`/`tracestate` and `x-request-id`.
    pub trace: Option<Arc<crate::telemetry::RequestTrace>>,
    /// The viewer's verified scopes (space separated), for backends that get them
    /// (`forward_scopes`); only on calls made for the viewer.
    pub scopes: Option<Arc<str>>,
    /// The viewer's bearer token as received, for backends that get it (`forward_token`).
    pub token: Option<Arc<str>>,
}

/// The header carrying the verified user id to backends (REST header, gRPC metadata).
pub(crate) const USER_ID_HEADER: &str = "x-user-id";

/// The header carrying the verified scopes to backends that ask for them.
pub(crate) const SCOPES_HEADER: &str = "x-user-scopes";

impl CallContext {
    /// A call made for `subject` (`None`: shared data, no identity at all).
    pub(crate) fn for_subject(
        subject: Option<crate::domain::Subject>,
        deadline: Deadline,
        trace: Option<Arc<crate::telemetry::RequestTrace>>,
    ) -> Self {
        match subject {
            Some(s) => Self {
                user: Some(s.user),
                deadline,
                trace,
                scopes: s.scopes,
                token: s.token,
            },
            None => Self {
                user: None,
                deadline,
                trace,
                scopes: None,
                token: None,
            },
        }
    }

    /// The identity headers a backend gets besides `x-user-id`: scopes and the token, each only
    /// when the backend is configured for it.
    pub(crate) fn forwarded(&self, scopes: bool, token: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if scopes && let Some(s) = &self.scopes {
            out.push((SCOPES_HEADER, s.to_string()));
        }
        if token && let Some(t) = &self.token {
            out.push(("authorization", format!("Bearer {t}")));
        }
        out
    }
}

/// Why the upstream layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamInitError {
    /// A backend URL cannot be used.
    #[error("backend {backend}: invalid url `{url}`: {reason}")]
    Url {
        /// Which backend.
        backend: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A backend's TLS files are unusable.
    #[error("backend {backend}: TLS: {reason}")]
    Tls {
        /// Which backend.
        backend: String,
        /// Which file and why.
        reason: String,
    },
}

/// One endpoint per configured URL of backend `name`, each keyed as the balancer names it; an
/// unusable URL is an [`UpstreamInitError::Url`] naming the backend and the URL.
fn configured_endpoints<E>(
    name: &str,
    s: &crate::config::BackendSettings,
    make: impl Fn(&str) -> Result<(String, E), String>,
) -> Result<Vec<(String, E)>, UpstreamInitError> {
    s.endpoint_urls()
        .into_iter()
        .map(|url| {
            make(&url).map_err(|reason| UpstreamInitError::Url {
                backend: name.to_owned(),
                url,
                reason,
            })
        })
        .collect()
}

/// Every backend client, each call wrapped by its backend's policy. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    rest: HashMap<String, Arc<rest::RestBackend>>,
    catalog: grpc::GrpcBackend,
    recommendations: grpc::GrpcBackend,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn err(backend: BackendId, f: Failure) -> BackendError {
    match f {
        Failure::Timeout => BackendError::Timeout { backend },
        Failure::Transport(reason) | Failure::Unavailable(reason) => {
            BackendError::Unavailable { backend, reason }
        }
        Failure::Open => BackendError::Unavailable {
            backend,
            reason: "circuit breaker open".into(),
        },
        Failure::Overloaded => BackendError::Unavailable {
            backend,
            reason: "concurrency limit reached".into(),
        },
        Failure::Rejected(reason) | Failure::Client(reason) => {
            BackendError::Protocol { backend, reason }
        }
    }
}

impl Upstream {
    /// Builds clients for every backend (and every route backend). gRPC channels connect lazily,
    /// so a backend that is down at start-up does not stop the BFF from starting.
    pub fn new(
        settings: &BackendsSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, UpstreamInitError> {
        let mut tasks = Vec::new();
        let mut rest = HashMap::new();
        let named = BackendId::ALL
            .into_iter()
            .filter(|b| b.rest_path().is_some())
            .map(|b| (b.name().to_owned(), settings.get(b)));
        for (name, s) in named.chain(settings.extra.iter().map(|(n, s)| (n.clone(), s))) {
            let (backend, t) = rest::RestBackend::new(&name, s, metrics.clone())?;
            tasks.extend(t);
            rest.insert(name, Arc::new(backend));
        }
        let (catalog, t) = grpc::GrpcBackend::new(
            BackendId::Catalog.name(),
            settings.get(BackendId::Catalog),
            metrics.clone(),
        )?;
        tasks.extend(t);
        let (recommendations, t) = grpc::GrpcBackend::new(
            BackendId::Recommendations.name(),
            settings.get(BackendId::Recommendations),
            metrics.clone(),
        )?;
        tasks.extend(t);
        Ok(Self {
            inner: Arc::new(Inner {
                rest,
                catalog,
                recommendations,
                tasks,
            }),
        })
    }

    fn rest(&self, b: BackendId) -> Result<&rest::RestBackend, BackendError> {
        self.inner
            .rest
            .get(b.name())
            .map(AsRef::as_ref)
            .ok_or_else(|| BackendError::Protocol {
                backend: b,
                reason: "not a REST backend".into(),
            })
    }

    /// A REST backend by name (pass-through routes).
    pub(crate) fn rest_by_name(&self, name: &str) -> Option<Arc<rest::RestBackend>> {
        self.inner.rest.get(name).cloned()
    }

    /// State of every backend, for `/readyz` and metrics.
    pub fn status(&self) -> Vec<BackendStatus> {
        let mut out: Vec<BackendStatus> = self
            .inner
            .rest
            .values()
            .map(|b| b.policy.status())
            .collect();
        out.push(self.inner.catalog.policy.status());
        out.push(self.inner.recommendations.policy.status());
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        b: BackendId,
        cx: &CallContext,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, BackendError> {
        self.rest(b)?
            .json(cx, reqwest::Method::GET, path, query)
            .await
            .map_err(|f| err(b, f))
    }

    /// `GET /profile/users/{id}`. `Ok(None)` when the service does not know the user.
    pub async fn profile(
        &self,
        cx: &CallContext,
        user: &UserId,
    ) -> Result<Option<Profile>, BackendError> {
        self.get(
            BackendId::Profile,
            cx,
            &format!("/users/{}", enc(user.as_str())),
            &[],
        )
        .await
    }

    /// `GET /continue-watching/users/{id}?limit=`; unknown user → empty.
    pub async fn continue_watching(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<ContinueWatchingEntry>, BackendError> {
        let path = format!("/users/{}", enc(user.as_str()));
        let page: Option<rest::Items<_>> = self
            .get(
                BackendId::ContinueWatching,
                cx,
                &path,
                &[("limit", &limit.to_string())],
            )
            .await?;
        Ok(page.map(|p| p.items).unwrap_or_default())
    }

    /// `GET /my-list/users/{id}`; unknown user → empty.
    pub async fn my_list(
        &self,
        cx: &CallContext,
        user: &UserId,
    ) -> Result<Vec<MyListEntry>, BackendError> {
        let page: Option<rest::Items<_>> = self
            .get(
                BackendId::MyList,
                cx,
                &format!("/users/{}", enc(user.as_str())),
                &[],
            )
            .await?;
        Ok(page.map(|p| p.items).unwrap_or_default())
    }

    /// `PUT` (add) or `DELETE` (remove) `/my-list/users/{id}/titles/{titleId}`. Never retried.
    /// `Ok(None)` when the user or title is unknown, else whether the list changed.
    pub async fn set_in_my_list(
        &self,
        cx: &CallContext,
        user: &UserId,
        title_id: &str,
        present: bool,
    ) -> Result<Option<bool>, BackendError> {
        let b = BackendId::MyList;
        let path = format!("/users/{}/titles/{}", enc(user.as_str()), enc(title_id));
        let method = if present {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let answer: Option<rest::MyListChange> = self
            .rest(b)?
            .json(cx, method, &path, &[])
            .await
            .map_err(|f| err(b, f))?;
        Ok(answer.map(|a| a.added.or(a.removed).unwrap_or(false)))
    }

    /// `GET /top10/{region}`; unknown region → empty.
    pub async fn top10(
        &self,
        cx: &CallContext,
        region: &Region,
    ) -> Result<Vec<Top10Entry>, BackendError> {
        let page: Option<rest::Items<_>> = self
            .get(
                BackendId::Top10,
                cx,
                &format!("/{}", enc(region.as_str())),
                &[],
            )
            .await?;
        Ok(page.map(|p| p.items).unwrap_or_default())
    }

    /// `GET /new-releases/{region}?limit=`; unknown region → empty.
    pub async fn new_releases(
        &self,
        cx: &CallContext,
        region: &Region,
        limit: usize,
    ) -> Result<Vec<NewRelease>, BackendError> {
        let path = format!("/{}", enc(region.as_str()));
        let page: Option<rest::Items<_>> = self
            .get(
                BackendId::NewReleases,
                cx,
                &path,
                &[("limit", &limit.to_string())],
            )
            .await?;
        Ok(page.map(|p| p.items).unwrap_or_default())
    }

    /// `catalog.v1.Catalog/BatchGetTitles` for `ids` (callers de-duplicate; empty → no call).
    pub async fn titles(
        &self,
        cx: &CallContext,
        ids: &[String],
    ) -> Result<TitleBatch, BackendError> {
        if ids.is_empty() {
            return Ok(TitleBatch::default());
        }
        self.inner
            .catalog
            .batch_get_titles(cx, ids)
            .await
            .map_err(|f| err(BackendId::Catalog, f))
    }

    /// `recommendations.v1.Recommendations/GetRecommendations`; unknown user → empty.
    pub async fn recommendations(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<Recommendation>, BackendError> {
        self.inner
            .recommendations
            .recommendations(cx, user, limit)
            .await
            .map_err(|f| err(BackendId::Recommendations, f))
    }
}

/// Percent-encodes one path segment so ids can never change the path.
fn enc(segment: &str) -> String {
    crate::escape::percent_encode(segment, b"~")
}
