//! Writes the engine's value tree as JSON, byte for byte what `serde_json` writes for it, with a
//! faster string escaper.
//!
//! A web homepage is ~210 KB of JSON, almost all of it in strings (6,000 image URLs, names,
//! synopses) that need no escaping. `serde_json` looks each byte up in a table; in a callgrind
//! profile of the web homepage that loop was the single most expensive function (9% of all
//! instructions, fixtures and load generator included). Here a string is scanned eight bytes at a
//! time for the three things JSON must escape (`"`, `\` and control characters) and copied in runs;
//! integers go through itoa rather than `fmt`.

use std::{
    io::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
};

use async_graphql::Value;
use bytes::Bytes;

/// Where JSON goes: one growing buffer, or [`Chunks`], which keeps rendered values (already
/// JSON, see [`super::render`]) as shared pieces instead of copying them.
pub(crate) trait JsonOut {
    /// The buffer plain values are written to.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// Appends already-written JSON.
    fn raw(&mut self, json: &Bytes);
}

impl JsonOut for Vec<u8> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self
    }

    fn raw(&mut self, json: &Bytes) {
        self.extend_from_slice(json);
    }
}

/// A JSON document as a list of pieces: what was written here, and rendered values as they are
/// (a web homepage's ~210 KB is almost all rendered rows: no copy, no second big buffer).
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
    /// Bytes written here rather than shared.
    own: usize,
}

impl Chunks {
    /// Chunks whose first own piece starts with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            current: Vec::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// Bytes written here rather than shared from rendered values.
    pub(crate) fn own_len(&self) -> usize {
        self.own + self.current.len()
    }

    /// The pieces in order.
    pub(crate) fn finish(mut self) -> Vec<Bytes> {
        self.seal(0);
        self.done
    }

    /// Moves the current piece to `done`, starting a new one of `capacity`.
    fn seal(&mut self, capacity: usize) {
        if !self.current.is_empty() {
            self.own += self.current.len();
            let mut piece = std::mem::replace(&mut self.current, Vec::with_capacity(capacity));
            // A piece lives until the client has read it: do not hold a big hint's unused tail.
            if piece.capacity() > 2 * piece.len() + 4096 {
                piece.shrink_to_fit();
            }
            self.done.push(Bytes::from(piece));
        }
    }
}

impl JsonOut for Chunks {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.current
    }

    fn raw(&mut self, json: &Bytes) {
        // What follows a rendered value is a few keys and brackets up to the next one.
        self.seal(256);
        self.done.push(json.clone());
    }
}

/// Appends `value` as JSON: objects in their own (selection) order, numbers as `serde_json`
/// prints them, binary as an array of byte values (what `serde_json` does with bytes), rendered
/// values verbatim.
pub(crate) fn write_value<O: JsonOut + ?Sized>(out: &mut O, value: &Value) {
    match value {
        Value::Null => out.buf().extend_from_slice(b"null"),
        Value::Boolean(true) => out.buf().extend_from_slice(b"true"),
        Value::Boolean(false) => out.buf().extend_from_slice(b"false"),
        // Integers (every width and height) through itoa, as serde_json does, without the
        // `fmt` machinery; floats through `Number`'s Display, which is serde_json's own.
        Value::Number(n) => write_number(out.buf(), n),
        Value::String(s) => write_str(out.buf(), s),
        Value::Enum(name) => write_str(out.buf(), name),
        Value::Binary(bytes) => {
            let out = out.buf();
            out.push(b'[');
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(itoa::Buffer::new().format(*b).as_bytes());
            }
            out.push(b']');
        }
        Value::List(items) => {
            out.buf().push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.buf().push(b',');
                }
                write_value(out, item);
            }
            out.buf().push(b']');
        }
        Value::Object(_) if let Some(json) = super::raw::raw_json(value) => out.raw(json),
        Value::Object(map) => {
            out.buf().push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.buf().push(b',');
                }
                write_str(out.buf(), key);
                out.buf().push(b':');
                write_value(out, item);
            }
            out.buf().push(b'}');
        }
    }
}

