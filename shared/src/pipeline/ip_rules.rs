//! The client-address rules: allow and deny lists of CIDR ranges (IPv4 and IPv6), once for every
//! request (`ip_rules.*`) and once more per pass-through route (`routes[].allow`/`deny`). Deny
//! wins; a non-empty allow list admits only what it names. A refused address gets `403
//! FORBIDDEN`, is logged and counted (`bff_ip_refused_total`). The address is the pipeline's
//! [`ClientAddr`], so behind trusted proxies it is the real client's.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use super::client_addr::ClientAddr;
use crate::{config::Cidr, error::ErrorCode, refusal::json_error, telemetry::metrics::Metrics};

/// One set of rules and where it applies.
pub(crate) struct IpRules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    /// `global` or the route prefix: a bounded label for logs and metrics.
    scope: String,
    metrics: Option<Arc<Metrics>>,
}

impl IpRules {
    pub(crate) fn new(
        allow: &[Cidr],
        deny: &[Cidr],
        scope: &str,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            allow: allow.to_vec(),
            deny: deny.to_vec(),
            scope: scope.to_owned(),
            metrics,
        }
    }

    /// Whether these rules refuse nobody (the stage is then left out).
    pub(crate) fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` may be served.
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// The middleware.
pub(crate) async fn check(State(rules): State<Arc<IpRules>>, req: Request, next: Next) -> Response {
    // The client-address stage runs first on every request; without it nothing is trusted.
    let addr = req.extensions().get::<ClientAddr>().map(|a| a.0);
    if addr.is_some_and(|ip| rules.permits(ip)) {
        return next.run(req).await;
    }
    tracing::warn!(
        client_address = ?addr,
        scope = %rules.scope,
        "request refused by the client-address rules"
    );
    if let Some(m) = &rules.metrics {
        m.ip_refused(&rules.scope);
    }
    json_error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "requests from your address are not allowed here",
        None,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let p = |v: &[&str]| v.iter().map(|c| c.parse().unwrap()).collect::<Vec<Cidr>>();
        IpRules::new(&p(allow), &p(deny), "global", None)
    }

    #[test]
    fn deny_wins_and_a_non_empty_allow_list_admits_only_itself() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let open = rules(&[], &[]);
        assert!(open.is_open() && open.permits(ip("8.8.8.8")));
        let r = rules(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["10.6.6.0/24", "2001:db8:bad::1"],
        );
        assert!(r.permits(ip("10.1.2.3")));
        assert!(
            r.permits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(r.permits(ip("2001:db8::5")));
        assert!(!r.permits(ip("10.6.6.7")), "deny wins inside allow");
        assert!(!r.permits(ip("2001:db8:bad::1")));
        assert!(!r.permits(ip("192.0.2.1")), "outside allow");
        let r = rules(&[], &["0.0.0.0/0"]);
        assert!(!r.permits(ip("1.1.1.1")) && r.permits(ip("::1")));
    }
}
