//! `--demo`: the fixture backends in-process on ephemeral ports, the BFF pointed at them, the
//! fixtures' identity provider as the one issuer it trusts (RS256 tokens verified against its
//! JWKS, found through its discovery document, exactly as with a real provider), and a ready-made
//! token for user `u1`, so a newcomer sees a personalized homepage with one command.

use std::time::Duration;

use bff_fixtures::{FixtureOptions, Fixtures, idp};

use crate::{
    config::{BackendsSettings, IssuerSettings, Settings},
    upstream::BackendId,
};

/// User the demo token is for.
pub(crate) const DEMO_USER: &str = "u1";
/// Demo token lifetime: long enough for an afternoon of exploring.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Why demo mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The event bus could not be set up.
    #[error(transparent)]
    Bus(#[from] crate::events::EventsInitError),
    /// The fixtures' progress consumer did not start.
    #[error("cannot start the progress consumer: {0}")]
    Events(String),
    /// The fixtures did not start.
    #[error("cannot start the fixture backends: {0}")]
    Fixtures(#[from] bff_fixtures::FixtureError),
    /// The token could not be signed.
    #[error(transparent)]
    Sign(#[from] idp::IdpError),
}

/// A running demo environment; the fixtures stop when it is dropped or stopped.
pub struct Demo {
    /// The in-process fixture backends.
    pub fixtures: Fixtures,
    /// A token for [`DEMO_USER`].
    pub token: String,
    /// The bus the fixtures publish on and the BFF subscribes to (in-process unless `events.url`
    /// is set), with the continue-watching consumer running.
    pub events: std::sync::Arc<dyn crate::events::EventBus>,
    /// The rewrite of the settings to use the fixtures, applied again to each reloaded config.
    pub rewrite: crate::server::SettingsRewrite,
}

/// Makes `settings` trust the fixtures' identity provider at `issuer` (found through its
/// discovery document), with its audience, RS256 and its maturity claim.
pub fn trust_fixture_idp(settings: &mut Settings, issuer: &str) {
    settings.auth.issuers = vec![IssuerSettings {
        issuer: issuer.to_owned(),
        jwks_url: None,
        jwks_file: None,
        audiences: vec![idp::AUDIENCE.to_owned()],
        algorithms: vec!["RS256".to_owned()],
        refresh: Duration::from_secs(600),
        ca_file: None,
    }];
    settings.auth.maturity_claim = Some("max_rating".to_owned());
}

/// Starts the fixtures and rewrites `settings` to use them and to trust their identity provider.
pub async fn start(settings: &mut Settings) -> Result<Demo, DemoError> {
    let fixtures = Fixtures::start(FixtureOptions::default()).await?;
    let backends = BackendsSettings::at(|b| fixtures.url(fixture_backend(b)));
    let issuer = fixtures.idp().issuer().to_owned();
    let rewrite = std::sync::Arc::new(move |settings: &mut Settings| {
        settings.backends = backends.clone();
        settings.auth.hs256_secret = None;
        trust_fixture_idp(settings, &issuer);
    });
    rewrite(settings);
    let token = fixtures.idp().token(
        DEMO_USER,
        idp::DEFAULT_SCOPES,
        serde_json::Map::new(),
        DEMO_TOKEN_TTL,
    )?;
    let events = crate::events::from_settings(&settings.events, "bff-demo")?;
    fixtures.control().live().attach(events.clone());
    fixtures
        .control()
        .live()
        .start_progress_consumer(Duration::ZERO)
        .await
        .map_err(DemoError::Events)?;
    Ok(Demo {
        fixtures,
        token,
        events,
        rewrite,
    })
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
