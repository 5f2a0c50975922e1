//! GraphQL settings (`graphql.*`, `graphiql.*`): the limits decided before execution, the answer
//! limits, the document cache, persisted operations and the GraphiQL explorer. Only the settings
//! live here; the service that applies them is `crate::graphql`'s.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Invalid, duration, invalid};

/// GraphQL limits (decided before execution, on the fragment-expanded operation; see
/// `graphql::analysis`), answer limits, and the document cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlSettings {
    /// Deepest data selection accepted (introspection has its own fixed limits).
    pub max_depth: usize,
    /// Most data fields one operation may select, fragments expanded (each field counts 1).
    pub max_complexity: usize,
    /// Highest estimated cost accepted (`graphql.max_cost`): fields, backend calls and list sizes,
    /// as the cost model of `docs/edge.md` describes.
    pub max_cost: u64,
    /// Largest answer body (`graphql.max_response_bytes`): a bigger one is replaced by a
    /// `QUERY_TOO_COMPLEX` error, whatever the estimate said.
    pub max_response_bytes: usize,
    /// Longest one operation may run (`graphql.timeout`), whatever the estimate said; must be
    /// longer than `server.request_budget`, which already bounds every backend call.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Most aliases in one document (`graphql.max_aliases`).
    pub max_aliases: usize,
    /// Most fields one operation selects at its root, fragments expanded
    /// (`graphql.max_root_fields`).
    pub max_root_fields: usize,
    /// Most directives on one selection (`graphql.max_directives_per_field`).
    pub max_directives_per_field: usize,
    /// Most lexical tokens in one document, counted before parsing (`graphql.max_tokens`).
    pub max_tokens: usize,
    /// Most operations in one batched request (a JSON array); `1` turns batching off
    /// (`graphql.max_batch`).
    pub max_batch: usize,
    /// Whether introspection queries are answered.
    pub introspection: bool,
    /// Bytes of parsed documents kept for repeated operations, each weighed by its parsed nodes
    /// (`graphql.document_cache_bytes`); 0 parses every request afresh.
    pub document_cache_bytes: u64,
    /// Write row items and titles straight to JSON instead of through the engine's value tree
    /// (`graphql.direct_json`); the answers are the same, `false` is for comparing the two.
    pub direct_json: bool,
    /// Persisted operations (`graphql.persisted.*`).
    pub persisted: PersistedSettings,
    /// Concurrent requests identical in everything the answer depends on share one execution
    /// (`graphql.coalesce`).
    pub coalesce: bool,
}

/// Persisted operations (`graphql.persisted.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistedSettings {
    /// `off`, `apq` (automatic persisted queries) or `allow_list` (only the manifest runs).
    pub mode: PersistedMode,
    /// The trusted documents: an Apollo persisted-query manifest or a `{hash: query}` map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// In `allow_list` mode, whether introspection (and GraphiQL) is still served.
    pub allow_introspection: bool,
    /// Approximate bytes of queries registered through APQ that are kept.
    pub apq_cache_bytes: u64,
}

impl Default for PersistedSettings {
    fn default() -> Self {
        Self {
            mode: PersistedMode::Apq,
            manifest: None,
            allow_introspection: false,
            apq_cache_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `graphql.persisted.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistedMode {
    /// Queries are sent as text; the persisted-query extension is refused.
    Off,
    /// Automatic persisted queries (Apollo protocol): a hash, registered on first use.
    Apq,
    /// Trusted documents only: the manifest's operations.
    AllowList,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_complexity: 2_000,
            // A full web homepage (every field, 5 rows of 20) estimates ~11,000.
            max_cost: 25_000,
            // A full web homepage is ~210 KB.
            max_response_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_secs(3),
            max_aliases: 30,
            max_root_fields: 20,
            max_directives_per_field: 5,
            // graphql-js's introspection query is ~300 tokens, the full web homepage ~120.
            max_tokens: 5_000,
            max_batch: 1,
            introspection: true,
            document_cache_bytes: 16 * 1024 * 1024,
            direct_json: true,
            persisted: PersistedSettings::default(),
            coalesce: true,
        }
    }
}

impl GraphqlSettings {
    /// Checks the limits, the persisted-operation mode, and that an operation may run longer than
    /// `request_budget` (`server.request_budget`).
    pub(super) fn validate(&self, request_budget: Duration) -> Result<(), Invalid> {
        if self.max_depth == 0 {
            return Err(invalid("graphql.max_depth", "must be > 0".into()));
        }
        if self.max_batch == 0 || self.max_batch > 100 {
            return Err(invalid(
                "graphql.max_batch",
                "must be between 1 (no batching) and 100".into(),
            ));
        }
        if self.persisted.mode == PersistedMode::AllowList && self.persisted.manifest.is_none() {
            return Err(invalid(
                "graphql.persisted.manifest",
                "allow_list mode needs a manifest of the operations to allow".into(),
            ));
        }
        if self.timeout <= request_budget {
            return Err(invalid(
                "graphql.timeout",
                format!(
                    "must be longer than server.request_budget ({})",
                    humantime::format_duration(request_budget)
                ),
            ));
        }
        Ok(())
    }
}

/// GraphiQL explorer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphiqlSettings {
    /// Serve GraphiQL on `GET /graphql` for browsers.
    pub enabled: bool,
    /// `node_modules` folder holding the GraphiQL assets; default: the one `npm ci --prefix
    /// shared/graphiql` fills in the source tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assets_dir: Option<PathBuf>,
}

impl Default for GraphiqlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            assets_dir: None,
        }
    }
}
