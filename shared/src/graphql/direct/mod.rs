//! The direct-JSON path, contained here: how answers skip async-graphql's value tree where that
//! is safe, and how the response is printed. It bypasses the engine's printing and parts of its
//! resolver machinery for speed, so it is declared once ([`crate::graphql_object!`] makes a
//! type's resolver and its render arm from one field list, guards included), switched on per
//! request by the service ([`RenderJson`], [`root_renderable`]), tested against the engine
//! (every module's tests compare both paths), and never decides anything about authorization:
//! scopes and the maturity ceiling are decided before it runs, and a field's guard runs on both
//! paths.
//!
//! Bottom to top:
//! - `raw`: the marker of already-written JSON in the engine's value tree;
//! - `json`: the response writer (the value tree and rendered markers to bytes, in pieces);
//! - `inline`: in-memory objects and lists resolved on the calling task ([`Inline`],
//!   [`InlineList`], [`Scalars`]), and the merge of marked values;
//! - `render`: objects written straight to JSON as they resolve ([`Rendered`],
//!   [`RenderedList`]).

mod inline;
mod json;
mod raw;
mod render;

pub use inline::{Inline, InlineList, ScalarFields, Scalars};
pub(crate) use json::response_pieces;
pub(crate) use json::{Chunks, JsonOut, write_value};
#[cfg(test)]
pub(crate) use raw::{raw, raw_json};
pub(crate) use render::root_renderable;
pub use render::{FieldOut, RenderFields, RenderJson, Rendered, RenderedList};

/// Whether the schema has custom directives the engine runs on fields: this path does not run
/// them, so with one it falls back to the stock resolvers. `@defer` is not one: it applies to
/// fragments only, and the engine never hands a fragment's directive to a custom directive
/// (`graphql::defer` reads it from the document instead).
pub(crate) fn field_directives(env: &async_graphql::SchemaEnv) -> bool {
    use async_graphql::registry::__DirectiveLocation;
    env.custom_directives.keys().any(|name| {
        env.registry
            .directives
            .get(name)
            .is_none_or(|d| d.locations.contains(&__DirectiveLocation::FIELD))
    })
}
