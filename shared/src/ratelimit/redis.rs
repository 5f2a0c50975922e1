//! The Redis store: every decision is one Lua script (EVALSHA, loaded on `NOSCRIPT`) that reads
//! every key of the request, runs each policy's algorithm (the same arithmetic as
//! `super::algorithm`, operation for operation) and writes only when all admit — one round trip,
//! atomic, so N instances sharing a Redis and a key prefix share one limit. Time is Redis'
//! own `TIME` (one clock for the fleet), or passed in by tests.
//!
//! Redis slower than `redis_timeout`, or down: the decision is made by the in-process store with
//! the same policies (fail open to local, never an error to the client), counted
//! (`bff_ratelimit_store_fallback_total`), logged once when the outage starts (warn) and once
//! when Redis answers again (info). During an outage Redis is tried again at most every
//! `RETRY_AFTER_FAILURE`, by one request at a time, so an outage costs requests no waiting.
//! While the fleet is on local fallback every instance enforces each limit on its own.
//!
//! Keys: `<prefix><policy>|<parts>`, one per check, holding the check's whole state (a window
//! algorithm keeps the window's number beside its count, as the in-process store does), so the
//! script touches exactly the keys it is given in `KEYS` — which a Redis Cluster requires: a
//! script reaching a key it was not given works on a stable cluster but fails, unretryably,
//! while its slot migrates (checked against a real cluster).
//!
//! On a Redis Cluster (`rate_limits.redis_cluster`) the prefix is a hash tag (`bff:rl:` →
//! `{bff:rl}:`, [`cluster_prefix`]): every rate-limit key hashes to one slot, so a decision over
//! several policies is still one script, atomic, on the master serving that slot. The price: the
//! rate-limit keys do not spread over the cluster's masters (a replica keeps them available).
//! Routing, `MOVED` and `ASK` are redis-rs' (`crate::redis_conn`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};

use super::{Check, Clock, Store, algorithm::Verdict, error::RateLimitError, local::LocalStore};
use crate::{config::Algorithm, redis_conn::RedisConn, telemetry::metrics::Metrics};

/// How long after a failed decision Redis is left alone before one request tries it again.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// Where a decision's time comes from.
#[derive(Clone)]
pub(crate) enum TimeSource {
    /// Redis' `TIME`: the same clock for every instance.
    Server,
    /// A clock of ours (tests: the same sequence as the local store).
    #[cfg_attr(not(test), allow(dead_code))]
    Client(Arc<dyn Clock>),
}

/// How the store talks to Redis.
pub(crate) struct RedisOptions {
    pub(crate) timeout: Duration,
    /// `rate_limits.key_prefix` as configured.
    pub(crate) prefix: String,
    /// The URL is a Redis Cluster's seed nodes, comma-separated.
    pub(crate) cluster: bool,
    pub(crate) time: TimeSource,
    pub(crate) retry_after_failure: Duration,
}

