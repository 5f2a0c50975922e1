//! What an operation will cost, decided before anything runs: depth, field count and estimated
//! cost on the **fragment-expanded** selection (a spread counts as often as it expands), and
//! whether the request's variables fit their declared types.
//!
//! It runs before the engine's own validation, which is quadratic or worse in the expanded size
//! (overlapping-fields checks): an ~800-byte document of nested spreads used to keep a core busy
//! for seconds and grow the process by hundreds of megabytes. Here each fragment is walked once
//! and its result reused wherever it is spread (memoised per fragment), so the work is linear in
//! the document's size however far it expands; numbers saturate instead of overflowing.
//!
//! **The cost model** (`docs/edge.md`, "Limits and the cost model"): every selected field costs 1; a field
//! that calls backends costs [`CALL_COST`] more per call it makes; a list of objects multiplies
//! the cost of its sub-selection by its largest size. Calls and list sizes are declared on the
//! fields themselves as schema directives ([`cost`]: `homepage` makes one call per row plus the
//! profile and the catalog round, `rows` holds the profile's rows, `items` its items per row,
//! any other list [`cost::DEFAULT_LIST_SIZE`]) and read back here from the schema's SDL with the
//! rest of its shape. Introspection (`__schema`, `__type`) is not data:
//! it is bounded by its own fixed depth and field count, so GraphiQL's and graphql-js's standard
//! introspection queries always pass while `graphql.max_depth` stays tight for data.
//!
//! Owns no execution and no error codes beyond saying which limit was hit; the HTTP handler turns
//! a [`Refusal`] into `QUERY_TOO_COMPLEX` or `BAD_USER_INPUT`.

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
    ServiceDocument, Type, TypeKind, TypeSystemDefinition,
};
use serde_json::{Map, Value as Json};

pub(crate) use self::cost::CostModel;
use self::cost::{CALL_COST, Weight};

pub(crate) mod cost;

/// Deepest introspection selection accepted: graphql-js's `getIntrospectionQuery()` reaches 13–14
/// (its `TypeRef` fragment unwraps nine `ofType` levels); 20 leaves room for tools that go deeper.
pub(crate) const INTROSPECTION_MAX_DEPTH: u32 = 20;
/// Most introspection fields (fragments expanded) one operation may select: the standard query
/// expands to about 150.
pub(crate) const INTROSPECTION_MAX_FIELDS: u64 = 2_000;
/// Deepest nesting of selections and spreads walked at all; deeper documents are refused rather
/// than risk the stack (the parser already stops selection sets at 64, spreads add to it).
const MAX_WALK_DEPTH: u32 = 256;

/// The limits one operation is held to (`graphql.max_depth`, `.max_complexity`, `.max_cost`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Deepest data selection.
    pub max_depth: u32,
    /// Most data fields, fragments expanded.
    pub max_fields: u64,
    /// Highest estimated cost.
    pub max_cost: u64,
    /// Whether introspection (`__schema`, `__type`) may be selected at all.
    pub introspection: bool,
    /// Most aliases in the document (`graphql.max_aliases`).
    pub max_aliases: usize,
    /// Most fields the operation selects at its root, fragments expanded
    /// (`graphql.max_root_fields`).
    pub max_root_fields: usize,
    /// Most directives on one selection (`graphql.max_directives_per_field`).
    pub max_directives: usize,
}

/// What an operation will do, as estimated before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Estimated cost (see the module docs).
    pub cost: u64,
    /// Data fields selected, fragments expanded.
    pub fields: u64,
    /// Deepest data selection.
    pub depth: u32,
    /// Introspection fields selected, fragments expanded.
    pub introspection_fields: u64,
    /// Deepest introspection selection.
    pub introspection_depth: u32,
}

/// Why an operation is refused before it runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over one of the limits (→ `QUERY_TOO_COMPLEX`).
    #[error("{0}")]
    TooComplex(String),
    /// A variable is missing or has the wrong type (→ `BAD_USER_INPUT`).
    #[error("{0}")]
    BadVariables(String),
    /// The operation asks for introspection, which this server does not answer
    /// (→ `GRAPHQL_VALIDATION_FAILED`, rather than the engine's silent `null`).
    #[error("introspection is disabled on this server")]
    IntrospectionOff,
    /// The document breaks a validation rule the engine does not check
    /// (→ `GRAPHQL_VALIDATION_FAILED`).
    #[error("{0}")]
    Invalid(String),
}

