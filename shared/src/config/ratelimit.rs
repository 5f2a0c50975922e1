//! Rate-limit settings (`[rate_limits]` and its `[[rate_limits.policies]]`): the store, its
//! bounds, and each policy's algorithm, limit, key, scope and cost, with their validation. Only
//! the settings live here; the limiter itself is `crate::ratelimit`.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Invalid, duration, invalid};

/// Rate limits (`rate_limits.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// `"local"` (in-process, per instance) or a `redis://host:port[/db]` URL (one limit shared by
    /// every instance using that Redis and key prefix); with `redis_cluster`, one or more seed
    /// nodes of a Redis Cluster, comma-separated.
    pub store: String,
    /// The Redis store is a Redis Cluster (`rate_limits.redis_cluster`). Every key then carries
    /// one hash tag made of `key_prefix` (`bff:rl:` → `{bff:rl}:…`): all rate-limit keys live in
    /// one slot, so each decision stays one atomic script over keys of one slot.
    pub redis_cluster: bool,
    /// Longest a Redis decision may take; slower (or Redis down) → the decision is made locally.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key (`bff:rl:`), so several fleets or tests can share one Redis.
    pub key_prefix: String,
    /// Most keys the in-process store holds (also the local fallback of the Redis store); past
    /// it the least useful keys are dropped, so a flood of distinct keys cannot grow memory.
    pub max_keys: u64,
    /// How many leading bits of an IPv6 client address make its `ip` key
    /// (`rate_limits.ipv6_prefix`, default 64): one subscriber, one host or one cloud VM is
    /// handed a whole /64 and can pick any address in it, so per-address keys would give it
    /// 2^64 buckets. IPv4 addresses are keyed whole (/32).
    pub ipv6_prefix: u8,
    /// Requests whose credentials do not verify, counted per client address
    /// (`rate_limits.failed_auth`): past the limit, a request presenting a token is refused
    /// with `429` before the token is looked at, so a flood of forged tokens costs no
    /// verification work. `limit = 0` turns it off.
    pub failed_auth: FailedAuthSettings,
    /// The policies; a request is admitted only when every policy that applies admits it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySettings>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            store: "local".to_owned(),
            redis_cluster: false,
            redis_timeout: Duration::from_millis(50),
            key_prefix: "bff:rl:".to_owned(),
            max_keys: 100_000,
            ipv6_prefix: 64,
            failed_auth: FailedAuthSettings::default(),
            policies: Vec::new(),
        }
    }
}

/// `rate_limits.failed_auth`: failed authentications allowed per client address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedAuthSettings {
    /// Failed authentications admitted per `period` from one address (an IPv6 address counts
    /// as its `ipv6_prefix` network); `0` turns the limit off. Default 30 a minute: a person
    /// mistyping or an app with an expired token stays far below it, a token-guessing loop
    /// does not.
    pub limit: u64,
    /// The period `limit` is counted over.
    #[serde(with = "duration")]
    pub period: Duration,
    /// How failures are counted (as for a policy); default `sliding_window`.
    pub algorithm: Algorithm,
}

impl Default for FailedAuthSettings {
    fn default() -> Self {
        Self {
            limit: 30,
            period: Duration::from_secs(60),
            algorithm: Algorithm::SlidingWindow,
        }
    }
}

impl FailedAuthSettings {
    /// The policy the limiter runs for it (`failed-auth`, keyed by the client address).
    pub fn policy(&self) -> PolicySettings {
        PolicySettings {
            name: "failed-auth".to_owned(),
            algorithm: self.algorithm,
            limit: self.limit,
            period: self.period,
            burst: None,
            key: vec![KeyPart::Ip],
            scope: Scope::All,
            cost: Cost::One,
        }
    }
}

/// One policy (`[[rate_limits.policies]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Name in headers (`RateLimit-Policy: "name";…`), metrics and logs.
    pub name: String,
    /// `token_bucket`, `leaky_bucket`, `fixed_window` or `sliding_window`.
    pub algorithm: Algorithm,
    /// Units admitted per `period` (requests, or cost units with `cost = "operation"`).
    pub limit: u64,
    /// The period `limit` is counted over (`"1s"`, `"1m"`).
    #[serde(with = "duration")]
    pub period: Duration,
    /// Token and leaky bucket: the most units admitted at once. Default: `limit` for the token
    /// bucket (a full period's worth), 1 for the leaky bucket (a smooth outflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What the limit is counted per (a combination: each distinct tuple has its own limit).
    pub key: Vec<KeyPart>,
    /// Which requests the policy applies to.
    #[serde(default = "default_scope")]
    pub scope: Scope,
    /// What one request costs: `one`, or the operation's estimated cost (`operation`).
    #[serde(default = "default_cost")]
    pub cost: Cost,
}

