//! Following backends that move, for either transport: periodic DNS re-resolution (a host name
//! becomes one endpoint per address, so a service that scales out is picked up without a
//! restart) and optional active health checks. Both run as background tasks the `Upstream`
//! aborts when it is dropped.
//!
//! Written once over [`Transport`]: a transport says how an endpoint is made for a resolved
//! address and how one is probed; the rules (which backends are re-resolved, the authority a
//! resolved endpoint announces, when probes run) are the same for REST and gRPC.

use std::net::SocketAddr;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;

use super::{
    policy::BackendPolicy,
    resilience::{spawn_dns_refresh, spawn_health_checks},
};
use crate::config::{BackendSettings, HealthCheckSettings};

/// What discovery needs of a transport's endpoint type.
pub(super) trait Transport: Clone + Send + Sync + Sized + 'static {
    /// What a probe needs besides the endpoint (a client, a health service name).
    type Prober: Clone + Send + Sync + 'static;

    /// The endpoint for `url`, whose host is a resolved address, keyed as the balancer names it;
    /// it must announce `authority` (the configured `host[:port]`) as the host it talks to.
    fn at_address(
        url: &reqwest::Url,
        authority: &str,
        s: &BackendSettings,
    ) -> Option<(String, Self)>;

    /// One health probe of this endpoint: healthy or not, within the check's timeout.
    fn probe(&self, prober: &Self::Prober, check: &HealthCheckSettings)
    -> BoxFuture<'static, bool>;
}

/// The host name to re-resolve: only for a single configured endpoint whose host is a name.
fn dns_target(s: &BackendSettings) -> Option<(reqwest::Url, String, u16)> {
    if s.dns_refresh.is_zero() || s.endpoint_urls().len() != 1 {
        return None;
    }
    let url = reqwest::Url::parse(&s.endpoint_urls()[0]).ok()?;
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => return None,
    };
    let port = url.port_or_known_default()?;
    Some((url, host, port))
}

/// `url` with its host replaced by `addr`.
fn with_addr(url: &reqwest::Url, addr: SocketAddr) -> Option<reqwest::Url> {
    let mut u = url.clone();
    u.set_ip_host(addr.ip()).ok()?;
    u.set_port(Some(addr.port())).ok()?;
    Some(u)
}

/// `host[:port]` of `url`, the port only when the URL names one.
pub(super) fn authority(url: &reqwest::Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// Starts the discovery tasks `s` asks for on `policy`'s endpoints (none outside a runtime).
pub(super) fn start<E: Transport>(
    policy: &BackendPolicy<E>,
    s: &BackendSettings,
    prober: E::Prober,
) -> Vec<JoinHandle<()>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Vec::new();
    }
    let mut tasks = Vec::new();
    if let Some((url, host, port)) = dns_target(s) {
        let (settings, authority) = (s.clone(), authority(&url));
        tasks.push(spawn_dns_refresh(
            policy.endpoints.clone(),
            host,
            port,
            s.dns_refresh,
            move |addr| E::at_address(&with_addr(&url, addr)?, &authority, &settings),
        ));
    }
    if s.health_check.enabled {
        let check = s.health_check.clone();
        tasks.push(spawn_health_checks(
            policy.endpoints.clone(),
            check.interval,
            move |ep: &E| ep.probe(&prober, &check),
        ));
    }
    tasks
}
