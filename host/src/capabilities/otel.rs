//! Guest telemetry: the WASI OpenTelemetry interfaces (`wasi:otel`, the
//! version spin-sdk 7 ships), so a guest can open spans under the request's
//! server span, add attributes and events, record metrics and emit logs, all
//! through the host's own pipeline (OTLP, Prometheus, host logs).
//!
//! Spans keep the ids the guest gave them, so a guest's spans and the host's
//! spans form one tree; while a guest span is open, the client spans of the
//! guest's outbound calls are its children.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use wasmtime::component::Linker;
use wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime;

use super::bindings::wasi::otel::{logs, metrics as wm, tracing as wt, types};
use super::{Capability, HostState, Request, Settings};
use crate::manifest::{ComponentSpec, ManifestError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;

/// Guest spans open at once in one instance; a start past it is dropped.
pub const MAX_OPEN_SPANS: usize = 128;
/// Guest spans one request may end (export).
pub const MAX_SPANS_PER_REQUEST: u32 = 1024;
/// Attributes of one guest span, one event, one log record.
pub const MAX_ATTRIBUTES: usize = 128;
/// Events of one guest span.
pub const MAX_EVENTS: usize = 128;
/// Log records one request may emit.
pub const MAX_LOGS_PER_REQUEST: u32 = 1024;
/// Longest span name, attribute key or value, log body kept (bytes).
pub const MAX_TEXT: usize = 4096;

/// Per-request telemetry state of one guest.
pub struct GuestTelemetry {
    pub component: Arc<str>,
    pub tracing: Arc<Tracing>,
    pub metrics: Arc<Metrics>,
    /// The request's server span.
    pub server: Context,
    /// Guest spans started and not yet ended, innermost last (at most
    /// [`MAX_OPEN_SPANS`]).
    pub open: Vec<SpanContext>,
    /// Spans ended and log records emitted by this request so far.
    pub spans_ended: u32,
    pub logs_emitted: u32,
}

impl GuestTelemetry {
    pub fn new(
        component: Arc<str>,
        tracing: Arc<Tracing>,
        metrics: Arc<Metrics>,
        server: Context,
    ) -> Self {
        GuestTelemetry {
            component,
            tracing,
            metrics,
            server,
            open: Vec::new(),
            spans_ended: 0,
            logs_emitted: 0,
        }
    }

    /// Counts what a guest sent past a bound.
    fn dropped(&self, signal: &'static str) {
        self.metrics.telemetry_dropped.with(&[signal]).inc();
    }
}

impl GuestTelemetry {
    /// The context outbound calls should be children of.
    pub fn current(&self) -> Context {
        match self.open.last() {
            Some(sc) => self.server.with_remote_span_context(sc.clone()),
            None => self.server.clone(),
        }
    }
}

/// The guest's telemetry, locked for one host call.
pub struct OtelView<'a>(pub std::sync::MutexGuard<'a, GuestTelemetry>);

pub struct HasOtel;
impl wasmtime::component::HasData for HasOtel {
    type Data<'a> = OtelView<'a>;
}

/// The `wasi:otel` capability. Its instance state is the request's guest
/// telemetry, which other capabilities' client spans nest under too.
pub struct Otel;

impl Capability for Otel {
    type Grant = ();
    type Shared = ();
    type Instance = Arc<Mutex<GuestTelemetry>>;

    fn shared(_: &Settings) -> anyhow::Result<()> {
        Ok(())
    }

    fn grant(_: &ComponentSpec, _: &BTreeMap<String, String>) -> Result<(), ManifestError> {
        Ok(())
    }

    fn instance(_: &(), _: &(), request: &Request) -> Self::Instance {
        request.guest.clone()
    }

