//! The web GraphQL types: the rich `Title` and a `Homepage` that adds a hero to the shared rows.

use std::sync::Arc;

use async_graphql::{MergedObject, Object, ServerResult};
use shared::{
    compose::Homepage as Composed,
    domain::{self, ImageKind},
    graphql::{
        FieldOut, Inline, InlineList, RenderFields, Rendered, Scalars, TitleView,
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
    async fn hero(&self) -> Option<Rendered<Title>> {
        self.0.clone().map(|t| Rendered(Title::of(t)))
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

impl RenderFields for Title {
    fn render_field(&self, f: &mut FieldOut<'_, '_>) -> ServerResult<bool> {
        Ok(self.0.render_field(f)? || self.1.render_field(f)?)
    }
}

/// The web-only, untrimmed part of a title.
pub struct RichFields(Arc<domain::Title>);

shared::graphql_object! {
    #[Object]
    impl[] RichFields, self {
        /// Full synopsis.
        fn synopsis() -> &str => str(self.0.synopsis.as_str());
        /// Genres, most relevant first.
        fn genres() -> InlineList<&str> => strs(self.0.genres.as_slice());
        /// Cast in billing order.
        fn cast() -> InlineList<&str> => strs(self.0.cast.as_slice());
        /// Artwork at every width.
        fn images() -> Inline<TitleImages<'_>> => object(TitleImages(&self.0));
    }
}

/// Artwork of a title, each kind at every available width (narrowest first), for `srcset`.
/// Borrows the title, so listing an image copies no URL.
pub struct TitleImages<'a>(&'a domain::Title);

impl<'a> TitleImages<'a> {
    fn of(&self, kind: ImageKind) -> impl Iterator<Item = Image<'a>> {
        self.0.images_of(kind).into_iter().map(Image::from)
    }
}

shared::graphql_object! {
    #[Object]
    impl[<'a>] TitleImages<'a>, self {
        /// Portrait 2:3 posters.
        fn poster() -> InlineList<Scalars<Image<'a>>> => objects(self.of(ImageKind::Poster));
        /// Landscape 16:9 backdrops.
        fn backdrop() -> InlineList<Scalars<Image<'a>>> => objects(self.of(ImageKind::Backdrop));
        /// Wide hero banners.
        fn hero() -> InlineList<Scalars<Image<'a>>> => objects(self.of(ImageKind::Hero));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use async_graphql::{EmptyMutation, EmptySubscription, Object, Request, Schema};
    use serde_json::{Value as Json, json};
    use shared::{
        domain::{self, Image, ImageKind},
        graphql::{RenderJson, Rendered, TitleView, response_json},
    };

    use super::Title;

    /// Every web title field, and every field of the types under it.
    const QUERY: &str = "{ title { __typename id name synopsis year maturityRating runtimeMinutes genres cast \
        images { __typename poster { url width height } backdrop { url width height } hero { url width height } } } }";

    fn sample() -> Arc<domain::Title> {
        let mut images = Vec::new();
        // Out of order on purpose: the surface lists each kind narrowest first.
        for width in [780, 160, 342] {
            for kind in [ImageKind::Hero, ImageKind::Poster, ImageKind::Backdrop] {
                images.push(Image {
                    kind,
                    width,
                    height: width * 3 / 2,
                    url: format!("https://img.example/t7/{kind:?}/w{width}.jpg"),
                });
            }
        }
        Arc::new(domain::Title {
            id: "t7".into(),
            name: "The \"Quoted\" Café".into(),
            synopsis: "Line one.\nLine two — with a tab\tand a backslash \\.".into(),
            year: 1999,
            maturity_rating: "PG-13".into(),
            runtime_minutes: 121,
            genres: vec![
                "Drama".into(),
                "Thriller".into(),
                "Comedy".into(),
                "Crime".into(),
            ],
            cast: vec!["Ana Ruiz".into(), "Bo Chen".into()],
            images,
        })
    }

    struct Query(Arc<domain::Title>);

    #[Object]
    impl Query {
        async fn title(&self) -> Rendered<Title> {
            let profile = Arc::new(crate::defaults().profile);
            Rendered(Title::view(self.0.clone(), &profile))
        }
    }

    async fn run(query: &str, render: Option<&RenderJson>) -> Json {
        let schema = Schema::new(Query(sample()), EmptyMutation, EmptySubscription);
        let mut request = Request::new(query);
        if let Some(r) = render {
            request = request.data(r.clone());
        }
        serde_json::from_slice(&response_json(&schema.execute(request).await).unwrap()).unwrap()
    }

    /// The rendered web title is the value tree's, byte for byte, and no field of it needs its
    /// resolver (so a field added to `Title` without a `render_field` arm fails here).
    #[tokio::test]
    async fn every_title_field_renders_as_its_resolver_answers() {
        let render = RenderJson::default();
        let rendered = run(QUERY, Some(&render)).await;
        assert_eq!(rendered, run(QUERY, None).await);
        assert_eq!(render.fallbacks(), 0);
        let title = &rendered["data"]["title"];
        assert_eq!(title["genres"].as_array().unwrap().len(), 4);
        assert_eq!(
            title["images"]["poster"],
            json!([
                { "url": "https://img.example/t7/Poster/w160.jpg", "width": 160, "height": 240 },
                { "url": "https://img.example/t7/Poster/w342.jpg", "width": 342, "height": 513 },
                { "url": "https://img.example/t7/Poster/w780.jpg", "width": 780, "height": 1170 },
            ])
        );

        // QUERY selects every field there is.
        let fields = |ty: &str| {
            let q = format!("{{ __type(name: \"{ty}\") {{ fields {{ name }} }} }}");
            async move {
                let out = run(&q, None).await;
                out["data"]["__type"]["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["name"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        let all = "id name year maturityRating runtimeMinutes synopsis genres cast images";
        assert_eq!(fields("Title").await, all.split(' ').collect::<Vec<_>>());
        assert_eq!(fields("TitleImages").await, ["poster", "backdrop", "hero"]);
        assert_eq!(fields("Image").await, ["url", "width", "height"]);
    }
}