/// The schema as far as the analysis needs it: object fields' types and declared weights, input
/// types, root names. Built once from the schema's SDL, so nothing here depends on the engine's
/// internals.
#[derive(Debug, Default)]
pub struct Shape {
    query: String,
    mutation: Option<String>,
    subscription: Option<String>,
    /// Object (or interface) type → field → its shape.
    objects: HashMap<String, HashMap<String, FieldShape>>,
    inputs: HashMap<String, InputShape>,
}

/// A field of an object or interface type.
#[derive(Debug)]
struct FieldShape {
    /// The named type under any list and non-null wrappers.
    ty: String,
    /// Whether the field is a list.
    list: bool,
    /// What the field declares it weighs.
    weight: Weight,
}

impl FieldShape {
    fn new(def: &async_graphql::parser::types::FieldDefinition) -> Self {
        let (ty, list) = unwrap_named(&def.ty.node);
        Self {
            ty: ty.to_owned(),
            list,
            weight: Weight::from_directives(&def.directives),
        }
    }
}

#[derive(Debug)]
enum InputShape {
    Scalar,
    Enum(HashSet<String>),
    /// Fields: name, type, whether it has a default.
    Object(Vec<(String, Type, bool)>),
}

fn unwrap_named(ty: &Type) -> (&str, bool) {
    match &ty.base {
        BaseType::Named(name) => (name.as_str(), false),
        BaseType::List(inner) => (unwrap_named(inner).0, true),
    }
}

