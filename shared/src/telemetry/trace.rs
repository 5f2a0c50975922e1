//! W3C trace context (`traceparent` / `tracestate`) and request ids: taken from the client when
//! valid, created otherwise, and carried with the request so every backend call can say which
//! trace it belongs to. When an OpenTelemetry layer is installed its span ids are used for the
//! outgoing `traceparent` (so exported spans and backend spans link up); without one, a fresh
//! span id per call still keeps every backend on the same trace id.
//!
//! The headers are read and written by OpenTelemetry's W3C propagator
//! ([`TraceContextPropagator`]). Around it sit the few checks it leaves out that the spec or the
//! BFF asks for: the exact field widths of `traceparent`, and the BFF's bounds on `tracestate`.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::RngCore;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// Header names.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`, passed on (bounded, see [`TraceContext::from_headers`]).
pub const TRACESTATE: &str = "tracestate";
/// Request id header, accepted from the client or generated, echoed on the response.
pub const REQUEST_ID: &str = "x-request-id";
/// The trace id of the request, on every response.
pub const TRACE_ID: &str = "x-trace-id";

/// Longest `tracestate` passed on (the spec asks for at least 512 characters; this bounds abuse).
const MAX_TRACESTATE: usize = 512;
/// Most `tracestate` list members (W3C Trace Context, `tracestate` header field values).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest request id accepted from a client.
const MAX_REQUEST_ID: usize = 128;

/// The trace a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id: the client's when it sent a valid `traceparent`, else a new one.
    pub trace_id: TraceId,
    /// The client's span (its id, sampled flag and `tracestate`) when it sent a valid
    /// `traceparent`: the remote parent of the request's span.
    pub parent: Option<SpanContext>,
}

impl TraceContext {
    /// A new, sampled trace with a random id.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::from_bytes(random_nonzero()),
            parent: None,
        }
    }

    /// Extracts the client's trace context with the W3C propagator; an absent or invalid
    /// `traceparent` starts a new trace, as the spec requires. A `tracestate` is kept only when
    /// it is valid and within the BFF's bounds, and then with every member, in order (without the
    /// optional whitespace and empty members, which the spec lets a vendor leave out); anything
    /// else is dropped whole: passing on part of a malformed header would make up a vendor's
    /// state.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let well_formed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(traceparent_well_formed);
        if !well_formed {
            return Self::new_root();
        }
        let incoming = Incoming {
            headers,
            tracestate: combined_tracestate(headers),
        };
        // An empty base context, not the current one: a header the propagator refuses must
        // start a new trace, never continue whatever span happens to be current.
        let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &incoming);
        let parent = cx.span().span_context().clone();
        // The propagator leaves the context empty for version ff and all-zero ids.
        if !parent.is_valid() {
            return Self::new_root();
        }
        Self {
            trace_id: parent.trace_id(),
            parent: Some(parent),
        }
    }

    /// Whether the trace is sampled: the client's flag when it sent one; a new trace is sampled.
    pub fn sampled(&self) -> bool {
        self.parent.as_ref().is_none_or(SpanContext::is_sampled)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.to_string()
    }

    /// Writes `traceparent` and `tracestate` for an outgoing call into `carrier` with the W3C
    /// propagator. The parent named is the current OpenTelemetry span when one is active on this
    /// trace, else a fresh span id; an empty `tracestate` is left out.
    pub fn inject(&self, carrier: &mut dyn Injector) {
        let (span_id, sampled) = match super::current_otel_span() {
            Some(own) if own.trace_id() == self.trace_id => (own.span_id(), own.is_sampled()),
            _ => (SpanId::from_bytes(random_nonzero()), self.sampled()),
        };
        self.inject_as(span_id, sampled, carrier);
    }

    /// The outgoing trace headers of [`TraceContext::inject`] as a header map (for a REST call).
    pub fn outgoing(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.inject(&mut HeaderInjector(&mut headers));
        headers
    }

    /// Injects this trace with `span_id` as the parent of the receiver's span.
    fn inject_as(&self, span_id: SpanId, sampled: bool, carrier: &mut dyn Injector) {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = self
            .parent
            .as_ref()
            .map_or_else(TraceState::default, |p| p.trace_state().clone());
        let span = SpanContext::new(self.trace_id, span_id, flags, false, state);
        let cx = Context::new().with_remote_span_context(span);
        TraceContextPropagator::new().inject_context(&cx, &mut NonEmpty(carrier));
    }
}

