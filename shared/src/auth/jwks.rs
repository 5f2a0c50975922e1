//! One identity provider's signing keys: its JWKS, from a URL, from its OpenID discovery document,
//! or from a file; fetched at start and refreshed in the background; fetched once more when a
//! token names a `kid` the set does not hold, as right after a rotation — at most once per
//! [`MIN_REFETCH`], so made-up kids cannot make the BFF hammer the provider.
//!
//! A key is used only with the algorithms its own type allows ([`key_algorithms`]: the JWK's
//! `alg` when it names one, else its family — RSA keys RS/PS, P-256 keys ES256, Ed25519 keys
//! EdDSA), intersected with the issuer's allow-list; the token's `alg` merely has to be among
//! them. Symmetric (`oct`) keys in a JWKS are never used, so an RSA public key can never serve as
//! an HMAC secret ("alg confusion").
//!
//! Every document read (discovery, JWKS, file) is bounded by `auth.max_jwks_bytes`: a declared
//! `Content-Length` over it is refused before the body is read, and the body is read chunk by
//! chunk and abandoned (the connection dropped) as soon as it passes the bound, so a provider
//! that answers with a huge document costs at most the bound in memory. A refused document is a
//! failed fetch like any other: logged once per outage, and the keys held are kept.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::config::IssuerSettings;

/// Least time between two fetches a token's unknown `kid` may trigger: a flood of made-up kids
/// must not become a flood of requests to the provider.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(30);
/// Retry period while the key set has never loaded.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(5);
/// Longest one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key set comes from.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Discovery(String),
    File(PathBuf),
}

/// A usable key and the algorithms it may verify.
struct Entry {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one fetch.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Entry>>,
    /// Keys without a `kid`: usable only by tokens without one, and only when unambiguous.
    unnamed: Vec<Arc<Entry>>,
}

/// The algorithms a JWK may verify, before the issuer's allow-list.
pub(crate) fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Vec::new();
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric keys and curves we cannot verify.
        _ => Vec::new(),
    };
    match jwk.common.key_algorithm.map(Algorithm::try_from) {
        Some(Ok(named)) => family.into_iter().filter(|a| *a == named).collect(),
        // A key that names an algorithm we do not know is not used at all.
        Some(Err(_)) => Vec::new(),
        None => family,
    }
}

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{0}")]
    Http(String),
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("not a JWKS: {0}")]
    Parse(String),
    #[error("the discovery document has no jwks_uri")]
    NoJwksUri,
    #[error("{0}: larger than auth.max_jwks_bytes ({1} bytes); abandoned")]
    TooLarge(String, usize),
}

/// One issuer: its settings, its keys, and how to fetch them.
pub(crate) struct Issuer {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    refresh: Duration,
    /// `auth.max_jwks_bytes`: the most bytes of one document read.
    max_bytes: usize,
    source: Source,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<Keys>>>,
    /// Held across a fetch, so concurrent askers share one.
    fetching: tokio::sync::Mutex<()>,
    /// When a token's unknown kid last caused a fetch.
    last_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When a token arriving before any key set loaded last caused a fetch (a budget of its
    /// own, so tokens during an outage at start cannot delay the fetch a rotation needs later).
    last_cold_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Whether the current outage was logged (one line per outage, not per refresh).
    failing: AtomicBool,
    /// The last fetch error, for the admin readiness detail.
    last_error: RwLock<Option<String>>,
}

impl Issuer {
    pub(crate) fn new(s: &IssuerSettings, max_bytes: usize) -> Result<Arc<Self>, String> {
        let source = match (&s.jwks_url, &s.jwks_file) {
            (Some(url), _) => Source::Url(url.clone()),
            (None, Some(file)) => Source::File(file.clone()),
            (None, None) => Source::Discovery(format!(
                "{}/.well-known/openid-configuration",
                s.issuer.trim_end_matches('/')
            )),
        };
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("bff/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            http = http.tls_certs_only(certs);
        }
        let algorithms = s
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .collect();
        Ok(Arc::new(Self {
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            algorithms,
            refresh: s.refresh,
            max_bytes,
            source,
            http: http.build().map_err(|e| e.to_string())?,
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            last_kid_fetch: tokio::sync::Mutex::new(None),
            last_cold_fetch: tokio::sync::Mutex::new(None),
            failing: AtomicBool::new(false),
            last_error: RwLock::new(None),
        }))
    }

    /// Whether a key set was ever loaded.
    pub(crate) fn loaded(&self) -> bool {
        self.keys.read().is_some()
    }

