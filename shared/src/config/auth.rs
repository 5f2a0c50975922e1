//! Token verification settings (`auth.*`, `[[auth.issuers]]`): the development HS256 secret, the
//! identity providers and their key sets, the maturity claim and the scopes mutations require.
//! Only the settings live here; verifying tokens is `crate::auth`'s.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Invalid, Secret, check_url, duration, invalid};

/// Token verification (`auth.*`): identity providers' JWKS-signed tokens (`[[auth.issuers]]`), and
/// HS256 with a shared secret for development.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Shared HS256 secret (development). Unset, and no issuers: every bearer token is rejected,
    /// anonymous requests work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<Secret>,
    /// Required `iss` claim of HS256 tokens, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required audience of HS256 tokens, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// Identity providers whose tokens are accepted, each with its own key set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerSettings>,
    /// A claim that caps the maturity rating of what the viewer is shown (e.g. `max_rating` with
    /// a value such as `"PG"` or an age such as `13`); titles above it are hidden everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maturity_claim: Option<String>,
    /// Scope each mutation requires, by field name; a token without it gets `FORBIDDEN` naming
    /// the scope. Scopes come from the `scope` claim (space separated) or `scp` (an array).
    pub mutation_scopes: BTreeMap<String, String>,
    /// Scope each subscription field requires, by field name (`auth.subscription_scopes`, e.g.
    /// `{ continueWatching = "history:read" }`); none by default. A token without it gets an
    /// `error` message with `FORBIDDEN` naming the scope.
    pub subscription_scopes: BTreeMap<String, String>,
    /// Most bytes of one document read from an identity provider (`auth.max_jwks_bytes`): the
    /// OpenID discovery document, the JWKS, a `jwks_file`. Larger ones are abandoned while
    /// reading (the keys held are kept, the failure logged): a provider's key set is a few
    /// kilobytes, and a compromised or broken one must not be able to fill memory.
    pub max_jwks_bytes: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            issuers: Vec::new(),
            maturity_claim: None,
            mutation_scopes: [
                ("addToMyList", "mylist:write"),
                ("removeFromMyList", "mylist:write"),
                ("reportProgress", "progress:write"),
            ]
            .into_iter()
            .map(|(m, s)| (m.to_owned(), s.to_owned()))
            .collect(),
            subscription_scopes: BTreeMap::new(),
            max_jwks_bytes: 1024 * 1024,
        }
    }
}

// Two checks rather than one: `Settings::validate` runs the rate limits' between them, where
// they stood when all checks were one function, so a config with several mistakes reports
// the same one first.
impl AuthSettings {
    /// Checks the key-set size bound and each identity provider.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_jwks_bytes) {
            return Err(invalid(
                "auth.max_jwks_bytes",
                "must be between 1024 and 67108864 (64 MiB); a key set is a few kilobytes".into(),
            ));
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            let key = format!("auth.issuers[{i}]");
            check_url(&iss.issuer).map_err(|m| invalid(&format!("{key}.issuer"), m))?;
            if let Some(u) = &iss.jwks_url {
                check_url(u).map_err(|m| invalid(&format!("{key}.jwks_url"), m))?;
            }
            if iss.jwks_url.is_some() && iss.jwks_file.is_some() {
                return Err(invalid(&key, "set jwks_url or jwks_file, not both".into()));
            }
            if iss.audiences.is_empty() {
                return Err(invalid(
                    &format!("{key}.audiences"),
                    "name at least one audience: a token meant for another service must not be accepted here".into(),
                ));
            }
            if iss.algorithms.is_empty() {
                return Err(invalid(
                    &format!("{key}.algorithms"),
                    "must not be empty".into(),
                ));
            }
            for a in &iss.algorithms {
                if !ISSUER_ALGORITHMS.contains(&a.as_str()) {
                    return Err(invalid(
                        &format!("{key}.algorithms"),
                        format!(
                            "`{a}` is not an asymmetric JWS algorithm (one of {})",
                            ISSUER_ALGORITHMS.join(", ")
                        ),
                    ));
                }
            }
            if self.issuers[..i].iter().any(|o| o.issuer == iss.issuer) {
                return Err(invalid(&format!("{key}.issuer"), "listed twice".into()));
            }
        }
        Ok(())
    }

    /// Checks the HS256 secret's length.
    pub(super) fn validate_hs256_secret(&self) -> Result<(), Invalid> {
        if matches!(&self.hs256_secret, Some(s) if s.expose().len() < 16) {
            return Err(invalid(
                "auth.hs256_secret",
                "must be at least 16 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// One identity provider (`[[auth.issuers]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The provider's issuer URL, exactly as its tokens' `iss` claim says it (e.g.
    /// `https://id.example.com/`).
    pub issuer: String,
    /// Where its key set is; unset (and no `jwks_file`): found through the issuer's OpenID
    /// discovery document (`<issuer>/.well-known/openid-configuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A key set on disk instead of a URL (re-read on every refresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Audiences accepted (a token's `aud`, a string or an array, must hold one of them).
    pub audiences: Vec<String>,
    /// Algorithms accepted from this provider; a key is only ever used with the algorithms its
    /// own type allows (never the token's say-so alone).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// How often the key set is fetched again.
    #[serde(with = "duration", default = "default_jwks_refresh")]
    pub refresh: Duration,
    /// CA certificates (PEM) for an `https://` key-set or discovery URL signed by a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

/// The asymmetric algorithms an issuer may allow.
pub const ISSUER_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
