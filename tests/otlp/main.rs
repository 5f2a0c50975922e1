//! OTLP trace export, end to end over real gRPC: an in-process collector ([`Receiver`]) on an
//! ephemeral port receives what `shared::telemetry::otel::provider` exports, both from the
//! OpenTelemetry API directly and from `tracing` spans through `tracing-opentelemetry`.
//!
//! Flushing goes through `spawn_blocking` because the SDK's batch processor blocks the caller
//! until the export is done, and the export needs the runtime (tonic's connection task) to run.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use shared::telemetry::otel;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value::Value},
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel::OtlpSettings;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tracing_subscriber::{Layer as _, filter::Targets, layer::SubscriberExt as _};

/// Upper bound on any wait for exported spans; generous for a loaded 2-core CI box.
const WAIT: Duration = Duration::from_secs(10);

/// One span as the collector saw it: ids in lowercase hex, attributes rendered as strings.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    /// Empty for a root span (OTLP sends no bytes).
    pub parent_span_id: String,
    pub span_id: String,
    pub name: String,
    pub attributes: HashMap<String, String>,
    /// Attributes of the resource the span was exported under (`service.name`, ...).
    pub resource: HashMap<String, String>,
}

/// Received spans plus a wake-up for whoever waits on them.
#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Notify,
}

/// The collector side: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
struct Collector(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    parent_span_id: hex(&span.parent_span_id),
                    span_id: hex(&span.span_id),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                });
            }
        }
        self.0
            .spans
            .lock()
            .expect("receiver store poisoned")
            .extend(received);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An in-process OTLP/gRPC collector on `127.0.0.1:0`; stops when dropped.
pub struct Receiver {
    store: Arc<Store>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Starts the collector; the address is ready to accept once this returns (the listener is
    /// bound before the server task starts).
    pub async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Store::default());
        let service = TraceServiceServer::new(Collector(Arc::clone(&store)));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("OTLP receiver failed");
        });
        (Self { store, server }, addr)
    }

    /// Everything received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .expect("receiver store poisoned")
            .clone()
    }

    /// Waits until at least `n` spans arrived and returns all received; panics with what did
    /// arrive when `timeout` passes first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let waiting = async {
            loop {
                // Register interest before looking, so an export landing in between still wakes us.
                let arrived = self.store.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                let spans = self.spans();
                if spans.len() >= n {
                    return spans;
                }
                arrived.await;
            }
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(spans) => spans,
            Err(_) => panic!(
                "expected {n} spans within {timeout:?}, received {:#?}",
                self.spans()
            ),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[ProtoKeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
        .collect()
}

