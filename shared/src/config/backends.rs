//! Backend settings (`backends.<name>.*`, `[[routes]]`): where each backend is and the policy every
//! call to it goes through (timeouts, retries and their backoff and budget, circuit breaker,
//! concurrency limit, balancing, outlier ejection, health checks, TLS, what is forwarded), and the
//! pass-through routes with the backends only they use. Only the settings live here; the policy
//! layer and the clients are `crate::upstream`'s.

use std::{
    collections::BTreeMap,
    fmt,
    ops::{Index, IndexMut},
    time::Duration,
};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, MapAccess, Visitor},
    ser::SerializeMap,
};

use super::{BackendId, BackendTlsSettings, Cidr, Invalid, Strategy, check_url, duration, invalid};

/// One backend service and the policy every call to it goes through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// Base URL: REST ones include their root path (`http://127.0.0.1:7001/top10`), gRPC ones are
    /// the server root (`http://127.0.0.1:7002`).
    pub url: String,
    /// Several interchangeable endpoints (same shape as `url`); when set, `url` is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Longest a single attempt may take (never longer than what is left of the request budget).
    #[serde(with = "duration", default = "default_timeout")]
    pub timeout: Duration,
    /// Longest a TCP connect may take.
    #[serde(with = "duration", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Extra attempts for idempotent reads (writes are never retried).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Jittered exponential backoff between attempts.
    #[serde(default)]
    pub backoff: BackoffSettings,
    /// Cap on retries relative to requests, so retries cannot multiply load on a failing backend.
    #[serde(default)]
    pub retry_budget: RetryBudgetSettings,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Concurrency limit with a short queue.
    #[serde(default)]
    pub concurrency: ConcurrencySettings,
    /// How calls are spread over endpoints: `least_outstanding` (power of two choices) or `round_robin`.
    #[serde(default = "default_strategy")]
    pub balance: Strategy,
    /// Passive outlier ejection.
    #[serde(default)]
    pub ejection: EjectionSettings,
    /// Optional active health checks.
    #[serde(default)]
    pub health_check: HealthCheckSettings,
    /// How often endpoint host names are re-resolved (`"0s"` = never); IP literals are never resolved.
    #[serde(with = "duration", default = "default_dns_refresh")]
    pub dns_refresh: Duration,
    /// `/readyz` fails while this backend has no usable endpoint.
    #[serde(default)]
    pub required: bool,
    /// TLS for `https://` URLs.
    #[serde(default)]
    pub tls: BackendTlsSettings,
    /// Send the viewer's verified scopes (`x-user-scopes`, space separated) with each call.
    #[serde(default)]
    pub forward_scopes: bool,
    /// Send the viewer's original bearer token (`Authorization`) with each call, for backends
    /// that verify it themselves.
    #[serde(default)]
    pub forward_token: bool,
    /// Largest answer body read from this REST backend (`backends.<name>.max_response_bytes`):
    /// a larger one is abandoned while it is read and the call fails as the backend's own
    /// failure. gRPC answers are bounded by tonic's 4 MiB message limit.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_max_response_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_connect_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_retries() -> u32 {
    2
}

fn default_strategy() -> Strategy {
    Strategy::LeastOutstanding
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}

/// Backoff between attempts: uniform in `[0, min(max, base × 2^attempt)]` ("full jitter").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSettings {
    /// First backoff cap.
    #[serde(with = "duration")]
    pub base: Duration,
    /// Largest backoff.
    #[serde(with = "duration")]
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }
}

/// Retries allowed: at most `ratio` × requests + `min_retries` over the rolling `window`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetSettings {
    /// Share of requests that may be retried.
    pub ratio: f64,
    /// Rolling window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Retries always allowed per window, so a quiet backend can still be retried.
    pub min_retries: u32,
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_retries: 10,
        }
    }
}

/// Circuit breaker: opens when the failure ratio over the window exceeds `failure_ratio` (once
/// `min_calls` were made), fails fast while open, then lets probes through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Use a breaker at all.
    pub enabled: bool,
    /// Failure share that opens it.
    pub failure_ratio: f64,
    /// Calls in the window before the ratio counts.
    pub min_calls: u32,
    /// Rolling window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// First open interval.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// Longest open interval (it doubles on each failed probe).
    #[serde(with = "duration")]
    pub max_open_for: Duration,
    /// Concurrent probes when half-open.
    pub half_open_probes: u32,
    /// Successful probes that close it.
    pub close_after: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 3,
            close_after: 3,
        }
    }
}

/// Concurrency limit: calls beyond `max_in_flight` wait in a queue of `max_queue` for at most
/// `queue_timeout`; beyond that they fail fast with BACKEND_UNAVAILABLE.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencySettings {
    /// Most calls in flight.
    pub max_in_flight: usize,
    /// Most calls waiting.
    pub max_queue: usize,
    /// Longest wait in the queue.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
}

impl Default for ConcurrencySettings {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            max_queue: 256,
            queue_timeout: Duration::from_millis(50),
        }
    }
}

