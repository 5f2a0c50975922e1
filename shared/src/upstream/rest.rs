//! REST clients (reqwest): one pooled client per backend, reused for the life of the process so
//! connections stay alive, calls spread over the backend's endpoints by its [`BackendPolicy`].
//! Statuses map to [`Failure`]s; 404 becomes `Ok(None)` because "this user/region has no data"
//! is an answer, not a failure.

use std::{sync::Arc, time::Duration};

use reqwest::header::{HOST, HeaderValue};
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    CallContext, USER_ID_HEADER, UpstreamInitError,
    discovery::{self, Transport},
    policy::{BackendPolicy, CallKind, Failure},
    resilience::http_probe,
};
use crate::{
    config::{BackendSettings, HealthCheckSettings},
    telemetry::metrics::Metrics,
    telemetry::trace::REQUEST_ID,
};

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

/// One REST endpoint: its base URL and, when the URL holds a resolved address instead of the
/// configured host name, the `Host` header to send.
#[derive(Debug, Clone)]
pub(crate) struct RestEndpoint {
    pub(crate) base: Arc<str>,
    pub(crate) host: Option<HeaderValue>,
}

impl RestEndpoint {
    /// The endpoint at `url` (trailing `/` dropped), keyed by its base as the balancer names it.
    pub(crate) fn keyed(url: &reqwest::Url, host: Option<HeaderValue>) -> (String, Self) {
        let base: Arc<str> = Arc::from(url.as_str().trim_end_matches('/'));
        (base.to_string(), Self { base, host })
    }
}

impl Transport for RestEndpoint {
    type Prober = reqwest::Client;

    fn at_address(
        url: &reqwest::Url,
        authority: &str,
        _: &BackendSettings,
    ) -> Option<(String, Self)> {
        Some(Self::keyed(url, HeaderValue::from_str(authority).ok()))
    }

    fn probe(
        &self,
        client: &reqwest::Client,
        check: &HealthCheckSettings,
    ) -> futures::future::BoxFuture<'static, bool> {
        // The probe path is relative to the endpoint's origin, not its API root.
        let origin = reqwest::Url::parse(&self.base)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let mut url = format!("{origin}{}", check.path);
        if url.is_empty() {
            url = self.base.to_string();
        }
        http_probe(client.clone(), url, check.timeout)
    }
}

/// One REST backend: its client and policy.
pub(crate) struct RestBackend {
    client: reqwest::Client,
    pub(crate) policy: BackendPolicy<RestEndpoint>,
    /// `forward_scopes` / `forward_token` of this backend.
    forward: (bool, bool),
    /// `max_response_bytes` of this backend.
    max_response: usize,
}

impl RestBackend {
    pub(crate) fn new(
        name: &str,
        s: &BackendSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<(Self, Vec<tokio::task::JoinHandle<()>>), UpstreamInitError> {
        let endpoints = super::configured_endpoints(name, s, |url| {
            let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
            Ok(RestEndpoint::keyed(&parsed, None))
        })?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(s.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("bff/", env!("CARGO_PKG_VERSION")));
        // `https://` backends: this backend's own CA instead of the system's, and a client
        // certificate when it asks for one.
        let tls_err = |path: &std::path::Path, e: &dyn std::fmt::Display| UpstreamInitError::Tls {
            backend: name.to_owned(),
            reason: format!("{}: {e}", path.display()),
        };
        if let Some(ca) = &s.tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| tls_err(ca, &e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| tls_err(ca, &e))?;
            client = client.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&s.tls.cert_file, &s.tls.key_file) {
            let mut pem = std::fs::read(cert).map_err(|e| tls_err(cert, &e))?;
            pem.extend(std::fs::read(key).map_err(|e| tls_err(key, &e))?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| tls_err(cert, &e))?;
            client = client.identity(identity);
        }
        let client = client.build()?;
        let backend = Self {
            client,
            policy: BackendPolicy::new(name, s, endpoints, metrics),
            forward: (s.forward_scopes, s.forward_token),
            max_response: s.max_response_bytes,
        };
        let tasks = discovery::start(&backend.policy, s, backend.client.clone());
        Ok((backend, tasks))
    }

    /// A request to `path` on `ep`, with identity and the resolved host's `Host` header.
    pub(crate) fn request(
        &self,
        ep: &RestEndpoint,
        cx: &CallContext,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, format!("{}{path}", ep.base));
        if let Some(host) = &ep.host {
            req = req.header(HOST, host.clone());
        }
        if let Some(user) = &cx.user {
            req = req.header(USER_ID_HEADER, user.as_str());
        }
        for (name, value) in cx.forwarded(self.forward.0, self.forward.1) {
            req = req.header(name, value);
        }
        if let Some(t) = &cx.trace {
            req = req
                .headers(t.trace.outgoing())
                .header(REQUEST_ID, t.request_id.as_ref());
        }
        req
    }

    /// A JSON call: reads are `GET` with `query` and may be retried; writes (`PUT`, `DELETE`…)
    /// are sent once.
    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        cx: &CallContext,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, Failure> {
        let kind = if method == reqwest::Method::GET {
            CallKind::Read
        } else {
            CallKind::Write
        };
        self.policy
            .call(kind, &cx.deadline, |ep, _| {
                let req = self
                    .request(&ep, cx, method.clone(), path)
                    .query(query)
                    .header(reqwest::header::ACCEPT, "application/json");
                async move { decode(req.send().await, self.max_response).await }
            })
            .await
    }
}

async fn decode<T: DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
    max: usize,
) -> Result<Option<T>, Failure> {
    let resp = sent.map_err(|e| transport(&e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Unavailable(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(Failure::Rejected(format!("HTTP {status}")));
    }
    let body = bounded_body(resp, max).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Failure::Rejected(format!("bad JSON: {e}")))
}

/// The body, read chunk by chunk and abandoned (the connection dropped) once it passes `max`
/// bytes, or refused at once when its declared length does: a backend answering far more than
/// any answer of its API is failing, and must not fill memory on the way.
async fn bounded_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::Unavailable(format!(
            "answer larger than {max} bytes (max_response_bytes); abandoned"
        ))
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn transport(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_builder() {
        // The request could not even be built (a header or URL we made is invalid): never sent,
        // so nothing is known about the backend.
        Failure::Rejected(crate::error::error_chain(e))
    } else {
        Failure::Transport(crate::error::error_chain(e))
    }
}
