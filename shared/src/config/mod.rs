//! Typed settings and how they are loaded: built-in defaults < TOML file (`--config`) < `BFF_…`
//! environment variables (double underscore for nesting) < command-line flags.
//!
//! A bad file or value fails at start-up naming the key, where it came from (the file, the env
//! var, or the flag) and why. Unknown keys in the file are rejected; unknown `BFF_` variables under
//! a known section are rejected, while variables whose first segment is no section at all (other
//! tools also use the `BFF_` prefix) are ignored with a warning.
//!
//! This file holds [`Settings`], [`ConfigError`] and the layering; each section's settings and
//! their checks live in its own file, and everything is re-exported here:
//! - `server`: `server.*` (limits, timeouts, shutdown, HTTP/2, forwarding header) and `admin.*`.
//! - `tls`: the listener's `tls.*` and a backend's `backends.<name>.tls.*`.
//! - `edge`: the client-address rules (`ip_rules.*`) and `cors.*`.
//! - `auth`: `auth.*` and `[[auth.issuers]]`.
//! - `graphql`: `graphql.*` (with `graphql.persisted.*`) and `graphiql.*`.
//! - `backends`: `backends.<name>.*` (one per [`BackendId`], plus route-only ones) and
//!   `[[routes]]`.
//! - `cache`: `cache.*`.
//! - `ratelimit`: `rate_limits.*`.
//! - `events`: `events.*`.
//! - `subscriptions`: `subscriptions.*` (the live homepage's doors and their bounds).
//! - `telemetry`: `log.*`, `metrics.*`, `telemetry.otlp.*`.
//! - `reload`: `reload.*`, and which keys a reload can apply and which need a restart.
//! - `names`, `duration`, `secret`: the names settings are keyed by, human durations, secrets.

mod auth;
mod backends;
mod cache;
mod duration;
mod edge;
mod events;
mod graphql;
mod names;
mod ratelimit;
mod reload;
mod secret;
mod server;
mod subscriptions;
mod telemetry;
mod tls;

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use auth::{AuthSettings, ISSUER_ALGORITHMS, IssuerSettings};
pub use backends::{
    BackendSettings, BackendsSettings, BackoffSettings, BreakerSettings, ConcurrencySettings,
    EjectionSettings, HealthCheckSettings, RetryBudgetSettings, RouteSettings,
};
pub use cache::{CacheSettings, KindSettings};
pub use edge::{CorsSettings, IpRulesSettings};
pub use events::EventsSettings;
pub use graphql::{GraphiqlSettings, GraphqlSettings, PersistedMode, PersistedSettings};
pub use names::{BackendId, Cidr, FragmentKind, Strategy};
pub use ratelimit::{
    Algorithm, Cost, FailedAuthSettings, KeyPart, PolicySettings, RateLimitSettings, Scope,
};
pub use reload::ReloadSettings;
pub(crate) use reload::same;
pub use secret::Secret;
pub use server::{AdminSettings, ForwardedHeader, Http2Settings, ServerSettings};
pub use subscriptions::SubscriptionSettings;
pub use telemetry::{LogFormat, LogSettings, MetricsSettings, OtlpSettings, TelemetrySettings};
pub use tls::{BackendTlsSettings, ClientAuth, TlsSettings};

use crate::profile::ClientProfile;

/// Everything a BFF binary can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the public listener binds (`listen`, `--listen`).
    pub listen: SocketAddr,
    /// HTTP server limits.
    pub server: ServerSettings,
    /// TLS termination on the public listener (`tls.*`); plain HTTP while unset.
    pub tls: TlsSettings,
    /// GraphQL engine limits.
    pub graphql: GraphqlSettings,
    /// GraphiQL explorer.
    pub graphiql: GraphiqlSettings,
    /// Token verification.
    pub auth: AuthSettings,
    /// One entry per backend service.
    pub backends: BackendsSettings,
    /// Fragment cache.
    pub cache: CacheSettings,
    /// What this client's screens need (rows, limits, trimming).
    pub profile: ClientProfile,
    /// Logging.
    pub log: LogSettings,
    /// The admin listener (readiness detail, metrics).
    pub admin: AdminSettings,
    /// Prometheus metrics.
    pub metrics: MetricsSettings,
    /// Trace export.
    pub telemetry: TelemetrySettings,
    /// Pass-through routes (`[[routes]]`).
    pub routes: Vec<RouteSettings>,
    /// Client-address rules for every request.
    pub ip_rules: IpRulesSettings,
    /// CORS.
    pub cors: CorsSettings,
    /// Rate limits (`[rate_limits]`, `[[rate_limits.policies]]`).
    pub rate_limits: RateLimitSettings,
    /// The event bus (`events.*`): in-process unless `events.url` names a RabbitMQ broker.
    pub events: EventsSettings,
    /// Subscriptions over WebSocket and SSE (`subscriptions.*`).
    pub subscriptions: SubscriptionSettings,
    /// Reloading the config file without a restart (`reload.*`).
    pub reload: ReloadSettings,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// A key has a bad value or is unknown.
    #[error("invalid config key `{key}` (from {source_name}): {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// Where the value came from: the file, an env var, a flag, or the defaults.
        source_name: String,
        /// Why.
        message: String,
    },
}