impl Shape {
    /// From the schema's SDL, its cost declarations included; an SDL that does not parse gives an
    /// empty shape (every field then costs 1 and no variable type is known), never a failure to
    /// start.
    pub(crate) fn from_sdl(sdl: &str) -> Self {
        match async_graphql::parser::parse_schema(sdl) {
            Ok(doc) => Self::from_document(&doc),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the schema's own SDL; cost estimates are rough");
                Self {
                    query: "Query".to_owned(),
                    ..Self::default()
                }
            }
        }
    }

    fn from_document(doc: &ServiceDocument) -> Self {
        let mut shape = Self {
            query: "Query".to_owned(),
            mutation: Some("Mutation".to_owned()),
            subscription: Some("Subscription".to_owned()),
            ..Self::default()
        };
        for def in &doc.definitions {
            match def {
                TypeSystemDefinition::Schema(s) => {
                    let s = &s.node;
                    if let Some(q) = &s.query {
                        shape.query = q.node.to_string();
                    }
                    shape.mutation = s.mutation.as_ref().map(|m| m.node.to_string());
                    shape.subscription = s.subscription.as_ref().map(|m| m.node.to_string());
                }
                TypeSystemDefinition::Type(t) => {
                    let name = t.node.name.node.to_string();
                    match &t.node.kind {
                        TypeKind::Object(o) => {
                            let fields = o
                                .fields
                                .iter()
                                .map(|f| (f.node.name.node.to_string(), FieldShape::new(&f.node)))
                                .collect();
                            shape.objects.insert(name, fields);
                        }
                        TypeKind::Interface(o) => {
                            let fields = o
                                .fields
                                .iter()
                                .map(|f| (f.node.name.node.to_string(), FieldShape::new(&f.node)))
                                .collect();
                            shape.objects.insert(name, fields);
                        }
                        TypeKind::Scalar => {
                            shape.inputs.insert(name, InputShape::Scalar);
                        }
                        TypeKind::Enum(e) => {
                            let values = e.values.iter().map(|v| v.node.value.node.to_string());
                            shape
                                .inputs
                                .insert(name, InputShape::Enum(values.collect()));
                        }
                        TypeKind::InputObject(o) => {
                            let fields = o.fields.iter().map(|f| {
                                (
                                    f.node.name.node.to_string(),
                                    f.node.ty.node.clone(),
                                    f.node.default_value.is_some(),
                                )
                            });
                            shape
                                .inputs
                                .insert(name, InputShape::Object(fields.collect()));
                        }
                        TypeKind::Union(_) => {}
                    }
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        shape
    }

    fn field(&self, parent: Option<&str>, name: &str) -> Option<&FieldShape> {
        self.objects.get(parent?)?.get(name)
    }

    fn is_object(&self, name: &str) -> bool {
        self.objects.contains_key(name)
    }
}

/// The analysis of a selection's subtree.
#[derive(Debug, Clone, Copy, Default)]
struct Sub {
    cost: u64,
    fields: u64,
    height: u32,
    intro_fields: u64,
    intro_height: u32,
}

impl Sub {
    fn add(&mut self, other: Sub) {
        self.cost = self.cost.saturating_add(other.cost);
        self.fields = self.fields.saturating_add(other.fields);
        self.height = self.height.max(other.height);
        self.intro_fields = self.intro_fields.saturating_add(other.intro_fields);
        self.intro_height = self.intro_height.max(other.intro_height);
    }
}

struct Walk<'a> {
    shape: &'a Shape,
    model: &'a CostModel,
    doc: &'a ExecutableDocument,
    /// Fragment (and whether it is walked inside introspection) → its subtree, walked once.
    memo: HashMap<(&'a str, bool), Sub>,
    active: HashSet<&'a str>,
}

impl<'a> Walk<'a> {
    fn set(
        &mut self,
        set: &'a SelectionSet,
        parent: Option<&'a str>,
        intro: bool,
        level: u32,
    ) -> Result<Sub, Refusal> {
        if level > MAX_WALK_DEPTH {
            return Err(Refusal::TooComplex(format!(
                "the operation nests selections and fragments more than {MAX_WALK_DEPTH} deep"
            )));
        }
        let mut out = Sub::default();
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    let sub_set = &field.node.selection_set.node;
                    if !intro && (name == "__schema" || name == "__type") {
                        let inner = self.set(sub_set, None, true, level + 1)?;
                        out.add(Sub {
                            intro_fields: inner.intro_fields.saturating_add(1),
                            intro_height: inner.intro_height.saturating_add(1),
                            ..Sub::default()
                        });
                        continue;
                    }
                    let child = self.shape.field(parent, name);
                    let inner = if sub_set.items.is_empty() {
                        Sub::default()
                    } else {
                        self.set(sub_set, child.map(|f| f.ty.as_str()), intro, level + 1)?
                    };
                    if intro {
                        out.add(Sub {
                            intro_fields: inner.intro_fields.saturating_add(1),
                            intro_height: inner.intro_height.saturating_add(1),
                            ..Sub::default()
                        });
                        continue;
                    }
                    let (calls, list_size) = self
                        .model
                        .weigh(child.map(|f| f.weight).unwrap_or_default());
                    // Lists of scalars cost their field; lists of objects multiply what each
                    // item selects. A field the schema does not know counts as one object.
                    let multiplier = match child {
                        Some(f) if f.list && self.shape.is_object(&f.ty) => list_size,
                        _ => 1,
                    };
                    out.add(Sub {
                        cost: calls
                            .saturating_mul(CALL_COST)
                            .saturating_add(1)
                            .saturating_add(inner.cost.saturating_mul(multiplier)),
                        fields: inner.fields.saturating_add(1),
                        height: inner.height.saturating_add(1),
                        intro_fields: inner.intro_fields,
                        intro_height: inner.intro_height,
                    });
                }
                Selection::InlineFragment(fragment) => {
                    let on = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .map_or(parent, |c| Some(c.node.on.node.as_str()));
                    let inner =
                        self.set(&fragment.node.selection_set.node, on, intro, level + 1)?;
                    out.add(inner);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if let Some(done) = self.memo.get(&(name, intro)) {
                        out.add(*done);
                        continue;
                    }
                    // An unknown fragment is the validator's to report; it costs nothing here.
                    let Some((key, fragment)) = self.doc.fragments.get_key_value(name) else {
                        continue;
                    };
                    let key = key.as_str();
                    if !self.active.insert(key) {
                        // A cycle: validation refuses it; expanding it would never end.
                        return Err(Refusal::TooComplex(format!(
                            "fragment `{key}` spreads itself"
                        )));
                    }
                    let on = Some(fragment.node.type_condition.node.on.node.as_str());
                    let inner = self.set(&fragment.node.selection_set.node, on, intro, level + 1);
                    self.active.remove(key);
                    let inner = inner?;
                    self.memo.insert((key, intro), inner);
                    out.add(inner);
                }
            }
        }
        Ok(out)
    }
}

