//! GraphQL types both surfaces share: homepage rows and items (generic over the binary's title
//! type), the viewer, `title(id)` and the my-list mutations. Doc comments here are the SDL frontend
//! developers read.

use std::{marker::PhantomData, sync::Arc};

use async_graphql::{ContainerType, Context, ID, Object, SimpleObject};

use crate::domain::Title;

use super::{
    Inline, Rendered, RenderedList, TitleView,
    analysis::cost::{ProfileLimit, backend_calls, max_items},
    composer, request, require_viewer,
};
use crate::{
    compose::{HomeRow, Homepage, RowItem as ComposedItem},
    domain::{Profile, Region},
    error::ErrorCode,
    graphql::backend_error,
    profile::{ClientProfile, RowKind},
};

/// A homepage row. Borrows from the composed homepage its parent holds: a web homepage has ~100
/// items, and copying rows and items into owned wrappers was measurable per request.
pub struct Row<'a, T> {
    row: &'a HomeRow,
    profile: &'a Arc<ClientProfile>,
    _title: PhantomData<fn() -> T>,
}

impl<'a, T> Row<'a, T> {
    /// The GraphQL view of `row` for a client with `profile`.
    pub(crate) fn of(row: &'a HomeRow, profile: &'a Arc<ClientProfile>) -> Self {
        Self {
            row,
            profile,
            _title: PhantomData,
        }
    }
}

/// A row of the homepage: a heading and the titles to show, in display order.
#[Object(name = "Row")]
impl<'a, T: TitleView> Row<'a, T> {
    /// Which row this is; clients pick the row's layout from it.
    async fn kind(&self) -> RowKind {
        self.row.kind
    }

    /// Heading to display above the row, e.g. "Continue Watching for Ana".
    async fn heading(&self) -> &str {
        &self.row.heading
    }

    /// The row's titles in display order, already cut to this client's row length.
    #[graphql(directive = max_items::apply(ProfileLimit::ItemsPerRow))]
    async fn items(&self) -> RenderedList<RowItem<'a, T>> {
        RenderedList(
            self.row
                .items
                .iter()
                .map(|item| RowItem {
                    item,
                    profile: self.profile,
                    _title: PhantomData,
                })
                .collect(),
        )
    }
}

/// One entry of a row, borrowed like [`Row`].
pub struct RowItem<'a, T> {
    item: &'a ComposedItem,
    profile: &'a Arc<ClientProfile>,
    _title: PhantomData<fn() -> T>,
}

impl<T: TitleView> RowItem<'_, T> {
    fn title_view(&self) -> T {
        T::view(self.item.title.clone(), self.profile)
    }

    fn progress_view(&self) -> Option<Progress> {
        self.item.progress.map(|p| Progress {
            position_seconds: p.position_seconds,
            duration_seconds: p.duration_seconds,
            fraction: if p.duration_seconds == 0 {
                0.0
            } else {
                (f64::from(p.position_seconds) / f64::from(p.duration_seconds)).clamp(0.0, 1.0)
            },
        })
    }
}

