//! Reading `@defer` out of a parsed document: the rules the engine does not check ([`check`]),
//! and whether an operation's answer is incremental and how ([`plan`]). Works on the document
//! alone (names, not types: the engine's validation still runs on every document, first).

use std::collections::HashSet;

use async_graphql::{
    Name, Positioned,
    parser::types::{
        Directive, DocumentOperations, ExecutableDocument, Field, OperationDefinition,
        OperationType, Selection, SelectionSet,
    },
};
use async_graphql_value::{ConstValue, Value};
use serde_json::{Map, Value as Json};

use super::directive::NAME;
use crate::compose::progressive::FirstNeeds;

/// Deepest nesting of selections and spreads read; a deeper (or cyclic) document is left to the
/// engine, which refuses it.
const MAX_DEPTH: u32 = 64;

/// Row fields a pending row can show in the first part (they need none of its sources).
const FIRST_PART_ROW_FIELDS: [&str; 3] = ["kind", "heading", "__typename"];

/// How an operation's answer is delivered incrementally: the homepage's rows are listed first
/// and each row's deferred fragments follow as the row completes.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Response keys of the `homepage` field and of its `rows`.
    pub(crate) homepage_key: Name,
    pub(crate) rows_key: Name,
    /// Row response keys outside deferred fragments: what a pending row shows in the first part.
    pub(crate) first_keys: Vec<Name>,
    /// The deferred fragments on rows, in document order.
    pub(crate) fragments: Vec<Deferred>,
    /// What the first part waits for.
    pub(crate) needs: FirstNeeds,
    /// The document later parts run: the operation's root cut to its `homepage` field (the
    /// other root fields were answered in the first part and are not run again).
    pub(crate) later: ExecutableDocument,
}

/// One deferred fragment on rows.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// Its `label`, echoed in its incremental entries.
    pub(crate) label: Option<String>,
    /// Row response keys it selects: what its entries carry.
    pub(crate) keys: Vec<Name>,
    /// Where its directive is, so a fragment spread twice is one fragment.
    at: async_graphql::Pos,
}

