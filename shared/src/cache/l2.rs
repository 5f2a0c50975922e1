//! L2: the fleet's shared fragment tier in Redis (`cache.l2`), a single server or a Redis Cluster.
//! It sits after L1 in [`super::FragmentCache`]: an L1 miss reads here before any backend call,
//! a backend answer is written to both, and an L2 hit fills L1. So an instance that starts (or
//! restarts) finds warm what another instance already loaded.
//!
//! Same keys as L1 (the fragment key: kind, schema version, parameters and — for personal
//! fragments — the verified user id), so the scoping rules are L1's: no key a client can choose
//! reaches another user's entry, and anonymous and signed-in never share one. Each key is one
//! Redis key (`<prefix><fragment key>`): every command names one key, so a cluster routes each
//! by itself (`MOVED`/`ASK` are the client library's business).
//!
//! Values: a small header (format, kind, when the value was loaded) and the fragment as JSON,
//! zstd-compressed; at most `cache.l2_max_entry_bytes` (larger values stay in L1 only), kept in
//! Redis for the kind's TTL + max-stale from when it was loaded, so the freshness rules (TTL,
//! stale-while-revalidate, stale-if-error) are the same on every instance.
//!
//! Redis slow or down: every command is bounded by `cache.l2_timeout`; a failure makes the tier
//! step aside (reads miss, writes are dropped) and lets one command try again every
//! [`RETRY_AFTER_FAILURE`], so an outage costs requests no waiting and never an error. The
//! outage is logged once when it starts (warn) and once when it ends (info), and counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{
    Clock, Fragment, FragmentKind,
    tier::{Stored, Tier},
};
use crate::{
    domain::{
        ContinueWatchingEntry, MyListEntry, NewRelease, Profile, Recommendation, Title, Top10Entry,
    },
    redis_conn::RedisConn,
};

/// How long after a failed command the tier is left alone before one command tries it again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// The first bytes of every value: the format (bump it to make old values unreadable).
const MAGIC: [u8; 3] = *b"BF1";
/// Magic, kind, load time (µs since the Unix epoch).
const HEADER: usize = MAGIC.len() + 1 + 8;
/// zstd level: fast, and ~5-10x on fragment JSON.
const LEVEL: i32 = 3;

/// How the tier reaches Redis.
#[derive(Debug, Clone)]
pub struct L2Options {
    /// `redis://` / `rediss://` URL; for a cluster, one or more seed nodes, comma-separated.
    pub url: String,
    /// Talk to a Redis Cluster (slots and redirections followed by the client library).
    pub cluster: bool,
    /// Prepended to every key: instances sharing a prefix share entries.
    pub prefix: String,
    /// Longest any command may take before the tier steps aside.
    pub timeout: Duration,
    /// Largest compressed value written; larger fragments stay in L1 only.
    pub max_entry_bytes: usize,
    /// How long each kind may be served at all (TTL + max-stale): the keys' expiry.
    pub keep: [Duration; 7],
}

/// Why the tier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// The URL (or a seed node's) is not a Redis URL.
    #[error("cache.l2: {0}")]
    Url(#[source] redis::RedisError),
}

/// Counters of the tier (the metrics read them).
#[derive(Debug, Default)]
pub struct L2Stats {
    /// Reads that found a usable value.
    pub hits: AtomicU64,
    /// Reads that found nothing (or a value of another format).
    pub misses: AtomicU64,
    /// Commands that failed or timed out.
    pub errors: AtomicU64,
    /// Commands not sent because the tier had stepped aside.
    pub skipped: AtomicU64,
    /// Values not written because they were over `max_entry_bytes`.
    pub too_large: AtomicU64,
    /// Compressed bytes read (hits).
    pub bytes_read: AtomicU64,
    /// Compressed bytes written.
    pub bytes_written: AtomicU64,
}

impl L2Stats {
    /// Hits, misses, errors, skipped, too large, bytes read, bytes written.
    pub fn totals(&self) -> [u64; 7] {
        [
            &self.hits,
            &self.misses,
            &self.errors,
            &self.skipped,
            &self.too_large,
            &self.bytes_read,
            &self.bytes_written,
        ]
        .map(|c| c.load(Relaxed))
    }
}

/// Whether Redis answers, as far as this tier knows.
#[derive(Default)]
struct Health {
    /// Since when commands fail; `None` while they succeed.
    down_since: Option<Instant>,
    /// When the next command may try again.
    retry_at: Option<Instant>,
}

/// The Redis tier.
pub struct RedisTier {
    conn: RedisConn,
    opts: L2Options,
    clock: Clock,
    health: Mutex<Health>,
    stats: Arc<L2Stats>,
}

impl RedisTier {
    /// A tier over `opts.url`; connects lazily (a Redis that is not up yet is an outage, not an
    /// error here).
    pub fn new(opts: L2Options, clock: Clock) -> Result<Self, L2Error> {
        let conn = RedisConn::new(&opts.url, opts.cluster, opts.timeout).map_err(L2Error::Url)?;
        Ok(Self {
            conn,
            opts,
            clock,
            health: Mutex::new(Health::default()),
            stats: Arc::default(),
        })
    }