crate::graphql_object! {
    /// A title in a row, with what the row knows about it.
    #[Object(name = "RowItem")]
    impl[<'a, T: TitleView>] RowItem<'a, T>, self {
        /// The title.
        fn title() -> Inline<T> => object(self.title_view());
        /// CONTINUE_WATCHING rows: how far the viewer got. Null in other rows.
        fn progress() -> Option<Inline<Progress>> => opt_object(self.progress_view());
        /// TOP_10 rows: the rank, 1 to 10. Null in other rows.
        fn rank() -> Option<u32> => opt_int(self.item.rank);
        /// RECOMMENDED rows: why the title is suggested, ready to display. Null in other rows.
        fn reason() -> Option<&str> => opt_str(self.item.reason.as_deref());
    }
}

/// The title fields every surface shows the same way. Each surface merges it into its own `Title`
/// type (`MergedObject`) next to the fields it trims or enriches.
pub struct TitleBasics(Arc<Title>);

impl TitleBasics {
    /// Wraps a catalog title.
    pub fn new(title: Arc<Title>) -> Self {
        Self(title)
    }
}

crate::graphql_object! {
    /// Untrimmed title fields.
    #[Object(name = "TitleBasics")]
    impl[] TitleBasics, self {
        /// Title id, for `title(id:)` and the my-list mutations.
        fn id() -> ID => str(self.0.id.as_str());
        /// Display name.
        fn name() -> &str => str(self.0.name.as_str());
        /// Release year.
        fn year() -> i32 => int(self.0.year);
        /// Maturity rating, e.g. "PG-13".
        fn maturity_rating() -> &str => str(self.0.maturity_rating.as_str());
        /// Runtime in minutes.
        fn runtime_minutes() -> u32 => int(self.0.runtime_minutes);
    }
}

// Borrows the URL from the catalog title: a web homepage lists ~1,500 renditions, and copying
// each URL into an owned wrapper first cost allocations for nothing. (Not a doc comment: this
// type's doc comment is its SDL description.)
/// One rendition of a title's artwork (its fields are its GraphQL fields, below).
pub struct Image<'a> {
    /// Absolute URL.
    pub url: &'a str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

crate::graphql_object! {
    /// One rendition of a title's artwork.
    #[Object(name = "Image")]
    #[scalars]
    impl[<'a>] Image<'a>, self {
        /// Absolute URL.
        fn url() -> &str => str(self.url);
        /// Width in pixels.
        fn width() -> u32 => int(self.width);
        /// Height in pixels.
        fn height() -> u32 => int(self.height);
    }
}

impl<'a> From<&'a crate::domain::Image> for Image<'a> {
    fn from(i: &'a crate::domain::Image) -> Self {
        Self {
            url: &i.url,
            width: i.width,
            height: i.height,
        }
    }
}

/// Playback progress of a continue-watching item (its GraphQL fields are below).
pub struct Progress {
    /// Seconds already watched.
    pub position_seconds: u32,
    /// Total length in seconds.
    pub duration_seconds: u32,
    /// Watched share between 0 and 1.
    pub fraction: f64,
}

crate::graphql_object! {
    /// Playback progress, for drawing a progress bar and resuming playback.
    #[Object(name = "Progress")]
    impl[] Progress, self {
        /// Seconds already watched; resume from here.
        fn position_seconds() -> u32 => int(self.position_seconds);
        /// Total length in seconds.
        fn duration_seconds() -> u32 => int(self.duration_seconds);
        /// Watched share between 0 and 1.
        fn fraction() -> f64 => float(self.fraction);
    }
}

/// The rows of a composed homepage as GraphQL values: a failed row is an error at its own index
/// (so the list item is null and the error's `path` points at it), the others are values.
fn rows<'a, T: TitleView>(
    homepage: &'a Homepage,
    profile: &'a Arc<ClientProfile>,
) -> Vec<Option<Result<Inline<Row<'a, T>>, async_graphql::Error>>> {
    homepage
        .rows
        .iter()
        .map(|r| {
            Some(match r {
                Ok(row) => Ok(Inline(Row {
                    row,
                    profile,
                    _title: PhantomData,
                })),
                Err(e) => Err(backend_error(e)),
            })
        })
        .collect()
}

/// Parses the optional `region` argument.
pub(crate) fn region_arg(region: Option<String>) -> async_graphql::Result<Option<Region>> {
    region
        .map(|r| {
            Region::parse(&r).ok_or_else(|| {
                ErrorCode::BadUserInput.error("region must be a two-letter code such as \"US\"")
            })
        })
        .transpose()
}

/// Checks a client-supplied title id before it is sent anywhere.
pub(crate) fn title_id_arg(id: &str) -> async_graphql::Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(ErrorCode::BadUserInput.error("titleId must be 1-64 letters, digits, '-' or '_'"))
    }
}

