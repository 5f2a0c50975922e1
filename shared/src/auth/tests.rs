#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, time::Duration};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde_json::{Value, json};

use super::*;
use crate::config::{IssuerSettings, Secret};

fn settings() -> AuthSettings {
    AuthSettings {
        hs256_secret: Some(Secret::new("0123456789abcdef0123")),
        ..AuthSettings::default()
    }
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

#[tokio::test]
async fn no_header_is_anonymous_and_a_good_token_is_a_viewer() {
    let auth = Authenticator::new(&settings());
    assert_eq!(auth.authenticate(None).await, Ok(None));
    let token = TokenSigner::from_settings(&settings())
        .unwrap()
        .sign("u7", 60)
        .unwrap();
    let viewer = auth
        .authenticate(Some(&bearer(&token)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(viewer.user_id.as_str(), "u7");
    assert!(viewer.has_scope("mylist:write"));
    assert_eq!(viewer.token.as_deref(), Some(token.as_str()));
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_the_right_reason() {
    let auth = Authenticator::new(&settings());
    let signer = TokenSigner::from_settings(&settings()).unwrap();
    let expired = signer.sign_with("u1", 1_000, 2_000, None).unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&expired))).await,
        Err(AuthError::Expired)
    );
    let far = u64::MAX / 2;
    let not_yet = signer.sign_with("u1", 0, far, Some(far - 1)).unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&not_yet))).await,
        Err(AuthError::Invalid)
    );
    let other = TokenSigner::new(b"another-secret-of-16+", None, None)
        .sign("u1", 60)
        .unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&other))).await,
        Err(AuthError::Invalid)
    );
    assert_eq!(
        auth.authenticate(Some(b"Basic abc")).await,
        Err(AuthError::Malformed)
    );
    assert_eq!(
        auth.authenticate(Some(b"Bearer ")).await,
        Err(AuthError::Malformed)
    );
    let unconfigured = Authenticator::new(&AuthSettings::default());
    let good = signer.sign("u1", 60).unwrap();
    assert_eq!(
        unconfigured.authenticate(Some(&bearer(&good))).await,
        Err(AuthError::NotConfigured)
    );
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let mut s = settings();
    s.issuer = Some("https://id.example".into());
    s.audience = Some("bff".into());
    let auth = Authenticator::new(&s);
    let right = TokenSigner::from_settings(&s)
        .unwrap()
        .sign("u1", 60)
        .unwrap();
    assert!(
        auth.authenticate(Some(&bearer(&right)))
            .await
            .unwrap()
            .is_some()
    );
    let wrong = TokenSigner::from_settings(&settings())
        .unwrap()
        .sign("u1", 60)
        .unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&wrong))).await,
        Err(AuthError::Invalid)
    );
}

/// Reads a PKCS#8 PEM private key as an encoding key of one family.
type FromPem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

/// A signing key of one algorithm and its JWK.
struct TestKey {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

fn test_key(alg: Algorithm, kid: Option<&str>) -> TestKey {
    let (pair, encoding): (rcgen::KeyPair, FromPem) = match alg {
        Algorithm::RS256 | Algorithm::PS256 => (
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap(),
            EncodingKey::from_rsa_pem,
        ),
        Algorithm::ES256 => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            EncodingKey::from_ec_pem,
        ),
        Algorithm::EdDSA => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            EncodingKey::from_ed_pem,
        ),
        other => panic!("no test key for {other:?}"),
    };
    let encoding = encoding(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = if alg == Algorithm::EdDSA {
        // rcgen's PKCS#8 v2 carries the public key too, which `from_encoding_key` does not
        // expect: the JWK is written from the raw public key instead.
        serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "x": base64_url_bytes(pair.public_key_raw()),
        }))
        .unwrap()
    } else {
        Jwk::from_encoding_key(&encoding, alg).unwrap()
    };
    jwk.common.key_id = kid.map(str::to_owned);
    // Providers often leave `alg` out of their JWKS: the key's family must then decide.
    jwk.common.key_algorithm = None;
    TestKey { alg, encoding, jwk }
}

