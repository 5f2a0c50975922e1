//! The scenario catalogue: what each named benchmark sends, to which BFF, as which users, against
//! which backend latency, with which cache setup. Adding a scenario means adding one entry to [`catalogue`]; the runner
//! needs no change unless the scenario needs a new kind of measurement.

use std::time::Duration;

use shared::{Surface, cache::FragmentKind, config::Settings};

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

/// A reported column a target can be set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    P50,
    Rps,
    UpstreamPerReq,
}

impl Metric {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::Rps => "rps",
            Metric::UpstreamPerReq => "upstream calls/req",
        }
    }

    /// Unit printed after a value ("" for a plain count).
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Metric::P50 => " ms",
            Metric::Rps | Metric::UpstreamPerReq => "",
        }
    }
}

/// Which side of the limit is good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// A bound on one column of a scenario, checked against the median of the runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) metric: Metric,
    pub(crate) bound: Bound,
    /// Where the number comes from, printed next to the verdict.
    pub(crate) why: &'static str,
}

/// A lower bound on `metric(of) / metric(over)`, two scenarios of the same invocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RatioTarget {
    pub(crate) of: &'static str,
    pub(crate) over: &'static str,
    pub(crate) metric: Metric,
    pub(crate) at_least: f64,
    pub(crate) why: &'static str,
}

/// How the fragment cache is set up and primed for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    /// `cache.enabled = false`: every read goes to its backend.
    Off,
    /// Default cache settings, primed before the warmup with one request per user.
    Warm,
    /// Shared kinds (titles, top 10, new releases) cached and primed as for `Warm`; the per-user
    /// kinds disabled, so every request still makes one backend round for its user's rows.
    TitlesWarm,
}

impl Cache {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cache::Off => "off",
            Cache::Warm => "warm",
            Cache::TitlesWarm => "titleswarm",
        }
    }

    pub(crate) fn adjust(self) -> fn(&mut Settings) {
        match self {
            Cache::Off => cache_off,
            Cache::Warm => unchanged,
            Cache::TitlesWarm => per_user_uncached,
        }
    }

    /// Whether the runner sends one request per user before the warmup.
    pub(crate) fn primed(self) -> bool {
        !matches!(self, Cache::Off)
    }
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
    /// Tweaks the BFF settings after the fixture URLs and the secret are filled in.
    pub(crate) adjust: fn(&mut Settings),
    /// Send one request per user (16 at a time) before the warmup, to fill the cache.
    pub(crate) prime: bool,
    pub(crate) targets: Vec<Target>,
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
    pub(crate) name: String,
    pub(crate) about: String,
    /// Groups that `-s GROUP` selects this scenario by.
    pub(crate) groups: &'static [&'static str],
    pub(crate) kind: Kind,
}

/// Named sets of scenarios for `-s`, with what they are for.
pub(crate) const GROUPS: [(&str, &str); 2] = [
    (
        "issue3",
        "the first homepage figures: *-latency50, *-rps (cache off), engine, payload",
    ),
    (
        "cache",
        "fragment-cache matrix: {web|mobile}-{off|warm}-{1u|200u}-{0ms|50ms}, *-titleswarm-200u-50ms, engine",
    ),
];

const ISSUE3: &[&str] = &["issue3"];
const CACHE: &[&str] = &["cache"];
const BOTH: &[&str] = &["issue3", "cache"];

/// `["u1", …, "u{n}"]`: fixture users (u1…u200 exist).
pub(crate) fn users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("u{i}")).collect()
}

fn unchanged(_: &mut Settings) {}

fn cache_off(s: &mut Settings) {
    s.cache.enabled = false;
}

fn per_user_uncached(s: &mut Settings) {
    for kind in FragmentKind::ALL {
        if kind.is_per_user() {
            s.cache.kind_mut(kind).enabled = false;
        }
    }
}

/// p50 of a homepage when every backend answers in 50 ms: the homepage needs two dependent
/// backend rounds (lists/recommendations, then one catalog batch), so 2 × 50 ms is the floor and
/// the BFF may add 5 ms.
const LATENCY50_TARGET: Target = Target {
    metric: Metric::P50,
    bound: Bound::AtMost(105.0),
    why: "2 dependent backend rounds × 50 ms + 5 ms",
};

