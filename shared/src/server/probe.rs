//! `--healthcheck`: a container's `HEALTHCHECK` that needs neither a shell nor curl in the image
//! (the runtime image has neither). The binary, started a second time with the same config file,
//! env and `--listen` as the instance it checks, asks that instance's `GET /healthz` and exits 0
//! when it answers 200.
//!
//! Which listener: the admin one when `admin.listen` is set (plain HTTP, whatever the public
//! listener does), else the public one, over TLS when it terminates TLS. An unspecified address
//! (`0.0.0.0`, `::`) is asked on the loopback of the same family. The certificate is not verified:
//! the question is whether this very process answers, not who signed its certificate.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::config::Settings;

/// How long the whole check may take (a container runtime kills a slower check anyway).
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the instance is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer: nothing listens there, or it did not answer in time.
    #[error("health check of {url} failed: {source}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// An answer other than 200.
    #[error("health check of {url} answered {status}")]
    Status {
        /// What was asked.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
    },
    /// The probe's HTTP client could not be built.
    #[error("cannot build the health-check client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The URL `--healthcheck` asks, for these settings.
pub fn url(settings: &Settings) -> String {
    match settings.admin.listen {
        Some(admin) => format!("http://{}/healthz", local(admin)),
        None => {
            let scheme = if settings.tls.enabled() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}/healthz", local(settings.listen))
        }
    }
}

/// Asks the instance these settings describe whether it is alive; `Ok` with the URL asked when
/// it answered 200.
pub async fn healthcheck(settings: &Settings) -> Result<String, ProbeError> {
    let url = url(settings);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(ProbeError::Client)?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|source| ProbeError::Unreachable {
            url: url.clone(),
            source,
        })?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(ProbeError::Status {
            url,
            status: resp.status(),
        });
    }
    Ok(url)
}

/// A listen address as a client on the same host reaches it: an unspecified IP becomes the
/// loopback of its family.
fn local(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{config::BinaryDefaults, profile::ClientProfile};

    fn settings(listen: &str, admin: Option<&str>) -> Settings {
        let mut s = Settings::defaults(&BinaryDefaults {
            listen: listen.parse().unwrap(),
            profile: ClientProfile::new(Vec::new(), 1),
            request_budget: Duration::from_millis(800),
        });
        s.admin.listen = admin.map(|a| a.parse().unwrap());
        s
    }

    #[test]
    fn asks_the_admin_listener_when_there_is_one_on_the_loopback() {
        assert_eq!(
            url(&settings("0.0.0.0:4000", None)),
            "http://127.0.0.1:4000/healthz"
        );
        assert_eq!(
            url(&settings("0.0.0.0:4000", Some("0.0.0.0:9464"))),
            "http://127.0.0.1:9464/healthz"
        );
        assert_eq!(
            url(&settings("[::]:4000", Some("[::]:9464"))),
            "http://[::1]:9464/healthz"
        );
        assert_eq!(
            url(&settings("10.1.2.3:4000", None)),
            "http://10.1.2.3:4000/healthz"
        );
        let mut tls = settings("0.0.0.0:4443", None);
        tls.tls.cert_file = Some("cert.pem".into());
        tls.tls.key_file = Some("key.pem".into());
        assert_eq!(url(&tls), "https://127.0.0.1:4443/healthz");
    }
}