/// The operation of `doc` a request runs: the only one, or the one named. `None` when the name
/// matches nothing or several operations leave it ambiguous (the engine reports that).
pub fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(map), Some(name)) => map.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(map), None) if map.len() == 1 => {
            map.values().next().map(|op| &op.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// Aliases, root fields and directives per selection of `op` (as written; root fields with
/// fragments expanded), refused when over `limits`.
fn shape_limits(
    doc: &ExecutableDocument,
    op: &OperationDefinition,
    limits: &Limits,
) -> Result<(), Refusal> {
    fn each<'a>(set: &'a SelectionSet, out: &mut Vec<&'a Selection>) {
        for s in &set.items {
            out.push(&s.node);
            match &s.node {
                Selection::Field(f) => each(&f.node.selection_set.node, out),
                Selection::InlineFragment(f) => each(&f.node.selection_set.node, out),
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    let mut all = Vec::new();
    each(&op.selection_set.node, &mut all);
    for fragment in doc.fragments.values() {
        each(&fragment.node.selection_set.node, &mut all);
    }
    let aliases = all
        .iter()
        .filter(|s| matches!(s, Selection::Field(f) if f.node.alias.is_some()))
        .count();
    if aliases > limits.max_aliases {
        return Err(Refusal::TooComplex(format!(
            "the document has {aliases} aliases; at most {} are allowed",
            limits.max_aliases
        )));
    }
    if let Some(most) = all.iter().map(|s| s.directives().len()).max()
        && most > limits.max_directives
    {
        return Err(Refusal::TooComplex(format!(
            "a selection has {most} directives; at most {} are allowed",
            limits.max_directives
        )));
    }
    // Root fields, through fragments: each fragment's count is computed once and reused (a
    // fragment bomb expands exponentially; counting it spread by spread would too). Cycles were
    // refused by the walk already; `active` stops them here as well.
    fn roots<'a>(
        doc: &'a ExecutableDocument,
        set: &'a SelectionSet,
        memo: &mut HashMap<&'a str, usize>,
        active: &mut HashSet<&'a str>,
    ) -> usize {
        let mut n: usize = 0;
        for s in &set.items {
            let add = match &s.node {
                Selection::Field(_) => 1,
                Selection::InlineFragment(f) => {
                    roots(doc, &f.node.selection_set.node, memo, active)
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if let Some(&known) = memo.get(name) {
                        known
                    } else if let Some(f) = doc.fragments.get(name)
                        && active.insert(name)
                    {
                        let count = roots(doc, &f.node.selection_set.node, memo, active);
                        active.remove(name);
                        memo.insert(name, count);
                        count
                    } else {
                        0
                    }
                }
            };
            n = n.saturating_add(add);
        }
        n
    }
    let root_fields = roots(
        doc,
        &op.selection_set.node,
        &mut HashMap::new(),
        &mut HashSet::new(),
    );
    if root_fields > limits.max_root_fields {
        return Err(Refusal::TooComplex(format!(
            "the operation selects {root_fields} root fields; at most {} are allowed",
            limits.max_root_fields
        )));
    }
    Ok(())
}

/// Validates every `__typename` the operation reaches (through its fragments). The engine's
/// validator never visits a `__typename` field (async-graphql 7.2 skips it in its visitor), so
/// without this `{ __typename @x }`, `{ __typename @include(if: 1) }` or
/// `{ __typename(a: 1) { b } }` would run unchecked. The rules are the spec's for this field:
/// no arguments, no selection, and only `@skip` / `@include` (each at most once) with one `if`
/// that is a Boolean literal or a variable the operation declares as `Boolean!` (or `Boolean`
/// with a non-null default).
fn check_typenames(doc: &ExecutableDocument, op: &OperationDefinition) -> Result<(), Refusal> {
    use async_graphql::parser::types::Field;
    use async_graphql_value::{ConstValue, Value};

    fn field(f: &Field, op: &OperationDefinition) -> Result<(), Refusal> {
        let bad = |why: String| Err(Refusal::Invalid(format!("`__typename`: {why}")));
        if !f.arguments.is_empty() {
            return bad("takes no arguments".into());
        }
        if !f.selection_set.node.items.is_empty() {
            return bad("is a scalar and takes no selection".into());
        }
        for (i, d) in f.directives.iter().enumerate() {
            let name = d.node.name.node.as_str();
            if name != "skip" && name != "include" {
                return bad(format!("unknown directive `@{name}`"));
            }
            if f.directives[..i].iter().any(|o| o.node.name.node == name) {
                return bad(format!("`@{name}` is used twice"));
            }
            let [(arg, value)] = d.node.arguments.as_slice() else {
                return bad(format!("`@{name}` takes exactly one argument, `if`"));
            };
            if arg.node != "if" {
                return bad(format!("`@{name}` has no argument `{}`", arg.node));
            }
            match &value.node {
                Value::Boolean(_) => {}
                Value::Variable(var) => {
                    let declared = op
                        .variable_definitions
                        .iter()
                        .find(|v| v.node.name.node == *var);
                    let ok = declared.is_some_and(|v| {
                        let ty = &v.node.var_type.node;
                        matches!(&ty.base, BaseType::Named(n) if n == "Boolean")
                            && (!ty.nullable
                                || v.node
                                    .default_value
                                    .as_ref()
                                    .is_some_and(|d| !matches!(d.node, ConstValue::Null)))
                    });
                    if !ok {
                        return bad(format!(
                            "`@{name}(if: ${var})` needs a variable declared as `Boolean!`"
                        ));
                    }
                }
                _ => return bad(format!("`@{name}(if:)` must be a Boolean")),
            }
        }
        Ok(())
    }

    fn set<'a>(
        doc: &'a ExecutableDocument,
        op: &OperationDefinition,
        selections: &'a SelectionSet,
        seen: &mut HashSet<&'a str>,
        depth: u32,
    ) -> Result<(), Refusal> {
        if depth > MAX_WALK_DEPTH {
            return Err(Refusal::TooComplex("the document nests too deeply".into()));
        }
        for s in &selections.items {
            match &s.node {
                Selection::Field(f) => {
                    if f.node.name.node == "__typename" {
                        field(&f.node, op)?;
                    }
                    set(doc, op, &f.node.selection_set.node, seen, depth + 1)?;
                }
                Selection::InlineFragment(f) => {
                    set(doc, op, &f.node.selection_set.node, seen, depth + 1)?;
                }
                Selection::FragmentSpread(spread) => {
                    // Each fragment once: its `__typename`s do not change with where it is spread.
                    let name = spread.node.fragment_name.node.as_str();
                    if let Some(f) = doc.fragments.get(name)
                        && seen.insert(name)
                    {
                        set(doc, op, &f.node.selection_set.node, seen, depth + 1)?;
                    }
                }
            }
        }
        Ok(())
    }

    set(doc, op, &op.selection_set.node, &mut HashSet::new(), 0)
}

/// Lexical tokens of a GraphQL document (names, numbers, strings, punctuators; whitespace,
/// commas and comments are not tokens), counted without parsing and stopping past `max`: `Err`
/// with the count reached when there are more. The parser's cost grows with tokens, so this bound
/// holds before it runs.
pub(crate) fn count_tokens(query: &str, max: usize) -> Result<usize, usize> {
    const BLOCK: &[u8] = b"\"\"\"";
    let b = query.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        let c = b[i];
        // Whitespace, commas and the byte-order mark are ignored tokens.
        if c.is_ascii_whitespace() || c == b',' || c == 0xEF || c == 0xBB || c == 0xBF {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                i += 1;
            }
            continue;
        }
        n += 1;
        if n > max {
            return Err(n);
        }
        if b[i..].starts_with(BLOCK) {
            i += 3;
            while i < b.len() && !b[i..].starts_with(BLOCK) {
                // `\"""` is an escaped triple quote inside a block string.
                i += if b[i] == b'\\' && b[i + 1..].starts_with(BLOCK) {
                    4
                } else {
                    1
                };
            }
            i += 3;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b[i..].starts_with(b"...") {
            i += 3;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-' | b'+'))
            {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    Ok(n)
}

/// Depth, field count and cost of `op`, refused when over `limits` or the fixed introspection
/// limits.
pub(crate) fn analyze(
    shape: &Shape,
    model: &CostModel,
    doc: &ExecutableDocument,
    op: &OperationDefinition,
    limits: &Limits,
) -> Result<Analysis, Refusal> {
    use async_graphql::parser::types::OperationType;
    let root = match op.ty {
        OperationType::Query => Some(shape.query.as_str()),
        OperationType::Mutation => shape.mutation.as_deref(),
        OperationType::Subscription => shape.subscription.as_deref(),
    };
    let mut walk = Walk {
        shape,
        model,
        doc,
        memo: HashMap::new(),
        active: HashSet::new(),
    };
    let sub = walk.set(&op.selection_set.node, root, false, 0)?;
    shape_limits(doc, op, limits)?;
    check_typenames(doc, op)?;
    let analysis = Analysis {
        cost: sub.cost,
        fields: sub.fields,
        depth: sub.height,
        introspection_fields: sub.intro_fields,
        introspection_depth: sub.intro_height,
    };
    let too = |what: &str, n: u64, max: u64| {
        Err(Refusal::TooComplex(format!(
            "the operation {what} {n}; at most {max} is allowed"
        )))
    };
    if analysis.depth > limits.max_depth {
        return too(
            "is nested",
            u64::from(analysis.depth),
            u64::from(limits.max_depth),
        );
    }
    if analysis.fields > limits.max_fields {
        return too("selects fields:", analysis.fields, limits.max_fields);
    }
    if analysis.cost > limits.max_cost {
        return too("has an estimated cost of", analysis.cost, limits.max_cost);
    }
    if analysis.introspection_fields > 0 && !limits.introspection {
        return Err(Refusal::IntrospectionOff);
    }
    if analysis.introspection_depth > INTROSPECTION_MAX_DEPTH {
        return too(
            "nests introspection",
            u64::from(analysis.introspection_depth),
            u64::from(INTROSPECTION_MAX_DEPTH),
        );
    }
    if analysis.introspection_fields > INTROSPECTION_MAX_FIELDS {
        return too(
            "selects introspection fields:",
            analysis.introspection_fields,
            INTROSPECTION_MAX_FIELDS,
        );
    }
    Ok(analysis)
}

/// Checks the request's variables against `op`'s declarations (GraphQL "CoerceVariableValues"):
/// a required variable without a default must be given and not null; a given value must fit its
/// type (built-in scalars, enums, input objects, lists; custom scalars are the engine's to
/// parse). Unknown types are left to validation.
pub(crate) fn check_variables(
    shape: &Shape,
    op: &OperationDefinition,
    variables: Option<&Map<String, Json>>,
) -> Result<(), Refusal> {
    for def in &op.variable_definitions {
        let def = &def.node;
        let name = def.name.node.as_str();
        let ty = &def.var_type.node;
        match variables.and_then(|v| v.get(name)) {
            None if def.default_value.is_some() || ty.nullable => {}
            None => {
                return Err(Refusal::BadVariables(format!(
                    "variable `${name}` of type `{ty}` is required but was not provided"
                )));
            }
            Some(value) => {
                coerce(shape, value, ty, 0).map_err(|why| {
                    Refusal::BadVariables(format!("variable `${name}` of type `{ty}`: {why}"))
                })?;
            }
        }
    }
    Ok(())
}

/// Deepest nesting of a variable value checked; deeper values are refused (a JSON body is
/// already bounded in size, this bounds the recursion).
const MAX_VALUE_DEPTH: u32 = 32;

fn coerce(shape: &Shape, value: &Json, ty: &Type, depth: u32) -> Result<(), String> {
    if depth > MAX_VALUE_DEPTH {
        return Err(format!("values nest deeper than {MAX_VALUE_DEPTH}"));
    }
    if value.is_null() {
        return if ty.nullable {
            Ok(())
        } else {
            Err("null is not allowed".into())
        };
    }
    match &ty.base {
        BaseType::List(item) => match value {
            Json::Array(items) => items
                .iter()
                .try_for_each(|v| coerce(shape, v, item, depth + 1)),
            // Input coercion accepts one value where a list is expected.
            other => coerce(shape, other, item, depth + 1),
        },
        BaseType::Named(name) => coerce_named(shape, value, name.as_str(), depth),
    }
}

fn coerce_named(shape: &Shape, value: &Json, name: &str, depth: u32) -> Result<(), String> {
    let ok = match name {
        "Int" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        "Float" => value.is_number(),
        "String" => value.is_string(),
        "Boolean" => value.is_boolean(),
        "ID" => value.is_string() || value.is_i64() || value.is_u64(),
        _ => match shape.inputs.get(name) {
            None | Some(InputShape::Scalar) => true,
            Some(InputShape::Enum(values)) => value.as_str().is_some_and(|v| values.contains(v)),
            Some(InputShape::Object(fields)) => {
                let Json::Object(map) = value else {
                    return Err(format!("expected an object for `{name}`"));
                };
                if let Some(unknown) = map.keys().find(|k| !fields.iter().any(|(f, ..)| f == *k)) {
                    return Err(format!("`{name}` has no field `{unknown}`"));
                }
                for (field, ty, has_default) in fields {
                    match map.get(field) {
                        None if *has_default || ty.nullable => {}
                        None => return Err(format!("`{name}.{field}` is required")),
                        Some(v) => coerce(shape, v, ty, depth + 1)
                            .map_err(|why| format!("`{name}.{field}`: {why}"))?,
                    }
                }
                true
            }
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value} is not a valid `{name}`"))
    }
}

#[cfg(test)]
mod tests;
