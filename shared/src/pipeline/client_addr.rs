//! The client address, the first thing the pipeline decides: the socket peer's address, or —
//! only when that peer is one of `server.trusted_proxies` — the address the proxies say they
//! forwarded for, read from the one header family `server.forwarded_header` names
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded: for=…`); the other family is whatever the client
//! sent and is never read.
//!
//! The walk is nginx's `real_ip_recursive` (Envoy's `xff_num_trusted_hops` with CIDRs instead of
//! a count): the header lines are one list in order; from its right end, each element is the
//! address the hop to its right received the request from. While that address is a trusted
//! proxy, the walk moves one element left; the first untrusted address is the client. An element
//! that cannot be read (`unknown`, an obfuscated `_name`, junk, non-ASCII bytes) ends the walk:
//! the client is then the last address a trusted hop vouched for, so nothing written further
//! left — where the client writes — can choose the address. Lines are read as bytes and split
//! from the right, so a line holding a byte that is not text never erases the element a trusted
//! proxy appended after it. The result goes on the request as [`ClientAddr`]: logs,
//! client-address rules and rate limits all use it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::Response,
};

use crate::config::{Cidr, ForwardedHeader};

/// The request's client address, as the pipeline decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub IpAddr);

/// The proxies whose forwarding headers are believed, and which header they append.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    pub(crate) cidrs: Vec<Cidr>,
    pub(crate) header: ForwardedHeader,
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub(crate) fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Last line first, each line's last element first: the order the hops appended them.
        let elements = headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            // RFC 9110 §5.6.1: empty list elements are ignored, not errors.
            .filter(|e| !e.is_empty());
        let mut client = peer;
        for element in elements {
            let hop = match self.header {
                ForwardedHeader::XForwardedFor => node(element),
                ForwardedHeader::Forwarded => forwarded_for(element).and_then(node),
            };
            // Unreadable: the trusted hop that wrote it did not say whom it received from; the
            // last address vouched for stands.
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

/// The `for` parameter of one `Forwarded` element (`for=…;proto=…;by=…`, names in any case);
/// `None` when it has none or names it twice (RFC 7239 §4: each parameter at most once).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    let mut found = None;
    for pair in element.split(|b| *b == b';') {
        let pair = pair.trim_ascii();
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if name.trim_ascii().eq_ignore_ascii_case(b"for") {
            if found.is_some() {
                return None;
            }
            found = Some(value.trim_ascii());
        }
    }
    found
}

/// One node, as bytes: `192.0.2.60`, `192.0.2.60:4711`, `[2001:db8::17]:4711`, `2001:db8::17`,
/// `[2001:db8::17]`, each optionally quoted (RFC 7239 quotes anything with a colon), a port
/// number or an obfuscated port (`_p1`). `unknown`, obfuscated names (`_abc`), zone ids,
/// non-ASCII bytes and anything else are `None`.
fn node(raw: &[u8]) -> Option<IpAddr> {
    let raw = match raw {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    let text = std::str::from_utf8(raw).ok()?;
    if !text.is_ascii() {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !after.is_empty() && !port(after.strip_prefix(':')?) {
            return None;
        }
        return ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // `a.b.c.d:port`: only IPv4 takes a port without brackets (a bare IPv6 is all colons).
    let (ip, p) = text.rsplit_once(':')?;
    let ip = ip.parse::<Ipv4Addr>().ok()?;
    port(p).then_some(IpAddr::V4(ip))
}

/// A port (`0`–`65535`) or an obfuscated one (`_` and letters, digits, `.`, `_`, `-`).
fn port(p: &str) -> bool {
    match p.strip_prefix('_') {
        Some(obf) => {
            !obf.is_empty()
                && obf
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        None => !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok(),
    }
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
mod tests;