/// The signed-in user.
#[derive(SimpleObject)]
#[graphql(name = "Viewer")]
pub(crate) struct ViewerProfile {
    /// User id.
    pub id: ID,
    /// Display name.
    pub name: String,
    /// Avatar image URL.
    pub avatar_url: String,
    /// Subscription plan, e.g. "premium".
    pub plan: String,
    /// Preferred locale, e.g. "en-US".
    pub locale: String,
    /// Home region, e.g. "US"; the homepage uses it when no region is given.
    pub region: String,
}

impl From<Profile> for ViewerProfile {
    fn from(p: Profile) -> Self {
        Self {
            id: ID(p.id),
            name: p.name,
            avatar_url: p.avatar_url,
            plan: p.plan,
            locale: p.locale,
            region: p.region,
        }
    }
}

/// How a binary's homepage object is made from a composed homepage. Resolved [`Inline`], so that
/// a field selected twice merges its rendered rows correctly (see [`super::render`]).
pub trait HomepageView: ContainerType + Send + Sync + 'static {
    /// Whether the composer should pick a hero title for this surface.
    const WANTS_HERO: bool;
    /// The surface's homepage object.
    fn view(home: Homepage, profile: &Arc<ClientProfile>) -> Self;
}

/// The part of the homepage both surfaces have: region and rows. Each surface merges it into its
/// own `Homepage` type (`MergedObject`); web adds a `hero` field. Its own GraphQL name never shows
/// in a schema because nothing refers to it directly.
pub struct HomepageRows<T> {
    home: Arc<Homepage>,
    profile: Arc<ClientProfile>,
    _title: PhantomData<fn() -> T>,
}

impl<T> HomepageRows<T> {
    /// Wraps a composed homepage.
    pub fn new(home: Arc<Homepage>, profile: &Arc<ClientProfile>) -> Self {
        Self {
            home,
            profile: profile.clone(),
            _title: PhantomData,
        }
    }
}

/// Region and rows of a homepage.
#[Object(name = "HomepageRows")]
impl<T: TitleView> HomepageRows<T> {
    /// Region the regional rows (TOP_10, NEW_RELEASES) are for.
    async fn region(&self) -> &str {
        self.home.region.as_str()
    }

    /// Rows in display order, each cut to this client's row length. Empty rows are left out; a
    /// row whose service failed is null, with an error (code BACKEND_UNAVAILABLE or
    /// BACKEND_TIMEOUT, `backend` naming the service) at its index.
    #[graphql(directive = max_items::apply(ProfileLimit::Rows))]
    async fn rows(&self) -> Vec<Option<async_graphql::Result<Inline<Row<'_, T>>>>> {
        rows(&self.home, &self.profile)
    }
}

/// The root query of both surfaces, over the binary's title and homepage types.
pub(crate) struct RootQuery<T, H>(PhantomData<fn() -> (T, H)>);

