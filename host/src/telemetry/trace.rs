//! Traces: W3C trace context in and out, the server span of each request, the
//! client span of each outbound call, and OTLP export configured only by the
//! standard `OTEL_*` variables.
//!
//! Without an OTLP endpoint nothing is exported and no exporter exists; spans
//! still get ids so that trace context flows from the caller through the guest
//! to the services it calls. Export never blocks a request: spans go through
//! the SDK's bounded batch queue, and spans an export fails to deliver are
//! counted in `gantry_telemetry_dropped_total{signal="traces"}`.
//!
//! The server span, one per request, is recorded by the host itself
//! ([`ServerSpan`]). The SDK's `Span` behind a `Context` costs a shared,
//! locked span, a sampler call through the tracer, a span processor round
//! and a copy into `SpanData` for every request; a span that one task owns
//! from start to end needs none of that. With the host's own `http/protobuf`
//! exporter (the default) its attributes are written as protobuf when they
//! are set and the span is written into the export queue's buffer when it
//! ends ([`super::span_queue`]); otherwise it is handed to the SDK's queue
//! as `SpanData`. Client spans and guest spans stay the SDK's.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator as _, RandomIdGenerator, SamplingDecision, SdkTracer,
    SdkTracerProvider, ShouldSample, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};

use super::otlp_traces::{Pb, RecordedSpan, Scalar, write_recorded};
use super::span_queue::SpanQueue;

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
    /// The sampler and span limits the SDK's tracer uses too, from the
    /// same `OTEL_TRACES_SAMPLER*` and `OTEL_SPAN_*` variables.
    sampler: Box<dyn ShouldSample>,
    max_attributes: usize,
    ids: RandomIdGenerator,
    /// Where ended server spans go, when spans are exported.
    sink: Option<Arc<Sink>>,
}

/// Where ended server spans go.
enum Sink {
    /// The SDK's queue, as `SpanData` of the `gantry` scope.
    Sdk {
        queue: Arc<BatchSpanProcessor>,
        scope: InstrumentationScope,
    },
    /// The host's queue of encoded spans.
    Encoded(Arc<SpanQueue>),
}

/// The batch queue, shared between the SDK's provider (client and guest
/// spans) and the server spans the host records itself.
#[derive(Debug)]
struct SharedQueue(Arc<BatchSpanProcessor>);

impl SpanProcessor for SharedQueue {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    // The resource is given to the exporter before the queue is built.
}

