//! Gives every error leaving the engine a code from the closed list, and keeps internal text out
//! of responses. Resolvers set codes themselves; what arrives here without one came from the
//! engine (parse, validation, limits, argument coercion) or is a bug.

use async_graphql::{ErrorExtensionValues, ServerError, Value};

use crate::error::ErrorCode;

/// How a request ended, for the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Executed (possibly with field errors).
    Executed,
    /// Rejected before execution (validation, limits, variables).
    RequestError,
}

fn code_of(e: &ServerError) -> Option<String> {
    match e.extensions.as_ref()?.get("code")? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn set_code(e: &mut ServerError, code: ErrorCode) {
    e.extensions
        .get_or_insert_with(ErrorExtensionValues::default)
        .set("code", code.as_str());
}

/// Codes the uncoded errors of a response in place and says whether execution happened. With
/// `hide_suggestions` (introspection off), "Did you mean …" hints are cut from messages: they
/// would name fields and arguments a client cannot otherwise discover.
pub(crate) fn classify(resp: &mut async_graphql::Response, hide_suggestions: bool) -> Outcome {
    // The engine answers a request it refused to run with `data: null` and only path-less errors.
    // Limits and variables were decided before it ran (`analysis`), so what it refuses is the
    // document itself: validation.
    let refused = resp.data == Value::Null
        && !resp.errors.is_empty()
        && resp.errors.iter().all(|e| e.path.is_empty());
    for e in &mut resp.errors {
        if hide_suggestions && let Some(at) = e.message.find(" Did you mean") {
            e.message.truncate(at);
        }
        if code_of(e).is_some() {
            continue;
        }
        let msg = e.message.as_str();
        let code = if refused {
            ErrorCode::GraphqlValidationFailed
        } else if msg.starts_with("Invalid value for argument")
            || msg.starts_with("Failed to parse")
        {
            ErrorCode::BadUserInput
        } else {
            // Uncoded error inside execution: a bug or an unexpected engine error. Log it, mask it.
            tracing::error!(error = %e.message, path = ?e.path, "uncoded GraphQL error");
            e.message = "internal error".to_owned();
            ErrorCode::Internal
        };
        set_code(e, code);
    }
    if refused {
        Outcome::RequestError
    } else {
        Outcome::Executed
    }
}

/// Adds `extensions.traceId` to every error of an executed response, so a client reporting an
/// error hands operators the id that finds the request's whole path.
pub(crate) fn stamp_trace_id(resp: &mut async_graphql::Response) {
    let Some(t) = crate::telemetry::current() else {
        return;
    };
    let id = t.trace.trace_id_hex();
    for e in &mut resp.errors {
        e.extensions
            .get_or_insert_with(ErrorExtensionValues::default)
            .set("traceId", id.as_str());
    }
}