impl TestKey {
    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn write_jwks(path: &PathBuf, keys: &[&TestKey]) {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn temp_file(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "bff-jwks-{tag}-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn issuer(iss: &str, file: &std::path::Path, audiences: &[&str]) -> IssuerSettings {
    IssuerSettings {
        issuer: iss.to_owned(),
        jwks_url: None,
        jwks_file: Some(file.to_path_buf()),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        algorithms: ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec(),
        refresh: Duration::from_secs(3600),
        ca_file: None,
    }
}

fn claims(iss: &str, aud: Value) -> Value {
    let now = now_secs();
    json!({ "iss": iss, "aud": aud, "sub": "u9", "iat": now, "exp": now + 60, "scope": "a b" })
}

async fn loaded(auth: &Authenticator) {
    let _tasks = auth.start();
    for _ in 0..200 {
        if auth.ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("keys never loaded");
}

#[tokio::test]
async fn every_algorithm_verifies_against_its_jwks_key() {
    let file = temp_file("algs");
    let keys: Vec<TestKey> = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, alg)| test_key(alg, Some(&format!("k{i}"))))
    .collect();
    write_jwks(&file, &keys.iter().collect::<Vec<_>>());
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![issuer("https://idp.test/", &file, &["bff"])],
        maturity_claim: Some("max_rating".into()),
        ..AuthSettings::default()
    });
    loaded(&auth).await;
    for key in &keys {
        let mut c = claims("https://idp.test/", json!(["other", "bff"]));
        c["scp"] = json!(["c"]);
        c["max_rating"] = json!("PG-13");
        let v = auth
            .authenticate(Some(&bearer(&key.sign(c))))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.alg))
            .unwrap();
        assert_eq!(v.user_id.as_str(), "u9");
        assert_eq!(
            v.scopes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(v.max_maturity, Some(13));
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn the_algorithm_comes_from_the_key_never_from_the_token_alone() {
    let file = temp_file("confusion");
    let rsa = test_key(Algorithm::RS256, Some("rsa"));
    let ec = test_key(Algorithm::ES256, Some("ec"));
    write_jwks(&file, &[&rsa, &ec]);
    let mut only_rs = issuer("https://idp.test/", &file, &["bff"]);
    only_rs.algorithms = vec!["RS256".into()];
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![only_rs],
        ..AuthSettings::default()
    });
    loaded(&auth).await;
    let c = claims("https://idp.test/", json!("bff"));
    assert!(
        auth.authenticate(Some(&bearer(&rsa.sign(c.clone()))))
            .await
            .is_ok()
    );
    // HS256 "signed" with the RSA public key as the secret, naming the RSA key.
    let public = serde_json::to_vec(&rsa.jwk).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let forged = jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(&public)).unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&forged))).await,
        Err(AuthError::Invalid)
    );
    // A PS256 token (RSA, but not allowed by this issuer) and an ES256 key named for RS256.
    let ps = TestKey {
        alg: Algorithm::PS256,
        ..test_key(Algorithm::PS256, None)
    };
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("rsa".into());
    let ps_token = jsonwebtoken::encode(&header, &c, &ps.encoding).unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&ps_token))).await,
        Err(AuthError::Invalid)
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ec".into());
    let wrong_family = jsonwebtoken::encode(&header, &c, &rsa.encoding).unwrap();
    assert_eq!(
        auth.authenticate(Some(&bearer(&wrong_family))).await,
        Err(AuthError::Invalid)
    );
    // `alg: none` and garbage.
    let none = format!(
        "{}.{}.",
        base64_url(&json!({ "alg": "none", "typ": "JWT" })),
        base64_url(&c)
    );
    assert_eq!(
        auth.authenticate(Some(&bearer(&none))).await,
        Err(AuthError::Invalid)
    );
    assert_eq!(
        auth.authenticate(Some(b"Bearer a.b.c")).await,
        Err(AuthError::Invalid)
    );
    let _ = std::fs::remove_file(file);
}

fn base64_url(v: &Value) -> String {
    base64_url_bytes(&serde_json::to_vec(v).unwrap())
}