/// Issue 4 (a): a warm homepage never waits for a backend.
const WARM_P50_TARGET: Target = Target {
    metric: Metric::P50,
    bound: Bound::AtMost(5.0),
    why: "issue 4 (a): warm cache, no backend round",
};

/// Issue 4 (c).
const WARM_UPSTREAM_TARGET: Target = Target {
    metric: Metric::UpstreamPerReq,
    bound: Bound::AtMost(0.1),
    why: "issue 4 (c): warm cache, ≤ 1 backend call per 10 homepages",
};

/// Issue 4 (b): 200 users with the titles warm cost at most one backend round.
const ONE_ROUND_TARGET: Target = Target {
    metric: Metric::P50,
    bound: Bound::AtMost(55.0),
    why: "issue 4 (b): titles warm, ≤ 1 backend round × 50 ms + 5 ms",
};

/// Cross-scenario targets, checked when both scenarios ran in the same invocation.
pub(crate) const RATIO_TARGETS: [RatioTarget; 1] = [RatioTarget {
    of: "web-warm-1u-0ms",
    over: "web-off-1u-0ms",
    metric: Metric::Rps,
    at_least: 3.0,
    why: "issue 4 (d): a warm cache at least triples web throughput",
}];

fn load(bff: Bff, query: &'static str, latency_ms: u64, concurrency: usize) -> LoadSpec {
    LoadSpec {
        bff,
        query,
        users: users(1),
        latency: Duration::from_millis(latency_ms),
        concurrency,
        accept_encoding: None,
        adjust: unchanged,
        prime: false,
        targets: Vec::new(),
    }
}

/// One cell of the issue-4 matrix: `{bff}-{cache}-{n}u-{latency}ms`. 50 ms scenarios run 8
/// clients (a latency test, as `*-latency50`), 0 ms ones 32 (a throughput test, as `*-rps`).
fn matrix(bff: Bff, cache: Cache, n_users: usize, latency_ms: u64) -> Scenario {
    let query = match bff {
        Bff::Web => WEB_FULL,
        Bff::Mobile => MOBILE_FULL,
    };
    let concurrency = if latency_ms == 0 { 32 } else { 8 };
    let name = format!("{}-{}-{n_users}u-{latency_ms}ms", bff.name(), cache.name());
    let mut targets = Vec::new();
    match (bff, cache, n_users, latency_ms) {
        (Bff::Web, Cache::Warm, 1, 50) => {
            targets.extend([WARM_P50_TARGET, WARM_UPSTREAM_TARGET]);
        }
        (_, Cache::Warm | Cache::TitlesWarm, 200, 50) => targets.push(ONE_ROUND_TARGET),
        _ => {}
    }
    let who = if n_users == 1 {
        "u1".to_owned()
    } else {
        format!("u1..u{n_users} rotated per request (distinct tokens)")
    };
    let how = match cache {
        Cache::Off => "cache off",
        Cache::Warm => "cache default, primed with one request per user",
        Cache::TitlesWarm => "titles/top10/new releases cached and primed, per-user kinds uncached",
    };
    Scenario {
        name,
        about: format!(
            "{} full homepage, {who}, backends +{latency_ms} ms, {how}, concurrency {concurrency}",
            bff.name()
        ),
        groups: CACHE,
        kind: Kind::Load(LoadSpec {
            users: users(n_users),
            adjust: cache.adjust(),
            prime: cache.primed(),
            targets,
            ..load(bff, query, latency_ms, concurrency)
        }),
    }
}

