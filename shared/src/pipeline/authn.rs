//! The authentication stage: the request's bearer token — or, with `tls.client_cert_identity` and
//! no token, the subject of its verified client certificate (service clients) — becomes a verified
//! viewer on the request's extensions as an [`Identity`], or the request is anonymous. A token that does not verify is refused here (`401` with `WWW-Authenticate`; two
//! `Authorization` headers `400`) — never silently anonymous — so nothing below ever sees an
//! unverified identity. What a viewer may do is decided further down (scopes, claims).
//!
//! Failures are counted per client address (`rate_limits.failed_auth`); once an address is over
//! that limit, a request presenting an `Authorization` header is refused with `429` before its
//! token is parsed or any key set is consulted, so a flood of forged tokens costs no
//! verification work. Requests without credentials are never refused by it: anonymous traffic
//! is the rate-limit policies' business.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::Response,
};

use super::client_addr::ClientAddr;
use crate::{
    auth::{AuthError, Authenticator, ClientCert, Identity},
    error::ErrorCode,
    refusal::stage_refusal,
};

/// The stage's state: the verifier, and whether refusals are GraphQL answers (negotiated by
/// `Accept`) or plain JSON errors (pass-through routes).
#[derive(Clone)]
pub(crate) struct Authn {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) graphql: bool,
    /// `tls.client_cert_identity`: a verified client certificate without a token is a viewer.
    pub(crate) client_cert_identity: bool,
    /// `rate_limits.failed_auth`, when on.
    pub(crate) failed_auth: Option<Arc<crate::ratelimit::FailedAuth>>,
}

/// The middleware.
pub(crate) async fn authenticate(
    State(stage): State<Authn>,
    mut req: Request,
    next: Next,
) -> Response {
    // The client-address stage runs first on every request; without it (an in-process router)
    // the request is from nowhere in particular.
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0);
    let presents_token = req.headers().contains_key(header::AUTHORIZATION);
    if presents_token
        && let Some(limit) = &stage.failed_auth
        && let Some(refused) = limit.refuses(ip).await
    {
        tracing::info!(client_address = %ip, "credentials not checked: too many failed authentications from this address");
        let mut resp = stage_refusal(
            stage.graphql,
            req.headers(),
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            &refused.message(),
        );
        refused.apply(resp.headers_mut());
        return resp;
    }
    let verdict = match stage.auth.authenticate_headers(req.headers()).await {
        // No token: a service client may be known by its verified certificate.
        Ok(None) if stage.client_cert_identity => match req.extensions().get::<ClientCert>() {
            Some(cert) => stage.auth.viewer_from_certificate(cert).map(Some),
            None => Ok(None),
        },
        other => other,
    };
    match verdict {
        Ok(viewer) => {
            req.extensions_mut().insert(Identity(viewer.map(Arc::new)));
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(error = %e, "request refused by authentication");
            // A provider whose keys are not loaded is not the client's failure: counting it
            // would lock out every signed-in user of an address during an outage.
            if let Some(limit) = &stage.failed_auth
                && !matches!(e, AuthError::KeysUnavailable)
            {
                limit.failed(ip).await;
            }
            let mut resp = stage_refusal(
                stage.graphql,
                req.headers(),
                e.status(),
                e.code(),
                &e.to_string(),
            );
            if e.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            resp
        }
    }
}
