//! The mobile surface: trimmed cards, four rows of at most ten, no rich fields at all, and a
//! payload at most a quarter of the web one for the same user.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn mobile_cards_are_trimmed_per_the_profile() {
    let app = spawn_app(mobile()).await;
    let token = app.token("u1");
    let (status, body) = app.post_graphql(MOBILE_FULL, json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        kinds(&body),
        ["CONTINUE_WATCHING", "MY_LIST", "TOP_10", "RECOMMENDED"]
    );
    let data = app.data();
    let mut cut = 0;
    for r in body["data"]["homepage"]["rows"].as_array().unwrap() {
        let items = r["items"].as_array().unwrap();
        assert!(items.len() <= 10, "{}", r["kind"]);
        for item in items {
            let t = &item["title"];
            let full = data.title(t["id"].as_str().unwrap()).unwrap();
            let synopsis = t["synopsis"].as_str().unwrap();
            assert!(synopsis.chars().count() <= 140, "{synopsis}");
            if synopsis != full.synopsis {
                cut += 1;
                let head = synopsis
                    .strip_suffix('…')
                    .expect("cut synopsis ends with …");
                assert!(full.synopsis.starts_with(head));
                // Cut at a word boundary: the next character of the original is whitespace or punctuation.
                let next = full.synopsis[head.len()..].chars().next().unwrap();
                assert!(!next.is_alphanumeric(), "cut inside a word: {synopsis:?}");
            }
            let genres = t["genres"].as_array().unwrap();
            assert!(genres.len() <= 3);
            assert_eq!(
                genres
                    .iter()
                    .map(|g| g.as_str().unwrap())
                    .collect::<Vec<_>>(),
                full.genres
                    .iter()
                    .take(3)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            );
            // width 171 at dpr 2 → the 342 px poster.
            assert_eq!(t["image"]["width"], 342);
            assert!(t["image"]["url"].as_str().unwrap().contains("poster"));
        }
    }
    assert!(
        cut > 0,
        "fixture synopses are 400-800 chars, so cards must be cut"
    );
}

#[tokio::test]
async fn image_picks_the_nearest_width_and_rejects_silly_sizes() {
    let app = spawn_app(mobile()).await;
    for (width, dpr, expect) in [
        (100, 1.0, 160),
        (400, 1.0, 342),
        (430, 1.0, 500),
        (390, 3.0, 1280),
        (2000, 2.0, 1920),
    ] {
        let q =
            format!("{{ title(id: \"t3\") {{ image(width: {width}, dpr: {dpr}) {{ width }} }} }}");
        let (_, body) = app.post_graphql(&q, json!({}), None).await;
        assert_eq!(
            body["data"]["title"]["image"]["width"], expect,
            "{width}x{dpr}: {body}"
        );
    }
    let (_, body) = app
        .post_graphql(
            "{ title(id: \"t3\") { image(width: 0) { width } } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn mobile_has_no_rich_fields_at_all() {
    let app = spawn_app(mobile()).await;
    for field in ["cast", "images { poster { url } }", "backdrop", "hero"] {
        let q = format!("{{ title(id: \"t1\") {{ {field} }} }}");
        let (status, body) = app.post_graphql(&q, json!({}), None).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"], "{field}");
    }
    let (status, body) = app
        .post_graphql("{ homepage { hero { id } } }", json!({}), None)
        .await;
    assert_eq!(
        (status.as_u16(), codes(&body)),
        (400, vec!["GRAPHQL_VALIDATION_FAILED".to_owned()])
    );
    let sdl = shared::cli::sdl(&mobile()).unwrap();
    for field in ["\tcast:", "\tbackdrop:", "\thero:", "\timages:"] {
        assert!(!sdl.contains(field), "mobile SDL defines {field:?}");
    }
    assert!(
        sdl.contains("\timage(") && sdl.contains("\tsynopsis:"),
        "{sdl}"
    );
}

#[tokio::test]
async fn mobile_payload_is_at_most_a_quarter_of_web_for_the_same_user() {
    let web_app = spawn_app(web()).await;
    let mobile_app = spawn_app(mobile()).await;
    let (_, web_body) = web_app
        .post_graphql(WEB_FULL, json!({}), Some(&web_app.token("u1")))
        .await;
    let (_, mobile_body) = mobile_app
        .post_graphql(MOBILE_FULL, json!({}), Some(&mobile_app.token("u1")))
        .await;
    let (w, m) = (web_body.to_string().len(), mobile_body.to_string().len());
    assert!(m * 4 <= w, "mobile {m} bytes vs web {w} bytes");
}
