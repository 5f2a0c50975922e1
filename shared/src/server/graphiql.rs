//! GraphiQL served by the BFF itself, so it works on a machine with no internet.
//!
//! async-graphql's `GraphiQLSource` hard-codes CDN URLs, which makes the IDE a blank page offline. Instead the
//! BFF serves GraphiQL 4's UMD bundle and React 18's UMD files from `shared/graphiql/node_modules`, installed
//! from the npm registry through a pinned lockfile (`npm ci --prefix shared/graphiql`; no third-party code is
//! committed). UMD because it needs no bundler: three `<script>` tags put `React`, `ReactDOM` and `GraphiQL` on
//! `window` (GraphiQL's bundle contains graphql-js and the graphql-ws client; only React is external).
//!
//! The files are read once, in [`GraphiqlAssets::locate`], and kept in memory, so serving them does no disk
//! I/O. When they are missing, the page falls back to the same pinned versions on the unpkg CDN (with
//! subresource integrity) and one warning says how to install them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

/// URL prefix under which [`GraphiqlAssets::router`] serves the files; the page refers to them by it.
pub(crate) const ASSETS_PREFIX: &str = "/graphiql/assets";

/// Pinned versions: must match `shared/graphiql/package.json` and the CDN URLs below (a test checks both).
#[cfg(test)]
const GRAPHIQL_VERSION: &str = "4.1.2";
#[cfg(test)]
const REACT_VERSION: &str = "18.3.1";

/// One file the page needs: its public name, its path under `node_modules`, its type and its CDN twin.
struct Asset {
    /// Name in the URL, `/graphiql/assets/{name}`.
    name: &'static str,
    /// Path relative to the `node_modules` directory.
    rel_path: &'static str,
    content_type: &'static str,
    /// Same file on unpkg (npm tarball contents), for the fallback.
    cdn_url: &'static str,
    /// Subresource-integrity hash of that file, so the CDN can only serve the pinned bytes.
    integrity: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The allow-list: nothing else is ever served. Order matters for the `<script>` tags (React first).
const ASSETS: [Asset; 4] = [
    Asset {
        name: "react.production.min.js",
        rel_path: "react/umd/react.production.min.js",
        content_type: JS,
        cdn_url: "https://unpkg.com/react@18.3.1/umd/react.production.min.js",
        integrity: "sha384-DGyLxAyjq0f9SPpVevD6IgztCFlnMF6oW/XQGmfe+IsZ8TqEiDrcHkMLKI6fiB/Z",
    },
    Asset {
        name: "react-dom.production.min.js",
        rel_path: "react-dom/umd/react-dom.production.min.js",
        content_type: JS,
        cdn_url: "https://unpkg.com/react-dom@18.3.1/umd/react-dom.production.min.js",
        integrity: "sha384-gTGxhz21lVGYNMcdJOyq01Edg0jhn/c22nsx0kyqP0TxaV5WVdsSH1fSDUf5YJj1",
    },
    Asset {
        name: "graphiql.min.js",
        rel_path: "graphiql/graphiql.min.js",
        content_type: JS,
        cdn_url: "https://unpkg.com/graphiql@4.1.2/graphiql.min.js",
        integrity: "sha384-9XdHu7ajgGJziD4J1zNBKQ842Q/+zZfDv+ib1eMhZWBH6hPAs806x+Jbcf0yNO6B",
    },
    Asset {
        name: "graphiql.min.css",
        rel_path: "graphiql/graphiql.min.css",
        content_type: CSS,
        cdn_url: "https://unpkg.com/graphiql@4.1.2/graphiql.min.css",
        integrity: "sha384-1el1QShFBnnXTx9x/Cprg82hZWKt0ry29OAYIXt05swbi0KcZDFoj0CWguMpopJr",
    },
];

/// Where GraphiQL's static files come from: the files of a local `node_modules` dir held in memory, or none
/// (the page then loads them from the CDN).
#[derive(Clone, Debug)]
pub(crate) struct GraphiqlAssets {
    /// Asset name → (bytes, content type). Empty in CDN-fallback mode.
    files: Arc<HashMap<&'static str, (Bytes, &'static str)>>,
}

