//! The web GraphQL schema: `homepage` with a hero, and the rich `Title`.

use std::sync::Arc;

use async_graphql::{Context, EmptySubscription, ID, MergedObject, Object, SimpleObject};
use shared::{
    compose::{Composer, Homepage as Composed},
    config::GraphqlSettings,
    domain::{self, ImageKind},
    graphql::{
        GraphqlExecutor, TitleView,
        types::{CommonQuery, MyListMutation, Row, load_homepage, rows},
    },
    profile::ClientProfile,
};

/// The web schema's root query.
#[derive(MergedObject, Default)]
pub struct Query(HomeQuery, CommonQuery<Title>);

/// The web schema type.
pub type WebSchema = async_graphql::Schema<Query, MyListMutation, EmptySubscription>;

/// Builds the web schema over `composer`.
pub fn build(composer: Composer, limits: &GraphqlSettings) -> Arc<dyn GraphqlExecutor> {
    let schema: WebSchema = shared::graphql::schema_builder(
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
    /// The homepage for the signed-in viewer (all rows) or, without a token, the public rows
    /// (TOP_10, NEW_RELEASES). `region` (e.g. "US") picks the regional rows; without it the
    /// viewer's home region is used. A row whose service failed is null with an error at its path.
    async fn homepage(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<Homepage> {
        let composer = shared::graphql::composer(ctx)?;
        Ok(Homepage {
            home: load_homepage(ctx, region, true).await?,
            profile: composer.profile().clone(),
        })
    }
}

/// A stitched web homepage.
pub struct Homepage {
    home: Composed,
    profile: Arc<ClientProfile>,
}

/// The web homepage: a hero banner and rows in display order.
#[Object]
impl Homepage {
    /// Region the regional rows are for.
    async fn region(&self) -> &str {
        self.home.region.as_str()
    }

    /// Rows in display order. Empty rows are left out; a row whose service failed is null, with
    /// an error (code BACKEND_UNAVAILABLE or BACKEND_TIMEOUT, `backend` naming the service) at its index.
    async fn rows(&self) -> Vec<Option<async_graphql::Result<Row<Title>>>> {
        rows(&self.home, &self.profile)
    }

    /// The title to feature in the banner: the viewer's best pick, else the region's number one.
    async fn hero(&self) -> Option<Title> {
        self.home.hero.clone().map(|t| Title { title: t })
    }
}

/// A title with everything the web page shows.
pub struct Title {
    title: Arc<domain::Title>,
}

impl TitleView for Title {
    fn view(title: Arc<domain::Title>, _profile: &Arc<ClientProfile>) -> Self {
        Self { title }
    }
}

/// One image rendition.
#[derive(SimpleObject)]
pub struct Image {
    /// Absolute URL.
    pub url: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Artwork of a title, each kind at every available width (narrowest first), for `srcset`.
pub struct TitleImages {
    title: Arc<domain::Title>,
}

fn images(title: &domain::Title, kind: ImageKind) -> Vec<Image> {
    title
        .images_of(kind)
        .into_iter()
        .map(|i| Image {
            url: i.url.clone(),
            width: i.width,
            height: i.height,
        })
        .collect()
}

#[Object]
impl TitleImages {
    /// Portrait 2:3 posters.
    async fn poster(&self) -> Vec<Image> {
        images(&self.title, ImageKind::Poster)
    }

    /// Landscape 16:9 backdrops.
    async fn backdrop(&self) -> Vec<Image> {
        images(&self.title, ImageKind::Backdrop)
    }

    /// Wide hero banners.
    async fn hero(&self) -> Vec<Image> {
        images(&self.title, ImageKind::Hero)
    }
}

/// A film or series.
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

    /// Full synopsis.
    async fn synopsis(&self) -> &str {
        &self.title.synopsis
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

    /// Genres, most relevant first.
    async fn genres(&self) -> &[String] {
        &self.title.genres
    }

    /// Cast in billing order.
    async fn cast(&self) -> &[String] {
        &self.title.cast
    }

    /// Artwork at every width.
    async fn images(&self) -> TitleImages {
        TitleImages {
            title: self.title.clone(),
        }
    }
}
