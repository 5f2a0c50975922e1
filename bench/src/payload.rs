//! The `payload` scenario: not a load test. One full homepage per surface (user u1), fetched
//! plain and with each `Accept-Encoding` the BFF supports, to compare what reaches a phone with
//! what reaches a browser. Sizes are the raw bytes as received (reqwest does not decompress).

use std::fmt::Write as _;

use anyhow::{Context, Result, bail, ensure};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};

use crate::{
    harness::Env,
    load,
    scenario::{Bff, MOBILE_FULL, WEB_FULL},
};

/// Mobile bytes at most this share of web bytes.
pub(crate) const TARGET_RATIO: f64 = 0.25;

const ENCODINGS: [Option<&str>; 4] = [None, Some("gzip"), Some("br"), Some("zstd")];

/// Sizes for one encoding.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) encoding: &'static str,
    pub(crate) web: u64,
    pub(crate) mobile: u64,
}

impl Row {
    pub(crate) fn ratio(&self) -> f64 {
        self.mobile as f64 / self.web as f64
    }
}

/// Fetches both homepages in every encoding.
pub(crate) async fn measure(env: &Env) -> Result<Vec<Row>> {
    env.set_latency(std::time::Duration::ZERO);
    let token = env.token("u1")?;
    let client = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .build()?;
    let mut sizes = Vec::new();
    for (bff, query) in [(Bff::Web, WEB_FULL), (Bff::Mobile, MOBILE_FULL)] {
        let server = env.spawn_bff(bff, |_| {}).await?;
        let mut per_encoding = Vec::new();
        let body = serde_json::to_vec(&serde_json::json!({ "query": query }))?;
        for enc in ENCODINGS {
            let bytes = fetch(&client, &server.graphql_url(), &body, &token, enc)
                .await
                .with_context(|| format!("{} homepage, encoding {enc:?}", bff.name()))?;
            per_encoding.push(bytes);
        }
        server.stop().await?;
        sizes.push(per_encoding);
    }
    let [web, mobile] = sizes.as_slice() else {
        bail!("expected sizes for two surfaces");
    };
    Ok(ENCODINGS
        .iter()
        .zip(web.iter().zip(mobile))
        .map(|(enc, (&web, &mobile))| Row {
            encoding: enc.unwrap_or("identity"),
            web,
            mobile,
        })
        .collect())
}

/// One request; checks it succeeded and came back in the encoding asked for (a silently
/// uncompressed answer would make the compressed figures lie).
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    token: &str,
    enc: Option<&str>,
) -> Result<u64> {
    let mut req = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .bearer_auth(token)
        .body(body.to_vec());
    if let Some(e) = enc {
        req = req.header(ACCEPT_ENCODING, e);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let got = resp
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await?;
    ensure!(status.is_success(), "status {status}");
    ensure!(
        got.as_deref() == enc,
        "asked for {enc:?}, got Content-Encoding {got:?}"
    );
    if enc.is_none() {
        ensure!(
            !load::has_graphql_errors(&body),
            "GraphQL errors: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body.len() as u64)
}

/// Markdown table plus the target verdict (judged on uncompressed JSON, the size the client
/// has to parse; the compressed ratios are shown for the wire).
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| encoding | web bytes | mobile bytes | mobile/web |\n");
    out.push_str("|---|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}% |",
            r.encoding,
            r.web,
            r.mobile,
            100.0 * r.ratio()
        );
    }
    if let Some(plain) = rows.iter().find(|r| r.encoding == "identity") {
        let ratio = plain.ratio();
        let verdict = if ratio <= TARGET_RATIO {
            "met".to_owned()
        } else {
            format!(
                "MISSED by {:.1} percentage points",
                100.0 * (ratio - TARGET_RATIO)
            )
        };
        let _ = writeln!(
            out,
            "\ntarget: mobile ≤ {:.0}% of web (uncompressed JSON): {:.1}% → {verdict}",
            100.0 * TARGET_RATIO,
            100.0 * ratio
        );
    }
    out
}