    /// The tier's counters.
    pub fn stats(&self) -> &Arc<L2Stats> {
        &self.stats
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.opts.prefix)
    }

    /// Runs `cmd` unless the tier has stepped aside; `None` when it was not sent, failed or took
    /// longer than the timeout (each counted, an outage logged once).
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        {
            let mut h = self.health.lock();
            if let Some(at) = h.retry_at {
                let now = Instant::now();
                if now < at {
                    self.stats.skipped.fetch_add(1, Relaxed);
                    return None;
                }
                // This command is the one that tries again; the others keep stepping aside.
                h.retry_at = Some(now + RETRY_AFTER_FAILURE);
            }
        }
        let result = tokio::time::timeout(self.opts.timeout, self.conn.query::<T>(&cmd)).await;
        let mut h = self.health.lock();
        match result {
            Ok(Ok(v)) => {
                if let Some(since) = h.down_since.take() {
                    tracing::info!(
                        outage = ?since.elapsed(),
                        "L2 cache tier (Redis) answers again"
                    );
                }
                h.retry_at = None;
                Some(v)
            }
            failed => {
                self.stats.errors.fetch_add(1, Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.opts.timeout),
                };
                if h.down_since.is_none() {
                    h.down_since = Some(Instant::now());
                    tracing::warn!(
                        error = %why,
                        "L2 cache tier (Redis) unreachable: serving from L1 and backends alone"
                    );
                }
                h.retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                None
            }
        }
    }
}

impl Tier for RedisTier {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.key(key));
            let bytes: Option<Vec<u8>> = self.run(cmd).await.flatten();
            let Some(bytes) = bytes else {
                self.stats.misses.fetch_add(1, Relaxed);
                return None;
            };
            match decode(&bytes) {
                Some(stored) => {
                    self.stats.hits.fetch_add(1, Relaxed);
                    self.stats.bytes_read.fetch_add(bytes.len() as u64, Relaxed);
                    Some(stored)
                }
                None => {
                    // Another format (an older or newer release) or damaged: not ours to serve.
                    self.stats.misses.fetch_add(1, Relaxed);
                    None
                }
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Stored) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let keep = self.opts.keep[value.fragment.kind() as usize]
                .saturating_sub(value.age(&self.clock));
            let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                return;
            }
            let Some(bytes) = encode(&value) else {
                return;
            };
            if bytes.len() > self.opts.max_entry_bytes {
                self.stats.too_large.fetch_add(1, Relaxed);
                return;
            }
            let len = bytes.len() as u64;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(key)).arg(bytes).arg("PX").arg(ms);
            if self.run::<()>(cmd).await.is_some() {
                self.stats.bytes_written.fetch_add(len, Relaxed);
            }
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.key(key));
            let _: Option<i64> = self.run(cmd).await;
        })
    }
}

fn kind_byte(kind: FragmentKind) -> u8 {
    kind as u8
}

/// The stored form of a value: header, then the fragment as zstd-compressed JSON.
fn encode(value: &Stored) -> Option<Vec<u8>> {
    let json = match &value.fragment {
        Fragment::Title(v) => serde_json::to_vec(&**v),
        Fragment::Top10(v) => serde_json::to_vec(&**v),
        Fragment::NewReleases(v) => serde_json::to_vec(&**v),
        Fragment::Recommendations(v) => serde_json::to_vec(&**v),
        Fragment::ContinueWatching(v) => serde_json::to_vec(&**v),
        Fragment::MyList(v) => serde_json::to_vec(&**v),
        Fragment::Profile(v) => serde_json::to_vec(&**v),
    }
    .ok()?;
    let body = zstd::bulk::compress(&json, LEVEL).ok()?;
    let at = value
        .stored_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind_byte(value.fragment.kind()));
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

/// Largest decompressed fragment accepted (a damaged or hostile value cannot make us allocate
/// more): far above any real fragment.
const MAX_DECODED: usize = 16 << 20;

