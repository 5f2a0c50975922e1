//! OpenTelemetry trace export over OTLP/gRPC: settings, the decision whether to export, and the
//! tracer providers (an exporting one and a local one that only mints ids).
//!
//! The standard `OTEL_*` environment variables work as in every other OpenTelemetry SDK, so an
//! operator can point the BFF at a collector without touching its config file; an endpoint set in
//! the config wins over them.
//!
//! # Runtime notes
//! - [`provider`] must be called inside a Tokio runtime: the gRPC channel spawns its connection
//!   task there (it is checked and reported as [`OtelError::NoRuntime`] rather than panicking).
//! - The batch processor runs on its own thread, and `force_flush` / `shutdown` on the provider
//!   block until the export finished; call them from `spawn_blocking` (or outside the runtime),
//!   since the export itself needs the runtime's threads to make progress.

use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};

/// Endpoint for all OTLP signals (standard variable).
const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Endpoint for traces only (standard variable, wins over [`ENV_ENDPOINT`] in the exporter).
const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `"true"` switches the SDK off whatever else is set (standard variable).
const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// The service name when the config does not give one (standard variable).
const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

pub use crate::config::OtlpSettings;

/// Why an exporting provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// `sample_ratio` outside `0.0..=1.0` (or NaN): rejected rather than silently clamped.
    #[error("telemetry.otlp.sample_ratio must be within 0.0..=1.0, got {0}")]
    InvalidSampleRatio(f64),
    /// Called outside a Tokio runtime; the gRPC channel needs one to run its connection task.
    #[error("the OTLP exporter must be built inside a Tokio runtime")]
    NoRuntime,
    /// The exporter rejected its configuration (bad endpoint URI, headers, ...).
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Export is on when `enabled`, or when the standard env vars `OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` are set, unless `OTEL_SDK_DISABLED` is `"true"`.
///
/// `env` is the environment lookup (`|k| std::env::var(k).ok()` in production) so tests need not
/// mutate the process environment.
pub(crate) fn wanted(settings: &OtlpSettings, env: &dyn Fn(&str) -> Option<String>) -> bool {
    // The spec makes OTEL_SDK_DISABLED a kill switch for every signal, so it also beats the config:
    // an operator can silence a misbehaving exporter without a config change.
    if env(ENV_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    let set = |key: &str| env(key).is_some_and(|v| !v.trim().is_empty());
    settings.enabled || set(ENV_ENDPOINT) || set(ENV_TRACES_ENDPOINT)
}

/// A tracer provider exporting over OTLP/gRPC with a batch processor; resource
/// `service.name` from the settings, `OTEL_SERVICE_NAME` or `default_service`; sampler
/// `ParentBased(TraceIdRatioBased(sample_ratio))`.
///
/// Standard `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, timeout, compression) are read
/// by the exporter builder itself; `settings.endpoint`, when set, wins over them.
pub fn provider(
    settings: &OtlpSettings,
    default_service: &str,
) -> Result<SdkTracerProvider, OtelError> {
    let ratio = settings.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(OtelError::InvalidSampleRatio(ratio));
    }
    // `connect_lazy` inside the exporter would panic without a runtime; fail like any config error.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(OtelError::NoRuntime);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = settings
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    let name = service_name(settings, default_service, &|k| std::env::var(k).ok());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource(name))
        .build())
}

/// A provider with no exporter: spans still get real trace/span ids (so trace ids propagate to
/// backends and appear in logs) but nothing leaves the process.
pub fn local_provider(default_service: &str) -> SdkTracerProvider {
    let name = service_name(&OtlpSettings::default(), default_service, &|k| {
        std::env::var(k).ok()
    });
    // Default sampler (parent-based, always on): every span is recording, so ids and
    // attributes are there for the log layer even though no processor ships them anywhere.
    SdkTracerProvider::builder()
        .with_resource(resource(name))
        .build()
}

/// Sets the global text-map propagator to W3C trace context (`traceparent` / `tracestate`),
/// the format the BFF speaks to clients and backends.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

/// Config first, then `OTEL_SERVICE_NAME`, then the binary's name; blanks count as unset so an
/// empty variable in a deployment manifest does not produce a nameless service.
fn service_name(
    settings: &OtlpSettings,
    default_service: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    settings
        .service_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| env(ENV_SERVICE_NAME).filter(|n| !n.trim().is_empty()))
        .unwrap_or_else(|| default_service.to_owned())
}

/// The SDK's detected resource (SDK info, `OTEL_RESOURCE_ATTRIBUTES`) with our `service.name`
/// on top, so operators can still add attributes such as `deployment.environment` by env.
fn resource(service_name: String) -> Resource {
    Resource::builder().with_service_name(service_name).build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn wanted_by_config_or_standard_env_and_killed_by_sdk_disabled() {
        let off = OtlpSettings::default();
        let on = OtlpSettings {
            enabled: true,
            ..OtlpSettings::default()
        };
        assert!(!wanted(&off, &env_of(&[])));
        assert!(wanted(&on, &env_of(&[])));
        assert!(wanted(&off, &env_of(&[(ENV_ENDPOINT, "http://c:4317")])));
        assert!(wanted(
            &off,
            &env_of(&[(ENV_TRACES_ENDPOINT, "http://c:4317")])
        ));
        assert!(!wanted(&off, &env_of(&[(ENV_ENDPOINT, " ")])));
        assert!(!wanted(
            &on,
            &env_of(&[(ENV_SDK_DISABLED, "TRUE"), (ENV_ENDPOINT, "http://c:4317")])
        ));
        assert!(wanted(&on, &env_of(&[(ENV_SDK_DISABLED, "false")])));
    }

    #[test]
    fn service_name_prefers_config_then_env_then_default() {
        let named = OtlpSettings {
            service_name: Some("from-config".into()),
            ..OtlpSettings::default()
        };
        let env = env_of(&[(ENV_SERVICE_NAME, "from-env")]);
        assert_eq!(service_name(&named, "bin", &env), "from-config");
        assert_eq!(
            service_name(&OtlpSettings::default(), "bin", &env),
            "from-env"
        );
        assert_eq!(
            service_name(&OtlpSettings::default(), "bin", &env_of(&[])),
            "bin"
        );
    }

    #[test]
    fn settings_deserialize_with_defaults_and_reject_unknown_fields() {
        let s: OtlpSettings = serde_json::from_str(r#"{"enabled":true}"#).unwrap();
        assert_eq!(
            s,
            OtlpSettings {
                enabled: true,
                ..OtlpSettings::default()
            }
        );
        assert!(serde_json::from_str::<OtlpSettings>(r#"{"endpoit":"x"}"#).is_err());
    }

    #[test]
    fn bad_sample_ratio_is_an_error() {
        let s = OtlpSettings {
            sample_ratio: 1.5,
            ..OtlpSettings::default()
        };
        assert!(matches!(
            provider(&s, "bin"),
            Err(OtelError::InvalidSampleRatio(_))
        ));
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let s = OtlpSettings {
            enabled: true,
            ..OtlpSettings::default()
        };
        assert!(matches!(provider(&s, "bin"), Err(OtelError::NoRuntime)));
    }
}
