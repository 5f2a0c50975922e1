//! The web GraphQL types: the rich `Title` and a `Homepage` that adds a hero to the shared rows.

use std::sync::Arc;

use async_graphql::{MergedObject, Object};
use shared::{
    compose::Homepage as Composed,
    domain::{self, ImageKind},
    graphql::{
        Inline, InlineList, Scalars, TitleView,
        types::{HomepageRows, HomepageView, Image, TitleBasics},
    },
    profile::ClientProfile,
};

/// The web homepage: the shared region and rows, plus a hero banner.
#[derive(MergedObject)]
#[graphql(name = "Homepage")]
pub struct Homepage(HomepageRows<Title>, Hero);

impl HomepageView for Homepage {
    const WANTS_HERO: bool = true;
    fn view(home: Composed, profile: &Arc<ClientProfile>) -> Self {
        let hero = home.hero.clone();
        Self(HomepageRows::new(Arc::new(home), profile), Hero(hero))
    }
}

/// The hero part of the web homepage.
pub struct Hero(Option<Arc<domain::Title>>);

#[Object]
impl Hero {
    /// The title to feature in the banner: the viewer's best pick, else the region's number one.
    async fn hero(&self) -> Option<Inline<Title>> {
        self.0.clone().map(|t| Inline(Title::of(t)))
    }
}

/// A film or series with everything the web page shows.
#[derive(MergedObject)]
#[graphql(name = "Title")]
pub struct Title(TitleBasics, RichFields);

impl Title {
    /// Web titles are never trimmed, so no profile is needed.
    fn of(title: Arc<domain::Title>) -> Self {
        Self(TitleBasics::new(title.clone()), RichFields(title))
    }
}

impl TitleView for Title {
    fn view(title: Arc<domain::Title>, _profile: &Arc<ClientProfile>) -> Self {
        Self::of(title)
    }
}

/// The web-only, untrimmed part of a title.
pub struct RichFields(Arc<domain::Title>);

#[Object]
impl RichFields {
    /// Full synopsis.
    async fn synopsis(&self) -> &str {
        &self.0.synopsis
    }

    /// Genres, most relevant first.
    async fn genres(&self) -> InlineList<&str> {
        strings(&self.0.genres)
    }

    /// Cast in billing order.
    async fn cast(&self) -> InlineList<&str> {
        strings(&self.0.cast)
    }

    /// Artwork at every width.
    async fn images(&self) -> Inline<TitleImages<'_>> {
        Inline(TitleImages(&self.0))
    }
}

/// A list of strings borrowed from the title.
fn strings(list: &[String]) -> InlineList<&str> {
    InlineList(list.iter().map(String::as_str).collect())
}

/// Artwork of a title, each kind at every available width (narrowest first), for `srcset`.
/// Borrows the title, so listing an image copies no URL.
pub struct TitleImages<'a>(&'a domain::Title);

impl<'a> TitleImages<'a> {
    fn of(&self, kind: ImageKind) -> InlineList<Scalars<Image<'a>>> {
        InlineList(
            self.0
                .images_of(kind)
                .into_iter()
                .map(|i| Scalars(Image::from(i)))
                .collect(),
        )
    }
}

#[Object]
impl<'a> TitleImages<'a> {
    /// Portrait 2:3 posters.
    async fn poster(&self) -> InlineList<Scalars<Image<'a>>> {
        self.of(ImageKind::Poster)
    }

    /// Landscape 16:9 backdrops.
    async fn backdrop(&self) -> InlineList<Scalars<Image<'a>>> {
        self.of(ImageKind::Backdrop)
    }

    /// Wide hero banners.
    async fn hero(&self) -> InlineList<Scalars<Image<'a>>> {
        self.of(ImageKind::Hero)
    }
}