/// Passive outlier ejection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionSettings {
    /// Consecutive failures that eject an endpoint (0 = never eject).
    pub consecutive_failures: u32,
    /// First ejection; doubles for each repeat.
    #[serde(with = "duration")]
    pub base: Duration,
    /// Longest ejection.
    #[serde(with = "duration")]
    pub max: Duration,
    /// Never eject more than this share of endpoints.
    pub max_ejected_percent: u8,
}

impl Default for EjectionSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// Active health checks (off by default: passive ejection needs no extra traffic).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSettings {
    /// Probe endpoints periodically.
    pub enabled: bool,
    /// Probe period.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Probe time limit.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// REST: path probed on the endpoint's origin (2xx = healthy).
    pub path: String,
    /// gRPC: service name for `grpc.health.v1.Health/Check` (empty = the whole server).
    pub grpc_service: String,
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            path: "/healthz".to_owned(),
            grpc_service: String::new(),
        }
    }
}

impl BackendSettings {
    fn at(url: String) -> Self {
        Self {
            url,
            endpoints: Vec::new(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            retries: default_retries(),
            backoff: BackoffSettings::default(),
            retry_budget: RetryBudgetSettings::default(),
            breaker: BreakerSettings::default(),
            concurrency: ConcurrencySettings::default(),
            balance: default_strategy(),
            ejection: EjectionSettings::default(),
            health_check: HealthCheckSettings::default(),
            dns_refresh: default_dns_refresh(),
            required: false,
            tls: BackendTlsSettings::default(),
            forward_scopes: false,
            forward_token: false,
            max_response_bytes: default_max_response_bytes(),
        }
    }

    /// The endpoints calls are spread over: `endpoints`, or `url` alone.
    pub fn endpoint_urls(&self) -> Vec<String> {
        if self.endpoints.is_empty() {
            vec![self.url.clone()]
        } else {
            self.endpoints.clone()
        }
    }
}

/// A pass-through route: requests under `prefix` are proxied to `backend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Path prefix, e.g. `/api/images`; the rest of the path is appended to the backend URL.
    pub prefix: String,
    /// Backend name: one of `backends.*` (REST).
    pub backend: String,
    /// Largest request body streamed through.
    #[serde(default = "default_route_body")]
    pub max_body_bytes: usize,
    /// Reject requests without a valid token (401) instead of forwarding them anonymously.
    #[serde(default)]
    pub require_auth: bool,
    /// Scopes a token must carry (all of them) to use this route: `403 FORBIDDEN` naming the
    /// first one missing; anonymous requests `401`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// This route's own client-address rules, on top of the global ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Addresses this route refuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
}

fn default_route_body() -> usize {
    10 * 1024 * 1024
}

