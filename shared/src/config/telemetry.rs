//! Observability settings: log output (`log.*`), Prometheus metrics (`metrics.*`) and OTLP trace
//! export (`telemetry.otlp.*`). Only the settings live here; setting them up is
//! `crate::telemetry`'s.

use serde::{Deserialize, Serialize};

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Filter directive (`info`, `shared=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Prometheus metrics (`metrics.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve `/metrics` at all (on the admin listener when there is one, else the public one).
    pub enabled: bool,
    /// Most distinct GraphQL operation names given their own series; later names count as `other`.
    pub max_operation_names: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_operation_names: 100,
        }
    }
}

/// Trace export (`telemetry.*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OTLP export (off unless enabled here or by `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp: OtlpSettings,
}

/// OTLP trace export settings (`telemetry.otlp` in the config tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSettings {
    /// Export spans. Also switched on by the standard endpoint variables (see [`wanted`]).
    pub enabled: bool,
    /// Collector gRPC endpoint, e.g. `http://otel-collector:4317`. `None` leaves it to
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else the SDK default
    /// (`http://localhost:4317`).
    pub endpoint: Option<String>,
    /// `service.name` of the exported resource. `None` → `OTEL_SERVICE_NAME`, else the binary's
    /// own name.
    pub service_name: Option<String>,
    /// Fraction of new root traces recorded, `0.0..=1.0`. Requests that arrive with a sampled
    /// `traceparent` follow the caller's decision instead, so a trace is never half-exported.
    pub sample_ratio: f64,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
        }
    }
}
