//! Turning raw run outcomes into the reported columns, taking medians over runs, and rendering
//! the Markdown table and target verdicts (Markdown so a run pastes straight into BENCHMARKS.md).

use std::fmt::Write as _;

use shared::cache::{FragmentKind, stats::KindSnapshot};

use crate::{
    load::Outcome,
    scenario::{Bound, ENDPOINTS, Fault, Metric, RatioTarget, Target},
    stats::{median, percentile},
};

/// Number of fragment kinds (the cache counters are per kind, in [`FragmentKind::ALL`] order).
const KINDS: usize = FragmentKind::ALL.len();

/// Counters read at the edges of the measurement window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    /// Process utime + stime, µs.
    pub(crate) cpu_us: u64,
    /// Calls received by all fixture backends (separate endpoint instances included).
    pub(crate) upstream_calls: u64,
    /// Calls received by each separate endpoint instance ([`Fault::EndpointDown`]; else 0).
    pub(crate) endpoint_calls: [u64; ENDPOINTS],
    /// The BFF's fragment-cache counters, per kind in [`FragmentKind::ALL`] order.
    pub(crate) cache: [KindSnapshot; KINDS],
}

/// Cache counter deltas over the window, per request (or a ratio), for reporting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CacheColumns {
    /// (hits + stale) / lookups over every kind, %; NaN when nothing was looked up.
    pub(crate) hit_pct: f64,
    pub(crate) hits_per_req: f64,
    pub(crate) misses_per_req: f64,
    pub(crate) stale_per_req: f64,
    pub(crate) coalesced_per_req: f64,
    pub(crate) evictions: f64,
    /// The same hit % per kind.
    pub(crate) kind_hit_pct: [f64; KINDS],
}

/// (hits + stale) / (hits + stale + misses) in %, NaN for no lookups.
fn hit_pct(hits: u64, stale: u64, misses: u64) -> f64 {
    let lookups = hits + stale + misses;
    if lookups == 0 {
        f64::NAN
    } else {
        100.0 * (hits + stale) as f64 / lookups as f64
    }
}

impl CacheColumns {
    fn from_run(before: &[KindSnapshot; KINDS], after: &[KindSnapshot; KINDS], n: u64) -> Self {
        let delta =
            |f: fn(&KindSnapshot) -> u64, i: usize| f(&after[i]).saturating_sub(f(&before[i]));
        let total = |f: fn(&KindSnapshot) -> u64| (0..KINDS).map(|i| delta(f, i)).sum::<u64>();
        let per_req = |x: u64| {
            if n == 0 {
                f64::NAN
            } else {
                x as f64 / n as f64
            }
        };
        let (hits, misses, stale) = (total(|k| k.hits), total(|k| k.misses), total(|k| k.stale));
        CacheColumns {
            hit_pct: hit_pct(hits, stale, misses),
            hits_per_req: per_req(hits),
            misses_per_req: per_req(misses),
            stale_per_req: per_req(stale),
            coalesced_per_req: per_req(total(|k| k.coalesced)),
            evictions: total(|k| k.evictions) as f64,
            kind_hit_pct: std::array::from_fn(|i| {
                hit_pct(
                    delta(|k| k.hits, i),
                    delta(|k| k.stale, i),
                    delta(|k| k.misses, i),
                )
            }),
        }
    }

    fn median(runs: &[CacheColumns]) -> Self {
        let m = |f: &dyn Fn(&CacheColumns) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        CacheColumns {
            hit_pct: m(&|c| c.hit_pct),
            hits_per_req: m(&|c| c.hits_per_req),
            misses_per_req: m(&|c| c.misses_per_req),
            stale_per_req: m(&|c| c.stale_per_req),
            coalesced_per_req: m(&|c| c.coalesced_per_req),
            evictions: m(&|c| c.evictions),
            kind_hit_pct: std::array::from_fn(|i| m(&|c| c.kind_hit_pct[i])),
        }
    }

