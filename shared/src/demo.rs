//! `--demo`: the fixture backends in-process on ephemeral ports, the BFF pointed at them, a fresh
//! random signing secret and a ready-made token for user `u1`, so a newcomer sees a personalized
//! homepage with one command.

use bff_fixtures::{FixtureOptions, Fixtures};
use rand::RngCore;

use crate::{
    auth::{SignError, TokenSigner},
    config::{BackendsSettings, Secret, Settings},
    upstream::BackendId,
};

/// User the demo token is for.
pub const DEMO_USER: &str = "u1";
/// Demo token lifetime: long enough for an afternoon of exploring.
const DEMO_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// Why demo mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The fixtures did not start.
    #[error("cannot start the fixture backends: {0}")]
    Fixtures(#[from] bff_fixtures::FixtureError),
    /// The token could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// A running demo environment; the fixtures stop when it is dropped or stopped.
pub struct Demo {
    /// The in-process fixture backends.
    pub fixtures: Fixtures,
    /// A token for [`DEMO_USER`].
    pub token: String,
}

/// Starts the fixtures and rewrites `settings` to use them and a fresh random secret.
pub async fn start(settings: &mut Settings) -> Result<Demo, DemoError> {
    let fixtures = Fixtures::start(FixtureOptions::default()).await?;
    settings.backends = BackendsSettings::at(|b| fixtures.url(fixture_backend(b)));
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    settings.auth.hs256_secret = Some(Secret::new(secret));
    let signer = TokenSigner::from_settings(&settings.auth);
    let token = match signer {
        Some(s) => s.sign(DEMO_USER, DEMO_TOKEN_TTL_SECS)?,
        None => String::new(),
    };
    Ok(Demo { fixtures, token })
}

/// The fixtures' name for one of our backends (same names, separate types: the fixtures crate
/// plays other teams' services and shares no code with the BFF).
pub fn fixture_backend(b: BackendId) -> bff_fixtures::Backend {
    match b {
        BackendId::Profile => bff_fixtures::Backend::Profile,
        BackendId::ContinueWatching => bff_fixtures::Backend::ContinueWatching,
        BackendId::MyList => bff_fixtures::Backend::MyList,
        BackendId::Top10 => bff_fixtures::Backend::Top10,
        BackendId::NewReleases => bff_fixtures::Backend::NewReleases,
        BackendId::Catalog => bff_fixtures::Backend::Catalog,
        BackendId::Recommendations => bff_fixtures::Backend::Recommendations,
    }
}
