//! gRPC clients (tonic): one lazily connected channel per backend, multiplexed over HTTP/2. Each
//! call carries the identity as metadata and its time limit as the gRPC deadline, and converts
//! protobuf messages into domain values here, so nothing above this module sees protobuf.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bff_schema::{
    catalog::v1::{self as pb_catalog, catalog_client::CatalogClient},
    recommendations::v1::{self as pb_recs, recommendations_client::RecommendationsClient},
};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use super::{BackendError, BackendId, CallContext, UpstreamInitError, rest::USER_ID_HEADER};
use crate::{
    config::BackendsSettings,
    domain::{Image, ImageKind, Recommendation, Title, TitleBatch, UserId},
};

/// Most ids one `BatchGetTitles` carries; the catalog rejects bigger batches (its default is 500).
const MAX_BATCH: usize = 500;

pub(super) struct GrpcClients {
    catalog: CatalogClient<Channel>,
    recommendations: RecommendationsClient<Channel>,
}

fn channel(settings: &BackendsSettings, b: BackendId) -> Result<Channel, UpstreamInitError> {
    let s = settings.get(b);
    let endpoint = tonic::transport::Endpoint::from_shared(s.url.clone()).map_err(|e| {
        UpstreamInitError::Url {
            backend: b,
            url: s.url.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(endpoint
        .connect_timeout(s.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

impl GrpcClients {
    pub(super) fn new(settings: &BackendsSettings) -> Result<Self, UpstreamInitError> {
        Ok(Self {
            catalog: CatalogClient::new(channel(settings, BackendId::Catalog)?),
            recommendations: RecommendationsClient::new(channel(
                settings,
                BackendId::Recommendations,
            )?),
        })
    }

    pub(super) async fn batch_get_titles(
        &self,
        cx: &CallContext,
        ids: &[String],
        timeout: Duration,
    ) -> Result<TitleBatch, BackendError> {
        let b = BackendId::Catalog;
        let mut out = TitleBatch {
            titles: HashMap::with_capacity(ids.len()),
            missing: Vec::new(),
        };
        // Chunks run one after another: a homepage's union is far below one batch, so this only
        // matters for unusual callers and keeps the catalog from seeing a burst of big calls.
        for chunk in ids.chunks(MAX_BATCH) {
            let msg = pb_catalog::BatchGetTitlesRequest {
                ids: chunk.to_vec(),
            };
            let req = request(cx, msg, timeout);
            let resp = self
                .catalog
                .clone()
                .batch_get_titles(req)
                .await
                .map_err(|s| status(b, &s))?;
            let resp = resp.into_inner();
            for t in resp.titles {
                let title = title_from_pb(t);
                out.titles.insert(title.id.clone(), Arc::new(title));
            }
            out.missing.extend(resp.missing_ids);
        }
        Ok(out)
    }

    pub(super) async fn recommendations(
        &self,
        cx: &CallContext,
        user: &UserId,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<Recommendation>, BackendError> {
        let b = BackendId::Recommendations;
        let msg = pb_recs::GetRecommendationsRequest {
            user_id: user.as_str().to_owned(),
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
        };
        let req = request(cx, msg, timeout);
        match self.recommendations.clone().get_recommendations(req).await {
            Ok(resp) => Ok(resp
                .into_inner()
                .items
                .into_iter()
                .map(|i| Recommendation {
                    title_id: i.title_id,
                    score: i.score,
                    reason: i.reason,
                })
                .collect()),
            Err(s) if s.code() == Code::NotFound => Ok(Vec::new()),
            Err(s) => Err(status(b, &s)),
        }
    }
}

fn request<T>(cx: &CallContext, msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    if let Some(user) = &cx.user {
        // A verified subject that is not valid ASCII metadata is simply not sent.
        if let Ok(v) = MetadataValue::try_from(user.as_str()) {
            req.metadata_mut().insert(USER_ID_HEADER, v);
        }
    }
    req
}

fn status(b: BackendId, s: &tonic::Status) -> BackendError {
    match s.code() {
        Code::DeadlineExceeded | Code::Cancelled => BackendError::Timeout { backend: b },
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown => BackendError::Unavailable {
            backend: b,
            reason: format!("{:?}: {}", s.code(), s.message()),
        },
        other => BackendError::Protocol {
            backend: b,
            reason: format!("{other:?}: {}", s.message()),
        },
    }
}

fn title_from_pb(t: pb_catalog::Title) -> Title {
    let images = t
        .images
        .into_iter()
        .filter_map(|i| {
            let kind = match pb_catalog::ImageKind::try_from(i.kind).ok()? {
                pb_catalog::ImageKind::Poster => ImageKind::Poster,
                pb_catalog::ImageKind::Backdrop => ImageKind::Backdrop,
                pb_catalog::ImageKind::Hero => ImageKind::Hero,
                pb_catalog::ImageKind::Unspecified => return None,
            };
            Some(Image {
                kind,
                width: u32::try_from(i.width).unwrap_or(0),
                height: u32::try_from(i.height).unwrap_or(0),
                url: i.url,
            })
        })
        .collect();
    Title {
        id: t.id,
        name: t.name,
        synopsis: t.synopsis,
        year: t.year,
        maturity_rating: t.maturity_rating,
        runtime_minutes: u32::try_from(t.runtime_minutes).unwrap_or(0),
        genres: t.genres,
        cast: t.cast,
        images,
    }
}
