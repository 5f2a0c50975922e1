//! The document cache: parsed documents of operations seen before, so a repeated operation skips
//! async-graphql's parser. Apps send the same few operations over and over, and the parser (pest)
//! is the costliest step before the first backend call: ~650k instructions for the web homepage
//! query (callgrind), ~40 µs with warm CPU caches and ~100 µs cold, against ~1–4 µs to copy a
//! cached document.
//!
//! Bounded by a byte budget (`graphql.document_cache_bytes`, 0 turns it off) and admitted by
//! moka's TinyLFU, so a stream of one-off queries cannot push the hot operations out. An entry
//! weighs what it holds: the query text plus the parsed document, measured node by node
//! ([`weigh`]: every vector, name and string the parser allocated, with malloc's per-allocation
//! overhead) — a query of many small selections holds well over a hundred times its text. The
//! budget is enforced at once: moka applies inserts and evictions lazily (in batches of
//! hundreds), so after each insert its pending work is run, or a flood of one-off documents
//! would be held far past the budget until the next batch.
//!
//! Keyed by the query's SHA-256, not its text: moka's hash table keeps the *key* of a removed
//! entry in a tombstone until the table is rebuilt, outside any weight. Keyed by text, a flood of
//! one-off 120 KB queries against a 4 MB budget held ~300 dead keys (+70 MB of RSS, measured);
//! keyed by a 32-byte digest, the dead keys are nothing. SHA-256 collisions are what automatic
//! persisted queries already rely on not happening. A document weighing more than an
//! eighth of the budget is not kept at all: no app's hot operation is that large, and one such
//! entry would push out many that are.
//! Each request gets its own copy of the document, because execution rewrites it (`@skip` and
//! `@include` are applied with the request's variables). Only documents that parse are kept; a
//! malformed query is parsed again and gets its error every time. Validation still runs on every
//! request: it reads the variables' values, and caching it would need a schema extension, whose
//! presence sends every field through async-graphql's per-field extension hooks and costs more
//! than validating (measured with callgrind when this cache was added).

use std::{mem::size_of, sync::Arc};

use async_graphql::parser::{
    Positioned, parse_query,
    types::{
        BaseType, Directive, DocumentOperations, ExecutableDocument, OperationDefinition,
        Selection, SelectionSet, Type,
    },
};
use async_graphql::{Name, ServerResult};
use async_graphql_value::{ConstValue, Value};

/// A cached document and what it weighs (computed once, when it is parsed).
#[derive(Clone)]
struct Entry {
    doc: Arc<ExecutableDocument>,
    weight: u32,
}

/// A query's SHA-256: what the cache is keyed by (see the module docs).
type Key = [u8; 32];

fn digest(query: &str) -> Key {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, query.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// Parsed documents by their query's digest, shared by every request of one schema.
pub(crate) struct DocumentCache {
    parsed: moka::sync::Cache<Key, Entry>,
    /// Heaviest document kept: an eighth of the budget.
    max_entry: usize,
}

impl DocumentCache {
    /// A cache holding at most `max_bytes`; `None` when `max_bytes` is 0 (caching off).
    pub(crate) fn new(max_bytes: u64) -> Option<Self> {
        if max_bytes == 0 {
            return None;
        }
        let parsed = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &Key, entry: &Entry| entry.weight)
            .build();
        Some(Self {
            parsed,
            max_entry: usize::try_from(max_bytes / 8).unwrap_or(usize::MAX),
        })
    }

    /// The parsed document of `query`: a copy of the cached one, else freshly parsed (and kept
    /// when it parses and is not too heavy).
    pub(crate) fn parse(&self, query: &str) -> ServerResult<ExecutableDocument> {
        let key = digest(query);
        if let Some(entry) = self.parsed.get(&key) {
            return Ok(ExecutableDocument::clone(&entry.doc));
        }
        let doc = parse_query(query)?;
        let weight = weigh(&doc).saturating_add(size_of::<Key>());
        if weight <= self.max_entry {
            let weight = u32::try_from(weight).unwrap_or(u32::MAX);
            let entry = Entry {
                doc: Arc::new(doc.clone()),
                weight,
            };
            self.parsed.insert(key, entry);
            // Evict now, not at moka's next batch (see the module docs).
            self.parsed.run_pending_tasks();
        }
        Ok(doc)
    }

    /// What the cache holds now, by its weights (for tests and the budget's proof).
    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.parsed.run_pending_tasks();
        self.parsed.weighted_size()
    }
}

/// Bytes malloc hands out for an allocation of `n`: a header word, rounded up to 16, at least 32
/// (glibc's smallest chunk); nothing for an empty vector.
fn alloc(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.saturating_add(8).next_multiple_of(16).max(32)
    }
}

fn vec_of<T>(capacity: usize) -> usize {
    alloc(capacity.saturating_mul(size_of::<T>()))
}

