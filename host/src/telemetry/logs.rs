//! Guest output as OpenTelemetry logs. Every line a guest writes to stdout or
//! stderr is a log record carrying the component id, the stream and the trace
//! and span ids of the request that wrote it, exported over OTLP when an
//! endpoint is configured by the standard `OTEL_*` variables.
//!
//! Without an endpoint there is no logger and no cost. Export is batched on
//! the SDK's own thread with a bounded queue; records an export fails to
//! deliver are counted in `gantry_telemetry_dropped_total{signal="logs"}`.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogger, SdkLoggerProvider};

use super::metrics::Counter;
use super::otlp_env::{otlp_configured, resource};

/// The OTLP log exporter the `OTEL_*` variables ask for, TLS as for traces.
fn log_exporter() -> anyhow::Result<opentelemetry_otlp::LogExporter> {
    use super::otlp_env::{Protocol, blocking_http_client, grpc_endpoint, grpc_tls, protocol};
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let builder = opentelemetry_otlp::LogExporter::builder();
    let built = match protocol("LOGS")? {
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_http_client(blocking_http_client("LOGS")?)
            .build(),
        Protocol::Grpc => match grpc_tls("LOGS", &grpc_endpoint("LOGS"))? {
            Some(tls) => builder.with_tonic().with_tls_config(tls).build(),
            None => builder.with_tonic().build(),
        },
    };
    built.map_err(|e| anyhow::anyhow!("cannot build the OTLP log exporter: {e}"))
}

/// The guest-log pipeline: present only when logs are exported.
pub struct GuestLogs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

impl GuestLogs {
    /// Builds the OTLP log pipeline if `OTEL_EXPORTER_OTLP[_LOGS]_ENDPOINT` is
    /// set (and the SDK is not disabled); `None` otherwise.
    pub fn init(dropped: Arc<Counter>) -> anyhow::Result<Option<GuestLogs>> {
        if !otlp_configured("LOGS") {
            return Ok(None);
        }
        let exporter = log_exporter()?;
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource())
            .with_batch_exporter(CountingLogExporter {
                inner: exporter,
                dropped,
            })
            .build();
        let logger = provider.logger("gantry.guest");
        Ok(Some(GuestLogs { provider, logger }))
    }

    /// Emits one line a guest wrote to `stream` (stdout or stderr).
    pub fn emit_output(
        &self,
        component: &str,
        stream: &'static str,
        line: &str,
        span: &SpanContext,
    ) {
        let severity = if stream == "stderr" {
            Severity::Warn
        } else {
            Severity::Info
        };
        let cx = span
            .is_valid()
            .then(|| (span.trace_id(), span.span_id(), span.trace_flags()));
        self.emit(component, line, severity, Some(stream), cx);
    }

    /// Emits a record a guest made through `wasi:otel/logs`.
    pub fn emit_record(
        &self,
        component: &str,
        severity_text: &str,
        body: &str,
        cx: Option<(TraceId, SpanId, TraceFlags)>,
    ) {
        self.emit(component, body, parse_severity(severity_text), None, cx);
    }

    fn emit(
        &self,
        component: &str,
        body: &str,
        severity: Severity,
        stream: Option<&'static str>,
        cx: Option<(TraceId, SpanId, TraceFlags)>,
    ) {
        let mut record = self.logger.create_log_record();
        let now = SystemTime::now();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        record.set_severity_number(severity);
        record.set_severity_text(severity.name());
        record.set_body(AnyValue::from(body.to_string()));
        record.add_attribute("gantry.component.id", component.to_string());
        if let Some(stream) = stream {
            // Semantic conventions: which standard stream the line came from.
            record.add_attribute("log.iostream", stream);
        }
        if let Some((trace_id, span_id, flags)) = cx {
            record.set_trace_context(trace_id, span_id, Some(flags));
        }
        self.logger.emit(record);
    }

    /// Flushes what is queued and stops export.
    pub fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// A guest's severity text (`info`, `WARN`, `error`, ...) as a severity.
pub fn parse_severity(text: &str) -> Severity {
    match text.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Severity::Trace,
        "DEBUG" => Severity::Debug,
        "WARN" | "WARNING" => Severity::Warn,
        "ERROR" => Severity::Error,
        "FATAL" | "CRITICAL" => Severity::Fatal,
        _ => Severity::Info,
    }
}

/// Counts the records an export failed to deliver.
#[derive(Debug)]
struct CountingLogExporter<E> {
    inner: E,
    dropped: Arc<Counter>,
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped.add(n);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities() {
        assert_eq!(parse_severity("warn"), Severity::Warn);
        assert_eq!(parse_severity(" Error "), Severity::Error);
        assert_eq!(parse_severity("debug"), Severity::Debug);
        assert_eq!(parse_severity("whatever"), Severity::Info);
    }
}
