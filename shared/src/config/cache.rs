//! Fragment cache settings (`cache.*`): the master switch, the in-process tier's byte budget, the
//! shared Redis tier (`l2*`) and each fragment kind's freshness. Only the settings live here; the
//! cache is `crate::cache`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FragmentKind, Invalid, Secret, duration, invalid};

/// Fragment cache (`cache.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Master switch; `false` sends every read to its backend.
    pub enabled: bool,
    /// Byte budget of the in-process L1 tier (approximate sizes of the cached values).
    pub max_bytes: u64,
    /// The shared L2 tier: a `redis://` (or `rediss://`) URL — with `l2_cluster`, one or more
    /// seed nodes of a Redis Cluster, comma-separated. Unset (the default): L1 alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<Secret>,
    /// `l2` names a Redis Cluster (keys spread over its masters; redirections followed).
    pub l2_cluster: bool,
    /// Prefix of every L2 key: instances (of either binary) sharing a Redis and a prefix share
    /// fragments.
    pub l2_prefix: String,
    /// Longest one L2 command may take; slower (or Redis down) → L1 and backends alone.
    #[serde(with = "duration")]
    pub l2_timeout: Duration,
    /// Largest compressed fragment written to L2; larger ones stay in L1 only.
    pub l2_max_entry_bytes: usize,
    /// One catalog title.
    pub title: KindSettings,
    /// A region's top 10.
    pub top10: KindSettings,
    /// A region's new releases.
    pub new_releases: KindSettings,
    /// A user's recommendations.
    pub recommendations: KindSettings,
    /// A user's continue-watching row.
    pub continue_watching: KindSettings,
    /// A user's list.
    pub my_list: KindSettings,
    /// A user's profile.
    pub profile: KindSettings,
}

/// Freshness of one fragment kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSettings {
    /// Served from the cache without asking the backend for this long.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Past the TTL, still served for this long while a refresh runs or when the backend fails.
    #[serde(with = "duration")]
    pub max_stale: Duration,
    /// Cache this kind at all.
    pub enabled: bool,
}

impl KindSettings {
    const fn new(ttl_secs: u64, max_stale_secs: u64) -> Self {
        Self {
            ttl: Duration::from_secs(ttl_secs),
            max_stale: Duration::from_secs(max_stale_secs),
            enabled: true,
        }
    }
}

impl Default for CacheSettings {
    /// The TTLs of `docs/caching.md`: how long a change may go unseen when no event says so.
    /// Max-stale windows: long for slow-changing data, short for playback state.
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            l2: None,
            l2_cluster: false,
            l2_prefix: "bff:frag:".to_owned(),
            l2_timeout: Duration::from_millis(50),
            l2_max_entry_bytes: 1024 * 1024,
            title: KindSettings::new(300, 3600),
            top10: KindSettings::new(60, 600),
            new_releases: KindSettings::new(300, 1800),
            recommendations: KindSettings::new(60, 600),
            continue_watching: KindSettings::new(15, 60),
            my_list: KindSettings::new(300, 1800),
            profile: KindSettings::new(300, 3600),
        }
    }
}

impl CacheSettings {
    /// The settings of one kind.
    pub fn kind(&self, kind: FragmentKind) -> &KindSettings {
        match kind {
            FragmentKind::Title => &self.title,
            FragmentKind::Top10 => &self.top10,
            FragmentKind::NewReleases => &self.new_releases,
            FragmentKind::Recommendations => &self.recommendations,
            FragmentKind::ContinueWatching => &self.continue_watching,
            FragmentKind::MyList => &self.my_list,
            FragmentKind::Profile => &self.profile,
        }
    }

    /// Mutable settings of one kind.
    pub fn kind_mut(&mut self, kind: FragmentKind) -> &mut KindSettings {
        match kind {
            FragmentKind::Title => &mut self.title,
            FragmentKind::Top10 => &mut self.top10,
            FragmentKind::NewReleases => &mut self.new_releases,
            FragmentKind::Recommendations => &mut self.recommendations,
            FragmentKind::ContinueWatching => &mut self.continue_watching,
            FragmentKind::MyList => &mut self.my_list,
            FragmentKind::Profile => &mut self.profile,
        }
    }

    /// Checks every kind's TTL and the L2 tier's settings.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.l2 {
            for node in url.expose().split(',').map(str::trim) {
                let scheme = node.split("://").next().unwrap_or_default();
                if !matches!(scheme, "redis" | "rediss") || !node.contains("://") {
                    return Err(invalid(
                        "cache.l2",
                        "must be a redis:// or rediss:// URL (comma-separated seeds with l2_cluster)"
                            .into(),
                    ));
                }
            }
            if !self.l2_cluster && url.expose().contains(',') {
                return Err(invalid(
                    "cache.l2",
                    "several URLs are seed nodes of a cluster: set cache.l2_cluster = true".into(),
                ));
            }
        }
        if self.l2_timeout.is_zero() {
            return Err(invalid("cache.l2_timeout", "must be > 0".into()));
        }
        if self.l2_max_entry_bytes == 0 {
            return Err(invalid("cache.l2_max_entry_bytes", "must be > 0".into()));
        }
        for kind in FragmentKind::ALL {
            if self.kind(kind).ttl.is_zero() {
                return Err(invalid(
                    &format!("cache.{kind}.ttl"),
                    "must be > 0 (disable the kind instead)".into(),
                ));
            }
        }
        Ok(())
    }
}