/// Where one layer of settings comes from; used to name the culprit in errors.
#[derive(Debug, Clone)]
enum Origin {
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "env {v}"),
            Self::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// Per-binary defaults: the only things that differ between `bff-web` and `bff-mobile` config.
#[derive(Debug, Clone)]
pub struct BinaryDefaults {
    /// Default listen address.
    pub listen: SocketAddr,
    /// Default client profile.
    pub profile: ClientProfile,
    /// Default request budget (`server.request_budget`).
    pub request_budget: Duration,
}

/// Inputs to [`Settings::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// Environment variables to read (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

impl Settings {
    /// Built-in defaults for a binary: backends on `fixture-backends`' default ports, no auth key.
    pub fn defaults(binary: &BinaryDefaults) -> Self {
        Self {
            listen: binary.listen,
            server: ServerSettings {
                request_budget: binary.request_budget,
                ..ServerSettings::default()
            },
            tls: TlsSettings::default(),
            graphql: GraphqlSettings::default(),
            graphiql: GraphiqlSettings::default(),
            auth: AuthSettings::default(),
            backends: BackendsSettings::local_fixtures(),
            cache: CacheSettings::default(),
            profile: binary.profile.clone(),
            log: LogSettings::default(),
            admin: AdminSettings::default(),
            metrics: MetricsSettings::default(),
            telemetry: TelemetrySettings::default(),
            routes: Vec::new(),
            ip_rules: IpRulesSettings::default(),
            cors: CorsSettings::default(),
            rate_limits: RateLimitSettings::default(),
            events: EventsSettings::default(),
            subscriptions: SubscriptionSettings::default(),
            reload: ReloadSettings::default(),
        }
    }

    /// Loads defaults < file < env < flags and validates the result; warnings (e.g. an ignored
    /// `BFF_` variable) are logged.
    pub fn load(binary: &BinaryDefaults, opts: &LoadOptions) -> Result<Self, ConfigError> {
        let (settings, warnings) = Self::load_reporting(binary, opts)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(settings)
    }

