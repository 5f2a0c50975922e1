//! Loading order and error messages of settings.
#![allow(clippy::unwrap_used)]

use std::{io::Write, net::SocketAddr, time::Duration};

use super::*;
use crate::profile::{ClientProfile, RowKind};

fn binary() -> BinaryDefaults {
    BinaryDefaults {
        listen: "127.0.0.1:4000".parse().unwrap(),
        profile: ClientProfile {
            rows: vec![RowKind::Top10],
            items_per_row: 20,
            synopsis_max_chars: 0,
            max_genres: 0,
            default_region: "US".into(),
        },
        request_budget: Duration::from_millis(800),
    }
}

fn file(text: &str) -> tempfile_path::TempToml {
    tempfile_path::TempToml::new(text)
}

/// A config file in the OS temp dir, removed on drop (no extra crate needed).
mod tempfile_path {
    use std::path::PathBuf;

    pub(super) struct TempToml(pub(super) PathBuf);

    impl TempToml {
        pub(super) fn new(text: &str) -> Self {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("bff-config-test-{}-{n}.toml", std::process::id()));
            let mut f = std::fs::File::create(&path).unwrap();
            super::Write::write_all(&mut f, text.as_bytes()).unwrap();
            Self(path)
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn load(
    file_text: Option<&str>,
    env: &[(&str, &str)],
) -> (Result<Settings, ConfigError>, Option<String>) {
    let f = file_text.map(file);
    let opts = LoadOptions {
        file: f.as_ref().map(|f| f.0.clone()),
        listen: None,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let path = f.as_ref().map(|f| f.0.display().to_string());
    (Settings::load(&binary(), &opts), path)
}

#[test]
fn defaults_point_at_the_local_fixture_backends() {
    let (s, _) = load(None, &[]);
    let s = s.unwrap();
    assert_eq!(s.listen, "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
    assert_eq!(
        s.backends[BackendId::Top10].url,
        "http://127.0.0.1:7001/top10"
    );
    assert_eq!(s.backends[BackendId::Catalog].url, "http://127.0.0.1:7002");
    assert_eq!(s.server.max_body_bytes, 256 * 1024);
    assert_eq!(s.graphql.max_depth, 12);
    assert!(s.auth.hs256_secret.is_none());
}

#[test]
fn file_then_env_then_flag_override_in_order() {
    let text = r#"
        listen = "127.0.0.1:5000"
        [backends.top10]
        url = "http://10.0.0.1:81/top10"
        timeout = "250ms"
        [graphql]
        max_depth = 8
    "#;
    let f = file(text);
    let opts = LoadOptions {
        file: Some(f.0.clone()),
        listen: Some("127.0.0.1:6000".parse().unwrap()),
        env: vec![
            (
                "BFF_BACKENDS__TOP10__URL".into(),
                "http://127.0.0.2:82/top10".into(),
            ),
            ("BFF_GRAPHQL__MAX_DEPTH".into(), "9".into()),
            ("BFF_AUTH__HS256_SECRET".into(), "1234567890123456".into()),
            ("BFF_CACHE_HOME".into(), "/tmp/ignored-not-a-section".into()),
            ("PATH".into(), "/bin".into()),
        ],
    };
    let s = Settings::load(&binary(), &opts).unwrap();
    assert_eq!(s.listen, "127.0.0.1:6000".parse::<SocketAddr>().unwrap());
    assert_eq!(
        s.backends[BackendId::Top10].url,
        "http://127.0.0.2:82/top10"
    );
    assert_eq!(
        s.backends[BackendId::Top10].timeout,
        Duration::from_millis(250)
    );
    assert_eq!(s.graphql.max_depth, 9);
    // A numeric-looking secret stays text.
    assert_eq!(s.auth.hs256_secret.unwrap().expose(), "1234567890123456");
}

#[test]
fn unknown_keys_in_the_file_are_rejected_naming_key_and_file() {
    let (r, path) = load(Some("[graphql]\nmax_dept = 3\n"), &[]);
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("graphql"), "{msg}");
    assert!(msg.contains("max_dept"), "{msg}");
    assert!(msg.contains(&path.unwrap()), "{msg}");
}

#[test]
fn unknown_keys_under_a_known_section_in_env_are_rejected_naming_the_variable() {
    let (r, _) = load(None, &[("BFF_BACKENDS__TOP11__URL", "http://x")]);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("top11") && msg.contains("BFF_BACKENDS__TOP11__URL"),
        "{msg}"
    );
}

#[test]
fn bad_values_are_rejected_with_the_reason() {
    let (r, path) = load(
        Some("[backends.catalog]\nurl = \"http://127.0.0.1:7002\"\ntimeout = \"fast\"\n"),
        &[],
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("backends.catalog.timeout")
            && msg.contains("fast")
            && msg.contains(&path.unwrap()),
        "{msg}"
    );

    let (r, _) = load(None, &[("BFF_BACKENDS__CATALOG__URL", "ftp://nope")]);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("backends.catalog.url") && msg.contains("BFF_BACKENDS__CATALOG__URL"),
        "{msg}"
    );

