//! Partial results: each backend failing in turn leaves the other rows intact, with a coded
//! error naming the backend at the failed row's path.

use std::time::Duration;

use bff_fixtures::Backend;
use serde_json::{Value, json};
use shared::config::BackendId;

use crate::helpers::*;

const ALL_ROWS: [&str; 5] = [
    "CONTINUE_WATCHING",
    "RECOMMENDED",
    "TOP_10",
    "MY_LIST",
    "NEW_RELEASES",
];

async fn homepage_with(app: &TestApp) -> Value {
    let token = app.token("u1");
    app.homepage("kind heading items { title { id } }", Some(&token))
        .await
}

#[tokio::test]
async fn each_backend_failing_in_turn_leaves_the_other_rows_intact() {
    // The cache would answer from the previous round; this test is about failures reaching clients.
    let app = spawn_app_with(web(), |s| s.cache.enabled = false).await;
    for b in Backend::ALL {
        app.control().reset();
        app.fault(b, error_rate(1.0));
        let body = homepage_with(&app).await;
        let rows = body["data"]["homepage"]["rows"].as_array().unwrap().clone();
        match (b, row_kind(b)) {
            (Backend::Catalog, _) => {
                // No invented titles: every row fails, each error names the catalog.
                assert!(rows.iter().all(Value::is_null), "{b}: {body}");
                let errs = errors(&body);
                assert_eq!(errs.len(), 5);
                for (i, e) in errs.iter().enumerate() {
                    assert_eq!(e["extensions"]["code"], "BACKEND_UNAVAILABLE");
                    assert_eq!(e["extensions"]["backend"], "catalog");
                    assert_eq!(e["path"], json!(["homepage", "rows", i]));
                }
            }
            (Backend::Profile, _) => {
                // The profile only feeds headings: all rows arrive, headings fall back.
                assert_eq!(kinds(&body), ALL_ROWS, "{body}");
                assert_eq!(
                    row(&body, "CONTINUE_WATCHING")["heading"],
                    "Continue Watching"
                );
            }
            (_, Some(kind)) => {
                let at = ALL_ROWS.iter().position(|k| *k == kind).unwrap();
                assert!(rows[at].is_null(), "{b}: {body}");
                let errs = errors(&body);
                assert_eq!(errs.len(), 1, "{body}");
                assert_eq!(errs[0]["path"], json!(["homepage", "rows", at]));
                assert_eq!(errs[0]["extensions"]["code"], "BACKEND_UNAVAILABLE");
                assert_eq!(errs[0]["extensions"]["backend"], b.name());
                for (i, k) in ALL_ROWS.iter().enumerate() {
                    if i != at {
                        assert_eq!(rows[i]["kind"], *k, "{b}: {body}");
                        assert!(!ids(&rows[i]).is_empty());
                    }
                }
                // The client sees no upstream detail (in the message: a random trace id may
                // happen to hold "503").
                assert!(!errs[0]["message"].to_string().contains("503"), "{body}");
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn a_stalled_backend_times_out_as_backend_timeout_and_the_rest_arrive() {
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::Top10].timeout = Duration::from_millis(150)
    })
    .await;
    app.fault(Backend::Top10, stalled());
    let body = homepage_with(&app).await;
    let errs = errors(&body);
    assert_eq!(errs.len(), 1, "{body}");
    assert_eq!(errs[0]["extensions"]["code"], "BACKEND_TIMEOUT");
    assert_eq!(errs[0]["extensions"]["backend"], "top10");
    assert_eq!(errs[0]["path"], json!(["homepage", "rows", 2]));
    assert_eq!(
        kinds(&body),
        [
            "CONTINUE_WATCHING",
            "RECOMMENDED",
            "null",
            "MY_LIST",
            "NEW_RELEASES"
        ]
    );
}

#[tokio::test]
async fn a_stalled_grpc_backend_times_out_too() {
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::Recommendations].timeout = Duration::from_millis(150)
    })
    .await;
    app.fault(Backend::Recommendations, stalled());
    let body = homepage_with(&app).await;
    assert_eq!(codes(&body), ["BACKEND_TIMEOUT"]);
    assert_eq!(errors(&body)[0]["extensions"]["backend"], "recommendations");
    // The deadline travels to the gRPC server as grpc-timeout.
    let headers = app
        .control()
        .stats()
        .get(Backend::Recommendations)
        .last_headers;
    assert!(headers.contains_key("grpc-timeout"), "{headers:?}");
}

#[tokio::test]
async fn a_backend_that_is_down_is_backend_unavailable() {
    let app = spawn_app(web()).await;
    app.fault(Backend::MyList, down());
    let body = homepage_with(&app).await;
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"]);
    assert_eq!(errors(&body)[0]["extensions"]["backend"], "my_list");
}

#[tokio::test]
async fn a_refused_connection_is_backend_unavailable() {
    // Nothing listens on the port of a just-closed listener.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(web(), |s| {
        s.backends[BackendId::NewReleases].url = format!("http://{closed}/new-releases")
    })
    .await;
    let body = homepage_with(&app).await;
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"]);
    assert_eq!(errors(&body)[0]["extensions"]["backend"], "new_releases");
    assert_eq!(
        kinds(&body)[..4],
        ["CONTINUE_WATCHING", "RECOMMENDED", "TOP_10", "MY_LIST"]
    );
}
