//! The names settings are keyed by and that every layer shares: the backends, the fragment kinds,
//! the balancing strategies, and the address ranges (CIDRs) of the client-address rules. They live with the settings (the ground every layer stands on) so that
//! `config` depends on nothing above it; `upstream` and `cache` re-export them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The backends, named as in config keys, metrics and the `backend` error extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendId {
    /// User profiles (REST).
    Profile,
    /// Playback positions (REST).
    ContinueWatching,
    /// The user's saved titles (REST, mutable).
    MyList,
    /// Top 10 per region (REST).
    Top10,
    /// New releases per region (REST).
    NewReleases,
    /// Title metadata (gRPC).
    Catalog,
    /// Personalized suggestions (gRPC).
    Recommendations,
}

impl BackendId {
    /// How many backends there are.
    pub const COUNT: usize = 7;

    /// All backends, in declaration order (so `ALL[b.index()] == b`).
    pub const ALL: [BackendId; Self::COUNT] = [
        Self::Profile,
        Self::ContinueWatching,
        Self::MyList,
        Self::Top10,
        Self::NewReleases,
        Self::Catalog,
        Self::Recommendations,
    ];

    /// Position in [`BackendId::ALL`], for tables with one entry per backend.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Config/metrics name, e.g. `continue_watching`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Profile => "profile",
            Self::ContinueWatching => "continue_watching",
            Self::MyList => "my_list",
            Self::Top10 => "top10",
            Self::NewReleases => "new_releases",
            Self::Catalog => "catalog",
            Self::Recommendations => "recommendations",
        }
    }

    /// The REST root path a service conventionally lives under (`/continue-watching`); `None` for gRPC.
    pub const fn rest_path(self) -> Option<&'static str> {
        match self {
            Self::Profile => Some("/profile"),
            Self::ContinueWatching => Some("/continue-watching"),
            Self::MyList => Some("/my-list"),
            Self::Top10 => Some("/top10"),
            Self::NewReleases => Some("/new-releases"),
            Self::Catalog | Self::Recommendations => None,
        }
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown backend `{s}`"))
    }
}

/// The kinds of fragments, named as in config (`cache.<kind>`) and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FragmentKind {
    /// One catalog title (shared).
    Title,
    /// A region's top 10 (shared).
    Top10,
    /// A region's new releases (shared).
    NewReleases,
    /// A user's recommendations (per user).
    Recommendations,
    /// A user's continue-watching row (per user).
    ContinueWatching,
    /// A user's list (per user).
    MyList,
    /// A user's profile (per user).
    Profile,
}

impl FragmentKind {
    /// Every kind.
    pub const ALL: [FragmentKind; 7] = [
        Self::Title,
        Self::Top10,
        Self::NewReleases,
        Self::Recommendations,
        Self::ContinueWatching,
        Self::MyList,
        Self::Profile,
    ];

    /// Config/metrics name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::Top10 => "top10",
            Self::NewReleases => "new_releases",
            Self::Recommendations => "recommendations",
            Self::ContinueWatching => "continue_watching",
            Self::MyList => "my_list",
            Self::Profile => "profile",
        }
    }

    /// Whether entries belong to one user.
    pub const fn is_per_user(self) -> bool {
        matches!(
            self,
            Self::Recommendations | Self::ContinueWatching | Self::MyList | Self::Profile
        )
    }
}

impl fmt::Display for FragmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How calls are spread over a backend's usable endpoints (`backends.<name>.balance`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each usable endpoint in turn (an atomic cursor).
    #[default]
    RoundRobin,
    /// Two random endpoints, the one with fewer calls in flight wins ("power of two choices"):
    /// nearly as good as scanning all for the least loaded, without herding onto one endpoint.
    LeastOutstanding,
}

/// An address range, `10.0.0.0/8` or `2001:db8::/32`; a bare address is that one host. Parsed when
/// the config is read, so a bad value fails at start naming its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `addr` lies in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        self.0.contains(&addr.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip.to_canonical())))
            .map_err(|_| {
                format!("`{s}` is not an address or CIDR range (e.g. 10.0.0.0/8, 2001:db8::/32)")
            })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}