impl<T, H> Default for RootQuery<T, H> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Entry points: the homepage, one title, and the signed-in viewer.
#[Object(name = "Query")]
impl<T: TitleView, H: HomepageView> RootQuery<T, H> {
    /// The homepage for the signed-in viewer (every row of this app) or, without a token, the
    /// public rows only. `region` (e.g. "US") picks the regional rows; without it the viewer's
    /// home region is used. A row whose service failed is null with an error at its path; the
    /// other rows still arrive.
    // One call per row source, the profile, and the catalog round that hydrates them all.
    #[graphql(directive = backend_calls::apply(2, Some(1)))]
    async fn homepage(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<Inline<H>> {
        let region = region_arg(region)?;
        let composer = composer(ctx)?;
        let req = crate::compose::HomepageRequest {
            region,
            want_hero: H::WANTS_HERO,
        };
        // An incremental answer (`@defer` on rows) prepared the homepage this part shows.
        let home = match ctx.data_opt::<super::defer::Prepared>() {
            Some(prepared) => {
                let rq = ctx.data::<Arc<crate::compose::RequestContext>>()?;
                prepared.homepage(composer, rq, &req).await?
            }
            None => composer.homepage(request(ctx)?, &req).await,
        };
        Ok(Inline(H::view(home, composer.profile())))
    }

    /// One title by id, or null when no such title exists.
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn title(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Rendered<T>>> {
        let id = title_id_arg(&id)?;
        let composer = composer(ctx)?;
        let title = composer
            .title(id, request(ctx)?)
            .await
            .map_err(|e| backend_error(&e))?;
        Ok(title.map(|t| Rendered(T::view(t, composer.profile()))))
    }

    /// The signed-in user. Requires a valid bearer token (UNAUTHENTICATED otherwise); null when the
    /// profile service does not know the user.
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ViewerProfile>> {
        let viewer = require_viewer(ctx)?;
        let composer = composer(ctx)?;
        let profile = composer
            .profile_of(&viewer.user_id, request(ctx)?)
            .await
            .map_err(|e| backend_error(&e))?;
        Ok(profile.map(ViewerProfile::from))
    }
}

/// The outcome of a my-list change.
#[derive(SimpleObject)]
pub(crate) struct MyListUpdate {
    /// The title concerned.
    pub title_id: ID,
    /// Whether the title is in the viewer's list now.
    pub in_my_list: bool,
    /// False when the list already was in the requested state (the call is idempotent).
    pub changed: bool,
}

/// A progress report the bus accepted.
#[derive(SimpleObject)]
pub(crate) struct ProgressReport {
    /// True: the report is on its way to the continue-watching service (it is applied within
    /// moments, and this viewer's homepage shows it at once).
    pub accepted: bool,
    /// Id of the `playback.progress` event, for support and tracing.
    pub event_id: ID,
}

/// Most seconds a position may be: longer than any title.
const MAX_POSITION_SECONDS: i32 = 24 * 60 * 60;

/// Mutations both surfaces share.
#[derive(Default)]
pub(crate) struct MyListMutation;

/// Changes the viewer makes.
#[Object(name = "Mutation")]
impl MyListMutation {
    /// Saves a title to the viewer's list. Idempotent; the next homepage shows it first in MY_LIST.
    /// Requires a signed-in viewer; an unknown title is BAD_USER_INPUT.
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn add_to_my_list(
        &self,
        ctx: &Context<'_>,
        title_id: ID,
    ) -> async_graphql::Result<MyListUpdate> {
        set_in_my_list(ctx, "addToMyList", &title_id, true).await
    }

    /// Removes a title from the viewer's list. Idempotent; requires a signed-in viewer.
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn remove_from_my_list(
        &self,
        ctx: &Context<'_>,
        title_id: ID,
    ) -> async_graphql::Result<MyListUpdate> {
        set_in_my_list(ctx, "removeFromMyList", &title_id, false).await
    }

    /// Reports where the viewer is in a title (players call this every few seconds).
    /// Fire-and-forget: answers `accepted` once the report is durable (the event broker
    /// confirmed it, or it is on this instance's disk while the broker is away), and the
    /// continue-watching service applies it at its own pace, keeping the newest report; the
    /// viewer's next homepage already shows it. A position below 0 or past the title's end, or
    /// an unknown title, is BAD_USER_INPUT; BACKEND_UNAVAILABLE with `backend: "events"` means
    /// the report was not accepted (retry later); RATE_LIMITED means too many of this viewer's
    /// reports are waiting. Requires a signed-in viewer with the `progress:write` scope.
    // The catalog lookup of the title; the report itself goes to the event bus.
    #[graphql(directive = backend_calls::apply(1, None))]
    async fn report_progress(
        &self,
        ctx: &Context<'_>,
        title_id: ID,
        position_seconds: i32,
    ) -> async_graphql::Result<ProgressReport> {
        let viewer = require_viewer(ctx)?;
        let title_id = title_id_arg(&title_id)?;
        let position = u32::try_from(position_seconds)
            .ok()
            .filter(|_| position_seconds <= MAX_POSITION_SECONDS)
            .ok_or_else(|| {
                ErrorCode::BadUserInput.error(format!(
                    "positionSeconds must be within 0..={MAX_POSITION_SECONDS}"
                ))
            })?;
        let composer = composer(ctx)?;
        authorize(composer, viewer, "reportProgress")?;
        match composer
            .report_progress(viewer, title_id, position, request(ctx)?)
            .await
        {
            Ok(id) => Ok(ProgressReport {
                accepted: true,
                event_id: ID(id),
            }),
            Err(crate::compose::ReportError::BadInput(m)) => Err(ErrorCode::BadUserInput.error(m)),
            Err(crate::compose::ReportError::Catalog(e)) => Err(backend_error(&e)),
            Err(crate::compose::ReportError::Events) => Err(crate::error::events_unavailable()),
            Err(crate::compose::ReportError::Flooding) => Err(ErrorCode::RateLimited.error(
                "too many reports of this viewer are waiting for the event broker; retry later",
            )),
        }
    }
}

/// `FORBIDDEN` naming the scope the viewer lacks for `field`, decided by the composer.
pub(crate) fn authorize(
    composer: &crate::compose::Composer,
    viewer: &crate::auth::Viewer,
    field: &str,
) -> async_graphql::Result<()> {
    composer.authorize_mutation(viewer, field).map_err(|scope| {
        use async_graphql::ErrorExtensions as _;
        ErrorCode::Forbidden
            .error(format!("{field} needs the `{scope}` scope"))
            .extend_with(|_, e| e.set("scope", scope))
    })
}

async fn set_in_my_list(
    ctx: &Context<'_>,
    field: &str,
    title_id: &str,
    present: bool,
) -> async_graphql::Result<MyListUpdate> {
    let viewer = require_viewer(ctx)?;
    let title_id = title_id_arg(title_id)?;
    let composer = composer(ctx)?;
    authorize(composer, viewer, field)?;
    let changed = composer
        .set_in_my_list(viewer, title_id, present, request(ctx)?)
        .await
        .map_err(|e| backend_error(&e))?
        .ok_or_else(|| ErrorCode::BadUserInput.error(format!("unknown title `{title_id}`")))?;
    Ok(MyListUpdate {
        title_id: ID(title_id.to_owned()),
        in_my_list: present,
        changed,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
    use serde_json::json;

    use super::Image;
    use crate::graphql::ScalarFields;
    use crate::{
        domain::{self, ImageKind},
        graphql::{Inline, Scalars},
    };

    struct Query(domain::Image);

    #[Object]
    impl Query {
        async fn inline(&self) -> Inline<Image<'_>> {
            Inline(Image::from(&self.0))
        }

        async fn scalars(&self) -> Scalars<Image<'_>> {
            Scalars(Image::from(&self.0))
        }
    }

    fn schema() -> Schema<Query, EmptyMutation, EmptySubscription> {
        let image = domain::Image {
            kind: ImageKind::Poster,
            width: 342,
            height: 513,
            url: "https://img/t1/poster/w342.jpg?a=\"quoted\"".into(),
        };
        Schema::new(Query(image), EmptyMutation, EmptySubscription)
    }

    /// `Image`'s shortcut gives what its `SimpleObject` resolvers give, and covers every field.
    #[tokio::test]
    async fn image_scalar_fields_equal_the_resolvers() {
        let schema = schema();
        let out = schema
            .execute("{ a: inline { __typename url width height } b: scalars { __typename url width height } }")
            .await;
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let data = out.data.into_json().unwrap();
        assert_eq!(data["a"], data["b"]);
        assert_eq!(data["b"]["width"], json!(342));

        let fields = schema
            .execute(r#"{ __type(name: "Image") { fields { name } } }"#)
            .await
            .data
            .into_json()
            .unwrap();
        let sample = schema_image();
        let image = Image::from(&sample);
        for f in fields["__type"]["fields"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap();
            assert!(image.scalar_field(name).is_some(), "no shortcut for {name}");
        }
    }

    fn schema_image() -> domain::Image {
        domain::Image {
            kind: ImageKind::Hero,
            width: 1,
            height: 1,
            url: String::new(),
        }
    }
}
