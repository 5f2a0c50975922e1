//! [`Inline`] and [`InlineList`]: resolve an in-memory object's selected fields, or a list's items,
//! one after another on the calling task, instead of as a set of futures polled concurrently.
//! [`Scalars`] goes one step further for objects made only of scalar fields (image renditions,
//! playback progress): it asks the object for each selected field's value directly.
//!
//! async-graphql resolves every object through a `FuturesUnordered`: one heap-allocated task per
//! selected field, an atomic waker per poll, and a drain loop. That concurrency is what a field
//! doing I/O needs, and what a field that merely reads a struct pays for without using it. A web
//! homepage has ~100 titles with 54 image renditions each, so ~6,000 objects and ~20,000 fields;
//! under the stock path, task bookkeeping was the largest item of the BFF's CPU profile.
//!
//! Lists get the same treatment: the stock resolver builds a future per item and joins them.
//!
//! Wrap a value in `Inline` (a list in `InlineList`) only when **none of its fields waits on I/O** (titles, images, row
//! items: data the composer already fetched). Its fields would run one after another, so a field
//! that awaited a backend would serialise with its siblings. The GraphQL type is the wrapped
//! type's own: same name, fields, docs and SDL (`InlineList<T>` is `[T!]!`, as `Vec<T>`).
//!
//! Results are those of the stock resolver: fields in query order, fragments expanded by type
//! condition, equal response keys merged, a field error recorded at its path with the field left
//! out. What this path leaves out is async-graphql's per-field extension hooks and custom
//! directives on fields: [`crate::graphql::build_schema`] registers neither (its one custom
//! directive, `@defer`, applies to fragments), and a schema with custom field directives falls
//! back to the stock resolvers here. The tests compare both paths on a query with fragments,
//! aliases, merged keys, `@skip`/`@include`, `__typename` and failing fields.

use std::borrow::Cow;

use async_graphql::{
    ContainerType, ContextSelectionSet, Name, OutputType, Positioned, ServerError, ServerResult,
    Value,
    indexmap::{IndexMap, map::Entry},
    parser::types::{Field, Selection, SelectionSet},
    registry::Registry,
    resolver_utils::{resolve_container, resolve_list},
};

use super::raw::{expand, raw_json};

/// The `OutputType` items of a wrapper `W<T>(T)` that is the object type `T` itself: same name,
/// fields, docs and SDL.
macro_rules! same_object_type {
    () => {
        fn type_name() -> Cow<'static, str> {
            T::type_name()
        }

        fn qualified_type_name() -> String {
            T::qualified_type_name()
        }

        fn introspection_type_name(&self) -> Cow<'static, str> {
            self.0.introspection_type_name()
        }

        fn create_type_info(registry: &mut Registry) -> String {
            T::create_type_info(registry)
        }
    };
}

/// The `OutputType` items of a wrapper `W<T>(Vec<T>)` that is the list type `[T!]!` itself.
macro_rules! same_list_type {
    () => {
        fn type_name() -> Cow<'static, str> {
            Vec::<T>::type_name()
        }

        fn qualified_type_name() -> String {
            Vec::<T>::qualified_type_name()
        }

        fn create_type_info(registry: &mut Registry) -> String {
            Vec::<T>::create_type_info(registry)
        }
    };
}

pub(super) use {same_list_type, same_object_type};

/// A GraphQL object whose fields are resolved sequentially, without a task per field (see the
/// module docs for when that is right).
pub struct Inline<T>(pub T);

/// An object whose fields are scalars read from memory, without arguments: their values can be
/// made directly, without a field context, a resolver future and an `OutputType` call each. A web
/// homepage has ~1,800 image renditions of three such fields.
pub trait ScalarFields: ContainerType {
    /// The value of field `name` as its resolver would give it; `None` for a field this method
    /// does not cover, which then goes through the type's resolver as usual (so a field added to
    /// the type later is still answered, only without the shortcut).
    fn scalar_field(&self, name: &str) -> Option<Value>;
}

/// [`Inline`] for a [`ScalarFields`] object: the same GraphQL type and answers, with each field's
/// value taken from [`ScalarFields::scalar_field`].
pub struct Scalars<T>(pub T);

impl<T: ContainerType> OutputType for Inline<T> {
    same_object_type!();

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        _field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        resolve_object(ctx, &self.0).await
    }
}

