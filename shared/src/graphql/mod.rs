//! The GraphQL layer shared by both binaries: the building blocks of each binary's schema
//! ([`types`]), the spec-compliant GraphQL-over-HTTP service ([`service`]), and the one place that
//! turns any error into a coded, client-safe GraphQL error ([`errors`]).
//!
//! A binary brings its own title type (implementing [`TitleView`]) and its homepage object; rows,
//! items, the viewer, `title(id)` and the my-list mutations come from here, so the two surfaces
//! cannot drift apart where they are meant to be the same.
//!
//! Row items and titles are written straight to JSON as they resolve ([`Rendered`],
//! [`RenderedList`]); other in-memory objects resolve [`Inline`]; the response is printed by a
//! writer of our own. `@defer` on homepage rows is answered incrementally ([`defer`]).

pub mod analysis;
mod coalesce;
pub(crate) mod defer;
mod direct;
mod documents;
pub(crate) mod errors;
pub mod fields;
pub mod persisted;
pub(crate) mod service;
pub(crate) mod subscription;
pub mod types;

use std::sync::Arc;

pub use direct::{
    FieldOut, Inline, InlineList, RenderFields, RenderJson, Rendered, RenderedList, ScalarFields,
    Scalars,
};
pub use fields::FromField;

use async_graphql::{
    ObjectType, Schema, SchemaBuilder, ServerResult, SubscriptionType,
    futures_util::future::BoxFuture, parser::types::ExecutableDocument,
};

use self::{
    analysis::{Analysis, CostModel, Limits, Refusal, Shape},
    documents::DocumentCache,
};
use crate::{
    auth::Viewer,
    compose::{Composer, RequestContext},
    config::GraphqlSettings,
    domain::Title,
    error::ErrorCode,
    profile::ClientProfile,
};

/// A GraphQL response as the HTTP handler writes it (`data`, then `errors` and `extensions` when
/// present), including values [`Rendered`] wrote: `serde_json` cannot print those.
pub fn response_json(response: &async_graphql::Response) -> serde_json::Result<Vec<u8>> {
    service::response_bytes(response)
}

/// The `path` of every error of a response (test support for the resolver modules).
#[cfg(test)]
fn error_paths(response: &serde_json::Value) -> Vec<&serde_json::Value> {
    response["errors"]
        .as_array()
        .map(|errors| errors.iter().map(|e| &e["path"]).collect())
        .unwrap_or_default()
}

/// How a binary's title type is made from a catalog title and its client profile. Titles are
/// [`Rendered`] (or resolved [`Inline`]): a title type's fields must not wait on I/O.
pub trait TitleView: RenderFields + Send + Sync + 'static {
    /// The client's view of `title`.
    fn view(title: Arc<Title>, profile: &Arc<ClientProfile>) -> Self;
}

/// The request as resolvers see it (inserted as request data by the HTTP handler).
pub fn request<'a>(ctx: &async_graphql::Context<'a>) -> async_graphql::Result<&'a RequestContext> {
    Ok(ctx.data::<Arc<RequestContext>>()?.as_ref())
}

/// The viewer of this request, if any.
pub fn viewer<'a>(ctx: &async_graphql::Context<'a>) -> async_graphql::Result<Option<&'a Viewer>> {
    Ok(request(ctx)?.viewer.as_ref())
}

/// The viewer of this request, or `UNAUTHENTICATED`.
pub(crate) fn require_viewer<'a>(
    ctx: &async_graphql::Context<'a>,
) -> async_graphql::Result<&'a Viewer> {
    viewer(ctx)?.ok_or_else(|| ErrorCode::Unauthenticated.error("sign in to see this"))
}

/// The composer (schema-wide data).
pub(crate) fn composer<'a>(
    ctx: &async_graphql::Context<'a>,
) -> async_graphql::Result<&'a Composer> {
    ctx.data::<Composer>()
}

/// A schema behind a trait object, so the server runs either binary's schema.
pub trait GraphqlExecutor: Send + Sync + 'static {
    /// Parses `query`, from the document cache when it was parsed before.
    fn parse(&self, query: &str) -> ServerResult<ExecutableDocument>;
    /// Depth, fields and cost of the operation `operation` of `doc` against this deployment's
    /// limits, and its variables against their declared types: everything decided before the
    /// engine's own (costlier) validation and execution. `Ok(None)` when no operation matches
    /// (the engine then reports it).
    fn preflight(
        &self,
        doc: &ExecutableDocument,
        operation: Option<&str>,
        variables: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Option<Analysis>, Refusal>;
    /// Executes one request; `validated`: its document validated before (a persisted operation),
    /// so only the engine's cheap checks run.
    fn execute(
        &self,
        request: async_graphql::Request,
        validated: bool,
    ) -> BoxFuture<'_, async_graphql::Response>;
    /// Runs a subscription: one response now and one per change, until the stream is dropped
    /// (a request error is one response, then the end).
    fn execute_stream(
        &self,
        request: async_graphql::Request,
    ) -> futures::stream::BoxStream<'static, async_graphql::Response>;
    /// The schema as SDL.
    fn sdl(&self) -> String;
}