    let (r, _) = load(None, &[("BFF_GRAPHQL__MAX_DEPTH", "deep")]);
    assert!(r.unwrap_err().to_string().contains("graphql.max_depth"));

    let (r, _) = load(None, &[("BFF_AUTH__HS256_SECRET", "short")]);
    assert!(r.unwrap_err().to_string().contains("at least 16 bytes"));

    let (r, _) = load(
        Some(
            "[profile]\nrows = [\"HERO\"]\nitems_per_row = 5\nsynopsis_max_chars = 0\nmax_genres = 0\ndefault_region = \"US\"\n",
        ),
        &[],
    );
    assert!(r.unwrap_err().to_string().contains("profile.rows"));

    let (r, path) = load(Some("listen = [1, 2"), &[]);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("not valid TOML") && msg.contains(&path.unwrap()),
        "{msg}"
    );
}

#[test]
fn profile_keys_can_be_overridden_one_by_one() {
    let (s, _) = load(
        Some("[profile]\nitems_per_row = 7\n"),
        &[("BFF_PROFILE__ROWS", "[\"TOP_10\", \"MY_LIST\"]")],
    );
    let s = s.unwrap();
    assert_eq!(s.profile.items_per_row, 7);
    assert_eq!(s.profile.rows, vec![RowKind::Top10, RowKind::MyList]);
}

#[test]
fn secrets_never_print() {
    let (s, _) = load(
        None,
        &[("BFF_AUTH__HS256_SECRET", "super-secret-value-123")],
    );
    let s = s.unwrap();
    assert!(!format!("{s:?}").contains("super-secret-value-123"));
    assert!(!s.redacted_toml().contains("super-secret-value-123"));
}

#[test]
fn rate_limit_policies_are_validated_naming_key_and_source() {
    let base = "[[rate_limits.policies]]\nname = \"p\"\nalgorithm = \"token_bucket\"\nlimit = 10\nperiod = \"1s\"\nkey = [\"ip\"]\n";
    let (s, _) = load(Some(base), &[]);
    let p = &s.unwrap().rate_limits.policies[0];
    assert_eq!(
        (p.effective_burst(), &p.scope, p.cost),
        (10, &Scope::Graphql, Cost::One)
    );
    for (extra, key, why) in [
        ("limit = 0\n", "policies[0].limit", "1..="),
        ("burst = 0\n", "policies[0].burst", "1..="),
        ("period = \"0s\"\n", "policies[0].period", "at least 1ms"),
        ("key = []\n", "policies[0].key", "at least one"),
        ("key = [\"ip\", \"ip\"]\n", "policies[0].key", "twice"),
        ("name = \"bad name\"\n", "policies[0].name", "1–64"),
        (
            "cost = \"operation\"\nscope = \"route:/x\"\n",
            "policies[0].scope",
            "no [[routes]]",
        ),
    ] {
        // Later keys in a TOML table must not repeat: replace the base's line instead.
        let field = extra.split(' ').next().unwrap();
        let text: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} ")))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + extra;
        let (r, path) = load(Some(&text), &[]);
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(&format!("rate_limits.{key}")), "{msg}");
        assert!(msg.contains(why), "{msg}");
        assert!(msg.contains(&path.unwrap()), "{msg}");
    }
    let (r, _) = load(
        Some(&format!(
            "{base}[[rate_limits.policies]]\nname = \"p\"\nalgorithm = \"fixed_window\"\nlimit = 1\nperiod = \"1s\"\nkey = [\"user\"]\n"
        )),
        &[],
    );
    assert!(r.unwrap_err().to_string().contains("used twice"));
    let (r, _) = load(None, &[("BFF_RATE_LIMITS__STORE", "redis:/nohost")]);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("rate_limits.store") && msg.contains("env BFF_RATE_LIMITS__STORE"),
        "{msg}"
    );
}