fn base64_url_bytes(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[tokio::test]
async fn issuers_are_told_apart_by_iss_even_with_the_same_kid() {
    let (fa, fb) = (temp_file("a"), temp_file("b"));
    let ka = test_key(Algorithm::ES256, Some("k1"));
    let kb = test_key(Algorithm::ES256, Some("k1"));
    write_jwks(&fa, &[&ka]);
    write_jwks(&fb, &[&kb]);
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![
            issuer("https://a.test/", &fa, &["web"]),
            issuer("https://b.test/", &fb, &["mobile"]),
        ],
        ..AuthSettings::default()
    });
    loaded(&auth).await;
    let ok = |t: String| {
        let auth = &auth;
        async move { auth.authenticate(Some(&bearer(&t))).await }
    };
    assert!(
        ok(ka.sign(claims("https://a.test/", json!("web"))))
            .await
            .is_ok()
    );
    assert!(
        ok(kb.sign(claims("https://b.test/", json!("mobile"))))
            .await
            .is_ok()
    );
    // B's key under A's name, A's audience at B, and an unknown issuer.
    assert_eq!(
        ok(kb.sign(claims("https://a.test/", json!("web")))).await,
        Err(AuthError::Invalid)
    );
    assert_eq!(
        ok(kb.sign(claims("https://b.test/", json!("web")))).await,
        Err(AuthError::Invalid)
    );
    assert_eq!(
        ok(ka.sign(claims("https://c.test/", json!("web")))).await,
        Err(AuthError::Invalid)
    );
    let _ = (std::fs::remove_file(fa), std::fs::remove_file(fb));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_key_is_fetched_once_for_its_unknown_kid() {
    let file = temp_file("rotate");
    let old = test_key(Algorithm::ES256, Some("old"));
    write_jwks(&file, &[&old]);
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![issuer("https://idp.test/", &file, &["bff"])],
        ..AuthSettings::default()
    });
    loaded(&auth).await;
    let c = claims("https://idp.test/", json!("bff"));
    assert!(
        auth.authenticate(Some(&bearer(&old.sign(c.clone()))))
            .await
            .is_ok()
    );
    // The provider rotates (both keys published) and signs with the new key at once: its
    // unknown kid fetches the set again.
    let new = test_key(Algorithm::ES256, Some("new"));
    write_jwks(&file, &[&old, &new]);
    assert!(
        auth.authenticate(Some(&bearer(&new.sign(c.clone()))))
            .await
            .is_ok()
    );
    assert!(
        auth.authenticate(Some(&bearer(&old.sign(c.clone()))))
            .await
            .is_ok()
    );
    // A flood of made-up kids right after is answered from what is held, without fetching
    // (the file is gone: a fetch would record an error).
    let made_up = test_key(Algorithm::ES256, Some("made-up"));
    std::fs::remove_file(&file).unwrap();
    for _ in 0..50 {
        assert_eq!(
            auth.authenticate(Some(&bearer(&made_up.sign(c.clone()))))
                .await,
            Err(AuthError::Invalid)
        );
    }
    assert!(
        auth.issuer_status()[0]["lastError"].is_null(),
        "no fetch happened"
    );
    assert!(
        auth.authenticate(Some(&bearer(&new.sign(c.clone()))))
            .await
            .is_ok()
    );
    // After MIN_REFETCH, an unknown kid may fetch again (and finds the file gone).
    tokio::time::advance(jwks::MIN_REFETCH + Duration::from_secs(1)).await;
    assert_eq!(
        auth.authenticate(Some(&bearer(&made_up.sign(c)))).await,
        Err(AuthError::Invalid)
    );
    assert!(auth.issuer_status()[0]["lastError"].is_string());
}

