//! Identity: turns `Authorization: Bearer <JWT>` into a verified [`Viewer`] — the subject, its
//! scopes and the claims that restrict what it is shown — and nothing else does.
//!
//! Tokens from identity providers (`[[auth.issuers]]`: RS256, PS256, ES256, EdDSA, …) are verified
//! against each provider's JWKS ([`jwks`]): the token's `iss` picks the provider (so the same
//! `kid` at two providers never mixes), its `kid` the key, and the key's own type the algorithms
//! it may verify. HS256 with `auth.hs256_secret` stays for development. Every token: `exp` and
//! `nbf` with `auth.leeway` of skew, `iat` not in the future, `aud` (a string or an array) holding
//! a configured audience, no `crit` header (RFC 7515 §4.1.11: this verifier understands no
//! extensions), a subject that is a valid user id ([`UserId`]). No header → anonymous; a header
//! that does not verify is an error (never silently anonymous); two `Authorization` headers are
//! ambiguous and refused; a provider whose keys never loaded makes its tokens `503`, not `401`.

pub(crate) mod jwks;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{config::AuthSettings, domain::UserId};

/// Who is asking: the verified subject of the request's token, and what the token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// Verified user id.
    pub user_id: UserId,
    /// Scopes the token grants (`scope`, space separated, or `scp`, an array).
    pub scopes: BTreeSet<String>,
    /// The highest maturity rating this viewer may be shown, as an age (from
    /// `auth.maturity_claim`); `None`: no ceiling.
    pub max_maturity: Option<u8>,
    /// The token as received, for backends configured to get it (`forward_token`).
    pub token: Option<Arc<str>>,
    /// When the token expires (its `exp`, seconds since the Unix epoch); `None` for identities
    /// without one (a client certificate). A subscription ends then (`4401`).
    pub expires_at: Option<u64>,
}

impl Viewer {
    /// What backend calls made for this viewer carry of it.
    pub fn subject(&self) -> crate::domain::Subject {
        crate::domain::Subject {
            user: self.user_id.clone(),
            scopes: (!self.scopes.is_empty()).then(|| {
                Arc::from(
                    self.scopes
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }),
            token: self.token.clone(),
        }
    }

    /// A viewer with no scopes, ceiling or token (a verified client certificate; tests).
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id,
            scopes: BTreeSet::new(),
            max_maturity: None,
            token: None,
            expires_at: None,
        }
    }

    /// Whether the token grants `scope`.
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// The subject (common name) of the client certificate the connection's TLS handshake verified
/// against `tls.client_ca_file`; on every request of that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert(pub String);

/// The authentication stage's verdict on one request, on its extensions: a verified viewer, or
/// `None` for an anonymous request. Only the pipeline's authentication stage inserts it.
#[derive(Debug, Clone, Default)]
pub struct Identity(pub Option<Arc<Viewer>>);

/// Why a bearer token was rejected. The `Display` text is safe to show clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// More than one Authorization header: which one counts would be a guess (→ `400`).
    #[error("send one Authorization header, not several")]
    Duplicate,
    /// The Authorization header is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    /// The token's subject is not a valid user id.
    #[error("the token's subject is not a valid user id")]
    InvalidSubject,
    /// No verification key is configured, so no token can be accepted.
    #[error("this server accepts no bearer tokens")]
    NotConfigured,
    /// Expired.
    #[error("the token has expired")]
    Expired,
    /// Signature, format, issuer, audience, algorithm or time check failed.
    #[error("the token is invalid")]
    Invalid,
    /// The token's identity provider has no keys loaded yet: not the client's fault (→ `503`).
    #[error("the identity provider's keys are not available; try again shortly")]
    KeysUnavailable,
}

