//! The cost model, declared with the fields it weighs. A resolver states what it costs beside its
//! other attributes, as a schema directive: the backend calls it makes (`@backendCalls`) and, on
//! a list of objects, the client-profile count that bounds its items (`@maxItems`). A field thus
//! carries its weight wherever it is renamed, moved or merged, and no table names fields apart
//! from their declarations.
//!
//! The directives print in the schema's SDL (the files in `schema/` show them), where the
//! analysis reads them back ([`Weight::from_directives`]) with the rest of the schema's shape;
//! [`CostModel`] turns a weight into numbers for one client profile, whose rows and items per row
//! the declarations may name because they differ per binary. Everything else a field costs (1 for
//! itself, its sub-selection times its list size) is the analysis walk's.
//!
//! Owns the declarations and their meaning, not the walk and not the limits.

use async_graphql::{InputType, Positioned, TypeDirective, parser::types::ConstDirective};

use crate::profile::ClientProfile;

/// Extra cost of one backend call a field makes: a call is worth about ten fields of work.
pub(crate) const CALL_COST: u64 = 10;
/// Items assumed for a list field with no declared bound (genres, cast, image renditions are all
/// below it).
pub(crate) const DEFAULT_LIST_SIZE: u64 = 10;

/// The directives' names as the SDL spells them (the `TypeDirective`s below must agree, and so
/// must the argument names `Weight::from_directives` reads: `a_declared_weight_is_weighed` builds
/// a schema from the declarations and weighs it).
const BACKEND_CALLS: &str = "backendCalls";
const MAX_ITEMS: &str = "maxItems";

/// A count the client profile sets, bounding a list in the cost estimate (`@maxItems`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileLimit {
    /// The homepage's rows for this client.
    Rows,
    /// The items in one row for this client.
    ItemsPerRow,
}

/// Cost estimate: the backend calls this field makes each time it resolves, `fixed` plus
/// `perRow` for each row of the client's homepage. A call weighs as much as ten fields.
#[TypeDirective(name = "backendCalls", location = "FieldDefinition")]
pub(crate) fn backend_calls(fixed: u32, per_row: Option<u32>) {}

/// Cost estimate: this list holds at most the client profile's `profile` items, and what each
/// item selects counts that many times. Lists without it count 10.
#[TypeDirective(name = "maxItems", location = "FieldDefinition")]
pub(crate) fn max_items(profile: ProfileLimit) {}

/// What a field declares it weighs, as read back from its directives; the default (nothing
/// declared) is a field that calls no backend and, as a list, holds [`DEFAULT_LIST_SIZE`] items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Weight {
    /// `@backendCalls`: fixed calls and calls per homepage row; `None` when not declared.
    calls: Option<(u64, u64)>,
    /// `@maxItems`: the profile count bounding the list.
    max_items: Option<ProfileLimit>,
}

impl Weight {
    /// From a field definition's directives. Our own declarations come from typed Rust calls, so
    /// a malformed one can only be a hand-written SDL's: it counts as not declared.
    pub(crate) fn from_directives(directives: &[Positioned<ConstDirective>]) -> Self {
        let mut weight = Self::default();
        for d in directives {
            let d = &d.node;
            let int = |arg: &str| {
                d.get_argument(arg)
                    .and_then(|v| u64::parse(Some(v.node.clone())).ok())
            };
            match d.name.node.as_str() {
                BACKEND_CALLS => {
                    weight.calls = int("fixed").map(|fixed| (fixed, int("perRow").unwrap_or(0)));
                }
                MAX_ITEMS => {
                    weight.max_items = d
                        .get_argument("profile")
                        .and_then(|v| ProfileLimit::parse(Some(v.node.clone())).ok());
                }
                _ => {}
            }
        }
        weight
    }

    /// Whether the field declares its backend calls (zero is a declaration too).
    #[cfg(test)]
    pub(crate) fn declares_calls(&self) -> bool {
        self.calls.is_some()
    }
}

/// The client profile's counts that declarations may name: resolves a [`Weight`] into numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CostModel {
    rows: u64,
    items_per_row: u64,
}

impl CostModel {
    /// The model for one client profile.
    pub(crate) fn for_profile(profile: &ClientProfile) -> Self {
        Self {
            rows: profile.rows.len() as u64,
            items_per_row: profile.items_per_row as u64,
        }
    }

    /// Backend calls a field of `weight` makes, and the most items it holds as a list.
    pub(crate) fn weigh(&self, weight: Weight) -> (u64, u64) {
        let calls = weight.calls.map_or(0, |(fixed, per_row)| {
            fixed.saturating_add(per_row.saturating_mul(self.rows))
        });
        let items = match weight.max_items {
            Some(ProfileLimit::Rows) => self.rows,
            Some(ProfileLimit::ItemsPerRow) => self.items_per_row,
            None => DEFAULT_LIST_SIZE,
        };
        (calls, items)
    }
}
