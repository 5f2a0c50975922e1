//! The web BFF's GraphQL surface: rich titles (full synopsis, cast, genres, every image at every
//! width), all five homepage rows plus a hero title, up to 20 items a row. Everything else —
//! fetching, composition, auth, HTTP, the root query — comes from `shared`.
//!
//! # Layout
//! - [`surface`]: what `main` hands to `shared::run`.
//! - [`schema`]: the web `Title` and `Homepage` (rows + hero).

pub mod schema;

use std::{net::SocketAddr, time::Duration};

use shared::{
    Surface,
    config::BinaryDefaults,
    profile::{ClientProfile, RowKind::*},
};

/// The web binary as the shared core runs it.
pub fn surface() -> Surface {
    Surface::new::<schema::Title, schema::Homepage>(
        ("bff-web", env!("CARGO_PKG_VERSION")),
        defaults,
        EXAMPLE_QUERY,
    )
}

/// The web homepage query GraphiQL opens with; the README's web example is the same query on
/// one line (a test compares them).
pub const EXAMPLE_QUERY: &str = r#"{
  homepage(region: "US") {
    hero { name images { hero { url width } } }
    rows {
      kind
      heading
      items {
        rank
        reason
        progress { fraction }
        title { id name synopsis cast genres images { poster { url width } } }
      }
    }
  }
}
"#;

/// Web defaults: 127.0.0.1:4000, every row, 20 items, untrimmed titles, 800 ms request budget.
pub fn defaults() -> BinaryDefaults {
    let rows = vec![ContinueWatching, Recommended, Top10, MyList, NewReleases];
    BinaryDefaults {
        listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
        profile: ClientProfile::new(rows, 20),
        request_budget: Duration::from_millis(800),
    }
}
