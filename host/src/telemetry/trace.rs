//! Traces: W3C trace context in and out, the server span of each request, the
//! client span of each outbound call, and OTLP export configured only by the
//! standard `OTEL_*` variables.
//!
//! Without an OTLP endpoint nothing is exported and no exporter exists; spans
//! still get ids so that trace context flows from the caller through the guest
//! to the services it calls. Every span, the server's, the clients' and the
//! guests', is the OpenTelemetry SDK's: its sampler and span limits (the
//! `OTEL_TRACES_SAMPLER*` and `OTEL_SPAN_*` variables), its batch processor
//! (`OTEL_BSP_*`) and `opentelemetry-otlp` (http/protobuf or gRPC, as
//! `OTEL_EXPORTER_OTLP_*` say). Export never blocks a request, and spans an
//! export fails to deliver are counted in
//! `gantry_telemetry_dropped_total{signal="traces"}`.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::otlp_env::{otlp_configured, resource};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

thread_local! {
    /// The span id the next span built on this thread must have.
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Span ids: the guest's own when a guest span is being recorded, random
/// otherwise.
#[derive(Debug, Default)]
pub struct GuestAwareIds(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for GuestAwareIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }
    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(|c| c.take())
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Builds a span with `id` as its span id (a guest's span, which keeps the
/// id the guest gave it).
pub fn with_span_id<R>(id: SpanId, build: impl FnOnce() -> R) -> R {
    NEXT_SPAN_ID.with(|c| c.set(Some(id)));
    let built = build();
    NEXT_SPAN_ID.with(|c| c.set(None));
    built
}

/// The process's tracer and propagator.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TextMapCompositePropagator,
    /// Guest stdout/stderr as OTLP logs, when logs are exported.
    pub guest_logs: Option<super::logs::GuestLogs>,
    /// Whether spans leave the process: only then are server spans given
    /// their attributes.
    exporting: bool,
}

impl Tracing {
    pub fn init(metrics: &super::metrics::Metrics) -> anyhow::Result<Tracing> {
        let res = resource();
        let exporting = otlp_configured("TRACES");
        let processor = if exporting {
            check_http_endpoint()?;
            let mut exporter = CountingExporter {
                inner: span_exporter()?,
                dropped: metrics.dropped_spans.clone(),
            };
            exporter.set_resource(&res);
            Some(BatchSpanProcessor::builder(exporter).build())
        } else {
            None
        };
        let mut tracing = Tracing::build(res, processor);
        tracing.guest_logs =
            super::logs::GuestLogs::init(metrics.telemetry_dropped.with(&["logs"]))?;
        Ok(tracing)
    }

    /// Tracing that exports nothing (for `gantry check` and tests).
    pub fn disabled() -> Tracing {
        Tracing::build(resource(), None)
    }

    fn build(res: opentelemetry_sdk::Resource, processor: Option<BatchSpanProcessor>) -> Tracing {
        // Sampler and limits as the SDK reads them from the environment.
        let config = opentelemetry_sdk::trace::Config::default();
        let mut builder = SdkTracerProvider::builder()
            .with_resource(res)
            .with_sampler(config.sampler)
            .with_span_limits(config.span_limits)
            .with_id_generator(GuestAwareIds::default());
        let exporting = processor.is_some();
        if let Some(p) = processor {
            builder = builder.with_span_processor(p);
        }
        let provider = builder.build();
        let tracer = provider.tracer("gantry");
        Tracing {
            provider,
            tracer,
            propagator: TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
            guest_logs: None,
            exporting,
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
    /// Starts the server span of one request, child of the caller's context
    /// (the caller's trace, or a new one), and returns the caller's context
    /// with it as its span: what the guest, its logs and its outbound calls
    /// are children of. `attributes` is called only when spans are exported.
    pub fn server_span(
        &self,
        parent: &Context,
        name: String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        let mut builder = self.tracer.span_builder(name).with_kind(SpanKind::Server);
        if self.exporting {
            builder = builder.with_attributes(attributes());
        }
        parent.with_span(builder.start_with_context(&self.tracer, parent))
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

/// The OTLP span exporter the `OTEL_*` variables ask for, with TLS (the
/// system's roots and `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`) where the
/// endpoint is `https://`.
fn span_exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use super::otlp_env::{Protocol, blocking_http_client, grpc_endpoint, grpc_tls, protocol};
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match protocol("TRACES")? {
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_http_client(blocking_http_client("TRACES")?)
            .build(),
        Protocol::Grpc => match grpc_tls("TRACES", &grpc_endpoint("TRACES"))? {
            Some(tls) => builder.with_tonic().with_tls_config(tls).build(),
            None => builder.with_tonic().build(),
        },
    };
    built.map_err(|e| anyhow::anyhow!("cannot build the OTLP trace exporter: {e}"))
}

/// An `http/protobuf` trace endpoint that is not an http(s) URL is refused
/// at start, with the variable that gave it.
fn check_http_endpoint() -> anyhow::Result<()> {
    use super::otlp_env::{env_first, http_signal_url};
    let protocol = env_first(&[
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .unwrap_or_else(|| "http/protobuf".into());
    if protocol.starts_with("http") {
        http_signal_url(
            "TRACES",
            env_first(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]),
            env_first(&["OTEL_EXPORTER_OTLP_ENDPOINT"]),
        )?;
    }
    Ok(())
}

/// Ends the server span in `cx` with the response's status: an error on
/// 5xx (semconv for server spans).
pub fn end_server_span(cx: &Context, status: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
}

/// Ends the server span in `cx` as failed: the status the client got, the
/// kind of failure and its message.
pub fn end_failed_server_span(
    cx: &Context,
    status: u16,
    error_type: &'static str,
    message: String,
) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    span.set_attribute(KeyValue::new("error.type", error_type));
    span.set_status(Status::error(message));
    span.end();
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");

/// Writes `bytes` in lowercase hex into the start of `out`, as far as it
/// reaches.
fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.as_chunks_mut::<2>().0.iter_mut().zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// A trace or span id in lowercase hex, as its `Display` writes it, but in
/// one piece: `TraceId`'s own goes through `core::fmt`'s padded integer
/// formatting, 1.5k instructions for the `trace_id` that every request's
/// log span records (callgrind, `plain`).
pub struct HexId<const N: usize>(pub [u8; N]);

impl<const N: usize> std::fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Trace ids have 16 bytes, span ids 8.
        let mut out = [0u8; 32];
        let len = (2 * N).min(out.len());
        put_hex(&mut out[..len], &self.0);
        f.write_str(std::str::from_utf8(&out[..len]).map_err(|_| std::fmt::Error)?)
    }
}

/// `traceparent` for a valid span context: version 00, trace id, parent id
/// and the sampled flag, in lowercase hex.
fn traceparent(sc: &SpanContext) -> http::HeaderValue {
    let mut out = [0u8; 55];
    let mut put = |at: usize, bytes: &[u8]| put_hex(&mut out[at..], bytes);
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

/// Ends the client span in `cx` with the HTTP status the peer answered.
pub fn end_client_span(cx: &Context, status: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    // Client spans are errors on 4xx and 5xx (semconv).
    if status >= 400 {
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

    #[test]
    fn hex_ids_read_as_the_sdk_writes_them() {
        for hex in [
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00000000000000000000000000000001",
        ] {
            let id = TraceId::from_hex(hex).unwrap_or(TraceId::INVALID);
            assert_eq!(HexId(id.to_bytes()).to_string(), id.to_string());
            assert_eq!(HexId(id.to_bytes()).to_string(), hex);
        }
        let id = SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID);
        assert_eq!(HexId(id.to_bytes()).to_string(), id.to_string());
        assert_eq!(
            HexId(TraceId::INVALID.to_bytes()).to_string(),
            "0".repeat(32)
        );
    }

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