impl<T: ScalarFields> OutputType for Scalars<T> {
    same_object_type!();

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        _field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if super::field_directives(ctx.schema_env) {
            return resolve_container(ctx, &self.0).await;
        }
        resolve_inline(ctx, &self.0, Some(T::scalar_field)).await
    }
}

/// A list whose items are resolved one after another, without a future per item (see the module
/// docs for when that is right). Same GraphQL type as `Vec<T>`.
pub struct InlineList<T>(pub Vec<T>);

impl<T: OutputType> OutputType for InlineList<T> {
    same_list_type!();

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if super::field_directives(ctx.schema_env) {
            return resolve_list(ctx, field, &self.0, Some(self.0.len())).await;
        }
        let mut items = Vec::with_capacity(self.0.len());
        for (idx, item) in self.0.iter().enumerate() {
            let ctx_idx = ctx.with_index(idx);
            let value = item
                .resolve(&ctx_idx, field)
                .await
                .map_err(|e| ctx_idx.set_error_path(e))?;
            items.push(value);
        }
        Ok(Value::List(items))
    }
}

/// A field's value straight from the object, when it can give it (see [`ScalarFields`]).
type ScalarOf<T> = fn(&T, &str) -> Option<Value>;

/// `root` resolved as [`Inline`] resolves it.
pub(super) async fn resolve_object<T: ContainerType>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
) -> ServerResult<Value> {
    if super::field_directives(ctx.schema_env) {
        return resolve_container(ctx, root).await;
    }
    resolve_inline(ctx, root, None).await
}

async fn resolve_inline<'a, T: ContainerType>(
    ctx: &ContextSelectionSet<'a>,
    root: &'a T,
    scalar: Option<ScalarOf<T>>,
) -> ServerResult<Value> {
    let items = &ctx.item.node.items;
    // Fragments need expanding into a list first; a plain field list (nearly every object of a
    // homepage) is walked as it is, without that allocation.
    let direct = items.iter().all(|s| matches!(s.node, Selection::Field(_)));
    let mut expanded = Vec::new();
    if !direct {
        collect_fields(ctx, root, &ctx.item.node, &mut expanded)?;
    }
    let fields = items
        .iter()
        .filter_map(|s| match &s.node {
            Selection::Field(field) if direct => Some(field),
            _ => None,
        })
        .chain(expanded.iter().copied());
    let mut object = IndexMap::with_capacity(if direct { items.len() } else { expanded.len() });
    let mut selected = false;
    for field in fields {
        selected = true;
        let key = field.node.response_key().node.clone();
        if field.node.name.node == "__typename" {
            let name = root.introspection_type_name().into_owned();
            insert_value(&mut object, key, Value::String(name));
            continue;
        }
        if let Some(value) = scalar.and_then(|f| f(root, field.node.name.node.as_str())) {
            insert_value(&mut object, key, value);
            continue;
        }
        let ctx_field = ctx.with_field(field);
        // As the stock resolver: an error is recorded (the field's own resolver has already put
        // its path on it) and the field left out.
        match root.resolve_field(&ctx_field).await {
            Ok(value) => insert_value(&mut object, key, value.unwrap_or_default()),
            Err(e) => ctx.add_error(e),
        }
    }
    // Every selected field failed: null, as the stock resolver answers. Nothing selected at all
    // (every field skipped by `@skip`/`@include`): the spec's empty object.
    Ok(if object.is_empty() && selected {
        Value::Null
    } else {
        Value::Object(object)
    })
}

