#![allow(clippy::unwrap_used)]

use async_graphql::parser::parse_query;
use serde_json::json;

use super::cost::{DEFAULT_LIST_SIZE, ProfileLimit, backend_calls, max_items};
use super::*;
use crate::profile::{ClientProfile, RowKind};

/// A schema shaped like the web surface's, small enough to read, with its cost declarations.
const SDL: &str = r#"
type Query {
  homepage(region: String): Homepage! @backendCalls(fixed: 2, perRow: 1)
  title(id: ID!): Title @backendCalls(fixed: 1)
  viewer: Viewer @backendCalls(fixed: 1)
}
type Mutation { addToMyList(titleId: ID!): Update! @backendCalls(fixed: 1) }
type Update { changed: Boolean! }
type Viewer { id: ID! name: String! }
type Homepage { region: String! rows: [Row]! @maxItems(profile: ROWS) hero: Title }
type Row { kind: RowKind! heading: String! items: [RowItem!]! @maxItems(profile: ITEMS_PER_ROW) }
type RowItem { rank: Int title: Title! }
type Title { id: ID! name: String! genres: [String!]! images: Images! }
type Images { poster: [Image!]! }
type Image { url: String! width: Int! }
enum RowKind { TOP_10 MY_LIST }
input Filter { kinds: [RowKind!]! limit: Int = 5 region: String! }
schema { query: Query mutation: Mutation }
"#;

fn model() -> (Shape, CostModel) {
    let shape = Shape::from_sdl(SDL);
    let profile = ClientProfile::new(vec![RowKind::Top10, RowKind::MyList], 20);
    let model = CostModel::for_profile(&profile);
    (shape, model)
}

const LOOSE: Limits = Limits {
    max_depth: 100,
    max_fields: u64::MAX,
    max_cost: u64::MAX,
    introspection: true,
    max_aliases: usize::MAX,
    max_root_fields: usize::MAX,
    max_directives: usize::MAX,
};

fn run(query: &str, limits: &Limits) -> Result<Analysis, Refusal> {
    let (shape, model) = model();
    let doc = parse_query(query).unwrap();
    let op = operation(&doc, None).unwrap();
    analyze(&shape, &model, &doc, op, limits)
}

#[test]
fn cost_weights_backend_calls_and_list_sizes() {
    // homepage: 1 + 10 × (2 rows + profile + catalog) = 41; rows: 1 + 2 × (kind 1 + items
    // (1 + 20 × (rank 1 + title (1 + id 1 + genres 1))));
    let a = run(
        "{ homepage { rows { kind items { rank title { id genres } } } } }",
        &LOOSE,
    )
    .unwrap();
    let item = 1 + (1 + 1 + 1);
    let row = 1 + (1 + 20 * item);
    assert_eq!(a.cost, 41 + 1 + 2 * row);
    assert_eq!(a.fields, 8);
    assert_eq!(a.depth, 5);
    // A list without a declared bound counts DEFAULT_LIST_SIZE items.
    let a = run(
        "{ title(id: \"t1\") { images { poster { url width } } } }",
        &LOOSE,
    )
    .unwrap();
    assert_eq!(a.cost, (1 + CALL_COST) + (1 + (1 + DEFAULT_LIST_SIZE * 2)));
}

#[test]
fn spreads_count_as_often_as_they_expand() {
    let direct = run(
        "{ title(id: \"t1\") { id name } t2: title(id: \"t2\") { id name } }",
        &LOOSE,
    )
    .unwrap();
    let spread = run(
        "{ title(id: \"t1\") { ...F } t2: title(id: \"t2\") { ...F } } fragment F on Title { id name }",
        &LOOSE,
    )
    .unwrap();
    assert_eq!(direct, spread);
}

/// Twenty levels of fragments each spreading the one below twice: 2^20 fields from ~1.4 KB. The
/// estimate sees all of them, without walking them one by one.
#[test]
fn a_fragment_bomb_is_measured_in_full_and_cheaply() {
    let mut doc = String::from("{ ...F19 } fragment F0 on Query { __typename }");
    for i in 1..20 {
        doc.push_str(&format!(
            " fragment F{i} on Query {{ a{i}: __typename ...F{p} b{i}: __typename ...F{p} }}",
            p = i - 1
        ));
    }
    let started = std::time::Instant::now();
    let a = run(&doc, &LOOSE).unwrap();
    assert!(a.fields > 1 << 20, "{a:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "the walk itself must stay cheap: {:?}",
        started.elapsed()
    );
    let refused = run(
        &doc,
        &Limits {
            max_fields: 2_000,
            ..LOOSE
        },
    )
    .unwrap_err();
    assert!(matches!(refused, Refusal::TooComplex(m) if m.contains("2000")));
}

