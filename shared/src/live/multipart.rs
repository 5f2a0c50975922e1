//! Subscriptions sent to `/graphql` itself with `Accept: multipart/mixed` (GraphiQL's HTTP
//! fetcher and GraphQL Yoga's clients ask so): admitted by the GraphQL service like any
//! operation, then streamed as one `multipart/mixed` part per result from the same shared
//! execution the other doors use. Bounded like them: a place in the connection counts, the
//! subscriber's queue, the token's expiry, shutdown.

use std::{net::IpAddr, sync::Arc};

use axum::response::Response;
use futures::{FutureExt as _, future::BoxFuture};

use super::{Joiner, sse};
use crate::{auth::Viewer, error::ErrorCode, graphql::service::SubscriptionDoor};

impl SubscriptionDoor for Joiner {
    fn multipart(
        self: Arc<Self>,
        request: async_graphql::Request,
        viewer: Option<Viewer>,
        ip: IpAddr,
    ) -> BoxFuture<'static, Response> {
        async move {
            let live = self.live.clone();
            if *live.stopping().borrow() {
                return super::Refusal::new(
                    ErrorCode::BackendUnavailable,
                    "the server is shutting down",
                )
                .response();
            }
            let user = viewer.as_ref().map(|v| v.user_id.as_str());
            let slot = match live.open(ip, user, &self.settings) {
                Ok(s) => s,
                Err(full) => return full.response(&axum::http::HeaderMap::new()),
            };
            match self.join(request, viewer.as_ref()) {
                Ok(member) => {
                    sse::respond(live, slot, member, viewer.as_ref(), sse::Framing::Multipart).await
                }
                Err(refusal) => refusal.response(),
            }
        }
        .boxed()
    }
}
