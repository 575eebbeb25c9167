//! Traces: W3C trace context in and out, the server span of each request, the
//! client span of each outbound call, and OTLP export configured only by the
//! standard `OTEL_*` variables.
//!
//! Without an OTLP endpoint nothing is exported and no exporter exists; spans
//! still get ids so that trace context flows from the caller through the guest
//! to the services it calls. Export never blocks a request: spans go through
//! the SDK's bounded batch queue, and spans an export fails to deliver are
//! counted in `gantry_telemetry_dropped_total{signal="traces"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

/// The process's tracer and propagator.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TextMapCompositePropagator,
    /// Whether spans leave the process (an OTLP endpoint is configured).
    pub exporting: bool,
    /// Guest stdout/stderr as OTLP logs, when logs are exported.
    pub guest_logs: Option<super::logs::GuestLogs>,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// `OTEL_SDK_DISABLED=true` turns every exporter off.
pub fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Is an OTLP endpoint configured for `signal` (`TRACES`, `METRICS`, `LOGS`),
/// and not turned off by `OTEL_SDK_DISABLED` or `OTEL_<SIGNAL>_EXPORTER=none`?
pub fn otlp_configured(signal: &str) -> bool {
    let off = std::env::var(format!("OTEL_{signal}_EXPORTER"))
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !sdk_disabled()
        && !off
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

pub fn resource() -> opentelemetry_sdk::Resource {
    let mut b = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        b = b.with_service_name("gantry");
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Tracing {
    pub fn init(metrics: &super::metrics::Metrics) -> anyhow::Result<Tracing> {
        let dropped = metrics.dropped_spans.clone();
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_id_generator(crate::capabilities::otel::GuestAwareIds::default());
        let exporting = otlp_configured("TRACES");
        if exporting {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot build the OTLP trace exporter: {e}"))?;
            builder = builder.with_batch_exporter(CountingExporter {
                inner: exporter,
                dropped,
            });
        }
        let provider = builder.build();
        let tracer = provider.tracer("gantry");
        Ok(Tracing {
            provider,
            tracer,
            propagator: TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
            exporting,
            guest_logs: super::logs::GuestLogs::init(metrics.telemetry_dropped.with(&["logs"]))?,
        })
    }

    /// Tracing that exports nothing (for `gantry check` and tests).
    pub fn disabled() -> Tracing {
        let provider = SdkTracerProvider::builder()
            .with_id_generator(crate::capabilities::otel::GuestAwareIds::default())
            .build();
        let tracer = provider.tracer("gantry");
        Tracing {
            provider,
            tracer,
            propagator: TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
            exporting: false,
            guest_logs: None,
        }
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The caller's context from `traceparent`, `tracestate` and `baggage`.
    pub fn extract(&self, headers: &http::HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Writes `cx` as `traceparent`/`tracestate`/`baggage` into `headers`,
    /// replacing whatever was there.
    pub fn inject(&self, cx: &Context, headers: &mut http::HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Starts the server span of one request, child of the caller's context.
    pub fn server_span(&self, parent: &Context, name: String, attrs: Vec<KeyValue>) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Starts a client span for an outbound call, child of `parent`.
    pub fn client_span(&self, parent: &Context, name: String, attrs: Vec<KeyValue>) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Flushes and stops export (bounded by the SDK's own timeouts).
    pub fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
        if let Some(logs) = &self.guest_logs {
            logs.shutdown();
        }
    }
}

/// Ends the span in `cx` with an HTTP status.
pub fn end_http_span(cx: &Context, status: u16, server_side: bool) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    // Server spans are errors on 5xx only; client spans on 4xx too (semconv).
    if status >= 500 || (!server_side && status >= 400) {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
}

/// Ends the span in `cx` as failed with `message`.
pub fn end_failed_span(cx: &Context, error_type: &str, message: String) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
    span.set_status(Status::error(message));
    span.end();
}

/// Counts the spans an export failed to deliver.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    dropped: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
