//! Persisted operations: clients send a hash instead of the query, in the Apollo protocol
//! (`extensions.persistedQuery = {"version": 1, "sha256Hash": "<hex>"}`, over POST and GET).
//!
//! `graphql.persisted.mode`:
//! - `off`: the extension is refused (`PERSISTED_QUERY_NOT_SUPPORTED` in Apollo's terms, here
//!   `BAD_USER_INPUT`); queries are sent as text.
//! - `apq` (automatic persisted queries, the default): an unknown hash answers
//!   `PERSISTED_QUERY_NOT_FOUND`; the client sends hash and query once, the BFF checks the hash and
//!   keeps the query (bounded by `graphql.persisted.apq_cache_bytes`), and from then on the hash is
//!   enough. Operations of the manifest (if one is given) are known from the start.
//! - `allow_list` (trusted documents): only the manifest's operations run; a query sent as text, or
//!   a hash not in the manifest, is refused and never registered. Introspection (and so GraphiQL)
//!   is served only with `graphql.persisted.allow_introspection`.
//!
//! A manifest is the JSON Apollo's, Relay's or GraphQL Codegen's tools write: either
//! `{"format": "apollo-persisted-query-manifest", "operations": [{"id": "<sha256>", "body": "…"}]}`
//! or a map `{"<sha256>": "<query>"}`. Every entry's hash is checked against its body at start.
//! A persisted operation's text is its cached document's key, so it skips the parser after first
//! use, and once it has validated it runs without validation too ([`Persisted::mark_valid`]).

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Map, Value as Json};

use crate::config::{PersistedMode, PersistedSettings};

/// Why a persisted-operation request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PersistedError {
    /// The hash is not known (yet): in `apq` the client should send the query with it.
    #[error("PersistedQueryNotFound")]
    NotFound,
    /// The query sent with a hash does not have that hash.
    #[error("the query's SHA-256 is not the sha256Hash sent with it")]
    HashMismatch,
    /// `extensions.persistedQuery` is malformed or of an unknown version.
    #[error(
        "extensions.persistedQuery must be {{\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}}"
    )]
    Malformed,
    /// Persisted queries are off on this server.
    #[error("persisted queries are not supported on this server; send the query")]
    Unsupported,
    /// `allow_list`: only the manifest's operations run.
    #[error("this server runs only its persisted operations; send the sha256Hash of a known one")]
    NotAllowed,
}

/// Why the manifest could not be loaded (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read the persisted-operation manifest {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An entry is unusable.
    #[error("persisted-operation manifest {path}: {reason}")]
    Entry {
        /// The file.
        path: String,
        /// Which entry and why.
        reason: String,
    },
}

/// One known operation: its text, and whether it has validated once.
struct Known {
    query: Arc<str>,
    valid: AtomicBool,
}

/// What a request runs, after the persisted-operation step.
pub(crate) struct Resolved {
    /// The query text.
    pub(crate) query: Arc<str>,
    /// The hash it is known by, when it is a persisted operation.
    pub(crate) hash: Option<String>,
    /// Whether it validated before (it may skip validation).
    pub(crate) validated: bool,
    /// Whether it is on the manifest (allow-list mode admits only these, and introspection when
    /// allowed).
    pub(crate) trusted: bool,
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// The persisted operations of one schema.
pub(crate) struct Persisted {
    mode: PersistedMode,
    allow_introspection: bool,
    manifest: HashMap<String, Arc<Known>>,
    apq: moka::sync::Cache<String, Arc<Known>>,
}

impl Persisted {
    /// From the settings, loading the manifest when one is given.
    pub(crate) fn new(s: &PersistedSettings) -> Result<Self, ManifestError> {
        let manifest = match &s.manifest {
            Some(path) => load_manifest(path)?,
            None => HashMap::new(),
        };
        let apq = moka::sync::Cache::builder()
            .max_capacity(s.apq_cache_bytes)
            .weigher(|hash: &String, known: &Arc<Known>| {
                u32::try_from(hash.len() + known.query.len()).unwrap_or(u32::MAX)
            })
            .build();
        Ok(Self {
            mode: s.mode,
            allow_introspection: s.allow_introspection,
            manifest,
            apq,
        })
    }

