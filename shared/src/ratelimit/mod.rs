//! Rate limits: the configured policies, which of them apply to a request, the request's key
//! for each, the stores that decide (in-process [`local`], fleet-wide [`redis`] with a local
//! fallback), and the answer's headers (`RateLimit-Policy`, `RateLimit`, `Retry-After`).
//!
//! Owns deciding; it does not own where in the request's walk it happens: the pipeline stage
//! (`crate::pipeline::ratelimit`) runs the policies that need only the client (its address, its
//! verified subject, the binary, the route) before anything is parsed, and hands the GraphQL
//! service a [`LateLimits`] for the policies that need the operation (its name, its cost,
//! whether it is a mutation), decided after its analysis.
//!
//! # Stacking
//! All policies of one stage are decided together and atomically (one lock set locally, one
//! Lua script in Redis): when one refuses, none is charged. A request admitted before parsing
//! and refused after it has been charged by the early policies; that is deliberate — it was
//! received, read and parsed, which is what the early (per-client) policies protect.
//!
//! Layout: [`algorithm`] (the four algorithms, pure), [`local`] (moka-bounded keys), [`redis`]
//! (Lua scripts, fallback), `late` (a request's after-analysis checks), [`error`].

pub(crate) mod algorithm;
pub mod error;
mod late;
pub(crate) mod local;
pub(crate) mod redis;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};

pub use algorithm::Verdict;
pub use error::RateLimitError;
pub use late::LateLimits;

use crate::{
    config::{Algorithm, Cost, KeyPart, PolicySettings, RateLimitSettings, Scope},
    telemetry::metrics::Metrics,
};

/// Header names of draft-ietf-httpapi-ratelimit-headers.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// See [`RATELIMIT_POLICY`].
pub const RATELIMIT: &str = "ratelimit";

/// What the algorithms need of a policy, in the stores' units (µs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: u64,
    pub(crate) period_us: i64,
    pub(crate) burst: u64,
}

/// One configured policy.
#[derive(Debug)]
pub struct Policy {
    name: Arc<str>,
    params: Params,
    key: Vec<KeyPart>,
    scope: Scope,
    cost: Cost,
    late: bool,
    /// `"name";q=…;w=…`, made once.
    header: String,
}

