//! CORS for browser apps served from other origins (`cors.*`): the BFF answers preflights itself
//! and adds the `Access-Control-*` headers to answers for allowed origins. Origins are exact
//! (`https://app.example.com`) or have one `*` standing for one or more host labels
//! (`https://*.example.com`: `https://a.example.com`, `https://a.b.example.com`, never
//! `https://example.com` or `https://evil.com?.example.com`). A wildcard origin together with
//! credentials is refused by config validation. Off (no layer) while no origin is configured.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsSettings;

/// Whether `origin` matches `pattern` (see the module docs).
fn matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.split_once('*') {
        None => origin == pattern,
        Some((prefix, suffix)) => {
            let Some(middle) = origin
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            else {
                return false;
            };
            // Host labels only: nothing that could end the host or start a path or port.
            !middle.is_empty()
                && !middle.starts_with('.')
                && !middle.ends_with('.')
                && middle
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    }
}

/// The CORS layer for `s`, or `None` when no origin is allowed.
pub(crate) fn layer(s: &CorsSettings) -> Option<CorsLayer> {
    if s.allowed_origins.is_empty() {
        return None;
    }
    let origins = s.allowed_origins.clone();
    let allow_origin = if origins.iter().any(|o| o == "*") && !s.allow_credentials {
        AllowOrigin::any()
    } else {
        AllowOrigin::predicate(move |origin: &HeaderValue, _: &Parts| {
            origin
                .to_str()
                .is_ok_and(|o| origins.iter().any(|p| matches(p, o)))
        })
    };
    let methods: Vec<Method> = s
        .allowed_methods
        .iter()
        .filter_map(|m| m.parse().ok())
        .collect();
    let headers: Vec<HeaderName> = s
        .allowed_headers
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    let expose: Vec<HeaderName> = s
        .expose_headers
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(expose)
            .allow_credentials(s.allow_credentials)
            .max_age(Duration::from_secs(s.max_age.as_secs())),
    )
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn origin_patterns_match_host_labels_only() {
        assert!(matches(
            "https://app.example.com",
            "https://app.example.com"
        ));
        assert!(matches(
            "https://app.example.com",
            "HTTPS://APP.example.com"
        ));
        assert!(!matches(
            "https://app.example.com",
            "http://app.example.com"
        ));
        assert!(!matches(
            "https://app.example.com",
            "https://app.example.com:8443"
        ));
        let p = "https://*.example.com";
        assert!(matches(p, "https://a.example.com"));
        assert!(matches(p, "https://a-b.c.example.com"));
        for bad in [
            "https://example.com",
            "https://.example.com",
            "https://evil.com?.example.com",
            "https://evil.com/.example.com",
            "https://evil.com:1.example.com",
            "https://a.example.com.evil.com",
            "http://a.example.com",
        ] {
            assert!(!matches(p, bad), "{bad}");
        }
        assert!(matches("http://localhost:*", "http://localhost:3000"));
        assert!(matches("*", "https://anything.test"));
    }
}