fn any_value(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An exporting provider pointed at `addr`, as the BFF would build it from config.
fn exporting_provider(addr: SocketAddr) -> SdkTracerProvider {
    otel::provider(
        &OtlpSettings {
            enabled: true,
            endpoint: Some(format!("http://{addr}")),
            ..OtlpSettings::default()
        },
        "bff-test",
    )
    .unwrap()
}

/// Flushes off the runtime's threads: `force_flush` blocks until the batch is exported.
async fn flush(provider: &SdkTracerProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .unwrap()
        .unwrap();
}

/// Shuts down off the runtime's threads, for the same reason as [`flush`].
async fn shutdown(provider: SdkTracerProvider) {
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test]
async fn provider_exports_parent_linked_spans_with_the_service_name() {
    let (receiver, addr) = Receiver::start().await;
    let provider = exporting_provider(addr);
    let tracer = provider.tracer("bff-tests");

    let root = tracer.start("http.request");
    let cx = opentelemetry::Context::current_with_span(root);
    let mut child = tracer.start_with_context("upstream.call", &cx);
    child.set_attribute(KeyValue::new("backend", "top10"));
    child.end();
    cx.span().end();
    flush(&provider).await;

    let spans = receiver.wait_for(2, WAIT).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let root = by_name(&spans, "http.request");
    let child = by_name(&spans, "upstream.call");
    assert_eq!(root.trace_id.len(), 32);
    assert_ne!(root.trace_id, "0".repeat(32));
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(child.parent_span_id, root.span_id);
    assert_eq!(root.parent_span_id, "");
    assert_eq!(child.attributes["backend"], "top10");
    for span in &spans {
        assert_eq!(span.resource["service.name"], "bff-test");
    }
    shutdown(provider).await;
}

#[tokio::test]
async fn tracing_spans_arrive_through_tracing_opentelemetry() {
    let (receiver, addr) = Receiver::start().await;
    let provider = exporting_provider(addr);
    // Only this file's spans: tonic/h2/hyper share the thread and would otherwise be exported
    // too (including spans of the export itself).
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bff-tests"))
        .with_filter(Targets::new().with_target(module_path!(), tracing::Level::TRACE));
    let subscriber = tracing_subscriber::registry().with(layer);

    {
        let _default = tracing::subscriber::set_default(subscriber);
        let request = tracing::info_span!("http.request");
        let _entered = request.enter();
        // Exported when closed: the child on leaving this block, the root right after.
        let _call = tracing::info_span!("upstream.call", backend = "catalog").entered();
    }
    flush(&provider).await;

    let spans = receiver.wait_for(2, WAIT).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let root = by_name(&spans, "http.request");
    let child = by_name(&spans, "upstream.call");
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(child.parent_span_id, root.span_id);
    assert_eq!(root.parent_span_id, "");
    assert_eq!(child.attributes["backend"], "catalog");
    assert_eq!(child.resource["service.name"], "bff-test");
    shutdown(provider).await;
}

#[tokio::test]
async fn local_provider_mints_ids_without_an_exporter() {
    let provider = otel::local_provider("bff-test");
    let span = provider.tracer("bff-tests").start("http.request");
    let context = span.span_context().clone();
    assert!(context.is_valid());
    assert!(context.is_sampled());
    drop(span);
    // Nothing to export to: flushing and shutting down must still succeed (no exporter errors).
    flush(&provider).await;
    shutdown(provider).await;
}

#[test]
fn propagator_speaks_w3c_trace_context() {
    otel::install_propagator();
    let provider = otel::local_provider("bff-test");
    let span = provider.tracer("bff-tests").start("http.request");
    let trace_id = span.span_context().trace_id();
    let cx = opentelemetry::Context::current_with_span(span);
    let mut headers = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    let traceparent = &headers["traceparent"];
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
}

/// One homepage through a real BFF → the request span with a child span per backend call, all
/// on the trace id the response names in `x-trace-id`.
#[tokio::test]
async fn a_homepage_exports_a_request_span_with_a_child_per_backend_call() {
    use bff_fixtures::{FixtureOptions, Fixtures};
    use shared::config::{BackendsSettings, Settings};

    let (receiver, addr) = Receiver::start().await;
    let provider = exporting_provider(addr);
    // Only the BFF core's spans: the fixtures, tonic, h2 and hyper share this thread.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bff"))
        .with_filter(Targets::new().with_target("shared", tracing::Level::INFO));
    // A current-thread runtime (tokio::test's default) runs every task on this thread, so a
    // thread-default subscriber sees the server's spans too.
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let fixtures = Fixtures::start(FixtureOptions::default()).await.unwrap();
    let surface = bff_web::surface();
    let mut settings = Settings::defaults(&(surface.defaults)());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.backends = BackendsSettings::at(|b| fixtures.url(shared::demo::fixture_backend(b)));
    settings.auth.hs256_secret = Some(shared::config::Secret::new("otlp-test-secret-0123456789"));
    let token = shared::auth::TokenSigner::new(b"otlp-test-secret-0123456789", None, None)
        .sign("u1", 600)
        .unwrap();
    let app = shared::Application::build(settings, &surface, shared::StartOptions::default())
        .await
        .unwrap();
    let bff = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let resp = reqwest::Client::new()
        .post(format!("http://{bff}/graphql"))
        .header("content-type", "application/json")
        .bearer_auth(token)
        .json(&serde_json::json!({ "query": "{ homepage(region: \"US\") { rows { kind } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let trace_id = resp.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let _ = stop.send(());
    flush(&provider).await;

    // Request + operation + 7 backend calls at least (plus cache loads).
    let spans = receiver.wait_for(9, WAIT).await;
    let request = spans
        .iter()
        .find(|s| s.name == "POST /graphql")
        .expect("request span");
    assert_eq!(request.trace_id, trace_id);
    assert_eq!(
        request.parent_span_id, "",
        "the request span is the root of a new trace"
    );
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let descends_from_request = |s: &ReceivedSpan| {
        let mut cur = s;
        for _ in 0..16 {
            if cur.span_id == request.span_id {
                return true;
            }
            match by_id.get(cur.parent_span_id.as_str()) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    let calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attributes.contains_key("backend"))
        .collect();
    let mut backends: Vec<&str> = calls
        .iter()
        .map(|s| s.attributes["backend"].as_str())
        .collect();
    backends.sort_unstable();
    backends.dedup();
    assert_eq!(
        backends,
        [
            "catalog",
            "continue_watching",
            "my_list",
            "new_releases",
            "profile",
            "recommendations",
            "top10"
        ],
        "{spans:#?}"
    );
    for call in calls {
        assert_eq!(call.trace_id, trace_id);
        assert!(
            descends_from_request(call),
            "{} is not under the request span",
            call.name
        );
        assert_eq!(call.attributes["outcome"], "ok");
    }
    shutdown(provider).await;
}
