//! gRPC clients (tonic): one lazily connected channel per endpoint, multiplexed over HTTP/2,
//! calls spread over endpoints by the backend's [`BackendPolicy`]. Each attempt carries the
//! identity as metadata and its time limit as the gRPC deadline. Protobuf messages become domain
//! values here, so nothing above this module sees protobuf.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bff_schema::{
    catalog::v1 as pb_catalog,
    recommendations::v1::{self as pb_recs, recommendations_client::RecommendationsClient},
};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use super::{
    CallContext, USER_ID_HEADER, UpstreamInitError,
    discovery::{self, Transport},
    policy::{BackendPolicy, CallKind, Failure},
    resilience::grpc_probe,
    titles_codec::TitlesCodec,
};
use crate::{
    config::{BackendSettings, HealthCheckSettings},
    domain::{Recommendation, Title, TitleBatch, UserId},
    telemetry::metrics::Metrics,
    telemetry::trace::{MetadataInjector, REQUEST_ID},
};

/// Most ids one `BatchGetTitles` carries; the catalog rejects bigger batches (its default is 500).
const MAX_BATCH: usize = 500;

/// One gRPC backend: a channel per endpoint and the policy.
pub(crate) struct GrpcBackend {
    pub(crate) policy: BackendPolicy<Channel>,
    /// `forward_scopes` / `forward_token` of this backend.
    forward: (bool, bool),
}