/// The incremental-delivery rules the engine does not know, over the whole document: a
/// `label` is a static string and unique; `@defer` is not on a mutation's or subscription's
/// root selections, nor anywhere in a subscription unless `if` can be false. `Err` says which.
pub(crate) fn check(doc: &ExecutableDocument) -> Result<(), String> {
    let mut labels = HashSet::new();
    for (_, op) in doc.operations.iter() {
        labels_in(&op.node.selection_set.node, &mut labels)?;
    }
    for fragment in doc.fragments.values() {
        labels_in(&fragment.node.selection_set.node, &mut labels)?;
    }
    for (_, op) in doc.operations.iter() {
        let op = &op.node;
        let kind = match op.ty {
            OperationType::Query => continue,
            OperationType::Mutation => "mutation",
            OperationType::Subscription => "subscription",
        };
        if on_root(doc, &op.selection_set.node, &mut HashSet::new(), 0) {
            return Err(format!(
                "`@defer` cannot be used on the root selections of a {kind}"
            ));
        }
        if op.ty == OperationType::Subscription
            && anywhere(doc, &op.selection_set.node, &mut HashSet::new(), 0)
        {
            return Err(
                "`@defer` is not supported in subscriptions; disable it with `if: false`"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

fn defer_of(directives: &[Positioned<Directive>]) -> Option<&Directive> {
    directives
        .iter()
        .map(|d| &d.node)
        .find(|d| d.name.node == NAME)
}

/// Every `@defer` label in `set` (fragment definitions are read once each, by [`check`]).
fn labels_in<'d>(set: &'d SelectionSet, seen: &mut HashSet<&'d str>) -> Result<(), String> {
    for selection in &set.items {
        let (directives, inner) = match &selection.node {
            Selection::Field(f) => (None, Some(&f.node.selection_set.node)),
            Selection::InlineFragment(f) => {
                (Some(&f.node.directives), Some(&f.node.selection_set.node))
            }
            Selection::FragmentSpread(s) => (Some(&s.node.directives), None),
        };
        if let Some(label) = directives
            .and_then(|d| defer_of(d))
            .and_then(|d| d.get_argument("label"))
        {
            match &label.node {
                Value::String(s) if !seen.insert(s.as_str()) => {
                    return Err(format!(
                        "the `@defer` label \"{s}\" is used twice; labels must be unique"
                    ));
                }
                Value::Variable(_) => {
                    return Err("`@defer(label:)` must be a static string, not a variable".into());
                }
                // Other types are the engine's to refuse (`label` is a String).
                _ => {}
            }
        }
        if let Some(inner) = inner {
            labels_in(inner, seen)?;
        }
    }
    Ok(())
}

/// Whether a fragment directly on the root type (not under a field) has `@defer`.
fn on_root<'d>(
    doc: &'d ExecutableDocument,
    set: &'d SelectionSet,
    spread: &mut HashSet<&'d str>,
    depth: u32,
) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    set.items.iter().any(|selection| match &selection.node {
        Selection::Field(_) => false,
        Selection::InlineFragment(f) => {
            defer_of(&f.node.directives).is_some()
                || on_root(doc, &f.node.selection_set.node, spread, depth + 1)
        }
        Selection::FragmentSpread(s) => {
            let name = s.node.fragment_name.node.as_str();
            defer_of(&s.node.directives).is_some()
                || (spread.insert(name)
                    && doc.fragments.get(name).is_some_and(|f| {
                        on_root(doc, &f.node.selection_set.node, spread, depth + 1)
                    }))
        }
    })
}

/// Whether any `@defer` under `set` (through fragments) could be on: no `if`, or `if` that is
/// not the literal `false` (a variable may be true).
fn anywhere<'d>(
    doc: &'d ExecutableDocument,
    set: &'d SelectionSet,
    spread: &mut HashSet<&'d str>,
    depth: u32,
) -> bool {
    let on = |directives: &[Positioned<Directive>]| {
        defer_of(directives).is_some_and(|d| {
            !matches!(
                d.get_argument("if").map(|v| &v.node),
                Some(Value::Boolean(false))
            )
        })
    };
    if depth > MAX_DEPTH {
        return false;
    }
    set.items.iter().any(|selection| match &selection.node {
        Selection::Field(f) => anywhere(doc, &f.node.selection_set.node, spread, depth + 1),
        Selection::InlineFragment(f) => {
            on(&f.node.directives) || anywhere(doc, &f.node.selection_set.node, spread, depth + 1)
        }
        Selection::FragmentSpread(s) => {
            let name = s.node.fragment_name.node.as_str();
            on(&s.node.directives)
                || (spread.insert(name)
                    && doc.fragments.get(name).is_some_and(|f| {
                        anywhere(doc, &f.node.selection_set.node, spread, depth + 1)
                    }))
        }
    })
}

/// The incremental plan of operation `operation` of `doc` with `variables`, when it has one: a
/// query whose root selects one `homepage` field (and no fragments), whose `rows` (one
/// response key) carry at least one `@defer` that is on, and whose rows show nothing outside
/// their deferred fragments but `kind`, `heading` and `__typename` (a row's other fields need
/// its sources, so it could not be listed before them). `None` otherwise: the engine then runs
/// the document as it is, `@defer` delivered inline, and reports whatever is wrong with it.
pub(crate) fn plan(
    doc: &ExecutableDocument,
    operation: Option<&str>,
    variables: Option<&Map<String, Json>>,
) -> Option<Plan> {
    let op = crate::graphql::analysis::operation(doc, operation)?;
    if op.ty != OperationType::Query {
        return None;
    }
    let mut homepage = None;
    for selection in &op.selection_set.node.items {
        match &selection.node {
            Selection::Field(f) if f.node.name.node == "homepage" => {
                if homepage.replace(selection).is_some() {
                    return None;
                }
            }
            Selection::Field(_) => {}
            Selection::InlineFragment(_) | Selection::FragmentSpread(_) => return None,
        }
    }
    let homepage_selection = homepage?;
    let Selection::Field(homepage) = &homepage_selection.node else {
        return None;
    };
    let reader = Reader { doc, op, variables };
    if !reader.included(&homepage.node.directives)? {
        return None;
    }
    let mut top = Top::default();
    reader.top(&homepage.node.selection_set.node, &mut top, 0)?;
    let rows_key = top.rows.first()?.node.response_key().node.clone();
    if top
        .rows
        .iter()
        .any(|r| r.node.response_key().node != rows_key)
    {
        return None;
    }
    let mut rows = Rows::default();
    for r in &top.rows {
        reader.rows(&r.node.selection_set.node, None, &mut rows, 0)?;
    }
    if rows.blocked || rows.fragments.is_empty() {
        return None;
    }
    Some(Plan {
        homepage_key: homepage.node.response_key().node.clone(),
        rows_key,
        first_keys: rows.first_keys,
        fragments: rows.fragments,
        needs: FirstNeeds {
            region: top.region || rows.headings,
            headings: rows.headings,
            hero: top.hero,
        },
        later: later_document(doc, operation, homepage_selection)?,
    })
}

