//! `spawn_app()`: fixture backends + one BFF on 127.0.0.1:0, with a token signer and the fixture
//! control handle, torn down when the handle drops.

use std::{net::SocketAddr, sync::Arc};

use bff_fixtures::{Backend, Control, Dataset, FaultPatch, FixtureOptions, Fixtures};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::{
    Application, StartOptions, Surface,
    auth::TokenSigner,
    cache::FragmentCache,
    config::{BackendsSettings, Secret, Settings},
    demo::fixture_backend,
};
use tokio::sync::oneshot;

/// The HS256 secret every test BFF trusts.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A running BFF plus its fixtures.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener (readiness detail, metrics): every test BFF has one unless the test
    /// turns it off.
    pub admin: Option<SocketAddr>,
    pub http: reqwest::Client,
    /// Shared by every instance of a multi-instance test.
    pub fixtures: Arc<Fixtures>,
    pub signer: TokenSigner,
    pub cache: FragmentCache,
    /// The instance's event bus (in-process unless the test set `events.url`).
    pub bus: Arc<dyn shared::events::EventBus>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    /// Stops the BFF as SIGTERM does (graceful shutdown), leaving the fixtures running.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// [`Self::stop`], then waits until the listener no longer answers.
    pub async fn stop_and_wait(mut self) {
        self.stop();
        eventually("the BFF stopped", || async {
            tokio::net::TcpStream::connect(self.addr).await.is_err()
        })
        .await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn web() -> Surface {
    bff_web::surface()
}

pub fn mobile() -> Surface {
    bff_mobile::surface()
}

pub async fn spawn_app(surface: Surface) -> TestApp {
    spawn_app_with(surface, |_| {}).await
}

/// Like [`spawn_app`], letting the test adjust settings after the fixture URLs are filled in.
pub async fn spawn_app_with(surface: Surface, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let fixtures = Fixtures::start(FixtureOptions::default())
        .await
        .expect("fixtures start");
    spawn_app_on(surface, Arc::new(fixtures), adjust).await
}

/// A BFF over fixtures that other instances may share.
pub async fn spawn_app_on(
    surface: Surface,
    fixtures: Arc<Fixtures>,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = Settings::defaults(&(surface.defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    settings.backends = BackendsSettings::at(|b| fixtures.url(fixture_backend(b)));
    settings.auth.hs256_secret = Some(Secret::new(SECRET));
    // Debug builds on a busy CI machine can be slow; only tests about deadlines use a tight budget.
    settings.server.request_budget = std::time::Duration::from_secs(5);
    settings.graphql.timeout = std::time::Duration::from_secs(10);
    for b in shared::upstream::BackendId::ALL {
        settings.backends.get_mut(b).timeout = std::time::Duration::from_secs(2);
    }
    adjust(&mut settings);
    let app = Application::build(settings, &surface, StartOptions::default())
        .await
        .expect("bff builds");
    serve_app(app, fixtures)
}

/// Runs a built BFF over `fixtures` until the handle drops.
pub fn serve_app(app: Application, fixtures: Arc<Fixtures>) -> TestApp {
    let addr = app.local_addr().unwrap();
    let admin = app.admin_addr();
    let cache = app.fragment_cache();
    let bus = app.event_bus();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let signer = TokenSigner::new(SECRET.as_bytes(), None, None);
    // No automatic decompression (reqwest is built without it), so tests see Content-Encoding.
    let http = reqwest::Client::builder().build().unwrap();
    TestApp {
        addr,
        admin,
        http,
        fixtures,
        signer,
        cache,
        bus,
        stop: Some(stop),
    }
}

/// A fault patch adding `ms` of latency.
pub fn latency(ms: u64) -> FaultPatch {
    FaultPatch {
        latency: Some(std::time::Duration::from_millis(ms)),
        ..FaultPatch::default()
    }
}

/// A fault patch failing this share of calls.
pub fn error_rate(rate: f64) -> FaultPatch {
    FaultPatch {
        error_rate: Some(rate),
        ..FaultPatch::default()
    }
}

/// A fault patch that accepts calls and never answers.
pub fn stalled() -> FaultPatch {
    FaultPatch {
        stall: Some(true),
        ..FaultPatch::default()
    }
}

/// A fault patch answering every call with 503 / UNAVAILABLE at once.
pub fn down() -> FaultPatch {
    FaultPatch {
        down: Some(true),
        ..FaultPatch::default()
    }
}

/// The homepage row a backend feeds, if any.
pub fn row_kind(b: Backend) -> Option<&'static str> {
    match b {
        Backend::ContinueWatching => Some("CONTINUE_WATCHING"),
        Backend::Recommendations => Some("RECOMMENDED"),
        Backend::Top10 => Some("TOP_10"),
        Backend::MyList => Some("MY_LIST"),
        Backend::NewReleases => Some("NEW_RELEASES"),
        Backend::Profile | Backend::Catalog => None,
    }
}

impl TestApp {
    /// The admin listener's `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        let r = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The sum of the samples of metric `name` whose labels contain every one of `labels`
    /// (e.g. `result="error"`), from the admin `/metrics`; 0 when there is none.
    pub async fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The admin listener's `GET /readyz` (every backend's state) as JSON, whatever its status.
    pub async fn readyz(&self) -> Value {
        self.http
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /graphql` as a browser asks for it (`Accept: text/html`).
    pub async fn browser_get_graphql(&self) -> reqwest::Response {
        self.http
            .get(self.url("/graphql"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    }

    /// The status of `GET path`.
    pub async fn status_of(&self, path: &str) -> StatusCode {
        self.http.get(self.url(path)).send().await.unwrap().status()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("this test BFF has no admin listener");
        format!("http://{admin}{path}")
    }

    pub fn control(&self) -> Control {
        self.fixtures.control()
    }

    pub fn data(&self) -> Arc<Dataset> {
        self.fixtures.dataset()
    }

    pub fn token(&self, user: &str) -> String {
        self.signer.sign(user, 3600).unwrap()
    }

    /// Sets a fault on one backend.
    pub fn fault(&self, b: Backend, patch: FaultPatch) {
        self.control().set_fault(b, patch);
    }

    /// POSTs a GraphQL request; returns status and JSON body.
    pub async fn post_graphql(
        &self,
        query: &str,
        variables: Value,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept", "application/graphql-response+json")
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let body = resp.json::<Value>().await.expect("json body");
        (status, body)
    }

    /// The homepage for `token` (or anonymous) in `region`, with `query` selecting fields.
    pub async fn homepage(&self, selection: &str, token: Option<&str>) -> Value {
        let q = format!("{{ homepage(region: \"US\") {{ rows {{ {selection} }} }} }}");
        let (status, body) = self.post_graphql(&q, json!({}), token).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Row kinds of a homepage response, nulls as "null".
pub fn kinds(body: &Value) -> Vec<String> {
    body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("null").to_owned())
        .collect()
}

/// The row of `kind` in a homepage response.
pub fn row<'a>(body: &'a Value, kind: &str) -> &'a Value {
    body["data"]["homepage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {body}"))
}

/// Title ids of a row's items.
pub fn ids(row: &Value) -> Vec<String> {
    row["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The errors of a response.
pub fn errors(body: &Value) -> Vec<Value> {
    body["errors"].as_array().cloned().unwrap_or_default()
}

pub fn codes(body: &Value) -> Vec<String> {
    errors(body)
        .iter()
        .map(|e| {
            e["extensions"]["code"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned()
        })
        .collect()
}

/// Every title field the web surface has: what a rich client asks for.
pub const WEB_FULL: &str = "{ homepage(region: \"US\") { region hero { id name } rows { kind heading items { rank reason progress { positionSeconds durationSeconds fraction } title { id name synopsis year maturityRating runtimeMinutes genres cast images { poster { url width height } backdrop { url width height } hero { url width height } } } } } } }";

/// Every title field the mobile surface has.
pub const MOBILE_FULL: &str = "{ homepage(region: \"US\") { region rows { kind heading items { rank reason progress { positionSeconds durationSeconds fraction } title { id name synopsis year maturityRating runtimeMinutes genres image(width: 171, dpr: 2) { url width height } } } } } }";

/// Fails in one line naming the server when nothing answers on Redis's port (the tests of
/// fleet-wide rate limits use the machine's Redis).
pub fn require_redis() {
    bff_fixtures::proxy::require_server(
        "127.0.0.1:6379",
        "Redis",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\"",
    );
}

/// Fails in one line naming the server when nothing answers on RabbitMQ's port.
pub fn require_rabbitmq() {
    bff_fixtures::proxy::require_server(
        "127.0.0.1:5672",
        "RabbitMQ (guest/guest)",
        "rabbitmq-server -detached",
    );
}

/// The media type GraphQL-over-HTTP clients ask for (request errors then get 4xx).
pub const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

impl TestApp {
    /// POSTs `body` as JSON to `/graphql` as it is (a batch, a malformed request), with `accept`
    /// and a bearer `token` when given: the whole response.
    pub async fn post_body(
        &self,
        body: &Value,
        accept: Option<&str>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .json(body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// Polls `check` until it holds (every 10 ms, at most 20 s): for what happens in another task or
/// process, asserted on its outcome rather than on how long it took.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs `node tests/clients/<script> <args>` (real GraphQL clients from npm) and returns what it
/// printed; panics with its output when it fails. The first call of a test run installs the
/// pinned packages (`npm ci --prefix tests/clients`) when `node_modules` is missing; concurrent
/// tests wait for that one install.
pub async fn node_client(script: &str, args: &[&str]) -> String {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    INSTALLED
        .get_or_init(|| async {
            if clients.join("node_modules").is_dir() {
                return;
            }
            let out = tokio::process::Command::new("npm")
                .args([
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&clients)
                .output()
                .await
                .expect("npm runs (Node.js and npm are needed for the client tests)");
            assert!(
                out.status.success(),
                "npm ci --prefix tests/clients failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    let out = tokio::process::Command::new("node")
        .arg(clients.join(script))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node {script} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