    /// Whether only trusted documents run.
    pub(crate) fn allow_list(&self) -> bool {
        self.mode == PersistedMode::AllowList
    }

    /// Whether introspection may be served (always, unless the allow list forbids it).
    pub(crate) fn introspection_allowed(&self) -> bool {
        !self.allow_list() || self.allow_introspection
    }

    fn known(&self, hash: &str) -> Option<Arc<Known>> {
        self.manifest
            .get(hash)
            .cloned()
            .or_else(|| self.apq.get(hash))
    }

    /// The query a request runs: its `query`, or the one its persisted-query hash names.
    pub(crate) fn resolve(
        &self,
        query: Option<String>,
        extensions: &Map<String, Json>,
    ) -> Result<Resolved, PersistedError> {
        let Some(ext) = extensions.get("persistedQuery") else {
            let query = query.ok_or(PersistedError::Malformed)?;
            let trusted = !self.manifest.is_empty() && {
                let hash = sha256_hex(&query);
                self.manifest.contains_key(&hash)
            };
            // In allow-list mode a text query runs only when it is a manifest operation (or, if
            // allowed, introspection: the service checks that after analysis).
            return Ok(Resolved {
                query: Arc::from(query),
                hash: None,
                validated: false,
                trusted,
            });
        };
        if self.mode == PersistedMode::Off {
            return Err(PersistedError::Unsupported);
        }
        let version = ext.get("version").and_then(Json::as_u64);
        let hash = ext
            .get("sha256Hash")
            .and_then(Json::as_str)
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        let (Some(1), Some(hash)) = (version, hash) else {
            return Err(PersistedError::Malformed);
        };
        if let Some(known) = self.known(&hash) {
            // A query sent along with a known hash must still be that query.
            if query.as_deref().is_some_and(|q| *q != *known.query) {
                return Err(PersistedError::HashMismatch);
            }
            let trusted = self.manifest.contains_key(&hash);
            return Ok(Resolved {
                query: known.query.clone(),
                validated: known.valid.load(Ordering::Relaxed),
                hash: Some(hash),
                trusted,
            });
        }
        // On an allow list an unknown hash is final: answering NOT_FOUND would only make an
        // Apollo client retry with the query, to be refused then.
        if self.allow_list() {
            return Err(PersistedError::NotAllowed);
        }
        let Some(query) = query else {
            return Err(PersistedError::NotFound);
        };
        if sha256_hex(&query) != hash {
            return Err(PersistedError::HashMismatch);
        }
        let known = Arc::new(Known {
            query: Arc::from(query),
            valid: AtomicBool::new(false),
        });
        self.apq.insert(hash.clone(), known.clone());
        // moka applies evictions in batches of hundreds; a flood of one-off registrations
        // (each up to the body limit) would be held far past `apq_cache_bytes` until the next
        // batch. Registering is the rare path (a client's first sight of an operation).
        self.apq.run_pending_tasks();
        Ok(Resolved {
            query: known.query.clone(),
            hash: Some(hash),
            validated: false,
            trusted: false,
        })
    }