impl Policy {
    fn new(s: &PolicySettings) -> Self {
        let period_us = i64::try_from(s.period.as_micros()).unwrap_or(i64::MAX);
        let params = Params {
            algorithm: s.algorithm,
            limit: s.limit,
            period_us,
            burst: s.effective_burst(),
        };
        // `w` is whole seconds in the draft; a sub-second period rounds up to 1.
        let w = s.period.as_secs() + u64::from(s.period.subsec_nanos() > 0);
        Self {
            name: s.name.as_str().into(),
            params,
            key: s.key.clone(),
            scope: s.scope.clone(),
            cost: s.cost,
            late: s.needs_operation(),
            header: format!("\"{}\";q={};w={}", s.name, s.limit, w.max(1)),
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where a request is going: the GraphQL service or a pass-through route (by prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/graphql`.
    Graphql,
    /// The route with this prefix.
    Route(String),
}

impl Target {
    fn label(&self) -> &str {
        match self {
            Self::Graphql => "/graphql",
            Self::Route(p) => p,
        }
    }
}

/// What keys are made of: everything known about the request at the stage deciding.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The client address.
    pub ip: IpAddr,
    /// The verified subject, `None` when anonymous.
    pub user: Option<String>,
    /// Where the request goes.
    pub target: Target,
}

/// What the GraphQL service knows after its analysis.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    /// The operation's name, `None` when unnamed.
    pub name: Option<&'a str>,
    /// Whether it is a mutation.
    pub mutation: bool,
    /// Its estimated cost (1 when it could not be measured).
    pub cost: u64,
}

/// One key to decide, with its policy and cost.
pub(crate) struct Check {
    pub(crate) policy: Arc<Policy>,
    pub(crate) key: String,
    pub(crate) cost: u64,
}

/// A store decides a set of checks together: all admitted and charged, or none charged.
pub(crate) trait Store: Send + Sync {
    fn decide<'a>(&'a self, checks: &'a [Check]) -> BoxFuture<'a, Vec<Verdict>>;
}

/// Time in microseconds since the Unix epoch (so local and Redis decisions agree on windows).
pub trait Clock: Send + Sync {
    /// Now.
    fn now_us(&self) -> i64;
}

/// The system clock read once and then advanced monotonically: a wall-clock step back never
/// makes a window or bucket go back in time.
#[derive(Debug)]
pub struct SystemClock {
    base_us: i64,
    started: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            base_us: i64::try_from(base.as_micros()).unwrap_or(0),
            started: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        self.base_us + i64::try_from(self.started.elapsed().as_micros()).unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `us`.
    pub fn at(us: i64) -> Self {
        Self(AtomicI64::new(us))
    }

    /// Moves it forward.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The decisions of one stage for one request.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    decided: Vec<(Arc<Policy>, Verdict)>,
}

impl Outcome {
    /// Whether every policy admitted the request.
    pub fn allowed(&self) -> bool {
        self.decided.iter().all(|(_, v)| v.allowed)
    }

    /// Whether any policy applied.
    pub fn is_empty(&self) -> bool {
        self.decided.is_empty()
    }

    /// Each policy's verdict.
    pub fn verdicts(&self) -> impl Iterator<Item = (&str, &Verdict)> {
        self.decided.iter().map(|(p, v)| (p.name(), v))
    }

    /// Adds later decisions (another stage's, or a batch's next operation's). A policy decided
    /// again keeps one entry describing the state after both: refused if either refused, the
    /// fewest units left and the longest waits (a batch's operations may hit several keys of
    /// one policy; the headers name the most constrained one).
    pub fn extend(&mut self, other: Outcome) {
        for (policy, v) in other.decided {
            match self
                .decided
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(p, &policy))
            {
                Some((_, seen)) => {
                    seen.allowed &= v.allowed;
                    seen.remaining = seen.remaining.min(v.remaining);
                    seen.reset_us = seen.reset_us.max(v.reset_us);
                    seen.retry_us = seen.retry_us.max(v.retry_us);
                }
                None => self.decided.push((policy, v)),
            }
        }
    }

    /// `Retry-After` in whole seconds (at least 1): until the last refusing policy would admit.
    pub fn retry_after_secs(&self) -> u64 {
        let us = self
            .decided
            .iter()
            .filter(|(_, v)| !v.allowed)
            .map(|(_, v)| v.retry_us)
            .max()
            .unwrap_or(0);
        secs_ceil(us).max(1)
    }

    /// A client-safe message for a refusal.
    pub fn message(&self) -> String {
        let names: Vec<&str> = self
            .decided
            .iter()
            .filter(|(_, v)| !v.allowed)
            .map(|(p, _)| p.name())
            .collect();
        format!(
            "rate limit exceeded ({}); retry after {} s",
            names.join(", "),
            self.retry_after_secs()
        )
    }

    /// Sets `RateLimit-Policy` and `RateLimit` (every policy decided) and, when refused,
    /// `Retry-After`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.decided.is_empty() {
            return;
        }
        let mut policy = String::new();
        let mut state = String::new();
        for (i, (p, v)) in self.decided.iter().enumerate() {
            if i > 0 {
                policy.push_str(", ");
                state.push_str(", ");
            }
            policy.push_str(&p.header);
            let _ = write!(
                state,
                "\"{}\";r={};t={}",
                p.name,
                v.remaining,
                secs_ceil(v.reset_us)
            );
        }
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Ok(v) = HeaderValue::from_str(&state) {
            headers.insert(RATELIMIT, v);
        }
        if !self.allowed() {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs()),
            );
        }
    }
}

fn secs_ceil(us: i64) -> u64 {
    u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1_000_000)
}

/// The limiter: policies and their store.
pub struct RateLimiter {
    policies: Vec<Arc<Policy>>,
    store: Arc<dyn Store>,
    client: &'static str,
    metrics: Option<Arc<Metrics>>,
    /// Leading bits of an IPv6 address in its `ip` key (`rate_limits.ipv6_prefix`).
    ipv6_prefix: u8,
}

impl RateLimiter {
    /// Builds the limiter for `settings` (`None` when there are no policies); `client` is the
    /// binary (`web`, `mobile`) for the `client` key part.
    pub fn new(
        settings: &RateLimitSettings,
        client: &'static str,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Option<Self>, RateLimitError> {
        Self::with_clock(settings, client, metrics, Arc::new(SystemClock::default()))
    }

    /// [`RateLimiter::new`] with a given clock for the in-process store (the Redis store uses
    /// Redis' own `TIME`, which every instance shares).
    pub fn with_clock(
        settings: &RateLimitSettings,
        client: &'static str,
        metrics: Option<Arc<Metrics>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Self>, RateLimitError> {
        if settings.policies.is_empty() {
            return Ok(None);
        }
        let policies: Vec<Arc<Policy>> = settings
            .policies
            .iter()
            .map(|p| Arc::new(Policy::new(p)))
            .collect();
        let store = store(settings, &policies, metrics.clone(), clock)?;
        Ok(Some(Self {
            policies,
            store,
            client,
            metrics,
            ipv6_prefix: settings.ipv6_prefix,
        }))
    }

    /// Whether any policy (before or after parsing) applies to requests for `target`: the
    /// pipeline leaves its stage out of routes no policy concerns.
    pub fn applies_to(&self, target: &Target) -> bool {
        self.policies.iter().any(|p| match (&p.scope, target) {
            (Scope::All, _) => true,
            (Scope::Graphql | Scope::Mutations, Target::Graphql) => true,
            (Scope::Route(r), Target::Route(t)) => r == t,
            _ => false,
        })
    }

    /// Decides the policies that need only the client (before parsing).
    pub async fn check_early(&self, subject: &Subject) -> Outcome {
        let checks: Vec<Check> = self
            .policies
            .iter()
            .filter(|p| !p.late)
            .filter(|p| match (&p.scope, &subject.target) {
                (Scope::All, _) => true,
                (Scope::Graphql, Target::Graphql) => true,
                (Scope::Route(r), Target::Route(t)) => r == t,
                _ => false,
            })
            .map(|p| Check {
                key: key_of(p, subject, self.client, None, self.ipv6_prefix),
                policy: p.clone(),
                cost: 1,
            })
            .collect();
        self.decide(checks).await
    }

    /// Decides the policies that need the operation (after the GraphQL analysis).
    pub async fn check_late(&self, subject: &Subject, op: Operation<'_>) -> Outcome {
        let checks: Vec<Check> = self
            .policies
            .iter()
            .filter(|p| p.late)
            .filter(|p| match p.scope {
                Scope::Graphql => true,
                Scope::Mutations => op.mutation,
                _ => false,
            })
            .map(|p| Check {
                key: key_of(
                    p,
                    subject,
                    self.client,
                    Some(op.name.unwrap_or("anonymous")),
                    self.ipv6_prefix,
                ),
                policy: p.clone(),
                cost: match p.cost {
                    Cost::One => 1,
                    Cost::Operation => op.cost.max(1),
                },
            })
            .collect();
        self.decide(checks).await
    }

    async fn decide(&self, checks: Vec<Check>) -> Outcome {
        if checks.is_empty() {
            return Outcome::default();
        }
        let verdicts = self.store.decide(&checks).await;
        let all = verdicts.iter().all(|v| v.allowed);
        let decided: Vec<(Arc<Policy>, Verdict)> = checks
            .into_iter()
            .zip(verdicts)
            .map(|(c, mut v)| {
                // An admitting policy of a refused request was not charged: it has what it had
                // (the algorithms' remaining counts are whole units, so this is exact).
                if !all && v.allowed {
                    v.remaining += c.cost;
                }
                (c.policy, v)
            })
            .collect();
        if let Some(m) = &self.metrics {
            for (p, v) in &decided {
                m.ratelimit_decision(p.name(), v.allowed);
            }
        }
        Outcome { decided }
    }
}

/// The store `settings` name for `policies`: in process, or Redis with an in-process fallback.
fn store(
    settings: &RateLimitSettings,
    policies: &[Arc<Policy>],
    metrics: Option<Arc<Metrics>>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Store>, RateLimitError> {
    let local = local::LocalStore::new(policies, settings.max_keys, clock);
    Ok(if settings.store == "local" {
        Arc::new(local)
    } else {
        Arc::new(redis::RedisStore::new(
            &settings.store,
            redis::RedisOptions {
                timeout: settings.redis_timeout,
                prefix: settings.key_prefix.clone(),
                cluster: settings.redis_cluster,
                time: redis::TimeSource::Server,
                retry_after_failure: redis::RETRY_AFTER_FAILURE,
            },
            local,
            metrics,
        )?)
    })
}

/// The failed-authentication limit (`rate_limits.failed_auth`): failures are counted per client
/// address, and a request presenting credentials from an address over the limit is refused
/// before they are verified ([`FailedAuth::refuses`] looks without charging; [`FailedAuth::failed`]
/// charges one failure). Looking and charging are two decisions, so concurrent requests from
/// one address may each be verified before the first failure is counted: at most the limit
/// plus the requests in flight at once get verified.
///
/// Only addresses this instance saw fail within the period are looked up: a signed-in user
/// whose address never failed costs no store decision (no Redis round trip per request). An
/// address failing at another instance is looked up here after its first failure here, so
/// across a fleet sharing Redis each instance verifies at most one token more than the limit.
pub struct FailedAuth {
    policy: Arc<Policy>,
    store: Arc<dyn Store>,
    ipv6_prefix: u8,
    /// Keys of addresses that failed here within the period (bounded like the local store).
    suspects: moka::sync::Cache<String, ()>,
}

impl FailedAuth {
    /// The limit `settings` describe, `None` when `failed_auth.limit` is 0.
    pub fn new(
        settings: &RateLimitSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Option<Self>, RateLimitError> {
        Self::with_clock(settings, metrics, Arc::new(SystemClock::default()))
    }

    /// [`FailedAuth::new`] with a given clock for the in-process store.
    pub fn with_clock(
        settings: &RateLimitSettings,
        metrics: Option<Arc<Metrics>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Self>, RateLimitError> {
        if settings.failed_auth.limit == 0 {
            return Ok(None);
        }
        let policy = Arc::new(Policy::new(&settings.failed_auth.policy()));
        let store = store(settings, std::slice::from_ref(&policy), metrics, clock)?;
        // A sliding window remembers the previous period too: twice the period covers every
        // algorithm's memory of a failure.
        let suspects = moka::sync::Cache::builder()
            .max_capacity(settings.max_keys)
            .time_to_live(settings.failed_auth.period.saturating_mul(2))
            .build();
        Ok(Some(Self {
            policy,
            store,
            ipv6_prefix: settings.ipv6_prefix,
            suspects,
        }))
    }

    fn key(&self, ip: IpAddr) -> String {
        let mut key = String::with_capacity(48);
        key.push_str(&self.policy.name);
        key.push('|');
        push_part(&mut key, "ip=", &ip_key(ip, self.ipv6_prefix));
        key
    }

    fn check(&self, key: String, cost: u64) -> Check {
        Check {
            policy: self.policy.clone(),
            key,
            cost,
        }
    }

    /// `Some(refusal)` when `ip` has used up its failures: the request is refused (`429`)
    /// without verifying anything. Charges nothing (a decision of cost 0 reads the state).
    pub async fn refuses(&self, ip: IpAddr) -> Option<Outcome> {
        let key = self.key(ip);
        if !self.suspects.contains_key(&key) {
            return None;
        }
        let checks = [self.check(key, 0)];
        let mut verdicts = self.store.decide(&checks).await;
        let mut v = verdicts.pop()?;
        if v.allowed && v.remaining > 0 {
            return None;
        }
        // Exhausted: refused until the quota is whole again, at the latest.
        v.allowed = false;
        if v.retry_us <= 0 {
            v.retry_us = v.reset_us;
        }
        Some(Outcome {
            decided: vec![(self.policy.clone(), v)],
        })
    }

    /// Counts one failed authentication from `ip`.
    pub async fn failed(&self, ip: IpAddr) {
        let key = self.key(ip);
        self.suspects.insert(key.clone(), ());
        let checks = [self.check(key, 1)];
        self.store.decide(&checks).await;
    }
}

/// Longest key part kept as it is; longer (or unusual) values are hashed, so a client cannot
/// make keys (memory, Redis key length) as large as it likes.
const MAX_PART: usize = 64;

/// The key of `policy` for `subject`: `name|part|part…`, each part tagged and either kept as it
/// is (short, of safe characters) or replaced by a hash.
fn key_of(
    policy: &Policy,
    subject: &Subject,
    client: &str,
    operation: Option<&str>,
    ipv6_prefix: u8,
) -> String {
    let mut key = String::with_capacity(64);
    let ip = ip_key(subject.ip, ipv6_prefix);
    key.push_str(&policy.name);
    for part in &policy.key {
        key.push('|');
        match part {
            KeyPart::Ip => push_part(&mut key, "ip=", &ip),
            // Anonymous requests are keyed by address, tagged apart from any subject.
            KeyPart::User => match &subject.user {
                Some(u) => push_part(&mut key, "u=", u),
                None => push_part(&mut key, "a=", &ip),
            },
            KeyPart::Client => push_part(&mut key, "c=", client),
            KeyPart::Operation => push_part(&mut key, "o=", operation.unwrap_or("anonymous")),
            KeyPart::Route => push_part(&mut key, "r=", subject.target.label()),
        }
    }
    key
}

/// The client address as a key: IPv4 whole (`192.0.2.7`), IPv6 as its network of `prefix` bits
/// (`2001:db8:1:2::/64`), so every address one client can pick from its allocation shares one
/// key. An IPv4-mapped IPv6 address is its IPv4 address.
pub(crate) fn ip_key(ip: IpAddr, prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = prefix.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("{net}/{prefix}")
        }
    }
}

fn push_part(key: &mut String, tag: &str, value: &str) {
    key.push_str(tag);
    let safe = value.len() <= MAX_PART
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@".contains(&b));
    if safe {
        key.push_str(value);
    } else {
        // `#` never appears in a kept value, so a hash cannot collide with one.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
        key.push('#');
        for b in &digest.as_ref()[..16] {
            let _ = write!(key, "{b:02x}");
        }
    }
}
