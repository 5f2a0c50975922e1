//! [`Rendered`] and [`RenderedList`]: in-memory objects (row items, titles, their artwork) written
//! straight to JSON bytes while they are resolved, instead of as the engine's value tree that
//! [`super::json`] prints afterwards.
//!
//! A web homepage is ~100 titles of ~75 fields each, 18 image renditions among them. As a value
//! tree that is ~2,000 `IndexMap`s, ~6,000 owned strings and keys, then a walk to print them and a
//! walk to free them: after the catalog's answer, the largest share of the BFF's own time on the
//! homepage's critical path. Here each object's selected fields are written in selection order as
//! they are read, so a title costs its bytes and little else.
//!
//! **What a type provides.** [`RenderFields::render_field`] writes the value of one selected field
//! through [`FieldOut`] (strings, numbers, lists, nested objects). Types declare their fields once
//! with [`crate::graphql_object!`], which makes the resolver and the render arm from the same
//! declaration, a field's guard included: the render arm runs it too ([`FieldOut::check_guard`]),
//! so this shortcut never skips an authorization the engine would make. (Authorization proper —
//! scopes, the maturity ceiling — is decided before rendering anyway, in the pipeline and in
//! composition.) A field it does not cover goes
//! through the type's own resolver, polled once (these types do no I/O) and printed, so a field
//! added to a type later still answers, only without the shortcut; the types' tests check that
//! every field is covered and that both paths give the same bytes.
//!
//! **Same answers as the engine.** Fields come in selection order with fragments expanded by type
//! condition; a response key the query selects more than once is written once, its sub-selections
//! merged (GraphQL's CollectFields); `__typename` is the object's type name; a field error is
//! recorded at its path and the field left out; an object whose every field failed is `null`, one
//! whose every field was skipped `{}`, as [`super::Inline`] does.
//!
//! **Where it applies.** The rendered bytes travel up the engine's tree as one marker value (see
//! [`raw`]), which [`super::json`] copies verbatim. Containers of ours merge markers correctly
//! (decoding them first, [`super::inline`]); the engine's own root container does not, so the
//! HTTP handler turns rendering on ([`RenderJson`]) only for operations whose root selects no
//! object field twice under one response key ([`root_renderable`]). Without that request data
//! (other transports, `graphql.direct_json = false`, custom directives on fields) both wrappers resolve
//! exactly as [`super::Inline`] and [`super::InlineList`].

use std::{
    borrow::{Borrow, Cow},
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_graphql::{
    ContainerType, Context, ContextSelectionSet, InputType, OutputType, Positioned, ServerError,
    ServerResult, Value,
    parser::types::{DocumentOperations, ExecutableDocument, Field, Selection, SelectionSet},
    registry::Registry,
};
use futures::FutureExt;

use super::{inline, json, raw::raw};

/// Request data that turns rendering on for one request (the HTTP handler inserts a fresh one
/// when the operation allows it). Clones share one count of the fields that went through their
/// resolver rather than [`RenderFields`], which the tests hold at zero for every type.
#[derive(Debug, Clone, Default)]
pub struct RenderJson {
    fallbacks: Arc<AtomicUsize>,
}

impl RenderJson {
    /// Fields answered through their resolver so far in the requests carrying this value.
    pub fn fallbacks(&self) -> usize {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

/// Whether rendering is safe for `operation` of `doc`: no response key of its root selection
/// (fragments expanded, whatever their type condition or `@skip`) is selected twice when one of
/// the selections has sub-fields. The engine merges repeated root fields itself, and its merge
/// would drop a second marker's fields. Repeats below the root are merged by our containers.
pub(crate) fn root_renderable(doc: &ExecutableDocument, operation: Option<&str>) -> bool {
    let op = match (&doc.operations, operation) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(map), Some(name)) => match map.get(name) {
            Some(op) => op,
            None => return false,
        },
        (DocumentOperations::Multiple(map), None) => match map.values().next() {
            Some(op) if map.len() == 1 => op,
            _ => return false,
        },
    };
    let mut seen: Vec<(&str, bool)> = Vec::new();
    let mut spreads = HashSet::new();
    root_keys(doc, &op.node.selection_set.node, &mut seen, &mut spreads)
}

/// Adds the response keys of `set` to `seen`; `false` at the first repeated key with sub-fields
/// or a fragment spread met twice (validation rejects cycles later; here, no rendering).
fn root_keys<'d>(
    doc: &'d ExecutableDocument,
    set: &'d SelectionSet,
    seen: &mut Vec<(&'d str, bool)>,
    spreads: &mut HashSet<&'d str>,
) -> bool {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => {
                let key = field.node.response_key().node.as_str();
                let composite = !field.node.selection_set.node.items.is_empty();
                if let Some((_, was_composite)) = seen.iter_mut().find(|(k, _)| *k == key) {
                    if composite || *was_composite {
                        return false;
                    }
                } else {
                    seen.push((key, composite));
                }
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                let Some(fragment) = doc.fragments.get(name) else {
                    return false;
                };
                if !spreads.insert(name)
                    || !root_keys(doc, &fragment.node.selection_set.node, seen, spreads)
                {
                    return false;
                }
            }
            Selection::InlineFragment(fragment) => {
                if !root_keys(doc, &fragment.node.selection_set.node, seen, spreads) {
                    return false;
                }
            }
        }
    }
    true
}

