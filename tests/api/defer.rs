//! `@defer` on the homepage: incremental delivery over `multipart/mixed` (the row list first, the
//! rows as their sources answer, the slow one last), in the bytes Apollo Client reads (and
//! Apollo Client itself, from npm, rendering it); everything that applies to a request still
//! applying; answers without `@defer` unchanged to the byte.

use std::{collections::BTreeMap, time::Duration};

use bff_fixtures::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::*;

/// What Apollo Client 3 sends with a deferred query.
const APOLLO_ACCEPT: &str = "multipart/mixed;deferSpec=20220824,application/json";
const MULTIPART: &str = "multipart/mixed; boundary=\"-\"; deferSpec=20220824";

/// The web rows of a signed-in viewer, in display order.
const WEB_ROWS: [&str; 5] = [
    "CONTINUE_WATCHING",
    "RECOMMENDED",
    "TOP_10",
    "MY_LIST",
    "NEW_RELEASES",
];

/// One part of an incremental answer and when it arrived.
struct Part {
    at: Duration,
    json: Value,
}

/// An answer read part by part.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    parts: Vec<Part>,
    /// The body ended with the closing delimiter.
    closed: bool,
    /// The body as it came (a JSON answer's only content).
    raw: Vec<u8>,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The incremental entries of the parts after the first, with the index of their part.
    fn entries(&self) -> Vec<(usize, &Value)> {
        self.parts
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(n, p)| {
                p.json["incremental"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no `incremental` in part {n}: {}", p.json))
                    .iter()
                    .map(move |e| (n, e))
            })
            .collect()
    }

    /// The row index an entry is for (its path is `["homepage", "rows", i]`).
    fn row_of(entry: &Value) -> usize {
        let path = entry["path"].as_array().unwrap();
        assert_eq!(path.len(), 3, "{entry}");
        assert_eq!((&path[0], &path[1]), (&json!("homepage"), &json!("rows")));
        usize::try_from(path[2].as_u64().unwrap()).unwrap()
    }

    /// The first part's data with every later entry merged in at its path, as Apollo Client
    /// merges them (objects deep-merged, `null` replacing).
    fn merged(&self) -> Value {
        let mut data = self.parts[0].json["data"].clone();
        for (_, entry) in self.entries() {
            let row = &mut data["homepage"]["rows"][Self::row_of(entry)];
            merge(row, &entry["data"]);
        }
        data
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// Reads `resp` part by part (parts end at the delimiter written with them), timing each from
/// `started`.
async fn read(mut resp: reqwest::Response, started: Instant) -> Answer {
    const OPEN: &[u8] = b"\r\n---\r\n";
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut raw = Vec::new();
    let mut parts = Vec::new();
    let mut closed = false;
    let mut consumed = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        raw.extend_from_slice(&chunk);
        if !headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("multipart/mixed"))
        {
            continue;
        }
        if consumed == 0 && raw.len() >= OPEN.len() {
            assert_eq!(
                &raw[..OPEN.len()],
                OPEN,
                "the body opens with the delimiter"
            );
            consumed = OPEN.len();
        }
        // Every complete part: headers, JSON, then the delimiter it ends with.
        while let Some(end) = find(&raw[consumed..], b"\r\n---") {
            let part = std::str::from_utf8(&raw[consumed..consumed + end]).unwrap();
            let rest = &raw[consumed + end + 5..];
            let (last, len) = if rest.starts_with(b"--\r\n") {
                (true, 4)
            } else if rest.starts_with(b"\r\n") {
                (false, 2)
            } else {
                break;
            };
            let json = part
                .strip_prefix("content-type: application/json; charset=utf-8\r\n\r\n")
                .unwrap_or_else(|| panic!("a part's headers: {part:?}"));
            parts.push(Part {
                at: started.elapsed(),
                json: serde_json::from_str(json).unwrap(),
            });
            consumed += end + 5 + len;
            closed = last;
        }
    }
    if closed {
        assert_eq!(consumed, raw.len(), "nothing after the closing delimiter");
    }
    Answer {
        status,
        headers,
        parts,
        closed,
        raw,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// POSTs `body` with `accept` (and no `Accept-Encoding`).
async fn post(app: &TestApp, body: Value, token: Option<&str>, accept: &str) -> Answer {
    post_encoded(app, body, token, accept, None).await
}

async fn post_encoded(
    app: &TestApp,
    body: Value,
    token: Option<&str>,
    accept: &str,
    encoding: Option<&str>,
) -> Answer {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", accept)
        .json(&body);
    if let Some(e) = encoding {
        req = req.header("accept-encoding", e);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let started = Instant::now();
    read(req.send().await.unwrap(), started).await
}

async fn deferred(app: &TestApp, query: &str, token: Option<&str>) -> Answer {
    post(app, json!({ "query": query }), token, APOLLO_ACCEPT).await
}

/// Asserts the first part lists `kinds` with only `keys` on each row.
fn assert_row_list(answer: &Answer, kinds: &[&str], keys: &[&str]) {
    let first = &answer.parts[0].json;
    assert_eq!(first["hasNext"], true, "{first}");
    let rows = first["data"]["homepage"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), kinds.len(), "{first}");
    for (row, kind) in rows.iter().zip(kinds) {
        let got: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = keys.to_vec();
        want.sort_unstable();
        let mut got = got;
        got.sort_unstable();
        assert_eq!(got, want, "{row}");
        if keys.contains(&"kind") {
            assert_eq!(row["kind"], *kind);
        }
    }
}

#[tokio::test]
async fn the_fast_rows_arrive_first_and_the_slow_top10_in_a_later_part() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    app.fault(Backend::Top10, latency(300));
    let q = "{ homepage(region: \"US\") { rows { kind heading ... @defer(label: \"items\") { items { rank title { id name } } } } } }";
    // A browser's Apollo Client also accepts compressed answers.
    let answer = post_encoded(
        &app,
        json!({ "query": q }),
        Some(&token),
        APOLLO_ACCEPT,
        Some("gzip, br"),
    )
    .await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), MULTIPART);
    assert!(
        answer.headers.get("content-encoding").is_none(),
        "parts must leave as they are written, not wait in an encoder"
    );
    assert_eq!(answer.headers["cache-control"], "private, no-store");
    assert!(answer.closed, "the body ends with the closing delimiter");
    assert_row_list(&answer, &WEB_ROWS, &["kind", "heading"]);
    let first = &answer.parts[0].json;
    assert_eq!(
        first["data"]["homepage"]["rows"][2]["heading"],
        "Top 10 in US Today"
    );

    // Every row arrives once, labelled, in a later part; the top 10 in the last one, alone.
    let mut arrived: BTreeMap<usize, usize> = BTreeMap::new();
    for (n, entry) in answer.entries() {
        assert_eq!(entry["label"], "items", "{entry}");
        assert!(entry.get("errors").is_none(), "{entry}");
        let keys: Vec<&String> = entry["data"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["items"],
            "only the deferred fragment's fields: {entry}"
        );
        assert!(
            arrived.insert(Answer::row_of(entry), n).is_none(),
            "twice: {entry}"
        );
    }
    assert_eq!(arrived.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    let last = answer.parts.len() - 1;
    assert_eq!(arrived[&2], last, "the top 10 comes last");
    for (i, n) in &arrived {
        assert!(*i == 2 || *n < last, "row {i} waited for the top 10");
    }
    for (n, part) in answer.parts.iter().enumerate() {
        assert_eq!(part.json["hasNext"], n < last, "part {n}: {}", part.json);
    }
    assert!(answer.parts[last].at >= Duration::from_millis(300));
    assert!(answer.parts[last - 1].at < answer.parts[last].at);

    // The rows are the plain homepage's.
    let stats = app.control().stats();
    let plain =
        "{ homepage(region: \"US\") { rows { kind heading items { rank title { id name } } } } }";
    let (status, body) = app.post_graphql(plain, json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        answer.merged(),
        body["data"],
        "the merged parts are the plain answer"
    );

    // One call per source; every title asked of the catalog once.
    for b in [
        Backend::ContinueWatching,
        Backend::Recommendations,
        Backend::Top10,
        Backend::MyList,
        Backend::NewReleases,
    ] {
        assert_eq!(stats.backends[&b].calls, 1, "{b:?}");
    }
    assert!(stats.backends[&Backend::Profile].calls <= 1);
    let mut ids: Vec<String> = body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(ids)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        stats.backends[&Backend::Catalog].ids_requested,
        ids.len() as u64
    );
    assert!(stats.backends[&Backend::Catalog].calls <= (answer.parts.len() - 1) as u64);

    // Counted: one operation, its parts.
    assert_eq!(
        app.metric_sum("bff_graphql_deferred_parts_total", &["part=\"first\""])
            .await,
        1.0
    );
    assert_eq!(
        app.metric_sum("bff_graphql_deferred_parts_total", &["part=\"later\""])
            .await,
        (answer.parts.len() - 1) as f64
    );
    assert_eq!(
        app.metric_sum("bff_graphql_operations_total", &["outcome=\"ok\""])
            .await,
        2.0,
        "the deferred operation and the plain one"
    );
    assert_eq!(
        app.metric_sum("bff_graphql_deferred_in_flight", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn whole_rows_defer_and_mobile_parts_carry_compact_cards() {
    let app = spawn_app(mobile()).await;
    let token = app.token("u1");
    let q = "{ homepage(region: \"US\") { rows { ...Row @defer } } } fragment Row on Row { kind heading items { title { id name synopsis image(width: 171, dpr: 2) { url width } } } }";
    let answer = deferred(&app, q, Some(&token)).await;
    assert_eq!(answer.content_type(), MULTIPART);
    // Four rows listed, nothing of them shown until they arrive.
    assert_row_list(&answer, &["", "", "", ""], &[]);
    let entries = answer.entries();
    assert_eq!(entries.len(), 4);
    for (_, entry) in &entries {
        assert!(entry.get("label").is_none(), "no label asked for: {entry}");
        let data = &entry["data"];
        assert!(data["heading"].is_string(), "{entry}");
        let items = data["items"].as_array().unwrap();
        assert!(!items.is_empty() && items.len() <= 10);
        for item in items {
            let t = &item["title"];
            assert!(t["synopsis"].as_str().unwrap().chars().count() <= 140);
            assert_eq!(t["image"]["width"], 342);
        }
    }
    let (status, body) = app
        .post_graphql(&q.replace(" @defer", ""), json!({}), Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer.merged(), body["data"]);
    assert_eq!(
        kinds(&json!({ "data": answer.merged() })),
        ["CONTINUE_WATCHING", "MY_LIST", "TOP_10", "RECOMMENDED"]
    );
}

#[tokio::test]
async fn a_deferred_row_keeps_its_place_when_it_comes_back_empty_or_fails() {
    let app = spawn_app_with(web(), |s| {
        // A stalled source gives up at three quarters of the budget.
        s.server.request_budget = Duration::from_millis(800);
        s.graphql.timeout = Duration::from_secs(5);
    })
    .await;
    let data = app.data();
    let user = data
        .users()
        .iter()
        .find(|u| data.continue_watching(&u.id).is_some_and(<[_]>::is_empty))
        .expect("a fixture user with nothing to continue");
    let token = app.token(&user.id);
    app.fault(Backend::Top10, down());
    app.fault(Backend::Recommendations, stalled());
    let q = "{ homepage(region: \"US\") { rows { kind ... @defer { items { title { id } } } } } }";
    let answer = deferred(&app, q, Some(&token)).await;
    assert_row_list(&answer, &WEB_ROWS, &["kind"]);
    let trace_id = answer.headers["x-trace-id"].to_str().unwrap().to_owned();
    let by_row: BTreeMap<usize, &Value> = answer
        .entries()
        .into_iter()
        .map(|(_, e)| (Answer::row_of(e), e))
        .collect();
    assert_eq!(by_row.len(), 5);
    // Empty: listed first, so it stays, with no items.
    assert_eq!(by_row[&0]["data"], json!({ "items": [] }));
    assert!(by_row[&0].get("errors").is_none());
    // Failed: `data: null`, the error at its path, naming the backend.
    for (i, code, backend) in [
        (1, "BACKEND_TIMEOUT", "recommendations"),
        (2, "BACKEND_UNAVAILABLE", "top10"),
    ] {
        let entry = by_row[&i];
        assert_eq!(entry["data"], Value::Null, "{entry}");
        let errors = entry["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{entry}");
        let e = &errors[0];
        assert_eq!(e["path"], json!(["homepage", "rows", i]));
        assert_eq!(e["extensions"]["code"], code);
        assert_eq!(e["extensions"]["backend"], backend);
        assert_eq!(e["extensions"]["traceId"], trace_id.as_str());
    }
    assert!(by_row[&3]["data"]["items"].is_array());
    assert!(!by_row[&4]["data"]["items"].as_array().unwrap().is_empty());
    assert_eq!(answer.parts.last().unwrap().json["hasNext"], false);
    assert!(answer.closed);
    assert_eq!(
        app.metric_sum("bff_graphql_operations_total", &["outcome=\"partial\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_defer_answers_are_the_same_bytes() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let inner = "items { rank title { id name images { poster { url } } } }";
    let plain = format!("{{ homepage(region: \"US\") {{ rows {{ kind ... {{ {inner} }} }} }} }}");
    let off = format!(
        "{{ homepage(region: \"US\") {{ rows {{ kind ... @defer(if: false) {{ {inner} }} }} }} }}"
    );
    let by_variable = format!(
        "query($d: Boolean!) {{ homepage(region: \"US\") {{ rows {{ kind ... @defer(if: $d, label: \"x\") {{ {inner} }} }} }} }}"
    );
    let on =
        format!("{{ homepage(region: \"US\") {{ rows {{ kind ... @defer {{ {inner} }} }} }} }}");
    // Warm the caches: every answer below is built from the same fragments.
    let reference = post(
        &app,
        json!({ "query": plain }),
        Some(&token),
        "application/json",
    )
    .await;
    assert_eq!(reference.status, 200);
    let reference = post(
        &app,
        json!({ "query": plain }),
        Some(&token),
        "application/json",
    )
    .await;
    assert_eq!(reference.content_type(), "application/json; charset=utf-8");
    let body: Value = serde_json::from_slice(&reference.raw).unwrap();
    assert!(
        body.get("errors").is_none() && kinds(&body).len() == 5,
        "{body}"
    );
    for (what, body, accept) in [
        (
            "plain, multipart accepted",
            json!({ "query": plain }),
            APOLLO_ACCEPT,
        ),
        ("if: false", json!({ "query": off }), APOLLO_ACCEPT),
        (
            "if: $d = false",
            json!({ "query": by_variable, "variables": { "d": false } }),
            APOLLO_ACCEPT,
        ),
        (
            "JSON only accepted",
            json!({ "query": on }),
            "application/json",
        ),
    ] {
        let answer = post(&app, body, Some(&token), accept).await;
        assert_eq!(answer.status, 200, "{what}");
        assert_eq!(answer.content_type(), reference.content_type(), "{what}");
        assert_eq!(
            String::from_utf8_lossy(&answer.raw),
            String::from_utf8_lossy(&reference.raw),
            "{what}"
        );
    }
    // A batch's operations are never incremental.
    let app = spawn_app_with(web(), |s| s.graphql.max_batch = 2).await;
    let resp = app
        .post_body(
            &json!([{ "query": on }, { "query": plain }]),
            Some(APOLLO_ACCEPT),
            Some(&token),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let answers: Value = resp.json().await.unwrap();
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn hostile_defer_gets_coded_errors() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let code_of = |answer: &Answer| -> String {
        let body: Value = serde_json::from_slice(&answer.raw).unwrap();
        codes(&body).join(",")
    };
    for (what, body, code) in [
        (
            "on a field",
            json!({ "query": "{ homepage { rows { kind @defer } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "`if` not a Boolean",
            json!({ "query": "{ homepage { rows { ... @defer(if: \"yes\") { kind } } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "`if` from a variable of the wrong value",
            json!({ "query": "query($d: Boolean!) { homepage { rows { ... @defer(if: $d) { items { rank } } } } }", "variables": { "d": "yes" } }),
            "BAD_USER_INPUT",
        ),
        (
            "`if` from a variable of the wrong type",
            json!({ "query": "query($d: String) { homepage { rows { ... @defer(if: $d) { items { rank } } } } }", "variables": { "d": "x" } }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "`label` not a string",
            json!({ "query": "{ homepage { rows { ... @defer(label: 5) { items { rank } } } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "`label` from a variable",
            json!({ "query": "query($l: String) { homepage { rows { ... @defer(label: $l) { items { rank } } } } }", "variables": { "l": "x" } }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "a label twice",
            json!({ "query": "{ homepage { rows { ... @defer(label: \"a\") { kind } ... @defer(label: \"a\") { items { rank } } } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "an unknown argument",
            json!({ "query": "{ homepage { rows { ... @defer(when: true) { items { rank } } } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "on a mutation's root",
            json!({ "query": "mutation { ... @defer { addToMyList(titleId: \"t1\") { changed } } }" }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "inside a fragment spread into itself",
            json!({ "query": "{ homepage { rows { ...R @defer } } } fragment R on Row { kind ...R @defer }" }),
            "QUERY_TOO_COMPLEX",
        ),
    ] {
        let answer = post(&app, body, Some(&token), APOLLO_ACCEPT).await;
        assert_eq!(
            answer.status, 200,
            "{what}: JSON clients get 200 for request errors"
        );
        assert_eq!(
            answer.content_type(),
            "application/json; charset=utf-8",
            "{what}"
        );
        assert_eq!(
            code_of(&answer),
            code,
            "{what}: {}",
            String::from_utf8_lossy(&answer.raw)
        );
    }
    // Deeper in a mutation it is delivered inline: one JSON answer.
    let answer = post(
        &app,
        json!({ "query": "mutation { addToMyList(titleId: \"t1\") { titleId ... @defer { changed } } }" }),
        Some(&token),
        APOLLO_ACCEPT,
    )
    .await;
    assert_eq!(answer.content_type(), "application/json; charset=utf-8");
    let body: Value = serde_json::from_slice(&answer.raw).unwrap();
    assert_eq!(body["data"]["addToMyList"]["titleId"], "t1", "{body}");
    // A client that accepts only multipart is told what it must accept.
    let answer = post(
        &app,
        json!({ "query": "{ homepage { rows { ... @defer { kind } } } }" }),
        Some(&token),
        "multipart/mixed",
    )
    .await;
    assert_eq!(answer.status, 406);
    // The server is still well.
    let answer = deferred(
        &app,
        "{ homepage { rows { kind ... @defer { items { rank } } } } }",
        Some(&token),
    )
    .await;
    assert_eq!(answer.content_type(), MULTIPART);
}

#[tokio::test]
async fn get_and_persisted_queries_defer_too() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    let q = "{ homepage(region: \"US\") { rows { kind ... @defer { items { rank } } } } }";
    let get = |params: Vec<(&str, String)>| {
        let url = format!(
            "{}?{}",
            app.url("/graphql"),
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish()
        );
        let req = app
            .http
            .get(url)
            .header("accept", APOLLO_ACCEPT)
            .bearer_auth(&token);
        async move { read(req.send().await.unwrap(), Instant::now()).await }
    };
    let answer = get(vec![("query", q.to_owned())]).await;
    assert_eq!(answer.content_type(), MULTIPART);
    assert_eq!(answer.entries().len(), 5);

    // APQ: registered over POST, then the hash alone over GET.
    let hash = shared::graphql::persisted::sha256_hex(q);
    let ext = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let answer = post(
        &app,
        json!({ "query": q, "extensions": ext }),
        Some(&token),
        APOLLO_ACCEPT,
    )
    .await;
    assert_eq!(answer.content_type(), MULTIPART);
    let answer = get(vec![("extensions", ext.to_string())]).await;
    assert_eq!(answer.content_type(), MULTIPART);
    assert_eq!(answer.entries().len(), 5);
    // A mutation over GET is refused as always.
    let answer = get(vec![(
        "query",
        "mutation { addToMyList(titleId: \"t1\") { ... @defer { changed } } }".to_owned(),
    )])
    .await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn a_deferred_fragments_fields_count_against_the_cost_limit() {
    let app = spawn_app_with(web(), |s| s.graphql.max_cost = 150).await;
    let token = app.token("u1");
    let answer = deferred(&app, "{ homepage { rows { kind } } }", Some(&token)).await;
    assert_eq!(answer.status, 200);
    let answer = deferred(
        &app,
        "{ homepage { rows { kind ... @defer { items { title { name } } } } } }",
        Some(&token),
    )
    .await;
    assert_eq!(answer.content_type(), "application/json; charset=utf-8");
    let body: Value = serde_json::from_slice(&answer.raw).unwrap();
    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"], "{body}");
}

#[tokio::test]
async fn max_response_bytes_bounds_the_whole_incremental_answer() {
    let app = spawn_app_with(web(), |s| s.graphql.max_response_bytes = 4_000).await;
    let token = app.token("u1");
    app.fault(Backend::Top10, latency(100));
    let q = "{ homepage(region: \"US\") { rows { kind ... @defer { items { title { id name synopsis } } } } } }";
    let answer = deferred(&app, q, Some(&token)).await;
    assert_eq!(answer.content_type(), MULTIPART);
    assert!(answer.closed);
    // Every row is accounted for: delivered, or refused for the size.
    let mut rows = BTreeMap::new();
    let mut refused = 0;
    for (_, entry) in answer.entries() {
        if entry["data"].is_null() {
            assert_eq!(
                entry["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
                "{entry}"
            );
            refused += 1;
        }
        rows.insert(Answer::row_of(entry), ());
    }
    assert_eq!(rows.len(), 5);
    assert!(refused > 0, "the rows are larger than 4,000 bytes together");
    // What was delivered stayed within the limit; only the refusal went past it.
    let last = answer.parts.last().unwrap();
    assert_eq!(last.json["hasNext"], false);
    let delivered: usize = answer.raw.len() - serde_json::to_vec(&last.json).unwrap().len();
    assert!(delivered <= 4_000, "{delivered}");
}

#[tokio::test]
async fn a_client_gone_mid_answer_stops_the_answer() {
    let app = spawn_app_with(web(), |s| {
        // Nothing but the client leaving could end this answer within the test.
        s.server.request_budget = Duration::from_secs(60);
        s.graphql.timeout = Duration::from_secs(120);
    })
    .await;
    let token = app.token("u1");
    app.fault(Backend::Top10, stalled());
    let mut resp = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("accept", APOLLO_ACCEPT)
        .bearer_auth(&token)
        .json(&json!({ "query": "{ homepage(region: \"US\") { rows { kind ... @defer { items { rank } } } } }" }))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"\r\n---\r\n"));
    assert_eq!(
        app.metric_sum("bff_graphql_deferred_in_flight", &[]).await,
        1.0
    );
    drop(resp);
    eventually("the answer is dropped with its client", || async {
        app.metric_sum("bff_graphql_deferred_in_flight", &[]).await == 0.0
    })
    .await;
    // Not counted as answered.
    assert_eq!(
        app.metric_sum("bff_graphql_operations_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn graphql_timeout_cuts_off_the_rows_still_pending() {
    let timeout = Duration::from_millis(700);
    let app = spawn_app_with(web(), |s| {
        // Only `graphql.timeout` can end the stalled row: the backends' own deadline (three
        // quarters of the budget) is far later.
        s.server.request_budget = Duration::from_secs(60);
        s.graphql.timeout = timeout;
    })
    .await;
    let token = app.token("u1");
    app.fault(Backend::Top10, stalled());
    let q = "{ homepage(region: \"US\") { rows { kind ... @defer { items { title { id } } } } } }";
    let answer = deferred(&app, q, Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), MULTIPART);
    assert_row_list(&answer, &WEB_ROWS, &["kind"]);
    assert!(answer.closed, "the stream ends at the timeout");
    let last = answer.parts.len() - 1;
    let by_row: BTreeMap<usize, (usize, &Value)> = answer
        .entries()
        .into_iter()
        .map(|(n, e)| (Answer::row_of(e), (n, e)))
        .collect();
    assert_eq!(by_row.len(), 5, "every row accounted for once");
    // The rows whose sources answered were delivered before the cut-off, whole.
    for i in [0, 1, 3, 4] {
        let (n, entry) = by_row[&i];
        assert!(n < last, "row {i} came in the cut-off part");
        assert!(
            answer.parts[n].at < timeout,
            "row {i} at {:?}",
            answer.parts[n].at
        );
        assert!(entry.get("errors").is_none(), "{entry}");
        assert!(entry["data"]["items"].is_array(), "{entry}");
    }
    // The stalled top 10: `data: null` and a coded error at its path, in the last part, at
    // the timeout and not at the backend's deadline.
    let (n, top10) = by_row[&2];
    assert_eq!(n, last);
    assert_eq!(top10["data"], Value::Null, "{top10}");
    let errors = top10["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{top10}");
    assert_eq!(errors[0]["path"], json!(["homepage", "rows", 2]));
    assert_eq!(errors[0]["extensions"]["code"], "QUERY_TOO_COMPLEX");
    assert_eq!(
        errors[0]["message"], "the operation ran longer than 700ms",
        "{top10}"
    );
    let cut = &answer.parts[last];
    assert_eq!(cut.json["hasNext"], false);
    assert!(cut.at >= timeout, "cut off at {:?}", cut.at);
    assert!(
        cut.at < Duration::from_secs(10),
        "cut off at {:?}, not at the timeout",
        cut.at
    );
    // Counted once, as partial; nothing left in flight.
    assert_eq!(
        app.metric_sum("bff_graphql_operations_total", &["outcome=\"partial\""])
            .await,
        1.0
    );
    eventually("the answer is no longer in flight", || async {
        app.metric_sum("bff_graphql_deferred_in_flight", &[]).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn apollo_client_renders_the_deferred_homepage() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    app.fault(Backend::Top10, latency(300));
    let q = "{ homepage(region: \"US\") { rows { kind heading ... @defer { items { rank title { id name } } } } } }";
    let out = node_client(
        "defer.mjs",
        &[
            &app.url("/graphql"),
            q,
            "--token",
            &token,
            "--timeout",
            "20",
        ],
    )
    .await;
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(report["contentType"], MULTIPART);
    assert_eq!(report["errors"], json!([]), "{report}");
    let emissions = report["emissions"].as_array().unwrap();
    assert!(emissions.len() >= 2, "{report}");
    // What it rendered first: every row, headings, no items yet.
    let first = &emissions[0]["data"]["homepage"]["rows"];
    let first_kinds: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(first_kinds, WEB_ROWS);
    assert!(
        first
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("items").is_none()),
        "{first}"
    );
    // The top 10's items only in the last rendering, the others before it.
    let items_of = |e: &Value, i: usize| e["data"]["homepage"]["rows"][i].get("items").cloned();
    let last = emissions.last().unwrap();
    let before = &emissions[emissions.len() - 2];
    assert!(items_of(before, 2).is_none(), "{before}");
    for i in [0, 1, 3, 4] {
        assert!(
            items_of(before, i).is_some(),
            "row {i} waited for the top 10: {before}"
        );
    }
    // The last rendering is the plain answer (Apollo Client adds `__typename`).
    let plain =
        "{ homepage(region: \"US\") { rows { kind heading items { rank title { id name } } } } }";
    let (_, plain) = app.post_graphql(plain, json!({}), Some(&token)).await;
    let mut rendered = last["data"].clone();
    strip_typenames(&mut rendered);
    assert_eq!(rendered, plain["data"]);
}

fn strip_typenames(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("__typename");
            map.values_mut().for_each(strip_typenames);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_typenames),
        _ => {}
    }
}

#[tokio::test]
async fn a_slow_profile_holds_the_first_part_no_longer_than_the_first_row() {
    let app = spawn_app(web()).await;
    let token = app.token("u1");
    app.fault(Backend::Profile, latency(400));
    // The region is named: nothing but headings wants the profile.
    let q = "{ homepage(region: \"US\") { rows { kind heading ... @defer { items { rank } } } } }";
    let answer = deferred(&app, q, Some(&token)).await;
    assert_row_list(&answer, &WEB_ROWS, &["kind", "heading"]);
    assert!(
        answer.parts[0].at < Duration::from_millis(400),
        "the first part waited for the profile: {:?}",
        answer.parts[0].at
    );
    let first = &answer.parts[0].json["data"]["homepage"]["rows"];
    assert_eq!(
        first[0]["heading"], "Continue Watching",
        "generic without the profile"
    );
    assert_eq!(first[1]["heading"], "Recommended for You");

    // Without a region, the first part needs the profile's (as the regional rows do).
    let q = "{ homepage { rows { kind heading ... @defer { items { rank } } } } }";
    let app = spawn_app(web()).await;
    app.fault(Backend::Profile, latency(300));
    let answer = deferred(&app, q, Some(&token)).await;
    assert!(answer.parts[0].at >= Duration::from_millis(300));
    let first = &answer.parts[0].json["data"]["homepage"]["rows"];
    let data = app.data();
    let u1 = data.users().iter().find(|u| u.id == "u1").unwrap();
    let name = u1.name.split(' ').next().unwrap();
    assert_eq!(first[0]["heading"], format!("Continue Watching for {name}"));
}

#[tokio::test]
async fn the_hero_outside_the_deferred_fragments_waits_for_its_rows() {
    let app = spawn_app(web()).await;
    app.fault(Backend::Top10, latency(300));
    // Anonymous: no recommendations, so the hero is the top 10's number one.
    let q = "{ homepage(region: \"US\") { hero { id } rows { kind ... @defer { items { title { id } } } } } }";
    let answer = deferred(&app, q, None).await;
    assert_row_list(&answer, &["TOP_10", "NEW_RELEASES"], &["kind"]);
    let first = &answer.parts[0];
    assert!(first.at >= Duration::from_millis(300), "{:?}", first.at);
    let number_one = app.data().top10("US").unwrap()[0].title_id.clone();
    assert_eq!(
        first.json["data"]["homepage"]["hero"]["id"],
        number_one.as_str()
    );
    // Its rows still come in later parts.
    assert_eq!(answer.entries().len(), 2);
}
