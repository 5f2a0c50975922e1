//! The mobile GraphQL schema: `homepage` without a hero, and the compact `Title` card.

use std::sync::Arc;

use async_graphql::{Context, EmptySubscription, ID, MergedObject, Object, SimpleObject};
use shared::{
    compose::{Composer, Homepage as Composed},
    config::GraphqlSettings,
    domain::{self, ImageKind},
    error::ErrorCode,
    graphql::{
        GraphqlExecutor, TitleView,
        types::{CommonQuery, MyListMutation, Row, load_homepage, rows},
    },
    profile::{ClientProfile, nearest_image},
};

/// The mobile schema's root query.
#[derive(MergedObject, Default)]
pub struct Query(HomeQuery, CommonQuery<Title>);

/// The mobile schema type.
pub type MobileSchema = async_graphql::Schema<Query, MyListMutation, EmptySubscription>;

/// Builds the mobile schema over `composer`.
pub fn build(composer: Composer, limits: &GraphqlSettings) -> Arc<dyn GraphqlExecutor> {
    let schema: MobileSchema = shared::graphql::schema_builder(
        Query::default(),
        MyListMutation,
        EmptySubscription,
        composer,
        limits,
    )
    .finish();
    Arc::new(schema)
}

/// `homepage`.
#[derive(Default)]
pub struct HomeQuery;

#[Object]
impl HomeQuery {
    /// The homepage for the signed-in viewer or, without a token, the public rows (TOP_10).
    /// `region` (e.g. "US") picks the regional rows; without it the viewer's home region is used.
    /// A row whose service failed is null with an error at its path.
    async fn homepage(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<Homepage> {
        let composer = shared::graphql::composer(ctx)?;
        Ok(Homepage {
            home: load_homepage(ctx, region, false).await?,
            profile: composer.profile().clone(),
        })
    }
}

/// A stitched mobile homepage.
pub struct Homepage {
    home: Composed,
    profile: Arc<ClientProfile>,
}

/// The mobile homepage: rows in display order.
#[Object]
impl Homepage {
    /// Region the regional rows are for.
    async fn region(&self) -> &str {
        self.home.region.as_str()
    }

    /// Rows in display order, at most 10 cards each. Empty rows are left out; a row whose service
    /// failed is null, with an error (BACKEND_UNAVAILABLE or BACKEND_TIMEOUT, `backend` naming the
    /// service) at its index.
    async fn rows(&self) -> Vec<Option<async_graphql::Result<Row<Title>>>> {
        rows(&self.home, &self.profile)
    }
}

/// A compact title card.
pub struct Title {
    title: Arc<domain::Title>,
    profile: Arc<ClientProfile>,
}

impl TitleView for Title {
    fn view(title: Arc<domain::Title>, profile: &Arc<ClientProfile>) -> Self {
        Self {
            title,
            profile: profile.clone(),
        }
    }
}

/// A poster sized for the device.
#[derive(SimpleObject)]
pub struct Image {
    /// Absolute URL.
    pub url: String,
    /// Width in pixels of this rendition.
    pub width: u32,
    /// Height in pixels of this rendition.
    pub height: u32,
}

/// A film or series, as a compact card.
#[Object]
impl Title {
    /// Title id, for `title(id:)` and the my-list mutations.
    async fn id(&self) -> ID {
        ID(self.title.id.clone())
    }

    /// Display name.
    async fn name(&self) -> &str {
        &self.title.name
    }

    /// Synopsis cut to at most 140 characters at a word boundary, ending with "…" when cut.
    async fn synopsis(&self) -> String {
        self.profile.synopsis(&self.title.synopsis).into_owned()
    }

    /// Release year.
    async fn year(&self) -> i32 {
        self.title.year
    }

    /// Maturity rating, e.g. "PG-13".
    async fn maturity_rating(&self) -> &str {
        &self.title.maturity_rating
    }

    /// Runtime in minutes.
    async fn runtime_minutes(&self) -> u32 {
        self.title.runtime_minutes
    }

    /// Up to three genres, most relevant first.
    async fn genres(&self) -> &[String] {
        self.profile.genres(&self.title)
    }

    /// The one poster to load: the rendition closest to `width` × `dpr` pixels (e.g. width 171 at
    /// dpr 2 picks the 342 px poster). `width` 1–4096, `dpr` 0.5–4.
    async fn image(
        &self,
        // 342 px is a typical phone card poster.
        #[graphql(default = 342)] width: i32,
        #[graphql(default = 1.0)] dpr: f64,
    ) -> async_graphql::Result<Option<Image>> {
        if !(1..=4096).contains(&width) || !(0.5..=4.0).contains(&dpr) {
            return Err(ErrorCode::BadUserInput.error("width must be 1-4096 and dpr 0.5-4"));
        }
        // Bounded above, so the product fits comfortably and rounds to a whole pixel count.
        let target = (f64::from(width) * dpr).round() as u32;
        Ok(
            nearest_image(&self.title, ImageKind::Poster, target).map(|i| Image {
                url: i.url.clone(),
                width: i.width,
                height: i.height,
            }),
        )
    }
}
