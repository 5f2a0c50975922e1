//! TLS settings: termination on the public listener (`tls.*`, with optional client certificates)
//! and TLS to one backend (`backends.<name>.tls.*`). Only the settings live here; loading
//! certificates and keys is `crate::server::tls`'s.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Invalid, duration, invalid};

/// TLS termination (`tls.*`): on when `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Certificate chain, PEM (leaf first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; enables mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` (a client may present a certificate) or `required`
    /// (the handshake fails without one).
    pub client_auth: ClientAuth,
    /// A verified client certificate without a bearer token identifies the caller: its subject
    /// (the common name) becomes the viewer (for service clients).
    pub client_cert_identity: bool,
    /// How often the files are checked for changes (they are also reloaded on SIGHUP).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: ClientAuth::Optional,
            client_cert_identity: false,
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsSettings {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks that the certificate and key come together, and that client certificates have TLS and
    /// a CA to be verified against.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "tls",
                "set both tls.cert_file and tls.key_file, or neither".into(),
            ));
        }
        if self.client_ca_file.is_some() && !self.enabled() {
            return Err(invalid(
                "tls.client_ca_file",
                "client certificates need TLS: set tls.cert_file and tls.key_file".into(),
            ));
        }
        if self.client_cert_identity && self.client_ca_file.is_none() {
            return Err(invalid(
                "tls.client_cert_identity",
                "needs tls.client_ca_file to verify client certificates against".into(),
            ));
        }
        Ok(())
    }
}

/// Whether clients must present a certificate (`tls.client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client may present a certificate; without one it is served like any other.
    Optional,
    /// The handshake fails without a certificate that chains to `client_ca_file`.
    Required,
}

/// TLS to one backend (`backends.<name>.tls.*`), for `https://` URLs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendTlsSettings {
    /// CA certificates (PEM) the backend's certificate must chain to, instead of the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}