    /// Keys held now, and the last fetch error: for the admin readiness detail.
    pub(crate) fn status(&self) -> (usize, Option<String>) {
        let keys = self
            .keys
            .read()
            .as_ref()
            .map_or(0, |k| k.by_kid.len() + k.unnamed.len());
        (keys, self.last_error.read().clone())
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, FetchError> {
        let text = match &self.source {
            // A small local file, read in place: not worth a blocking-pool round trip.
            Source::File(path) => self.read_file(path)?,
            Source::Url(url) => self.get(url).await?,
            Source::Discovery(url) => {
                let doc: serde_json::Value = serde_json::from_str(&self.get(url).await?)
                    .map_err(|e| FetchError::Parse(format!("discovery document: {e}")))?;
                let jwks = doc["jwks_uri"].as_str().ok_or(FetchError::NoJwksUri)?;
                self.get(jwks).await?
            }
        };
        serde_json::from_str(&text).map_err(|e| FetchError::Parse(e.to_string()))
    }

    async fn get(&self, url: &str) -> Result<String, FetchError> {
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(crate::error::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(FetchError::Http(format!("{url}: HTTP {}", resp.status())));
        }
        let too_large = || FetchError::TooLarge(url.to_owned(), self.max_bytes);
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        // Chunk by chunk: a body without a length (or lying about it) is abandoned as soon as
        // it passes the bound, never held whole.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Http(crate::error::error_chain(&e)))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| FetchError::Parse(format!("{url}: not UTF-8")))
    }

    /// A key-set file, at most `max_bytes` of it (one byte more is read to tell).
    fn read_file(&self, path: &std::path::Path) -> Result<String, FetchError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| FetchError::File(path.into(), e))?;
        let mut text = String::new();
        file.take(self.max_bytes as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| FetchError::File(path.into(), e))?;
        if text.len() > self.max_bytes {
            return Err(FetchError::TooLarge(
                path.display().to_string(),
                self.max_bytes,
            ));
        }
        Ok(text)
    }

    /// Fetches the key set now and installs it; a failure keeps the keys held.
    async fn load(&self) -> bool {
        match self.fetch_jwks().await {
            Ok(set) => {
                let mut keys = Keys::default();
                for jwk in &set.keys {
                    let algorithms: Vec<Algorithm> = key_algorithms(jwk)
                        .into_iter()
                        .filter(|a| self.algorithms.contains(a))
                        .collect();
                    if algorithms.is_empty() {
                        continue;
                    }
                    let Ok(key) = DecodingKey::from_jwk(jwk) else {
                        continue;
                    };
                    let entry = Arc::new(Entry { key, algorithms });
                    match &jwk.common.key_id {
                        Some(kid) => {
                            keys.by_kid.insert(kid.clone(), entry);
                        }
                        None => keys.unnamed.push(entry),
                    }
                }
                let count = keys.by_kid.len() + keys.unnamed.len();
                *self.keys.write() = Some(Arc::new(keys));
                *self.last_error.write() = None;
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(issuer = %self.issuer, keys = count, "identity provider keys loaded again");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = count, "identity provider keys loaded");
                }
                true
            }
            Err(e) => {
                *self.last_error.write() = Some(e.to_string());
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(issuer = %self.issuer, error = %e, "cannot load the identity provider's keys; keeping the ones held");
                }
                false
            }
        }
    }

    /// A fetch now (one at a time).
    async fn fetch(&self) {
        let _one = self.fetching.lock().await;
        self.load().await;
    }

    /// A fetch a token asked for, unless one with the same `budget` ran within [`MIN_REFETCH`]
    /// (the caller then uses what that one got).
    async fn fetch_asked(&self, budget: &tokio::sync::Mutex<Option<Instant>>) {
        let mut last = budget.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch().await;
    }

    /// Keeps the key set fresh until the issuer is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(issuer) = weak.upgrade() else { return };
                issuer.fetch().await;
                let wait = if issuer.loaded() {
                    issuer.refresh
                } else {
                    FIRST_LOAD_RETRY.min(issuer.refresh)
                };
                drop(issuer);
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// The key for a token's `kid` and `alg`: `Ok(None)` when none fits (an unknown kid first
    /// triggers one rate-limited refetch); `Err(())` while no key set was ever loaded.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<DecodingKey>, ()> {
        let find = |keys: &Keys| -> Option<Arc<Entry>> {
            let entry = match kid {
                Some(kid) => keys.by_kid.get(kid).cloned(),
                // Without a kid, only an unambiguous key: exactly one that can verify `alg`.
                None => {
                    let mut fitting = keys
                        .by_kid
                        .values()
                        .chain(&keys.unnamed)
                        .filter(|e| e.algorithms.contains(&alg));
                    match (fitting.next(), fitting.next()) {
                        (Some(one), None) => Some(one.clone()),
                        _ => None,
                    }
                }
            };
            entry.filter(|e| e.algorithms.contains(&alg))
        };
        let held = self.keys.read().clone();
        let Some(held) = held else {
            // Never loaded: try once (rate-limited), then say so.
            self.fetch_asked(&self.last_cold_fetch).await;
            let held = self.keys.read().clone().ok_or(())?;
            return Ok(find(&held).map(|e| e.key.clone()));
        };
        if let Some(e) = find(&held) {
            return Ok(Some(e.key.clone()));
        }
        let unknown_kid = kid.is_some_and(|k| !held.by_kid.contains_key(k));
        if !unknown_kid {
            return Ok(None);
        }
        self.fetch_asked(&self.last_kid_fetch).await;
        let held = self.keys.read().clone().ok_or(())?;
        Ok(find(&held).map(|e| e.key.clone()))
    }
}