impl AuthError {
    /// The HTTP status of a request refused for this: `400` for an ambiguous request, `503`
    /// while keys are unavailable, `401` for a token that does not verify.
    pub(crate) fn status(&self) -> http::StatusCode {
        match self {
            Self::Duplicate => http::StatusCode::BAD_REQUEST,
            Self::KeysUnavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The error code of that refusal.
    pub(crate) fn code(&self) -> crate::error::ErrorCode {
        match self {
            Self::Duplicate => crate::error::ErrorCode::BadUserInput,
            Self::KeysUnavailable => crate::error::ErrorCode::BackendUnavailable,
            _ => crate::error::ErrorCode::Unauthenticated,
        }
    }
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// `scp`: an array of scopes, or (some providers) one space-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Many(Vec<String>),
    One(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing)]
    scp: Option<ScopeList>,
    /// Everything else, for `auth.maturity_claim`.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Only the issuer, read before any key is chosen (the signature is checked afterwards).
#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Maturity ratings as the age they are meant for; an unknown label is treated as adults-only.
pub(crate) fn maturity_age(rating: &str) -> u8 {
    match rating.trim().to_ascii_uppercase().as_str() {
        "G" | "TV-Y" | "TV-G" | "U" | "ALL" => 0,
        "TV-Y7" | "7" => 7,
        "PG" | "TV-PG" => 10,
        "PG-13" | "12" | "12A" => 13,
        "TV-14" | "14" => 14,
        "R" | "TV-MA" | "15" | "16" => 17,
        "NC-17" | "18" => 18,
        _ => u8::MAX,
    }
}

/// The ceiling a maturity claim sets: a rating label, or an age as a number or numeric string.
fn ceiling(value: &serde_json::Value) -> Option<u8> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(|a| u8::try_from(a).unwrap_or(u8::MAX)),
        serde_json::Value::String(s) => {
            Some(s.trim().parse::<u8>().unwrap_or_else(|_| maturity_age(s)))
        }
        _ => None,
    }
}

/// HS256 with the shared secret (development).
struct Hs256 {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens.
pub(crate) struct Authenticator {
    hs256: Option<Hs256>,
    issuers: Vec<Arc<jwks::Issuer>>,
    leeway: u64,
    maturity_claim: Option<String>,
}

impl Authenticator {
    /// From config. Identity providers' keys load in the background ([`Self::start`]).
    pub(crate) fn new(settings: &AuthSettings) -> Self {
        let leeway = settings.leeway.as_secs();
        let hs256 = settings.hs256_secret.as_ref().map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_nbf = true;
            validation.leeway = leeway;
            // A configured issuer/audience must be present, not merely correct when present.
            let mut required = vec!["exp", "sub"];
            required.extend(settings.issuer.as_ref().map(|_| "iss"));
            required.extend(settings.audience.as_ref().map(|_| "aud"));
            validation.set_required_spec_claims(&required);
            if let Some(iss) = &settings.issuer {
                validation.set_issuer(&[iss]);
            }
            match &settings.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            Hs256 {
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
                validation,
            }
        });
        let max_jwks_bytes = settings.max_jwks_bytes;
        let issuers = settings
            .issuers
            .iter()
            .filter_map(|s| match jwks::Issuer::new(s, max_jwks_bytes) {
                Ok(i) => Some(i),
                Err(e) => {
                    // Config validation checked the shape; a CA file that cannot be read is
                    // reported here and the issuer's tokens are refused.
                    tracing::error!(issuer = %s.issuer, error = %e, "identity provider disabled");
                    None
                }
            })
            .collect();
        Self {
            hs256,
            issuers,
            leeway,
            maturity_claim: settings.maturity_claim.clone(),
        }
    }

    /// Starts fetching and refreshing every identity provider's keys (call inside the runtime).
    pub(crate) fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers.iter().map(jwks::Issuer::start).collect()
    }

    /// Whether every identity provider's keys have loaded at least once (readiness).
    pub(crate) fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.loaded())
    }

    /// Each identity provider's state, for the admin readiness detail.
    pub(crate) fn issuer_status(&self) -> Vec<serde_json::Value> {
        self.issuers
            .iter()
            .map(|i| {
                let (keys, error) = i.status();
                serde_json::json!({
                    "issuer": i.issuer,
                    "loaded": i.loaded(),
                    "keys": keys,
                    "lastError": error,
                })
            })
            .collect()
    }

    /// The request's `Authorization` header, checked as [`Authenticator::authenticate`] does.
    pub(crate) async fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Viewer>, AuthError> {
        let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(AuthError::Duplicate);
        }
        self.authenticate(first.map(http::HeaderValue::as_bytes))
            .await
    }

    /// The viewer a verified client certificate names (its subject must be a valid user id).
    pub(crate) fn viewer_from_certificate(&self, cert: &ClientCert) -> Result<Viewer, AuthError> {
        let user_id = UserId::from_verified_subject(&cert.0).ok_or(AuthError::InvalidSubject)?;
        Ok(Viewer::new(user_id))
    }

    /// `Ok(None)` for no header (anonymous), `Ok(Some)` for a valid token, `Err` otherwise.
    pub(crate) async fn authenticate(
        &self,
        header: Option<&[u8]>,
    ) -> Result<Option<Viewer>, AuthError> {
        let Some(raw) = header else { return Ok(None) };
        let raw = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = raw.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        // No JWS extension is understood here, so any critical one makes the token unusable.
        if header.crit.is_some() {
            return Err(AuthError::Invalid);
        }
        let claims = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let hs = self.hs256.as_ref().ok_or(if self.issuers.is_empty() {
                    AuthError::NotConfigured
                } else {
                    AuthError::Invalid
                })?;
                decode(token, &hs.key, &hs.validation)?
            }
            alg => {
                self.verify_issued(token, header.kid.as_deref(), alg)
                    .await?
            }
        };
        if claims
            .iat
            .is_some_and(|iat| iat > now_secs().saturating_add(self.leeway))
        {
            return Err(AuthError::Invalid);
        }
        let user_id =
            UserId::from_verified_subject(&claims.sub).ok_or(AuthError::InvalidSubject)?;
        let mut scopes: BTreeSet<String> = claims
            .scope
            .iter()
            .flat_map(|s| s.split_ascii_whitespace())
            .map(str::to_owned)
            .collect();
        match claims.scp {
            Some(ScopeList::Many(list)) => scopes.extend(list),
            Some(ScopeList::One(s)) => scopes.extend(s.split_ascii_whitespace().map(str::to_owned)),
            None => {}
        }
        let max_maturity = self
            .maturity_claim
            .as_ref()
            .and_then(|c| claims.other.get(c))
            .and_then(ceiling);
        Ok(Some(Viewer {
            user_id,
            scopes,
            max_maturity,
            token: Some(Arc::from(token)),
            expires_at: Some(claims.exp),
        }))
    }

    /// A token signed by an identity provider: its `iss` picks the provider, its `kid` the key.
    async fn verify_issued(
        &self,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Claims, AuthError> {
        if self.issuers.is_empty() {
            return Err(if self.hs256.is_some() {
                AuthError::Invalid
            } else {
                AuthError::NotConfigured
            });
        }
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssuerOnly>(token)
            .ok()
            .and_then(|c| c.iss)
            .ok_or(AuthError::Invalid)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(AuthError::Invalid)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::Invalid);
        }
        let key = issuer
            .key_for(kid, alg)
            .await
            .map_err(|()| AuthError::KeysUnavailable)?
            .ok_or(AuthError::Invalid)?;
        let mut validation = Validation::new(alg);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        decode(token, &key, &validation)
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })
}

