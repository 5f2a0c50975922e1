//! The mobile BFF's GraphQL surface: compact title cards (synopsis cut to 140 characters, at most
//! three genres, one image sized for the requested width), four rows, 10 items a row. No cast,
//! backdrop or hero fields exist in this schema at all. Everything else comes from `shared`.
//!
//! # Layout
//! - [`surface`]: what `main` hands to `shared::run`.
//! - [`schema`]: the mobile `Title` card and `Homepage` (the shared rows, no hero).

pub mod schema;

use std::{net::SocketAddr, time::Duration};

use shared::{
    Surface,
    config::BinaryDefaults,
    profile::{ClientProfile, RowKind::*},
};

/// The mobile binary as the shared core runs it.
pub fn surface() -> Surface {
    Surface::new::<schema::Title, schema::Homepage>(
        ("bff-mobile", env!("CARGO_PKG_VERSION")),
        defaults,
        EXAMPLE_QUERY,
    )
}

/// The mobile homepage query GraphiQL opens with (compact cards, one poster for a 171-pt slot on
/// a 2x screen); the README's mobile example is the same query on one line (a test compares
/// them).
pub const EXAMPLE_QUERY: &str = r#"{
  homepage {
    rows {
      kind
      heading
      items {
        rank
        progress { fraction }
        title { id name synopsis genres image(width: 171, dpr: 2) { url width } }
      }
    }
  }
}
"#;

/// Mobile defaults: 127.0.0.1:4001, four rows of 10, synopsis ≤ 140 characters, ≤ 3 genres,
/// 600 ms request budget (mobile networks leave less time for the server).
pub fn defaults() -> BinaryDefaults {
    let rows = vec![ContinueWatching, MyList, Top10, Recommended];
    BinaryDefaults {
        listen: SocketAddr::from(([127, 0, 0, 1], 4001)),
        profile: ClientProfile::new(rows, 10).trimmed(140, 3),
        request_budget: Duration::from_millis(600),
    }
}
