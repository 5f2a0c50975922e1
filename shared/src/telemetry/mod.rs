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
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if let Some(parent) = &trace.parent {
        let _ =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.clone()));
    } else {
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() {
            trace.trace_id = own.trace_id();
        }
    }
    trace
}

/// The OpenTelemetry span context of the current tracing span, when an OpenTelemetry layer is
/// installed and the span has one.
pub(crate) fn current_otel_span() -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;

    use super::*;
    use trace::{TRACEPARENT, TRACESTATE, TraceContext};

    /// Runs `f` with an OpenTelemetry layer installed (for this thread only), as `init` does.
    fn with_otel<R>(f: impl FnOnce() -> R) -> R {
        let provider = otel::local_provider("test");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_client_parent_is_continued_and_backends_see_the_bffs_own_span() {
        with_otel(|| {
            let mut h = http::HeaderMap::new();
            h.insert(
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            h.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
            let span = tracing::info_span!("http.request");
            let t = link(&span, TraceContext::from_headers(&h));
            assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let _entered = span.enter();
            let own = current_otel_span().unwrap();
            assert_eq!(
                own.trace_id(),
                t.trace_id,
                "the span joined the client's trace"
            );
            assert_ne!(own.span_id().to_string(), "00f067aa0ba902b7");
            let out = t.outgoing();
            assert_eq!(
                out[TRACEPARENT],
                format!("00-{}-{}-01", t.trace_id_hex(), own.span_id()).as_str()
            );
            assert_eq!(out[TRACESTATE], "congo=t61rcWkgMzE");
        });
    }

    #[test]
    fn a_new_trace_takes_the_spans_own_trace_id() {
        with_otel(|| {
            let span = tracing::info_span!("http.request");
            let root = TraceContext::new_root();
            let t = link(&span, root.clone());
            let _entered = span.enter();
            let own = current_otel_span().unwrap();
            assert_eq!(t.trace_id, own.trace_id());
            assert_ne!(t.trace_id, root.trace_id);
            assert_eq!(
                t.outgoing()[TRACEPARENT],
                format!("00-{}-{}-01", t.trace_id_hex(), own.span_id()).as_str()
            );
        });
    }
}