/// `doc` with operation `operation`'s root selections cut to `homepage`.
fn later_document(
    doc: &ExecutableDocument,
    operation: Option<&str>,
    homepage: &Positioned<Selection>,
) -> Option<ExecutableDocument> {
    let mut later = doc.clone();
    let op = match (&mut later.operations, operation) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(map), Some(name)) => map.get_mut(name)?,
        (DocumentOperations::Multiple(map), None) if map.len() == 1 => map.values_mut().next()?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    op.node.selection_set.node.items = vec![homepage.clone()];
    Some(later)
}

/// What the homepage's own selection asks for.
#[derive(Default)]
struct Top<'d> {
    rows: Vec<&'d Positioned<Field>>,
    hero: bool,
    region: bool,
}

/// What the rows' selections ask for.
#[derive(Default)]
struct Rows {
    first_keys: Vec<Name>,
    fragments: Vec<Deferred>,
    headings: bool,
    /// A field outside the deferred fragments needs the row's sources.
    blocked: bool,
}

struct Reader<'d> {
    doc: &'d ExecutableDocument,
    op: &'d OperationDefinition,
    variables: Option<&'d Map<String, Json>>,
}

impl<'d> Reader<'d> {
    /// The homepage's fields, fragments (deferred or not: a `@defer` here is delivered inline)
    /// expanded. `None`: not readable here (too deep, an unknown fragment).
    fn top(&self, set: &'d SelectionSet, out: &mut Top<'d>, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        for selection in &set.items {
            if !self.included(selection.node.directives())? {
                continue;
            }
            match &selection.node {
                Selection::Field(f) => match f.node.name.node.as_str() {
                    "rows" => out.rows.push(f),
                    "hero" => out.hero = true,
                    "region" => out.region = true,
                    _ => {}
                },
                Selection::InlineFragment(f) => {
                    self.top(&f.node.selection_set.node, out, depth + 1)?;
                }
                Selection::FragmentSpread(s) => {
                    let fragment = self.doc.fragments.get(&s.node.fragment_name.node)?;
                    self.top(&fragment.node.selection_set.node, out, depth + 1)?;
                }
            }
        }
        Some(())
    }

    /// A row's selection: fields outside deferred fragments, and each deferred fragment's own
    /// (a `@defer` inside a deferred fragment is delivered with it).
    fn rows(
        &self,
        set: &'d SelectionSet,
        deferred: Option<usize>,
        out: &mut Rows,
        depth: u32,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        for selection in &set.items {
            if !self.included(selection.node.directives())? {
                continue;
            }
            let inner = match &selection.node {
                Selection::Field(f) => {
                    let key = f.node.response_key().node.clone();
                    let keys = match deferred.and_then(|d| out.fragments.get_mut(d)) {
                        Some(fragment) => &mut fragment.keys,
                        None => {
                            let name = f.node.name.node.as_str();
                            out.blocked |= !FIRST_PART_ROW_FIELDS.contains(&name);
                            out.headings |= name == "heading";
                            &mut out.first_keys
                        }
                    };
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                    continue;
                }
                Selection::InlineFragment(f) => &f.node.selection_set.node,
                Selection::FragmentSpread(s) => {
                    &self
                        .doc
                        .fragments
                        .get(&s.node.fragment_name.node)?
                        .node
                        .selection_set
                        .node
                }
            };
            let deferred = match (deferred, self.deferred(selection.node.directives())?) {
                (Some(d), _) => Some(d),
                (None, None) => None,
                (None, Some((label, at))) => {
                    Some(match out.fragments.iter().position(|f| f.at == at) {
                        Some(d) => d,
                        None => {
                            out.fragments.push(Deferred {
                                label,
                                keys: Vec::new(),
                                at,
                            });
                            out.fragments.len() - 1
                        }
                    })
                }
            };
            self.rows(inner, deferred, out, depth + 1)?;
        }
        Some(())
    }

