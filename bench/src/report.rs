//! Turning raw run outcomes into the reported columns, taking medians over runs, and rendering
//! the Markdown table and target verdicts (Markdown so a run pastes straight into BENCHMARKS.md).

use std::fmt::Write as _;

use crate::{
    load::Outcome,
    scenario::Target,
    stats::{median, percentile},
};

/// Counters read at the edges of the measurement window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    /// Process utime + stime, µs.
    pub(crate) cpu_us: u64,
    /// Calls received by all fixture backends.
    pub(crate) upstream_calls: u64,
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
    pub(crate) upstream_per_req: f64,
    pub(crate) bytes_per_req: f64,
    pub(crate) cpu_us_per_req: f64,
    pub(crate) peak_rss_mib: f64,
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
            upstream_per_req: per_req(after.upstream_calls.saturating_sub(before.upstream_calls)),
            bytes_per_req: per_req(outcome.body_bytes),
            cpu_us_per_req: per_req(after.cpu_us.saturating_sub(before.cpu_us)),
            peak_rss_mib: peak_rss_kib as f64 / 1024.0,
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
            upstream_per_req: m(|c| c.upstream_per_req),
            bytes_per_req: m(|c| c.bytes_per_req),
            cpu_us_per_req: m(|c| c.cpu_us_per_req),
            peak_rss_mib: m(|c| c.peak_rss_mib),
        }
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        match p {
            50.0 => Some(self.p50_ms),
            90.0 => Some(self.p90_ms),
            99.0 => Some(self.p99_ms),
            _ => None,
        }
    }
}

/// All runs of one load scenario.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioResult {
    pub(crate) name: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) runs: Vec<Columns>,
    pub(crate) target: Option<Target>,
}

impl ScenarioResult {
    pub(crate) fn median(&self) -> Columns {
        Columns::median(&self.runs)
    }

    /// `None` without a target; otherwise the verdict line.
    pub(crate) fn verdict(&self) -> Option<String> {
        let t = self.target?;
        let Some(got) = self.median().percentile_ms(t.percentile) else {
            return Some(format!(
                "{}: target on p{} cannot be checked (only p50/p90/p99 are kept)",
                self.name, t.percentile
            ));
        };
        let verdict = if got <= t.max_ms {
            format!("met ({:.1} ms to spare)", t.max_ms - got)
        } else {
            format!(
                "MISSED by {:.1} ms ({:.0}% over)",
                got - t.max_ms,
                100.0 * (got / t.max_ms - 1.0)
            )
        };
        Some(format!(
            "{}: p{} {got:.1} ms, target ≤ {} ms ({}) → {verdict}",
            self.name, t.percentile, t.max_ms, t.why
        ))
    }
}

/// The Markdown table of medians, one row per scenario, with each run's rps at the end.
pub(crate) fn render_table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | conc | rps | p50 ms | p90 ms | p99 ms | errors | upstream calls/req | bytes/req | CPU µs/req | peak RSS MiB | rps of each run |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in results {
        let m = r.median();
        let runs: Vec<String> = r.runs.iter().map(|c| format!("{:.0}", c.rps)).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {} |",
            r.name,
            r.concurrency,
            m.rps,
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.errors,
            m.upstream_per_req,
            m.bytes_per_req,
            m.cpu_us_per_req,
            m.peak_rss_mib,
            runs.join(" / ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn columns_of_a_run() {
        let outcome = Outcome {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            errors: 2,
            body_bytes: 100 * 500,
            window: Duration::from_secs(10),
            first_error: None,
        };
        let c = Columns::from_run(
            &outcome,
            Snapshot {
                cpu_us: 1_000_000,
                upstream_calls: 7,
            },
            Snapshot {
                cpu_us: 1_200_000,
                upstream_calls: 707,
            },
            2048,
        );
        assert_eq!(c.rps, 10.0);
        assert_eq!((c.p50_ms, c.p90_ms, c.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!(c.upstream_per_req, 7.0);
        assert_eq!(c.bytes_per_req, 500.0);
        assert_eq!(c.cpu_us_per_req, 2000.0);
        assert_eq!(c.peak_rss_mib, 2.0);
    }

    #[test]
    fn verdict_reports_the_miss() {
        let run = |p50_ms| Columns {
            requests: 1.0,
            rps: 1.0,
            p50_ms,
            p90_ms: 0.0,
            p99_ms: 0.0,
            errors: 0.0,
            upstream_per_req: 0.0,
            bytes_per_req: 0.0,
            cpu_us_per_req: 0.0,
            peak_rss_mib: 0.0,
        };
        let r = ScenarioResult {
            name: "x",
            concurrency: 1,
            runs: vec![run(120.0), run(100.0), run(110.0)],
            target: Some(Target {
                percentile: 50.0,
                max_ms: 105.0,
                why: "w",
            }),
        };
        let v = r.verdict().unwrap_or_default();
        assert!(v.contains("MISSED by 5.0 ms"), "{v}");
    }
}
