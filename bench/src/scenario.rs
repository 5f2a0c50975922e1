//! The scenario catalogue: what each named benchmark sends, to which BFF, as which users, against
//! which backend latency, with which cache setup. Adding a scenario means adding one entry to [`catalogue`]; the runner
//! needs no change unless the scenario needs a new kind of measurement.

use std::time::Duration;

use shared::{Surface, cache::FragmentKind, config::Settings, upstream::BackendId};

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
    P99,
    Rps,
    UpstreamPerReq,
    /// Non-200 responses and transport errors (a count over the window).
    HttpErrors,
    /// Every failed request: HTTP errors plus 200s carrying GraphQL `errors` (a count).
    Errors,
}

impl Metric {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::Rps => "rps",
            Metric::UpstreamPerReq => "upstream calls/req",
            Metric::HttpErrors => "HTTP errors",
            Metric::Errors => "client-visible errors (HTTP + GraphQL)",
        }
    }

    /// Unit printed after a value ("" for a plain count).
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Metric::P50 | Metric::P99 => " ms",
            Metric::Rps | Metric::UpstreamPerReq | Metric::HttpErrors | Metric::Errors => "",
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

/// A bound on `metric(of) / metric(over)`, two scenarios of the same invocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RatioTarget {
    pub(crate) of: &'static str,
    pub(crate) over: &'static str,
    pub(crate) metric: Metric,
    pub(crate) bound: Bound,
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

/// A backend fault injected for the whole run (after the first, healthy, request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    /// Every backend healthy.
    None,
    /// The backend accepts calls and never answers.
    Stall(BackendId),
    /// The backend fails this share of calls (REST 503 / gRPC UNAVAILABLE).
    Errors(BackendId, f64),
    /// The backend runs as [`ENDPOINTS`] separate instances listed in `endpoints`; the first is
    /// stopped before the BFF starts (connection refused), the others are healthy.
    EndpointDown(BackendId),
}

/// Instances started for [`Fault::EndpointDown`].
pub(crate) const ENDPOINTS: usize = 2;

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
    /// Injected after the first request of each run, for the warmup and the window.
    pub(crate) fault: Fault,
    pub(crate) targets: Vec<Target>,
    /// How the query is sent.
    pub(crate) request: Request,
}

/// How a load scenario sends its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// The same POST body every time.
    Post,
    /// A POST body that differs per request (`extensions.n`, 4,096 values in turn) but asks for
    /// the same work: requests that can never share an execution.
    PostDistinct,
    /// `GET /graphql?extensions=…` with the query's persisted hash (registered once before the
    /// run): the path a CDN-cached persisted query takes.
    PersistedGet,
}

/// What a scenario does.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Load(LoadSpec),
    /// One request per surface and encoding: response sizes, not speed.
    Payload,
    /// One client, backends +50 ms: each homepage split into backend rounds and the BFF's own time.
    CriticalPath,
    /// Queries that expand far, refused while a normal client is served: peak RSS growth.
    Hostile,
    /// TLS vs plain: connections per second and keep-alive throughput.
    Tls,
    /// Rate limits: accuracy per algorithm (local, two BFFs + Redis), cost per decision,
    /// homepage CPU with and without policies.
    RateLimit,
    /// Events over RabbitMQ: invalidation latency on two instances, progress burst and drain.
    Events,
    /// One homepage's cost from the backends, from the shared L2 tier and from L1.
    Tiers,
    /// `@defer` on the homepage's rows with a slow top 10: first part, fast rows, full answer.
    Defer,
    /// 10,000 graphql-ws subscribers of one top 10: RSS per connection, event → last
    /// subscriber, CPU per delivered message.
    Subscribers,
    /// The same subscribers against a bare WebSocket server: the machine's floor under them.
    SubscribersFloor(crate::floor::Design),
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
pub(crate) const GROUPS: [(&str, &str); 9] = [
    (
        "issue3",
        "the first homepage figures: *-latency50, critical-path, *-rps (cache off), engine, payload",
    ),
    (
        "cache",
        "fragment-cache matrix: {web|mobile}-{off|warm}-{1u|200u}-{0ms|50ms}, *-titleswarm-200u-50ms, engine",
    ),
    (
        "faults",
        "issue 5, cache off, 200 users, concurrency 16: {web|mobile}-{nofault|stall-top10|stall-recommendations|stall-catalog|errors50-top10|endpoint-down}",
    ),
    (
        "hostile",
        "issue 13: hostile-rss (queries that expand far: refused, peak RSS growth bounded)",
    ),
    (
        "bus",
        "issue 16: events (RabbitMQ at 127.0.0.1:5672: change → stale fragment gone on two instances; progress burst accepted, drained)",
    ),
    (
        "edge",
        "issue 14: tls (new connections per second and keep-alive homepage throughput, TLS vs plain)",
    ),
    (
        "fleet",
        "issue 24: tiers (a signed-in homepage from the backends, from the shared L2 tier in Redis, from L1: calls, latency, CPU)",
    ),
    (
        "live",
        "issue 25: defer (the web homepage with its rows' items deferred, top 10 +300 ms: first part, fast rows, full answer); subscribers (10,000 graphql-ws subscribers of one top 10 on one web BFF: RSS per connection, event → last subscriber, CPU per message)",
    ),
    (
        "traffic",
        "issue 15: ratelimit (each algorithm at 10× its limit, locally and two BFFs + Redis; cost per decision; homepage CPU with policies); anonymous web homepage, cache off, concurrency 32: web-anon-{distinct|identical|identical-nocoalesce}; web-anon-{post|persisted-get} warm",
    ),
];

