//! Following backends that move: periodic DNS re-resolution (a host name becomes one endpoint per
//! address, so a service that scales out is picked up without a restart) and optional active
//! health checks (HTTP path or `grpc.health.v1`). Both run as background tasks the `Upstream`
//! aborts when it is dropped.

use std::net::SocketAddr;

use reqwest::header::HeaderValue;
use tokio::task::JoinHandle;

use super::{
    grpc,
    policy::BackendPolicy,
    resilience::{grpc_probe, http_probe, spawn_dns_refresh, spawn_health_checks},
    rest::RestEndpoint,
};
use crate::config::BackendSettings;

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

fn authority(url: &reqwest::Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

pub(super) fn start_rest(
    policy: &BackendPolicy<RestEndpoint>,
    client: &reqwest::Client,
    s: &BackendSettings,
) -> Vec<JoinHandle<()>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Vec::new();
    }
    let mut tasks = Vec::new();
    if let Some((url, host, port)) = dns_target(s) {
        let host_header = HeaderValue::from_str(&authority(&url)).ok();
        tasks.push(spawn_dns_refresh(
            policy.endpoints.clone(),
            host,
            port,
            s.dns_refresh,
            move |addr| {
                let u = with_addr(&url, addr)?;
                Some(RestEndpoint::keyed(&u, host_header.clone()))
            },
        ));
    }
    let hc = &s.health_check;
    if hc.enabled {
        let (client, path, timeout) = (client.clone(), hc.path.clone(), hc.timeout);
        tasks.push(spawn_health_checks(
            policy.endpoints.clone(),
            hc.interval,
            move |ep: &RestEndpoint| {
                // The probe path is relative to the endpoint's origin, not its API root.
                let origin = reqwest::Url::parse(&ep.base)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_default();
                let mut req_url = format!("{origin}{path}");
                if req_url.is_empty() {
                    req_url = ep.base.to_string();
                }
                http_probe(client.clone(), req_url, timeout)
            },
        ));
    }
    tasks
}

pub(super) fn start_grpc(
    policy: &BackendPolicy<tonic::transport::Channel>,
    s: &BackendSettings,
) -> Vec<JoinHandle<()>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Vec::new();
    }
    let mut tasks = Vec::new();
    if let Some((url, host, port)) = dns_target(s) {
        let settings = s.clone();
        let origin = format!("{}://{}", url.scheme(), authority(&url));
        tasks.push(spawn_dns_refresh(
            policy.endpoints.clone(),
            host,
            port,
            s.dns_refresh,
            move |addr| {
                let u = with_addr(&url, addr)?;
                let label = u.as_str().trim_end_matches('/').to_owned();
                let ch = grpc::channel(&label, Some(&origin), &settings).ok()?;
                Some((label, ch))
            },
        ));
    }
    let hc = &s.health_check;
    if hc.enabled {
        let (service, timeout) = (hc.grpc_service.clone(), hc.timeout);
        tasks.push(spawn_health_checks(
            policy.endpoints.clone(),
            hc.interval,
            move |ch: &tonic::transport::Channel| grpc_probe(ch.clone(), service.clone(), timeout),
        ));
    }
    tasks
}