fn default_scope() -> Scope {
    Scope::Graphql
}

fn default_cost() -> Cost {
    Cost::One
}

impl PolicySettings {
    /// The burst after defaults (token bucket: `limit`; leaky bucket: 1; windows: `limit`).
    pub fn effective_burst(&self) -> u64 {
        match (self.algorithm, self.burst) {
            (Algorithm::TokenBucket | Algorithm::LeakyBucket, Some(b)) => b,
            (Algorithm::LeakyBucket, None) => 1,
            _ => self.limit,
        }
    }

    /// Whether the policy can only be decided once the operation is parsed and measured: it
    /// keys by operation, costs the operation's estimate, or applies to mutations only.
    pub fn needs_operation(&self) -> bool {
        self.key.contains(&KeyPart::Operation)
            || self.cost == Cost::Operation
            || self.scope == Scope::Mutations
    }
}

/// `rate_limits.policies[].algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Tokens refill at `limit / period` up to `burst`; each request takes its cost.
    TokenBucket,
    /// GCRA: one unit every `period / limit`, with `burst` units of tolerance.
    LeakyBucket,
    /// `limit` per aligned window of `period` (spikes of up to 2× at window edges).
    FixedWindow,
    /// The previous window's count weighted by its overlap plus the current one's.
    SlidingWindow,
}

impl Algorithm {
    /// The config name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::LeakyBucket => "leaky_bucket",
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindow => "sliding_window",
        }
    }
}

/// One component of a policy's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The client address (the pipeline's, behind trusted proxies the real client's).
    Ip,
    /// The verified subject; anonymous requests fall back to the client address.
    User,
    /// The binary (`web`, `mobile`).
    Client,
    /// The GraphQL operation name (`anonymous` when unnamed); chosen by the client.
    Operation,
    /// `/graphql` or the pass-through route's prefix.
    Route,
}

/// `rate_limits.policies[].cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    /// Every request costs 1.
    One,
    /// A GraphQL request costs its operation's estimated cost (the cost model).
    Operation,
}

