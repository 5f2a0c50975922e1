//! The path a pass-through route forwards: the part of the request path after the route's prefix,
//! with dot segments resolved (RFC 3986 §5.2.4) so that it can only ever name something under the
//! route's backend path.
//!
//! Backends and the proxies between them disagree about what a dot segment is: some decode
//! `%2e%2e` before resolving (WHATWG URL parsing, which reqwest uses, does), some decode twice,
//! some treat `\` as `/`. So a segment counts as `.` or `..` when it is one after any number of
//! percent-decodings, and a segment that decodes to something holding a separator (`/`, `\`) or a
//! NUL is refused outright rather than guessed about. Resolving a `..` above the route's root is
//! refused too. Segments that are neither are forwarded exactly as the client spelled them.

/// Why a forwarded path is refused (→ `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `..` would climb above the route's backend path.
    #[error("the path leaves the route")]
    Escapes,
    /// A segment holds an encoded `/` or `\`, a raw `\`, a NUL, or bad percent-encoding.
    #[error("the path holds an encoded separator or an invalid escape")]
    Ambiguous,
}

/// Percent-decodings tried on one segment: `%25` chains deeper than this are refused, so no
/// backend that decodes more often than we looked can see a dot segment we did not.
const MAX_DECODINGS: usize = 4;

/// What a segment is after every decoding a server might apply.
enum Segment {
    Dot,
    DotDot,
    Plain,
}

fn decode_once(s: &str) -> Result<Option<String>, PathError> {
    if !s.contains('%') {
        return Ok(None);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::Ambiguous)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::Ambiguous)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::Ambiguous)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Bytes that are not UTF-8 cannot spell a dot or a separator; keep them as they were.
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

fn classify(raw: &str) -> Result<Segment, PathError> {
    if raw.contains('\\') {
        return Err(PathError::Ambiguous);
    }
    let mut current = raw.to_owned();
    for _ in 0..=MAX_DECODINGS {
        match current.as_str() {
            "." => return Ok(Segment::Dot),
            ".." => return Ok(Segment::DotDot),
            _ => {}
        }
        if current.contains(['/', '\\', '\0']) {
            return Err(PathError::Ambiguous);
        }
        match decode_once(&current)? {
            Some(decoded) => current = decoded,
            None => return Ok(Segment::Plain),
        }
    }
    // Still decoding after every round we allow: nothing legitimate nests escapes this deep.
    Err(PathError::Ambiguous)
}

/// The path to forward for `rest`, the request path after the route prefix (empty or starting
/// with `/`), as received (still percent-encoded). The result is empty or starts with `/`; a
/// trailing `/` (or a final dot segment, which names a directory) is kept.
pub(crate) fn forward(rest: &str) -> Result<String, PathError> {
    if rest.is_empty() {
        return Ok(String::new());
    }
    let Some(rest) = rest.strip_prefix('/') else {
        // `/api/imagesX` is not under `/api/images`; the router never sends it here.
        return Err(PathError::Escapes);
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut directory = false;
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, raw) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match classify(raw)? {
            Segment::Dot => directory = last,
            Segment::DotDot => {
                kept.pop().ok_or(PathError::Escapes)?;
                directory = last;
            }
            Segment::Plain => {
                kept.push(raw);
                directory = false;
            }
        }
    }
    let mut out = String::with_capacity(rest.len() + 1);
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if directory || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn plain_paths_are_forwarded_as_spelled() {
        assert_eq!(forward(""), Ok(String::new()));
        assert_eq!(forward("/"), Ok("/".into()));
        assert_eq!(forward("/a/b"), Ok("/a/b".into()));
        assert_eq!(forward("/a/b/"), Ok("/a/b/".into()));
        assert_eq!(forward("/a%20b/c%2Bd"), Ok("/a%20b/c%2Bd".into()));
        assert_eq!(forward("/a//b"), Ok("/a//b".into()));
        assert_eq!(forward("/...."), Ok("/....".into()));
        assert_eq!(forward("/.hidden/..x/x.."), Ok("/.hidden/..x/x..".into()));
    }

    #[test]
    fn dot_segments_resolve_inside_the_route() {
        assert_eq!(forward("/a/./b"), Ok("/a/b".into()));
        assert_eq!(forward("/a/../b"), Ok("/b".into()));
        assert_eq!(forward("/a/b/.."), Ok("/a/".into()));
        assert_eq!(forward("/a/%2e%2E/b"), Ok("/b".into()));
        assert_eq!(forward("/a/."), Ok("/a/".into()));
        assert_eq!(forward("/."), Ok("/".into()));
    }

    #[test]
    fn every_spelling_of_climbing_out_is_refused() {
        for path in [
            "/..",
            "/../__admin/stats",
            "/a/../../__admin",
            "/%2e%2e/__admin",
            "/%2E%2E/__admin",
            "/.%2e/__admin",
            "/%2e./__admin",
            "/%252e%252e/__admin",
            "/%25252e%25252e/__admin",
            "/a/%2e%2e/%2e%2e/x",
            "/./../x",
        ] {
            assert_eq!(forward(path), Err(PathError::Escapes), "{path}");
        }
        for path in [
            "/..\\__admin",
            "/a\\..\\..\\x",
            "/..%2f__admin",
            "/..%2F..%2F__admin",
            "/%2e%2e%5c__admin",
            "/a%252fb",
            "/x%00y",
            "/%zz",
            "/%2",
            "/%2525252525252e",
        ] {
            assert_eq!(forward(path), Err(PathError::Ambiguous), "{path}");
        }
    }

    /// What a server resolving dot segments after decoding (as many times as it likes) sees.
    fn server_view(path: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for raw in path.split('/').skip(1) {
            let mut s = raw.to_owned();
            for _ in 0..8 {
                match decode_once(&s) {
                    Ok(Some(d)) => s = d,
                    _ => break,
                }
            }
            match s.as_str() {
                "." | "" => {}
                ".." => {
                    if out.pop().is_none() {
                        out.push("<ESCAPED>".into());
                    }
                }
                _ => out.push(s),
            }
        }
        out
    }

    proptest! {
        /// Whatever the client sends, what is forwarded never climbs above the route, however
        /// often the backend decodes it, and contains no dot segment in any spelling.
        #[test]
        fn fuzz_path_forwarded_never_leaves_the_route(
            parts in prop::collection::vec(
                prop_oneof![
                    Just("..".to_owned()), Just(".".to_owned()), Just("%2e".to_owned()),
                    Just("%2E%2e".to_owned()), Just("%25".to_owned()), Just("%252e".to_owned()),
                    Just("\\".to_owned()), Just("%5c".to_owned()), Just("%2f".to_owned()),
                    Just("/".to_owned()), Just("a".to_owned()), Just("__admin".to_owned()),
                    "[a-z%./\\\\]{0,6}",
                ],
                0..12,
            )
        ) {
            let path = format!("/{}", parts.concat());
            if let Ok(forwarded) = forward(&path) {
                prop_assert!(forwarded.is_empty() || forwarded.starts_with('/'));
                let view = server_view(&forwarded);
                prop_assert!(!view.iter().any(|s| s == "<ESCAPED>"), "{path} -> {forwarded}");
                for raw in forwarded.split('/').skip(1) {
                    prop_assert!(matches!(classify(raw), Ok(Segment::Plain)) || raw.is_empty(),
                        "{path} -> {forwarded}");
                }
            }
        }
    }
}