/// Seventy doublings: 2^70 fields and more cost than a u64 holds. The numbers saturate, so the
/// operation is refused rather than wrapping around to a small cost.
#[test]
fn saturating_numbers_never_overflow() {
    let mut doc = String::from("{ ...F69 } fragment F0 on Query { homepage { region } }");
    for i in 1..70 {
        doc.push_str(&format!(
            " fragment F{i} on Query {{ ...F{p} x: homepage {{ region }} ...F{p} }}",
            p = i - 1
        ));
    }
    let a = run(&doc, &LOOSE).unwrap();
    assert_eq!(a.fields, u64::MAX);
    assert_eq!(a.cost, u64::MAX);
    assert!(
        run(
            &doc,
            &Limits {
                max_cost: u64::MAX - 1,
                ..LOOSE
            }
        )
        .is_err()
    );
}

#[test]
fn fragment_cycles_are_refused_not_followed() {
    let err = run(
        "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        &LOOSE,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("spreads itself")));
}

#[test]
fn depth_limits_data_but_not_introspection() {
    let tight = Limits {
        max_depth: 5,
        ..LOOSE
    };
    let intro = include_str!("../../../../tests/api/introspection.graphql");
    let a = run(intro, &tight).unwrap();
    assert_eq!(a.depth, 0);
    assert!(
        (13..=INTROSPECTION_MAX_DEPTH).contains(&a.introspection_depth),
        "{a:?}"
    );
    assert!(a.introspection_fields < INTROSPECTION_MAX_FIELDS, "{a:?}");
    let err = run(
        "{ homepage { rows { items { title { images { poster { url } } } } } } }",
        &tight,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("nested 7")));
    // Introspection has its own fixed bound.
    let mut deep = String::from("name");
    for _ in 0..25 {
        deep = format!("ofType {{ {deep} }}");
    }
    let err = run(
        &format!("{{ __type(name: \"Query\") {{ {deep} }} }}"),
        &LOOSE,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("introspection")));
    // Off means off: refused with a reason, while `__typename` is no introspection.
    let off = Limits {
        introspection: false,
        ..LOOSE
    };
    assert_eq!(run(intro, &off), Err(Refusal::IntrospectionOff));
    assert!(run("{ __typename homepage { __typename } }", &off).is_ok());
}

#[test]
fn cost_and_field_limits_refuse_with_the_numbers() {
    let q = "{ a: homepage { rows { items { title { id } } } } b: homepage { rows { items { title { id } } } } }";
    let one = run("{ homepage { rows { items { title { id } } } } }", &LOOSE).unwrap();
    let two = run(q, &LOOSE).unwrap();
    assert_eq!(two.cost, 2 * one.cost);
    let err = run(
        q,
        &Limits {
            max_cost: one.cost,
            ..LOOSE
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        Refusal::TooComplex(format!(
            "the operation has an estimated cost of {}; at most {} is allowed",
            two.cost, one.cost
        ))
    );
}

#[test]
fn mutations_cost_their_backend_call() {
    let (shape, model) = model();
    let doc = parse_query("mutation { addToMyList(titleId: \"t1\") { changed } }").unwrap();
    let a = analyze(&shape, &model, &doc, operation(&doc, None).unwrap(), &LOOSE).unwrap();
    assert_eq!(a.cost, 1 + CALL_COST + 1);
}

#[test]
fn aliases_root_fields_and_directives_have_their_own_limits() {
    let tight = Limits {
        max_aliases: 2,
        max_root_fields: 3,
        max_directives: 2,
        ..LOOSE
    };
    assert!(
        run(
            r#"{ a: title(id: "1") { id } b: title(id: "2") { id } }"#,
            &tight
        )
        .is_ok()
    );
    let err = run(
        r#"{ a: title(id: "1") { x: id } b: title(id: "2") { id } }"#,
        &tight,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("3 aliases")));
    // Root fields count through fragments.
    let err = run(
        r#"{ viewer { id } ...R ... on Query { homepage { region } } } fragment R on Query { title(id: "1") { id } viewer { name } }"#,
        &tight,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("4 root fields")));
    let err = run(
        "query($a: Boolean!) { viewer @skip(if: $a) @include(if: $a) @skip(if: $a) { id } }",
        &tight,
    )
    .unwrap_err();
    assert!(matches!(err, Refusal::TooComplex(m) if m.contains("3 directives")));
}

