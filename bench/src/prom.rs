//! Just enough of the Prometheus text format to read one counter family back from a BFF's
//! `/metrics`: the per-endpoint attempt counts of the endpoint-down scenario.

use std::collections::BTreeMap;

/// Sums of `family` samples whose `filter` label equals `value`, keyed by the values of the
/// `by` labels (in order; a missing label reads as ""). Comment lines and other families are
/// skipped; label values are taken verbatim (ours contain no escaped quotes).
pub(crate) fn sum_by(
    text: &str,
    family: &str,
    filter: (&str, &str),
    by: &[&str],
) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k.trim(), v.trim_end_matches('"')))
            })
            .collect();
        if labels.get(filter.0) != Some(&filter.1) {
            continue;
        }
        let key = by
            .iter()
            .map(|l| labels.get(l).copied().unwrap_or_default().to_owned())
            .collect();
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_one_family_by_labels() {
        let text = r#"# HELP bff_upstream_requests_total Attempts.
# TYPE bff_upstream_requests_total counter
bff_upstream_requests_total{backend="top10",client="web",endpoint="127.0.0.1:1",outcome="error"} 3
bff_upstream_requests_total{backend="top10",client="web",endpoint="127.0.0.1:2",outcome="ok"} 40
bff_upstream_requests_total{backend="top10",client="web",endpoint="127.0.0.1:1",outcome="timeout"} 2
bff_upstream_requests_total{backend="catalog",client="web",endpoint="127.0.0.1:9",outcome="ok"} 7
bff_upstream_requests_total_other{backend="top10"} 99
"#;
        let got = sum_by(
            text,
            "bff_upstream_requests_total",
            ("backend", "top10"),
            &["endpoint"],
        );
        let want: BTreeMap<Vec<String>, f64> = [
            (vec!["127.0.0.1:1".to_owned()], 5.0),
            (vec!["127.0.0.1:2".to_owned()], 40.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }
}