impl GraphiqlAssets {
    /// `configured`: optional directory from config (a `node_modules` dir). None → the default,
    /// `shared/graphiql/node_modules` of this source tree. Reads every allow-listed file into memory. If any
    /// is missing, logs one warning that GraphiQL falls back to the CDN (unpkg) and how to install the assets
    /// (`npm ci --prefix shared/graphiql`); [`page`](Self::page) then uses CDN URLs.
    pub(crate) fn locate(configured: Option<&Path>) -> GraphiqlAssets {
        let dir = configured.map_or_else(
            || {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/graphiql/node_modules"
                ))
            },
            Path::to_path_buf,
        );
        let mut files = HashMap::with_capacity(ASSETS.len());
        let mut missing = Vec::new();
        for asset in &ASSETS {
            let path = dir.join(asset.rel_path);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.insert(asset.name, (Bytes::from(bytes), asset.content_type));
                }
                Err(err) => missing.push(format!("{} ({err})", path.display())),
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                missing = %missing.join(", "),
                "GraphiQL assets not found: the GraphiQL page falls back to the CDN (unpkg) and will not load \
                 offline; install them with `npm ci --prefix shared/graphiql` (or set the configured dir)"
            );
            files.clear();
        }
        GraphiqlAssets {
            files: Arc::new(files),
        }
    }

    /// True when the files are served locally, false in CDN-fallback mode.
    pub(crate) fn is_local(&self) -> bool {
        !self.files.is_empty()
    }

    /// `src`/`href` (plus `integrity` attributes for the CDN) of one asset.
    fn src(&self, asset: &Asset) -> String {
        if self.is_local() {
            format!("\"{ASSETS_PREFIX}/{}\"", asset.name)
        } else {
            format!(
                "\"{}\" integrity=\"{}\" crossorigin=\"anonymous\"",
                asset.cdn_url, asset.integrity
            )
        }
    }

    /// Full HTML page for `page` (see [`Page`]). Every caller-given string is embedded as JSON
    /// with `<` escaped, so none can close the `<script>`.
    pub(crate) fn page(&self, page: &Page<'_>) -> String {
        let config = serde_json::json!({
            "endpoint": page.endpoint,
            "subscriptionEndpoint": page.subscription_endpoint,
            "defaultHeaders": page.headers,
            "initialQuery": page.initial_query(),
            "introspection": page.introspection,
        });
        let config = script_safe_json(&config);
        let [react, react_dom, graphiql_js, graphiql_css] = &ASSETS;
        let (react, react_dom, graphiql_js, graphiql_css) = (
            self.src(react),
            self.src(react_dom),
            self.src(graphiql_js),
            self.src(graphiql_css),
        );
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>bff GraphiQL</title>
  <link rel="stylesheet" href={graphiql_css}>
  <style>html, body, #graphiql {{ height: 100%; margin: 0; }}</style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <!-- UMD builds: no bundler, no CDN. They define window.React, window.ReactDOM and window.GraphiQL
       (GraphiQL's bundle includes graphql-js and the graphql-ws client). -->
  <script src={react}></script>
  <script src={react_dom}></script>
  <script src={graphiql_js}></script>
  <script>
    // Set by the server; JSON with "<" escaped, so it cannot end this script.
    const config = {config};
    // graphql-ws needs an absolute ws:// or wss:// URL: derive it from where this page was loaded.
    // No subscription endpoint (none is served yet): GraphiQL gets no WebSocket URL at all.
    const wsUrl = !config.subscriptionEndpoint ? undefined
      : /^wss?:/.test(config.subscriptionEndpoint)
      ? config.subscriptionEndpoint
      : (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + config.subscriptionEndpoint;
    const fetcher = GraphiQL.createFetcher(wsUrl
      ? {{ url: config.endpoint, subscriptionUrl: wsUrl }}
      : {{ url: config.endpoint }});
    ReactDOM.createRoot(document.getElementById('graphiql')).render(
      React.createElement(GraphiQL, {{
        fetcher,
        defaultQuery: config.initialQuery,
        defaultHeaders: config.defaultHeaders ?? undefined,
        // null: the server answers no introspection, so GraphiQL must not ask (it would show
        // "Error fetching schema"); the query editor's comment says why Docs are empty.
        schema: config.introspection ? undefined : null,
        // Show the headers editor when the server prefilled it (e.g. a dev token).
        defaultEditorToolsVisibility: config.defaultHeaders ? 'headers' : undefined,
      }}),
    );
  </script>
</body>
</html>
"#
        )
    }

    /// Router serving the allow-listed files at `/graphiql/assets/{file}` from memory, with their
    /// Content-Type and `Cache-Control: public, max-age=86400`; any other name → 404 (so does every name in
    /// CDN-fallback mode).
    pub(crate) fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let files = Arc::clone(&self.files);
        Router::new().route(
            &format!("{ASSETS_PREFIX}/{{file}}"),
            get(move |UrlPath(file): UrlPath<String>| {
                let files = Arc::clone(&files);
                async move { serve(&files, &file) }
            }),
        )
    }
}

