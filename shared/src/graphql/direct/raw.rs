//! The marker of already-written JSON in the engine's value tree: a rendered row or title
//! ([`super::render`]) travels through async-graphql as a one-entry object holding its bytes,
//! which the writer ([`super::json`]) copies verbatim and a merge ([`super::inline`]) expands
//! first. The bottom of the direct-JSON path: it imports none of its siblings.

use async_graphql::{Name, Value, indexmap::IndexMap};
use bytes::Bytes;

/// The response key of a rendered marker: `{RAW_KEY: Binary(json)}`. A GraphQL response key is a
/// name (`[_A-Za-z][_0-9A-Za-z]*`), so no selected field can collide with it.
const RAW_KEY: &str = "\0json";

/// A value holding already-written JSON.
pub(crate) fn raw(bytes: Vec<u8>) -> Value {
    let mut map = IndexMap::with_capacity(1);
    map.insert(Name::new(RAW_KEY), Value::Binary(bytes.into()));
    Value::Object(map)
}

/// The JSON of a rendered marker; `None` for any other value.
pub(crate) fn raw_json(value: &Value) -> Option<&Bytes> {
    match value {
        Value::Object(map) if map.len() == 1 => match map.get_index(0) {
            Some((key, Value::Binary(bytes))) if key.as_str() == RAW_KEY => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

/// A rendered marker as an ordinary value tree, for merging with another selection of the same
/// response key; any other value unchanged.
pub(crate) fn expand(value: Value) -> Value {
    match raw_json(&value).map(|json| serde_json::from_slice::<Value>(json)) {
        Some(Ok(tree)) => tree,
        Some(Err(e)) => {
            // Our own writer produced these bytes; keep the marker rather than lose the field.
            tracing::error!(error = %e, "rendered JSON did not parse back");
            value
        }
        None => value,
    }
}