#[tokio::test(start_paused = true)]
async fn while_no_key_set_ever_loaded_tokens_are_unavailable_not_invalid() {
    let file = temp_file("down");
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![issuer("https://idp.test/", &file, &["bff"])],
        ..AuthSettings::default()
    });
    let _tasks = auth.start();
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(!auth.ready());
    let key = test_key(Algorithm::ES256, Some("k"));
    let token = key.sign(claims("https://idp.test/", json!("bff")));
    let err = auth.authenticate(Some(&bearer(&token))).await.unwrap_err();
    assert_eq!(
        (err.clone(), err.status().as_u16()),
        (AuthError::KeysUnavailable, 503)
    );
    assert!(auth.issuer_status()[0]["lastError"].is_string());
    // The provider comes up; the background retry loads it.
    write_jwks(&file, &[&key]);
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        if auth.ready() {
            break;
        }
    }
    assert!(auth.ready());
    assert!(auth.authenticate(Some(&bearer(&token))).await.is_ok());
    let _ = std::fs::remove_file(file);
}

#[test]
fn maturity_ceilings_read_labels_and_ages() {
    assert_eq!(ceiling(&json!("PG")), Some(10));
    assert_eq!(ceiling(&json!("tv-14")), Some(14));
    assert_eq!(ceiling(&json!(13)), Some(13));
    assert_eq!(ceiling(&json!("7")), Some(7));
    assert_eq!(ceiling(&json!(true)), None);
    assert_eq!(maturity_age("R"), 17);
    assert_eq!(maturity_age("Unrated"), u8::MAX);
}

/// A stub identity provider: discovery and JWKS over HTTP, switchable to answers far larger
/// than any key set, counting the bytes it actually handed to the connection.
mod huge_idp {
    use std::sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    };

    use axum::{
        Router, body::Body, extract::State, http::header, response::Response, routing::get,
    };
    use bytes::Bytes;

    /// What the stub answers.
    pub(super) const GOOD: u8 = 0;
    /// A JWKS of [`HUGE`] bytes, streamed without a length.
    pub(super) const HUGE_STREAMED: u8 = 1;
    /// A JWKS declaring [`HUGE`] bytes in `Content-Length`.
    pub(super) const HUGE_DECLARED: u8 = 2;
    /// A discovery document of [`HUGE`] bytes, streamed.
    pub(super) const HUGE_DISCOVERY: u8 = 3;
    /// 150 MB, the probe's size.
    pub(super) const HUGE: u64 = 150 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;

    #[derive(Clone)]
    pub(super) struct Stub {
        pub(super) mode: Arc<AtomicU8>,
        pub(super) served: Arc<AtomicU64>,
        pub(super) good: Bytes,
        pub(super) base: String,
    }

    fn huge(served: Arc<AtomicU64>, prefix: &'static [u8]) -> Body {
        let chunks = HUGE / CHUNK as u64;
        let stream = futures::stream::unfold(0u64, move |i| {
            let served = served.clone();
            async move {
                if i >= chunks {
                    return None;
                }
                let mut chunk = vec![b' '; CHUNK];
                if i == 0 {
                    chunk[..prefix.len()].copy_from_slice(prefix);
                }
                served.fetch_add(CHUNK as u64, Ordering::SeqCst);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
            }
        });
        Body::from_stream(stream)
    }

    async fn discovery(State(s): State<Stub>) -> Response {
        if s.mode.load(Ordering::SeqCst) == HUGE_DISCOVERY {
            return Response::new(huge(s.served.clone(), b"{\"issuer\":\""));
        }
        let doc = serde_json::json!({ "issuer": s.base, "jwks_uri": format!("{}/jwks", s.base) });
        Response::new(Body::from(doc.to_string()))
    }

    async fn jwks(State(s): State<Stub>) -> Response {
        match s.mode.load(Ordering::SeqCst) {
            HUGE_STREAMED => Response::new(huge(s.served.clone(), b"{\"keys\":[")),
            HUGE_DECLARED => {
                let mut r = Response::new(huge(s.served.clone(), b"{\"keys\":["));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HUGE.to_string().parse().unwrap());
                r
            }
            _ => Response::new(Body::from(s.good.clone())),
        }
    }

    pub(super) async fn start(good: Bytes, mode: u8) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stub = Stub {
            mode: Arc::new(AtomicU8::new(mode)),
            served: Arc::new(AtomicU64::new(0)),
            good,
            base,
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(stub.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        stub
    }
}

fn discovered(iss: &str) -> IssuerSettings {
    IssuerSettings {
        jwks_file: None,
        ..issuer(iss, std::path::Path::new(""), &["bff"])
    }
}

