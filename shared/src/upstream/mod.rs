//! Upstream calls: one client per backend (reqwest for REST, tonic for gRPC) behind one policy
//! layer that every call goes through, returning domain values.
//!
//! Owns: backend identity ([`BackendId`]), the error type of this boundary ([`BackendError`]), the
//! policy choke point ([`policy`]), the wire clients ([`rest`], [`grpc`]). Does not own caching or
//! composition (callers above decide what to ask for) nor GraphQL error mapping (`crate::error`).

mod error;
mod grpc;
mod policy;
pub mod resilience;
mod rest;

use std::{fmt, str::FromStr, sync::Arc};

pub use error::BackendError;
pub use policy::{CallKind, Policy};

use crate::{
    config::BackendsSettings,
    domain::{
        ContinueWatchingEntry, MyListEntry, NewRelease, Profile, Recommendation, Region,
        TitleBatch, Top10Entry, UserId,
    },
};

/// The backends, named as in config keys, metrics and the `backend` error extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendId {
    /// User profiles (REST).
    Profile,
    /// Playback positions (REST).
    ContinueWatching,
    /// The user's saved titles (REST, mutable).
    MyList,
    /// Top 10 per region (REST).
    Top10,
    /// New releases per region (REST).
    NewReleases,
    /// Title metadata (gRPC).
    Catalog,
    /// Personalized suggestions (gRPC).
    Recommendations,
}

impl BackendId {
    /// All backends.
    pub const ALL: [BackendId; 7] = [
        Self::Profile,
        Self::ContinueWatching,
        Self::MyList,
        Self::Top10,
        Self::NewReleases,
        Self::Catalog,
        Self::Recommendations,
    ];

    /// Config/metrics name, e.g. `continue_watching`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::ContinueWatching => "continue_watching",
            Self::MyList => "my_list",
            Self::Top10 => "top10",
            Self::NewReleases => "new_releases",
            Self::Catalog => "catalog",
            Self::Recommendations => "recommendations",
        }
    }

    /// The REST root path a service conventionally lives under (`/continue-watching`); `None` for gRPC.
    pub const fn rest_path(self) -> Option<&'static str> {
        match self {
            Self::Profile => Some("/profile"),
            Self::ContinueWatching => Some("/continue-watching"),
            Self::MyList => Some("/my-list"),
            Self::Top10 => Some("/top10"),
            Self::NewReleases => Some("/new-releases"),
            Self::Catalog | Self::Recommendations => None,
        }
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown backend `{s}`"))
    }
}

/// Who a call is made for; the identity header comes from here and nowhere else.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The verified user, for personalized calls.
    pub user: Option<UserId>,
}

impl CallContext {
    /// A call on behalf of `user`.
    pub fn for_user(user: &UserId) -> Self {
        Self {
            user: Some(user.clone()),
        }
    }
}

/// Why the upstream layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamInitError {
    /// A backend URL cannot be used.
    #[error("backend {backend}: invalid url `{url}`: {reason}")]
    Url {
        /// Which backend.
        backend: BackendId,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Every backend client, each call wrapped by the policy. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    rest: rest::RestClients,
    grpc: grpc::GrpcClients,
}

impl Upstream {
    /// Builds clients for every backend. gRPC channels connect lazily, so a backend that is down at
    /// start-up does not stop the BFF from starting.
    pub fn new(settings: &BackendsSettings) -> Result<Self, UpstreamInitError> {
        Ok(Self {
            inner: Arc::new(Inner {
                policy: Policy::new(settings),
                rest: rest::RestClients::new(settings)?,
                grpc: grpc::GrpcClients::new(settings)?,
            }),
        })
    }

    fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// `GET /profile/users/{id}`. `Ok(None)` when the service does not know the user.
    pub async fn profile(
        &self,
        cx: &CallContext,
        user: &UserId,
    ) -> Result<Option<Profile>, BackendError> {
        let b = BackendId::Profile;
        let path = format!("/users/{}", enc(user.as_str()));
        self.policy()
            .call(b, CallKind::Read, || {
                self.inner.rest.get_json::<Profile>(b, cx, &path, &[])
            })
            .await
    }

    /// `GET /continue-watching/users/{id}?limit=`; unknown user → empty.
    pub async fn continue_watching(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<ContinueWatchingEntry>, BackendError> {
        let b = BackendId::ContinueWatching;
        let path = format!("/users/{}", enc(user.as_str()));
        let limit = limit.to_string();
        let query = [("limit", limit.as_str())];
        let page: Option<rest::Items<ContinueWatchingEntry>> = self
            .policy()
            .call(b, CallKind::Read, || {
                self.inner.rest.get_json(b, cx, &path, &query)
            })
            .await?;
        Ok(page.map(|p| p.items).unwrap_or_default())
    }

    /// `GET /my-list/users/{id}`; unknown user → empty.
    pub async fn my_list(
        &self,
        cx: &CallContext,
        user: &UserId,
    ) -> Result<Vec<MyListEntry>, BackendError> {
        let b = BackendId::MyList;
        let path = format!("/users/{}", enc(user.as_str()));
        let page: Option<rest::Items<MyListEntry>> = self
            .policy()
            .call(b, CallKind::Read, || {
                self.inner.rest.get_json(b, cx, &path, &[])
            })
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
            .policy()
            .call(b, CallKind::Write, || {
                self.inner.rest.send_json(b, cx, method.clone(), &path)
            })
            .await?;
        Ok(answer.map(|a| a.added.or(a.removed).unwrap_or(false)))
    }

    /// `GET /top10/{region}`; unknown region → empty.
    pub async fn top10(
        &self,
        cx: &CallContext,
        region: &Region,
    ) -> Result<Vec<Top10Entry>, BackendError> {
        let b = BackendId::Top10;
        let path = format!("/{}", enc(region.as_str()));
        let page: Option<rest::Items<Top10Entry>> = self
            .policy()
            .call(b, CallKind::Read, || {
                self.inner.rest.get_json(b, cx, &path, &[])
            })
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
        let b = BackendId::NewReleases;
        let path = format!("/{}", enc(region.as_str()));
        let limit = limit.to_string();
        let query = [("limit", limit.as_str())];
        let page: Option<rest::Items<NewRelease>> = self
            .policy()
            .call(b, CallKind::Read, || {
                self.inner.rest.get_json(b, cx, &path, &query)
            })
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
        let b = BackendId::Catalog;
        self.policy()
            .call_with_deadline(b, CallKind::Read, |timeout| {
                self.inner.grpc.batch_get_titles(cx, ids, timeout)
            })
            .await
    }

    /// `recommendations.v1.Recommendations/GetRecommendations`; unknown user → empty.
    pub async fn recommendations(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<Recommendation>, BackendError> {
        let b = BackendId::Recommendations;
        self.policy()
            .call_with_deadline(b, CallKind::Read, |timeout| {
                self.inner.grpc.recommendations(cx, user, limit, timeout)
            })
            .await
    }
}

/// Percent-encodes one path segment so ids can never change the path.
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