/// A schema, its document cache and what the pre-execution analysis needs.
struct Executor<Q, M, S> {
    schema: Schema<Q, M, S>,
    /// The same schema in the engine's fast validation mode, for documents that validated before.
    prevalidated: Schema<Q, M, S>,
    documents: Option<DocumentCache>,
    shape: Shape,
    model: CostModel,
    limits: Limits,
}

impl<Q, M, S> GraphqlExecutor for Executor<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    fn parse(&self, query: &str) -> ServerResult<ExecutableDocument> {
        match &self.documents {
            Some(cache) => cache.parse(query),
            None => Ok(async_graphql::parser::parse_query(query)?),
        }
    }

    fn preflight(
        &self,
        doc: &ExecutableDocument,
        operation: Option<&str>,
        variables: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Option<Analysis>, Refusal> {
        let Some(op) = analysis::operation(doc, operation) else {
            return Ok(None);
        };
        let found = analysis::analyze(&self.shape, &self.model, doc, op, &self.limits)?;
        analysis::check_variables(&self.shape, op, variables)?;
        Ok(Some(found))
    }

    fn execute(
        &self,
        request: async_graphql::Request,
        validated: bool,
    ) -> BoxFuture<'_, async_graphql::Response> {
        if validated {
            Box::pin(self.prevalidated.execute(request))
        } else {
            Box::pin(self.schema.execute(request))
        }
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
    ) -> futures::stream::BoxStream<'static, async_graphql::Response> {
        self.schema.execute_stream(request)
    }

    fn sdl(&self) -> String {
        self.schema.sdl()
    }
}

/// The schema of a surface: the shared root query over the binary's title and homepage types, the
/// my-list mutations, this deployment's limits and the composer as schema data, with a document
/// cache.
pub(crate) fn build_schema<T: TitleView, H: types::HomepageView>(
    composer: Composer,
    limits: &GraphqlSettings,
) -> Arc<dyn GraphqlExecutor> {
    let profile = composer.profile().clone();
    let schema = schema_builder(
        types::RootQuery::<T, H>::default(),
        types::MyListMutation,
        subscription::RootSubscription::<T>::default(),
        composer.clone(),
        limits,
    )
    .finish();
    let prevalidated = schema_builder(
        types::RootQuery::<T, H>::default(),
        types::MyListMutation,
        subscription::RootSubscription::<T>::default(),
        composer,
        limits,
    )
    .validation_mode(async_graphql::ValidationMode::Fast)
    .finish();
    let shape = Shape::from_sdl(&schema.sdl());
    let model = CostModel::for_profile(&profile);
    Arc::new(Executor {
        schema,
        prevalidated,
        documents: DocumentCache::new(limits.document_cache_bytes),
        shape,
        model,
        limits: Limits {
            max_depth: u32::try_from(limits.max_depth).unwrap_or(u32::MAX),
            max_fields: limits.max_complexity as u64,
            max_cost: limits.max_cost,
            introspection: limits.introspection,
            max_aliases: limits.max_aliases,
            max_root_fields: limits.max_root_fields,
            max_directives: limits.max_directives_per_field,
        },
    })
}

fn schema_builder<Q, M, S>(
    query: Q,
    mutation: M,
    subscription: S,
    composer: Composer,
    limits: &GraphqlSettings,
) -> SchemaBuilder<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    // Depth, field and cost limits are not the engine's: its counts run on the document as
    // written and include introspection, so [`analysis`] decides them before validation.
    let builder = Schema::build(query, mutation, subscription)
        .data(composer)
        .directive(defer::directive::Defer);
    if limits.introspection {
        builder
    } else {
        // Without introspection, "Did you mean …" in validation errors would list field names.
        builder.disable_introspection().disable_suggestions()
    }
}

/// A GraphQL error for a failed backend call, naming the backend in `extensions.backend`.
pub(crate) fn backend_error(err: &crate::upstream::BackendError) -> async_graphql::Error {
    let backend: crate::upstream::BackendId = err.backend();
    let (code, message) = if err.is_timeout() {
        (
            crate::error::ErrorCode::BackendTimeout,
            format!("the {backend} service did not answer in time"),
        )
    } else {
        (
            crate::error::ErrorCode::BackendUnavailable,
            format!("the {backend} service is unavailable"),
        )
    };
    use async_graphql::ErrorExtensions as _;
    async_graphql::Error::new(message).extend_with(|_, e| {
        e.set("code", code.as_str());
        e.set("backend", backend.name());
    })
}