/// A random id that is not all zeros (the spec's invalid value).
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    while bytes == [0u8; N] {
        rand::rng().fill_bytes(&mut bytes);
    }
    bytes
}

/// Whether `v` has the shape the spec gives a `traceparent`: two lowercase hex digits of
/// version, then 32, 16 and 2 of trace id, parent id and flags, `-`-separated; version 00 ends
/// there, a later version may go on after another `-`. The propagator parses the fields as
/// integers and so would also take `0-…`, `+0-…`, short or `+`-signed ids and flags, an
/// uppercase version, and a version-00 header ending in `-`. The values themselves (version
/// ff, all-zero ids) are the propagator's to judge.
fn traceparent_well_formed(v: &str) -> bool {
    let v = v.trim();
    let mut fields = v.split('-');
    let lower_hex = |field: &str, width: usize| {
        field.len() == width
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let shaped = [2, 32, 16, 2]
        .into_iter()
        .all(|width| fields.next().is_some_and(|f| lower_hex(f, width)));
    shaped && (fields.next().is_none() || !v.starts_with("00-"))
}

/// Every `tracestate` field of the request combined into one list (RFC 7230 field order, as the
/// spec requires), or `None` when that list breaks [`tracestate_within_bounds`].
fn combined_tracestate(headers: &HeaderMap) -> Option<String> {
    let combined = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    tracestate_within_bounds(&combined).then_some(combined)
}

/// The BFF's bounds on an incoming `tracestate` — at most [`MAX_TRACESTATE`] bytes — and the
/// spec's rules that the propagator's parser lets through: at most 32 members (it keeps the
/// first 32 of a longer list), each a non-empty key `=` a non-empty value without tabs (it takes
/// `=v`, `k=` and `k=a<tab>b`). Key characters and `,`/`=` inside values are the parser's to
/// check; a list it refuses is dropped whole as well.
fn tracestate_within_bounds(v: &str) -> bool {
    if v.len() > MAX_TRACESTATE {
        return false;
    }
    let mut members = 0;
    for member in v.split(',') {
        // Spaces and tabs around a member are optional whitespace; empty members are allowed.
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        members += 1;
        let fits = member.split_once('=').is_some_and(|(key, value)| {
            !key.is_empty() && !value.is_empty() && !value.contains('\t')
        });
        if !fits || members > MAX_TRACESTATE_MEMBERS {
            return false;
        }
    }
    true
}

/// The request's headers as the propagator reads them, with `tracestate` already combined and
/// bounded.
struct Incoming<'a> {
    headers: &'a HeaderMap,
    tracestate: Option<String>,
}

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(TRACESTATE) {
            self.tracestate.as_deref()
        } else {
            self.headers.get(key)?.to_str().ok()
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(HeaderName::as_str).collect()
    }
}

/// Passes on only non-empty values: the propagator always writes `tracestate`, empty when there
/// is none, and the spec asks vendors to avoid sending empty ones.
struct NonEmpty<'a>(&'a mut dyn Injector);

impl Injector for NonEmpty<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.set(key, value);
        }
    }
}