    /// Records that the operation with `hash` validated, so it may skip validation from now on.
    pub(crate) fn mark_valid(&self, hash: &str) {
        if let Some(known) = self.known(hash) {
            known.valid.store(true, Ordering::Relaxed);
        }
    }
}

/// Reads a manifest in Apollo's format or as a hash → query map, checking every hash.
fn load_manifest(path: &Path) -> Result<HashMap<String, Arc<Known>>, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let json: Json = serde_json::from_str(&text).map_err(|e| ManifestError::Read {
        path: shown.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let entry_error = |reason: String| ManifestError::Entry {
        path: shown.clone(),
        reason,
    };
    let pairs: Vec<(String, String)> = match &json {
        Json::Object(map)
            if map.get("format").and_then(Json::as_str)
                == Some("apollo-persisted-query-manifest") =>
        {
            let ops = map
                .get("operations")
                .and_then(Json::as_array)
                .ok_or_else(|| entry_error("no `operations` array".into()))?;
            ops.iter()
                .enumerate()
                .map(|(i, op)| {
                    let id = op.get("id").and_then(Json::as_str);
                    let body = op.get("body").and_then(Json::as_str);
                    match (id, body) {
                        (Some(id), Some(body)) => Ok((id.to_ascii_lowercase(), body.to_owned())),
                        _ => Err(entry_error(format!(
                            "operations[{i}] needs `id` and `body`"
                        ))),
                    }
                })
                .collect::<Result<_, _>>()?
        }
        Json::Object(map) => map
            .iter()
            .map(|(hash, body)| match body.as_str() {
                Some(body) => Ok((hash.to_ascii_lowercase(), body.to_owned())),
                None => Err(entry_error(format!(
                    "`{hash}` does not map to a query string"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(entry_error("expected an object".into())),
    };
    let mut out = HashMap::with_capacity(pairs.len());
    for (hash, body) in pairs {
        let actual = sha256_hex(&body);
        if actual != hash {
            return Err(entry_error(format!(
                "`{hash}` is not the SHA-256 of its body (that is {actual})"
            )));
        }
        out.insert(
            hash,
            Arc::new(Known {
                query: Arc::from(body),
                valid: AtomicBool::new(false),
            }),
        );
    }
    Ok(out)
}

/// An Apollo persisted-query manifest of `operations` (name, type, body), as
/// `--persisted-manifest` prints it.
pub fn manifest_json(operations: &[(String, String, String)]) -> Json {
    let ops: Vec<Json> = operations
        .iter()
        .map(|(name, ty, body)| {
            serde_json::json!({ "id": sha256_hex(body), "name": name, "type": ty, "body": body })
        })
        .collect();
    serde_json::json!({
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": ops,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn settings(mode: PersistedMode, manifest: Option<&Path>) -> PersistedSettings {
        PersistedSettings {
            mode,
            manifest: manifest.map(Path::to_path_buf),
            allow_introspection: false,
            apq_cache_bytes: 1 << 20,
        }
    }

    fn ext(hash: &str) -> Map<String, Json> {
        json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn hashes_are_sha256_hex() {
        // echo -n '{ __typename }' | sha256sum
        assert_eq!(
            sha256_hex("{ __typename }"),
            "7f56e67dd21ab3f30d1ff8b7bed08893f0a0db86449836189b361dd1e56ddb4b"
        );
    }

    #[test]
    fn apq_registers_once_then_the_hash_is_enough() {
        let p = Persisted::new(&settings(PersistedMode::Apq, None)).unwrap();
        let q = "{ viewer { id } }";
        let h = sha256_hex(q);
        assert_eq!(
            p.resolve(None, &ext(&h)).err(),
            Some(PersistedError::NotFound)
        );
        let wrong = sha256_hex("{ other }");
        assert_eq!(
            p.resolve(Some(q.into()), &ext(&wrong)).err(),
            Some(PersistedError::HashMismatch)
        );
        let r = p.resolve(Some(q.into()), &ext(&h)).unwrap();
        assert_eq!(
            (&*r.query, r.hash.as_deref(), r.validated),
            (q, Some(h.as_str()), false)
        );
        p.mark_valid(&h);
        let r = p.resolve(None, &ext(&h.to_ascii_uppercase())).unwrap();
        assert_eq!((&*r.query, r.validated), (q, true));
        // A known hash with another query is refused, not replaced.
        assert_eq!(
            p.resolve(Some("{ x }".into()), &ext(&h)).err(),
            Some(PersistedError::HashMismatch)
        );
        for bad in [
            json!({ "persistedQuery": { "version": 2, "sha256Hash": h } }),
            json!({ "persistedQuery": { "version": 1, "sha256Hash": "abc" } }),
            json!({ "persistedQuery": "x" }),
        ] {
            assert_eq!(
                p.resolve(None, bad.as_object().unwrap()).err(),
                Some(PersistedError::Malformed)
            );
        }
        let off = Persisted::new(&settings(PersistedMode::Off, None)).unwrap();
        assert_eq!(
            off.resolve(None, &ext(&h)).err(),
            Some(PersistedError::Unsupported)
        );
    }

    #[test]
    fn the_allow_list_runs_only_the_manifest_and_never_registers() {
        let dir = std::env::temp_dir().join(format!("bff-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let known = "query Home { homepage { rows { kind } } }";
        let apollo = dir.join("apollo.json");
        std::fs::write(
            &apollo,
            manifest_json(&[("Home".into(), "query".into(), known.into())]).to_string(),
        )
        .unwrap();
        let relay = dir.join("relay.json");
        std::fs::write(&relay, json!({ sha256_hex(known): known }).to_string()).unwrap();
        for file in [&apollo, &relay] {
            let p = Persisted::new(&settings(PersistedMode::AllowList, Some(file))).unwrap();
            let r = p.resolve(None, &ext(&sha256_hex(known))).unwrap();
            assert!(r.trusted && &*r.query == known);
            let other = "{ viewer { id } }";
            assert_eq!(
                p.resolve(Some(other.into()), &ext(&sha256_hex(other)))
                    .err(),
                Some(PersistedError::NotAllowed)
            );
            assert_eq!(
                p.resolve(None, &ext(&sha256_hex(other))).err(),
                Some(PersistedError::NotAllowed)
            );
            // Text queries: trusted only when they are a manifest operation.
            assert!(p.resolve(Some(known.into()), &Map::new()).unwrap().trusted);
            assert!(!p.resolve(Some(other.into()), &Map::new()).unwrap().trusted);
            assert!(!p.introspection_allowed());
        }
        let tampered = dir.join("tampered.json");
        std::fs::write(
            &tampered,
            json!({ sha256_hex("{ a }"): "{ b }" }).to_string(),
        )
        .unwrap();
        let err = Persisted::new(&settings(PersistedMode::AllowList, Some(&tampered)))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is not the SHA-256 of its body"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The document cache's probe, on the other cache a client fills: 1,200 one-off 120 KB
    /// registrations never hold more than `apq_cache_bytes`, at any moment.
    #[test]
    fn a_flood_of_one_off_registrations_stays_within_the_apq_budget() {
        let mut s = settings(PersistedMode::Apq, None);
        s.apq_cache_bytes = 4 * 1024 * 1024;
        let p = Persisted::new(&s).unwrap();
        // What is alive is what the cache holds (applied or still pending in moka's buffers):
        // each registration's text is watched through a weak reference.
        let mut watched = Vec::new();
        let mut most = 0;
        for i in 0..1_200 {
            let query = format!(
                "{{ q{i}: title(id: \"{}\") {{ id }} }}",
                "x".repeat(120_000)
            );
            let hash = sha256_hex(&query);
            let resolved = p.resolve(Some(query), &ext(&hash)).unwrap();
            watched.push(Arc::downgrade(&resolved.query));
            drop(resolved);
            let alive: usize = watched
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .map(|q| q.len() + 64)
                .sum();
            most = most.max(alive);
        }
        // Within the budget plus the registrations being decided (moka frees a candidate it does
        // not admit a moment later; on a loaded machine a second one was seen still pending, so
        // two are allowed); without evicting at once, ~16 MB.
        assert!(
            most as u64 <= s.apq_cache_bytes + 2 * 128 * 1024,
            "{most} bytes of registered queries alive at most"
        );
    }
}