/// Whether this request renders (see the module docs).
fn renders(ctx: &ContextSelectionSet<'_>) -> bool {
    !super::field_directives(ctx.schema_env) && ctx.data_opt::<RenderJson>().is_some()
}

/// An object whose selected fields can be written straight as JSON (see the module docs).
pub trait RenderFields: ContainerType {
    /// Writes the value of the selected field `f.name()` through `f` and returns `Ok(true)`;
    /// `Ok(false)` without writing for a field not covered here (its resolver answers it
    /// instead); `Err` for a field error, recorded at the field's path (see [`FieldOut::error`]).
    fn render_field(&self, f: &mut FieldOut<'_, '_>) -> ServerResult<bool>;
}

/// One selected field of an object being rendered: its name and arguments, and the output
/// positioned where its value goes. Write exactly one value.
pub struct FieldOut<'r, 'a> {
    ctx: &'r Context<'a>,
    /// Every selection of this response key in the object (usually one).
    group: &'r [&'a Positioned<Field>],
    out: &'r mut Vec<u8>,
}

impl<'a> FieldOut<'_, 'a> {
    /// The field's name in the schema (not its alias).
    pub fn name(&self) -> &str {
        self.ctx.item.node.name.node.as_str()
    }

    /// The value of argument `name`, variables resolved; `default` when the query omits it.
    pub fn arg<V: InputType>(&self, name: &str, default: fn() -> V) -> ServerResult<V> {
        self.ctx.param_value(name, Some(default)).map(|(_, v)| v)
    }

    /// Runs `guard` for this field as its resolver would, without waiting: a guard that cannot
    /// decide at once denies (`FORBIDDEN`), so this path never answers what the resolver would
    /// refuse.
    pub fn check_guard<G: async_graphql::Guard>(&self, guard: &G) -> ServerResult<()> {
        match guard.check(self.ctx).now_or_never() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.error(e)),
            None => Err(self.error(
                crate::error::ErrorCode::Forbidden
                    .error("this field's authorization could not be decided"),
            )),
        }
    }

    /// A field error for `error` at this field's position (its path is added by the caller).
    pub fn error(&self, error: impl Into<async_graphql::Error>) -> ServerError {
        error.into().into_server_error(self.ctx.item.pos)
    }

    /// `null`.
    pub fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    /// A string (also what an `ID` prints as).
    pub fn str(&mut self, s: &str) {
        json::write_str(self.out, s);
    }

    /// A string or `null`.
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    /// An integer.
    pub fn int(&mut self, n: impl Into<i64>) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n.into()).as_bytes());
    }

    /// An integer or `null`.
    pub fn opt_int<N: Into<i64>>(&mut self, n: Option<N>) {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }

    /// A float, as the engine prints an `f64` (`null` when not finite).
    pub fn float(&mut self, x: f64) {
        match serde_json::Number::from_f64(x) {
            Some(n) => json::write_number(self.out, &n),
            None => self.null(),
        }
    }

    /// A list of strings.
    pub fn strs<S: AsRef<str>>(&mut self, items: impl IntoIterator<Item = S>) {
        self.out.push(b'[');
        for (i, s) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json::write_str(self.out, s.as_ref());
        }
        self.out.push(b']');
    }

    /// An object, rendered with this field's sub-selection.
    pub fn object<U: RenderFields>(&mut self, value: &U) {
        let ctx = self
            .ctx
            .with_selection_set(&self.group[0].node.selection_set);
        write_object(&ctx, value, self.group, self.out);
    }

    /// An object or `null`.
    pub fn opt_object<U: RenderFields>(&mut self, value: Option<&U>) {
        match value {
            Some(v) => self.object(v),
            None => self.null(),
        }
    }

    /// A list of objects, each rendered with this field's sub-selection.
    pub fn objects<U: RenderFields>(&mut self, items: impl IntoIterator<Item = U>) {
        let ctx = self
            .ctx
            .with_selection_set(&self.group[0].node.selection_set);
        write_list::<U, U>(&ctx, items, self.group, self.out);
    }
}