#[test]
fn a_redis_cluster_store_takes_seed_urls_and_a_prefix_that_makes_a_hash_tag() {
    let cluster = |store: &str, prefix: Option<&str>| {
        let mut env = vec![
            ("BFF_RATE_LIMITS__STORE", store),
            ("BFF_RATE_LIMITS__REDIS_CLUSTER", "true"),
        ];
        if let Some(p) = prefix {
            env.push(("BFF_RATE_LIMITS__KEY_PREFIX", p));
        }
        load(None, &env).0
    };
    let s = cluster("redis://10.0.0.1:7000, redis://10.0.0.2:7000/0", None).unwrap();
    assert!(s.rate_limits.redis_cluster);
    assert_eq!(
        s.rate_limits.store,
        "redis://10.0.0.1:7000, redis://10.0.0.2:7000/0"
    );
    assert!(cluster("redis://10.0.0.1:7000", Some("fleet-a:rl")).is_ok());
    let (off, _) = load(None, &[]);
    assert!(!off.unwrap().rate_limits.redis_cluster, "off by default");
    for (store, prefix, key, why) in [
        (
            "local",
            None,
            "rate_limits.redis_cluster",
            "seed redis:// URLs",
        ),
        (
            "redis://10.0.0.1:7000,http://10.0.0.2:7000",
            None,
            "rate_limits.store",
            "`http://10.0.0.2:7000`: with redis_cluster",
        ),
        ("redis://10.0.0.1:7000,", None, "rate_limits.store", "``"),
        (
            "redis://10.0.0.1:7000/2",
            None,
            "rate_limits.store",
            "database 0 only",
        ),
        (
            "redis://10.0.0.1:7000",
            Some("{rl}:"),
            "rate_limits.key_prefix",
            "hash tag",
        ),
        (
            "redis://10.0.0.1:7000",
            Some("::"),
            "rate_limits.key_prefix",
            "hash tag",
        ),
        (
            "redis://10.0.0.1:7000",
            Some(""),
            "rate_limits.key_prefix",
            "hash tag",
        ),
    ] {
        let msg = cluster(store, prefix).unwrap_err().to_string();
        assert!(msg.contains(key), "{store} {prefix:?}: {msg}");
        assert!(msg.contains(why), "{store} {prefix:?}: {msg}");
    }
    // Seed nodes without the flag: refused, saying what is missing.
    let (r, _) = load(
        None,
        &[(
            "BFF_RATE_LIMITS__STORE",
            "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
        )],
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("rate_limits.store") && msg.contains("need redis_cluster = true"),
        "{msg}"
    );
    // A single server takes any prefix, as before.
    let (r, _) = load(
        None,
        &[
            ("BFF_RATE_LIMITS__STORE", "redis://10.0.0.1:6379/2"),
            ("BFF_RATE_LIMITS__KEY_PREFIX", "{rl}"),
        ],
    );
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn credentialed_wildcard_origins_are_refused_except_below_a_registrable_domain() {
    let with = |origin: &str, credentials: bool| {
        let text = format!(
            "[cors]\nallowed_origins = [\"https://app.example.com\", {origin:?}]\nallow_credentials = {credentials}\n"
        );
        load(Some(&text), &[]).0
    };
    for bad in [
        "https://*",
        "http://*",
        "https://*.com",
        "https://*.co.uk",
        "https://*.github.io",
        "https://*.CO.UK",
        "https://a*.example.com",
        "https://*example.com",
        "https://*.example.com:*",
        "https://*.example.com:",
        "https://*.127.0.0.1",
        "https://*.-x.com",
        "https://x.*.example.com",
        "https://*.example..com",
        "*://app.example.com",
        "*",
    ] {
        let msg = with(bad, true).unwrap_err().to_string();
        assert!(msg.contains("cors.allowed_origins"), "{bad}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        // Without credentials the same patterns are not an account-takeover risk.
        if bad.starts_with("https://") && bad.matches('*').count() == 1 {
            assert!(with(bad, false).is_ok(), "{bad} without credentials");
        }
    }
    for good in [
        "https://*.example.com",
        "https://*.EXAMPLE.com",
        "https://*.example.com:8443",
        "http://*.dev.example.co.uk",
        "https://*.my-app.io",
    ] {
        assert!(
            with(good, true).is_ok(),
            "{good}: {:?}",
            with(good, true).err()
        );
    }
}

#[test]
fn edge_bounds_are_validated_naming_the_key() {
    for (var, value, key) in [
        (
            "BFF_RATE_LIMITS__IPV6_PREFIX",
            "0",
            "rate_limits.ipv6_prefix",
        ),
        (
            "BFF_RATE_LIMITS__IPV6_PREFIX",
            "129",
            "rate_limits.ipv6_prefix",
        ),
        (
            "BFF_RATE_LIMITS__FAILED_AUTH__PERIOD",
            "0s",
            "rate_limits.failed_auth.period",
        ),
        (
            "BFF_RATE_LIMITS__FAILED_AUTH__LIMIT",
            "2000000000",
            "rate_limits.failed_auth.limit",
        ),
        (
            "BFF_RATE_LIMITS__FAILED_AUTH__ALGORITHM",
            "lottery",
            "rate_limits.failed_auth.algorithm",
        ),
        ("BFF_AUTH__MAX_JWKS_BYTES", "10", "auth.max_jwks_bytes"),
        (
            "BFF_AUTH__MAX_JWKS_BYTES",
            "1000000000",
            "auth.max_jwks_bytes",
        ),
        (
            "BFF_SERVER__FORWARDED_HEADER",
            "x-real-ip",
            "server.forwarded_header",
        ),
    ] {
        let (r, _) = load(None, &[(var, value)]);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains(key) && msg.contains(var),
            "{var}={value}: {msg}"
        );
    }
    let (s, _) = load(None, &[]);
    let s = s.unwrap();
    assert_eq!(s.rate_limits.ipv6_prefix, 64);
    assert_eq!(s.rate_limits.failed_auth.limit, 30);
    assert_eq!(s.auth.max_jwks_bytes, 1024 * 1024);
    assert_eq!(s.server.forwarded_header, ForwardedHeader::XForwardedFor);
    let (s, _) = load(
        Some("[server]\nforwarded_header = \"forwarded\"\n[rate_limits.failed_auth]\nlimit = 0\n"),
        &[],
    );
    let s = s.unwrap();
    assert_eq!(s.server.forwarded_header, ForwardedHeader::Forwarded);
    assert_eq!(s.rate_limits.failed_auth.limit, 0);
}

/// `[backends.<name>]` stays one table per backend, named as the backend is: the GraphQL backends
/// in `BackendId::ALL`'s order (each at its index), then route-only ones; env overrides reach
/// them by name.
#[test]
fn backends_are_one_table_each_by_name_in_toml_and_indexed_by_backend_in_code() {
    let (s, _) = load(
        Some(
            "[backends.images]\nurl = \"http://127.0.0.1:9/images\"\n[[routes]]\nprefix = \"/api/images\"\nbackend = \"images\"\n",
        ),
        &[("BFF_BACKENDS__NEW_RELEASES__TIMEOUT", "75ms")],
    );
    let s = s.unwrap();
    for (i, b) in BackendId::ALL.into_iter().enumerate() {
        assert_eq!(b.index(), i, "{b}");
        let expected = match b.rest_path() {
            Some(path) => format!("http://127.0.0.1:7001{path}"),
            None => "http://127.0.0.1:7002".to_owned(),
        };
        assert_eq!(s.backends.get(b).url, expected, "{b}");
        assert_eq!(s.backends.get(b).required, b == BackendId::Catalog, "{b}");
    }
    let timeouts: Vec<(BackendId, Duration)> =
        s.backends.iter().map(|(b, c)| (b, c.timeout)).collect();
    assert_eq!(timeouts.len(), 7);
    for (b, t) in timeouts {
        let want = if b == BackendId::NewReleases { 75 } else { 500 };
        assert_eq!(t, Duration::from_millis(want), "{b}");
    }
    assert_eq!(s.backends.extra.len(), 1);
    assert_eq!(s.backends.extra["images"].url, "http://127.0.0.1:9/images");

    let text = s.redacted_toml();
    let at = |name: &str| {
        text.find(&format!("\n[backends.{name}]\n"))
            .unwrap_or_else(|| panic!("no [backends.{name}] in\n{text}"))
    };
    let order: Vec<usize> = BackendId::ALL
        .iter()
        .map(|b| at(b.name()))
        .chain([at("images")])
        .collect();
    assert!(order.is_sorted(), "{order:?}");
    // What is printed loads back to the same settings.
    let (again, _) = load(Some(&text), &[]);
    let again = again.unwrap();
    assert_eq!(again.redacted_toml(), text);
}
