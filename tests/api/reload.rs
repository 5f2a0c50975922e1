//! Config reload without a restart: requests flowing through twenty reloads, valid and invalid,
//! none failing, each change in effect after its reload (and nothing of a refused one), the
//! reloads counted; the listener's TLS files changed by a reload (turning TLS off needs a
//! restart); then a real `bff-web` process reloaded by SIGHUP, its log line naming what changed
//! and what needs a restart, its log level changed.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bff_fixtures::{Backend, BackendServer, FixtureOptions, Fixtures};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::{
    Application, StartOptions,
    auth::TokenSigner,
    config::{LoadOptions, Settings},
    server::{ConfigSource, Reloaded},
};

use crate::{helpers::*, pki::*, tls::presented};

/// A second HS256 secret the reloaded config trusts instead of [`SECRET`].
const SECRET_2: &str = "second-secret-0123456789abcdef";

/// What the test changes from one config to the next.
#[derive(Clone)]
struct Knobs {
    top10_url: String,
    /// The `/r/limited` route's requests per hour per client address, when limited.
    limit: Option<String>,
    deny: Vec<&'static str>,
    /// The `/r/new` pass-through route.
    new_route: bool,
    top10_ttl: &'static str,
    log_level: &'static str,
    listen: &'static str,
    cors_origin: Option<&'static str>,
    secret: &'static str,
    max_aliases: usize,
    watch_interval: &'static str,
    /// Text put first (a top-level key) and last (a broken table), to make a config invalid.
    head: &'static str,
    tail: &'static str,
    /// A key under `[cache.top10]`.
    top10_extra: &'static str,
}

impl Knobs {
    fn base(fixtures: &Fixtures) -> Self {
        Self {
            top10_url: fixtures.url(Backend::Top10),
            limit: None,
            deny: Vec::new(),
            new_route: false,
            top10_ttl: "120s",
            log_level: "info",
            listen: "127.0.0.1:0",
            cors_origin: None,
            secret: SECRET,
            max_aliases: 30,
            watch_interval: "50ms",
            head: "",
            tail: "",
            top10_extra: "",
        }
    }

    /// The config file's text.
    fn toml(&self, fixtures: &Fixtures) -> String {
        let mut t = format!(
            r#"{head}
listen = "{listen}"

[server]
trusted_proxies = ["127.0.0.1/32"]

[admin]
listen = "127.0.0.1:0"

[reload]
watch_interval = "{watch}"

[log]
level = "{level}"

[auth]
hs256_secret = "{secret}"

[graphql]
timeout = "10s"
max_aliases = {aliases}

[cache.top10]
ttl = "{ttl}"
{top10_extra}

[ip_rules]
deny = {deny:?}

[cors]
allowed_origins = {origins:?}
"#,
            head = self.head,
            listen = self.listen,
            watch = self.watch_interval,
            level = self.log_level,
            secret = self.secret,
            aliases = self.max_aliases,
            ttl = self.top10_ttl,
            top10_extra = self.top10_extra,
            deny = self.deny,
            origins = self.cors_origin.into_iter().collect::<Vec<_>>(),
        );
        for b in shared::upstream::BackendId::ALL {
            let url = match b {
                shared::upstream::BackendId::Top10 => self.top10_url.clone(),
                _ => fixtures.url(shared::demo::fixture_backend(b)),
            };
            t.push_str(&format!(
                "\n[backends.{}]\nurl = \"{url}\"\ntimeout = \"2s\"\n",
                b.name()
            ));
        }
        t.push_str(
            "\n[[routes]]\nprefix = \"/r/top10\"\nbackend = \"top10\"\n\n[[routes]]\nprefix = \"/r/limited\"\nbackend = \"new_releases\"\n",
        );
        if self.new_route {
            t.push_str("\n[[routes]]\nprefix = \"/r/new\"\nbackend = \"new_releases\"\n");
        }
        if let Some(limit) = &self.limit {
            t.push_str(&format!(
                "\n[[rate_limits.policies]]\nname = \"limited\"\nalgorithm = \"fixed_window\"\nlimit = {limit}\nperiod = \"1h\"\nkey = [\"ip\"]\nscope = \"route:/r/limited\"\n"
            ));
        }
        t.push_str(self.tail);
        t
    }
}

/// A config file laid out as Kubernetes mounts a ConfigMap: `bff.toml -> ..data/bff.toml`,
/// `..data -> ..vN`; each version is a new directory and a swap of the `..data` symlink.
struct ConfigMap {
    dir: PathBuf,
    version: u32,
}