/// Which fields an object of one type writes for one selection: worked out once per object, or
/// once for all items of a list (they share type and selection).
enum Plan<'a> {
    /// Nearly every object: one selection of distinct plain fields, walked as it is.
    Plain(&'a SelectionSet),
    /// Fragments or repeated keys: the collected fields by response key.
    Collected(Vec<Group<'a>>),
    /// The selection could not be collected (its error is recorded): no fields.
    Failed,
}

impl<'a> Plan<'a> {
    fn of<T: ContainerType + ?Sized>(
        ctx: &ContextSelectionSet<'a>,
        root: &T,
        group: &[&'a Positioned<Field>],
    ) -> Self {
        if let Some(set) = plain_fields(group) {
            return Plan::Plain(set);
        }
        match collect(ctx, root, group) {
            Ok(groups) => Plan::Collected(groups),
            Err(e) => {
                ctx.add_error(e);
                Plan::Failed
            }
        }
    }
}

/// Writes `items` as a list, every item with the selections `group` (one plan for all of them:
/// they share their type).
fn write_list<U: RenderFields, B: Borrow<U>>(
    ctx: &ContextSelectionSet<'_>,
    items: impl IntoIterator<Item = B>,
    group: &[&Positioned<Field>],
    out: &mut Vec<u8>,
) {
    out.push(b'[');
    let mut plan = None;
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let item = item.borrow();
        let ctx_item = ctx.with_index(i);
        let plan = plan.get_or_insert_with(|| Plan::of(ctx, item, group));
        write_planned(&ctx_item, item, plan, out);
    }
    out.push(b']');
}

/// Writes `root` as the value of the field selections `group` (one response key, usually one
/// selection), `ctx` being the object's context (path, fragments, errors).
fn write_object<T: RenderFields + ?Sized>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
    group: &[&Positioned<Field>],
    out: &mut Vec<u8>,
) {
    let plan = Plan::of(ctx, root, group);
    write_planned(ctx, root, &plan, out);
}

/// Writes `root` per `plan`.
fn write_planned<T: RenderFields + ?Sized>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
    plan: &Plan<'_>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    let open = out.len();
    let selected = match plan {
        Plan::Plain(set) => {
            for selection in &set.items {
                if let Selection::Field(field) = &selection.node {
                    write_field(ctx, root, &[field], open, out);
                }
            }
            !set.items.is_empty()
        }
        Plan::Collected(groups) => {
            for (_, fields) in groups {
                write_field(ctx, root, fields, open, out);
            }
            !groups.is_empty()
        }
        Plan::Failed => true,
    };
    if out.len() == open && selected {
        // Every selected field failed: null, as the value-tree path answers. (Nothing selected
        // at all, every field skipped, is the spec's empty object, `{}`.)
        out.truncate(open - 1);
        out.extend_from_slice(b"null");
    } else {
        out.push(b'}');
    }
}

/// The one selection set of `group` when it holds only plain fields with distinct response keys.
fn plain_fields<'a>(group: &[&'a Positioned<Field>]) -> Option<&'a SelectionSet> {
    let [field] = group else {
        return None;
    };
    let set = &field.node.selection_set.node;
    for (i, selection) in set.items.iter().enumerate() {
        let Selection::Field(f) = &selection.node else {
            return None;
        };
        let key = f.node.response_key().node.as_str();
        let repeated = set.items[..i].iter().any(|s| match &s.node {
            Selection::Field(g) => g.node.response_key().node.as_str() == key,
            _ => false,
        });
        if repeated {
            return None;
        }
    }
    Some(set)
}

/// One response key of an object and every selection of it.
type Group<'a> = (&'a str, Vec<&'a Positioned<Field>>);