/// A `Name` is an `Arc<str>`: two counters and the bytes, one allocation per occurrence (the
/// parser does not intern).
fn name(n: &Name) -> usize {
    alloc(16 + n.len())
}

/// Heap bytes held by a parsed document (see the module docs). Recursion follows the document's
/// nesting, which the parser already bounds.
pub(crate) fn weigh(doc: &ExecutableDocument) -> usize {
    let operations = match &doc.operations {
        DocumentOperations::Single(op) => operation(&op.node),
        DocumentOperations::Multiple(map) => {
            // A hash map: its table (entries and control bytes), then each entry's heap.
            let table = alloc(
                map.capacity()
                    .saturating_mul(size_of::<(Name, Positioned<OperationDefinition>)>() + 1),
            );
            map.iter().fold(table, |sum, (k, op)| {
                sum.saturating_add(name(k))
                    .saturating_add(operation(&op.node))
            })
        }
    };
    let table = alloc(doc.fragments.capacity().saturating_mul(
        size_of::<(
            Name,
            Positioned<async_graphql::parser::types::FragmentDefinition>,
        )>() + 1,
    ));
    doc.fragments
        .iter()
        .fold(operations.saturating_add(table), |sum, (k, f)| {
            sum.saturating_add(name(k))
                .saturating_add(name(&f.node.type_condition.node.on.node))
                .saturating_add(directives(&f.node.directives))
                .saturating_add(selections(&f.node.selection_set.node))
        })
}

fn operation(op: &OperationDefinition) -> usize {
    let vars = op.variable_definitions.iter().fold(
        vec_of::<Positioned<async_graphql::parser::types::VariableDefinition>>(
            op.variable_definitions.capacity(),
        ),
        |sum, v| {
            sum.saturating_add(name(&v.node.name.node))
                .saturating_add(ty(&v.node.var_type.node))
                .saturating_add(directives(&v.node.directives))
                .saturating_add(
                    v.node
                        .default_value
                        .as_ref()
                        .map_or(0, |d| constant(&d.node)),
                )
        },
    );
    vars.saturating_add(directives(&op.directives))
        .saturating_add(selections(&op.selection_set.node))
}

fn ty(t: &Type) -> usize {
    match &t.base {
        BaseType::Named(n) => name(n),
        BaseType::List(inner) => alloc(size_of::<Type>()).saturating_add(ty(inner)),
    }
}

fn directives(ds: &Vec<Positioned<Directive>>) -> usize {
    ds.iter()
        .fold(vec_of::<Positioned<Directive>>(ds.capacity()), |sum, d| {
            sum.saturating_add(name(&d.node.name.node))
                .saturating_add(arguments(&d.node.arguments))
        })
}

fn arguments(args: &Vec<(Positioned<Name>, Positioned<Value>)>) -> usize {
    args.iter().fold(
        vec_of::<(Positioned<Name>, Positioned<Value>)>(args.capacity()),
        |sum, (k, v)| {
            sum.saturating_add(name(&k.node))
                .saturating_add(value(&v.node))
        },
    )
}

fn selections(set: &SelectionSet) -> usize {
    set.items.iter().fold(
        vec_of::<Positioned<Selection>>(set.items.capacity()),
        |sum, s| {
            let own = match &s.node {
                Selection::Field(f) => {
                    let f = &f.node;
                    f.alias
                        .as_ref()
                        .map_or(0, |a| name(&a.node))
                        .saturating_add(name(&f.name.node))
                        .saturating_add(arguments(&f.arguments))
                        .saturating_add(directives(&f.directives))
                        .saturating_add(selections(&f.selection_set.node))
                }
                Selection::FragmentSpread(f) => {
                    name(&f.node.fragment_name.node).saturating_add(directives(&f.node.directives))
                }
                Selection::InlineFragment(f) => f
                    .node
                    .type_condition
                    .as_ref()
                    .map_or(0, |c| name(&c.node.on.node))
                    .saturating_add(directives(&f.node.directives))
                    .saturating_add(selections(&f.node.selection_set.node)),
            };
            sum.saturating_add(own)
        },
    )
}

fn value(v: &Value) -> usize {
    match v {
        Value::Variable(n) | Value::Enum(n) => name(n),
        Value::String(s) => alloc(s.capacity()),
        Value::Binary(b) => alloc(b.len()),
        Value::List(items) => items
            .iter()
            .fold(vec_of::<Value>(items.capacity()), |sum, i| {
                sum.saturating_add(value(i))
            }),
        Value::Object(map) => map.iter().fold(
            // An index map: its entries (key, value, hash) and its index table.
            alloc(
                map.capacity()
                    .saturating_mul(size_of::<(Name, Value)>() + 16),
            ),
            |sum, (k, v)| sum.saturating_add(name(k)).saturating_add(value(v)),
        ),
        Value::Null | Value::Number(_) | Value::Boolean(_) => 0,
    }
}