/// Scopes [`TokenSigner`] grants: what the default `auth.mutation_scopes` require.
pub const DEFAULT_SCOPES: &str = "mylist:write progress:write";

/// Issues HS256 tokens: for `--demo`, tests and benchmarks. Production tokens come from the
/// identity provider.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign token: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

impl TokenSigner {
    /// Signs with `secret` and the configured issuer/audience.
    pub fn new(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
            issuer,
            audience,
        }
    }

    /// From the auth settings; `None` when no secret is configured.
    pub fn from_settings(settings: &AuthSettings) -> Option<Self> {
        let secret = settings.hs256_secret.as_ref()?;
        Some(Self::new(
            secret.expose().as_bytes(),
            settings.issuer.clone(),
            settings.audience.clone(),
        ))
    }

    /// A token for `sub` valid for `ttl_secs` from now, granting the scopes the default
    /// mutation requirements ask for (`mylist:write progress:write`).
    pub fn sign(&self, sub: &str, ttl_secs: u64) -> Result<String, SignError> {
        let now = now_secs();
        self.sign_with(sub, now, now.saturating_add(ttl_secs), None)
    }

    /// A token with explicit `iat`, `exp` and optional `nbf` (tests use it for expired/not-yet-valid cases).
    pub fn sign_with(
        &self,
        sub: &str,
        iat: u64,
        exp: u64,
        nbf: Option<u64>,
    ) -> Result<String, SignError> {
        let claims = Claims {
            sub: sub.to_owned(),
            exp,
            nbf,
            iat: Some(iat),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
            scope: Some(DEFAULT_SCOPES.to_owned()),
            scp: None,
            other: serde_json::Map::new(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

#[cfg(test)]
mod tests;