/// GraphQL's CollectFields over every selection of `group`: fields by response key in first
/// appearance order, fragments whose type condition applies expanded in place.
fn collect<'a, T: ContainerType + ?Sized>(
    ctx: &ContextSelectionSet<'a>,
    root: &T,
    group: &[&'a Positioned<Field>],
) -> ServerResult<Vec<Group<'a>>> {
    let mut flat = Vec::new();
    for field in group {
        inline::collect_fields(ctx, root, &field.node.selection_set.node, &mut flat)?;
    }
    let mut groups: Vec<Group<'a>> = Vec::with_capacity(flat.len());
    for field in flat {
        let key = field.node.response_key().node.as_str();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, fields)) => fields.push(field),
            None => groups.push((key, vec![field])),
        }
    }
    Ok(groups)
}

/// Writes `,"key":value` for one response key (`fields`: its selections); nothing when the field
/// failed, its error recorded. `open` is where the object's first member starts.
fn write_field<T: RenderFields + ?Sized>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
    fields: &[&Positioned<Field>],
    open: usize,
    out: &mut Vec<u8>,
) {
    let first = fields[0];
    let start = out.len();
    if start > open {
        out.push(b',');
    }
    // Response keys are GraphQL names: nothing to escape.
    out.push(b'"');
    out.extend_from_slice(first.node.response_key().node.as_bytes());
    out.extend_from_slice(b"\":");
    let value_at = out.len();
    if first.node.name.node == "__typename" {
        json::write_str(out, &root.introspection_type_name());
        return;
    }
    let ctx_field = ctx.with_field(first);
    let covered = root.render_field(&mut FieldOut {
        ctx: &ctx_field,
        group: fields,
        out,
    });
    match covered {
        Ok(true) => {}
        Ok(false) => {
            out.truncate(value_at);
            if !resolve_field(ctx, root, fields, out) {
                out.truncate(start);
            }
        }
        Err(e) => {
            out.truncate(start);
            ctx.add_error(ctx_field.set_error_path(e));
        }
    }
}

/// A field [`RenderFields`] does not cover: its resolver, once per selection, the values merged
/// and printed. `false` when every selection failed (errors recorded).
fn resolve_field<T: ContainerType + ?Sized>(
    ctx: &ContextSelectionSet<'_>,
    root: &T,
    fields: &[&Positioned<Field>],
    out: &mut Vec<u8>,
) -> bool {
    if let Some(render) = ctx.data_opt::<RenderJson>() {
        render.fallbacks.fetch_add(fields.len(), Ordering::Relaxed);
    }
    let mut merged: Option<Value> = None;
    for field in fields {
        let ctx_field = ctx.with_field(field);
        // In-memory types answer on the first poll; one that waited would break the contract
        // of this module (and of `Inline`), which is a bug to report, not a reason to block.
        match root.resolve_field(&ctx_field).now_or_never() {
            Some(Ok(value)) => {
                let value = value.unwrap_or_default();
                match &mut merged {
                    None => merged = Some(value),
                    Some(into) => inline::merge(into, value),
                }
            }
            Some(Err(e)) => ctx.add_error(e),
            None => {
                tracing::error!(
                    field = %field.node.name.node,
                    "a rendered field's resolver waited; rendered types must not do I/O"
                );
                ctx.add_error(ctx_field.set_error_path(ServerError::new(
                    "field resolver did not complete",
                    Some(field.pos),
                )));
            }
        }
    }
    match merged {
        Some(value) => {
            json::write_value(out, &value);
            true
        }
        None => false,
    }
}

/// What `write` renders, as a marker value; its buffer starts at the length `last` remembers
/// (bounded), which is then updated: a surface's rows are alike.
fn rendered(last: &AtomicUsize, write: impl FnOnce(&mut Vec<u8>)) -> Value {
    let mut out = Vec::with_capacity(last.load(Ordering::Relaxed).clamp(256, 256 * 1024));
    write(&mut out);
    last.store(out.len(), Ordering::Relaxed);
    raw(out)
}

/// An object written straight to JSON when the request renders, else resolved as
/// [`super::Inline`] (see the module docs). Same GraphQL type as `T`.
pub struct Rendered<T>(pub T);

