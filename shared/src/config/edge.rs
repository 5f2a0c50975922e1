//! Edge settings: the client-address rules (`ip_rules.*`, the same keys on a route) and CORS
//! (`cors.*`), with the check that keeps a credentialed wildcard origin below a registrable
//! domain. Which address is the client's (`server.trusted_proxies`) is the server's section; the
//! stages that apply these rules are `crate::pipeline`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Cidr, Invalid, duration, invalid};

/// Client-address rules (`ip_rules.*` globally, and the same keys on a route).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRulesSettings {
    /// When not empty, only these ranges are served.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Never served, even when in `allow`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
}

/// CORS for browser apps on other origins (`cors.*`); off while `allowed_origins` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Origins allowed to call, exactly (`https://app.example.com`) or with one `*` for a host
    /// part (`https://*.example.com`); `"*"` alone is any origin (not with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight allows.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight allows.
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    /// Whether credentialed requests (cookies, `Authorization` with `credentials: "include"`) are
    /// allowed.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["GET".into(), "POST".into()],
            allowed_headers: [
                "authorization",
                "content-type",
                "accept",
                "traceparent",
                "tracestate",
                "x-request-id",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: [
                "x-trace-id",
                "x-request-id",
                "retry-after",
                "ratelimit",
                "ratelimit-policy",
            ]
            .map(String::from)
            .to_vec(),
            allow_credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

impl CorsSettings {
    /// Checks each allowed origin's shape, and what may be combined with credentials.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.allow_credentials && self.allowed_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "cors.allowed_origins",
                "`*` cannot be combined with cors.allow_credentials = true (browsers refuse it, and it would let any site act as the signed-in user); list the origins".into(),
            ));
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("https://") || o.starts_with("http://"))
                || o.matches('*').count() > 1
                || o.ends_with('/')
            {
                return Err(invalid(
                    &format!("cors.allowed_origins[{i}]"),
                    format!(
                        "`{o}`: an origin is scheme://host[:port] with at most one `*`, e.g. https://*.example.com"
                    ),
                ));
            }
            if self.allow_credentials
                && o.contains('*')
                && let Err(why) = cors_credentialed_wildcard(o)
            {
                return Err(invalid(
                    &format!("cors.allowed_origins[{i}]"),
                    format!(
                        "`{o}` with cors.allow_credentials = true: {why}; a wildcard is accepted with credentials only as the first label below a named registrable domain (https://*.example.com)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Two-label public suffixes (and shared-hosting domains) that anyone can register below: a
/// credentialed `https://*.co.uk` or `https://*.github.io` would let strangers' sites read the
/// signed-in user's data. Not the whole Public Suffix List (which has thousands of entries and
/// changes weekly): the common ones, so the usual mistakes are caught at start.
const SHARED_SUFFIXES: &[&str] = &[
    "ac.uk",
    "co.uk",
    "gov.uk",
    "ltd.uk",
    "me.uk",
    "net.uk",
    "org.uk",
    "plc.uk",
    "sch.uk",
    "com.au",
    "net.au",
    "org.au",
    "edu.au",
    "gov.au",
    "co.nz",
    "net.nz",
    "org.nz",
    "co.jp",
    "ne.jp",
    "or.jp",
    "ac.jp",
    "go.jp",
    "co.kr",
    "or.kr",
    "com.br",
    "net.br",
    "org.br",
    "com.cn",
    "net.cn",
    "org.cn",
    "com.hk",
    "com.tw",
    "com.sg",
    "com.my",
    "co.in",
    "net.in",
    "org.in",
    "co.id",
    "co.il",
    "co.za",
    "org.za",
    "com.mx",
    "com.ar",
    "com.tr",
    "com.ua",
    "com.pl",
    "co.th",
    "com.vn",
    "com.ph",
    "com.pk",
    "com.ng",
    "com.eg",
    "com.sa",
    "com.co",
    "com.pe",
    "com.es",
    "co.it",
    "com.ru",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "appspot.com",
    "azurewebsites.net",
    "azurestaticapps.net",
    "cloudfront.net",
    "amazonaws.com",
    "blogspot.com",
    "ngrok.io",
    "ngrok-free.app",
    "fly.dev",
    "onrender.com",
    "glitch.me",
    "repl.co",
    "surge.sh",
    "now.sh",
    "codeberg.page",
    "wordpress.com",
];

/// Why a wildcard origin may not be combined with credentials, if it may not: only
/// `scheme://*.<domain>[:port]` is accepted, the `*` the whole first label and `<domain>` a
/// registrable domain (at least two labels of letters, digits and `-`, an alphabetic top-level
/// label, not one of [`SHARED_SUFFIXES`]). Everything else (`https://*`, `https://*.com`,
/// `https://a*.example.com`, `https://*.co.uk`, `https://*.example.com:*`) would let sites the
/// operator does not control act as the signed-in user.
pub(super) fn cors_credentialed_wildcard(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("a wildcard scheme is never allowed")?;
    let host = rest
        .strip_prefix("*.")
        .ok_or("the `*` must be the whole first host label, followed by `.`")?;
    let domain = match host.rsplit_once(':') {
        Some((domain, port)) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the port must be a number");
            }
            domain
        }
        None => host,
    };
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err("below `*.` must be a domain of two or more labels (example.com)");
    }
    if !labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err("the domain must end in a top-level domain, not an address");
    }
    if SHARED_SUFFIXES.contains(&domain.as_str()) {
        return Err("that domain is a public suffix: anyone can register a site below it");
    }
    Ok(())
}