#[test]
fn tokens_are_counted_without_parsing() {
    assert_eq!(count_tokens("{ a }", 10), Ok(3));
    // query Q ( $ v : [ Int ! ] ! = [ 1 2 ] ) { a ( x : $ v ) @ skip ( if : true ) { ... F } }
    assert_eq!(
        count_tokens(
            "query Q($v: [Int!]! = [1, 2]) { a(x: $v) @skip(if: true) { ...F } }",
            100
        ),
        Ok(37)
    );
    assert_eq!(count_tokens("# a comment { } { }\n{ a, b }", 10), Ok(4));
    assert_eq!(
        count_tokens(r#"{ a(s: "x } { \" y", b: """ { { \""" " } """) }"#, 20),
        Ok(11)
    );
    assert_eq!(count_tokens(&"{ a ".repeat(1000), 50), Err(51));
    assert_eq!(count_tokens("1.5e10 -3 ...", 10), Ok(3));
}

fn vars(query: &str, v: serde_json::Value) -> Result<(), Refusal> {
    let (shape, _) = model();
    let doc = parse_query(query).unwrap();
    let op = operation(&doc, None).unwrap();
    check_variables(&shape, op, v.as_object())
}

#[test]
fn variables_are_checked_against_their_declared_types() {
    let q = "query($id: ID!, $r: String, $n: Int = 3) { title(id: $id) { id } homepage(region: $r) { region } }";
    assert!(vars(q, json!({ "id": "t1" })).is_ok());
    assert!(vars(q, json!({ "id": 7, "r": null, "n": 4 })).is_ok());
    for (bad, why) in [
        (json!({}), "is required but was not provided"),
        (json!({ "id": null }), "null is not allowed"),
        (json!({ "id": 1.5 }), "not a valid `ID`"),
        (json!({ "id": "t1", "r": 5 }), "not a valid `String`"),
        (
            json!({ "id": "t1", "n": 2_147_483_648_i64 }),
            "not a valid `Int`",
        ),
        (json!({ "id": "t1", "n": "3" }), "not a valid `Int`"),
    ] {
        let err = vars(q, bad.clone()).unwrap_err();
        assert!(
            matches!(&err, Refusal::BadVariables(m) if m.contains(why)),
            "{bad}: {err:?}"
        );
    }
    // Enums, lists (one value stands for a list of one), input objects and their defaults.
    let q = "query($f: Filter!) { __typename }";
    assert!(vars(q, json!({ "f": { "kinds": ["TOP_10"], "region": "US" } })).is_ok());
    assert!(vars(q, json!({ "f": { "kinds": "MY_LIST", "region": "US" } })).is_ok());
    for (bad, why) in [
        (
            json!({ "f": { "kinds": ["NOPE"], "region": "US" } }),
            "not a valid `RowKind`",
        ),
        (
            json!({ "f": { "kinds": [] } }),
            "`Filter.region` is required",
        ),
        (
            json!({ "f": { "kinds": [], "region": "US", "x": 1 } }),
            "has no field `x`",
        ),
        (json!({ "f": [1] }), "expected an object"),
    ] {
        let err = vars(q, bad.clone()).unwrap_err();
        assert!(
            matches!(&err, Refusal::BadVariables(m) if m.contains(why)),
            "{bad}: {err:?}"
        );
    }
    // A value nested deeper than its type is refused where the type ends.
    let mut deep = json!("US");
    // (Bodies cannot nest deeper than serde_json's recursion limit of 128.)
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let err = vars("query($r: [[String]]) { __typename }", json!({ "r": deep })).unwrap_err();
    assert!(matches!(err, Refusal::BadVariables(m) if m.contains("not a valid `String`")));
}

#[test]
fn the_named_operation_is_the_one_analysed() {
    let (shape, model) = model();
    let doc = parse_query("query A { viewer { id } } query B { homepage { region } }").unwrap();
    let b = analyze(
        &shape,
        &model,
        &doc,
        operation(&doc, Some("B")).unwrap(),
        &LOOSE,
    )
    .unwrap();
    assert_eq!(b.cost, 1 + CALL_COST * 4 + 1);
    assert!(operation(&doc, None).is_none());
    assert!(operation(&doc, Some("C")).is_none());
}

/// The fuzz suite of the request path before execution (`docs/operations.md`, "Fuzzing"): parser, the analysis,
/// the variables check and, for what the analysis admits, the engine's validation and execution
/// on a schema shaped like the surfaces'. Properties: nothing panics, the analysis of one document
/// is deterministic, and an admitted document is within the limits it was admitted under.
mod fuzz {
    use async_graphql::{EmptySubscription, ID, Object, Schema, SimpleObject};
    use proptest::prelude::*;

    use super::*;

    #[derive(SimpleObject)]
    struct Image {
        url: String,
        width: i32,
    }

    #[derive(SimpleObject)]
    struct Title {
        id: ID,
        name: String,
        genres: Vec<String>,
        images: Vec<Image>,
    }

    #[derive(SimpleObject)]
    struct Row {
        kind: String,
        #[graphql(directive = max_items::apply(ProfileLimit::ItemsPerRow))]
        items: Vec<Title>,
    }

    #[derive(SimpleObject)]
    struct Homepage {
        region: String,
        #[graphql(directive = max_items::apply(ProfileLimit::Rows))]
        rows: Vec<Row>,
    }

    struct Query;

    #[Object]
    impl Query {
        #[graphql(directive = backend_calls::apply(2, Some(1)))]
        async fn homepage(&self, region: Option<String>) -> Homepage {
            let title = || Title {
                id: ID("t1".into()),
                name: "n".into(),
                genres: vec!["g".into()],
                images: vec![Image {
                    url: "u".into(),
                    width: 1,
                }],
            };
            Homepage {
                region: region.unwrap_or_default(),
                rows: vec![Row {
                    kind: "TOP_10".into(),
                    items: vec![title(), title()],
                }],
            }
        }

        async fn title(&self, id: ID, width: Option<i32>) -> Option<Title> {
            let _ = (id, width);
            None
        }
    }

    struct Mutation;

    #[Object]
    impl Mutation {
        async fn add_to_my_list(&self, title_id: ID) -> bool {
            !title_id.is_empty()
        }
    }

    const FIELDS: [&str; 16] = [
        "homepage",
        "title",
        "rows",
        "items",
        "kind",
        "region",
        "id",
        "name",
        "genres",
        "images",
        "url",
        "width",
        "__typename",
        "__schema",
        "__type",
        "nope",
    ];

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(&FIELDS[..]).prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("\"US\"".to_owned()),
            Just("7".to_owned()),
            Just("-2147483649".to_owned()),
            Just("1.5".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("$v".to_owned()),
            Just("$w".to_owned()),
            Just("[1, \"a\"]".to_owned()),
            Just("{ a: 1 }".to_owned()),
            Just("TOP_10".to_owned()),
        ]
    }

    fn directive() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(String::new()),
            1 => value().prop_map(|v| format!(" @skip(if: {v})")),
            1 => value().prop_map(|v| format!(" @include(if: {v})")),
            1 => Just(" @nope".to_owned()),
            1 => Just(" @skip".to_owned()),
        ]
    }

    fn selection() -> impl Strategy<Value = String> {
        let leaf = (name(), directive()).prop_map(|(n, d)| format!("{n}{d}"));
        leaf.prop_recursive(6, 64, 6, |inner| {
            let set = prop::collection::vec(inner, 1..5).prop_map(|items| items.join(" "));
            prop_oneof![
                (name(), prop::option::of(value()), directive(), set.clone()).prop_map(
                    |(n, arg, d, set)| match arg {
                        Some(v) => format!("{n}(id: {v}, region: {v}){d} {{ {set} }}"),
                        None => format!("{n}{d} {{ {set} }}"),
                    }
                ),
                (name(), name(), set.clone())
                    .prop_map(|(a, n, set)| format!("{a}: {n} {{ {set} }}")),
                (0..4u8, directive()).prop_map(|(i, d)| format!("...F{i}{d}")),
                set.prop_map(|set| format!("... {{ {set} }}")),
            ]
        })
    }

    fn document() -> impl Strategy<Value = String> {
        (
            prop::sample::select(&["query", "mutation", "subscription", "query Q", ""][..]),
            prop::sample::select(
                &[
                    "",
                    "($v: String)",
                    "($v: String!, $w: [Int!])",
                    "($v: Nope)",
                ][..],
            ),
            prop::collection::vec(selection(), 1..4),
            prop::collection::vec(
                (
                    prop::sample::select(&["Query", "Homepage", "Row", "Title", "Nope"][..]),
                    prop::collection::vec(selection(), 1..3),
                ),
                0..4,
            ),
        )
            .prop_map(|(op, vars, root, fragments)| {
                let head = if op.is_empty() {
                    String::new()
                } else {
                    format!("{op}{vars} ")
                };
                let mut doc = format!("{head}{{ {} }}", root.join(" "));
                for (i, (on, set)) in fragments.iter().enumerate() {
                    doc.push_str(&format!(" fragment F{i} on {on} {{ {} }}", set.join(" ")));
                }
                doc
            })
    }

    fn variables() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(json!({})),
            Just(json!({ "v": "US" })),
            Just(json!({ "v": 5, "w": [1, null] })),
            Just(json!({ "v": null, "w": "x" })),
            Just(json!({ "w": [[1]] })),
        ]
    }

    // Cases: 256 by default, `PROPTEST_CASES` to run longer (CI runs ~60 s of them).
    proptest! {
        #[test]
        fn fuzz_request_parse_analyse_validate_execute(doc in document(), vars in variables()) {
            let schema = Schema::build(Query, Mutation, EmptySubscription).finish();
            let shape = Shape::from_sdl(&schema.sdl());
            let profile = ClientProfile::new(vec![RowKind::Top10], 20);
            let model = CostModel::for_profile(&profile);
            let limits = Limits {
                max_depth: 8,
                max_fields: 200,
                max_cost: 5_000,
                introspection: true,
                max_aliases: 30,
                max_root_fields: 20,
                max_directives: 5,
            };
            let Ok(parsed) = parse_query(&doc) else { return Ok(()); };
            let Some(op) = operation(&parsed, None) else { return Ok(()); };
            let first = analyze(&shape, &model, &parsed, op, &limits);
            prop_assert_eq!(&first, &analyze(&shape, &model, &parsed, op, &limits));
            let Ok(found) = first else { return Ok(()); };
            prop_assert!(found.depth <= limits.max_depth);
            prop_assert!(found.fields <= limits.max_fields);
            prop_assert!(found.cost <= limits.max_cost);
            if check_variables(&shape, op, vars.as_object()).is_err() {
                return Ok(());
            }
            let request = async_graphql::Request::new(doc.clone())
                .variables(async_graphql::Variables::from_json(vars));
            let response = futures::executor::block_on(schema.execute(request));
            // Admitted and executed: either data or errors, never a panic.
            prop_assert!(response.data != async_graphql::Value::Null || !response.errors.is_empty()
                || doc.contains("@skip") || doc.contains("@include"));
        }
    }
}

