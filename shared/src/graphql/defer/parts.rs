//! The wire format of an incremental answer, as Apollo Client 3 reads it and Apollo Server writes
//! it: `Content-Type: multipart/mixed; boundary="-"; deferSpec=20220824`; the body is
//! `\r\n---\r\n`, then each part as `content-type: application/json; charset=utf-8\r\n\r\n{json}`
//! followed by its delimiter, `\r\n---\r\n` when another part follows and `\r\n-----\r\n` after
//! the last. A delimiter is written with the part it ends, not with the next: a client splits
//! parts at delimiters, so a part whose delimiter waited for the next part would wait with it.
//! The first part's JSON is `{"data", "errors"?, "extensions"?, "hasNext": true}`; each later
//! one `{"incremental": [{"data", "path", "label"?, "errors"?}, ...], "hasNext", "extensions"?}`,
//! the last with `hasNext: false`. JSON holds no raw line break, so never a delimiter.

use async_graphql::{ErrorExtensionValues, Name, PathSegment, ServerError, Value};
use axum::http::{HeaderMap, header};
use bytes::Bytes;

use super::plan::Plan;
use crate::{
    error::ErrorCode,
    graphql::direct::{Chunks, JsonOut as _, write_value},
};

/// The answer's media type.
pub(crate) const CONTENT_TYPE: &str = "multipart/mixed; boundary=\"-\"; deferSpec=20220824";
/// What opens the body.
const OPEN: &[u8] = b"\r\n---\r\n";
/// What opens every part.
const HEAD: &[u8] = b"content-type: application/json; charset=utf-8\r\n\r\n";
/// What ends a part another follows.
const NEXT: &[u8] = b"\r\n---\r\n";
/// What ends the last part, and the body.
const LAST: &[u8] = b"\r\n-----\r\n";

/// Whether `Accept` allows an incremental answer: `multipart/mixed` with `q` above 0 and either
/// no `deferSpec` or `deferSpec=20220824` (what Apollo Client 3 sends).
pub(crate) fn accepted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let mut params = media.split(';');
            let kind = params.next().unwrap_or("").trim();
            if !kind.eq_ignore_ascii_case("multipart/mixed") {
                return false;
            }
            params.all(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                if k.eq_ignore_ascii_case("q") {
                    v.parse::<f32>().is_ok_and(|q| q > 0.0)
                } else if k.eq_ignore_ascii_case("deferSpec") {
                    v == "20220824"
                } else {
                    true
                }
            })
        })
}

/// The first part: the executed response (pending rows already cut to what they show) and
/// `hasNext: true`.
pub(crate) fn first(response: &async_graphql::Response) -> serde_json::Result<Vec<Bytes>> {
    let mut out = Chunks::with_capacity(4096);
    out.buf().extend_from_slice(OPEN);
    out.buf().extend_from_slice(HEAD);
    out.buf().extend_from_slice(b"{\"data\":");
    write_value(&mut out, &response.data);
    if !response.errors.is_empty() {
        out.buf().extend_from_slice(b",\"errors\":");
        serde_json::to_writer(out.buf(), &response.errors)?;
    }
    if !response.extensions.is_empty() {
        out.buf().extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(out.buf(), &response.extensions)?;
    }
    out.buf().extend_from_slice(b",\"hasNext\":true}");
    out.buf().extend_from_slice(NEXT);
    Ok(out.finish())
}

/// The rows list of a homepage response (`data.<homepage>.<rows>`).
fn rows_of<'v>(data: &'v mut Value, plan: &Plan) -> Option<&'v mut Vec<Value>> {
    let Value::Object(root) = data else {
        return None;
    };
    let Some(Value::Object(homepage)) = root.get_mut(&plan.homepage_key) else {
        return None;
    };
    match homepage.get_mut(&plan.rows_key) {
        Some(Value::List(rows)) => Some(rows),
        _ => None,
    }
}

/// Cuts every row of the first part to what a pending row shows (its fields outside the
/// deferred fragments) when the answer lists the `expected` rows; `false`, and nothing cut,
/// when it does not (no rows: nothing is deferred).
pub(crate) fn strip_pending(data: &mut Value, plan: &Plan, expected: usize) -> bool {
    let Some(rows) = rows_of(data, plan).filter(|r| r.len() == expected && expected > 0) else {
        return false;
    };
    for row in rows.iter_mut() {
        if let Value::Object(fields) = row {
            fields.retain(|key, _| plan.first_keys.contains(key));
        }
    }
    true
}

/// A row's entries in a later part: one per deferred fragment.
pub(crate) struct Entries {
    /// The row's index in the list.
    pub(crate) index: usize,
    /// Its value from the part's execution (`Null`: it failed).
    pub(crate) value: Value,
    /// Errors at or under its path.
    pub(crate) errors: Vec<ServerError>,
}

/// Takes row `index`'s value and its errors out of a later part's execution; a value that is
/// not there (it cannot be: the homepage is in memory) is `null` with an `INTERNAL` error.
pub(crate) fn take_row(
    response: &mut async_graphql::Response,
    plan: &Plan,
    index: usize,
) -> Entries {
    let value = rows_of(&mut response.data, plan)
        .and_then(|rows| rows.get_mut(index))
        .map(std::mem::take);
    let at = path(plan, index);
    let (mut errors, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut response.errors)
        .into_iter()
        .partition(|e| e.path.starts_with(&at));
    response.errors = rest;
    let value = value.unwrap_or_else(|| {
        tracing::error!(index, "a deferred row is missing from its part's execution");
        errors.push(error_at(plan, index, ErrorCode::Internal, "internal error"));
        Value::Null
    });
    Entries {
        index,
        value,
        errors,
    }
}

