//! The parallel homepage: contents equal the fixture data, exact upstream call counts, row calls
//! overlap, one catalog call with the union of ids.

use std::collections::BTreeSet;

use bff_fixtures::Backend;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn web_homepage_for_a_known_user_equals_the_fixture_data() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let (status, body) = app.post_graphql(WEB_FULL, json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let data = app.data();

    assert_eq!(
        kinds(&body),
        [
            "CONTINUE_WATCHING",
            "RECOMMENDED",
            "TOP_10",
            "MY_LIST",
            "NEW_RELEASES"
        ]
    );

    let cw = row(&body, "CONTINUE_WATCHING");
    let expected: Vec<_> = data
        .continue_watching("u1")
        .unwrap()
        .iter()
        .take(20)
        .collect();
    assert_eq!(
        ids(cw),
        expected
            .iter()
            .map(|e| e.title_id.clone())
            .collect::<Vec<_>>()
    );
    for (item, e) in cw["items"].as_array().unwrap().iter().zip(&expected) {
        assert_eq!(item["progress"]["positionSeconds"], e.position_seconds);
        assert_eq!(item["progress"]["durationSeconds"], e.duration_seconds);
        assert!(item["rank"].is_null() && item["reason"].is_null());
    }

    let recs = row(&body, "RECOMMENDED");
    let expected: Vec<_> = data
        .recommendations("u1")
        .unwrap()
        .iter()
        .take(20)
        .collect();
    assert_eq!(
        ids(recs),
        expected
            .iter()
            .map(|e| e.title_id.clone())
            .collect::<Vec<_>>()
    );
    for (item, e) in recs["items"].as_array().unwrap().iter().zip(&expected) {
        assert_eq!(item["reason"], e.reason.as_str());
    }

    let top = row(&body, "TOP_10");
    let expected = data.top10("US").unwrap();
    assert_eq!(
        ids(top),
        expected
            .iter()
            .map(|e| e.title_id.clone())
            .collect::<Vec<_>>()
    );
    let ranks: Vec<u64> = top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, (1..=10).collect::<Vec<u64>>());

    let my = row(&body, "MY_LIST");
    let expected: Vec<String> = data
        .my_list_seed("u1")
        .unwrap()
        .iter()
        .take(20)
        .map(|e| e.title_id.clone())
        .collect();
    assert_eq!(ids(my), expected);

    let new = row(&body, "NEW_RELEASES");
    let expected: Vec<String> = data
        .new_releases("US")
        .unwrap()
        .iter()
        .take(20)
        .map(|e| e.title_id.clone())
        .collect();
    assert_eq!(ids(new), expected);

    // Titles are the catalog's, untrimmed on web.
    let first = &cw["items"][0]["title"];
    let title = data.title(first["id"].as_str().unwrap()).unwrap();
    assert_eq!(first["name"], title.name.as_str());
    assert_eq!(first["synopsis"], title.synopsis.as_str());
    assert_eq!(first["cast"].as_array().unwrap().len(), title.cast.len());
    assert_eq!(
        first["genres"].as_array().unwrap().len(),
        title.genres.len()
    );
    assert_eq!(first["images"]["poster"].as_array().unwrap().len(), 6);
    assert_eq!(first["images"]["hero"].as_array().unwrap().len(), 6);
    // The hero is the best recommendation.
    assert_eq!(
        body["data"]["homepage"]["hero"]["id"],
        recs["items"][0]["title"]["id"]
    );
    // Headings use the viewer's first name from the profile service.
    let first_name = data
        .profile("u1")
        .unwrap()
        .name
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(cw["heading"], format!("Continue Watching for {first_name}"));
}

#[tokio::test]
async fn one_homepage_makes_one_call_per_source_and_one_catalog_call_for_the_union() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let body = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    let stats = app.control().stats();
    for b in [
        Backend::Profile,
        Backend::ContinueWatching,
        Backend::Recommendations,
        Backend::Top10,
        Backend::MyList,
        Backend::NewReleases,
        Backend::Catalog,
    ] {
        assert_eq!(stats.get(b).calls, 1, "{b} calls");
    }
    // The catalog got exactly the de-duplicated union of every row's ids.
    let union: BTreeSet<String> = body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(ids)
        .collect();
    let listed: usize = body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ids(r).len())
        .sum();
    assert!(
        union.len() < listed,
        "fixture rows share titles, so the union must be smaller than the sum"
    );
    assert_eq!(
        stats.get(Backend::Catalog).ids_requested,
        union.len() as u64
    );
}