/// Outgoing HTTP headers as the propagator's carrier.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes only its two lowercase names and printable ASCII values.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Outgoing gRPC metadata as the propagator's carrier.
pub(crate) struct MetadataInjector<'a>(pub(crate) &'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
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

    /// The `tracestate` an outgoing call carries, if any.
    fn sent_tracestate(t: &TraceContext) -> Option<String> {
        let out = t.outgoing();
        out.get(TRACESTATE).map(|v| v.to_str().unwrap().to_owned())
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
        assert!(t.sampled());
        let parent = t.parent.as_ref().unwrap();
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_remote());
        assert_eq!(sent_tracestate(&t).as_deref(), Some("congo=t61rcWkgMzE"));
        let mut out = HeaderMap::new();
        t.inject_as(
            SpanId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            t.sampled(),
            &mut HeaderInjector(&mut out),
        );
        assert_eq!(
            out[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(out[TRACESTATE], "congo=t61rcWkgMzE");
        assert_eq!(out.len(), 2);
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
            // Shapes the propagator alone would take (it parses the fields as integers).
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            let t = TraceContext::from_headers(&headers(&[
                (TRACEPARENT, bad),
                (TRACESTATE, "congo=t61rcWkgMzE"),
            ]));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert!(t.parent.is_none(), "{bad}");
            assert!(t.sampled(), "{bad}: a new trace is sampled");
            // A restarted trace carries no tracestate.
            assert_eq!(sent_tracestate(&t), None, "{bad}");
        }
        // A later version with extra fields is read by its first four.
        let t = TraceContext::from_headers(&headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x",
        )]));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!t.sampled());
        // Optional whitespace around the value is not part of it.
        let t = TraceContext::from_headers(&headers(&[(
            TRACEPARENT,
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        )]));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn only_a_valid_bounded_tracestate_is_kept() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = |v: &str| {
            sent_tracestate(&TraceContext::from_headers(&headers(&[
                ("traceparent", parent),
                ("tracestate", v),
            ])))
        };
        assert_eq!(
            state("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        // Empty members and the whitespace around members are optional whitespace, which the
        // spec lets a vendor leave out when it passes the header on.
        assert_eq!(state("a@b=1, ,c=2").as_deref(), Some("a@b=1,c=2"));
        let thirty_two = (0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(state(&thirty_two), Some(thirty_two.clone()));
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
            // A key with two `@`: the Recommendation's keys are `key` or `tenant@system`.
            "a@b@c=1",
            // What the propagator's parser alone would take.
            "=v",
            "k=",
            "k= ",
            "k=a\tb",
            &(0..5)
                .map(|i| format!("k{i}={}", "v".repeat(120)))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            assert_eq!(state(bad), None, "{bad:.40}");
        }
        // Several fields are one list.
        let t = TraceContext::from_headers(&headers(&[
            ("traceparent", parent),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]));
        assert_eq!(sent_tracestate(&t).as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn a_new_trace_sends_a_fresh_parent_on_its_own_trace_id() {
        let t = TraceContext::new_root();
        assert!(t.parent.is_none() && t.sampled());
        let (a, b) = (t.outgoing(), t.outgoing());
        let fields = |h: &HeaderMap| {
            h[TRACEPARENT]
                .to_str()
                .unwrap()
                .split('-')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let (fa, fb) = (fields(&a), fields(&b));
        assert_eq!(fa.len(), 4, "{fa:?}");
        assert_eq!(fa[0], "00");
        assert_eq!(fa[1], t.trace_id_hex());
        assert_eq!(fa[3], "01");
        assert!(fa[2].len() == 16 && fa[2] != "0000000000000000", "{fa:?}");
        assert_eq!(fb[1], fa[1]);
        assert_ne!(fb[2], fa[2], "each call is its own span");
        assert!(!a.contains_key(TRACESTATE), "no empty tracestate is sent");
    }

    #[test]
    fn grpc_metadata_gets_the_same_headers() {
        let t = TraceContext::from_headers(&headers(&[
            (
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            (TRACESTATE, "congo=t61rcWkgMzE"),
        ]));
        let mut md = MetadataMap::new();
        t.inject_as(
            SpanId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            t.sampled(),
            &mut MetadataInjector(&mut md),
        );
        assert_eq!(
            md.get(TRACEPARENT).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00"
        );
        assert_eq!(md.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
        assert_eq!(md.len(), 2);
    }

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        assert_eq!(request_id(&headers(&[(REQUEST_ID, "abc-123")])), "abc-123");
        let long = "x".repeat(200);
        assert_ne!(request_id(&headers(&[(REQUEST_ID, &long)])), long);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
