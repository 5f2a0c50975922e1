//! The document cache: parsed documents of operations seen before, so a repeated operation skips
//! async-graphql's parser. Apps send the same few operations over and over, and the parser (pest)
//! is the costliest step before the first backend call: ~650k instructions for the web homepage
//! query (callgrind), ~40 µs with warm CPU caches and ~100 µs cold, against ~1–4 µs to copy a
//! cached document.
//!
//! Bounded by an approximate byte budget (`graphql.document_cache_bytes`, 0 turns it off) and
//! admitted by moka's TinyLFU, so a stream of one-off queries cannot push the hot operations out.
//! Each request gets its own copy of the document, because execution rewrites it (`@skip` and
//! `@include` are applied with the request's variables). Only documents that parse are kept; a
//! malformed query is parsed again and gets its error every time. Validation still runs on every
//! request: it reads the variables' values, and caching it would need a schema extension, whose
//! presence sends every field through async-graphql's per-field extension hooks and costs more
//! than validating (measured with callgrind when this cache was added).

use std::sync::Arc;

use async_graphql::{
    ServerResult,
    parser::{parse_query, types::ExecutableDocument},
};

/// Approximate bytes a parsed document holds per byte of query text (AST nodes, positions,
/// vectors); the budget is an estimate, not an exact accounting.
const PARSED_BYTES_PER_QUERY_BYTE: usize = 32;

/// Parsed documents by query text, shared by every request of one schema.
pub(crate) struct DocumentCache {
    parsed: moka::sync::Cache<Arc<str>, Arc<ExecutableDocument>>,
}

impl DocumentCache {
    /// A cache holding about `max_bytes`; `None` when `max_bytes` is 0 (caching off).
    pub(crate) fn new(max_bytes: u64) -> Option<Self> {
        if max_bytes == 0 {
            return None;
        }
        let parsed = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|query: &Arc<str>, _doc: &Arc<ExecutableDocument>| {
                let bytes = query.len().saturating_mul(PARSED_BYTES_PER_QUERY_BYTE);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Some(Self { parsed })
    }

    /// The parsed document of `query`: a copy of the cached one, else freshly parsed (and kept
    /// when it parses).
    pub(crate) fn parse(&self, query: &str) -> ServerResult<ExecutableDocument> {
        if let Some(doc) = self.parsed.get(query) {
            return Ok(ExecutableDocument::clone(&doc));
        }
        let doc = parse_query(query)?;
        self.parsed.insert(Arc::from(query), Arc::new(doc.clone()));
        Ok(doc)
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
        assert!(cache.parsed.contains_key(QUERY));
    }

    #[test]
    fn malformed_queries_are_errors_and_not_kept() {
        let cache = DocumentCache::new(1 << 20).expect("enabled");
        for _ in 0..2 {
            let err = cache.parse("{ a").expect_err("malformed");
            assert!(!err.message.is_empty());
        }
        assert!(!cache.parsed.contains_key("{ a"));
    }

    #[test]
    fn a_zero_budget_turns_the_cache_off() {
        assert!(DocumentCache::new(0).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        // Room for about one 100-byte query.
        let cache = DocumentCache::new(100 * PARSED_BYTES_PER_QUERY_BYTE as u64).expect("enabled");
        let queries: Vec<String> = (0..50)
            .map(|i| format!("{{ field{i:0>3} {} }}", "x ".repeat(40)))
            .collect();
        for q in &queries {
            cache.parse(q).expect("parses");
        }
        cache.parsed.run_pending_tasks();
        assert!(
            cache.parsed.weighted_size() <= 100 * PARSED_BYTES_PER_QUERY_BYTE as u64,
            "{} bytes kept",
            cache.parsed.weighted_size()
        );
        assert!(cache.parsed.entry_count() <= 1);
    }
}