impl RouteSettings {
    /// A route from `prefix` to `backend` with every other key at its default.
    pub fn new(prefix: &str, backend: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            backend: backend.to_owned(),
            max_body_bytes: default_route_body(),
            require_auth: false,
            scopes: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// The GraphQL backends' settings, one per [`BackendId`], plus any other backends pass-through
/// routes use.
///
/// In TOML each is a table under `backends` named as the backend is (`[backends.top10]`,
/// `[backends.images]`): a name that is no [`BackendId`] is a route-only backend (`extra`).
#[derive(Debug, Clone)]
pub struct BackendsSettings {
    /// The GraphQL backends' settings, each at its [`BackendId::index`].
    by_id: [BackendSettings; BackendId::COUNT],
    /// Backends only pass-through routes use (REST), by name.
    pub extra: BTreeMap<String, BackendSettings>,
}

impl BackendsSettings {
    /// Settings pointing at `fixture-backends` on its default ports (a two-terminal dev stack).
    pub fn local_fixtures() -> Self {
        Self::at(|b| match b.rest_path() {
            Some(path) => format!("http://127.0.0.1:7001{path}"),
            None => "http://127.0.0.1:7002".to_owned(),
        })
    }

    /// Settings with each backend's URL from `url_of`.
    pub fn at(url_of: impl Fn(BackendId) -> String) -> Self {
        Self {
            by_id: BackendId::ALL.map(|b| BackendSettings {
                required: b == BackendId::Catalog,
                ..BackendSettings::at(url_of(b))
            }),
            extra: BTreeMap::new(),
        }
    }

    /// The settings of one backend.
    pub fn get(&self, b: BackendId) -> &BackendSettings {
        &self.by_id[b.index()]
    }

    /// Mutable settings of one backend.
    pub fn get_mut(&mut self, b: BackendId) -> &mut BackendSettings {
        &mut self.by_id[b.index()]
    }

    /// Every GraphQL backend with its settings, in [`BackendId::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (BackendId, &BackendSettings)> {
        BackendId::ALL.into_iter().zip(&self.by_id)
    }

    /// Checks each GraphQL backend: its URLs, timeout and answer bound.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        for (b, s) in self.iter() {
            let key = format!("backends.{}.url", b.name());
            for url in s.endpoint_urls() {
                check_url(&url).map_err(|m| invalid(&key, m))?;
            }
            if s.timeout.is_zero() {
                return Err(invalid(
                    &format!("backends.{}.timeout", b.name()),
                    "must be > 0".into(),
                ));
            }
            if s.max_response_bytes < 1024 {
                return Err(invalid(
                    &format!("backends.{}.max_response_bytes", b.name()),
                    "must be at least 1024".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the backends only pass-through routes use (each must be used by a route, with http(s)
    /// URLs) and the routes themselves (prefix, and a REST backend behind it).
    pub(super) fn validate_routes(&self, routes: &[RouteSettings]) -> Result<(), Invalid> {
        for (name, b) in &self.extra {
            if !routes.iter().any(|r| &r.backend == name) {
                return Err(invalid(
                    &format!("backends.{name}"),
                    "unknown backend: not one of the seven GraphQL backends and no route uses it"
                        .into(),
                ));
            }
            for url in b.endpoint_urls() {
                check_url(&url).map_err(|m| invalid(&format!("backends.{name}.url"), m))?;
            }
        }
        for (i, r) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.prefix.starts_with('/') || r.prefix.len() < 2 || r.prefix.ends_with('/') {
                return Err(invalid(
                    &format!("{key}.prefix"),
                    "must start with `/` and not end with one, e.g. \"/api/images\"".into(),
                ));
            }
            if ["/graphql", "/healthz", "/readyz", "/metrics", "/graphiql"]
                .iter()
                .any(|p| r.prefix == *p || r.prefix.starts_with(&format!("{p}/")))
            {
                return Err(invalid(
                    &format!("{key}.prefix"),
                    "collides with a built-in endpoint".into(),
                ));
            }
            // A built-in backend is REST when it has a REST path; an `extra` one always is.
            let rest = match r.backend.parse::<BackendId>() {
                Ok(b) => b.rest_path().is_some(),
                Err(_) => self.extra.contains_key(&r.backend),
            };
            if !rest {
                return Err(invalid(
                    &format!("{key}.backend"),
                    format!("`{}` is not a configured REST backend", r.backend),
                ));
            }
        }
        Ok(())
    }
}

impl Index<BackendId> for BackendsSettings {
    type Output = BackendSettings;

    fn index(&self, b: BackendId) -> &BackendSettings {
        self.get(b)
    }
}

impl IndexMut<BackendId> for BackendsSettings {
    fn index_mut(&mut self, b: BackendId) -> &mut BackendSettings {
        self.get_mut(b)
    }
}

/// One map keyed by backend name (`[backends.<name>]`): the GraphQL backends first, in
/// [`BackendId::ALL`]'s order, then the route-only ones: the shape config files are written in,
/// and what `--print-config` prints.
impl Serialize for BackendsSettings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (b, settings) in self.iter() {
            map.serialize_entry(b.name(), settings)?;
        }
        for (name, settings) in &self.extra {
            map.serialize_entry(name, settings)?;
        }
        map.end()
    }
}

/// Reads the map [`Serialize`] writes. A name that parses as a [`BackendId`] is a GraphQL backend,
/// read where it stands, so a bad value is reported at its key (`backends.top10.timeout`); any
/// other name is a route-only backend, read once the whole map is and reported at `backends`
/// (both exactly as when these were seven named fields and a `flatten`ed map, so no error
/// message changed). Every GraphQL backend must be present: the built-in defaults always are.
impl<'de> Deserialize<'de> for BackendsSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BackendsVisitor)
    }
}

struct BackendsVisitor;

impl<'de> Visitor<'de> for BackendsVisitor {
    type Value = BackendsSettings;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct BackendsSettings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut by_id: [Option<BackendSettings>; BackendId::COUNT] = Default::default();
        let mut route_only = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            match name.parse::<BackendId>() {
                Ok(b) => {
                    let slot = &mut by_id[b.index()];
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(b.name()));
                    }
                    *slot = Some(map.next_value()?);
                }
                Err(_) => route_only.push((name, map.next_value::<toml::Value>()?)),
            }
        }
        let by_id: Vec<BackendSettings> = BackendId::ALL
            .into_iter()
            .zip(by_id)
            .map(|(b, s)| s.ok_or_else(|| de::Error::missing_field(b.name())))
            .collect::<Result<_, _>>()?;
        let by_id = <[BackendSettings; BackendId::COUNT]>::try_from(by_id)
            .map_err(|v| de::Error::invalid_length(v.len(), &"one entry per GraphQL backend"))?;
        // Read outside the map, so the error's key path ends at `backends`; the message alone,
        // without toml's own "in `key`" line.
        let extra = route_only
            .into_iter()
            .map(|(name, value)| {
                BackendSettings::deserialize(value)
                    .map(|s| (name, s))
                    .map_err(|e| de::Error::custom(e.message()))
            })
            .collect::<Result<_, A::Error>>()?;
        Ok(BackendsSettings { by_id, extra })
    }
}