const ISSUE3: &[&str] = &["issue3"];
const CACHE: &[&str] = &["cache"];
const BOTH: &[&str] = &["issue3", "cache"];
const FAULTS: &[&str] = &["faults"];
const HOSTILE: &[&str] = &["hostile"];
const EDGE: &[&str] = &["edge"];
const TRAFFIC: &[&str] = &["traffic"];
const EVENTS: &[&str] = &["bus"];
const FLEET: &[&str] = &["fleet"];
const LIVE: &[&str] = &["live"];

/// `["u1", …, "u{n}"]`: fixture users (u1…u200 exist).
pub(crate) fn users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("u{i}")).collect()
}

fn unchanged(_: &mut Settings) {}

fn cache_off(s: &mut Settings) {
    s.cache.enabled = false;
}

fn cache_and_coalescing_off(s: &mut Settings) {
    s.cache.enabled = false;
    s.graphql.coalesce = false;
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
pub(crate) const RATIO_TARGETS: [RatioTarget; 5] = [
    RatioTarget {
        of: "web-anon-identical",
        over: "web-anon-distinct",
        metric: Metric::Rps,
        bound: Bound::AtLeast(5.0),
        why: "issue 15: identical anonymous requests coalesced reach ≥ 5× different requests",
    },
    RatioTarget {
        of: "web-anon-identical",
        over: "web-anon-distinct",
        metric: Metric::P99,
        bound: Bound::AtMost(1.0),
        why: "issue 15: at a p99 no worse than different requests",
    },
    RatioTarget {
        of: "web-warm-1u-0ms",
        over: "web-off-1u-0ms",
        metric: Metric::Rps,
        bound: Bound::AtLeast(3.0),
        why: "issue 4 (d): a warm cache at least triples web throughput",
    },
    RatioTarget {
        of: "web-errors50-top10",
        over: "web-nofault",
        metric: Metric::UpstreamPerReq,
        bound: Bound::AtMost(1.2),
        why: "issue 5: retries are budgeted, a failing backend is not hammered",
    },
    RatioTarget {
        of: "mobile-errors50-top10",
        over: "mobile-nofault",
        metric: Metric::UpstreamPerReq,
        bound: Bound::AtMost(1.2),
        why: "issue 5: retries are budgeted, a failing backend is not hammered",
    },
];

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
        fault: Fault::None,
        targets: Vec::new(),
        request: Request::Post,
    }
}

/// Users of the fault scenarios: u1..u200 rotated, so no two concurrent requests share a user.
const FAULT_USERS: usize = 200;

/// Clients of the fault scenarios.
const FAULT_CONCURRENCY: usize = 16;

/// Slack on top of the request budget for the p99 target: answering, serialising, the client.
const BUDGET_SLACK_MS: f64 = 10.0;