/// The fields `set` selects on `root`, with fragments whose type condition applies expanded in
/// place (query order kept).
pub(super) fn collect_fields<'a, T: ContainerType + ?Sized>(
    ctx: &ContextSelectionSet<'a>,
    root: &T,
    set: &'a SelectionSet,
    out: &mut Vec<&'a Positioned<Field>>,
) -> ServerResult<()> {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => out.push(field),
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                let fragment = ctx.query_env.fragments.get(name).ok_or_else(|| {
                    ServerError::new(format!(r#"Unknown fragment "{name}"."#), Some(spread.pos))
                })?;
                let on = fragment.node.type_condition.node.on.node.as_str();
                if applies(ctx, root, Some(on)) {
                    collect_fields(ctx, root, &fragment.node.selection_set.node, out)?;
                }
            }
            Selection::InlineFragment(fragment) => {
                let on = fragment
                    .node
                    .type_condition
                    .as_ref()
                    .map(|c| c.node.on.node.as_str());
                if applies(ctx, root, on) {
                    collect_fields(ctx, root, &fragment.node.selection_set.node, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Whether a fragment with type condition `on` applies to `root`: no condition, the object's own
/// type, or an interface it implements.
fn applies<T: ContainerType + ?Sized>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
    on: Option<&str>,
) -> bool {
    let Some(on) = on else {
        return true;
    };
    let name = root.introspection_type_name();
    name == on
        || T::type_name() == on
        || ctx
            .schema_env
            .registry
            .implements
            .get(name.as_ref())
            .is_some_and(|interfaces| interfaces.contains(on))
}

/// Adds `value` under `key`, merging it into an object already there (the same response key
/// selected twice, e.g. once directly and once through a fragment), as the stock resolver does.
fn insert_value(target: &mut IndexMap<Name, Value>, key: Name, value: Value) {
    // One hash per field: almost every key is new.
    match target.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(slot) => merge(slot.into_mut(), value),
    }
}

/// Merges a second selection's value of one response key into the first's: objects field by
/// field, lists item by item (object items only), anything else keeps the first value, as the
/// stock resolver does. Rendered JSON ([`super::render`]) is read back into a tree first.
pub(super) fn merge(into: &mut Value, from: Value) {
    if raw_json(into).is_some() {
        *into = expand(std::mem::take(into));
    }
    match (into, expand(from)) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                insert_value(into, k, v);
            }
        }
        (Value::List(into), Value::List(from)) => {
            for (into, from) in into.iter_mut().zip(from) {
                if raw_json(into).is_some() {
                    *into = expand(std::mem::take(into));
                }
                if let (Value::Object(into), Value::Object(from)) = (into, expand(from)) {
                    for (k, v) in from {
                        insert_value(into, k, v);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{
        CustomDirective, Directive, EmptyMutation, EmptySubscription, Object, Schema, SimpleObject,
        Variables,
    };
    use serde_json::{Value as Json, json};

    use super::{Inline, InlineList, ScalarFields, Scalars};

    #[derive(SimpleObject)]
    struct Leaf {
        url: String,
        width: u32,
    }

    /// Covers `url` only: `width` goes through the resolver, as a field added later would.
    impl ScalarFields for Leaf {
        fn scalar_field(&self, name: &str) -> Option<async_graphql::Value> {
            (name == "url").then(|| async_graphql::Value::String(self.url.clone()))
        }
    }

    fn leaves_of(card: u32) -> Vec<Leaf> {
        (1..=3)
            .map(|w| Leaf {
                url: format!("https://img/{card}/{w}"),
                width: w * 100,
            })
            .collect()
    }

    struct Card(u32);

    #[Object]
    impl Card {
        async fn name(&self) -> String {
            format!("card {}", self.0)
        }

        async fn leaves(&self) -> InlineList<Inline<Leaf>> {
            InlineList(leaves_of(self.0).into_iter().map(Inline).collect())
        }

        /// The same leaves through `Scalars`.
        async fn scalar_leaves(&self) -> InlineList<Scalars<Leaf>> {
            InlineList(leaves_of(self.0).into_iter().map(Scalars).collect())
        }

        async fn tags(&self) -> InlineList<&str> {
            InlineList(vec!["a", "b"])
        }

        /// A list whose second item has a failing field.
        async fn broken_list(&self) -> Option<InlineList<Inline<Broken>>> {
            Some(InlineList(vec![
                Inline(Broken(false)),
                Inline(Broken(true)),
            ]))
        }

        async fn first(&self) -> Option<Inline<Leaf>> {
            (self.0 != 2).then(|| {
                Inline(Leaf {
                    url: format!("https://img/{}/first", self.0),
                    width: 1,
                })
            })
        }

        /// A nullable field that fails: null plus an error at its path.
        async fn fails(&self) -> async_graphql::Result<Option<i32>> {
            Err("no such thing".into())
        }

        /// A non-null field that fails for card 3.
        async fn strict(&self) -> async_graphql::Result<i32> {
            if self.0 == 3 {
                Err("strict failed".into())
            } else {
                Ok(7)
            }
        }
    }

    struct Broken(bool);

    #[Object]
    impl Broken {
        async fn ok(&self) -> async_graphql::Result<i32> {
            if self.0 {
                Err("broken item".into())
            } else {
                Ok(1)
            }
        }
    }

    struct Query;

    #[Object]
    impl Query {
        async fn cards(&self) -> Vec<Option<Inline<Card>>> {
            (1..=3).map(|i| Some(Inline(Card(i)))).collect()
        }
    }

    struct Noop;
    impl CustomDirective for Noop {}

    /// Registering any custom directive sends `Inline` and `InlineList` down the stock resolvers.
    #[Directive(location = "Field")]
    fn noop() -> impl CustomDirective {
        Noop
    }

    async fn run(stock: bool, query: &str, variables: Json) -> Json {
        let builder = Schema::build(Query, EmptyMutation, EmptySubscription);
        let schema = if stock {
            builder.directive(noop)
        } else {
            builder
        }
        .finish();
        let request = async_graphql::Request::new(query).variables(Variables::from_json(variables));
        let mut out = serde_json::to_value(schema.execute(request).await).unwrap();
        // Both resolvers record errors as fields finish; compare them as a set.
        if let Some(Json::Array(errors)) = out.get_mut("errors") {
            errors.sort_by_key(ToString::to_string);
        }
        out
    }

    const QUERY: &str = r#"
        query($big: Boolean!) {
          cards {
            __typename
            name
            ... on Card { leaves { url } }
            leaves { width ...L }
            alias: first { url }
            first { __typename }
            ...C
            hidden: name @skip(if: true)
            shown: name @include(if: $big)
            fails
            tags
            brokenList { ok }
          }
          strictCards: cards { name strict }
        }
        fragment L on Leaf { url w2: width }
        fragment C on Card { name first { width } }
    "#;

    #[tokio::test]
    async fn answers_exactly_as_the_stock_resolver() {
        for big in [true, false] {
            let vars = json!({ "big": big });
            let inline = run(false, QUERY, vars.clone()).await;
            let stock = run(true, QUERY, vars).await;
            assert_eq!(inline, stock, "big = {big}");
        }
    }

    #[tokio::test]
    async fn scalars_answer_as_inline_objects_and_the_stock_resolver() {
        let query = |field: &str| {
            format!(
                "{{ cards {{ items: {field} {{ __typename url u2: url width ...L ... on Leaf {{ url width }} }} }} }} \
                 fragment L on Leaf {{ w2: width url }}"
            )
        };
        let inline = run(false, &query("leaves"), json!({})).await;
        assert_eq!(
            inline["data"]["cards"][0]["items"][1],
            json!({ "__typename": "Leaf", "url": "https://img/1/2", "u2": "https://img/1/2", "width": 200, "w2": 200 })
        );
        let scalars = run(false, &query("scalarLeaves"), json!({})).await;
        assert_eq!(scalars, inline);
        let stock = run(true, &query("scalarLeaves"), json!({})).await;
        assert_eq!(stock, inline);
    }

    #[tokio::test]
    async fn merges_fragments_and_reports_errors_at_their_paths() {
        let out = run(false, QUERY, json!({ "big": true })).await;
        let card1 = &out["data"]["cards"][0];
        assert_eq!(card1["__typename"], "Card");
        assert_eq!(card1["shown"], "card 1");
        assert!(card1.get("hidden").is_none());
        assert_eq!(
            card1["leaves"][1],
            json!({ "url": "https://img/1/2", "width": 200, "w2": 200 })
        );
        assert_eq!(card1["first"], json!({ "__typename": "Leaf", "width": 1 }));
        assert_eq!(card1["alias"], json!({ "url": "https://img/1/first" }));
        assert_eq!(out["data"]["cards"][1]["first"], Json::Null);
        assert_eq!(card1["fails"], Json::Null);
        // Card 3's non-null `strict` failed. Like the stock resolver (the first test), the field
        // is left out with its error rather than nulling the card; the other cards arrive.
        assert_eq!(out["data"]["strictCards"][2], json!({ "name": "card 3" }));
        assert_eq!(out["data"]["strictCards"][0]["strict"], 7);
        let paths = crate::graphql::error_paths(&out);
        assert!(paths.contains(&&json!(["cards", 0, "fails"])));
        assert!(paths.contains(&&json!(["strictCards", 2, "strict"])));
        assert_eq!(card1["tags"], json!(["a", "b"]));
        assert!(paths.contains(&&json!(["cards", 0, "brokenList", 1, "ok"])));
        // The failed item's only field is left out, so the item is null; its sibling arrives.
        assert_eq!(card1["brokenList"], json!([{ "ok": 1 }, null]));
        assert_eq!(paths.len(), 7, "{out}");
    }
}