    /// [`Settings::load`], handing the warnings back instead of logging them: a binary loads its
    /// settings before logging is set up (the settings say how to log), and logs them after.
    pub fn load_reporting(
        binary: &BinaryDefaults,
        opts: &LoadOptions,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let defaults = Self::defaults(binary);
        let mut tree = to_table(&defaults)?;
        let mut origins: BTreeMap<String, Origin> = BTreeMap::new();

        if let Some(path) = &opts.file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.clone(),
                message: e.to_string(),
            })?;
            merge(
                &mut tree,
                file,
                "",
                &Origin::File(path.clone()),
                &mut origins,
            );
        }

        for (name, raw) in &opts.env {
            let Some(rest) = name.strip_prefix("BFF_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let Some(first) = path.first() else { continue };
            if !tree.contains_key(first.as_str()) {
                warnings.push(format!(
                    "ignoring environment variable {name}: `{first}` is not a config section"
                ));
                continue;
            }
            let value = coerce_env(&tree, &path, raw);
            let origin = Origin::Env(name.clone());
            set_path(&mut tree, &path, value, &origin, &mut origins);
        }

        if let Some(listen) = opts.listen {
            let origin = Origin::Flag("--listen");
            set_path(
                &mut tree,
                &["listen".to_owned()],
                toml::Value::String(listen.to_string()),
                &origin,
                &mut origins,
            );
        }

        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| {
                let key = e.path().to_string();
                // toml appends "in `key`" on a line of its own; the key is named already.
                let message = e.into_inner().to_string();
                let message = message
                    .lines()
                    .filter(|l| !l.starts_with("in `"))
                    .collect::<Vec<_>>()
                    .join(" ");
                ConfigError::Invalid {
                    source_name: origin_of(&origins, &key),
                    key,
                    message,
                }
            })?;
        settings.validate(&origins)?;
        Ok((settings, warnings))
    }

    /// Checks every section; the first value refused is reported with where it came from.
    fn validate(&self, origins: &BTreeMap<String, Origin>) -> Result<(), ConfigError> {
        self.check()
            .map_err(|Invalid { key, message }| ConfigError::Invalid {
                source_name: origin_of(origins, &key),
                key,
                message,
            })
    }

    /// The sections' checks, in the order they ran when they were one function (some sections'
    /// checks are split around others' to keep it), so a config with several mistakes reports
    /// the same one first.
    fn check(&self) -> Result<(), Invalid> {
        self.backends.validate()?;
        self.events.validate()?;
        self.backends.validate_routes(&self.routes)?;
        self.server.validate_request_budget()?;
        self.cache.validate()?;
        self.server.validate_request_limits()?;
        self.cors.validate()?;
        self.tls.validate()?;
        self.server.validate_connection_limit()?;
        self.graphql.validate(self.server.request_budget)?;
        self.auth.validate()?;
        let prefixes: Vec<&str> = self.routes.iter().map(|r| r.prefix.as_str()).collect();
        self.rate_limits.validate(&prefixes)?;
        self.auth.validate_hs256_secret()?;
        self.subscriptions.validate()?;
        self.profile
            .validate()
            .map_err(|(key, msg)| invalid(&format!("profile.{key}"), msg))
    }

    /// The effective settings as TOML with secrets redacted, for `--print-config` and logs.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        if copy.auth.hs256_secret.is_some() {
            copy.auth.hs256_secret = Some(Secret::new("<redacted>"));
        }
        toml::to_string_pretty(&copy).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
    }
}

/// A value a section refuses: its full dotted key and why. [`Settings::validate`] adds where the
/// value came from.
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
}

/// [`Invalid`] at `key`.
fn invalid(key: &str, message: String) -> Invalid {
    Invalid {
        key: key.to_owned(),
        message,
    }
}

/// Why `url` is not an http(s) URL with a host, if it is not.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{url}`: must be an http(s) URL with a host"));
    }
    Ok(())
}

fn to_table(settings: &Settings) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(settings).map_err(|e| ConfigError::Invalid {
        key: String::new(),
        source_name: "defaults".to_owned(),
        message: e.to_string(),
    })
}

/// The origin of `key`, of a key below it (an unknown table is reported at the table), or of its
/// nearest parent that some layer set; "defaults" otherwise.
fn origin_of(origins: &BTreeMap<String, Origin>, key: &str) -> String {
    let below = format!("{key}.");
    if let Some((_, o)) = origins.iter().find(|(k, _)| k.starts_with(&below)) {
        return o.to_string();
    }
    let mut k = key;
    loop {
        if let Some(o) = origins.get(k) {
            return o.to_string();
        }
        match k.rfind(['.', '[']) {
            Some(i) => k = &k[..i],
            None => return "defaults".to_owned(),
        }
    }
}

fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    origin: &Origin,
    origins: &mut BTreeMap<String, Origin>,
) {
    for (k, v) in over {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                merge(b, o, &key, origin, origins)
            }
            (_, v) => {
                origins.insert(key, origin.clone());
                base.insert(k, v);
            }
        }
    }
}

fn set_path(
    tree: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    origin: &Origin,
    origins: &mut BTreeMap<String, Origin>,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = tree;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
    cur.insert(last.clone(), value);
    origins.insert(path.join("."), origin.clone());
}

/// Env values are text; give them the type the default at that key has, so `BFF_GRAPHQL__MAX_DEPTH=8`
/// is a number and `BFF_AUTH__HS256_SECRET=12345…` stays a string.
fn coerce_env(tree: &toml::Table, path: &[String], raw: &str) -> toml::Value {
    let mut cur: Option<&toml::Value> = None;
    let mut table = Some(tree);
    for p in path {
        cur = table.and_then(|t| t.get(p));
        table = cur.and_then(toml::Value::as_table);
    }
    let parsed = |raw: &str| {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match cur {
        Some(toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_))
        | Some(toml::Value::Array(_)) => {
            parsed(raw).unwrap_or_else(|| toml::Value::String(raw.to_owned()))
        }
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests;
