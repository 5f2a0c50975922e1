//! The crate's one way to reach Redis: a single server (through redis-rs' `ConnectionManager`,
//! which reconnects by itself) or a Redis Cluster (through redis-rs' cluster connection, which
//! learns the slot map, sends each command to the master serving its keys' slot and follows
//! `MOVED` and `ASK` redirections itself — never this crate). Both connect lazily: a Redis that
//! is not up yet is a failed command later, not an error at start.
//!
//! Owns connecting and sending one command or one script invocation. It does not own what a
//! failure means: each user (the rate-limit store, the L2 cache tier) bounds its own calls by its
//! own timeout and decides what to do without Redis. Ground level: it imports nothing of this
//! crate.

use std::time::Duration;

use redis::{
    Cmd, FromRedisValue, RedisResult, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
};

/// Shortest time a new connection is given to come up, whatever the per-command timeout: the
/// handshake runs in the background while callers, bounded by their own timeout, do without
/// Redis, so a connection slower to open than one command may take still opens.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// Longest reconnection backoff of a single server's connection: the next command after an
/// outage should find it reconnecting, not asleep.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// How many times the cluster connection retries a command (a redirection, a `TRYAGAIN` while a
/// slot migrates, a node reconnecting), and the shortest wait between retries, in ms. redis-rs'
/// defaults (16 retries, at least 1.28 s apart) suit batch jobs, not commands that have tens of
/// milliseconds: a multi-key script that meets a slot halfway through a migration is told
/// `TRYAGAIN` and should try again within its budget.
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 1;

/// A live link, and how to make a fresh one.
#[derive(Clone)]
enum Link {
    Single {
        conn: ConnectionManager,
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        conn: ClusterConnection,
        client: ClusterClient,
        config: ClusterConfig,
    },
}

/// A connection to one Redis or to a Redis Cluster; cheap to clone (clones share the link).
#[derive(Clone)]
pub(crate) struct RedisConn {
    link: Link,
}

impl RedisConn {
    /// A connection to `urls`: one `redis://` URL, or with `cluster` one or more seed nodes of a
    /// cluster, comma-separated (any one reachable master is enough: the others are learnt from
    /// it). `timeout` bounds each command and, at least [`MIN_CONNECT_TIMEOUT`], each connect.
    /// Fails only on a URL that is not one (or, for a single server, on several URLs).
    pub(crate) fn new(urls: &str, cluster: bool, timeout: Duration) -> RedisResult<Self> {
        let connect = timeout.max(MIN_CONNECT_TIMEOUT);
        let link = if cluster {
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            // Waits between retries grow from 1 ms, capped at half the timeout: several retries
            // fit in one command's budget.
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let client = ClusterClient::builder(nodes)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                .max_retry_wait((timeout_ms / 2).max(CLUSTER_MIN_RETRY_WAIT_MS + 1))
                .retry_wait_formula(2, 2)
                .build()?;
            // The timeouts go in the config: redis-rs lets the config's replace the builder's.
            let config = ClusterConfig::new()
                .set_connection_timeout(connect)
                .set_response_timeout(timeout);
            Link::Cluster {
                conn: client.get_pending_async_connection_with_config(config.clone()),
                client,
                config,
            }
        } else {
            let client = redis::Client::open(urls.trim())?;
            // One quick reconnection attempt: while Redis is away the caller does without it,
            // and its next command reconnects.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(MAX_RECONNECT_DELAY);
            Link::Single {
                conn: ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
                client,
                config,
            }
        };
        Ok(Self { link })
    }

    /// The same target through a new link (lazily connected): a link that stopped answering —
    /// no error, just silence — would otherwise be kept for ever.
    pub(crate) fn renewed(&self) -> RedisResult<Self> {
        let link = match &self.link {
            Link::Single { client, config, .. } => Link::Single {
                conn: ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
                client: client.clone(),
                config: config.clone(),
            },
            Link::Cluster { client, config, .. } => Link::Cluster {
                conn: client.get_pending_async_connection_with_config(config.clone()),
                client: client.clone(),
                config: config.clone(),
            },
        };
        Ok(Self { link })
    }

    /// Sends one command (on a cluster, to the master serving its key's slot).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match &self.link {
            Link::Single { conn, .. } => cmd.query_async(&mut conn.clone()).await,
            Link::Cluster { conn, .. } => cmd.query_async(&mut conn.clone()).await,
        }
    }

    /// Runs a script (`EVALSHA`, loaded on `NOSCRIPT`; on a cluster `SCRIPT LOAD` goes to every
    /// master and `EVALSHA` to the one serving the slot of its keys, which must all share it).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match &self.link {
            Link::Single { conn, .. } => script.invoke_async(&mut conn.clone()).await,
            Link::Cluster { conn, .. } => script.invoke_async(&mut conn.clone()).await,
        }
    }
}
