//! TLS over real sockets: HTTP/1.1 and HTTP/2 by ALPN, a client certificate accepted (and naming
//! a service identity) and one refused, a certificate reload picked up without a restart, and
//! backends reached over `https://` (REST and gRPC) with a custom CA and a client certificate.

use std::{sync::Arc, time::Duration};

use bff_fixtures::Backend;
use serde_json::json;
use shared::config::{BackendId, ClientAuth, Settings};

use crate::{helpers::*, pki::*};

fn serve_tls(s: &mut Settings, server: &Issued) {
    s.tls.cert_file = Some(server.cert.clone());
    s.tls.key_file = Some(server.key.clone());
    s.tls.reload_interval = Duration::from_millis(100);
}

fn client(ca: &std::path::Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder().tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://localhost:{}{path}", app.addr.port())
}

#[tokio::test]
async fn https_serves_http1_and_http2_by_alpn() {
    let pki = Pki::new("alpn");
    let server = pki.issue("server", "localhost", false);
    let app = spawn_app_with(web(), |s| serve_tls(s, &server)).await;
    let h2 = client(&pki.ca_file()).build().unwrap();
    let r = h2.get(https(&app, "/healthz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let h1 = client(&pki.ca_file()).http1_only().build().unwrap();
    let r = h1.get(https(&app, "/healthz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // A GraphQL request over TLS.
    let r = h2
        .post(https(&app, "/graphql"))
        .json(&json!({ "query": "{ homepage { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the CA refuses the server.
    assert!(
        reqwest::Client::new()
            .get(https(&app, "/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_is_an_identity_and_another_is_refused() {
    let pki = Pki::new("mtls");
    let server = pki.issue("server", "localhost", false);
    let svc = pki.issue("svc", "u5", true);
    let stranger_pki = Pki::new("stranger");
    let stranger = stranger_pki.issue("stranger", "u6", true);
    let app = spawn_app_with(web(), |s| {
        serve_tls(s, &server);
        s.tls.client_ca_file = Some(pki.ca_file());
        s.tls.client_auth = ClientAuth::Optional;
        s.tls.client_cert_identity = true;
    })
    .await;
    let with_cert = |issued: &Issued| {
        let mut pem = std::fs::read(&issued.cert).unwrap();
        pem.extend(std::fs::read(&issued.key).unwrap());
        client(&pki.ca_file())
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    let viewer = |http: reqwest::Client| {
        let url = https(&app, "/graphql");
        async move {
            http.post(url)
                .json(&json!({ "query": "{ viewer { id } }" }))
                .send()
                .await
        }
    };
    // The service's certificate names it.
    let body: serde_json::Value = viewer(with_cert(&svc)).await.unwrap().json().await.unwrap();
    assert_eq!(body["data"]["viewer"]["id"], "u5", "{body}");
    // Without a certificate (optional): anonymous.
    let body: serde_json::Value = viewer(client(&pki.ca_file()).build().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(codes(&body), ["UNAUTHENTICATED"], "{body}");
    // A certificate from another CA fails the handshake.
    assert!(viewer(with_cert(&stranger)).await.is_err());
    // A bearer token wins over the certificate.
    let token = app.token("u7");
    let body: serde_json::Value = with_cert(&svc)
        .post(https(&app, "/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": "{ viewer { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["viewer"]["id"], "u7");

    // Required: no certificate, no connection.
    let app = spawn_app_with(web(), |s| {
        serve_tls(s, &server);
        s.tls.client_ca_file = Some(pki.ca_file());
        s.tls.client_auth = ClientAuth::Required;
    })
    .await;
    let bare = client(&pki.ca_file()).build().unwrap();
    assert!(bare.get(https(&app, "/healthz")).send().await.is_err());
    let r = with_cert(&svc)
        .get(https(&app, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The certificate a TLS handshake with `addr` presents.
pub(crate) async fn presented(addr: std::net::SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let config = client_config(ca, None, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = Pki::new("reload");
    let first = pki.issue("server", "localhost", false);
    let app = spawn_app_with(web(), |s| serve_tls(s, &first)).await;
    assert_eq!(
        presented(app.addr, &pki.ca_file()).await,
        first.der.to_vec()
    );
    // A certificate manager replaces both files.
    let renewed = pki.issue("server", "localhost", false);
    assert_ne!(renewed.der, first.der);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = presented(app.addr, &pki.ca_file()).await;
        if seen == renewed.der.to_vec() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        renewed.der.to_vec(),
        "the renewed certificate is served"
    );
    assert!(
        app.metric_sum("bff_tls_reloads_total", &["result=\"ok\""])
            .await
            >= 1.0
    );
    // A broken file is refused and the running certificate kept.
    std::fs::write(&renewed.key, "not a key").unwrap();
    eventually("the broken key is refused", || async {
        app.metric_sum("bff_tls_reloads_total", &["result=\"error\""])
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        presented(app.addr, &pki.ca_file()).await,
        renewed.der.to_vec()
    );
    let r = client(&pki.ca_file())
        .build()
        .unwrap()
        .get(https(&app, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn backends_are_reached_over_https_with_a_custom_ca_and_a_client_certificate() {
    let pki = Pki::new("backends");
    let server = pki.issue("backend", "localhost", false);
    let bff_cert = pki.issue("bff", "bff-web", true);
    let fx = bff_fixtures::Fixtures::start(bff_fixtures::FixtureOptions::default())
        .await
        .unwrap();
    // REST behind a TLS front that requires a client certificate; gRPC behind one that does not.
    let rest = tls_front(fx.rest_addr(), &server, Some(&pki.ca_file())).await;
    let grpc = tls_front(fx.grpc_addr(), &server, None).await;
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        s.backends =
            shared::config::BackendsSettings::at(|b| fx.url(shared::demo::fixture_backend(b)));
        for b in shared::upstream::BackendId::ALL {
            s.backends.get_mut(b).timeout = Duration::from_secs(2);
        }
        s.backends[BackendId::Top10].url = format!("https://localhost:{}/top10", rest.port());
        s.backends[BackendId::Top10].tls.ca_file = Some(pki.ca_file());
        s.backends[BackendId::Top10].tls.cert_file = Some(bff_cert.cert.clone());
        s.backends[BackendId::Top10].tls.key_file = Some(bff_cert.key.clone());
        s.backends[BackendId::Catalog].url = format!("https://localhost:{}", grpc.port());
        s.backends[BackendId::Catalog].tls.ca_file = Some(pki.ca_file());
    })
    .await;
    let body = app.homepage("kind items { title { id name } }", None).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(kinds(&body), ["TOP_10", "NEW_RELEASES"]);
    let top10 = &row(&body, "TOP_10")["items"];
    assert!(
        top10[0]["title"]["name"].is_string(),
        "hydrated over gRPC/TLS: {body}"
    );
    assert!(fx.control().stats_of(Backend::Top10).calls >= 1);
    assert!(fx.control().stats_of(Backend::Catalog).calls >= 1);

    // Without the client certificate, the REST front refuses the BFF: a clean row error.
    let app = spawn_app_with(web(), |s| {
        s.cache.enabled = false;
        s.backends =
            shared::config::BackendsSettings::at(|b| fx.url(shared::demo::fixture_backend(b)));
        s.backends[BackendId::Top10].url = format!("https://localhost:{}/top10", rest.port());
        s.backends[BackendId::Top10].tls.ca_file = Some(pki.ca_file());
        s.backends[BackendId::Top10].retries = 0;
    })
    .await;
    let body = app.homepage("kind", None).await;
    assert_eq!(codes(&body), ["BACKEND_UNAVAILABLE"], "{body}");
}

/// A subscription over `wss://`: the upgrade and every frame pass through the TLS layer (the
/// results are gathered writes, which a TLS stream must be flushed after), at the 7-bit and
/// 16-bit frame lengths.
#[tokio::test]
async fn subscriptions_are_served_over_wss() {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::{
        Message, client::IntoClientRequest as _, http::HeaderValue,
    };

    let pki = Pki::new("wss");
    let server = pki.issue("server", "localhost", false);
    let app = spawn_app_with(web(), |s| serve_tls(s, &server)).await;
    app.control().live().attach(app.bus.clone());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
        &pki.ca_file(),
        None,
        &[b"http/1.1"],
    )));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut request = format!("wss://localhost:{}/graphql/ws", app.addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws.send(Message::text(r#"{"type":"connection_init","payload":{}}"#))
        .await
        .unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "connection_ack");
    ws.send(Message::text(
        json!({"id": "a", "type": "subscribe", "payload": {"query":
            r#"subscription { top10(region: "US") { items { rank title { id name } } } }"#}})
        .to_string(),
    ))
    .await
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        assert_eq!(v["type"], "next", "{v}");
        assert_eq!(v["id"], "a");
        v["payload"]["data"]["top10"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = ids(&next_message(&mut ws).await);
    assert_eq!(before.len(), 10);
    assert!(app.control().live().rotate_top10("US"));
    let after = ids(&next_message(&mut ws).await);
    assert_eq!(after[..9], before[1..]);
    // A short message (7-bit length) after the long ones.
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "pong");
}

/// The next protocol message other than the server's keepalive `ping`.
async fn next_message<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "ping" {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no message: {other:?}"),
        }
    }
}