    fn add_to_linker(linker: &mut Linker<HostState>, _concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> OtelView<'_> {
            OtelView(
                s.caps
                    .otel
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
        types::add_to_linker::<HostState, HasOtel>(linker, get)?;
        wt::add_to_linker::<HostState, HasOtel>(linker, get)?;
        wm::add_to_linker::<HostState, HasOtel>(linker, get)?;
        logs::add_to_linker::<HostState, HasOtel>(linker, get)?;
        Ok(())
    }
}

/// The latest time a guest may give: the end of year 9999.
const MAX_GUEST_SECONDS: u64 = 253_402_300_799;

/// A guest's time, saturated into the range a `SystemTime` and OTLP hold
/// (nanoseconds past a second carry over; past year 9999 is year 9999).
fn to_system_time(d: &Datetime) -> SystemTime {
    let secs = d
        .seconds
        .saturating_add(u64::from(d.nanoseconds / 1_000_000_000))
        .min(MAX_GUEST_SECONDS);
    UNIX_EPOCH
        .checked_add(Duration::new(secs, d.nanoseconds % 1_000_000_000))
        .unwrap_or(UNIX_EPOCH)
}

/// `s` cut to at most [`MAX_TEXT`] bytes, on a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn parse_context(c: &wt::SpanContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&c.trace_id).ok()?;
    let span_id = SpanId::from_hex(&c.span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if c.trace_flags.contains(wt::TraceFlags::SAMPLED) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state =
        TraceState::from_key_value(c.trace_state.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// At most [`MAX_ATTRIBUTES`] of them, each cut to [`MAX_TEXT`]; `true`
/// with them when some were left out.
fn attributes(kvs: &[types::KeyValue]) -> (Vec<KeyValue>, bool) {
    let kept = kvs
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| KeyValue::new(bounded(&kv.key), bounded(&kv.value)))
        .collect();
    (kept, kvs.len() > MAX_ATTRIBUTES)
}

impl types::Host for OtelView<'_> {}

impl wt::Host for OtelView<'_> {
    fn on_start(&mut self, context: wt::SpanContext) -> wasmtime::Result<()> {
        if let Some(sc) = parse_context(&context) {
            if self.0.open.len() >= MAX_OPEN_SPANS {
                self.0.dropped("guest_spans");
                return Ok(());
            }
            self.0.open.push(sc);
        }
        Ok(())
    }

    fn on_end(&mut self, span: wt::SpanData) -> wasmtime::Result<()> {
        let Some(sc) = parse_context(&span.span_context) else {
            return Ok(());
        };
        self.0.open.retain(|o| o.span_id() != sc.span_id());
        if self.0.spans_ended >= MAX_SPANS_PER_REQUEST {
            self.0.dropped("guest_spans");
            return Ok(());
        }
        self.0.spans_ended += 1;
        // The parent: the guest's named parent in the same trace, else the
        // server span.
        let parent = match SpanId::from_hex(&span.parent_span_id) {
            Ok(pid) if pid != SpanId::INVALID => {
                let psc = SpanContext::new(
                    sc.trace_id(),
                    pid,
                    sc.trace_flags(),
                    true,
                    sc.trace_state().clone(),
                );
                Context::new().with_remote_span_context(psc)
            }
            _ => self.0.server.clone(),
        };
        let kind = match span.span_kind {
            wt::SpanKind::Client => SpanKind::Client,
            wt::SpanKind::Server => SpanKind::Server,
            wt::SpanKind::Producer => SpanKind::Producer,
            wt::SpanKind::Consumer => SpanKind::Consumer,
            wt::SpanKind::Internal => SpanKind::Internal,
        };
        let (mut attrs, mut cut) = attributes(&span.attributes);
        attrs.push(KeyValue::new(
            "gantry.component.id",
            self.0.component.to_string(),
        ));
        cut |= span.events.len() > MAX_EVENTS;
        let events: Vec<Event> = span
            .events
            .iter()
            .take(MAX_EVENTS)
            .map(|e| {
                let (attributes, event_cut) = attributes(&e.attributes);
                cut |= event_cut;
                Event::new(bounded(&e.name), to_system_time(&e.time), attributes, 0)
            })
            .collect();
        if cut {
            self.0.dropped("guest_span_attributes");
        }
        let tracer = self.0.tracing.tracer();
        let mut builder = tracer
            .span_builder(bounded(&span.name))
            .with_kind(kind)
            .with_start_time(to_system_time(&span.start_time))
            .with_attributes(attrs);
        builder.events = Some(events);
        let mut built = crate::telemetry::trace::with_span_id(sc.span_id(), || {
            builder.start_with_context(tracer, &parent)
        });
        use opentelemetry::trace::Span as _;
        match span.status {
            wt::Status::Unset => {}
            wt::Status::Ok => built.set_status(Status::Ok),
            wt::Status::Error(msg) => built.set_status(Status::error(msg)),
        }
        built.end_with_timestamp(to_system_time(&span.end_time));
        Ok(())
    }

    fn outer_span_context(&mut self) -> wasmtime::Result<wt::SpanContext> {
        let span = self.0.server.span();
        let sc = span.span_context();
        Ok(wt::SpanContext {
            trace_id: sc.trace_id().to_string(),
            span_id: sc.span_id().to_string(),
            trace_flags: if sc.is_sampled() {
                wt::TraceFlags::SAMPLED
            } else {
                wt::TraceFlags::empty()
            },
            is_remote: false,
            trace_state: sc
                .trace_state()
                .header()
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

fn number(n: &wm::MetricNumber) -> f64 {
    match n {
        wm::MetricNumber::F64(v) => *v,
        wm::MetricNumber::S64(v) => *v as f64,
        wm::MetricNumber::U64(v) => *v as f64,
    }
}

impl wm::Host for OtelView<'_> {
    fn export(&mut self, data: wm::ResourceMetrics) -> wasmtime::Result<Result<(), wm::Error>> {
        let component = self.0.component.clone();
        for scope in &data.scope_metrics {
            for m in &scope.metrics {
                use wm::MetricData as D;
                match &m.data {
                    D::F64Sum(s) | D::U64Sum(s) | D::S64Sum(s) => {
                        for p in &s.data_points {
                            self.0.metrics.guest_counter_add(
                                &component,
                                &m.name,
                                &m.description,
                                &kv_pairs(&p.attributes),
                                number(&p.value),
                            );
                        }
                    }
                    D::F64Gauge(g) | D::U64Gauge(g) | D::S64Gauge(g) => {
                        for p in &g.data_points {
                            self.0.metrics.guest_gauge_set(
                                &component,
                                &m.name,
                                &m.description,
                                &kv_pairs(&p.attributes),
                                number(&p.value),
                            );
                        }
                    }
                    D::F64Histogram(h) | D::U64Histogram(h) | D::S64Histogram(h) => {
                        for p in &h.data_points {
                            self.0.metrics.guest_histogram_merge(
                                &component,
                                &m.name,
                                &m.description,
                                &kv_pairs(&p.attributes),
                                &p.bounds,
                                &p.bucket_counts,
                                number(&p.sum),
                            );
                        }
                    }
                    D::F64ExponentialHistogram(_)
                    | D::U64ExponentialHistogram(_)
                    | D::S64ExponentialHistogram(_) => {
                        return Ok(Err(format!(
                            "metric {}: exponential histograms are not supported; use explicit buckets",
                            m.name
                        )));
                    }
                }
            }
        }
        Ok(Ok(()))
    }
}

fn kv_pairs(kvs: &[types::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

impl logs::Host for OtelView<'_> {
    fn on_emit(&mut self, data: logs::LogRecord) -> wasmtime::Result<()> {
        if self.0.logs_emitted >= MAX_LOGS_PER_REQUEST {
            self.0.dropped("guest_logs");
            return Ok(());
        }
        self.0.logs_emitted += 1;
        let server = self.0.server.span();
        let sc = server.span_context();
        let trace_id = data.trace_id.unwrap_or_else(|| sc.trace_id().to_string());
        let span_id = data.span_id.unwrap_or_else(|| sc.span_id().to_string());
        let body = bounded(&data.body.unwrap_or_default());
        let severity = bounded(&data.severity_text.unwrap_or_else(|| "INFO".into()));
        tracing::info!(
            target: "guest",
            component = %self.0.component,
            %trace_id,
            %span_id,
            severity = %severity,
            "{body}"
        );
        if let Some(logs) = &self.0.tracing.guest_logs {
            // Ids a guest made up and got wrong fall back to the server span's.
            let trace = opentelemetry::trace::TraceId::from_hex(&trace_id).unwrap_or(sc.trace_id());
            let span = opentelemetry::trace::SpanId::from_hex(&span_id).unwrap_or(sc.span_id());
            logs.emit_record(
                &self.0.component,
                &severity,
                &body,
                Some((trace, span, sc.trace_flags())),
            );
        }
        Ok(())
    }
}