    /// Whether the cache saw any lookup at all (false with the cache off).
    fn used(&self) -> bool {
        !self.hit_pct.is_nan()
    }
}

/// The columns of one run (or, via [`Columns::median`], of the median over runs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Columns {
    pub(crate) requests: f64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: f64,
    pub(crate) http_errors: f64,
    /// Non-200 + transport errors / requests, %.
    pub(crate) http_err_pct: f64,
    /// 200s with GraphQL `errors` / requests, %.
    pub(crate) graphql_err_pct: f64,
    pub(crate) upstream_per_req: f64,
    /// Calls each separate endpoint instance served, per request.
    pub(crate) endpoint_per_req: [f64; ENDPOINTS],
    pub(crate) bytes_per_req: f64,
    pub(crate) cpu_us_per_req: f64,
    pub(crate) peak_rss_mib: f64,
    pub(crate) cache: CacheColumns,
}

impl Columns {
    pub(crate) fn from_run(
        outcome: &Outcome,
        before: Snapshot,
        after: Snapshot,
        peak_rss_kib: u64,
    ) -> Self {
        let n = outcome.requests();
        // Per-request ratios of an empty run are meaningless; NaN prints as "NaN", not 0.
        let per_req = |x: u64| {
            if n == 0 {
                f64::NAN
            } else {
                x as f64 / n as f64
            }
        };
        let ms =
            |p: f64| percentile(&outcome.latencies_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0);
        Columns {
            requests: n as f64,
            rps: n as f64 / outcome.window.as_secs_f64(),
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            errors: outcome.errors as f64,
            http_errors: outcome.http_errors as f64,
            http_err_pct: 100.0 * per_req(outcome.http_errors),
            graphql_err_pct: 100.0 * per_req(outcome.graphql_errors),
            upstream_per_req: per_req(after.upstream_calls.saturating_sub(before.upstream_calls)),
            endpoint_per_req: std::array::from_fn(|i| {
                per_req(after.endpoint_calls[i].saturating_sub(before.endpoint_calls[i]))
            }),
            bytes_per_req: per_req(outcome.body_bytes),
            cpu_us_per_req: per_req(after.cpu_us.saturating_sub(before.cpu_us)),
            peak_rss_mib: peak_rss_kib as f64 / 1024.0,
            cache: CacheColumns::from_run(&before.cache, &after.cache, n),
        }
    }

    /// Column-wise median: each column's median is taken on its own, so the result need not be
    /// any single run (the p99 may come from another run than the rps).
    pub(crate) fn median(runs: &[Columns]) -> Columns {
        let m = |f: fn(&Columns) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Columns {
            requests: m(|c| c.requests),
            rps: m(|c| c.rps),
            p50_ms: m(|c| c.p50_ms),
            p90_ms: m(|c| c.p90_ms),
            p99_ms: m(|c| c.p99_ms),
            errors: m(|c| c.errors),
            http_errors: m(|c| c.http_errors),
            http_err_pct: m(|c| c.http_err_pct),
            graphql_err_pct: m(|c| c.graphql_err_pct),
            upstream_per_req: m(|c| c.upstream_per_req),
            endpoint_per_req: std::array::from_fn(|i| {
                median(
                    &runs
                        .iter()
                        .map(|c| c.endpoint_per_req[i])
                        .collect::<Vec<_>>(),
                )
            }),
            bytes_per_req: m(|c| c.bytes_per_req),
            cpu_us_per_req: m(|c| c.cpu_us_per_req),
            peak_rss_mib: m(|c| c.peak_rss_mib),
            cache: CacheColumns::median(&runs.iter().map(|c| c.cache).collect::<Vec<_>>()),
        }
    }

    pub(crate) fn metric(&self, metric: Metric) -> f64 {
        match metric {
            Metric::P50 => self.p50_ms,
            Metric::P99 => self.p99_ms,
            Metric::Rps => self.rps,
            Metric::UpstreamPerReq => self.upstream_per_req,
            Metric::HttpErrors => self.http_errors,
            Metric::Errors => self.errors,
        }
    }
}