/// `rate_limits.policies[].scope`: `graphql`, `mutations`, `all` or `route:<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every GraphQL request.
    Graphql,
    /// GraphQL mutations only.
    Mutations,
    /// Every GraphQL request and every pass-through route.
    All,
    /// One pass-through route, named by its prefix (`route:/api/images`).
    Route(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Graphql => f.write_str("graphql"),
            Self::Mutations => f.write_str("mutations"),
            Self::All => f.write_str("all"),
            Self::Route(p) => write!(f, "route:{p}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "graphql" => Ok(Self::Graphql),
            "mutations" => Ok(Self::Mutations),
            "all" => Ok(Self::All),
            _ => match s.strip_prefix("route:") {
                Some(p) if !p.is_empty() => Ok(Self::Route(p.to_owned())),
                _ => Err(format!(
                    "`{s}` is not a scope: graphql, mutations, all or route:<prefix> (e.g. route:/api/images)"
                )),
            },
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Largest `limit` and `burst`: counts stay exact in the f64 arithmetic both stores share
/// (Redis' Lua has only doubles).
const MAX_UNITS: u64 = 1_000_000_000;

impl RateLimitSettings {
    /// Checks the store, the bounds and each policy; `routes` are the configured pass-through
    /// prefixes.
    pub(super) fn validate(&self, routes: &[&str]) -> Result<(), Invalid> {
        check(self, routes).map_err(|(key, msg)| invalid(&format!("rate_limits.{key}"), msg))
    }
}

/// [`RateLimitSettings::validate`]'s checks; errors are `(key below rate_limits, why)`.
fn check(s: &RateLimitSettings, routes: &[&str]) -> Result<(), (String, String)> {
    let err = |k: &str, m: String| Err((k.to_owned(), m));
    if s.redis_cluster {
        if s.store == "local" {
            return err(
                "redis_cluster",
                "applies to a Redis store: set `store` to the cluster's seed redis:// URLs".into(),
            );
        }
        for node in s.store.split(',').map(str::trim) {
            match url::Url::parse(node) {
                Ok(u) if u.scheme() == "redis" && u.host_str().is_some() => {
                    if !matches!(u.path(), "" | "/" | "/0") {
                        return err(
                            "store",
                            format!("`{node}`: a Redis Cluster has database 0 only"),
                        );
                    }
                }
                _ => {
                    return err(
                        "store",
                        format!(
                            "`{node}`: with redis_cluster, seed nodes as redis://host:port URLs, comma-separated"
                        ),
                    );
                }
            }
        }
        // The prefix becomes the hash tag of every key: it must make a tag (something inside
        // the braces) and hold no brace that would end or start another.
        if s.key_prefix.contains(['{', '}']) || s.key_prefix.trim_end_matches(':').is_empty() {
            return err(
                "key_prefix",
                format!(
                    "`{}`: with redis_cluster it becomes every key's hash tag: at least one character besides `:`, and no `{{` or `}}`",
                    s.key_prefix
                ),
            );
        }
    } else if s.store != "local" {
        match url::Url::parse(&s.store) {
            Ok(u) if u.scheme() == "redis" && u.host_str().is_some() => {}
            _ => {
                let hint = if s.store.contains(',') {
                    " (several seed nodes of a Redis Cluster need redis_cluster = true)"
                } else {
                    ""
                };
                return err(
                    "store",
                    format!(
                        "`{}`: must be \"local\" or a redis://host:port URL{hint}",
                        s.store
                    ),
                );
            }
        }
    }
    if s.redis_timeout.is_zero() {
        return err("redis_timeout", "must be > 0".into());
    }
    if s.max_keys == 0 {
        return err("max_keys", "must be > 0".into());
    }
    if !(1..=128).contains(&s.ipv6_prefix) {
        return err(
            "ipv6_prefix",
            format!(
                "{}: must be 1..=128 (bits of an IPv6 address that key it; 64 = one subscriber's /64)",
                s.ipv6_prefix
            ),
        );
    }
    let fa = &s.failed_auth;
    if fa.limit > MAX_UNITS {
        return err(
            "failed_auth.limit",
            format!("must be 0 (off) ..={MAX_UNITS}"),
        );
    }
    if fa.limit > 0 && fa.period < Duration::from_millis(1) {
        return err("failed_auth.period", "must be at least 1ms".into());
    }
    if fa.period > Duration::from_secs(366 * 24 * 3600) {
        return err("failed_auth.period", "must be at most a year".into());
    }
    if s.policies.iter().any(|p| p.name == "failed-auth") {
        return err(
            "policies",
            "the name `failed-auth` is taken by rate_limits.failed_auth".into(),
        );
    }
    if s.key_prefix.len() > 64 {
        return err("key_prefix", "must be at most 64 bytes".into());
    }
    for (i, p) in s.policies.iter().enumerate() {
        let key = |k: &str| format!("policies[{i}].{k}");
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return err(
                &key("name"),
                format!(
                    "`{}`: 1–64 characters of A–Z, a–z, 0–9, `_`, `-`, `.` (it is sent in headers and used as a metric label)",
                    p.name
                ),
            );
        }
        if s.policies[..i].iter().any(|o| o.name == p.name) {
            return err(&key("name"), format!("`{}` is used twice", p.name));
        }
        if p.limit == 0 || p.limit > MAX_UNITS {
            return err(&key("limit"), format!("must be 1..={MAX_UNITS}"));
        }
        if p.period < Duration::from_millis(1) {
            return err(&key("period"), "must be at least 1ms".into());
        }
        if p.period > Duration::from_secs(366 * 24 * 3600) {
            return err(&key("period"), "must be at most a year".into());
        }
        match (p.algorithm, p.burst) {
            (Algorithm::FixedWindow | Algorithm::SlidingWindow, Some(_)) => {
                return err(
                    &key("burst"),
                    "applies to token_bucket and leaky_bucket only (a window's burst is its limit)"
                        .into(),
                );
            }
            (_, Some(b)) if b == 0 || b > MAX_UNITS => {
                return err(&key("burst"), format!("must be 1..={MAX_UNITS}"));
            }
            _ => {}
        }
        if p.key.is_empty() {
            return err(
                &key("key"),
                "name at least one of ip, user, client, operation, route".into(),
            );
        }
        if p.key
            .iter()
            .enumerate()
            .any(|(j, k)| p.key[..j].contains(k))
        {
            return err(&key("key"), "lists a part twice".into());
        }
        if let Scope::Route(prefix) = &p.scope
            && !routes.contains(&prefix.as_str())
        {
            return err(
                &key("scope"),
                format!("`route:{prefix}`: no [[routes]] entry has that prefix"),
            );
        }
        let graphql_only = matches!(p.scope, Scope::Graphql | Scope::Mutations);
        if !graphql_only && p.needs_operation() {
            return err(
                &key("scope"),
                format!(
                    "`{}`: a policy keyed by `operation` or with cost = \"operation\" applies to GraphQL only (scope graphql or mutations)",
                    p.scope
                ),
            );
        }
    }
    Ok(())
}
