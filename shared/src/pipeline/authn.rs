//! The authentication stage: the request's bearer token (or, later, its client certificate)
//! becomes a verified [`Viewer`] on the request's extensions as an [`Identity`], or the request is
//! anonymous. A token that does not verify is refused here (`401` with `WWW-Authenticate`; two
//! `Authorization` headers `400`) — never silently anonymous — so nothing below ever sees an
//! unverified identity. What a viewer may do is decided further down (scopes, claims).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::Response,
};

use crate::{
    auth::{Authenticator, Identity},
    error::json_error,
};

/// The stage's state: the verifier, and whether refusals are GraphQL answers (negotiated by
/// `Accept`) or plain JSON errors (pass-through routes).
#[derive(Clone)]
pub(crate) struct Authn {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) graphql: bool,
}

/// The middleware.
pub(crate) async fn authenticate(
    State(stage): State<Authn>,
    mut req: Request,
    next: Next,
) -> Response {
    match stage.auth.authenticate_headers(req.headers()) {
        Ok(viewer) => {
            req.extensions_mut().insert(Identity(viewer.map(Arc::new)));
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(error = %e, "request refused by authentication");
            let mut resp = if stage.graphql {
                crate::graphql::http::refusal(req.headers(), e.status(), e.code(), &e.to_string())
            } else {
                json_error(e.status(), e.code(), &e.to_string(), None)
            };
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
