//! Telemetry: logging set-up, W3C trace context and request ids ([`trace`]), the per-request
//! observation middleware (one span and one access-log line per request), and — when configured —
//! OpenTelemetry export.
//!
//! Logs are human-readable by default, JSON with `log.format = "json"`; the filter comes from
//! `RUST_LOG` when set, else `log.level`.

pub mod metrics;
pub mod otel;
pub mod trace;

use std::sync::Arc;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

/// What the observation middleware learned about a request, for handlers further in.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The trace the request belongs to.
    pub trace: trace::TraceContext,
    /// The request id (client's or generated).
    pub request_id: Arc<str>,
}

tokio::task_local! {
    /// The trace of the request this task serves (set by the observation middleware).
    static CURRENT: Arc<RequestTrace>;
}

/// Runs `fut` as part of the request traced by `trace`.
pub(crate) async fn scope<F: std::future::Future>(trace: Arc<RequestTrace>, fut: F) -> F::Output {
    CURRENT.scope(trace, fut).await
}

/// The trace of the request the current task serves, if any.
pub fn current() -> Option<Arc<RequestTrace>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes spans not yet exported.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export. Blocking work runs off the async threads, as the SDK needs.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown() {
                    tracing::warn!(error = %e, "span export did not shut down cleanly");
                }
            })
            .await;
        }
    }
}

/// Installs the global subscriber once (later calls — tests — keep the first): the log filter,
/// text or JSON log lines, and an OpenTelemetry layer. Spans are exported over OTLP when
/// `telemetry.otlp` or the standard `OTEL_EXPORTER_OTLP_*` variables ask for it; otherwise a local
/// provider still gives every span real ids, so trace ids propagate to backends and logs.
pub fn init(
    log: &LogSettings,
    otlp: &otel::OtlpSettings,
    service: &str,
) -> Result<Telemetry, otel::OtelError> {
    use opentelemetry::trace::TracerProvider as _;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let exporting = otel::wanted(otlp, &|k| std::env::var(k).ok());
    let provider = if exporting {
        otel::provider(otlp, service)?
    } else {
        otel::local_provider(service)
    };
    otel::install_propagator();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bff"));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match log.format {
        // Colour only for a terminal: escape codes in a log file or collector are noise.
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry
                .with(fmt::layer().with_target(false).with_ansi(ansi))
                .try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
    };
    if installed.is_err() {
        return Ok(Telemetry { provider: None });
    }
    if exporting {
        tracing::info!(service, "exporting spans over OTLP");
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Joins `span` to the request's trace: with an OpenTelemetry layer installed, a client-supplied
/// parent becomes the span's remote parent, and a new trace takes the span's own trace id.
pub(crate) fn link(span: &tracing::Span, mut trace: trace::TraceContext) -> trace::TraceContext {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if let Some(parent) = trace.parent_span_id {
        let flags = if trace.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = trace
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            flags,
            true,
            state,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    } else {
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() {
            trace.trace_id = own.trace_id().to_bytes();
        }
    }
    trace
}

/// The OpenTelemetry context of the current tracing span: (trace id, span id, sampled), when an
/// OpenTelemetry layer is installed and the span has one.
pub(crate) fn current_otel_span() -> Option<([u8; 16], [u8; 8], bool)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        (
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.is_sampled(),
        )
    })
}
