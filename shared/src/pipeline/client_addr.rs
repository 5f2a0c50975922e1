//! The client address, the first thing the pipeline decides: the socket peer's address, or —
//! only when that peer is one of `server.trusted_proxies` — the address the proxies say they
//! forwarded for (`Forwarded: for=…`, RFC 7239, else `X-Forwarded-For`). Walking the chain from
//! the right, each trusted hop hands over to the one it names; the first address that is not a
//! trusted proxy is the client. A hop that cannot be read ("unknown", an obfuscated name, junk)
//! ends the walk at the last trusted proxy, so a forged header from outside can never choose
//! the address. The result goes on the request as [`ClientAddr`]: logs, client-address rules and
//! rate limits all use it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::Response,
};

use crate::config::Cidr;

/// The request's client address, as the pipeline decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(pub(crate) Vec<Cidr>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub(crate) fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_for(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop else {
                return client;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// The forwarded-for chain, leftmost (original client) first; `None` for a hop that is not an
/// address. `Forwarded` wins when present: it is the standard, and a proxy that sets it is expected
/// to keep it whole.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| node(v.trim()))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| node(hop.trim()))
        .collect()
}

/// One node: `192.0.2.60`, `192.0.2.60:4711`, `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim_matches('"');
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = raw.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    raw.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

/// The middleware.
pub(crate) async fn client_addr(
    State(trusted): State<Arc<TrustedProxies>>,
    mut req: Request,
    next: Next,
) -> Response {
    // Every connection the server accepts carries its peer; a request without one (an in-process
    // router in a test) is from nowhere in particular.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let addr = trusted.resolve(peer, req.headers());
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies(cidrs.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = trusted(&["10.0.0.0/8"]);
        let forged = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(t.resolve(ip("203.0.113.9"), &forged), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().resolve(ip("10.0.0.1"), &forged),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_hops_hand_over_right_to_left() {
        let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        // A client prepending a forged hop cannot choose: the rightmost untrusted one wins.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("10.9.9.9"));
        // Forwarded, with ports, quotes and IPv6; it wins over X-Forwarded-For.
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=198.51.100.8:80",
            ),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("198.51.100.8"));
        let h = headers(&[("forwarded", "for=198.51.100.9, for=\"[2001:db8::1]\"")]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("198.51.100.9"));
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert_eq!(
            t.resolve(ip("::ffff:10.0.0.2"), &headers(&[])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_trusted_proxy() {
        let t = trusted(&["10.0.0.0/8"]);
        for junk in ["unknown", "_hidden", "not an ip", "", "1.2.3.4.5"] {
            let h = headers(&[("x-forwarded-for", &format!("6.6.6.6, {junk}, 10.1.1.1"))]);
            assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("10.1.1.1"), "{junk:?}");
        }
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.resolve(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }
}