#[test]
fn typename_is_validated_like_any_other_field() {
    let invalid = |q: &str| matches!(run(q, &LOOSE), Err(Refusal::Invalid(_)));
    for q in [
        "{ __typename @x }",
        "{ __typename @include(if: 1) }",
        "{ __typename @include(if: \"true\") }",
        "{ __typename @include(if: null) }",
        "{ __typename @skip }",
        "{ __typename @skip(if: true, also: 1) }",
        "{ __typename @skip(when: true) }",
        "{ __typename @skip(if: true) @skip(if: false) }",
        "{ __typename @deprecated }",
        "{ __typename(a: 1) }",
        "{ __typename { x } }",
        "{ t: __typename @x }",
        "{ homepage { __typename @x } }",
        "{ ... on Query { __typename @x } }",
        "{ ...F } fragment F on Query { __typename @nope }",
        "query { __typename @include(if: $undeclared) }",
        "query($b: String!) { __typename @include(if: $b) }",
        "query($b: Boolean) { __typename @include(if: $b) }",
        "query($b: Boolean = null) { __typename @include(if: $b) }",
        "query($b: [Boolean!]!) { __typename @include(if: $b) }",
        "mutation { __typename @x }",
    ] {
        assert!(invalid(q), "{q} must be refused");
    }
    for q in [
        "{ __typename }",
        "{ t: __typename }",
        "{ __typename @include(if: true) }",
        "{ __typename @skip(if: false) @include(if: true) }",
        "query($b: Boolean!) { __typename @include(if: $b) }",
        "query($b: Boolean = true) { __typename @skip(if: $b) }",
        "{ homepage { __typename rows { __typename } } }",
        "{ ...F ...F } fragment F on Query { __typename @skip(if: false) }",
    ] {
        assert!(
            run(q, &LOOSE).is_ok(),
            "{q} must pass: {:?}",
            run(q, &LOOSE)
        );
    }
}

