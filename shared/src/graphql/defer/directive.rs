//! The `@defer` directive in the schema, as the incremental-delivery proposal (and Apollo Client)
//! declares it: `directive @defer(label: String, if: Boolean! = true) on FRAGMENT_SPREAD |
//! INLINE_FRAGMENT`. Registered so documents using it validate (placement, argument types) and it
//! shows in the SDL and introspection. The engine never runs a directive on a fragment, so this
//! has no behaviour of its own: `super::plan` reads it from the document.

use std::borrow::Cow;

use async_graphql::{
    ContextDirective, CustomDirective, CustomDirectiveFactory, ServerResult,
    indexmap::IndexMap,
    parser::types::Directive,
    registry::{__DirectiveLocation, Deprecation, MetaDirective, MetaInputValue, Registry},
};

/// The directive's name.
pub(crate) const NAME: &str = "defer";

/// `@defer` for [`async_graphql::SchemaBuilder::directive`].
pub(crate) struct Defer;

/// What the engine would wrap a field in; never asked for (fragments only).
struct Inert;

impl CustomDirective for Inert {}

fn argument(name: &str, ty: &str, default: Option<&str>, description: &str) -> MetaInputValue {
    MetaInputValue {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        ty: ty.to_owned(),
        deprecation: Deprecation::NoDeprecated,
        default_value: default.map(str::to_owned),
        visible: None,
        inaccessible: false,
        tags: Vec::new(),
        is_secret: false,
        directive_invocations: Vec::new(),
    }
}

impl CustomDirectiveFactory for Defer {
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(NAME)
    }

    fn register(&self, registry: &mut Registry) {
        let mut args = IndexMap::new();
        args.insert(
            "label".to_owned(),
            argument(
                "label",
                "String",
                None,
                "Names this fragment's part (`label` in `incremental`); unique in the operation.",
            ),
        );
        args.insert(
            "if".to_owned(),
            argument(
                "if",
                "Boolean!",
                Some("true"),
                "Deferred when true; false delivers the fragment with the rest.",
            ),
        );
        registry.add_directive(MetaDirective {
            name: NAME.to_owned(),
            description: Some(
                "Delivers the fragment in a later part of an incremental (multipart/mixed) \
                 answer rather than holding up the first. Homepage rows honour it (a row's items, \
                 or a whole row, arrive as the row's sources answer); elsewhere the fragment \
                 arrives with the rest, as the incremental-delivery proposal allows."
                    .to_owned(),
            ),
            locations: vec![
                __DirectiveLocation::FRAGMENT_SPREAD,
                __DirectiveLocation::INLINE_FRAGMENT,
            ],
            args,
            is_repeatable: false,
            visible: None,
            composable: None,
        });
    }

    fn create(
        &self,
        _ctx: &ContextDirective<'_>,
        _directive: &Directive,
    ) -> ServerResult<Box<dyn CustomDirective>> {
        Ok(Box::new(Inert))
    }
}
