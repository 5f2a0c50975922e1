//! Percent-encoding of identifiers where they become part of something structured: a URL path
//! segment sent to a backend, a cache key. Everything but ASCII letters, digits, `-`, `_`, `.` and
//! the caller's extra safe bytes becomes `%XX`, so an id can never add a `/`, `:` or `?`.

/// `s` with every byte outside the unreserved set (and `also_safe`) written as `%XX`.
pub(crate) fn percent_encode(s: &str, also_safe: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || also_safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn encodes_everything_outside_the_safe_set_bytewise() {
        assert_eq!(percent_encode("u1-a_b.c", b""), "u1-a_b.c");
        assert_eq!(percent_encode("a/b:c?d~", b""), "a%2Fb%3Ac%3Fd%7E");
        assert_eq!(percent_encode("a~b", b"~"), "a~b");
        assert_eq!(percent_encode("é", b""), "%C3%A9");
    }
}