/// The instrumentation scope of the host's own spans, as `tracer("gantry")`
/// names it.
fn gantry_scope() -> InstrumentationScope {
    InstrumentationScope::builder("gantry").build()
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
        let res = resource();
        let exporting = otlp_configured("TRACES");
        let mut encoded = None;
        let queue = if exporting && super::otlp_traces::applies() {
            // Server spans have their own queue and connection; client and
            // guest spans go through the SDK's.
            let server = super::otlp_traces::HttpSpanExporter::from_env(&res)?;
            encoded = Some(SpanQueue::start(
                super::span_queue::Limits::from_env(),
                dropped.clone(),
                super::span_queue::Export {
                    resource: super::otlp_traces::resource_body(&res),
                    resource_schema: res.schema_url().unwrap_or_default().to_string(),
                    scope: gantry_scope(),
                    post: Box::new(move |body| server.send(body)),
                },
            )?);
            let exporter = CountingExporter {
                inner: super::otlp_traces::HttpSpanExporter::from_env(&res)?,
                dropped,
            };
            Some(BatchSpanProcessor::builder(exporter).build())
        } else if exporting {
            let mut exporter = CountingExporter {
                inner: opentelemetry_otlp::SpanExporter::builder()
                    .build()
                    .map_err(|e| anyhow::anyhow!("cannot build the OTLP trace exporter: {e}"))?,
                dropped,
            };
            exporter.set_resource(&res);
            Some(BatchSpanProcessor::builder(exporter).build())
        } else {
            None
        };
        let mut tracing = Tracing::build(res, queue.map(Arc::new), encoded);
        tracing.guest_logs =
            super::logs::GuestLogs::init(metrics.telemetry_dropped.with(&["logs"]))?;
        Ok(tracing)
    }

    /// Tracing that exports nothing (for `gantry check` and tests).
    pub fn disabled() -> Tracing {
        Tracing::build(resource(), None, None)
    }

    /// Server spans go to `encoded` when it is given, else to `queue`, which
    /// client and guest spans go to.
    fn build(
        res: opentelemetry_sdk::Resource,
        queue: Option<Arc<BatchSpanProcessor>>,
        encoded: Option<Arc<SpanQueue>>,
    ) -> Tracing {
        // Sampler and limits as the SDK reads them from the environment;
        // the provider is given the same sampler, so that server spans and
        // the SDK's spans decide alike.
        let config = opentelemetry_sdk::trace::Config::default();
        let sampler = config.sampler;
        let mut builder = SdkTracerProvider::builder()
            .with_resource(res)
            .with_sampler(sampler.clone())
            .with_span_limits(config.span_limits)
            .with_id_generator(GuestAwareIds::default());
        if let Some(q) = &queue {
            builder = builder.with_span_processor(SharedQueue(q.clone()));
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
            sampler,
            max_attributes: config.span_limits.max_attributes_per_span as usize,
            ids: RandomIdGenerator::default(),
            sink: match (encoded, queue) {
                (Some(q), _) => Some(Arc::new(Sink::Encoded(q))),
                (None, Some(queue)) => Some(Arc::new(Sink::Sdk {
                    queue,
                    scope: gantry_scope(),
                })),
                (None, None) => None,
            },
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

    /// Starts the server span of one request, child of the caller's context:
    /// the caller's trace (or a new one), a new span id, the sampler's
    /// decision. Its attributes are set through [`ServerSpan::attributes`]
    /// when it is recorded.
    ///
    /// The sampler is not shown the attributes, which are set after its
    /// decision: the samplers `OTEL_TRACES_SAMPLER` can name (`always_on`,
    /// `always_off`, `traceidratio` and their `parentbased_` forms) decide
    /// by the parent and the trace id alone.
    pub fn server_span(&self, parent: &Context, name: String) -> ServerSpan {
        let parent_span = parent.span();
        let psc = parent_span.span_context();
        let has_parent = parent.has_active_span() && psc.is_valid();
        let trace_id = if has_parent {
            psc.trace_id()
        } else {
            self.ids.new_trace_id()
        };
        let span_id = self.ids.new_span_id();
        let decision =
            self.sampler
                .should_sample(Some(parent), trace_id, &name, &SpanKind::Server, &[], &[]);
        let flags = psc
            .trace_flags()
            .with_sampled(decision.decision == SamplingDecision::RecordAndSample);
        let sc = SpanContext::new(trace_id, span_id, flags, false, decision.trace_state);
        let record = match (&self.sink, decision.decision) {
            (Some(sink), SamplingDecision::RecordOnly | SamplingDecision::RecordAndSample) => {
                let store = match **sink {
                    Sink::Sdk { .. } => Store::Values(Vec::with_capacity(14)),
                    Sink::Encoded(_) => Store::Encoded(Pb {
                        buf: Vec::with_capacity(768),
                    }),
                };
                let mut attributes = SpanAttributes {
                    store,
                    count: 0,
                    dropped: 0,
                    max: self.max_attributes,
                };
                for kv in decision.attributes {
                    attributes.value(kv);
                }
                Some(Recording {
                    sink: sink.clone(),
                    parent_span_id: if has_parent {
                        psc.span_id()
                    } else {
                        SpanId::INVALID
                    },
                    parent_is_remote: has_parent && psc.is_remote(),
                    name,
                    start: SystemTime::now(),
                    attributes,
                })
            }
            _ => None,
        };
        ServerSpan {
            cx: parent.with_remote_span_context(sc),
            record,
        }
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
        if let Some(sink) = &self.sink
            && let Sink::Encoded(queue) = &**sink
        {
            queue.shutdown(std::time::Duration::from_secs(5));
        }
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
        if let Some(logs) = &self.guest_logs {
            logs.shutdown();
        }
    }
}

/// The server span of one request, owned by the task that serves it.
/// Dropped before it was ended (the client went away), it is still
/// exported, without a status code, as the SDK's spans are.
pub struct ServerSpan {
    /// The caller's context (baggage included) with this span as its span:
    /// what the guest, its logs and its outbound calls are children of.
    pub cx: Context,
    /// What is exported when the span ends; `None` when it is not.
    record: Option<Recording>,
}

struct Recording {
    sink: Arc<Sink>,
    parent_span_id: SpanId,
    parent_is_remote: bool,
    name: String,
    start: SystemTime,
    attributes: SpanAttributes,
}

/// A recorded server span's attributes, within the span limit
/// (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`); those past it are counted.
pub struct SpanAttributes {
    store: Store,
    count: usize,
    dropped: u32,
    max: usize,
}

enum Store {
    /// For the SDK's queue.
    Values(Vec<KeyValue>),
    /// `Span` field 9, one entry per attribute, for the host's queue.
    Encoded(Pb),
}

/// Attributes that many server spans share (a route's, a component
/// version's, a connection's), encoded once where they are made rather than
/// on every request.
#[derive(Debug, Clone)]
pub struct FixedAttributes {
    /// `Span` field 9 entries, for the host's queue.
    encoded: Box<[u8]>,
    /// The same attributes, for the SDK's queue; their strings are shared,
    /// so a copy is a reference count.
    values: Box<[KeyValue]>,
}

impl FixedAttributes {
    pub fn new(values: Vec<KeyValue>) -> FixedAttributes {
        let mut pb = Pb::default();
        for kv in &values {
            pb.attribute_field(kv);
        }
        FixedAttributes {
            encoded: pb.buf.into_boxed_slice(),
            values: values.into_boxed_slice(),
        }
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> &[KeyValue] {
        &self.values
    }
}

impl SpanAttributes {
    /// Adds `fixed`, in its order: one copy of its bytes when all of it
    /// fits under the limit, else one by one up to the limit, the rest
    /// counted.
    pub fn fixed(&mut self, fixed: &FixedAttributes) {
        let n = fixed.values.len();
        if self.count + n <= self.max {
            self.count += n;
            match &mut self.store {
                Store::Values(v) => v.extend(fixed.values.iter().cloned()),
                Store::Encoded(pb) => pb.buf.extend_from_slice(&fixed.encoded),
            }
        } else {
            for kv in fixed.values.iter() {
                self.value(kv.clone());
            }
        }
    }

    /// Room for one more, or the drop counted.
    fn room(&mut self) -> bool {
        if self.count < self.max {
            self.count += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        if self.room() {
            match &mut self.store {
                Store::Values(v) => v.push(KeyValue::new(key, value.to_string())),
                Store::Encoded(pb) => pb.scalar_attribute(9, key, Scalar::Str(value)),
            }
        }
    }

    /// A string the caller has no further use for (kept as it is for the
    /// SDK's queue).
    pub fn string(&mut self, key: &'static str, value: String) {
        if self.room() {
            match &mut self.store {
                Store::Values(v) => v.push(KeyValue::new(key, value)),
                Store::Encoded(pb) => pb.scalar_attribute(9, key, Scalar::Str(&value)),
            }
        }
    }

    pub fn int(&mut self, key: &'static str, value: i64) {
        if self.room() {
            match &mut self.store {
                Store::Values(v) => v.push(KeyValue::new(key, value)),
                Store::Encoded(pb) => pb.scalar_attribute(9, key, Scalar::I64(value)),
            }
        }
    }

    fn value(&mut self, kv: KeyValue) {
        if self.room() {
            match &mut self.store {
                Store::Values(v) => v.push(kv),
                Store::Encoded(pb) => pb.attribute_field(&kv),
            }
        }
    }
}

impl ServerSpan {
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    pub fn is_sampled(&self) -> bool {
        self.cx.span().span_context().is_sampled()
    }

    /// Where the span's attributes are set: `None` when it is not recorded
    /// (not exported, or not sampled), so that nothing is made for it.
    pub fn attributes(&mut self) -> Option<&mut SpanAttributes> {
        self.record.as_mut().map(|r| &mut r.attributes)
    }

    /// Ends the span with the response's status: an error on 5xx (semconv
    /// for server spans).
    pub fn end_http(mut self, status: u16) {
        if let Some(mut r) = self.record.take() {
            r.attributes
                .int("http.response.status_code", i64::from(status));
            let st = if status >= 500 {
                Status::error(format!("HTTP {status}"))
            } else {
                Status::Unset
            };
            self.export(r, st);
        }
    }

    /// Ends the span as failed: the status the client got, the kind of
    /// failure and its message.
    pub fn end_failed(mut self, status: u16, error_type: &'static str, message: String) {
        if let Some(mut r) = self.record.take() {
            r.attributes
                .int("http.response.status_code", i64::from(status));
            r.attributes.str("error.type", error_type);
            self.export(r, Status::error(message));
        }
    }

    fn export(&self, r: Recording, status: Status) {
        let Recording {
            sink,
            parent_span_id,
            parent_is_remote,
            name,
            start,
            attributes,
        } = r;
        let span = self.cx.span();
        let context = span.span_context();
        let end = SystemTime::now();
        match (&*sink, attributes.store) {
            (Sink::Encoded(queue), Store::Encoded(attrs)) => queue.push(|pb| {
                write_recorded(
                    pb,
                    &RecordedSpan {
                        context,
                        parent_span_id,
                        parent_is_remote,
                        kind: SpanKind::Server,
                        name: &name,
                        start,
                        end,
                        attributes: &attrs.buf,
                        dropped_attributes: attributes.dropped,
                        status: &status,
                    },
                )
            }),
            (Sink::Sdk { queue, scope }, Store::Values(values)) => queue.on_end(SpanData {
                span_context: context.clone(),
                parent_span_id,
                parent_span_is_remote: parent_is_remote,
                span_kind: SpanKind::Server,
                name: Cow::Owned(name),
                start_time: start,
                end_time: end,
                attributes: values,
                dropped_attributes_count: attributes.dropped,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            }),
            // Each sink is given the store it takes (`server_span`).
            _ => {}
        }
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.export(r, Status::Unset);
        }
    }
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

    /// A tracing whose spans are kept: server spans in the host's encoded
    /// queue (`encoded`) or in the SDK's, client spans in the SDK's.
    struct Rig {
        t: Tracing,
        keep: crate::telemetry::KeepSpans,
        bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    fn rig(encoded: bool) -> Rig {
        let keep = crate::telemetry::KeepSpans::default();
        let queue = BatchSpanProcessor::builder(keep.clone()).build();
        let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sent = bodies.clone();
        let res = resource();
        let own = encoded.then(|| {
            SpanQueue::start(
                super::super::span_queue::Limits {
                    max_queue: 2048,
                    max_batch: 512,
                    delay: std::time::Duration::from_secs(3600),
                },
                Arc::default(),
                super::super::span_queue::Export {
                    resource: super::super::otlp_traces::resource_body(&res),
                    resource_schema: String::new(),
                    scope: gantry_scope(),
                    post: Box::new(move |body| {
                        if let Ok(mut b) = sent.lock() {
                            b.push(body.to_vec());
                        }
                        Ok(())
                    }),
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        });
        Rig {
            t: Tracing::build(res, Some(Arc::new(queue)), own),
            keep,
            bodies,
        }
    }

    /// Everything exported after shutdown, as the collector reads it: the
    /// encoded queue's bodies, and the SDK's spans through the same
    /// encoder; each span with its scope's name.
    fn exported(rig: &Rig) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        rig.t.shutdown();
        let mut bodies = rig.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        let kept = rig.keep.0.lock().map(|v| v.clone()).unwrap_or_default();
        let mut body = Vec::new();
        super::super::otlp_traces::encode_request(&[], "", &kept, &mut body);
        bodies.push(body);
        let mut out = Vec::new();
        for body in bodies {
            let req = ExportTraceServiceRequest::decode(&body[..])
                .unwrap_or_else(|e| panic!("undecodable body: {e}"));
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                    out.extend(ss.spans.into_iter().map(|s| (scope.clone(), s)));
                }
            }
        }
        out
    }

    /// A span's attributes as text.
    fn attrs(s: &opentelemetry_proto::tonic::trace::v1::Span) -> Vec<(String, String)> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        s.attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(V::StringValue(s)) => s.clone(),
                    Some(V::IntValue(i)) => i.to_string(),
                    Some(V::BoolValue(b)) => b.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    /// Server spans as the SDK's tracer would have recorded them, through
    /// either queue: the caller's trace and parent, a remote parent marked
    /// so, attributes in order within the span limit, an error status, the
    /// `gantry` scope the SDK's client spans have; one dropped unended is
    /// exported too.
    #[test]
    fn server_spans_are_exported_as_the_sdk_would_record_them() {
        for encoded in [false, true] {
            let mut rig = rig(encoded);
            let state = TraceState::from_key_value([("vendor", "abc")]).unwrap_or_default();
            let parent = context(TraceFlags::SAMPLED, state.clone())
                .with_baggage([KeyValue::new("tenant", "t1")]);
            let caller = parent.span().span_context().clone();

            let route = FixedAttributes::new(vec![
                KeyValue::new("http.route", Arc::<str>::from("/x")),
                KeyValue::new("url.scheme", "http"),
            ]);
            let mut span = rig.t.server_span(&parent, "GET /x".into());
            if let Some(a) = span.attributes() {
                a.str("http.request.method", "GET");
                a.fixed(&route);
            }
            let sc = span.cx.span().span_context().clone();
            assert_eq!(sc.trace_id(), caller.trace_id());
            assert_ne!(sc.span_id(), caller.span_id());
            assert!(sc.is_sampled() && !sc.is_remote());
            assert_eq!(sc.trace_state(), &state);
            assert_eq!(span.cx.baggage().len(), 1, "the caller's baggage is kept");
            // The SDK's client span under it: a local parent.
            let client = rig.t.client_span(&span.cx, "GET".into(), vec![]);
            end_client_span(&client, 200);
            span.end_failed(504, "timeout", "timed out".into());

            // A root span, dropped before it ended; at most two attributes.
            rig.t.max_attributes = 2;
            let mut root = rig.t.server_span(&Context::new(), "GET /y".into());
            if let Some(a) = root.attributes() {
                a.int("a", 1);
                a.int("b", 2);
            }
            let root_sc = root.cx.span().span_context().clone();
            drop(root);

            let spans = exported(&rig);
            assert_eq!(spans.len(), 3, "{spans:#?}");
            let by_id = |id: SpanId| {
                spans
                    .iter()
                    .find(|(_, s)| s.span_id == id.to_bytes())
                    .unwrap_or_else(|| panic!("no span {id} (encoded: {encoded})"))
            };
            let (scope, server) = by_id(sc.span_id());
            assert_eq!(scope, "gantry");
            assert_eq!(server.kind, 2, "server");
            assert_eq!(server.name, "GET /x");
            assert_eq!(server.trace_id, caller.trace_id().to_bytes());
            assert_eq!(server.parent_span_id, caller.span_id().to_bytes());
            assert_eq!(server.trace_state, "vendor=abc");
            assert_eq!(server.flags, 0x301, "sampled, the parent remote");
            let text = |k: &str, v: &str| (k.to_string(), v.to_string());
            assert_eq!(
                attrs(server),
                vec![
                    text("http.request.method", "GET"),
                    text("http.route", "/x"),
                    text("url.scheme", "http"),
                    text("http.response.status_code", "504"),
                    text("error.type", "timeout"),
                ]
            );
            let status = server.status.clone().unwrap_or_default();
            assert_eq!((status.code, status.message.as_str()), (2, "timed out"));
            assert!(0 < server.start_time_unix_nano);
            assert!(server.start_time_unix_nano <= server.end_time_unix_nano);
            let (client_scope, client) = spans
                .iter()
                .find(|(_, s)| s.kind == 3)
                .unwrap_or_else(|| panic!("no client span"));
            assert_eq!(client.parent_span_id, sc.span_id().to_bytes());
            assert_eq!(client.flags, 0x101, "a local parent");
            assert_eq!(client_scope, scope);

            let (_, root) = by_id(root_sc.span_id());
            assert!(root_sc.is_valid() && root_sc.trace_id() != caller.trace_id());
            assert!(root.parent_span_id.is_empty());
            assert_eq!(root.flags, 0x101);
            assert_eq!(root.status.clone().unwrap_or_default().code, 0);
            assert_eq!(attrs(root), vec![text("a", "1"), text("b", "2")]);
            assert_eq!(root.dropped_attributes_count, 0);
        }
    }

    #[test]
    fn attributes_past_the_limit_are_counted_not_kept() {
        for encoded in [false, true] {
            let mut rig = rig(encoded);
            rig.t.max_attributes = 4;
            let ab = FixedAttributes::new(vec![KeyValue::new("a", 1), KeyValue::new("b", "x")]);
            let cd = FixedAttributes::new(vec![KeyValue::new("c", true), KeyValue::new("d", 4)]);
            let mut span = rig.t.server_span(&Context::new(), "GET /z".into());
            if let Some(a) = span.attributes() {
                a.int("n", 0);
                a.fixed(&ab);
                // Only `c` fits.
                a.fixed(&cd);
                a.str("s", "one");
                a.string("t", "two".into());
            }
            span.end_http(503);
            let spans = exported(&rig);
            assert_eq!(spans.len(), 1);
            let s = &spans[0].1;
            let text = |k: &str, v: &str| (k.to_string(), v.to_string());
            assert_eq!(
                attrs(s),
                vec![
                    text("n", "0"),
                    text("a", "1"),
                    text("b", "x"),
                    text("c", "true")
                ],
                "{s:?}"
            );
            // `d`, `s`, `t` and the status code are dropped.
            assert_eq!(s.dropped_attributes_count, 4);
            let status = s.status.clone().unwrap_or_default();
            assert_eq!((status.code, status.message.as_str()), (2, "HTTP 503"));
        }
    }

    /// Without an exporter no attributes are made at all.
    #[test]
    fn an_unexported_span_takes_no_attributes() {
        let t = Tracing::disabled();
        let mut span = t.server_span(&Context::new(), "GET /".into());
        assert!(span.attributes().is_none());
        assert!(span.cx.span().span_context().is_valid());
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
