//! The mobile GraphQL types: the compact `Title` card. Its homepage is the shared rows, no hero.

use std::sync::Arc;

use async_graphql::{MergedObject, Object};
use shared::{
    compose::Homepage as Composed,
    domain::{self, ImageKind},
    error::ErrorCode,
    graphql::{
        Scalars, TitleView,
        types::{HomepageRows, HomepageView, Image, TitleBasics},
    },
    profile::{ClientProfile, nearest_image},
};

/// The mobile homepage: rows of compact cards in display order (no hero on mobile).
#[derive(MergedObject)]
#[graphql(name = "Homepage")]
pub struct Homepage(HomepageRows<Title>);

impl HomepageView for Homepage {
    const WANTS_HERO: bool = false;
    fn view(home: Composed, profile: &Arc<ClientProfile>) -> Self {
        Self(HomepageRows::new(Arc::new(home), profile))
    }
}

/// A film or series as a compact card.
#[derive(MergedObject)]
#[graphql(name = "Title")]
pub struct Title(TitleBasics, CardFields);

impl TitleView for Title {
    fn view(title: Arc<domain::Title>, profile: &Arc<ClientProfile>) -> Self {
        Self(
            TitleBasics::new(title.clone()),
            CardFields {
                title,
                profile: profile.clone(),
            },
        )
    }
}

/// The trimmed part of a mobile card.
pub struct CardFields {
    title: Arc<domain::Title>,
    profile: Arc<ClientProfile>,
}

#[Object]
impl CardFields {
    /// Synopsis cut to at most 140 characters at a word boundary, ending with "…" when cut.
    async fn synopsis(&self) -> String {
        self.profile.synopsis(&self.title.synopsis).into_owned()
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
    ) -> async_graphql::Result<Option<Scalars<Image<'_>>>> {
        if !(1..=4096).contains(&width) || !(0.5..=4.0).contains(&dpr) {
            return Err(ErrorCode::BadUserInput.error("width must be 1-4096 and dpr 0.5-4"));
        }
        // Bounded above, so the product fits comfortably and rounds to a whole pixel count.
        let target = (f64::from(width) * dpr).round() as u32;
        Ok(nearest_image(&self.title, ImageKind::Poster, target).map(|i| Scalars(Image::from(i))))
    }
}
