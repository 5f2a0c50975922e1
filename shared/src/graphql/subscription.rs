//! The root `Subscription` type both surfaces share: the live homepage's rows and titles, each
//! sent now and again whenever it changes. A change is a fragment invalidation — a domain event
//! from the bus (applied progress, a changed list, a reordered top 10, an edited title) or the
//! viewer's own write on this instance — which the fragment cache tells its watchers about
//! ([`crate::cache::watch`]); the subscription then reloads its row through the cache (the
//! invalidation dropped it, so the load reads the service's new state) and sends it in this
//! binary's shape, trimmed like the homepage's. While the bus is down, subscribers get an error
//! payload (`BACKEND_UNAVAILABLE`, `backend: "events"`): changes may go unseen until it is back,
//! when the current value is sent again.
//!
//! Who may see what is the homepage's rule: personal rows need a viewer (`UNAUTHENTICATED`),
//! `auth.subscription_scopes` may require a scope per field (`FORBIDDEN`), and the maturity
//! ceiling holds for every row and title. Each field declares the backend calls one result costs
//! (`@backendCalls`: a row's source, its titles and the viewer's profile), which the cost limit
//! weighs as for a query. Execution, sharing and delivery are `crate::live`'s.

use std::{future::Future, marker::PhantomData, sync::Arc, time::Duration};

use async_graphql::{
    Context, ContextSelectionSet, ID, OutputType, Positioned, ServerResult, Subscription, Value,
    parser::types::Field, registry::Registry,
};
use futures::Stream;

use super::{
    Inline, Rendered, TitleView,
    analysis::cost::backend_calls,
    composer, request,
    types::{Row, region_arg, title_id_arg},
};
use crate::{
    auth::Viewer,
    cache::{
        FragmentKey,
        watch::{Change, Watch},
    },
    compose::{Composer, HomeRow, RequestContext},
    error::ErrorCode,
    graphql::backend_error,
    profile::{ClientProfile, RowKind},
};

/// The time one reload may take (request data the live service sets; else this).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadBudget(pub(crate) Duration);

const DEFAULT_BUDGET: Duration = Duration::from_millis(800);

/// Root fields whose value does not depend on who asks (beyond the maturity ceiling), given
/// the named argument: subscribers of the same operation may share one execution then. Every
/// other field is per viewer (`crate::live` groups by it).
pub(crate) const SHARED_FIELDS: [(&str, Option<&str>); 2] =
    [("title", None), ("top10", Some("region"))];

/// The root subscription of both surfaces, over the binary's title type.
pub(crate) struct RootSubscription<T>(PhantomData<fn() -> T>);