/// One issue-5 scenario: `{bff}-{what}`, cache off so every read reaches its backend, every
/// backend at 0 ms plus whatever `fault` adds, everything else at the surface's defaults (the
/// per-backend timeout of 500 ms, 2 budgeted retries, breaker, the request budget).
fn fault_scenario(bff: Bff, fault: Fault) -> Scenario {
    let query = match bff {
        Bff::Web => WEB_FULL,
        Bff::Mobile => MOBILE_FULL,
    };
    let budget_ms = Settings::defaults(&(bff.surface().defaults)())
        .server
        .request_budget
        .as_secs_f64()
        * 1000.0;
    let budget_target = Target {
        metric: Metric::P99,
        bound: Bound::AtMost(budget_ms + BUDGET_SLACK_MS),
        why: "issue 5: request budget + 10 ms",
    };
    let no_http_errors = Target {
        metric: Metric::HttpErrors,
        bound: Bound::AtMost(0.0),
        why: "issue 5: a backend fault degrades rows, never the response",
    };
    let (what, how, targets, adjust): (String, String, Vec<Target>, fn(&mut Settings)) = match fault
    {
        Fault::None => (
            "nofault".into(),
            "every backend healthy (baseline for calls/req)".into(),
            Vec::new(),
            cache_off,
        ),
        Fault::Stall(b) => (
            format!("stall-{}", b.name()),
            format!("{} stalled (accepts, never answers)", b.name()),
            vec![budget_target, no_http_errors],
            cache_off,
        ),
        Fault::Errors(b, rate) => (
            format!("errors{:.0}-{}", rate * 100.0, b.name()),
            format!("{} fails {:.0}% of calls", b.name(), rate * 100.0),
            vec![no_http_errors],
            cache_off,
        ),
        Fault::EndpointDown(b) => (
            "endpoint-down".into(),
            format!(
                "{} on {ENDPOINTS} endpoints, the first stopped (connection refused); metrics on for the per-endpoint attempt counter",
                b.name()
            ),
            vec![Target {
                metric: Metric::Errors,
                bound: Bound::AtMost(0.0),
                why: "issue 5: one dead endpoint of two is invisible to clients",
            }],
            cache_off_metrics_on,
        ),
    };
    Scenario {
        name: format!("{}-{what}", bff.name()),
        about: format!(
            "{} full homepage, u1..u{FAULT_USERS} rotated, cache off, backends +0 ms, {how}, concurrency {FAULT_CONCURRENCY}",
            bff.name()
        ),
        groups: FAULTS,
        kind: Kind::Load(LoadSpec {
            users: users(FAULT_USERS),
            adjust,
            fault,
            targets,
            ..load(bff, query, 0, FAULT_CONCURRENCY)
        }),
    }
}