/// The response path of row `index`.
fn path(plan: &Plan, index: usize) -> Vec<PathSegment> {
    vec![
        PathSegment::Field(plan.homepage_key.to_string()),
        PathSegment::Field(plan.rows_key.to_string()),
        PathSegment::Index(index),
    ]
}

/// An error with `code` at row `index`'s path (stamped with the trace id by the caller).
pub(crate) fn error_at(plan: &Plan, index: usize, code: ErrorCode, message: &str) -> ServerError {
    let mut e = ServerError::new(message, None);
    e.path = path(plan, index);
    e.extensions
        .get_or_insert_with(ErrorExtensionValues::default)
        .set("code", code.as_str());
    e
}

/// A later part: every deferred fragment's entry for each row of `rows`, then `hasNext`, then
/// `extensions` when there are any.
pub(crate) fn later(
    plan: &Plan,
    rows: &[Entries],
    has_next: bool,
    extensions: Option<&serde_json::Value>,
) -> serde_json::Result<Vec<Bytes>> {
    let mut out = Chunks::with_capacity(1024);
    out.buf().extend_from_slice(HEAD);
    out.buf().extend_from_slice(b"{\"incremental\":[");
    let mut first = true;
    for row in rows {
        for (n, fragment) in plan.fragments.iter().enumerate() {
            if !first {
                out.buf().push(b',');
            }
            first = false;
            out.buf().extend_from_slice(b"{\"data\":");
            write_value(&mut out, &restrict(&row.value, &fragment.keys));
            out.buf().extend_from_slice(b",\"path\":");
            serde_json::to_writer(out.buf(), &path(plan, row.index))?;
            if let Some(label) = &fragment.label {
                out.buf().extend_from_slice(b",\"label\":");
                serde_json::to_writer(out.buf(), label)?;
            }
            // A row's errors go with its first fragment (once, however many it has).
            if n == 0 && !row.errors.is_empty() {
                out.buf().extend_from_slice(b",\"errors\":");
                serde_json::to_writer(out.buf(), &row.errors)?;
            }
            out.buf().push(b'}');
        }
    }
    out.buf().extend_from_slice(b"],\"hasNext\":");
    out.buf()
        .extend_from_slice(if has_next { b"true" } else { b"false" });
    if let Some(extensions) = extensions {
        out.buf().extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(out.buf(), extensions)?;
    }
    out.buf().push(b'}');
    out.buf()
        .extend_from_slice(if has_next { NEXT } else { LAST });
    Ok(out.finish())
}

/// A row's value cut to a fragment's keys (in the row's order, which is the selection's); a
/// failed row (`null`) stays `null`: the failure reached the row itself.
fn restrict(row: &Value, keys: &[Name]) -> Value {
    match row {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;

    use super::*;

    fn accept(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        accepted(&h)
    }

    #[test]
    fn multipart_is_accepted_as_apollo_client_asks_for_it() {
        assert!(accept(
            "multipart/mixed;deferSpec=20220824,application/json"
        ));
        assert!(accept("application/json, multipart/mixed"));
        assert!(accept(
            "Multipart/Mixed; deferSpec=\"20220824\"; q=0.5, application/json"
        ));
        assert!(!accept("application/json"));
        assert!(!accept(
            "multipart/mixed;deferSpec=20990101,application/json"
        ));
        assert!(!accept("multipart/mixed;q=0,application/json"));
        assert!(!accept("multipart/mixed-up"));
        assert!(!accept(""));
    }

    #[test]
    fn parts_are_framed_as_apollo_client_splits_them() {
        let plan = super::super::plan::plan(
            &async_graphql::parser::parse_query(
                "{ homepage { rows { kind ... @defer(label: \"l\") { items { rank } } } } }",
            )
            .unwrap(),
            None,
            None,
        )
        .unwrap();
        let row: Value =
            Value::from_json(serde_json::json!({ "kind": "TOP_10", "items": [{ "rank": 1 }] }))
                .unwrap();
        let entries = [
            Entries {
                index: 2,
                value: row,
                errors: Vec::new(),
            },
            Entries {
                index: 3,
                value: Value::Null,
                errors: vec![error_at(&plan, 3, ErrorCode::BackendTimeout, "slow")],
            },
        ];
        let bytes = later(&plan, &entries, false, None).unwrap().concat();
        let text = String::from_utf8(bytes).unwrap();
        let json = text
            .strip_prefix("content-type: application/json; charset=utf-8\r\n\r\n")
            .and_then(|t| t.strip_suffix("\r\n-----\r\n"))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "incremental": [
                    { "data": { "items": [{ "rank": 1 }] }, "path": ["homepage", "rows", 2], "label": "l" },
                    {
                        "data": null, "path": ["homepage", "rows", 3], "label": "l",
                        "errors": [{ "message": "slow", "path": ["homepage", "rows", 3], "extensions": { "code": "BACKEND_TIMEOUT" } }]
                    }
                ],
                "hasNext": false
            })
        );
    }
}