    /// A fragment's `@defer` when it is on: its label and position. `None` inside: its `if` or
    /// `label` cannot be read (the engine then refuses the document, or runs it inline).
    fn deferred(
        &self,
        directives: &[Positioned<Directive>],
    ) -> Option<Option<(Option<String>, async_graphql::Pos)>> {
        let Some(directive) = directives.iter().find(|d| d.node.name.node == NAME) else {
            return Some(None);
        };
        if !self.flag(&directive.node, true)? {
            return Some(None);
        }
        let label = match directive.node.get_argument("label").map(|v| &v.node) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        Some(Some((label, directive.pos)))
    }

    /// Whether a selection with `directives` is included (`@skip`, `@include`); `None` when an
    /// `if` cannot be read.
    fn included(&self, directives: &[Positioned<Directive>]) -> Option<bool> {
        for d in directives {
            match d.node.name.node.as_str() {
                "skip" if self.flag(&d.node, false)? => return Some(false),
                "include" if !self.flag(&d.node, true)? => return Some(false),
                _ => {}
            }
        }
        Some(true)
    }

    /// The `if` of `directive` (`default` without one): a Boolean literal, or a variable given
    /// as a Boolean or defaulting to one; `None` for anything else.
    fn flag(&self, directive: &Directive, default: bool) -> Option<bool> {
        match directive.get_argument("if").map(|v| &v.node) {
            None => Some(default),
            Some(Value::Boolean(b)) => Some(*b),
            Some(Value::Variable(name)) => {
                match self.variables.and_then(|v| v.get(name.as_str())) {
                    Some(Json::Bool(b)) => Some(*b),
                    Some(_) => None,
                    None => self
                        .op
                        .variable_definitions
                        .iter()
                        .find(|v| v.node.name.node == *name)
                        .and_then(|v| v.node.default_value.as_ref())
                        .and_then(|d| match &d.node {
                            ConstValue::Boolean(b) => Some(*b),
                            _ => None,
                        }),
                }
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn parse(q: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(q).unwrap()
    }

    fn plan_of(q: &str, vars: Json) -> Option<Plan> {
        let doc = parse(q);
        plan(&doc, None, vars.as_object())
    }

    fn keys(names: &[Name]) -> Vec<&str> {
        names.iter().map(Name::as_str).collect()
    }

    #[test]
    fn items_deferred_on_rows_are_planned_with_what_the_first_part_needs() {
        let p = plan_of(
            "{ viewer { name } home: homepage { hero { id } rows { kind heading ... @defer(label: \"items\") { items { rank } } } } }",
            json!({}),
        )
        .unwrap();
        assert_eq!(p.homepage_key.as_str(), "home");
        assert_eq!(p.rows_key.as_str(), "rows");
        assert_eq!(keys(&p.first_keys), ["kind", "heading"]);
        assert_eq!(p.fragments.len(), 1);
        assert_eq!(p.fragments[0].label.as_deref(), Some("items"));
        assert_eq!(keys(&p.fragments[0].keys), ["items"]);
        assert_eq!(
            p.needs,
            FirstNeeds {
                region: true,
                headings: true,
                hero: true
            }
        );
        // Later parts run the homepage alone.
        match &p.later.operations {
            DocumentOperations::Single(op) => assert_eq!(op.node.selection_set.node.items.len(), 1),
            DocumentOperations::Multiple(_) => panic!("one operation"),
        }
    }

    #[test]
    fn whole_rows_and_spreads_defer_and_a_spread_twice_is_one_fragment() {
        let p = plan_of(
            "query Q { homepage { rows { ...R @defer } rows { ...R @defer k: kind } } } fragment R on Row { kind heading items { rank } }",
            json!({}),
        )
        .unwrap();
        // Two spreads are two directives (two fragments); both carry the same keys.
        assert_eq!(keys(&p.first_keys), ["k"]);
        assert_eq!(p.fragments.len(), 2);
        assert_eq!(keys(&p.fragments[1].keys), ["kind", "heading", "items"]);
        assert_eq!(p.needs, FirstNeeds::default());

        let p = plan_of(
            "{ homepage { rows { ...R } rows { ...R } } } fragment R on Row { kind ... @defer { items { rank } } }",
            json!({}),
        )
        .unwrap();
        assert_eq!(p.fragments.len(), 1, "one directive reached twice");
    }

    #[test]
    fn what_cannot_be_deferred_is_not_planned() {
        for (q, vars) in [
            // No defer, or off.
            ("{ homepage { rows { kind items { rank } } } }", json!({})),
            (
                "{ homepage { rows { kind ... @defer(if: false) { items { rank } } } } }",
                json!({}),
            ),
            (
                "query($d: Boolean!) { homepage { rows { kind ... @defer(if: $d) { items { rank } } } } }",
                json!({ "d": false }),
            ),
            // A bad variable: the engine reports it.
            (
                "query($d: Boolean!) { homepage { rows { kind ... @defer(if: $d) { items { rank } } } } }",
                json!({ "d": "yes" }),
            ),
            // Items outside the deferred fragment need the row's sources.
            (
                "{ homepage { rows { kind items { rank } ... @defer { heading } } } }",
                json!({}),
            ),
            // Two homepages, a root fragment, a mutation.
            (
                "{ a: homepage { rows { ... @defer { items { rank } } } } b: homepage { region } }",
                json!({}),
            ),
            (
                "{ ... on Query { homepage { rows { ... @defer { items { rank } } } } } }",
                json!({}),
            ),
            (
                "mutation { addToMyList(titleId: \"t1\") { ... @defer { changed } } }",
                json!({}),
            ),
            // Deferred elsewhere than on rows.
            (
                "{ homepage { rows { kind items { title { ... @defer { name } } } } } }",
                json!({}),
            ),
            ("{ title(id: \"t1\") { ... @defer { name } } }", json!({})),
            // Two response keys for rows, an unknown fragment, a label that is not a string.
            (
                "{ homepage { a: rows { ... @defer { items { rank } } } rows { kind } } }",
                json!({}),
            ),
            ("{ homepage { rows { ...Nope @defer } } }", json!({})),
            (
                "{ homepage { rows { ... @defer(label: 5) { items { rank } } } } }",
                json!({}),
            ),
        ] {
            assert!(plan_of(q, vars).is_none(), "{q}");
        }
        // A variable that is true, and one left to its default, do defer.
        let q = "query($d: Boolean = true) { homepage { rows { kind ... @defer(if: $d) { items { rank } } } } }";
        assert!(plan_of(q, json!({})).is_some());
        assert!(plan_of(q, json!({ "d": true })).is_some());
        // A skipped deferred fragment defers nothing.
        let q = "{ homepage { rows { kind ... @defer @skip(if: true) { items { rank } } } } }";
        assert!(plan_of(q, json!({})).is_none());
    }

    #[test]
    fn the_rules_the_engine_does_not_know_are_checked() {
        for (q, why) in [
            (
                "{ homepage { rows { ... @defer(label: \"a\") { kind } ... @defer(label: \"a\") { heading } } } }",
                "used twice",
            ),
            (
                "query($l: String) { homepage { rows { ... @defer(label: $l) { kind } } } }",
                "static string",
            ),
            (
                "mutation { ... @defer { addToMyList(titleId: \"t1\") { changed } } }",
                "root selections of a mutation",
            ),
            (
                "mutation { ...M } fragment M on Mutation { ... @defer { removeFromMyList(titleId: \"t1\") { changed } } }",
                "root selections of a mutation",
            ),
            (
                "subscription { x { ... @defer { y } } }",
                "not supported in subscriptions",
            ),
        ] {
            let err = check(&parse(q)).unwrap_err();
            assert!(err.contains(why), "{q}: {err}");
        }
        for q in [
            "{ homepage { rows { ... @defer(label: \"a\") { kind } ... @defer(label: \"b\") { heading } } } }",
            "mutation { addToMyList(titleId: \"t1\") { ... @defer { changed } } }",
            "subscription { x { ... @defer(if: false) { y } } }",
            "{ homepage { rows { kind } } }",
        ] {
            assert_eq!(check(&parse(q)), Ok(()), "{q}");
        }
    }
}