impl ConfigMap {
    fn new(text: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bff-reload-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut map = Self { dir, version: 0 };
        map.write(text);
        std::os::unix::fs::symlink("..data/bff.toml", map.path()).unwrap();
        map
    }

    fn path(&self) -> PathBuf {
        self.dir.join("bff.toml")
    }

    /// Publishes `text` as the next version, atomically (one `rename` of a symlink).
    fn write(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("bff.toml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Requests that must all succeed whatever is reloaded meanwhile: anonymous homepages and
/// pass-through calls, from several clients in a loop.
struct Traffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(app: &TestApp, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|i| {
                let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
                let (http, url) = (app.http.clone(), app.url(""));
                tokio::spawn(async move {
                    let query = "{ homepage(region: \"US\") { rows { kind items { title { id name } } } } }";
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = if i % 2 == 0 {
                            let r = http
                                .post(format!("{url}/graphql"))
                                .header("content-type", "application/json")
                                .header("accept", GRAPHQL_RESPONSE)
                                .json(&json!({ "query": query }))
                                .send()
                                .await;
                            match r {
                                Ok(r) => {
                                    let status = r.status();
                                    let body: Value = r.json().await.unwrap_or_default();
                                    let rows = body["data"]["homepage"]["rows"]
                                        .as_array()
                                        .map_or(0, Vec::len);
                                    if status == 200 && body.get("errors").is_none() && rows == 2 {
                                        Ok(())
                                    } else {
                                        Err(format!("homepage: {status} {body}"))
                                    }
                                }
                                Err(e) => Err(format!("homepage: {e}")),
                            }
                        } else {
                            match http.get(format!("{url}/r/top10/US")).send().await {
                                Ok(r) if r.status() == 200 => Ok(()),
                                Ok(r) => Err(format!("/r/top10/US: {}", r.status())),
                                Err(e) => Err(format!("/r/top10/US: {e}")),
                            }
                        };
                        match outcome {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            served,
            failures,
            clients,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the clients; every request they made, and how many failed.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.served.load(Ordering::Relaxed), failures)
    }
}

impl TestApp {
    async fn reloads(&self, result: &str) -> u64 {
        self.metric_sum(
            "bff_config_reloads_total",
            &[&format!("result=\"{result}\"")],
        )
        .await as u64
    }

    /// `GET path` from `client` (an address the trusted proxy forwards for), when given.
    async fn get_from(&self, path: &str, client: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(ip) = client {
            req = req.header("x-forwarded-for", ip);
        }
        req.send().await.unwrap()
    }

    /// The status of an anonymous homepage from `client`.
    async fn homepage_status_from(&self, client: &str) -> StatusCode {
        self.http
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", client)
            .json(&json!({ "query": "{ homepage(region: \"US\") { region } }" }))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// How many `GET /r/limited/US` in a row are admitted before the first `429` (at most 20).
    async fn admitted_on_limited_route(&self) -> usize {
        for n in 0..20 {
            let status = self.get_from("/r/limited/US", None).await.status();
            if status == 429 {
                return n;
            }
            assert_eq!(status, 200, "/r/limited/US");
        }
        20
    }

    /// An anonymous homepage over GET (publicly cacheable): its `max-age` and body.
    async fn cacheable_homepage(&self) -> (u64, Value) {
        let q = "{ homepage(region: \"US\") { rows { kind items { title { id } } } } }";
        let r = self
            .http
            .get(self.url("/graphql"))
            .query(&[("query", q)])
            .header("accept", GRAPHQL_RESPONSE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cc = r.headers()["cache-control"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        let age = cc
            .strip_prefix("public, max-age=")
            .unwrap_or_else(|| panic!("cache-control {cc}: {body}"))
            .parse()
            .unwrap();
        (age, body)
    }
}

/// Calls `top10` has had on one fixture instance.
fn top10_calls(control: &bff_fixtures::Control) -> u64 {
    control.stats_of(Backend::Top10).calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request_and_each_takes_effect() {
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let second = BackendServer::start(
        Backend::Top10,
        &FixtureOptions::default(),
        fixtures.dataset(),
    )
    .await
    .unwrap();
    let mut k = Knobs::base(&fixtures);
    let mut map = ConfigMap::new(&k.toml(&fixtures));
    let surface = web();
    // The environment still wins over the file after a reload.
    let load = LoadOptions {
        file: Some(map.path()),
        listen: None,
        env: vec![("BFF_SERVER__REQUEST_BUDGET".into(), "5s".into())],
    };
    let settings = Settings::load(&(surface.defaults)(), &load).unwrap();
    let app = Application::build(
        settings,
        &surface,
        StartOptions {
            config: Some(ConfigSource { load, adjust: None }),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let reloader = app.reloader().expect("started with a config source");
    let app = serve_app(app, fixtures.clone());
    let traffic = Traffic::start(&app, 4);
    eventually("traffic flows", || async { traffic.served() > 20 }).await;
    // An automatic persisted query registered before the reloads.
    let apq_query = "query Regions { homepage(region: \"GB\") { region } }";
    let apq = |with_query: bool| {
        let hash = shared::graphql::persisted::sha256_hex(apq_query);
        let mut body =
            json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
        if with_query {
            body["query"] = json!(apq_query);
        }
        let app = &app;
        async move {
            let r = app.post_body(&body, Some(GRAPHQL_RESPONSE), None).await;
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(apq(true).await.0, 200);
    let (mut ok, mut refused) = (0u64, 0u64);

    // Published as a new ConfigMap version; the file check (every 50 ms) reloads it.
    async fn published(app: &TestApp, map: &mut ConfigMap, text: &str, before: u64) {
        map.write(text);
        eventually("the file check reloads the new version", || async {
            app.reloads("ok").await + app.reloads("error").await > before
        })
        .await;
    }
    // Loaded at once through the application's handle.
    let reload = |map: &mut ConfigMap, text: &str| -> Result<Reloaded, String> {
        map.write(text);
        reloader.reload().map_err(|e| e.to_string())
    };

    // 1. A rate-limit policy on a pass-through route.
    k.limit = Some("3".into());
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    assert_eq!(app.admitted_on_limited_route().await, 3);

    // 2. Not TOML: refused, the policy and its counts stay.
    let mut broken = k.clone();
    broken.tail = "\n[broken\n";
    published(&app, &mut map, &broken.toml(&fixtures), ok + refused).await;
    refused += 1;
    assert_eq!(app.get_from("/r/limited/US", None).await.status(), 429);

    // 3. A new limit: a new count, refused at the new limit.
    k.limit = Some("5".into());
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    assert_eq!(app.admitted_on_limited_route().await, 5);

    // 4. A client address denied; the others are served.
    k.deny = vec!["10.9.9.9/32"];
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    assert_eq!(app.homepage_status_from("10.9.9.9").await, 403);
    assert_eq!(app.homepage_status_from("10.0.0.1").await, 200);

    // 5. An unknown key: refused, the address stays denied.
    let mut unknown = k.clone();
    unknown.head = "lisen = \"127.0.0.1:1\"";
    published(&app, &mut map, &unknown.toml(&fixtures), ok + refused).await;
    refused += 1;
    assert_eq!(app.homepage_status_from("10.9.9.9").await, 403);

    // 6. The rule removed.
    k.deny = Vec::new();
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    assert_eq!(app.homepage_status_from("10.9.9.9").await, 200);

    // 7. A pass-through route added…
    assert_eq!(app.status_of("/r/new/US").await, 404);
    k.new_route = true;
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    let r = app.get_from("/r/new/US", None).await;
    assert_eq!(r.status(), 200);
    let items: Value = r.json().await.unwrap();
    assert!(!items["items"].as_array().unwrap().is_empty(), "{items}");

    // 8. …and removed.
    k.new_route = false;
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    assert_eq!(app.status_of("/r/new/US").await, 404);

    // 9. A value validation refuses: nothing of it applies.
    let mut zero = k.clone();
    zero.top10_ttl = "0s";
    zero.new_route = true;
    published(&app, &mut map, &zero.toml(&fixtures), ok + refused).await;
    refused += 1;
    assert_eq!(app.status_of("/r/new/US").await, 404);
    assert_eq!(
        reloader.settings().cache.top10.ttl,
        Duration::from_secs(120)
    );

    // 10. top10 moves to a second instance; the file check is turned off (SIGHUP and the
    // handle still reload).
    k.top10_url = second.url();
    k.watch_interval = "0s";
    published(&app, &mut map, &k.toml(&fixtures), ok + refused).await;
    ok += 1;
    let first = fixtures.control();
    // Requests that began on the old config may still reach the first instance; then none.
    let mut settled = top10_calls(&first);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = top10_calls(&first);
        if now == settled {
            break;
        }
        settled = now;
    }
    let on_second = top10_calls(&second.control());
    for _ in 0..3 {
        assert_eq!(app.get_from("/r/top10/US", None).await.status(), 200);
    }
    assert!(top10_calls(&second.control()) >= on_second + 3);
    assert_eq!(
        top10_calls(&first),
        settled,
        "no call reaches the old endpoint"
    );

    // From here on the handle reloads (the file check is off: writing alone changes nothing).
    map.write(&{
        let mut t = k.clone();
        t.deny = vec!["10.0.0.0/8"];
        t.toml(&fixtures)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.homepage_status_from("10.1.1.1").await, 200);
    assert_eq!(
        app.reloads("ok").await + app.reloads("error").await,
        ok + refused
    );

    // 11. The top 10's TTL: what is cached stays and is judged by the new TTL.
    let (age, _) = app.cacheable_homepage().await;
    assert!(age > 3, "max-age {age} under the 120 s TTL");
    let misses = app
        .cache
        .stats()
        .kind(shared::cache::FragmentKind::Top10)
        .snapshot()
        .misses;
    k.top10_ttl = "3s";
    let r = reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(r.changed, ["cache.top10"]);
    let (age, body) = app.cacheable_homepage().await;
    let stale_top10 = body["extensions"]["cache"]["stale"]
        .as_array()
        .is_some_and(|s| s.iter().any(|f| f["fragment"] == "top10"));
    assert!(age <= 3 || stale_top10, "max-age {age}: {body}");
    assert_eq!(
        app.cache
            .stats()
            .kind(shared::cache::FragmentKind::Top10)
            .snapshot()
            .misses,
        misses,
        "the cached top 10 was kept"
    );

    // 12. The log level.
    k.log_level = "debug";
    let r = reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(r.changed, ["log.level"]);
    assert_eq!(reloader.settings().log.level, "debug");

    // 13. The listen address needs a restart: named, not applied, the rest still is.
    k.listen = "127.0.0.1:1";
    k.max_aliases = 29;
    let r = reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(r.needs_restart, ["listen"]);
    assert_eq!(r.changed, ["graphql.max_aliases"]);
    assert_eq!(reloader.settings().listen.to_string(), "127.0.0.1:0");
    assert_eq!(app.status_of("/healthz").await, 200, "still where it was");

    // 14. CORS for a browser app.
    let preflight = || async {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap()
    };
    assert!(
        preflight()
            .await
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    k.cors_origin = Some("https://app.example");
    reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(
        preflight().await.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // 15. A value of the wrong type: refused, the limit stays.
    let mut wrong = k.clone();
    wrong.limit = Some("\"many\"".into());
    let e = reload(&mut map, &wrong.toml(&fixtures)).unwrap_err();
    refused += 1;
    assert!(e.contains("rate_limits.policies[0].limit"), "{e}");
    assert_eq!(app.get_from("/r/limited/US", None).await.status(), 429);

    // 16. Another signing secret: its tokens are verified, the old ones no longer.
    let viewer = |token: String| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/graphql"))
                .header("content-type", "application/json")
                .header("x-forwarded-for", "10.7.7.7")
                .bearer_auth(token)
                .json(&json!({ "query": "{ viewer { id } }" }))
                .send()
                .await
                .unwrap()
        }
    };
    let new_signer = TokenSigner::new(SECRET_2.as_bytes(), None, None);
    assert_eq!(viewer(app.token("u7")).await.status(), 200);
    k.secret = SECRET_2;
    let r = reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(r.changed, ["auth.hs256_secret"]);
    assert_eq!(viewer(app.token("u7")).await.status(), 401);
    let answer: Value = viewer(new_signer.sign("u7", 3600).unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["data"]["viewer"]["id"], "u7", "{answer}");

    // 17. A GraphQL limit.
    let aliased = |n: usize| {
        let fields: Vec<String> = (0..n)
            .map(|i| format!("a{i}: title(id: \"t{}\") {{ id }}", i + 1))
            .collect();
        format!("{{ {} }}", fields.join(" "))
    };
    let (status, body) = app.post_graphql(&aliased(3), json!({}), None).await;
    assert!(status == 200 && body.get("errors").is_none(), "{body}");
    k.max_aliases = 2;
    reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    let (_, body) = app.post_graphql(&aliased(3), json!({}), None).await;
    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"], "{body}");
    let (status, body) = app.post_graphql(&aliased(2), json!({}), None).await;
    assert!(status == 200 && body.get("errors").is_none(), "{body}");

    // 18. An unknown key inside a section: refused, the TTL stays.
    let mut typo = k.clone();
    typo.top10_extra = "tll = \"5s\"";
    let e = reload(&mut map, &typo.toml(&fixtures)).unwrap_err();
    refused += 1;
    assert!(e.contains("cache.top10"), "{e}");
    assert_eq!(reloader.settings().cache.top10.ttl, Duration::from_secs(3));

    // 19. top10 back on the first instance, the rate limit gone.
    k.top10_url = fixtures.url(Backend::Top10);
    k.limit = None;
    let r = reload(&mut map, &k.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(r.changed, ["backends.top10", "rate_limits.policies"]);
    assert_eq!(app.admitted_on_limited_route().await, 20);
    let before = top10_calls(&first);
    assert_eq!(app.get_from("/r/top10/US", None).await.status(), 200);
    assert!(top10_calls(&first) > before);

    // 20. Back to where it started (the listen address was never changed).
    let mut back = Knobs::base(&fixtures);
    back.watch_interval = "0s";
    let r = reload(&mut map, &back.toml(&fixtures)).unwrap();
    ok += 1;
    assert_eq!(
        r.changed,
        [
            "auth.hs256_secret",
            "cache.top10",
            "cors.allowed_origins",
            "graphql.max_aliases",
            "log.level"
        ]
    );
    assert!(r.needs_restart.is_empty());
    assert_eq!(viewer(app.token("u7")).await.status(), 200);
    assert_eq!(
        reloader.settings().server.request_budget,
        Duration::from_secs(5),
        "the environment still wins"
    );

    // The registered persisted query outlived twenty reloads.
    let (status, body) = apq(false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["homepage"]["region"], "GB");

    let (served, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(served > 100, "only {served} requests flowed");
    assert_eq!((ok, refused), (15, 5));
    assert_eq!(app.reloads("ok").await, ok);
    assert_eq!(app.reloads("error").await, refused);
}

#[tokio::test]
async fn a_reload_points_tls_at_new_files_and_turning_it_off_needs_a_restart() {
    let pki = Pki::new("config-reload");
    let (a, b) = (
        pki.issue("server-a", "localhost", false),
        pki.issue("server-b", "localhost", false),
    );
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let mut k = Knobs::base(&fixtures);
    k.watch_interval = "0s";
    let with_tls = |k: &Knobs, cert: &Path, key: &Path| {
        format!(
            "{}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            k.toml(&fixtures),
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let mut map = ConfigMap::new(&with_tls(&k, &a.cert, &a.key));
    let surface = web();
    let load = LoadOptions {
        file: Some(map.path()),
        ..LoadOptions::default()
    };
    let app = Application::build(
        Settings::load(&(surface.defaults)(), &load).unwrap(),
        &surface,
        StartOptions {
            config: Some(ConfigSource { load, adjust: None }),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let reloader = app.reloader().unwrap();
    let app = serve_app(app, fixtures.clone());
    assert_eq!(presented(app.addr, &pki.ca_file()).await, a.der.to_vec());

    map.write(&with_tls(&k, &b.cert, &b.key));
    let r = reloader.reload().unwrap();
    assert_eq!(r.changed, ["tls.cert_file", "tls.key_file"]);
    assert_eq!(presented(app.addr, &pki.ca_file()).await, b.der.to_vec());

    // Files that do not load: refused, the running certificate kept.
    let missing = pki.ca_file().with_file_name("missing.pem");
    map.write(&with_tls(&k, &missing, &b.key));
    let e = reloader.reload().unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    assert_eq!(presented(app.addr, &pki.ca_file()).await, b.der.to_vec());

    // Off needs a restart; the rest of the config applies.
    k.max_aliases = 7;
    map.write(&k.toml(&fixtures));
    let r = reloader.reload().unwrap();
    assert_eq!(r.needs_restart, ["tls (turning TLS off)"]);
    assert_eq!(r.changed, ["graphql.max_aliases"]);
    assert_eq!(presented(app.addr, &pki.ca_file()).await, b.der.to_vec());
    assert_eq!(app.reloads("ok").await, 2);
    assert_eq!(app.reloads("error").await, 1);
}

/// Where cargo put the test binary's sibling `bff-web`, built now if it is missing or stale
/// (`cargo test -p bff-tests` builds the library, not the binary).
fn bff_web_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/api-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let target = profile_dir.parent().unwrap();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "bff-web", "--bin", "bff-web"])
        .arg("--target-dir")
        .arg(target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().unwrap();
    assert!(status.success(), "building bff-web failed");
    profile_dir.join("bff-web")
}

/// The lines a child process writes, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, from: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        use tokio::io::AsyncBufReadExt;
        let lines = self.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(from).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("child: {line}");
                }
                lines.0.lock().unwrap().push(line);
            }
        });
    }

    fn matching(&self, needle: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The address printed after `prefix` on a line that has it.
    fn address_after(&self, prefix: &str) -> Option<String> {
        self.0.lock().unwrap().iter().find_map(|l| {
            let rest = l.split(prefix).nth(1)?;
            Some(rest.split('/').next()?.trim().to_owned())
        })
    }
}

#[tokio::test]
async fn sighup_reloads_a_running_bff_web_and_its_log_line_names_what_needs_a_restart() {
    let binary = bff_web_binary();
    let fixtures = Arc::new(Fixtures::start(FixtureOptions::default()).await.unwrap());
    let mut k = Knobs::base(&fixtures);
    k.watch_interval = "0s";
    k.log_level = "warn";
    let mut map = ConfigMap::new(&k.toml(&fixtures));

    let mut child = tokio::process::Command::new(&binary)
        .arg("--config")
        .arg(map.path())
        // Nothing of this process's environment (`RUST_LOG`, `BFF_…`) decides the child's config.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Lines::default();
    lines.collect(child.stdout.take().unwrap());
    lines.collect(child.stderr.take().unwrap());
    eventually("bff-web prints its addresses", || async {
        lines.address_after("admin     http://").is_some()
    })
    .await;
    let addr = lines.address_after("listening on http://").unwrap();
    let admin = lines.address_after("admin     http://").unwrap();
    let http = reqwest::Client::new();
    let get = |url: String, id: &'static str| {
        let http = http.clone();
        async move {
            http.get(url)
                .header("x-request-id", id)
                .send()
                .await
                .map(|r| r.status())
        }
    };
    eventually("bff-web serves", || async {
        get(format!("http://{addr}/healthz"), "probe-ready")
            .await
            .ok()
            == Some(StatusCode::OK)
    })
    .await;
    let reloads = |result: &'static str| {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            let text = http
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .filter(|l| {
                    l.starts_with("bff_config_reloads_total")
                        && l.contains(&format!("result=\"{result}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        }
    };
    assert_eq!(
        get(format!("http://{addr}/r/new/US"), "before-reload")
            .await
            .unwrap(),
        404
    );

    // A route, the log level and the listen address change; SIGHUP.
    k.new_route = true;
    k.log_level = "info";
    k.listen = "127.0.0.1:1";
    map.write(&k.toml(&fixtures));
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let pid = child.id().unwrap();
    hup(pid);
    eventually("the reload is counted", || async {
        reloads("ok").await == 1
    })
    .await;
    assert_eq!(
        get(format!("http://{addr}/r/new/US"), "after-reload")
            .await
            .unwrap(),
        200,
        "the new route, on the address it was listening on"
    );
    let reloaded = lines.matching("config reloaded");
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    for part in [
        "WARN",
        "by=\"SIGHUP\"",
        "changed=log.level,routes",
        "needs_restart=listen",
    ] {
        assert!(reloaded[0].contains(part), "{part} in {}", reloaded[0]);
    }
    assert!(
        lines.matching("before-reload").is_empty(),
        "no access line at warn"
    );
    eventually("the access log is on at info", || async {
        !lines.matching("after-reload").is_empty()
    })
    .await;

    // An invalid config: refused, one error line with the validation's message.
    let mut zero = k.clone();
    zero.top10_ttl = "0s";
    map.write(&zero.toml(&fixtures));
    hup(pid);
    eventually("the refusal is counted", || async {
        reloads("error").await == 1
    })
    .await;
    let refused = lines.matching("config reload refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("ERROR"), "{}", refused[0]);
    assert!(refused[0].contains("cache.top10.ttl"), "{}", refused[0]);
    assert!(refused[0].contains("must be > 0"), "{}", refused[0]);
    assert_eq!(
        get(format!("http://{addr}/r/new/US"), "after-refusal")
            .await
            .unwrap(),
        200
    );
    assert_eq!(reloads("ok").await, 1);

    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