#[tokio::test]
async fn row_sources_are_called_concurrently_and_the_catalog_after_them() {
    let app = spawn_app(web()).await;
    // Latency makes every call long enough that sequential calls could not overlap.
    for b in Backend::ALL {
        app.fault(b, latency(40));
    }
    let token = app.token("u2");
    app.homepage("kind", Some(&token)).await;
    let stats = app.control().stats();
    let sources = [
        Backend::Profile,
        Backend::ContinueWatching,
        Backend::Recommendations,
        Backend::Top10,
        Backend::MyList,
        Backend::NewReleases,
    ];
    for a in sources {
        for b in sources {
            if a < b {
                assert!(stats.overlapping(a, b), "{a} and {b} should overlap");
            }
        }
    }
    // The catalog round starts only after every source answered: exactly two rounds.
    let catalog_start = stats.get(Backend::Catalog).spans[0].start_us;
    for s in sources {
        let end = stats.get(s).spans[0].end_us.unwrap();
        assert!(end <= catalog_start, "{s} ended after the catalog started");
    }
}

#[tokio::test]
async fn anonymous_homepage_has_only_public_rows_and_touches_no_personal_backend() {
    let app = spawn_app(web()).await;
    let body = app.homepage("kind items { title { id } }", None).await;
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
    let stats = app.control().stats();
    for b in [
        Backend::Profile,
        Backend::ContinueWatching,
        Backend::Recommendations,
        Backend::MyList,
    ] {
        assert_eq!(
            stats.get(b).calls,
            0,
            "{b} must not be called for an anonymous viewer"
        );
    }
    assert_eq!(stats.get(Backend::Catalog).calls, 1);
}

#[tokio::test]
async fn empty_rows_are_left_out() {
    let app = spawn_app(web()).await;
    let data = app.data();
    assert!(
        data.continue_watching("u200").unwrap().is_empty()
            && data.my_list_seed("u200").unwrap().is_empty()
    );
    let body = app.homepage("kind", Some(&app.token("u200"))).await;
    assert_eq!(kinds(&body), ["RECOMMENDED", "TOP_10", "NEW_RELEASES"]);
}

#[tokio::test]
async fn the_region_defaults_to_the_viewers_own() {
    let app = spawn_app(web()).await;
    let data = app.data();
    let user = data.users().iter().find(|u| u.region != "US").unwrap();
    let (status, body) = app
        .post_graphql(
            "{ homepage { region rows { kind items { title { id } } } } }",
            json!({}),
            Some(&app.token(&user.id)),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["homepage"]["region"], user.region.as_str());
    let expected: Vec<String> = data
        .top10(&user.region)
        .unwrap()
        .iter()
        .map(|t| t.title_id.clone())
        .collect();
    assert_eq!(ids(row(&body, "TOP_10")), expected);
}

#[tokio::test]
async fn title_by_id_returns_the_title_or_null() {
    let app = spawn_app(web()).await;
    let (_, body) = app
        .post_graphql("{ title(id: \"t17\") { id name year } }", json!({}), None)
        .await;
    let t = app.data().title("t17").unwrap().clone();
    assert_eq!(body["data"]["title"]["name"], t.name.as_str());
    assert_eq!(body["data"]["title"]["year"], t.year);
    let (_, body) = app
        .post_graphql("{ title(id: \"t999999\") { id } }", json!({}), None)
        .await;
    assert!(
        body["data"]["title"].is_null() && body.get("errors").is_none(),
        "{body}"
    );
    let (_, body) = app
        .post_graphql("{ title(id: \"../etc\") { id } }", json!({}), None)
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn a_bad_region_is_bad_user_input() {
    let app = spawn_app(web()).await;
    let (status, body) = app
        .post_graphql(
            "{ homepage(region: \"USA\") { rows { kind } } }",
            json!({}),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}