/// A stored value back; `None` for anything not written by [`encode`] of this format.
fn decode(bytes: &[u8]) -> Option<Stored> {
    let (head, body) = bytes.split_at_checked(HEADER)?;
    if head[..MAGIC.len()] != MAGIC {
        return None;
    }
    let kind = *FragmentKind::ALL
        .iter()
        .find(|k| kind_byte(**k) == head[MAGIC.len()])?;
    let at = u64::from_le_bytes(head[MAGIC.len() + 1..].try_into().ok()?);
    let json = zstd::bulk::decompress(body, MAX_DECODED).ok()?;
    fn de<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<Arc<T>> {
        serde_json::from_slice(json).ok().map(Arc::new)
    }
    let fragment = match kind {
        FragmentKind::Title => Fragment::Title(de::<Title>(&json)?),
        FragmentKind::Top10 => Fragment::Top10(de::<Vec<Top10Entry>>(&json)?),
        FragmentKind::NewReleases => Fragment::NewReleases(de::<Vec<NewRelease>>(&json)?),
        FragmentKind::Recommendations => {
            Fragment::Recommendations(de::<Vec<Recommendation>>(&json)?)
        }
        FragmentKind::ContinueWatching => {
            Fragment::ContinueWatching(de::<Vec<ContinueWatchingEntry>>(&json)?)
        }
        FragmentKind::MyList => Fragment::MyList(de::<Vec<MyListEntry>>(&json)?),
        FragmentKind::Profile => Fragment::Profile(de::<Option<Profile>>(&json)?),
    };
    Some(Stored {
        fragment,
        stored_at: SystemTime::UNIX_EPOCH + Duration::from_micros(at),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn top10() -> Stored {
        Stored::now(
            Fragment::Top10(Arc::new(
                (1..=10)
                    .map(|r| Top10Entry {
                        title_id: format!("t{r}"),
                        rank: r,
                    })
                    .collect(),
            )),
            &Clock::default(),
        )
    }

    #[test]
    fn values_round_trip_with_their_load_time() {
        let stored = top10();
        let bytes = encode(&stored).unwrap();
        let back = decode(&bytes).unwrap();
        let (Fragment::Top10(a), Fragment::Top10(b)) = (&stored.fragment, &back.fragment) else {
            panic!("kind changed");
        };
        assert_eq!(a, b);
        let skew = stored
            .stored_at
            .duration_since(back.stored_at)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_micros(1), "{skew:?}");
    }

    fn tier(url: &str, cluster: bool, prefix: &str) -> RedisTier {
        RedisTier::new(
            L2Options {
                url: url.to_owned(),
                cluster,
                prefix: prefix.to_owned(),
                // Generous: a debug build on a busy machine.
                timeout: Duration::from_secs(2),
                max_entry_bytes: 64 * 1024,
                keep: [Duration::from_secs(60); 7],
            },
            Clock::default(),
        )
        .unwrap()
    }

    /// What one instance writes another reads, and a removal is seen by both, over the
    /// machine's Redis and over a three-master cluster of the test's own — where the keys, one
    /// per command, spread over every master.
    #[tokio::test]
    async fn values_written_by_one_instance_are_read_by_another_on_redis_and_on_a_cluster() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 6379));
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "Redis is not running on 127.0.0.1:6379"
        );
        let cluster = bff_fixtures::redis_cluster::RedisCluster::start().unwrap();
        for (url, is_cluster) in [
            ("redis://127.0.0.1:6379".to_owned(), false),
            (cluster.url(), true),
        ] {
            let prefix = format!("bff:test:l2:{}:{is_cluster}:", std::process::id());
            let (a, b) = (
                tier(&url, is_cluster, &prefix),
                tier(&url, is_cluster, &prefix),
            );
            let keys: Vec<String> = (0..30).map(|i| format!("top10|v1|region={i}")).collect();
            for k in &keys {
                a.put(k, top10()).await;
            }
            for k in &keys {
                let got = b
                    .get(k)
                    .await
                    .unwrap_or_else(|| panic!("{url}: {k} not read"));
                assert!(matches!(got.fragment, Fragment::Top10(ref v) if v.len() == 10));
            }
            b.remove(&keys[0]).await;
            assert!(a.get(&keys[0]).await.is_none(), "{url}: removed for both");
            assert_eq!(b.stats().hits.load(Relaxed), 30, "{url}");
            assert_eq!(
                a.stats().errors.load(Relaxed) + b.stats().errors.load(Relaxed),
                0
            );
            if is_cluster {
                let per_node = cluster.keys_per_node();
                assert_eq!(per_node.iter().sum::<u64>(), 29, "{per_node:?}");
                assert!(per_node.iter().all(|n| *n > 0), "spread: {per_node:?}");
            } else {
                for k in &keys[1..] {
                    b.remove(k).await;
                }
            }
        }
    }

    /// Anything not written by this format is a miss, never a panic or a wrong value.
    #[test]
    fn foreign_damaged_or_hostile_values_are_refused() {
        let good = encode(&top10()).unwrap();
        let mut wrong_kind = good.clone();
        wrong_kind[MAGIC.len()] = FragmentKind::Profile as u8;
        let mut bad_kind = good.clone();
        bad_kind[MAGIC.len()] = 200;
        let mut old_format = good.clone();
        old_format[2] = b'0';
        // A zstd bomb: a frame claiming far more than the cap.
        let bomb = {
            let mut v = good[..HEADER].to_vec();
            v.extend(zstd::bulk::compress(&vec![b' '; MAX_DECODED + 1], 1).unwrap());
            v
        };
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("header only", good[..HEADER].to_vec()),
            ("truncated", good[..good.len() - 3].to_vec()),
            ("another kind's JSON", wrong_kind),
            ("unknown kind", bad_kind),
            ("another format", old_format),
            ("plain text", b"hello".to_vec()),
            ("bomb", bomb),
        ] {
            assert!(decode(&bytes).is_none(), "{what} was decoded");
        }
    }
}
