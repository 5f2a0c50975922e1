//! Reload settings (`reload.*`: how often the config file is checked for changes) and what a
//! reload may change: which keys only a restart can apply ([`Settings::keep_restart_only`]) and
//! which keys differ between two configs ([`Settings::changed_keys`]). Reading the file again and
//! swapping the new config in is `crate::server`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Settings, duration};

/// Reloading without a restart (`reload.*`). SIGHUP always reloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// How often the config file (`--config`) is checked for a change (its size, modification
    /// time and identity, then its content), which then reloads it (`reload.watch_interval`);
    /// `"0s"` turns the check off.
    #[serde(with = "duration")]
    pub watch_interval: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            // Often enough that an edit (or a Kubernetes ConfigMap update) applies within a
            // second or two; a check is a `stat`, and a read of a small file only after it changed.
            watch_interval: Duration::from_secs(1),
        }
    }
}

/// Whether two values of a settings type are the same: what a reload compares to keep the
/// parts built from settings that did not change. Compared as their serialized form: every
/// settings type serializes (the loader's defaults go through it), and what serializes alike
/// configures alike.
pub(crate) fn same<T: Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        // Not reachable for these types; treated as a change, the safe side.
        _ => false,
    }
}

impl Settings {
    /// Puts back the running value of every key that only a restart can apply, and names those
    /// whose value differed (what the reload's log line says needs a restart):
    ///
    /// - `listen`, `admin.listen`: the listeners are bound once;
    /// - `tls` when it turns TLS on or off (the connection stage is built with or without it;
    ///   with TLS on both sides, new file paths and client-certificate settings are applied);
    /// - the connection stage's limits (`server.header_read_timeout`, `server.idle_timeout`,
    ///   `server.max_connections`, `server.max_headers`, `server.max_header_bytes`,
    ///   `server.http2`): every open connection was configured with them;
    /// - `metrics`, `telemetry`, `log.format`: the registry and the log and trace pipelines are
    ///   installed once per process;
    /// - `events`: the bus connection, its queues and the spool belong to the process, and the
    ///   invalidation it drives;
    /// - `cache.max_bytes`, `cache.l2*`: the in-process tier's capacity is fixed when it is
    ///   made, and the shared tier's connection;
    /// - `profile`: the event invalidator keys rows by their length.
    pub(crate) fn keep_restart_only(&mut self, running: &Settings) -> Vec<&'static str> {
        let mut kept = Vec::new();
        macro_rules! keep {
            ($name:literal, $($field:ident).+) => {
                if !same(&self.$($field).+, &running.$($field).+) {
                    self.$($field).+ = running.$($field).+.clone();
                    kept.push($name);
                }
            };
        }
        keep!("listen", listen);
        keep!("admin.listen", admin.listen);
        if self.tls.enabled() != running.tls.enabled() {
            self.tls = running.tls.clone();
            kept.push(if running.tls.enabled() {
                "tls (turning TLS off)"
            } else {
                "tls (turning TLS on)"
            });
        }
        keep!("server.header_read_timeout", server.header_read_timeout);
        keep!("server.idle_timeout", server.idle_timeout);
        keep!("server.max_connections", server.max_connections);
        keep!("server.max_headers", server.max_headers);
        keep!("server.max_header_bytes", server.max_header_bytes);
        keep!("server.http2", server.http2);
        keep!("metrics", metrics);
        keep!("telemetry", telemetry);
        keep!("log.format", log.format);
        keep!("events", events);
        keep!("cache.max_bytes", cache.max_bytes);
        keep!("cache.l2", cache.l2);
        keep!("cache.l2_cluster", cache.l2_cluster);
        keep!("cache.l2_prefix", cache.l2_prefix);
        keep!("cache.l2_timeout", cache.l2_timeout);
        keep!("cache.l2_max_entry_bytes", cache.l2_max_entry_bytes);
        keep!("profile", profile);
        kept
    }

    /// The keys whose value differs from `other`'s, each named down to its section's direct
    /// key (`backends.top10`, `cache.top10`, `rate_limits.policies`, `listen`), in order.
    pub(crate) fn changed_keys(&self, other: &Settings) -> Vec<String> {
        let (Ok(a), Ok(b)) = (serde_json::to_value(self), serde_json::to_value(other)) else {
            return vec!["(all)".to_owned()];
        };
        let mut out = Vec::new();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let mut sections = keys(&a);
        sections.extend(keys(&b));
        sections.sort();
        sections.dedup();
        for section in sections {
            let (sa, sb) = (&a[&section], &b[&section]);
            if sa == sb {
                continue;
            }
            match (sa.as_object(), sb.as_object()) {
                (Some(oa), Some(ob)) => {
                    let mut inner: Vec<&String> = oa.keys().chain(ob.keys()).collect();
                    inner.sort();
                    inner.dedup();
                    out.extend(
                        inner
                            .into_iter()
                            .filter(|k| oa.get(*k) != ob.get(*k))
                            .map(|k| format!("{section}.{k}")),
                    );
                }
                _ => out.push(section),
            }
        }
        out
    }
}