fn constant(v: &ConstValue) -> usize {
    match v {
        ConstValue::Enum(n) => name(n),
        ConstValue::String(s) => alloc(s.capacity()),
        ConstValue::Binary(b) => alloc(b.len()),
        ConstValue::List(items) => items
            .iter()
            .fold(vec_of::<ConstValue>(items.capacity()), |sum, i| {
                sum.saturating_add(constant(i))
            }),
        ConstValue::Object(map) => map.iter().fold(
            alloc(
                map.capacity()
                    .saturating_mul(size_of::<(Name, ConstValue)>() + 16),
            ),
            |sum, (k, v)| sum.saturating_add(name(k)).saturating_add(constant(v)),
        ),
        ConstValue::Null | ConstValue::Number(_) | ConstValue::Boolean(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str =
        "query Q($x: Boolean!) { a @skip(if: $x) ...F } fragment F on T { b(c: 1) }";

    #[test]
    fn a_cached_document_equals_a_fresh_parse() {
        let cache = DocumentCache::new(1 << 20).expect("enabled");
        let fresh = format!("{:?}", parse_query(QUERY).expect("parses"));
        for _ in 0..3 {
            let doc = cache.parse(QUERY).expect("parses");
            assert_eq!(format!("{doc:?}"), fresh);
        }
        assert!(cache.parsed.contains_key(&digest(QUERY)));
    }

    #[test]
    fn malformed_queries_are_errors_and_not_kept() {
        let cache = DocumentCache::new(1 << 20).expect("enabled");
        for _ in 0..2 {
            let err = cache.parse("{ a").expect_err("malformed");
            assert!(!err.message.is_empty());
        }
        assert!(!cache.parsed.contains_key(&digest("{ a")));
    }

    #[test]
    fn a_zero_budget_turns_the_cache_off() {
        assert!(DocumentCache::new(0).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let one = {
            let q = format!("{{ field000 {} }}", "x ".repeat(40));
            weigh(&parse_query(&q).expect("parses")) + size_of::<Key>()
        };
        // Room for about eight such documents (each within an eighth of the budget).
        let cache = DocumentCache::new(8 * one as u64 + 8).expect("enabled");
        let queries: Vec<String> = (0..50)
            .map(|i| format!("{{ field{i:0>3} {} }}", "x ".repeat(40)))
            .collect();
        for q in &queries {
            cache.parse(q).expect("parses");
            // Enforced after every insert, not eventually.
            assert!(cache.parsed.weighted_size() <= 8 * one as u64 + 8);
        }
        assert!(cache.parsed.entry_count() <= 8);
    }

    #[test]
    fn a_document_weighs_its_nodes_not_its_text() {
        // The same 30 KB of text: one long string, or ~3,000 tiny selections.
        let string = format!("{{ title(id: \"{}\") {{ id }} }}", "x".repeat(30_000));
        let fields = format!("{{ {} }}", "a ".repeat(15_000));
        let w_string = weigh(&parse_query(&string).expect("parses"));
        let w_fields = weigh(&parse_query(&fields).expect("parses"));
        assert!(
            (30_000..40_000).contains(&w_string),
            "a string argument weighs its bytes: {w_string}"
        );
        let per_field = size_of::<Positioned<Selection>>();
        assert!(
            w_fields >= 15_000 * per_field,
            "each selection weighs its node ({per_field} B) and its name: {w_fields}"
        );
        assert!(
            w_fields > 20 * fields.len(),
            "{w_fields} for {} bytes",
            fields.len()
        );
    }

    #[test]
    fn documents_heavier_than_an_eighth_of_the_budget_are_not_kept() {
        let cache = DocumentCache::new(64 * 1024).expect("enabled");
        let big = format!("{{ {} }}", "a ".repeat(2_000));
        cache.parse(&big).expect("parses");
        assert!(!cache.parsed.contains_key(&digest(&big)));
        cache.parse(QUERY).expect("parses");
        assert!(cache.parsed.contains_key(&digest(QUERY)));
    }

    /// The probe: 1,200 one-off ~120 KB queries against a 4 MB budget once left ~85 MB held.
    #[test]
    fn a_flood_of_one_off_120_kb_queries_stays_within_a_4_mb_budget() {
        const BUDGET: u64 = 4 * 1024 * 1024;
        let cache = DocumentCache::new(BUDGET).expect("enabled");
        let mut most = 0;
        for i in 0..1_200 {
            // A distinct ~120 KB document each time: a long argument and a few hundred fields.
            let q = format!(
                "{{ q{i}: title(id: \"{}\") {{ {} }} }}",
                "x".repeat(118_000),
                "id ".repeat(300)
            );
            cache.parse(&q).expect("parses");
            most = most.max(cache.weighted_size());
        }
        assert!(most <= BUDGET, "{most} bytes held at most");
        assert!(cache.parsed.entry_count() <= 32);
    }
}
