//! The mobile GraphQL types: the compact `Title` card. Its homepage is the shared rows, no hero.

use std::sync::Arc;

use async_graphql::{MergedObject, ServerResult};
use shared::{
    compose::Homepage as Composed,
    domain::{self, ImageKind},
    error::ErrorCode,
    graphql::{
        FieldOut, RenderFields, Scalars, TitleView,
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

impl RenderFields for Title {
    fn render_field(&self, f: &mut FieldOut<'_, '_>) -> ServerResult<bool> {
        Ok(self.0.render_field(f)? || self.1.render_field(f)?)
    }
}

/// The trimmed part of a mobile card.
pub struct CardFields {
    title: Arc<domain::Title>,
    profile: Arc<ClientProfile>,
}

impl CardFields {
    /// The poster closest to `width` × `dpr` pixels; BAD_USER_INPUT outside the documented ranges.
    fn image_for(&self, width: i32, dpr: f64) -> async_graphql::Result<Option<Image<'_>>> {
        if !(1..=4096).contains(&width) || !(0.5..=4.0).contains(&dpr) {
            return Err(ErrorCode::BadUserInput.error("width must be 1-4096 and dpr 0.5-4"));
        }
        // Bounded above, so the product fits comfortably and rounds to a whole pixel count.
        let target = (f64::from(width) * dpr).round() as u32;
        Ok(nearest_image(&self.title, ImageKind::Poster, target).map(Image::from))
    }
}

shared::graphql_object! {
    #[Object]
    impl[] CardFields, self {
        /// Synopsis cut to at most 140 characters at a word boundary, ending with "…" when cut.
        fn synopsis() -> String => str(self.profile.synopsis(&self.title.synopsis));
        /// Up to three genres, most relevant first.
        fn genres() -> &[String] => strs(self.profile.genres(&self.title));
        /// The one poster to load: the rendition closest to `width` × `dpr` pixels (e.g. width
        /// 171 at dpr 2 picks the 342 px poster). `width` 1–4096 (default 342, a typical phone
        /// card poster), `dpr` 0.5–4 (default 1).
        fn image(width: i32 = 342, dpr: f64 = 1.0) -> async_graphql::Result<Option<Scalars<Image<'_>>>>
            => try_opt_object(self.image_for(width, dpr));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use async_graphql::{EmptyMutation, EmptySubscription, Object, Request, Schema, Variables};
    use serde_json::{Value as Json, json};
    use shared::{
        domain::{self, ImageKind},
        graphql::{RenderJson, Rendered, TitleView, response_json},
    };

    use super::Title;

    /// A catalog title long enough to be trimmed: a 300-character synopsis, five genres.
    fn long_title() -> Arc<domain::Title> {
        let images = [500, 160, 1280, 342]
            .into_iter()
            .map(|width| domain::Image {
                kind: ImageKind::Poster,
                width,
                height: width * 3 / 2,
                url: format!("https://img.example/t9/poster/w{width}.jpg"),
            })
            .collect();
        Arc::new(domain::Title {
            id: "t9".into(),
            name: "Nine \"Lives\"".into(),
            synopsis: "A word ".repeat(43),
            year: 2021,
            maturity_rating: "TV-MA".into(),
            runtime_minutes: 48,
            genres: ["Sci-Fi", "Drama", "Mystery", "Horror", "Action"]
                .map(String::from)
                .to_vec(),
            cast: vec!["Not On Mobile".into()],
            images,
        })
    }

    struct Query;

    #[Object]
    impl Query {
        async fn title(&self) -> Rendered<Title> {
            let profile = Arc::new(crate::defaults().profile);
            Rendered(Title::view(long_title(), &profile))
        }
    }

    /// The answer to `query` rendered and as a value tree, and the resolver fallbacks rendering took.
    async fn both(query: &str, variables: Json) -> (Json, Json, usize) {
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let render = RenderJson::default();
        let mut out = Vec::new();
        for with in [true, false] {
            let mut request =
                Request::new(query).variables(Variables::from_json(variables.clone()));
            if with {
                request = request.data(render.clone());
            }
            let bytes = response_json(&schema.execute(request).await).unwrap();
            out.push(serde_json::from_slice::<Json>(&bytes).unwrap());
        }
        let tree = out.pop().unwrap();
        (out.pop().unwrap(), tree, render.fallbacks())
    }

    /// Trimmed fields and the sized poster render as their resolvers answer, arguments from
    /// literals, defaults and variables alike, and out-of-range sizes fail the same way.
    #[tokio::test]
    async fn every_card_field_renders_as_its_resolver_answers() {
        let query = "query($w: Int!) { title { __typename id name synopsis year maturityRating runtimeMinutes genres \
            image { url width } small: image(width: 100, dpr: 1.5) { url } sized: image(width: $w) { width height } \
            bad: image(width: 0) { url } } }";
        let (rendered, tree, fallbacks) = both(query, json!({ "w": 1000 })).await;
        assert_eq!(rendered, tree);
        assert_eq!(fallbacks, 0);
        let title = &rendered["data"]["title"];
        assert!(title["synopsis"].as_str().unwrap().ends_with('…'));
        assert!(title["synopsis"].as_str().unwrap().chars().count() <= 140);
        assert_eq!(title["genres"], json!(["Sci-Fi", "Drama", "Mystery"]));
        assert_eq!(
            title["image"],
            json!({ "url": "https://img.example/t9/poster/w342.jpg", "width": 342 })
        );
        assert_eq!(
            title["small"]["url"],
            "https://img.example/t9/poster/w160.jpg"
        );
        assert_eq!(title["sized"], json!({ "width": 1280, "height": 1920 }));
        assert!(title.get("bad").is_none());
        assert_eq!(rendered["errors"][0]["path"], json!(["title", "bad"]));
        assert_eq!(
            rendered["errors"][0]["extensions"]["code"],
            "BAD_USER_INPUT"
        );

        // The query above selects every field the mobile title has.
        let (fields, _, _) = both(
            r#"{ __type(name: "Title") { fields { name } } }"#,
            json!({}),
        )
        .await;
        let names: Vec<&str> = fields["data"]["__type"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        let all = "id name year maturityRating runtimeMinutes synopsis genres image";
        assert_eq!(names, all.split(' ').collect::<Vec<_>>());
    }
}