fn cache_off_metrics_on(s: &mut Settings) {
    cache_off(s);
    s.metrics.enabled = true;
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
    for bff in [Bff::Web, Bff::Mobile] {
        for fault in [
            Fault::None,
            Fault::Stall(BackendId::Top10),
            Fault::Stall(BackendId::Recommendations),
            Fault::Stall(BackendId::Catalog),
            Fault::Errors(BackendId::Top10, 0.5),
            Fault::EndpointDown(BackendId::Top10),
        ] {
            all.push(fault_scenario(bff, fault));
        }
    }
    all.push(Scenario {
        name: "payload".into(),
        about: "one web and one mobile homepage (u1): bytes plain / gzip / br / zstd, mobile ≤ 25% of web".into(),
        groups: ISSUE3,
        kind: Kind::Payload,
    });
    all.push(Scenario {
        name: "critical-path".into(),
        about: "web and mobile homepages (u1) one at a time, backends +50 ms, cache off: p50 and the BFF's own time beside the two backend rounds (fixture spans)".into(),
        groups: ISSUE3,
        kind: Kind::CriticalPath,
    });
    all.push(Scenario {
        name: "hostile-rss".into(),
        about: "1,000 queries that expand far (fragment bombs, aliased homepages, deep nesting, deep introspection), 8 at a time, while one client reads the homepage: all refused QUERY_TOO_COMPLEX, peak RSS growth ≤ 64 MiB".into(),
        groups: HOSTILE,
        kind: Kind::Hostile,
    });
    let anon = |request: Request, adjust: fn(&mut Settings)| LoadSpec {
        users: Vec::new(),
        adjust,
        request,
        ..load(Bff::Web, WEB_FULL, 0, 32)
    };
    all.push(load_scenario(
        "web-anon-distinct",
        "web full homepage, anonymous, cache off, concurrency 32, every request different (extensions.n): coalescing cannot help".into(),
        TRAFFIC,
        anon(Request::PostDistinct, cache_off),
    ));
    all.push(load_scenario(
        "web-anon-identical",
        "the same, every request byte-identical, graphql.coalesce on: concurrent ones share one execution".into(),
        TRAFFIC,
        anon(Request::Post, cache_off),
    ));
    all.push(load_scenario(
        "web-anon-identical-nocoalesce",
        "the same, byte-identical, graphql.coalesce = false".into(),
        TRAFFIC,
        anon(Request::Post, cache_and_coalescing_off),
    ));
    all.push(load_scenario(
        "web-anon-post",
        "web full homepage, anonymous, warm cache, concurrency 32, POST with the query".into(),
        TRAFFIC,
        LoadSpec {
            prime: true,
            ..anon(Request::Post, unchanged)
        },
    ));
    all.push(load_scenario(
        "web-anon-persisted-get",
        "the same as a persisted query over GET (the hash in the URL, no query text)".into(),
        TRAFFIC,
        LoadSpec {
            prime: true,
            ..anon(Request::PersistedGet, unchanged)
        },
    ));
    all.push(Scenario {
        name: "tls".into(),
        about: "web BFF with and without TLS: a new connection per request (handshakes/s) and the warm homepage over keep-alive (rps, CPU µs/req)".into(),
        groups: EDGE,
        kind: Kind::Tls,
    });
    all.push(Scenario {
        name: "ratelimit".into(),
        about: "each algorithm at 10× a 100/s limit for --duration (admitted rate vs limit, shape per 1 s and 100 ms, a window-edge probe), locally and across two BFFs sharing Redis; cost per decision; warm homepage CPU with and without policies (needs Redis on 127.0.0.1:6379)".into(),
        groups: TRAFFIC,
        kind: Kind::RateLimit,
    });
    all.push(Scenario {
        name: "events".into(),
        about: "RabbitMQ at 127.0.0.1:5672: 300 service changes, each until both of two web BFFs dropped the stale fragment (p50/p99); 20,000 reportProgress from 32 clients with the consumer stopped (accepted/s, confirmed), then the time to drain".into(),
        groups: EVENTS,
        kind: Kind::Events,
    });
    all.push(Scenario {
        name: "tiers".into(),
        about: "a signed-in web homepage whose fragments come from the backends (cache off), from the shared L2 tier in Redis (L1 kept empty) and from L1: backend calls, latency p50/p99, CPU per homepage, side by side (needs Redis on 127.0.0.1:6379)".into(),
        groups: FLEET,
        kind: Kind::Tiers,
    });
    all.push(Scenario {
        name: "defer".into(),
        about: "the full web homepage (u1, cache off, backends +2 ms) with its rows' items deferred and the top 10 at +300 ms, one request at a time, 100 per variant: time to the first part, to the last fast row and to the full answer, beside the plain homepage with the top 10 fast (the fast rows' latency) and slow; target: first part p50 ≤ the fast rows' p50 + 5 ms".into(),
        groups: LIVE,
        kind: Kind::Defer,
    });
    all.push(Scenario {
        name: "subscribers".into(),
        about: "10,000 graphql-transport-ws subscribers of top10(region: \"US\") on one web BFF (clients in a child process): RSS per connection, 50 top-10 changes each until the last subscriber read it (p50/p99, target p99 < 100 ms), BFF CPU per delivered message, losses and close codes".into(),
        groups: LIVE,
        kind: Kind::Subscribers,
    });
    all.push(Scenario {
        name: "subscribers-floor".into(),
        about: "the subscribers scenario's clients and measurement against a bare tokio WebSocket server (no BFF) whose task per socket writes one pre-built 7,009-byte frame per event: the floor this machine sets under `subscribers`' figures".into(),
        groups: LIVE,
        kind: Kind::SubscribersFloor(crate::floor::Design::Tasks),
    });
    all.push(Scenario {
        name: "subscribers-floor-loop".into(),
        about: "as subscribers-floor, but with no task per socket: each event is written to every socket in a tight loop (try_write), half on each of 2 tasks".into(),
        groups: LIVE,
        kind: Kind::SubscribersFloor(crate::floor::Design::Loop),
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
    }

    #[test]
    fn ratio_targets_name_scenarios_of_one_group() {
        let cat = catalogue();
        for r in RATIO_TARGETS {
            let groups = |name: &str| {
                cat.iter()
                    .find(|s| s.name == name)
                    .map(|s| s.groups)
                    .unwrap_or_default()
            };
            assert!(!groups(r.of).is_empty(), "{} missing", r.of);
            assert_eq!(groups(r.of), groups(r.over), "{} / {}", r.of, r.over);
        }
    }

    #[test]
    fn fault_scenarios_reach_the_backends() {
        let faults: Vec<_> = catalogue()
            .into_iter()
            .filter(|s| s.groups == FAULTS)
            .collect();
        assert_eq!(faults.len(), 12);
        for name in [
            "web-stall-top10",
            "mobile-stall-catalog",
            "web-errors50-top10",
            "mobile-endpoint-down",
        ] {
            assert!(faults.iter().any(|s| s.name == name), "{name} missing");
        }
        for s in faults {
            let Kind::Load(spec) = &s.kind else {
                panic!("{} is not a load scenario", s.name);
            };
            let mut settings = Settings::defaults(&(spec.bff.surface().defaults)());
            (spec.adjust)(&mut settings);
            assert!(!settings.cache.enabled, "{} has the cache on", s.name);
            assert_eq!(spec.users.len(), 200);
            assert!(spec.latency.is_zero());
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