/// Waits until the first issuer reports a fetch error (the background fetch at start).
async fn first_error(auth: &Authenticator) -> String {
    for _ in 0..400 {
        if let Some(e) = auth.issuer_status()[0]["lastError"].as_str() {
            return e.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no fetch error reported");
}

const SMALL_BOUND: usize = 64 * 1024;

#[tokio::test]
async fn a_huge_jwks_is_abandoned_past_max_jwks_bytes_and_the_held_keys_stay() {
    use std::sync::atomic::Ordering;
    let k1 = test_key(Algorithm::ES256, Some("k1"));
    let good = serde_json::to_vec(&JwkSet {
        keys: vec![k1.jwk.clone()],
    })
    .unwrap();
    let stub = huge_idp::start(good.into(), huge_idp::GOOD).await;
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![discovered(&stub.base)],
        max_jwks_bytes: SMALL_BOUND,
        ..AuthSettings::default()
    });
    loaded(&auth).await;
    let c = claims(&stub.base, json!("bff"));
    assert!(
        auth.authenticate(Some(&bearer(&k1.sign(c.clone()))))
            .await
            .is_ok()
    );

    // The provider now answers 150 MB without a length; a token's unknown kid fetches it.
    stub.mode.store(huge_idp::HUGE_STREAMED, Ordering::SeqCst);
    let k2 = test_key(Algorithm::ES256, Some("k2"));
    assert_eq!(
        auth.authenticate(Some(&bearer(&k2.sign(c.clone())))).await,
        Err(AuthError::Invalid)
    );
    let status = &auth.issuer_status()[0];
    let error = status["lastError"].as_str().unwrap();
    assert!(
        error.contains("max_jwks_bytes") && error.contains("/jwks"),
        "{error}"
    );
    // Abandoned while reading: what the stub could push before the connection was dropped is
    // the bound plus what the socket buffers hold, nowhere near the document.
    let served = stub.served.load(Ordering::SeqCst);
    assert!(
        served < 32 * 1024 * 1024,
        "{served} bytes of {} were produced",
        huge_idp::HUGE
    );
    // The keys held are kept.
    assert_eq!(status["keys"], 1);
    assert!(auth.authenticate(Some(&bearer(&k1.sign(c)))).await.is_ok());
}

#[tokio::test]
async fn a_declared_huge_jwks_or_discovery_document_is_refused_before_reading() {
    use std::sync::atomic::Ordering;
    for (mode, names) in [
        (huge_idp::HUGE_DECLARED, "/jwks"),
        (huge_idp::HUGE_DISCOVERY, "openid-configuration"),
    ] {
        let stub = huge_idp::start(bytes::Bytes::new(), mode).await;
        let auth = Authenticator::new(&AuthSettings {
            issuers: vec![discovered(&stub.base)],
            max_jwks_bytes: SMALL_BOUND,
            ..AuthSettings::default()
        });
        let _tasks = auth.start();
        let error = first_error(&auth).await;
        assert!(
            error.contains("max_jwks_bytes") && error.contains(names),
            "{error}"
        );
        assert!(!auth.ready());
        let served = stub.served.load(Ordering::SeqCst);
        assert!(served < 32 * 1024 * 1024, "{served}");
    }
}

#[tokio::test]
async fn a_jwks_file_over_the_bound_is_refused() {
    let file = temp_file("huge");
    let k1 = test_key(Algorithm::ES256, Some("k1"));
    write_jwks(&file, &[&k1]);
    // Padding after the JSON keeps it valid, and past the bound.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&" ".repeat(SMALL_BOUND));
    std::fs::write(&file, text).unwrap();
    let auth = Authenticator::new(&AuthSettings {
        issuers: vec![issuer("https://idp.test/", &file, &["bff"])],
        max_jwks_bytes: SMALL_BOUND,
        ..AuthSettings::default()
    });
    let _tasks = auth.start();
    let error = first_error(&auth).await;
    assert!(error.contains("max_jwks_bytes"), "{error}");
    let _ = std::fs::remove_file(file);
}
