//! Identity: verifies `Authorization: Bearer <JWT>` (HS256; `exp`/`nbf` always, `iss`/`aud` when
//! configured, `aud` as a string or an array; `iat` not in the future) into a [`Viewer`]. No header
//! → anonymous; a header that does not verify is an error (never silently anonymous); two
//! `Authorization` headers are ambiguous and refused; a token whose `crit` header names anything
//! is refused (RFC 7515 §4.1.11: this verifier understands no extensions); a subject that is not a
//! valid user id ([`UserId`]) is refused before any backend sees it. With no key configured every
//! token is rejected.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{config::AuthSettings, domain::UserId};

/// Who is asking: the verified subject of the request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// Verified user id.
    pub user_id: UserId,
}

/// The subject (common name) of the client certificate the connection's TLS handshake verified
/// against `tls.client_ca_file`; on every request of that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub String);

/// The authentication stage's verdict on one request, on its extensions: a verified viewer, or
/// `None` for an anonymous request. Only the pipeline's authentication stage inserts it.
#[derive(Debug, Clone, Default)]
pub struct Identity(pub Option<std::sync::Arc<Viewer>>);

/// Why a bearer token was rejected. The `Display` text is safe to show clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
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
    /// Signature, format, issuer, audience or not-before check failed.
    #[error("the token is invalid")]
    Invalid,
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl AuthError {
    /// The HTTP status of a request refused for this: `400` for an ambiguous request, `401`
    /// for a token that does not verify.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Duplicate => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The error code of that refusal.
    pub fn code(&self) -> crate::error::ErrorCode {
        match self {
            Self::Duplicate => crate::error::ErrorCode::BadUserInput,
            _ => crate::error::ErrorCode::Unauthenticated,
        }
    }
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
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 5;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies tokens with the configured key.
#[derive(Clone)]
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    /// From config.
    pub fn new(settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
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
        let key = settings
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        Self { key, validation }
    }

    /// The request's `Authorization` header, checked as [`Authenticator::authenticate`] does.
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Viewer>, AuthError> {
        let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(AuthError::Duplicate);
        }
        self.authenticate(first.map(http::HeaderValue::as_bytes))
    }

    /// The viewer a verified client certificate names (its subject must be a valid user id).
    pub fn viewer_from_certificate(&self, cert: &ClientCert) -> Result<Viewer, AuthError> {
        let user_id = UserId::from_verified_subject(&cert.0).ok_or(AuthError::InvalidSubject)?;
        Ok(Viewer { user_id })
    }

    /// `Ok(None)` for no header (anonymous), `Ok(Some)` for a valid token, `Err` otherwise.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Option<Viewer>, AuthError> {
        let Some(raw) = header else { return Ok(None) };
        let raw = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = raw.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        let data = jsonwebtoken::decode::<Claims>(token.trim(), key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        // No JWS extension is understood here, so any critical one makes the token unusable.
        if data.header.crit.is_some() {
            return Err(AuthError::Invalid);
        }
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > now_secs().saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::Invalid);
        }
        let user_id =
            UserId::from_verified_subject(&data.claims.sub).ok_or(AuthError::InvalidSubject)?;
        Ok(Some(Viewer { user_id }))
    }
}

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

    /// A token for `sub` valid for `ttl_secs` from now.
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
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Secret;

    fn settings() -> AuthSettings {
        AuthSettings {
            hs256_secret: Some(Secret::new("0123456789abcdef0123")),
            issuer: None,
            audience: None,
        }
    }

    #[test]
    fn no_header_is_anonymous_and_a_good_token_is_a_viewer() {
        let auth = Authenticator::new(&settings());
        assert_eq!(auth.authenticate(None), Ok(None));
        let token = TokenSigner::from_settings(&settings())
            .unwrap()
            .sign("u7", 60)
            .unwrap();
        let viewer = auth
            .authenticate(Some(format!("Bearer {token}").as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(viewer.user_id.as_str(), "u7");
    }

    #[test]
    fn bad_tokens_are_rejected_with_the_right_reason() {
        let auth = Authenticator::new(&settings());
        let signer = TokenSigner::from_settings(&settings()).unwrap();
        let expired = signer.sign_with("u1", 1_000, 2_000, None).unwrap();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {expired}").as_bytes())),
            Err(AuthError::Expired)
        );
        let far = u64::MAX / 2;
        let not_yet = signer.sign_with("u1", 0, far, Some(far - 1)).unwrap();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {not_yet}").as_bytes())),
            Err(AuthError::Invalid)
        );
        let other = TokenSigner::new(b"another-secret-of-16+", None, None)
            .sign("u1", 60)
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {other}").as_bytes())),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authenticate(Some(b"Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer ")),
            Err(AuthError::Malformed)
        );
        let unconfigured = Authenticator::new(&AuthSettings::default());
        let good = signer.sign("u1", 60).unwrap();
        assert_eq!(
            unconfigured.authenticate(Some(format!("Bearer {good}").as_bytes())),
            Err(AuthError::NotConfigured)
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let mut s = settings();
        s.issuer = Some("https://id.example".into());
        s.audience = Some("bff".into());
        let auth = Authenticator::new(&s);
        let right = TokenSigner::from_settings(&s)
            .unwrap()
            .sign("u1", 60)
            .unwrap();
        assert!(
            auth.authenticate(Some(format!("Bearer {right}").as_bytes()))
                .unwrap()
                .is_some()
        );
        let wrong = TokenSigner::from_settings(&settings())
            .unwrap()
            .sign("u1", 60)
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {wrong}").as_bytes())),
            Err(AuthError::Invalid)
        );
    }
}
