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

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
    TracerProvider as _,
};
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
        if exporting && super::otlp_traces::applies() {
            builder = builder.with_batch_exporter(CountingExporter {
                inner: super::otlp_traces::HttpSpanExporter::from_env()?,
                dropped,
            });
        } else if exporting {
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
        // Most requests carry none of them: skip the propagators' lookups.
        if !headers.contains_key(TRACEPARENT) && !headers.contains_key(BAGGAGE) {
            return Context::new();
        }
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Writes `cx` as `traceparent`/`tracestate`/`baggage` into `headers`,
    /// replacing whatever was there. An empty `tracestate` is left out
    /// (W3C: a vendor with nothing to say sends no `tracestate`).
    pub fn inject(&self, cx: &Context, headers: &mut http::HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            headers.insert(TRACEPARENT, traceparent(sc));
            // Most requests carry no tracestate: skip rendering an empty one.
            if *sc.trace_state() != TraceState::NONE {
                let state = sc.trace_state().header();
                if !state.is_empty()
                    && let Ok(v) = http::HeaderValue::from_str(&state)
                {
                    headers.insert(TRACESTATE, v);
                }
            }
        }
        if !cx.baggage().is_empty() {
            BaggagePropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
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

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");

/// `traceparent` for a valid span context: version 00, trace id, parent id
/// and the sampled flag, in lowercase hex.
fn traceparent(sc: &SpanContext) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(0, &[0]);
    put(3, &sc.trace_id().to_bytes());
    put(36, &sc.span_id().to_bytes());
    put(
        53,
        &[sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()],
    );
    out[2] = b'-';
    out[35] = b'-';
    out[52] = b'-';
    // Only hex digits and dashes: always a valid header value.
    http::HeaderValue::from_bytes(&out).unwrap_or_else(|_| http::HeaderValue::from_static(""))
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    fn context(flags: TraceFlags, state: TraceState) -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            flags,
            true,
            state,
        );
        Context::new().with_remote_span_context(sc)
    }

    fn propagated(cx: &Context) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        Tracing::disabled().inject(cx, &mut h);
        h
    }

    #[test]
    fn inject_writes_what_the_w3c_propagator_writes() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let cx = context(flags, TraceState::default());
            let mut reference = http::HeaderMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut reference));
            let h = propagated(&cx);
            assert_eq!(h.get(TRACEPARENT), reference.get(TRACEPARENT));
            // The reference writes an empty tracestate; it is left out here.
            assert!(h.get(TRACESTATE).is_none());
        }
        let h = propagated(&context(TraceFlags::SAMPLED, TraceState::default()));
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn inject_keeps_tracestate_and_baggage_and_replaces_old_headers() {
        let state = TraceState::from_key_value([("vendor", "abc")]).unwrap_or_default();
        let cx = context(TraceFlags::SAMPLED, state).with_baggage([KeyValue::new("user", "linus")]);
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static("stale"));
        h.insert(TRACESTATE, http::HeaderValue::from_static("stale=1"));
        Tracing::disabled().inject(&cx, &mut h);
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(h[TRACESTATE], "vendor=abc");
        assert_eq!(h[BAGGAGE], "user=linus");
        // An invalid context removes what was there and writes nothing.
        Tracing::disabled().inject(&Context::new(), &mut h);
        assert!(h.get(TRACEPARENT).is_none() && h.get(TRACESTATE).is_none());
    }

    #[test]
    fn extract_round_trips_and_is_empty_without_headers() {
        let t = Tracing::disabled();
        assert!(
            !t.extract(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
        let cx = context(TraceFlags::SAMPLED, TraceState::default())
            .with_baggage([KeyValue::new("k", "v")]);
        let back = t.extract(&propagated(&cx));
        let sc = back.span().span_context().clone();
        assert_eq!(sc.trace_id(), cx.span().span_context().trace_id());
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            back.baggage().get("k").map(|v| v.as_str().to_string()),
            Some("v".into())
        );
    }
}