/// The script. ARGV: now (µs, or "" for Redis TIME), the number of checks, then per check:
/// algorithm, limit, period (µs), burst, cost. KEYS: one key per check, the only keys it touches
/// (each holds its check's whole state: `t`/`at` of a token bucket as a hash, a leaky bucket's
/// TAT as a string, a window's number `w` with its count `c` and — sliding — the previous
/// window's `p` as a hash, as `super::algorithm::State` has them). Returns per check:
/// allowed (0/1), remaining, reset (µs), retry (µs). Numbers are written back with `%.17g` so a
/// stored double reads back as the same double.
const SCRIPT: &str = r#"
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local n = tonumber(ARGV[2])
local out = {}
local writes = {}
local all = true
local function cl(x) x = math.ceil(x) if x < 0 then return 0 end return x end
local function fl(x) x = math.floor(x) if x < 0 then return 0 end return x end
local function num(s) return string.format('%.17g', s) end
local function ms(us) return math.ceil(us / 1000) + 1000 end
for i = 1, n do
  local a = 2 + (i - 1) * 5
  local alg = ARGV[a + 1]
  local l = tonumber(ARGV[a + 2])
  local per = tonumber(ARGV[a + 3])
  local b = tonumber(ARGV[a + 4])
  local c = tonumber(ARGV[a + 5])
  local key = KEYS[i]
  local ok, rem, reset, wait = false, 0, 0, 0
  if alg == 'tb' then
    local st = redis.call('HMGET', key, 't', 'at')
    local tokens, at = b, now
    if st[1] then tokens = tonumber(st[1]); at = tonumber(st[2]) end
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    tokens = tokens + elapsed * l / per
    if tokens > b then tokens = b end
    if c > b then
      rem = fl(tokens); reset = cl((b - tokens) * per / l); wait = per
    elseif tokens >= c then
      tokens = tokens - c
      ok = true; rem = fl(tokens); reset = cl((b - tokens) * per / l)
      writes[#writes + 1] = {'tb', key, tokens, reset}
    else
      rem = fl(tokens); reset = cl((b - tokens) * per / l); wait = (c - tokens) * per / l
    end
  elseif alg == 'lb' then
    local interval = per / l
    local tat = now
    local st = redis.call('GET', key)
    if st then tat = tonumber(st) end
    if tat < now then tat = now end
    local new_tat = tat + c * interval
    local allow_at = new_tat - b * interval
    if c > b then
      rem = fl((b * interval - (tat - now)) / interval); reset = cl(tat - now); wait = per
    elseif allow_at <= now then
      ok = true; rem = fl((b * interval - (new_tat - now)) / interval); reset = cl(new_tat - now)
      writes[#writes + 1] = {'lb', key, new_tat, reset}
    else
      rem = fl((b * interval - (tat - now)) / interval); reset = cl(tat - now); wait = allow_at - now
    end
  elseif alg == 'fw' then
    local w = math.floor(now / per)
    local st = redis.call('HMGET', key, 'w', 'c')
    local count = 0
    if st[1] and tonumber(st[1]) == w then count = tonumber(st[2] or '0') end
    local r = (w + 1) * per - now
    reset = cl(r)
    if c > l then
      rem = fl(l - count); wait = per
    elseif count + c <= l then
      ok = true; rem = fl(l - count - c)
      writes[#writes + 1] = {'win', key, w, count + c, 0, r}
    else
      rem = fl(l - count); wait = r
    end
  else
    local w = math.floor(now / per)
    local st = redis.call('HMGET', key, 'w', 'c', 'p')
    local curr, prev = 0, 0
    if st[1] then
      local seen = tonumber(st[1])
      if seen == w then
        curr = tonumber(st[2] or '0'); prev = tonumber(st[3] or '0')
      elseif seen == w - 1 then
        prev = tonumber(st[2] or '0')
      end
    end
    local elapsed = now - w * per
    local estimate = prev * ((per - elapsed) / per) + curr
    local r = per - elapsed
    reset = cl(r)
    if c > l then
      rem = fl(l - estimate); wait = per
    elseif estimate + c <= l then
      ok = true; rem = fl(l - estimate - c)
      writes[#writes + 1] = {'win', key, w, curr + c, prev, per + r}
    else
      rem = fl(l - estimate)
      if curr + c <= l then
        wait = (per - (l - c - curr) * per / prev) - elapsed
      elseif curr > 0 then
        wait = r + (per - (l - c) * per / curr)
      else
        wait = r
      end
    end
  end
  if not ok then all = false end
  local retry = 0
  if not ok then retry = cl(wait) if retry < 1 then retry = 1 end end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = rem
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if all then
  for _, w in ipairs(writes) do
    if w[1] == 'tb' then
      redis.call('HSET', w[2], 't', num(w[3]), 'at', num(now))
      redis.call('PEXPIRE', w[2], ms(w[4]))
    elseif w[1] == 'lb' then
      redis.call('SET', w[2], num(w[3]), 'PX', ms(w[4]))
    else
      redis.call('HSET', w[2], 'w', string.format('%d', w[3]), 'c', num(w[4]), 'p', num(w[5]))
      redis.call('PEXPIRE', w[2], ms(w[6]))
    end
  end
end
return out
"#;

/// Whether Redis is answering, and when to try it again.
#[derive(Debug, Default)]
struct Health {
    down: bool,
    retry_at: Option<Instant>,
    probing: bool,
}

/// The prefix of every key on a Redis Cluster: `prefix` made a hash tag, its trailing `:` left
/// outside (`bff:rl:` → `{bff:rl}:`). Redis hashes only what is between a key's first `{` and the
/// next `}`; every key starts with this one and no key part can hold a brace (they are kept only
/// when made of `A-Za-z0-9_-.:/@`), so every rate-limit key is in the tag's slot. The settings
/// refuse a prefix that would make an empty tag or hold a brace.
pub(crate) fn cluster_prefix(prefix: &str) -> String {
    let tag = prefix.trim_end_matches(':');
    format!("{{{tag}}}{}", &prefix[tag.len()..])
}

/// The Redis store, with the in-process one as its fallback.
pub(crate) struct RedisStore {
    /// Replaced with a fresh one when an outage starts: a connection that stopped answering
    /// (no error, just silence) would otherwise be kept forever.
    conn: RwLock<RedisConn>,
    script: redis::Script,
    /// What every key starts with (the configured prefix, a hash tag on a cluster).
    key_prefix: String,
    opts: RedisOptions,
    local: LocalStore,
    health: Mutex<Health>,
    metrics: Option<Arc<Metrics>>,
}

/// A Redis URL (or a cluster's comma-separated seed URLs) without passwords, for messages.
fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|url| match url::Url::parse(url.trim()) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "<unparsable URL>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl RedisStore {
    pub(crate) fn new(
        url: &str,
        opts: RedisOptions,
        local: LocalStore,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, RateLimitError> {
        // While Redis is away the fallback decides, and the next probe reconnects.
        let conn = RedisConn::new(url, opts.cluster, opts.timeout).map_err(|source| {
            RateLimitError::RedisUrl {
                url: redacted(url),
                source,
            }
        })?;
        let key_prefix = if opts.cluster {
            cluster_prefix(&opts.prefix)
        } else {
            opts.prefix.clone()
        };
        Ok(Self {
            conn: RwLock::new(conn),
            script: redis::Script::new(SCRIPT),
            key_prefix,
            opts,
            local,
            health: Mutex::new(Health::default()),
            metrics,
        })
    }

    /// Whether an outage is being waited out.
    #[cfg(test)]
    pub(crate) fn health_is_down(&self) -> bool {
        self.health.lock().down
    }

    /// One decision in Redis.
    async fn remote(&self, checks: &[Check]) -> Result<Vec<Verdict>, RateLimitError> {
        let mut inv = self.script.prepare_invoke();
        let now = match &self.opts.time {
            TimeSource::Server => String::new(),
            TimeSource::Client(c) => c.now_us().to_string(),
        };
        inv.arg(now).arg(checks.len());
        for c in checks {
            let p = &c.policy.params;
            let alg = match p.algorithm {
                Algorithm::TokenBucket => "tb",
                Algorithm::LeakyBucket => "lb",
                Algorithm::FixedWindow => "fw",
                Algorithm::SlidingWindow => "sw",
            };
            inv.key(format!("{}{}", self.key_prefix, c.key));
            inv.arg(alg)
                .arg(p.limit)
                .arg(p.period_us)
                .arg(p.burst)
                .arg(c.cost);
        }
        let conn = self.conn.read().clone();
        let reply: Vec<i64> = tokio::time::timeout(self.opts.timeout, conn.invoke(&inv))
            .await
            .map_err(|_| RateLimitError::Timeout(self.opts.timeout))??;
        if reply.len() != checks.len() * 4 {
            return Err(RateLimitError::Reply(format!(
                "{} numbers for {} checks",
                reply.len(),
                checks.len()
            )));
        }
        Ok(reply
            .chunks_exact(4)
            .map(|r| Verdict {
                allowed: r[0] == 1,
                remaining: u64::try_from(r[1]).unwrap_or(0),
                reset_us: r[2],
                retry_us: r[3],
            })
            .collect())
    }

    /// Whether this decision should try Redis (not while an outage is being waited out, and
    /// only one prober at a time after it).
    fn should_try(&self) -> bool {
        let mut h = self.health.lock();
        if !h.down {
            return true;
        }
        if h.probing || h.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        h.probing = true;
        true
    }

    fn succeeded(&self) {
        let mut h = self.health.lock();
        if h.down {
            tracing::info!("rate limits: Redis answers again; deciding in Redis");
        }
        *h = Health::default();
    }

    fn failed(&self, e: &RateLimitError) {
        let mut h = self.health.lock();
        if !h.down {
            tracing::warn!(error = %e, "rate limits: Redis failed; deciding locally until it answers again");
        }
        h.down = true;
        h.probing = false;
        h.retry_at = Some(Instant::now() + self.opts.retry_after_failure);
        drop(h);
        let renewed = self.conn.read().renewed();
        match renewed {
            Ok(fresh) => *self.conn.write() = fresh,
            Err(e) => tracing::debug!(error = %e, "rate limits: cannot renew the Redis connection"),
        }
    }

    fn fallback(&self, checks: &[Check], reason: &'static str) -> Vec<Verdict> {
        if let Some(m) = &self.metrics {
            m.ratelimit_fallback(reason);
        }
        self.local.decide_now(checks)
    }

    /// Decides, in Redis or — failing that — locally.
    pub(crate) async fn decide_checks(&self, checks: &[Check]) -> Vec<Verdict> {
        if !self.should_try() {
            return self.fallback(checks, "down");
        }
        match self.remote(checks).await {
            Ok(v) => {
                self.succeeded();
                v
            }
            Err(e) => {
                let reason = match e {
                    RateLimitError::Timeout(_) => "timeout",
                    _ => "error",
                };
                self.failed(&e);
                self.fallback(checks, reason)
            }
        }
    }
}

impl Store for RedisStore {
    fn decide<'a>(&'a self, checks: &'a [Check]) -> BoxFuture<'a, Vec<Verdict>> {
        Box::pin(self.decide_checks(checks))
    }
}
