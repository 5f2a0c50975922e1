//! REST clients (reqwest): one pooled client per backend, reused for the life of the process so
//! connections are kept alive, each with that backend's connect timeout. Statuses map to
//! [`BackendError`]; 404 becomes `Ok(None)` because "this user/region has no data" is an answer.

use std::collections::HashMap;

use serde::{Deserialize, de::DeserializeOwned};

use super::{BackendError, BackendId, CallContext, UpstreamInitError};
use crate::config::BackendsSettings;

/// The header carrying the verified user id to backends.
pub(crate) const USER_ID_HEADER: &str = "x-user-id";

/// `{"items": [...]}` pages the list endpoints answer with.
#[derive(Debug, Deserialize)]
pub(super) struct Items<T> {
    pub(super) items: Vec<T>,
}

/// Answer of `PUT`/`DELETE /my-list/...`.
#[derive(Debug, Deserialize)]
pub(super) struct MyListChange {
    pub(super) added: Option<bool>,
    pub(super) removed: Option<bool>,
}

struct RestBackend {
    client: reqwest::Client,
    base: String,
}

pub(super) struct RestClients {
    backends: HashMap<BackendId, RestBackend>,
}

impl RestClients {
    pub(super) fn new(settings: &BackendsSettings) -> Result<Self, UpstreamInitError> {
        let mut backends = HashMap::new();
        for b in BackendId::ALL
            .into_iter()
            .filter(|b| b.rest_path().is_some())
        {
            let s = settings.get(b);
            let url = reqwest::Url::parse(&s.url).map_err(|e| UpstreamInitError::Url {
                backend: b,
                url: s.url.clone(),
                reason: e.to_string(),
            })?;
            let client = reqwest::Client::builder()
                .connect_timeout(s.connect_timeout)
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .user_agent(concat!("bff/", env!("CARGO_PKG_VERSION")))
                .build()?;
            backends.insert(
                b,
                RestBackend {
                    client,
                    base: url.as_str().trim_end_matches('/').to_owned(),
                },
            );
        }
        Ok(Self { backends })
    }

    fn backend(&self, b: BackendId) -> Result<&RestBackend, BackendError> {
        self.backends.get(&b).ok_or_else(|| BackendError::Protocol {
            backend: b,
            reason: "not a REST backend".into(),
        })
    }

    fn request(
        &self,
        b: BackendId,
        cx: &CallContext,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let backend = self.backend(b)?;
        let mut req = backend
            .client
            .request(method, format!("{}{path}", backend.base))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(user) = &cx.user {
            req = req.header(USER_ID_HEADER, user.as_str());
        }
        Ok(req)
    }

    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        b: BackendId,
        cx: &CallContext,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, BackendError> {
        let req = self
            .request(b, cx, reqwest::Method::GET, path)?
            .query(query);
        decode(b, req.send().await).await
    }

    pub(super) async fn send_json<T: DeserializeOwned>(
        &self,
        b: BackendId,
        cx: &CallContext,
        method: reqwest::Method,
        path: &str,
    ) -> Result<Option<T>, BackendError> {
        let req = self.request(b, cx, method, path)?;
        decode(b, req.send().await).await
    }
}

async fn decode<T: DeserializeOwned>(
    b: BackendId,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Option<T>, BackendError> {
    let resp = sent.map_err(|e| transport(b, &e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(BackendError::Unavailable {
            backend: b,
            reason: format!("HTTP {status}"),
        });
    }
    if !status.is_success() {
        return Err(BackendError::Protocol {
            backend: b,
            reason: format!("HTTP {status}"),
        });
    }
    let body = resp.bytes().await.map_err(|e| transport(b, &e))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| BackendError::Protocol {
            backend: b,
            reason: format!("bad JSON: {e}"),
        })
}

fn transport(b: BackendId, e: &reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout { backend: b }
    } else {
        BackendError::Unavailable {
            backend: b,
            reason: error_chain(e),
        }
    }
}

/// `Display` of an error and its sources, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
