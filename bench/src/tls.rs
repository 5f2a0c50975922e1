//! The `tls` scenario: what TLS termination costs, against two web BFFs in this process (one
//! with `tls.*` set, one without), each measured for the same window in turn:
//! - **connections per second**: every request on a new connection (`GET /healthz`,
//!   `Connection: close`), 8 at a time — TLS handshakes (TLS 1.3, P-256 certificate) vs plain TCP;
//! - **keep-alive**: the warm web homepage (u1) over 8 kept-alive connections — rps, p50 and CPU
//!   µs per request, TLS vs plain.
//!
//! The certificate is made at run time (rcgen); nothing is read from disk but what it writes.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    harness::Env,
    load, procfs,
    scenario::{Bff, WEB_FULL},
};

/// Clients at once, in both measurements.
const CONCURRENCY: usize = 8;

/// One measurement of one BFF.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub(crate) per_sec: f64,
    pub(crate) cpu_us: f64,
    pub(crate) p50_ms: f64,
}

/// Both measurements for plain and TLS.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) connect_plain: Row,
    pub(crate) connect_tls: Row,
    pub(crate) keepalive_plain: Row,
    pub(crate) keepalive_tls: Row,
}

struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn certificate() -> Result<Certs> {
    let dir = std::env::temp_dir().join(format!("bff-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    let cert = params.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok(Certs {
        dir,
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    })
}

/// Opens a new connection per request for `duration`, `CONCURRENCY` at a time.
async fn connections(
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    duration: Duration,
) -> Result<Row> {
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let end = Instant::now() + duration;
    let cpu_before = procfs::cpu_time_us()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let mut out = Vec::new();
                    match &tls {
                        Some(c) => {
                            let name = ServerName::try_from("localhost")?;
                            let mut s = c.connect(name, tcp).await?;
                            s.write_all(REQUEST).await?;
                            s.read_to_end(&mut out).await?;
                        }
                        None => {
                            let mut s = tcp;
                            s.write_all(REQUEST).await?;
                            s.read_to_end(&mut out).await?;
                        }
                    }
                    anyhow::ensure!(out.starts_with(b"HTTP/1.1 200"), "not a 200");
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.context("connection task panicked")??);
    }
    let window = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_time_us()? - cpu_before;
    times.sort_by(f64::total_cmp);
    let n = times.len().max(1) as f64;
    Ok(Row {
        per_sec: times.len() as f64 / window,
        cpu_us: cpu as f64 / n,
        p50_ms: times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
    })
}

/// The warm homepage over kept-alive connections for `duration`.
async fn keepalive(
    env: &Env,
    client: &reqwest::Client,
    url: String,
    duration: Duration,
) -> Result<Row> {
    let m = load::one_query(
        client,
        url,
        WEB_FULL,
        &env.token("u1")?,
        CONCURRENCY,
        duration,
    )
    .await?;
    Ok(Row {
        per_sec: m.rps,
        cpu_us: m.cpu_us,
        p50_ms: m.p50_ms,
    })
}

/// Runs both measurements, plain first then TLS, `duration` each.
pub(crate) async fn measure(env: &Env, duration: Duration) -> Result<Report> {
    env.set_latency(Duration::ZERO);
    let certs = certificate()?;
    let plain = env.spawn_bff(Bff::Web, |_| {}).await?;
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let tls = env
        .spawn_bff(Bff::Web, move |s| {
            s.tls.cert_file = Some(cert);
            s.tls.key_file = Some(key);
        })
        .await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.der.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let plain_addr: std::net::SocketAddr = plain
        .graphql_url()
        .trim_start_matches("http://")
        .trim_end_matches("/graphql")
        .parse()?;
    let tls_addr: std::net::SocketAddr = tls
        .graphql_url()
        .trim_start_matches("http://")
        .trim_end_matches("/graphql")
        .parse()?;
    eprintln!("[tls] new connection per request, plain then TLS");
    let connect_plain = connections(plain_addr, None, duration).await?;
    let connect_tls = connections(tls_addr, Some(connector), duration).await?;

    eprintln!("[tls] warm homepage over keep-alive, plain then TLS");
    let http = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let https = reqwest::Client::builder()
        .timeout(load::REQUEST_TIMEOUT)
        .pool_max_idle_per_host(CONCURRENCY)
        .tls_certs_only([reqwest::Certificate::from_der(certs.der.as_ref())?])
        .http1_only()
        .build()?;
    let keepalive_plain = keepalive(env, &http, plain.graphql_url(), duration).await?;
    let keepalive_tls = keepalive(
        env,
        &https,
        format!("https://localhost:{}/graphql", tls_addr.port()),
        duration,
    )
    .await?;
    plain.stop().await?;
    tls.stop().await?;
    let _ = std::fs::remove_dir_all(&certs.dir);
    Ok(Report {
        connect_plain,
        connect_tls,
        keepalive_plain,
        keepalive_tls,
    })
}

pub(crate) fn render(r: &Report) -> String {
    let row = |what: &str, unit: &str, plain: Row, tls: Row| {
        format!(
            "| {what} | {:.0} {unit} | {:.0} {unit} | {:.2}× | {:.1} ms | {:.1} ms | {:.0} µs | {:.0} µs |\n",
            plain.per_sec,
            tls.per_sec,
            tls.per_sec / plain.per_sec,
            plain.p50_ms,
            tls.p50_ms,
            plain.cpu_us,
            tls.cpu_us,
        )
    };
    format!(
        "| measurement | plain | TLS | TLS / plain | p50 plain | p50 TLS | CPU plain | CPU TLS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{}{}",
        row(
            "new connection per request (`GET /healthz`)",
            "conn/s",
            r.connect_plain,
            r.connect_tls
        ),
        row(
            "warm web homepage over keep-alive",
            "req/s",
            r.keepalive_plain,
            r.keepalive_tls
        ),
    )
}
