//! Server settings (`server.*`, `admin.*`): the public listener's limits, timeouts and shutdown,
//! HTTP/2 limits, whose forwarding headers name the client address, and the admin listener. Only
//! the settings live here; the listeners themselves are `crate::server`'s.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Cidr, Invalid, duration, invalid};

/// HTTP server limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Largest accepted request body in bytes (`server.max_body_bytes`); bigger → 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// After a shutdown signal, how long `/readyz` reports 503 while still serving, so load
    /// balancers stop sending traffic before the listener closes.
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// Time budget of one request: every backend call gets at most what is left of it, and the
    /// homepage answers when it runs out with whatever rows are ready.
    #[serde(with = "duration")]
    pub request_budget: Duration,
    /// Longest a client may take to send a request's headers, counted from when the connection
    /// is ready for the next request (`server.header_read_timeout`); then it is closed.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a whole request body, however it trickles
    /// (`server.body_read_timeout`); then `408`.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed
    /// (`server.idle_timeout`).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Most connections open at once (`server.max_connections`); more are closed on arrival.
    pub max_connections: usize,
    /// Most headers in one HTTP/1.1 request (`server.max_headers`); more → `431`.
    pub max_headers: usize,
    /// Largest request head in bytes (`server.max_header_bytes`): HTTP/1.1's read buffer for the
    /// head (at least 8192), HTTP/2's header list.
    pub max_header_bytes: usize,
    /// HTTP/2 limits.
    pub http2: Http2Settings,
    /// Proxies and load balancers whose `X-Forwarded-For` / `Forwarded` headers are believed
    /// (`server.trusted_proxies`); from any other peer the socket address is the client's.
    pub trusted_proxies: Vec<Cidr>,
    /// Which forwarding header the trusted proxies append (`server.forwarded_header`):
    /// `x-forwarded-for` (the default: nginx, HAProxy, Envoy and the cloud load balancers append
    /// it) or `forwarded` (RFC 7239). Only that family is read; the other is the client's own
    /// and ignored, so a client behind a proxy that appends one cannot pick its address with
    /// the other.
    pub forwarded_header: ForwardedHeader,
}

/// `server.forwarded_header`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …`.
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1, …` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            request_budget: Duration::from_millis(800),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_headers: 100,
            max_header_bytes: 32 * 1024,
            http2: Http2Settings::default(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
        }
    }
}

// Three checks rather than one: `Settings::validate` runs them where they stood when all
// checks were one function, so a config with several mistakes reports the same one first.
impl ServerSettings {
    /// Checks the request budget.
    pub(super) fn validate_request_budget(&self) -> Result<(), Invalid> {
        if self.request_budget.is_zero() {
            return Err(invalid("server.request_budget", "must be > 0".into()));
        }
        Ok(())
    }

    /// Checks the body bound and the read and idle timeouts.
    pub(super) fn validate_request_limits(&self) -> Result<(), Invalid> {
        if self.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be > 0".into()));
        }
        for (key, d) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        Ok(())
    }

    /// Checks the connection cap.
    pub(super) fn validate_connection_limit(&self) -> Result<(), Invalid> {
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be > 0".into()));
        }
        Ok(())
    }
}

/// HTTP/2 limits (`server.http2.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Most streams a client may open and reset before the server has seen them (the "rapid
    /// reset" flood, CVE-2023-44487); beyond it the connection is closed.
    pub max_pending_reset_streams: usize,
    /// Most streams the server may reset for protocol errors on one connection before closing it.
    pub max_local_error_resets: usize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_pending_reset_streams: 20,
            max_local_error_resets: 1024,
        }
    }
}

/// The admin listener (`admin.*`): what operators see and the public internet must not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin listener (`admin.listen`): `/readyz` with every backend's state,
    /// `/healthz`, and `/metrics` (which then leaves the public listener). Unset: no admin
    /// listener; the public `/readyz` answers only its status either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}
