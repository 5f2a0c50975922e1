//! The scenario catalogue: what each named benchmark sends, to which BFF, as which users, against
//! which backend latency. Adding a scenario means adding one entry to [`catalogue`]; the runner
//! needs no change unless the scenario needs a new kind of measurement.

use std::time::Duration;

use shared::{Surface, config::Settings};

/// The web homepage with every title field the web surface has (same as `tests/api/helpers.rs`).
pub(crate) const WEB_FULL: &str = "{ homepage(region: \"US\") { region hero { id name } rows { kind heading items { rank reason progress { positionSeconds durationSeconds fraction } title { id name synopsis year maturityRating runtimeMinutes genres cast images { poster { url width height } backdrop { url width height } hero { url width height } } } } } } }";

/// The mobile homepage with every title field the mobile surface has.
pub(crate) const MOBILE_FULL: &str = "{ homepage(region: \"US\") { region rows { kind heading items { rank reason progress { positionSeconds durationSeconds fraction } title { id name synopsis year maturityRating runtimeMinutes genres image(width: 171, dpr: 2) { url width height } } } } } }";

/// A query that touches no backend: measures HTTP + auth + the GraphQL engine alone.
pub(crate) const TYPENAME: &str = "{ __typename }";

/// Which BFF binary a scenario talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bff {
    Web,
    Mobile,
}

impl Bff {
    pub(crate) fn surface(self) -> Surface {
        match self {
            Bff::Web => bff_web::surface(),
            Bff::Mobile => bff_mobile::surface(),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Bff::Web => "web",
            Bff::Mobile => "mobile",
        }
    }
}

/// An upper bound on one latency percentile, checked against the median of the runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// Which percentile (50.0 = p50).
    pub(crate) percentile: f64,
    /// Highest acceptable value, in ms.
    pub(crate) max_ms: f64,
    /// Where the number comes from, printed next to the verdict.
    pub(crate) why: &'static str,
}

/// A closed-loop load test.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub(crate) bff: Bff,
    pub(crate) query: &'static str,
    /// Users whose tokens the requests rotate through: each task walks the list, so with
    /// several users consecutive requests of a task (and concurrent tasks) are distinct users.
    pub(crate) users: Vec<String>,
    /// Injected on every backend, jitter 0 (jitter would blur the percentiles we compare).
    pub(crate) latency: Duration,
    /// Default number of concurrent clients; `--concurrency` overrides it.
    pub(crate) concurrency: usize,
    /// Sent as `Accept-Encoding` when set; the body sizes are then the compressed sizes.
    pub(crate) accept_encoding: Option<&'static str>,
    /// Tweaks the BFF settings after the fixture URLs and the secret are filled in (a later
    /// scenario turns the cache off here, for instance).
    pub(crate) adjust: fn(&mut Settings),
    pub(crate) target: Option<Target>,
}

/// What a scenario does.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Load(LoadSpec),
    /// One request per surface and encoding: response sizes, not speed.
    Payload,
}

/// One named benchmark.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    pub(crate) kind: Kind,
}

/// `["u1", …, "u{n}"]`: fixture users (u1…u200 exist).
pub(crate) fn users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("u{i}")).collect()
}

fn unchanged(_: &mut Settings) {}

/// p50 of a homepage when every backend answers in 50 ms: the homepage needs two dependent
/// backend rounds (lists/recommendations, then one catalog batch), so 2 × 50 ms is the floor and
/// the BFF may add 5 ms.
const LATENCY50_TARGET: Target = Target {
    percentile: 50.0,
    max_ms: 105.0,
    why: "2 dependent backend rounds × 50 ms + 5 ms",
};

fn load(bff: Bff, query: &'static str, latency_ms: u64, concurrency: usize) -> LoadSpec {
    LoadSpec {
        bff,
        query,
        users: users(1),
        latency: Duration::from_millis(latency_ms),
        concurrency,
        accept_encoding: None,
        adjust: unchanged,
        target: None,
    }
}

/// Every scenario, in the order `--scenario` defaults to.
pub(crate) fn catalogue() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "web-latency50",
            about: "web full homepage, u1, every backend +50 ms, concurrency 8: p50/p99",
            kind: Kind::Load(LoadSpec {
                target: Some(LATENCY50_TARGET),
                ..load(Bff::Web, WEB_FULL, 50, 8)
            }),
        },
        Scenario {
            name: "mobile-latency50",
            about: "mobile full homepage, u1, every backend +50 ms, concurrency 8: p50/p99",
            kind: Kind::Load(LoadSpec {
                target: Some(LATENCY50_TARGET),
                ..load(Bff::Mobile, MOBILE_FULL, 50, 8)
            }),
        },
        Scenario {
            name: "web-rps",
            about: "web full homepage, u1, no injected latency, concurrency 32: throughput",
            kind: Kind::Load(load(Bff::Web, WEB_FULL, 0, 32)),
        },
        Scenario {
            name: "mobile-rps",
            about: "mobile full homepage, u1, no injected latency, concurrency 32: throughput",
            kind: Kind::Load(load(Bff::Mobile, MOBILE_FULL, 0, 32)),
        },
        Scenario {
            name: "engine",
            about: "web `{ __typename }`, u1, concurrency 32: HTTP + auth + engine, no backend I/O",
            kind: Kind::Load(load(Bff::Web, TYPENAME, 0, 32)),
        },
        Scenario {
            name: "payload",
            about: "one web and one mobile homepage (u1): bytes plain / gzip / br / zstd, mobile ≤ 25% of web",
            kind: Kind::Payload,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = catalogue().iter().map(|s| s.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn users_are_fixture_ids() {
        assert_eq!(users(3), ["u1", "u2", "u3"]);
    }
}
