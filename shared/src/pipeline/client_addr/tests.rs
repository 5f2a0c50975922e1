//! The trusted-proxy walk against every spelling a client or a proxy can put in the two header
//! families: what the trusted proxy appended always decides, nothing written to its left can.

#![allow(clippy::unwrap_used)]

use super::*;

fn proxies(header: ForwardedHeader, cidrs: &[&str]) -> TrustedProxies {
    TrustedProxies {
        cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        header,
    }
}

fn xff(cidrs: &[&str]) -> TrustedProxies {
    proxies(ForwardedHeader::XForwardedFor, cidrs)
}

fn fwd(cidrs: &[&str]) -> TrustedProxies {
    proxies(ForwardedHeader::Forwarded, cidrs)
}

/// Header lines as raw bytes, in order (so non-ASCII bytes and repeated lines are possible).
fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    h
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const PROXY: &str = "10.0.0.2";

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_claims() {
    let forged = headers(&[
        ("x-forwarded-for", b"1.2.3.4"),
        ("forwarded", b"for=5.6.7.8"),
    ]);
    for t in [xff(&["10.0.0.0/8"]), fwd(&["10.0.0.0/8"])] {
        assert_eq!(t.resolve(ip("203.0.113.9"), &forged), ip("203.0.113.9"));
    }
    assert_eq!(
        TrustedProxies::default().resolve(ip(PROXY), &forged),
        ip(PROXY)
    );
}

#[test]
fn the_default_family_is_x_forwarded_for() {
    assert_eq!(
        TrustedProxies::default().header,
        ForwardedHeader::XForwardedFor
    );
}

