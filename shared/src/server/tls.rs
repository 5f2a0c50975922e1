//! TLS termination for the connection stage: rustls on aws-lc-rs, TLS 1.2 and 1.3 only, ALPN
//! `h2` and `http/1.1`, the certificate and key from PEM files (`tls.cert_file`, `tls.key_file`),
//! optional client certificates verified against `tls.client_ca_file` (mTLS), and the files
//! reloaded without a restart: checked every `tls.reload_interval` and on SIGHUP. A reload that
//! fails (a half-written file, a key that does not match) is logged and the running certificate
//! kept; connections already open keep the certificate they were made with.
//!
//! Also the TLS pieces the backends' clients share: reading PEM certificates and keys.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::RwLock;
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{ClientAuth, TlsSettings},
    telemetry::metrics::Metrics,
};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// A root store of the CA certificates in `path`.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration for `s` as the files say now.
fn server_config(s: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&s.cert_file, &s.key_file) else {
        return Err(TlsError::Config(
            "tls.cert_file and tls.key_file are required".into(),
        ));
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = match s.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier: Arc<dyn ClientCertVerifier> = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(cert_file)?, key(key_file)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The acceptor of the moment, replaced when the files change.
pub(crate) struct Tls {
    settings: TlsSettings,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
    metrics: Option<Arc<Metrics>>,
}

impl Tls {
    /// Loads the files once; a failure here stops the start.
    pub(crate) fn load(
        settings: &TlsSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Self>, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(settings)?));
        Ok(Arc::new(Self {
            current: RwLock::new((acceptor, Self::stamps(settings))),
            settings: settings.clone(),
            metrics,
        }))
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current.read().0.clone()
    }

    fn stamps(s: &TlsSettings) -> Vec<Option<SystemTime>> {
        [&s.cert_file, &s.key_file, &s.client_ca_file]
            .into_iter()
            .map(|p| {
                p.as_ref()
                    .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            })
            .collect()
    }

    /// Reloads when a file changed (or always, with `force`); `Ok(true)` when a new
    /// configuration is in use.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamps = Self::stamps(&self.settings);
        if !force && self.current.read().1 == stamps {
            return Ok(false);
        }
        match server_config(&self.settings) {
            Ok(config) => {
                *self.current.write() = (TlsAcceptor::from(Arc::new(config)), stamps);
                tracing::info!("TLS certificate reloaded");
                if let Some(m) = &self.metrics {
                    m.tls_reload(true);
                }
                Ok(true)
            }
            Err(e) => {
                // Keep serving the old certificate; record the stamps so a broken file is
                // reported once, not on every check, until it changes again.
                self.current.write().1 = stamps;
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                if let Some(m) = &self.metrics {
                    m.tls_reload(false);
                }
                Err(e)
            }
        }
    }

    /// Checks the files every `tls.reload_interval` and on SIGHUP, until dropped.
    pub(crate) fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = Arc::downgrade(self);
        let interval = self
            .settings
            .reload_interval
            .max(Duration::from_millis(100));
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = tokio::select! {
                    () = tokio::time::sleep(interval) => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                #[cfg(not(unix))]
                let forced = {
                    tokio::time::sleep(interval).await;
                    false
                };
                let Some(tls) = tls.upgrade() else { return };
                let _ = tls.reload(forced);
            }
        })
    }
}

/// The subject of a verified client certificate, as its common name (or, without one, the
/// whole distinguished name).
pub(crate) fn client_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        .or_else(|| Some(subject.to_string()))
}