/// "met (…)" or "MISSED by …" for `got` against `bound`; `unit` follows each number.
fn judge(got: f64, bound: Bound, unit: &str) -> String {
    let (limit, ok) = match bound {
        Bound::AtMost(max) => (max, got <= max),
        Bound::AtLeast(min) => (min, got >= min),
    };
    let gap = (got - limit).abs();
    if ok {
        format!("met ({gap:.2}{unit} to spare)")
    } else if limit == 0.0 {
        format!("MISSED by {gap:.2}{unit}")
    } else {
        let pct = 100.0 * gap / limit;
        let side = if matches!(bound, Bound::AtMost(_)) {
            "over"
        } else {
            "short"
        };
        format!("MISSED by {gap:.2}{unit} ({pct:.0}% {side})")
    }
}

fn bound_text(bound: Bound, unit: &str) -> String {
    match bound {
        Bound::AtMost(x) => format!("≤ {x}{unit}"),
        Bound::AtLeast(x) => format!("≥ {x}{unit}"),
    }
}

/// All runs of one load scenario.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioResult {
    pub(crate) name: String,
    pub(crate) concurrency: usize,
    pub(crate) runs: Vec<Columns>,
    pub(crate) targets: Vec<Target>,
    pub(crate) fault: Fault,
    /// Per-run remarks printed under the tables (e.g. the BFF's attempts per endpoint).
    pub(crate) notes: Vec<String>,
}

impl ScenarioResult {
    pub(crate) fn median(&self) -> Columns {
        Columns::median(&self.runs)
    }

    /// One verdict line per target (none without targets).
    pub(crate) fn verdicts(&self) -> Vec<String> {
        let m = self.median();
        self.targets
            .iter()
            .map(|t| {
                let unit = t.metric.unit();
                let got = m.metric(t.metric);
                format!(
                    "{}: {} {got:.2}{unit}, target {} ({}) → {}",
                    self.name,
                    t.metric.label(),
                    bound_text(t.bound, unit),
                    t.why,
                    judge(got, t.bound, unit)
                )
            })
            .collect()
    }
}

/// The verdict of a cross-scenario ratio; `None` unless both scenarios are in `results`.
pub(crate) fn ratio_verdict(results: &[ScenarioResult], t: &RatioTarget) -> Option<String> {
    let find = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.median());
    let (of, over) = (find(t.of)?, find(t.over)?);
    let (a, b) = (of.metric(t.metric), over.metric(t.metric));
    let ratio = a / b;
    let digits = if t.metric == Metric::Rps { 0 } else { 2 };
    Some(format!(
        "{} / {}: {} {a:.digits$} / {b:.digits$} = {ratio:.2}×, target {} ({}) → {}",
        t.of,
        t.over,
        t.metric.label(),
        bound_text(t.bound, "×"),
        t.why,
        judge(ratio, t.bound, "×")
    ))
}

/// A percentage, or "–" for NaN (no lookups).
fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".to_owned()
    } else {
        format!("{x:.1}")
    }
}

/// The Markdown table of medians, one row per scenario, with each run's rps at the end.
pub(crate) fn render_table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | conc | rps | p50 ms | p90 ms | p99 ms | errors | upstream calls/req | cache hit % | bytes/req | CPU µs/req | peak RSS MiB | rps of each run |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in results {
        let m = r.median();
        let runs: Vec<String> = r.runs.iter().map(|c| format!("{:.0}", c.rps)).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {} |",
            r.name,
            r.concurrency,
            m.rps,
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.errors,
            m.upstream_per_req,
            pct(m.cache.hit_pct),
            m.bytes_per_req,
            m.cpu_us_per_req,
            m.peak_rss_mib,
            runs.join(" / ")
        );
    }
    out
}