impl<T: RenderFields> OutputType for Rendered<T> {
    inline::same_object_type!();

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if !renders(ctx) {
            // Boxed: the value-tree path nests every object's future inside its parent's, and a
            // homepage's chain is deep enough to reach the compiler's type recursion limit.
            return Box::pin(inline::resolve_object(ctx, &self.0)).await;
        }
        static LAST: AtomicUsize = AtomicUsize::new(0);
        Ok(rendered(&LAST, |out| {
            write_object(ctx, &self.0, std::slice::from_ref(&field), out);
        }))
    }
}

/// A list of objects written straight to JSON when the request renders, else resolved as
/// [`super::InlineList`] of [`super::Inline`] items. Same GraphQL type as `Vec<T>`.
pub struct RenderedList<T>(pub Vec<T>);

impl<T: RenderFields> OutputType for RenderedList<T> {
    inline::same_list_type!();

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        if !renders(ctx) {
            let mut items = Vec::with_capacity(self.0.len());
            for (idx, item) in self.0.iter().enumerate() {
                // Boxed for the same reason as `Rendered`'s.
                let ctx_idx = ctx.with_index(idx);
                let value = Box::pin(inline::resolve_object(&ctx_idx, item))
                    .await
                    .map_err(|e| ctx_idx.set_error_path(e))?;
                items.push(value);
            }
            return Ok(Value::List(items));
        }
        static LAST: AtomicUsize = AtomicUsize::new(0);
        Ok(rendered(&LAST, |out| {
            write_list::<T, &T>(ctx, &self.0, std::slice::from_ref(&field), out);
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{
        EmptyMutation, EmptySubscription, ID, Object, Request, Schema, ServerResult, Variables,
        parser::parse_query,
    };
    use serde_json::{Value as Json, json};

    use super::super::json;
    use super::{FieldOut, RenderFields, RenderJson, Rendered, RenderedList, root_renderable};
    use crate::graphql::{Inline, InlineList, response_json};

    struct Leaf {
        url: String,
        width: u32,
        ratio: f64,
    }

    /// One leaf, borrowed from its card (as the real image renditions borrow their title).
    struct LeafRef<'a>(&'a Leaf);

    #[Object(name = "Leaf")]
    impl LeafRef<'_> {
        async fn url(&self) -> &str {
            &self.0.url
        }

        async fn width(&self) -> u32 {
            self.0.width
        }

        async fn ratio(&self) -> f64 {
            self.0.ratio
        }

        /// Not covered by `render_field`: answered by this resolver.
        async fn extra(&self) -> String {
            format!("extra of {}", self.0.width)
        }

        /// Not covered either, and failing.
        async fn broken(&self) -> async_graphql::Result<i32> {
            Err("broken leaf".into())
        }
    }

    impl RenderFields for LeafRef<'_> {
        fn render_field(&self, f: &mut FieldOut<'_, '_>) -> ServerResult<bool> {
            match f.name() {
                "url" => f.str(&self.0.url),
                "width" => f.int(self.0.width),
                "ratio" => f.float(self.0.ratio),
                _ => return Ok(false),
            }
            Ok(true)
        }
    }

    struct Card {
        id: u32,
        tags: Vec<String>,
        leaves: Vec<Leaf>,
    }

    impl Card {
        fn new(id: u32) -> Self {
            Self {
                id,
                tags: vec![format!("tag \"{id}\""), "b\\c\n".to_owned()],
                leaves: (1..=2)
                    .map(|w| Leaf {
                        url: format!("https://img/{id}/{w}?q=\"x\""),
                        width: w * 100,
                        // The last one reads back one ulp off without serde_json's `float_roundtrip`.
                        ratio: [1.0, 1.0 / 3.0, 0.381_638_418_079_096_04][(id + w) as usize % 3],
                    })
                    .collect(),
            }
        }

        fn best_leaf(&self) -> Option<LeafRef<'_>> {
            (self.id != 2).then(|| LeafRef(&self.leaves[0]))
        }