/// What one GraphiQL page shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page<'a> {
    /// GraphQL endpoint path, e.g. `/graphql`.
    pub endpoint: &'a str,
    /// Subscriptions path, e.g. `/graphql/ws` (the page turns it into `ws(s)://host/...`); `None`:
    /// no subscription endpoint is served.
    pub subscription_endpoint: Option<&'a str>,
    /// JSON object text prefilled in the headers editor (the demo token), if any.
    pub headers: Option<&'a str>,
    /// The binary's name, e.g. `bff-web`, for the editor's opening comment.
    pub binary: &'a str,
    /// The runnable example the editor opens with (the binary's homepage query).
    pub example_query: &'a str,
    /// Whether the server answers introspection (the Docs explorer and autocompletion need it).
    pub introspection: bool,
}

impl Page<'_> {
    /// The query editor's content: a short comment on how to run it and where the schema and
    /// docs are, then the example.
    fn initial_query(&self) -> String {
        // Short lines: the editor is narrow once the Docs explorer is open.
        let mut text = format!(
            "# {} GraphiQL: run the query with Ctrl-Enter or \u{25b6}.\n",
            self.binary
        );
        if self.introspection {
            text.push_str(
                "# Schema and docs: Docs (book icon, top left).\n\
                 # Ctrl-Space autocompletes.\n",
            );
        } else {
            text.push_str(
                "# Introspection is off on this server\n\
                 # (graphql.introspection = false): no Docs explorer\n\
                 # or autocompletion; the schema is in schema/.\n",
            );
        }
        if self.headers.is_some() {
            text.push_str(
                "# Headers (below) hold the demo token for user u1;\n\
                 # without it you get the public homepage.\n",
            );
        } else {
            text.push_str(
                "# Personalised rows need a token in Headers (below):\n\
                 # {\"Authorization\": \"Bearer <token>\"}\n",
            );
        }
        text.push_str(self.example_query);
        text
    }
}