#[test]
fn behind_an_x_forwarded_for_proxy_a_client_forwarded_header_is_ignored() {
    let t = xff(&["10.0.0.0/8"]);
    // The probe: the proxy appends X-Forwarded-For only; the client's own `Forwarded` once won.
    for forged in [
        &b"for=192.0.2.1"[..],
        b"for=unknown",
        b"for=10.0.0.7",
        b"for=_hidden",
    ] {
        let h = headers(&[("forwarded", forged), ("x-forwarded-for", b"198.51.100.66")]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"), "{forged:?}");
    }
    // Only a `Forwarded` header (a client's), nothing appended: the proxy is all we know.
    let h = headers(&[("forwarded", b"for=192.0.2.1")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip(PROXY));
}

#[test]
fn behind_a_forwarded_proxy_a_client_x_forwarded_for_is_ignored() {
    let t = fwd(&["10.0.0.0/8"]);
    let h = headers(&[
        ("x-forwarded-for", b"192.0.2.1"),
        ("forwarded", b"for=198.51.100.66;proto=https;by=10.0.0.2"),
    ]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
    // The client's own `for=unknown` sits left of what the proxy appended: it is never reached.
    let h = headers(&[("forwarded", b"for=unknown, for=198.51.100.66")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
}

#[test]
fn a_client_prepending_hops_cannot_choose() {
    let t = xff(&["10.0.0.0/8"]);
    let h = headers(&[("x-forwarded-for", b"6.6.6.6, 10.9.9.9, 198.51.100.7")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"));
    // A forged trusted-looking hop left of an untrusted one changes nothing either.
    let h = headers(&[("x-forwarded-for", b"10.9.9.9, 198.51.100.7, 10.1.1.1")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"));
}

#[test]
fn trusted_hops_hand_over_right_to_left_and_all_trusted_is_the_leftmost() {
    let t = xff(&["10.0.0.0/8", "2001:db8::/32"]);
    let h = headers(&[("x-forwarded-for", b"198.51.100.7, 2001:db8::9, 10.1.1.1")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"));
    let h = headers(&[("x-forwarded-for", b"10.9.9.9, 10.1.1.1")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("10.9.9.9"));
}

#[test]
fn several_header_lines_are_one_list_in_order() {
    let t = xff(&["10.0.0.0/8"]);
    let h = headers(&[
        ("x-forwarded-for", b"6.6.6.6, 198.51.100.7"),
        ("x-forwarded-for", b"10.1.1.1"),
    ]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"));
    // The last line's last element is the proxy's.
    let h = headers(&[
        ("x-forwarded-for", b"10.1.1.1"),
        ("x-forwarded-for", b"198.51.100.8"),
    ]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.8"));
    let t = fwd(&["10.0.0.0/8"]);
    let h = headers(&[
        ("forwarded", b"for=6.6.6.6"),
        ("forwarded", b"for=198.51.100.9, for=10.1.1.1"),
    ]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.9"));
}

#[test]
fn non_ascii_bytes_never_erase_what_the_proxy_appended() {
    let t = xff(&["10.0.0.0/8"]);
    // The probe: `<FF FE>, 198.51.100.66`, once dropped whole so the client became the proxy.
    let h = headers(&[("x-forwarded-for", b"\xff\xfe, 198.51.100.66")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
    // On a line of its own, before the proxy's line.
    let h = headers(&[
        ("x-forwarded-for", b"\xff\xfe"),
        ("x-forwarded-for", b"198.51.100.66"),
    ]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
    // Behind two trusted hops: the inner hop's address stands, not the outer proxy's.
    let h = headers(&[("x-forwarded-for", b"\xc3\xa9t\xc3\xa9, 10.1.1.1")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("10.1.1.1"));
    let t = fwd(&["10.0.0.0/8"]);
    let h = headers(&[("forwarded", b"for=\"\xff\", for=198.51.100.66")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
}

#[test]
fn an_unreadable_element_stops_at_the_last_address_a_trusted_hop_vouched_for() {
    let t = xff(&["10.0.0.0/8"]);
    for junk in [
        "unknown",
        "UNKNOWN",
        "_hidden",
        "_abc",
        "not an ip",
        "1.2.3.4.5",
        "fe80::1%eth0",
        "198.51.100.7:99999",
        "198.51.100.7:",
        "[2001:db8::1",
        "[198.51.100.7]",
        "010.1.1.1",
        "\"198.51.100.7",
    ] {
        let line = format!("6.6.6.6, {junk}, 10.1.1.1");
        let h = headers(&[("x-forwarded-for", line.as_bytes())]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip("10.1.1.1"), "{junk:?}");
    }
    let t = fwd(&["10.0.0.0/8"]);
    for junk in [
        "for=unknown",
        "For=_abc",
        "for=\"_hidden:_port\"",
        "proto=https",
        "for=198.51.100.5;for=198.51.100.6",
        "for=",
        "for=\"\"",
        "by=198.51.100.5",
    ] {
        let line = format!("for=6.6.6.6, {junk}, for=10.1.1.1");
        let h = headers(&[("forwarded", line.as_bytes())]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip("10.1.1.1"), "{junk:?}");
    }
    // What the proxy itself appended is unreadable: nobody vouched for anything but the proxy.
    let h = headers(&[("forwarded", b"for=unknown")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip(PROXY));
}

#[test]
fn ports_brackets_quotes_and_case_are_read() {
    let t = xff(&["10.0.0.0/8"]);
    for (raw, want) in [
        ("198.51.100.7:4711", "198.51.100.7"),
        ("\"198.51.100.7:4711\"", "198.51.100.7"),
        ("[2001:db8:cafe::17]:4711", "2001:db8:cafe::17"),
        ("[2001:db8:cafe::17]", "2001:db8:cafe::17"),
        ("2001:DB8:CAFE::17", "2001:db8:cafe::17"),
        ("198.51.100.7:_p1", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("[::ffff:198.51.100.7]:80", "198.51.100.7"),
    ] {
        let line = format!("6.6.6.6, {raw}");
        let h = headers(&[("x-forwarded-for", line.as_bytes())]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip(want), "{raw:?}");
    }
    let t = fwd(&["10.0.0.0/8"]);
    for (raw, want) in [
        ("for=198.51.100.7", "198.51.100.7"),
        ("For=\"198.51.100.7:4711\"", "198.51.100.7"),
        (
            "FOR=\"[2001:db8:cafe::17]:4711\";proto=https",
            "2001:db8:cafe::17",
        ),
        (
            "proto=https;for=\"[2001:db8::17]\";by=_proxy",
            "2001:db8::17",
        ),
        ("for=\"198.51.100.7:_obf\"", "198.51.100.7"),
        (" for = 198.51.100.7 ; host=example.com", "198.51.100.7"),
    ] {
        let line = format!("for=6.6.6.6, {raw}");
        let h = headers(&[("forwarded", line.as_bytes())]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip(want), "{raw:?}");
    }
}

#[test]
fn empty_elements_are_skipped() {
    let t = xff(&["10.0.0.0/8"]);
    for line in [
        &b"198.51.100.7,"[..],
        b"198.51.100.7, ,",
        b",,198.51.100.7",
        b"6.6.6.6, ,198.51.100.7 ,  ",
    ] {
        let h = headers(&[("x-forwarded-for", line)]);
        assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"), "{line:?}");
    }
    let h = headers(&[("x-forwarded-for", b"")]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip(PROXY));
}

#[test]
fn an_ipv4_mapped_peer_is_its_ipv4_address() {
    let t = xff(&["10.0.0.0/8"]);
    assert_eq!(
        t.resolve(ip("::ffff:10.0.0.2"), &headers(&[])),
        ip("10.0.0.2")
    );
    let h = headers(&[("x-forwarded-for", b"198.51.100.7")]);
    assert_eq!(t.resolve(ip("::ffff:10.0.0.2"), &h), ip("198.51.100.7"));
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Every byte a header value may hold: visible ASCII, space, tab and obs-text.
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..80)
    }

    proptest! {
        /// Whatever the client writes, the readable untrusted address the trusted proxy
        /// appended is the client address, in both families, on one line or two.
        #[test]
        fn fuzz_client_bytes_never_override_the_proxys_entry(
            client in header_bytes(),
            two_lines in any::<bool>(),
        ) {
            for (t, name, appended) in [
                (xff(&["10.0.0.0/8"]), "x-forwarded-for", &b"198.51.100.66"[..]),
                (fwd(&["10.0.0.0/8"]), "forwarded", b"for=198.51.100.66;proto=https"),
            ] {
                let h = if two_lines {
                    headers(&[(name, &client), (name, appended)])
                } else {
                    let mut line = client.clone();
                    line.extend_from_slice(b", ");
                    line.extend_from_slice(appended);
                    headers(&[(name, &line)])
                };
                prop_assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.66"));
            }
        }
    }
}

#[test]
fn a_header_of_thousands_of_elements_is_walked_only_as_far_as_trust_goes() {
    let t = xff(&["10.0.0.0/8"]);
    // 30 KB of client-written elements, then the proxy's: one element is read.
    let mut line = "6.6.6.6, ".repeat(3_000);
    line.push_str("198.51.100.7");
    let h = headers(&[("x-forwarded-for", line.as_bytes())]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("198.51.100.7"));
    // Thousands of trusted hops: the leftmost, every element read once.
    let line = vec!["10.1.2.3"; 3_000].join(",");
    let h = headers(&[("x-forwarded-for", line.as_bytes())]);
    assert_eq!(t.resolve(ip(PROXY), &h), ip("10.1.2.3"));
    // Hundreds of lines: one list.
    let mut lines: Vec<(&str, &[u8])> = vec![("x-forwarded-for", b"6.6.6.6"); 500];
    lines.push(("x-forwarded-for", b"198.51.100.8"));
    assert_eq!(t.resolve(ip(PROXY), &headers(&lines)), ip("198.51.100.8"));
}
