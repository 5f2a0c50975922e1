//! W3C trace context (`traceparent` / `tracestate`) and request ids: taken from the client when
//! valid, created otherwise, and carried with the request so every backend call can say which
//! trace it belongs to. When an OpenTelemetry layer is installed its span ids are used for the
//! outgoing `traceparent` (so exported spans and backend spans link up); without one, a fresh
//! span id per call still keeps every backend on the same trace id.

use std::fmt::Write as _;

use http::HeaderMap;
use rand::RngCore;

/// Header names.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`, passed through unchanged.
pub const TRACESTATE: &str = "tracestate";
/// Request id header, accepted from the client or generated, echoed on the response.
pub const REQUEST_ID: &str = "x-request-id";
/// The trace id of the request, on every response.
pub const TRACE_ID: &str = "x-trace-id";

/// Longest `tracestate` passed on (the spec allows 32 members; this bounds abuse).
const MAX_TRACESTATE: usize = 512;
/// Longest request id accepted from a client.
const MAX_REQUEST_ID: usize = 128;

/// The trace a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// The caller's span, when the client sent a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// Sampled flag (bit 0 of trace-flags); a new trace is sampled.
    pub sampled: bool,
    /// `tracestate`, passed through.
    pub tracestate: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// A new, sampled trace with a random id.
    pub fn new_root() -> Self {
        let mut trace_id = [0u8; 16];
        while trace_id == [0u8; 16] {
            rand::rng().fill_bytes(&mut trace_id);
        }
        Self {
            trace_id,
            parent_span_id: None,
            sampled: true,
            tracestate: None,
        }
    }

    /// Parses `traceparent` (version 00 format; future versions by their first four fields) and
    /// `tracestate`; an absent or invalid `traceparent` starts a new trace, as the spec requires.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let Some((trace_id, span_id, flags)) = parsed else {
            return Self::new_root();
        };
        let tracestate = headers
            .get_all(TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let tracestate = (tracestate.len() <= MAX_TRACESTATE && valid_tracestate(&tracestate))
            .then_some(tracestate);
        Self {
            trace_id,
            parent_span_id: Some(span_id),
            sampled: flags & 1 == 1,
            tracestate,
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// A `traceparent` naming `span_id` as the parent of the receiver's span.
    pub fn traceparent(&self, span_id: [u8; 8]) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            hex(&span_id),
            u8::from(self.sampled)
        )
    }

    /// A `traceparent` for an outgoing call: the current OpenTelemetry span when one is active on
    /// this trace, else a fresh span id.
    pub fn outgoing(&self) -> String {
        if let Some((trace, span, sampled)) = super::current_otel_span()
            && trace == self.trace_id
        {
            return format!(
                "00-{}-{}-{:02x}",
                hex(&trace),
                hex(&span),
                u8::from(sampled)
            );
        }
        let mut span = [0u8; 8];
        while span == [0u8; 8] {
            rand::rng().fill_bytes(&mut span);
        }
        self.traceparent(span)
    }
}

/// Most `tracestate` list members (W3C Trace Context §3.3.1).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Whether `v` is a W3C `tracestate`: at most 32 `key=value` members (empty ones between commas
/// allowed), keys `[a-z0-9][a-z0-9_*/@-]{0,255}`, values of printable ASCII without `,` or `=`, not
/// ending in a space, at most 256 characters. Anything else is dropped whole: passing on part of a
/// malformed header would make up a vendor's state.
fn valid_tracestate(v: &str) -> bool {
    let mut members = 0;
    for member in v.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        let key_ok = key.len() <= 256
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && !value.ends_with(' ')
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
        if !key_ok || !value_ok {
            return false;
        }
    }
    members > 0 && members <= MAX_TRACESTATE_MEMBERS
}

fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let version: [u8; 1] = unhex(version)?;
    // Version ff is invalid; version 00 has exactly four fields; later versions may add more.
    if version[0] == 0xff || (version[0] == 0 && rest.is_some()) {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let span: [u8; 8] = unhex(span)?;
    let flags: [u8; 1] = unhex(flags)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0]))
}

/// The client's request id when it is safe to echo and log (visible ASCII, bounded), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let t = TraceContext::from_headers(&headers(&[
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (TRACESTATE, "congo=t61rcWkgMzE"),
        ]));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled);
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let out = t.traceparent([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            out,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let t = TraceContext::from_headers(&headers(&[(TRACEPARENT, bad)]));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert!(t.parent_span_id.is_none(), "{bad}");
        }
        // A later version with extra fields is read by its first four.
        let t = TraceContext::from_headers(&headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x",
        )]));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!t.sampled);
    }

    #[test]
    fn only_a_valid_bounded_tracestate_is_kept() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = |v: &str| {
            TraceContext::from_headers(&headers(&[("traceparent", parent), ("tracestate", v)]))
                .tracestate
        };
        assert_eq!(
            state("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(state("a@b=1, ,c=2").as_deref(), Some("a@b=1, ,c=2"));
        for bad in [
            "",
            "novalue",
            "Upper=1",
            "k=v=w",
            "k=a b=c",
            &"x".repeat(5000),
            &(0..33)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            assert_eq!(state(bad), None, "{bad:.40}");
        }
    }

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        assert_eq!(request_id(&headers(&[(REQUEST_ID, "abc-123")])), "abc-123");
        let long = "x".repeat(200);
        assert_ne!(request_id(&headers(&[(REQUEST_ID, &long)])), long);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
