//! The web BFF's GraphQL surface: rich titles (full synopsis, cast, genres, every image at every
//! width), all five homepage rows plus a hero title, up to 20 items a row. Everything else —
//! fetching, composition, auth, HTTP — comes from `shared`.
//!
//! # Layout
//! - [`surface`]: what `main` hands to `shared::run`.
//! - [`schema`]: the root types and the web `Title`.

pub mod schema;

use std::net::{Ipv4Addr, SocketAddr};

use shared::{
    Surface,
    config::BinaryDefaults,
    profile::{ClientProfile, RowKind},
};

/// Default listen address of `bff-web`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4000);

/// Web defaults: every row, 20 items, untrimmed titles.
pub fn defaults() -> BinaryDefaults {
    BinaryDefaults {
        listen: DEFAULT_LISTEN,
        profile: ClientProfile {
            rows: vec![
                RowKind::ContinueWatching,
                RowKind::Recommended,
                RowKind::Top10,
                RowKind::MyList,
                RowKind::NewReleases,
            ],
            items_per_row: 20,
            synopsis_max_chars: 0,
            max_genres: 0,
            default_region: "US".to_owned(),
        },
    }
}

/// The web binary as the shared core runs it.
pub fn surface() -> Surface {
    Surface {
        name: "bff-web",
        defaults,
        schema: schema::build,
    }
}