/// Every scenario, in the order `--scenario` defaults to.
pub(crate) fn catalogue() -> Vec<Scenario> {
    // The issue-3 scenarios predate the cache and their targets assume none: cache off.
    let issue3 = |bff: Bff, latency_ms: u64, concurrency: usize, what: &str| {
        let query = match bff {
            Bff::Web => WEB_FULL,
            Bff::Mobile => MOBILE_FULL,
        };
        let latency = if latency_ms == 0 {
            "no injected latency".to_owned()
        } else {
            format!("every backend +{latency_ms} ms")
        };
        let spec = LoadSpec {
            adjust: cache_off,
            ..load(bff, query, latency_ms, concurrency)
        };
        let about = format!(
            "{} full homepage, u1, {latency}, cache off, concurrency {concurrency}: {what}",
            bff.name()
        );
        (spec, about)
    };
    let mut all = vec![
        {
            let (mut spec, about) = issue3(Bff::Web, 50, 8, "p50/p99");
            spec.targets.push(LATENCY50_TARGET);
            load_scenario("web-latency50", about, ISSUE3, spec)
        },
        {
            let (mut spec, about) = issue3(Bff::Mobile, 50, 8, "p50/p99");
            spec.targets.push(LATENCY50_TARGET);
            load_scenario("mobile-latency50", about, ISSUE3, spec)
        },
        {
            let (spec, about) = issue3(Bff::Web, 0, 32, "throughput");
            load_scenario("web-rps", about, ISSUE3, spec)
        },
        {
            let (spec, about) = issue3(Bff::Mobile, 0, 32, "throughput");
            load_scenario("mobile-rps", about, ISSUE3, spec)
        },
    ];
    for bff in [Bff::Web, Bff::Mobile] {
        for cache in [Cache::Off, Cache::Warm] {
            for n_users in [1, 200] {
                for latency_ms in [0, 50] {
                    all.push(matrix(bff, cache, n_users, latency_ms));
                }
            }
        }
    }
    all.push(matrix(Bff::Web, Cache::TitlesWarm, 200, 50));
    all.push(matrix(Bff::Mobile, Cache::TitlesWarm, 200, 50));
    all.push(load_scenario(
        "engine",
        "web `{ __typename }`, u1, concurrency 32: HTTP + auth + engine, no backend I/O".into(),
        BOTH,
        load(Bff::Web, TYPENAME, 0, 32),
    ));
    all.push(Scenario {
        name: "payload".into(),
        about: "one web and one mobile homepage (u1): bytes plain / gzip / br / zstd, mobile ≤ 25% of web".into(),
        groups: ISSUE3,
        kind: Kind::Payload,
    });
    all
}

fn load_scenario(
    name: &str,
    about: String,
    groups: &'static [&'static str],
    spec: LoadSpec,
) -> Scenario {
    Scenario {
        name: name.into(),
        about,
        groups,
        kind: Kind::Load(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = catalogue().into_iter().map(|s| s.name).collect();
        names.extend(GROUPS.iter().map(|(g, _)| (*g).to_owned()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "scenario and group names must all differ");
    }

    #[test]
    fn cache_group_is_the_full_matrix() {
        let cat = catalogue();
        let in_cache: Vec<_> = cat
            .iter()
            .filter(|s| s.groups.contains(&"cache"))
            .map(|s| s.name.as_str())
            .collect();
        // 2 surfaces × 2 cache modes × 2 user counts × 2 latencies, 2 titles-warm, engine.
        assert_eq!(in_cache.len(), 16 + 2 + 1, "{in_cache:?}");
        for name in [
            "web-off-1u-0ms",
            "mobile-warm-200u-50ms",
            "web-titleswarm-200u-50ms",
        ] {
            assert!(in_cache.contains(&name), "{name} missing");
        }
        for r in RATIO_TARGETS {
            assert!(in_cache.contains(&r.of) && in_cache.contains(&r.over));
        }
    }

    #[test]
    fn issue3_scenarios_run_without_cache() {
        for s in catalogue() {
            if let Kind::Load(spec) = &s.kind
                && s.groups == ISSUE3
            {
                let mut settings = Settings::defaults(&(spec.bff.surface().defaults)());
                (spec.adjust)(&mut settings);
                assert!(!settings.cache.enabled, "{} has the cache on", s.name);
            }
        }
    }

    #[test]
    fn users_are_fixture_ids() {
        assert_eq!(users(3), ["u1", "u2", "u3"]);
    }
}