        fn first_leaves(&self, n: i32) -> async_graphql::Result<Vec<LeafRef<'_>>> {
            let n = usize::try_from(n).map_err(|_| "n must not be negative")?;
            Ok(self.leaves.iter().take(n).map(LeafRef).collect())
        }
    }

    #[Object]
    impl Card {
        async fn id(&self) -> ID {
            ID(self.id.to_string())
        }

        async fn name(&self) -> String {
            format!("card \"{}\"\n\u{e9}", self.id)
        }

        async fn tags(&self) -> &[String] {
            &self.tags
        }

        async fn rank(&self) -> Option<u32> {
            (self.id % 2 == 1).then_some(self.id)
        }

        async fn note(&self) -> Option<&str> {
            (self.id == 3).then_some("third")
        }

        async fn leaves(&self) -> InlineList<Inline<LeafRef<'_>>> {
            InlineList(self.leaves.iter().map(|l| Inline(LeafRef(l))).collect())
        }

        async fn best(&self) -> Option<Inline<LeafRef<'_>>> {
            self.best_leaf().map(Inline)
        }

        async fn sized(
            &self,
            #[graphql(default = 2)] n: i32,
        ) -> async_graphql::Result<InlineList<Inline<LeafRef<'_>>>> {
            Ok(InlineList(
                self.first_leaves(n)?.into_iter().map(Inline).collect(),
            ))
        }

        async fn fails(&self) -> async_graphql::Result<Option<i32>> {
            Err("card failed".into())
        }
    }

    impl RenderFields for Card {
        fn render_field(&self, f: &mut FieldOut<'_, '_>) -> ServerResult<bool> {
            match f.name() {
                "id" => f.str(&self.id.to_string()),
                "name" => f.str(&format!("card \"{}\"\n\u{e9}", self.id)),
                "tags" => f.strs(&self.tags),
                "rank" => f.opt_int((self.id % 2 == 1).then_some(self.id)),
                "note" => f.opt_str((self.id == 3).then_some("third")),
                "leaves" => f.objects(self.leaves.iter().map(LeafRef)),
                "best" => f.opt_object(self.best_leaf().as_ref()),
                "sized" => {
                    let n = f.arg("n", || 2)?;
                    let leaves = self.first_leaves(n).map_err(|e| f.error(e))?;
                    f.objects(leaves);
                }
                "fails" => return Err(f.error("card failed")),
                _ => return Ok(false),
            }
            Ok(true)
        }
    }

    /// One of our containers above rendered values, where a repeated field's markers merge.
    struct Holder;

    #[Object]
    impl Holder {
        async fn cards(&self) -> RenderedList<Card> {
            RenderedList((1..=3).map(Card::new).collect())
        }
    }

    struct Query;

    #[Object]
    impl Query {
        async fn card(&self) -> Rendered<Card> {
            Rendered(Card::new(1))
        }

        async fn cards(&self) -> RenderedList<Card> {
            RenderedList((1..=3).map(Card::new).collect())
        }

        async fn holder(&self) -> Inline<Holder> {
            Inline(Holder)
        }
    }

    /// One answer: `data` exactly as written, the whole response parsed with errors sorted (both
    /// paths record them as fields finish), and the fields that went through their resolvers.
    struct Answer {
        data: String,
        json: Json,
        fallbacks: usize,
    }

    async fn run(render: bool, query: &str, variables: Json) -> Answer {
        let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
        let mut request = Request::new(query).variables(Variables::from_json(variables));
        let counter = RenderJson::default();
        if render {
            request = request.data(counter.clone());
        }
        let response = schema.execute(request).await;
        let mut data = Vec::new();
        json::write_value(&mut data, &response.data);
        let mut out: Json = serde_json::from_slice(&response_json(&response).unwrap()).unwrap();
        if let Some(Json::Array(errors)) = out.get_mut("errors") {
            errors.sort_by_key(ToString::to_string);
        }
        Answer {
            data: String::from_utf8(data).unwrap(),
            json: out,
            fallbacks: counter.fallbacks(),
        }
    }

    const QUERY: &str = r#"
        query($big: Boolean!, $n: Int!) {
          card { __typename id name tags rank note best { url } ...CardF alias: name leaves { url width ratio __typename } }
          cards {
            id
            ... on Card { name leaves { url } }
            leaves { width ...LeafF }
            sized(n: $n) { url }
            s2: sized { width }
            best { url }
            best { width ratio }
            lonely: best { broken }
            hidden: name @skip(if: true)
            shown: tags @include(if: $big)
            fails
            bad: sized(n: -1) { url }
            leaves { extra broken }
            rank note
          }
          holder { cards { id leaves { ratio } } cards { name leaves { url } } }
        }
        fragment CardF on Card { name best { __typename width } }
        fragment LeafF on Leaf { url w2: width }
    "#;

    #[tokio::test]
    async fn rendering_gives_the_value_trees_answer_byte_for_byte() {
        for big in [true, false] {
            let vars = json!({ "big": big, "n": 1 });
            let tree = run(false, QUERY, vars.clone()).await;
            let rendered = run(true, QUERY, vars).await;
            assert_eq!(rendered.data, tree.data, "big = {big}");
            assert_eq!(rendered.json, tree.json, "big = {big}");
            // Only the uncovered fields went through resolvers: `extra` and `broken` of each of
            // the 3 × 2 leaves, and `broken` of the two cards that have a best leaf.
            assert_eq!(rendered.fallbacks, 3 * 2 * 2 + 2);
        }
    }

    #[tokio::test]
    async fn rendered_values_carry_merges_errors_and_nulls_like_the_tree() {
        let out = run(true, QUERY, json!({ "big": true, "n": 1 })).await.json;
        let cards = &out["data"]["cards"];
        // `leaves` selected three times: one list, each leaf with every sub-selection merged.
        assert_eq!(
            cards[0]["leaves"][1],
            json!({ "url": "https://img/1/2?q=\"x\"", "width": 200, "w2": 200, "extra": "extra of 200" })
        );
        assert_eq!(
            cards[0]["best"],
            json!({ "url": "https://img/1/1?q=\"x\"", "width": 100, "ratio": 0.381_638_418_079_096_04 })
        );
        assert_eq!(cards[1]["best"], Json::Null);
        // A leaf whose only selected field failed is null.
        assert_eq!(cards[0]["lonely"], Json::Null);
        assert_eq!(
            cards[0]["sized"],
            json!([{ "url": "https://img/1/1?q=\"x\"" }])
        );
        assert_eq!(cards[0]["s2"].as_array().unwrap().len(), 2);
        assert!(cards[0].get("hidden").is_none() && cards[0].get("fails").is_none());
        assert_eq!(cards[2]["note"], "third");
        assert_eq!(cards[1]["rank"], Json::Null);
        assert_eq!(
            out["data"]["holder"]["cards"][2],
            json!({ "id": "3", "name": "card \"3\"\n\u{e9}", "leaves": [
                { "ratio": 1.0 / 3.0, "url": "https://img/3/1?q=\"x\"" },
                { "ratio": 0.381_638_418_079_096_04, "url": "https://img/3/2?q=\"x\"" },
            ] })
        );
        let paths = crate::graphql::error_paths(&out);
        assert!(paths.contains(&&json!(["cards", 1, "fails"])));
        assert!(paths.contains(&&json!(["cards", 2, "bad"])));
        assert!(paths.contains(&&json!(["cards", 0, "leaves", 1, "broken"])));
        assert!(paths.contains(&&json!(["cards", 2, "lonely", "broken"])));
        // 3 × (fails + bad + 2 broken leaves) + 2 lonely.
        assert_eq!(paths.len(), 3 * 4 + 2, "{out}");
    }

    #[test]
    fn only_root_selections_without_repeated_objects_render() {
        let ok = |q: &str, op: Option<&str>| root_renderable(&parse_query(q).unwrap(), op);
        assert!(ok(
            "{ card { id } cards { id } __typename t: __typename }",
            None
        ));
        assert!(ok("{ __typename __typename card { id } }", None));
        assert!(!ok("{ card { id } card { name } }", None));
        assert!(!ok(
            "{ card { id } ...F } fragment F on Query { card { name } }",
            None
        ));
        assert!(!ok("{ card { id } ... on Query { card { name } } }", None));
        assert!(ok("{ a: card { id } b: card { name } }", None));
        assert!(ok(
            "query A { card { id } } query B { card { id } card { id } }",
            Some("A")
        ));
        assert!(!ok(
            "query A { card { id } } query B { card { id } card { id } }",
            Some("B")
        ));
        assert!(!ok("query A { card { id } } query B { card { id } }", None));
        assert!(!ok("query A { card { id } }", Some("C")));
        // Unknown and cyclic fragments (validation rejects both later) do not render.
        assert!(!ok("{ ...Missing }", None));
        assert!(!ok(
            "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
            None
        ));
    }

    /// A root selecting one object field twice runs the value-tree path, whose merge is right.
    #[tokio::test]
    async fn repeated_root_fields_merge_on_the_value_tree() {
        let query = "{ card { id } card { name } }";
        let tree = run(false, query, json!({})).await.json;
        assert_eq!(
            tree["data"]["card"],
            json!({ "id": "1", "name": "card \"1\"\n\u{e9}" })
        );
        assert!(!root_renderable(&parse_query(query).unwrap(), None));
    }
}