/// The resilience columns of the fault scenarios (`None` when none ran): latency, errors split
/// into HTTP-level (the client got no homepage) and GraphQL-level (a 200 with some rows missing),
/// backend calls per request and, for a multi-endpoint backend, per endpoint instance.
pub(crate) fn render_fault_table(results: &[ScenarioResult]) -> Option<String> {
    let faulty: Vec<_> = results
        .iter()
        .filter(|r| r.fault != Fault::None || r.name.ends_with("-nofault"))
        .collect();
    if faulty.is_empty() {
        return None;
    }
    let mut out = String::new();
    out.push_str("| scenario | rps | p50 ms | p99 ms | HTTP err % | GraphQL err % | upstream calls/req | served per endpoint /req | p99 of each run |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---|\n");
    for r in faulty {
        let m = r.median();
        let endpoints = if matches!(r.fault, Fault::EndpointDown(_)) {
            m.endpoint_per_req
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        } else {
            "–".to_owned()
        };
        let p99s: Vec<String> = r.runs.iter().map(|c| format!("{:.0}", c.p99_ms)).collect();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.name,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.http_err_pct,
            m.graphql_err_pct,
            m.upstream_per_req,
            endpoints,
            p99s.join(" / ")
        );
    }
    Some(out)
}

/// The cache counters of the scenarios whose BFF looked anything up (medians over the runs,
/// measurement window only); `None` when no scenario used the cache.
pub(crate) fn render_cache_table(results: &[ScenarioResult]) -> Option<String> {
    let used: Vec<_> = results
        .iter()
        .map(|r| (r, r.median().cache))
        .filter(|(_, c)| c.used())
        .collect();
    if used.is_empty() {
        return None;
    }
    let mut out = String::new();
    out.push_str(
        "| scenario | hit % | hits/req | misses/req | stale/req | coalesced/req | evictions |",
    );
    for k in FragmentKind::ALL {
        let _ = write!(out, " {} hit % |", k.name());
    }
    out.push_str("\n|---|---:|---:|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(KINDS));
    out.push('\n');
    for (r, c) in used {
        let _ = write!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.name,
            pct(c.hit_pct),
            c.hits_per_req,
            c.misses_per_req,
            c.stale_per_req,
            c.coalesced_per_req,
            c.evictions
        );
        for k in c.kind_hit_pct {
            let _ = write!(out, " {} |", pct(k));
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared::upstream::BackendId;

    use super::*;

    fn snapshot(cpu_us: u64, upstream_calls: u64, title: (u64, u64, u64)) -> Snapshot {
        let mut cache = [KindSnapshot::default(); KINDS];
        cache[FragmentKind::Title as usize] = KindSnapshot {
            hits: title.0,
            misses: title.1,
            stale: title.2,
            ..KindSnapshot::default()
        };
        Snapshot {
            cpu_us,
            upstream_calls,
            endpoint_calls: [0; ENDPOINTS],
            cache,
        }
    }

    #[test]
    fn columns_of_a_run() {
        let outcome = Outcome {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            errors: 2,
            http_errors: 1,
            graphql_errors: 1,
            body_bytes: 100 * 500,
            window: Duration::from_secs(10),
            first_error: None,
        };
        let c = Columns::from_run(
            &outcome,
            snapshot(1_000_000, 7, (5, 5, 0)),
            snapshot(1_200_000, 707, (5 + 280, 5 + 10, 10)),
            2048,
        );
        assert_eq!(c.rps, 10.0);
        assert_eq!((c.p50_ms, c.p90_ms, c.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!(c.upstream_per_req, 7.0);
        assert_eq!((c.http_err_pct, c.graphql_err_pct), (1.0, 1.0));
        assert_eq!(c.endpoint_per_req, [0.0; ENDPOINTS]);
        assert_eq!(c.bytes_per_req, 500.0);
        assert_eq!(c.cpu_us_per_req, 2000.0);
        assert_eq!(c.peak_rss_mib, 2.0);
        // Deltas only: 280 hits + 10 stale of 300 lookups.
        assert!((c.cache.hit_pct - 290.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.cache.hits_per_req, 2.8);
        assert_eq!(c.cache.misses_per_req, 0.1);
        assert!(c.cache.kind_hit_pct[FragmentKind::Profile as usize].is_nan());
    }

    fn run(p50_ms: f64, rps: f64) -> Columns {
        let no_cache = CacheColumns {
            hit_pct: f64::NAN,
            hits_per_req: 0.0,
            misses_per_req: 0.0,
            stale_per_req: 0.0,
            coalesced_per_req: 0.0,
            evictions: 0.0,
            kind_hit_pct: [f64::NAN; KINDS],
        };
        Columns {
            requests: 1.0,
            rps,
            p50_ms,
            p90_ms: 0.0,
            p99_ms: 0.0,
            errors: 0.0,
            http_errors: 0.0,
            http_err_pct: 0.0,
            graphql_err_pct: 0.0,
            upstream_per_req: 0.0,
            endpoint_per_req: [f64::NAN; ENDPOINTS],
            bytes_per_req: 0.0,
            cpu_us_per_req: 0.0,
            peak_rss_mib: 0.0,
            cache: no_cache,
        }
    }

    #[test]
    fn verdict_reports_the_miss() {
        let r = ScenarioResult {
            name: "x".into(),
            concurrency: 1,
            runs: vec![run(120.0, 1.0), run(100.0, 1.0), run(110.0, 1.0)],
            targets: vec![Target {
                metric: Metric::P50,
                bound: Bound::AtMost(105.0),
                why: "w",
            }],
            fault: Fault::None,
            notes: Vec::new(),
        };
        let v = r.verdicts().join("\n");
        assert!(v.contains("MISSED by 5.00 ms"), "{v}");
        assert!(render_cache_table(&[r]).is_none());
    }

    #[test]
    fn fault_table_lists_fault_scenarios_only() {
        let result = |name: &str, fault: Fault| ScenarioResult {
            name: name.into(),
            concurrency: 16,
            runs: vec![Columns {
                endpoint_per_req: [0.0, 1.0],
                http_err_pct: 0.0,
                graphql_err_pct: 12.5,
                ..run(3.0, 100.0)
            }],
            targets: Vec::new(),
            fault,
            notes: Vec::new(),
        };
        assert!(render_fault_table(&[result("web-off-1u-0ms", Fault::None)]).is_none());
        let table = render_fault_table(&[
            result("web-off-1u-0ms", Fault::None),
            result("web-nofault", Fault::None),
            result("web-endpoint-down", Fault::EndpointDown(BackendId::Top10)),
        ])
        .unwrap_or_default();
        assert!(!table.contains("web-off-1u-0ms"), "{table}");
        assert!(table.contains("| web-nofault | 100 | 3.0 |"), "{table}");
        assert!(table.contains("| 12.50 | 0.00 | 0.00 / 1.00 |"), "{table}");
    }

    #[test]
    fn ratio_is_taken_between_medians() {
        let result = |name: &str, rps: f64| ScenarioResult {
            name: name.into(),
            concurrency: 1,
            runs: vec![run(1.0, rps)],
            targets: Vec::new(),
            fault: Fault::None,
            notes: Vec::new(),
        };
        let t = RatioTarget {
            of: "a",
            over: "b",
            metric: Metric::Rps,
            bound: Bound::AtLeast(3.0),
            why: "w",
        };
        let results = [result("a", 250.0), result("b", 100.0)];
        let v = ratio_verdict(&results, &t).unwrap_or_default();
        assert!(
            v.contains("= 2.50×") && v.contains("MISSED by 0.50×"),
            "{v}"
        );
        assert!(ratio_verdict(&results[..1], &t).is_none());
        let met = [result("a", 400.0), result("b", 100.0)];
        let v = ratio_verdict(&met, &t).unwrap_or_default();
        assert!(v.contains("met (1.00× to spare)"), "{v}");
    }
}