/// A lazily connecting channel to `url`, announcing `origin` as its authority when the URL holds
/// a resolved address instead of the configured host name.
pub(crate) fn channel(
    url: &str,
    origin: Option<&str>,
    s: &BackendSettings,
) -> Result<Channel, String> {
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string())?;
    if let Some(origin) = origin {
        endpoint = endpoint.origin(
            origin
                .parse()
                .map_err(|e: http::uri::InvalidUri| e.to_string())?,
        );
    }
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls(url, origin, s)?)
            .map_err(|e| e.to_string())?;
    }
    Ok(endpoint
        .connect_timeout(s.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// TLS for an `https://` gRPC endpoint: the backend's CA (else the system's roots), its client
/// certificate, and the configured host name as the server name even when the URL holds a
/// resolved address.
fn client_tls(
    url: &str,
    origin: Option<&str>,
    s: &BackendSettings,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new();
    match &s.tls.ca_file {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls = tls.with_enabled_roots(),
    }
    if let (Some(cert), Some(key)) = (&s.tls.cert_file, &s.tls.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    let host = origin
        .and_then(|o| o.parse::<http::Uri>().ok())
        .or_else(|| url.parse::<http::Uri>().ok())
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
    if let Some(host) = host {
        tls = tls.domain_name(host);
    }
    Ok(tls)
}

impl Transport for Channel {
    /// The `grpc.health.v1` service name to check.
    type Prober = String;

    fn at_address(
        url: &reqwest::Url,
        authority: &str,
        s: &BackendSettings,
    ) -> Option<(String, Self)> {
        let label = url.as_str().trim_end_matches('/').to_owned();
        let origin = format!("{}://{authority}", url.scheme());
        let ch = channel(&label, Some(&origin), s).ok()?;
        Some((label, ch))
    }

    fn probe(
        &self,
        service: &String,
        check: &HealthCheckSettings,
    ) -> futures::future::BoxFuture<'static, bool> {
        grpc_probe(self.clone(), service.clone(), check.timeout)
    }
}

impl GrpcBackend {
    pub(crate) fn new(
        name: &str,
        s: &BackendSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<(Self, Vec<tokio::task::JoinHandle<()>>), UpstreamInitError> {
        let endpoints = super::configured_endpoints(name, s, |url| {
            Ok((url.to_owned(), channel(url, None, s)?))
        })?;
        let backend = Self {
            policy: BackendPolicy::new(name, s, endpoints, metrics),
            forward: (s.forward_scopes, s.forward_token),
        };
        let tasks = discovery::start(&backend.policy, s, s.health_check.grpc_service.clone());
        Ok((backend, tasks))
    }

    pub(super) async fn batch_get_titles(
        &self,
        cx: &CallContext,
        ids: &[String],
    ) -> Result<TitleBatch, Failure> {
        let mut out = TitleBatch {
            titles: HashMap::with_capacity(ids.len()),
        };
        // Chunks run one after another: a homepage's union is far below one batch, so this only
        // matters for unusual callers and keeps the catalog from seeing a burst of big calls.
        for chunk in ids.chunks(MAX_BATCH) {
            let titles = self
                .policy
                .call(CallKind::Read, &cx.deadline, |ch, timeout| {
                    let req = request(
                        cx,
                        pb_catalog::BatchGetTitlesRequest {
                            ids: chunk.to_vec(),
                        },
                        timeout,
                        self.forward,
                    );
                    async move { batch_get_titles(ch, req).await.map_err(|s| status(&s)) }
                })
                .await?
                .into_inner();
            for title in titles {
                out.titles.insert(title.id.clone(), Arc::new(title));
            }
        }
        Ok(out)
    }

    pub(super) async fn recommendations(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<Recommendation>, Failure> {
        let msg = pb_recs::GetRecommendationsRequest {
            user_id: user.as_str().to_owned(),
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
        };
        let answer = self
            .policy
            .call(CallKind::Read, &cx.deadline, |ch, timeout| {
                let req = request(cx, msg.clone(), timeout, self.forward);
                async move {
                    match RecommendationsClient::new(ch)
                        .get_recommendations(req)
                        .await
                    {
                        Ok(resp) => Ok(Some(resp.into_inner())),
                        // An unknown user simply has no recommendations.
                        Err(s) if s.code() == Code::NotFound => Ok(None),
                        Err(s) => Err(status(&s)),
                    }
                }
            })
            .await?;
        Ok(answer
            .map(|a| a.items)
            .unwrap_or_default()
            .into_iter()
            .map(|i| Recommendation {
                title_id: i.title_id,
                score: i.score,
                reason: i.reason,
            })
            .collect())
    }
}

/// `catalog.v1.Catalog/BatchGetTitles`, as the generated client sends it, with the answer decoded
/// by [`TitlesCodec`] straight into domain titles.
async fn batch_get_titles(
    ch: Channel,
    req: tonic::Request<pb_catalog::BatchGetTitlesRequest>,
) -> Result<tonic::Response<Vec<Title>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let mut req = req;
    req.extensions_mut().insert(tonic::GrpcMethod::new(
        "catalog.v1.Catalog",
        "BatchGetTitles",
    ));
    grpc.unary(
        req,
        http::uri::PathAndQuery::from_static("/catalog.v1.Catalog/BatchGetTitles"),
        TitlesCodec,
    )
    .await
}

fn request<T>(
    cx: &CallContext,
    msg: T,
    timeout: Duration,
    (scopes, token): (bool, bool),
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    if let Some(user) = &cx.user {
        // A verified subject that is not valid ASCII metadata is simply not sent.
        if let Ok(v) = MetadataValue::try_from(user.as_str()) {
            req.metadata_mut().insert(USER_ID_HEADER, v);
        }
    }
    for (name, value) in cx.forwarded(scopes, token) {
        if let Ok(v) = MetadataValue::try_from(value.as_str()) {
            req.metadata_mut().insert(name, v);
        }
    }
    if let Some(t) = &cx.trace {
        let md = req.metadata_mut();
        t.trace.inject(&mut MetadataInjector(md));
        if let Ok(v) = MetadataValue::try_from(t.request_id.as_ref()) {
            md.insert(REQUEST_ID, v);
        }
    }
    req
}

fn status(s: &tonic::Status) -> Failure {
    let detail = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::DeadlineExceeded | Code::Cancelled => Failure::Timeout,
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown => Failure::Unavailable(detail),
        _ => Failure::Rejected(detail),
    }
}