/// One asset response, or 404 for a name outside the allow-list.
fn serve(files: &HashMap<&'static str, (Bytes, &'static str)>, name: &str) -> Response {
    match files.get(name) {
        Some((bytes, content_type)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// JSON text safe inside an HTML `<script>`: serde_json escapes quotes and control characters; `<` (so no
/// `</script>` or `<!--`), `>`, `&` and the JS line separators U+2028/U+2029 become `\uXXXX` escapes, which
/// mean the same characters to JSON and JS. They can only occur inside strings, where such escapes are valid.
fn script_safe_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    /// A fake `node_modules` with every allow-listed file (content = its name), in a fresh temp dir.
    fn fake_node_modules(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("graphiql-assets-test-{tag}-{}", std::process::id()));
        for asset in &ASSETS {
            let path = dir.join(asset.rel_path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, asset.name).unwrap();
        }
        dir
    }

    /// The `const config = {...};` object of a page, parsed.
    fn page_config(page: &str) -> serde_json::Value {
        let start = page.find("const config = ").unwrap() + "const config = ".len();
        let end = start + page[start..].find(";\n").unwrap();
        serde_json::from_str(&page[start..end]).unwrap()
    }

    #[test]
    fn hostile_strings_cannot_break_out_of_the_script() {
        let assets = GraphiqlAssets::locate(Some(Path::new("/nonexistent/graphiql-test")));
        let headers = "{\"Authorization\":\"Bearer </script><script>alert(1)</script><!--\", \"x\": \"\u{2028}'\"}";
        let query = "{ a } </SCRIPT> </script >";
        let page = assets.page(&Page {
            headers: Some(headers),
            example_query: query,
            ..test_page()
        });
        // Only the page's own four closing tags, none from the inputs.
        assert_eq!(page.matches("</script>").count(), 4, "{page}");
        assert!(!page.to_ascii_lowercase().contains("</script >"));
        assert_eq!(
            page.matches("<!--").count(),
            1,
            "only the page's own comment"
        );
        assert!(!page.contains('\u{2028}'));
        // And the values arrive intact.
        let config = page_config(&page);
        assert_eq!(config["defaultHeaders"], headers);
        assert!(config["initialQuery"].as_str().unwrap().ends_with(query));
        assert_eq!(config["endpoint"], "/graphql");
        assert_eq!(config["subscriptionEndpoint"], "/graphql/ws");
    }

    #[test]
    fn page_defaults_and_title() {
        let dir = fake_node_modules("page");
        let assets = GraphiqlAssets::locate(Some(&dir));
        assert!(assets.is_local());
        let page = assets.page(&test_page());
        assert!(page.contains("<title>bff GraphiQL</title>"));
        assert!(page.contains(r#"<script src="/graphiql/assets/graphiql.min.js"></script>"#));
        assert!(
            page.contains(r#"<link rel="stylesheet" href="/graphiql/assets/graphiql.min.css">"#)
        );
        assert!(!page.contains("unpkg"));
        let config = page_config(&page);
        assert_eq!(config["defaultHeaders"], serde_json::Value::Null);
        assert_eq!(config["introspection"], true);
        let query = config["initialQuery"].as_str().unwrap();
        assert!(query.starts_with("# bff-test GraphiQL:"), "{query}");
        assert!(query.contains("Docs (book icon"), "{query}");
        assert!(query.contains("Bearer <token>"), "{query}");
        assert!(query.ends_with("{ homepage { rows { kind } } }"), "{query}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_introspection_the_page_does_not_ask_for_the_schema_and_says_so() {
        let assets = GraphiqlAssets::locate(Some(Path::new("/nonexistent/graphiql-test")));
        let page = assets.page(&Page {
            introspection: false,
            headers: Some("{}"),
            ..test_page()
        });
        let config = page_config(&page);
        assert_eq!(config["introspection"], false);
        assert!(page.contains("schema: config.introspection ? undefined : null"));
        let query = config["initialQuery"].as_str().unwrap();
        assert!(query.contains("Introspection is off"), "{query}");
        assert!(query.contains("demo token"), "{query}");
    }

    fn test_page() -> Page<'static> {
        Page {
            endpoint: "/graphql",
            subscription_endpoint: Some("/graphql/ws"),
            headers: None,
            binary: "bff-test",
            example_query: "{ homepage { rows { kind } } }",
            introspection: true,
        }
    }

    #[tokio::test]
    async fn missing_dir_falls_back_to_the_cdn() {
        let assets = GraphiqlAssets::locate(Some(Path::new("/nonexistent/graphiql-test")));
        assert!(!assets.is_local());
        let page = assets.page(&test_page());
        assert!(page.contains(
            r#"src="https://unpkg.com/graphiql@4.1.2/graphiql.min.js" integrity="sha384-"#
        ));
        assert!(page.contains("https://unpkg.com/react@18.3.1/umd/react.production.min.js"));
        assert!(!page.contains(ASSETS_PREFIX));
        // Nothing is served locally then.
        let resp = assets
            .router::<()>()
            .oneshot(
                Request::get("/graphiql/assets/graphiql.min.js")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serves_only_the_allow_list() {
        let dir = fake_node_modules("router");
        std::fs::write(dir.join("secret.txt"), "secret").unwrap();
        let assets = GraphiqlAssets::locate(Some(&dir));
        std::fs::remove_dir_all(&dir).unwrap(); // served from memory from now on
        let get = |uri: &str| {
            let router = assets.router::<()>();
            let req = Request::get(uri).body(Body::empty()).unwrap();
            async move { router.oneshot(req).await.unwrap() }
        };

        let resp = get("/graphiql/assets/graphiql.min.css").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CSS);
        assert_eq!(
            resp.headers()[header::CACHE_CONTROL],
            "public, max-age=86400"
        );
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"graphiql.min.css");
        let resp = get("/graphiql/assets/react-dom.production.min.js").await;
        assert_eq!(resp.headers()[header::CONTENT_TYPE], JS);

        for uri in [
            "/graphiql/assets/secret.txt",
            "/graphiql/assets/../secret.txt",
            "/graphiql/assets/..%2Fsecret.txt",
            "/graphiql/assets/graphiql%2Fgraphiql.min.js",
            "/graphiql/assets/graphiql/graphiql.min.js",
            "/graphiql/assets/",
            "/graphiql/assets/index.umd.js",
        ] {
            assert_eq!(get(uri).await.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }

    #[test]
    fn pinned_versions_match_package_json() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/graphiql/package.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        let deps = &json["dependencies"];
        assert_eq!(deps["graphiql"], GRAPHIQL_VERSION);
        assert_eq!(deps["react"], REACT_VERSION);
        assert_eq!(deps["react-dom"], REACT_VERSION);
        for asset in &ASSETS {
            let pinned = if asset.rel_path.starts_with("graphiql/") {
                GRAPHIQL_VERSION
            } else {
                REACT_VERSION
            };
            assert!(
                asset.cdn_url.contains(&format!("@{pinned}/")),
                "{}",
                asset.cdn_url
            );
        }
    }
}
