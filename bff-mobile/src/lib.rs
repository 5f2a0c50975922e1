//! The mobile BFF's GraphQL surface: compact title cards (synopsis cut to 140 characters, at most
//! three genres, one image sized for the requested width), four rows, 10 items a row. No cast,
//! backdrop or hero fields exist in this schema at all.
//!
//! # Layout
//! - [`surface`]: what `main` hands to `shared::run`.
//! - [`schema`]: the root types and the mobile `Title` card.

pub mod schema;

use std::net::{Ipv4Addr, SocketAddr};

use shared::{
    Surface,
    config::BinaryDefaults,
    profile::{ClientProfile, RowKind},
};

/// Default listen address of `bff-mobile`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4001);

/// Mobile defaults: four rows, 10 items, trimmed cards.
pub fn defaults() -> BinaryDefaults {
    BinaryDefaults {
        listen: DEFAULT_LISTEN,
        profile: ClientProfile {
            rows: vec![
                RowKind::ContinueWatching,
                RowKind::MyList,
                RowKind::Top10,
                RowKind::Recommended,
            ],
            items_per_row: 10,
            synopsis_max_chars: 140,
            max_genres: 3,
            default_region: "US".to_owned(),
        },
    }
}

/// The mobile binary as the shared core runs it.
pub fn surface() -> Surface {
    Surface {
        name: "bff-mobile",
        defaults,
        schema: schema::build,
    }
}