/// Appends a number as `serde_json` prints it: integers through itoa, floats through `Number`'s
/// Display (serde_json's own).
pub(super) fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    } else {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{n}");
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is a control character, `"` or `\`. Exact (no false positives): each
/// test is the classic "has a zero byte" / "has a byte less than n" bit trick.
fn needs_escape(w: u64) -> bool {
    let control = w.wrapping_sub(LO * 0x20) & !w;
    let quote = (w ^ (LO * u64::from(b'"'))).wrapping_sub(LO) & !(w ^ (LO * u64::from(b'"')));
    let backslash = (w ^ (LO * u64::from(b'\\'))).wrapping_sub(LO) & !(w ^ (LO * u64::from(b'\\')));
    (control | quote | backslash) & HI != 0
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it.
pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0; // first byte not yet copied
    // Whole words through fixed-size loads (no copy call per word); a short tail is padded with
    // spaces, which need no escape.
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    for (k, word) in words.enumerate() {
        let clean = <[u8; 8]>::try_from(word).is_ok_and(|w| !needs_escape(u64::from_le_bytes(w)));
        if !clean {
            escape_range(out, bytes, k * 8..k * 8 + 8, &mut start);
        }
    }
    if !tail.is_empty() {
        let mut word = [b' '; 8];
        for (d, s) in word.iter_mut().zip(tail) {
            *d = *s;
        }
        if needs_escape(u64::from_le_bytes(word)) {
            escape_range(
                out,
                bytes,
                bytes.len() - tail.len()..bytes.len(),
                &mut start,
            );
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Escapes what needs it in `bytes[range]`, copying the clean run since `start` before each escape.
fn escape_range(out: &mut Vec<u8>, bytes: &[u8], range: std::ops::Range<usize>, start: &mut usize) {
    for j in range {
        let b = bytes[j];
        if let Some(escape) = escape_of(b) {
            out.extend_from_slice(&bytes[*start..j]);
            push_escape(out, escape, b);
            *start = j + 1;
        }
    }
}

fn push_escape(out: &mut Vec<u8>, escape: Escape, b: u8) {
    match escape {
        Escape::Short(c) => out.extend_from_slice(&[b'\\', c]),
        Escape::Unicode => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
    }
}

enum Escape {
    /// `\` followed by this byte.
    Short(u8),
    /// `\u00XX`.
    Unicode,
}

/// serde_json's escapes: `"`, `\`, the five short control escapes, `\u00XX` for the other
/// control characters; everything else (including DEL and non-ASCII) verbatim.
fn escape_of(b: u8) -> Option<Escape> {
    Some(match b {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        0x08 => Escape::Short(b'b'),
        0x0c => Escape::Short(b'f'),
        b'\n' => Escape::Short(b'n'),
        b'\r' => Escape::Short(b'r'),
        b'\t' => Escape::Short(b't'),
        0x00..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// The JSON body of an executed request, in pieces: written straight from the engine's value tree
/// (building, printing and dropping a second tree cost about a third of a warm web homepage's
/// instructions) by this writer, with rendered rows and titles ([`super::render`]) passed on
/// as they are rather than copied. `data` keeps the engine's order, which is the query's selection
/// order, as the GraphQL spec asks of response maps; errors and extensions are small and keep the
/// plain `serde_json` round trip.
pub(crate) fn response_pieces(
    response: &async_graphql::Response,
) -> serde_json::Result<Vec<Bytes>> {
    // Sized like the last answer's own bytes: a client's homepages are alike, and growing a
    // 210 KB value-tree answer by doubling from 4 KB copied ~250 KB per request. Only a hint,
    // capped so a burst of small answers after a huge one cannot reserve much.
    static LAST_OWN: AtomicUsize = AtomicUsize::new(4096);
    let mut out = Chunks::with_capacity(LAST_OWN.load(Ordering::Relaxed).clamp(4096, 1 << 20));
    out.buf().extend_from_slice(b"{\"data\":");
    write_value(&mut out, &response.data);
    if !response.errors.is_empty() {
        out.buf().extend_from_slice(b",\"errors\":");
        serde_json::to_writer(out.buf(), &serde_json::to_value(&response.errors)?)?;
    }
    if !response.extensions.is_empty() {
        out.buf().extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(out.buf(), &serde_json::to_value(&response.extensions)?)?;
    }
    out.buf().push(b'}');
    let own = out.own_len();
    LAST_OWN.store(own + own / 16, Ordering::Relaxed);
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_graphql::{Name, Value};

    use super::*;

    fn ours(v: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_ascii_byte_at_every_word_offset_is_escaped_as_serde_json_does() {
        // With and without a suffix: the byte lands in whole words and in the padded tail.
        for b in 0u8..=0x7f {
            for offset in 0..18 {
                for suffix in ["", "tail-of-the-string"] {
                    let mut s = "x".repeat(offset);
                    s.push(char::from(b));
                    s.push_str(suffix);
                    let v = Value::String(s.clone());
                    assert_eq!(
                        ours(&v),
                        serde_json::to_string(&s).unwrap(),
                        "byte {b:#x} at {offset}, suffix {suffix:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unicode_and_long_strings_match_serde_json() {
        for s in [
            "",
            "https://img.streaming.example/t656/poster/w780.jpg",
            "Zoë's \"quoted\" café — 東京 🎬\u{7f}\u{80}\u{2028}",
            "line\nbreak\tand\\backslash\r\u{1}\u{1f}",
            &"clean-ascii-".repeat(50),
        ] {
            let v = Value::String(s.to_owned());
            assert_eq!(ours(&v), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn whole_values_match_serde_json_in_selection_order() {
        let obj = |pairs: Vec<(&str, Value)>| {
            Value::Object(pairs.into_iter().map(|(k, v)| (Name::new(k), v)).collect())
        };
        let v = obj(vec![
            ("zeta", Value::Null),
            ("n", Value::from(-42)),
            ("big", Value::from(u64::MAX)),
            ("f", Value::from(0.366_319_444_444_444_4)),
            ("whole", Value::from(3.0)),
            ("tiny", Value::from(1e-7)),
            ("t", Value::Boolean(true)),
            ("no", Value::Boolean(false)),
            ("kind", Value::Enum(Name::new("TOP_10"))),
            ("bin", Value::Binary(vec![0u8, 7, 255].into())),
            (
                "list",
                Value::List(vec![
                    obj(vec![("a\"b", Value::from("x"))]),
                    Value::List(vec![]),
                ]),
            ),
            ("empty", obj(vec![])),
        ]);
        assert_eq!(ours(&v), serde_json::to_string(&v).unwrap());
    }
}