impl<T> Default for RootSubscription<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Live rows and titles: each sends its current value at once, then again whenever it changes.
#[Subscription(name = "Subscription")]
impl<T: TitleView> RootSubscription<T> {
    /// The viewer's CONTINUE_WATCHING row, sent again whenever their playback progress is
    /// applied — a report from any of their devices, through any instance. Requires a signed-in
    /// viewer (UNAUTHENTICATED otherwise).
    #[graphql(directive = backend_calls::apply(3, None))]
    async fn continue_watching(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveRow<T>>> + use<T>> {
        personal_row(
            ctx,
            "continueWatching",
            RowKind::ContinueWatching,
            |c, v| FragmentKey::continue_watching(&v.user_id, c.profile().items_per_row),
        )
    }

    /// The viewer's MY_LIST row, sent again whenever their list changes (from any device).
    /// Requires a signed-in viewer.
    #[graphql(directive = backend_calls::apply(3, None))]
    async fn my_list(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveRow<T>>> + use<T>> {
        personal_row(ctx, "myList", RowKind::MyList, |_, v| {
            FragmentKey::my_list(&v.user_id)
        })
    }

    /// The TOP_10 row of `region` (e.g. "US"; without it the viewer's home region, else the
    /// default), sent again whenever that top 10 changes.
    #[graphql(directive = backend_calls::apply(3, None))]
    async fn top10(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveRow<T>>> + use<T>> {
        let region = region_arg(region)?;
        let (composer, viewer, budget) = setup(ctx, "top10")?;
        let region = match region {
            Some(r) => r,
            None => {
                composer
                    .region_of(&RequestContext::new(viewer.clone(), budget))
                    .await
            }
        };
        let watch = composer.cache().watch(&FragmentKey::top10(&region));
        Ok(feed(watch, move || {
            let (composer, viewer, region) = (composer.clone(), viewer.clone(), region.clone());
            async move {
                let rq = RequestContext::new(viewer, budget);
                composer
                    .row(&rq, RowKind::Top10, Some(region))
                    .await
                    .map(|row| LiveRow::new(row, composer.profile()))
                    .map_err(|e| backend_error(&e))
            }
        }))
    }

    /// One title by id, sent again whenever the catalog changes it; null when no such title
    /// exists (or it is above the viewer's maturity ceiling).
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn title(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<
        impl Stream<Item = async_graphql::Result<Option<Rendered<T>>>> + use<T>,
    > {
        let id = title_id_arg(&id)?.to_owned();
        let (composer, viewer, budget) = setup(ctx, "title")?;
        let watch = composer.cache().watch(&FragmentKey::title(&id));
        Ok(feed(watch, move || {
            let (composer, viewer, id) = (composer.clone(), viewer.clone(), id.clone());
            async move {
                let rq = RequestContext::new(viewer, budget);
                let title = composer
                    .title(&id, &rq)
                    .await
                    .map_err(|e| backend_error(&e))?;
                Ok(title.map(|t| Rendered(T::view(t, composer.profile()))))
            }
        }))
    }
}

/// The composer, the viewer and the reload budget, once `field` is authorized.
fn setup(
    ctx: &Context<'_>,
    field: &str,
) -> async_graphql::Result<(Composer, Option<Viewer>, Duration)> {
    let composer = composer(ctx)?.clone();
    let viewer = request(ctx)?.viewer.clone();
    composer
        .authorize_subscription(viewer.as_ref(), field)
        .map_err(|scope| {
            use async_graphql::ErrorExtensions as _;
            ErrorCode::Forbidden
                .error(format!("{field} needs the `{scope}` scope"))
                .extend_with(|_, e| e.set("scope", scope))
        })?;
    let budget = ctx.data_opt::<LoadBudget>().map_or(DEFAULT_BUDGET, |b| b.0);
    Ok((composer, viewer, budget))
}

/// A personal row's feed: the viewer's row `kind`, watching the fragment `key` names.
fn personal_row<T: TitleView>(
    ctx: &Context<'_>,
    field: &str,
    kind: RowKind,
    key: fn(&Composer, &Viewer) -> FragmentKey,
) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveRow<T>>> + use<T>> {
    let (composer, viewer, budget) = setup(ctx, field)?;
    let Some(viewer) = viewer else {
        return Err(ErrorCode::Unauthenticated.error("sign in to see this"));
    };
    let watch = composer.cache().watch(&key(&composer, &viewer));
    Ok(feed(watch, move || {
        let (composer, viewer) = (composer.clone(), viewer.clone());
        async move {
            let rq = RequestContext::new(Some(viewer), budget);
            composer
                .row(&rq, kind, None)
                .await
                .map(|row| LiveRow::new(row, composer.profile()))
                .map_err(|e| backend_error(&e))
        }
    }))
}

/// What a feed does next.
enum Step {
    /// Load and send the current value.
    Load,
    /// Wait for a change.
    Wait,
    /// Tell the subscriber the bus is down.
    TellDown,
}

/// The current value from `load` now, then again after every change `watch` sees; an error
/// payload when the bus goes down (and the value again when it is back).
fn feed<V, L, F>(
    watch: Watch,
    load: L,
) -> impl Stream<Item = async_graphql::Result<V>> + Send + use<V, L, F>
where
    V: Send + 'static,
    L: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = async_graphql::Result<V>> + Send,
{
    futures::stream::unfold(
        (watch, load, Step::Load),
        |(mut watch, load, step)| async move {
            let mut step = step;
            loop {
                match step {
                    Step::Load => {
                        let value = load().await;
                        let next = if watch.bus_down() {
                            Step::TellDown
                        } else {
                            Step::Wait
                        };
                        return Some((value, (watch, load, next)));
                    }
                    Step::TellDown => return Some((Err(live_paused()), (watch, load, Step::Wait))),
                    Step::Wait => {
                        step = match watch.next().await {
                            Change::Changed | Change::BusUp => Step::Load,
                            Change::BusDown => Step::TellDown,
                        };
                    }
                }
            }
        },
    )
}

/// The error payload subscribers get while this instance does not hear the bus.
fn live_paused() -> async_graphql::Error {
    use async_graphql::ErrorExtensions as _;
    async_graphql::Error::new(
        "live updates are paused: the event bus is unavailable, so changes may go unseen; \
         the current value is sent again when it is back",
    )
    .extend_with(|_, e| {
        e.set("code", ErrorCode::BackendUnavailable.as_str());
        e.set("backend", "events");
    })
}

/// A row a subscription owns (a homepage's rows are borrowed from it): the same GraphQL `Row`.
pub(crate) struct LiveRow<T> {
    row: HomeRow,
    profile: Arc<ClientProfile>,
    _title: PhantomData<fn() -> T>,
}

impl<T> LiveRow<T> {
    fn new(row: HomeRow, profile: &Arc<ClientProfile>) -> Self {
        Self {
            row,
            profile: profile.clone(),
            _title: PhantomData,
        }
    }
}

impl<T: TitleView> OutputType for LiveRow<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        <Inline<Row<'static, T>> as OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Inline<Row<'static, T>> as OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <Inline<Row<'static, T>> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        Inline(Row::<T>::of(&self.row, &self.profile))
            .resolve(ctx, field)
            .await
    }
}