/// A weight declared on a resolver reaches the estimate through the schema's SDL: backend calls
/// (fixed and per homepage row) and a list bound, in the numbers of the profile the model is
/// built for; an undeclared field calls nothing and an undeclared list counts the default.
#[test]
fn a_declared_weight_is_weighed() {
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema, SimpleObject};

    #[derive(SimpleObject)]
    struct Item {
        id: i32,
    }

    struct Query;

    #[Object]
    impl Query {
        #[graphql(directive = backend_calls::apply(3, Some(2)))]
        async fn slow(&self) -> i32 {
            0
        }

        #[graphql(directive = backend_calls::apply(4, None))]
        async fn fixed(&self) -> i32 {
            0
        }

        #[graphql(directive = max_items::apply(ProfileLimit::ItemsPerRow))]
        async fn items(&self) -> Vec<Item> {
            Vec::new()
        }

        #[graphql(directive = max_items::apply(ProfileLimit::Rows))]
        async fn rows(&self) -> Vec<Item> {
            Vec::new()
        }

        async fn plain(&self) -> Vec<Item> {
            Vec::new()
        }
    }

    let sdl = Schema::new(Query, EmptyMutation, EmptySubscription).sdl();
    assert!(sdl.contains("@backendCalls(fixed: 3, perRow: 2)"), "{sdl}");
    let shape = Shape::from_sdl(&sdl);
    for (rows, per_row) in [(3_u64, 7_u64), (1, 30)] {
        let kinds = [RowKind::Top10, RowKind::MyList, RowKind::NewReleases];
        let profile = ClientProfile::new(kinds[..rows as usize].to_vec(), per_row as usize);
        let model = CostModel::for_profile(&profile);
        let cost = |q: &str| {
            let doc = parse_query(q).unwrap();
            let op = operation(&doc, None).unwrap();
            analyze(&shape, &model, &doc, op, &LOOSE).unwrap().cost
        };
        assert_eq!(cost("{ slow }"), 1 + CALL_COST * (3 + 2 * rows));
        assert_eq!(cost("{ fixed }"), 1 + CALL_COST * 4);
        assert_eq!(cost("{ items { id } }"), 1 + per_row);
        assert_eq!(cost("{ rows { id } }"), 1 + rows);
        assert_eq!(cost("{ plain { id } }"), 1 + DEFAULT_LIST_SIZE);
    }
}

/// Weights travel with their fields, so a renamed or moved field keeps its weight; what must
/// still hold is that no entry point goes unweighed: every root field of both binaries' schemas
/// (their exported SDL, which a test keeps equal to the running schema) declares the backend
/// calls it makes.
#[test]
fn every_root_field_of_both_schemas_declares_its_backend_calls() {
    for (name, sdl) in [
        ("web", include_str!("../../../../schema/web.graphql")),
        ("mobile", include_str!("../../../../schema/mobile.graphql")),
    ] {
        let shape = Shape::from_sdl(sdl);
        let mut roots = 0;
        for root in [
            Some(&shape.query),
            shape.mutation.as_ref(),
            shape.subscription.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            for (field, f) in &shape.objects[root] {
                assert!(
                    f.weight.declares_calls(),
                    "{name}: {root}.{field} declares no @backendCalls"
                );
                roots += 1;
            }
        }
        assert!(roots >= 10, "{name}: {roots}");
    }
}
