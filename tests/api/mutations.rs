//! My-list mutations: idempotent, and the next homepage shows the change.

use bff_fixtures::Backend;
use serde_json::json;

use crate::helpers::*;

const ADD: &str = "mutation($id: ID!) { addToMyList(titleId: $id) { titleId inMyList changed } }";
const REMOVE: &str =
    "mutation($id: ID!) { removeFromMyList(titleId: $id) { titleId inMyList changed } }";

#[tokio::test]
async fn add_then_remove_shows_in_the_next_homepage_and_is_idempotent() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let data = app.data();
    let in_list: Vec<String> = data
        .my_list_seed("u1")
        .unwrap()
        .iter()
        .map(|e| e.title_id.clone())
        .collect();
    let new_id = data
        .titles()
        .iter()
        .map(|t| t.id.clone())
        .find(|id| !in_list.contains(id))
        .unwrap();

    let (status, body) = app
        .post_graphql(ADD, json!({ "id": new_id }), Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["addToMyList"],
        json!({ "titleId": new_id, "inMyList": true, "changed": true })
    );
    let (_, body) = app
        .post_graphql(ADD, json!({ "id": new_id }), Some(&token))
        .await;
    assert_eq!(body["data"]["addToMyList"]["changed"], false);

    let home = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    assert_eq!(ids(row(&home, "MY_LIST"))[0], new_id);

    let (_, body) = app
        .post_graphql(REMOVE, json!({ "id": new_id }), Some(&token))
        .await;
    assert_eq!(
        body["data"]["removeFromMyList"],
        json!({ "titleId": new_id, "inMyList": false, "changed": true })
    );
    let (_, body) = app
        .post_graphql(REMOVE, json!({ "id": new_id }), Some(&token))
        .await;
    assert_eq!(body["data"]["removeFromMyList"]["changed"], false);
    let home = app
        .homepage("kind items { title { id } }", Some(&token))
        .await;
    assert!(!ids(row(&home, "MY_LIST")).contains(&new_id));
}

#[tokio::test]
async fn an_unknown_title_is_bad_user_input_and_a_failed_write_is_not_retried() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let (_, body) = app
        .post_graphql(ADD, json!({ "id": "t999999" }), Some(&token))
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    app.control().reset();
    app.fault(Backend::MyList, error_rate(1.0));
    let (_, body) = app
        .post_graphql(ADD, json!({ "id": "t5" }), Some(&token))
        .await;
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"]);
    assert_eq!(app.control().stats().get(Backend::MyList).calls, 1);
}

#[tokio::test]
async fn a_malformed_or_unknown_title_id_is_bad_user_input_before_any_write() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    // Ids the BFF's own syntax check refuses: no backend is called at all.
    let long = "t".repeat(65);
    for id in [
        "",
        "t1/../t2",
        "t 1",
        "t1%2F",
        "t1\u{0}",
        "ť1",
        long.as_str(),
    ] {
        for mutation in [ADD, REMOVE] {
            app.control().reset();
            let (status, body) = app
                .post_graphql(mutation, json!({ "id": id }), Some(&token))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{id:?}: {body}");
            assert_eq!(app.control().stats().total_calls(), 0, "{id:?}");
        }
    }
    // Ids of the right syntax that the catalog does not know (malformed for the my-list service,
    // which once answered 400 → BACKEND_UNAVAILABLE): refused before the write is sent.
    for id in ["abc", "t0", "x1", "T1", "t999999", "t-1", "t1_"] {
        for mutation in [ADD, REMOVE] {
            app.control().reset();
            let (_, body) = app
                .post_graphql(mutation, json!({ "id": id }), Some(&token))
                .await;
            assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{id:?}: {body}");
            assert_eq!(
                app.control().stats().get(Backend::MyList).calls,
                0,
                "{id:?} never reaches the my-list service"
            );
        }
    }
    // A real title still goes through.
    let (_, body) = app
        .post_graphql(ADD, json!({ "id": "t7" }), Some(&token))
        .await;
    assert!(body["errors"].is_null(), "{body}");
}
