//! Spans, metrics and logs for guest components, through the WASI
//! OpenTelemetry interfaces (`wasi:otel`) that Gantry implements.
//!
//! Not a component itself: the example functions depend on it. Spans nest
//! (a span started while another is open becomes its child) and sit under the
//! host's server span for the request, so guest and host spans form one trace.
//!
//! ```ignore
//! let mut span = gantry_telemetry::Span::start("example-request");
//! span.set_attribute("url.full", &url);
//! // ... work ...
//! span.end();
//! gantry_telemetry::metrics::counter_add("robot_blinks", 1, &[("robot", "linus")]);
//! ```

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gantry:host/telemetry-guest",
        generate_all,
    });
}

use bindings::wasi::clocks0_2_0::wall_clock::Datetime;

/// The `wasi:otel` interfaces themselves, for what the helpers here do not
/// cover (spans with given ids and times, pre-aggregated metrics).
pub mod raw {
    pub use crate::bindings::wasi::clocks0_2_0::wall_clock::Datetime;
    pub use crate::bindings::wasi::otel::{logs, metrics, tracing, types};
}
use bindings::wasi::otel::{logs, metrics as wm, tracing as wt, types};
use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// Span ids of the spans open in this instance, innermost last.
    static OPEN: RefCell<Vec<wt::SpanContext>> = const { RefCell::new(Vec::new()) };
}

fn now() -> Datetime {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Datetime {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

/// 64 random bits: std's hasher keys come from the host's random source.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now().nanoseconds as u64);
    h.finish()
}

fn new_span_id() -> String {
    loop {
        let id = random_u64();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<types::KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| types::KeyValue {
            key: (*k).to_string(),
            value: (*v).to_string(),
        })
        .collect()
}

/// The context new spans and records are parented to: the innermost open
/// span, else the host's span for this request.
fn current_context() -> wt::SpanContext {
    OPEN.with(|o| o.borrow().last().cloned())
        .unwrap_or_else(wt::outer_span_context)
}

/// A span the guest is timing. Ends when [`Span::end`] is called or dropped.
pub struct Span {
    context: wt::SpanContext,
    parent_span_id: String,
    name: String,
    kind: wt::SpanKind,
    start: Datetime,
    attributes: Vec<types::KeyValue>,
    events: Vec<wt::Event>,
    status: wt::Status,
    ended: bool,
}

impl Span {
    /// Starts an internal span, child of the current one.
    pub fn start(name: &str) -> Span {
        Self::start_kind(name, wt::SpanKind::Internal)
    }

    /// Starts a span of the given kind.
    pub fn start_kind(name: &str, kind: wt::SpanKind) -> Span {
        let parent = current_context();
        let context = wt::SpanContext {
            trace_id: parent.trace_id.clone(),
            span_id: new_span_id(),
            trace_flags: parent.trace_flags,
            is_remote: false,
            trace_state: parent.trace_state.clone(),
        };
        wt::on_start(&context);
        OPEN.with(|o| o.borrow_mut().push(context.clone()));
        Span {
            context,
            parent_span_id: parent.span_id,
            name: name.to_string(),
            kind,
            start: now(),
            attributes: Vec::new(),
            events: Vec::new(),
            status: wt::Status::Unset,
            ended: false,
        }
    }

    /// This span's trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        &self.context.trace_id
    }

    /// This span's id (16 hex digits).
    pub fn span_id(&self) -> &str {
        &self.context.span_id
    }

    pub fn set_attribute(&mut self, key: &str, value: impl ToString) {
        self.attributes.retain(|kv| kv.key != key);
        self.attributes.push(types::KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }

    pub fn add_event(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.events.push(wt::Event {
            name: name.to_string(),
            time: now(),
            attributes: kv(attributes),
        });
    }

    /// Marks the span failed.
    pub fn set_error(&mut self, message: impl ToString) {
        self.status = wt::Status::Error(message.to_string());
    }

    pub fn set_ok(&mut self) {
        self.status = wt::Status::Ok;
    }

    /// Ends the span now and hands it to the host.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let id = self.context.span_id.clone();
        OPEN.with(|o| o.borrow_mut().retain(|c| c.span_id != id));
        wt::on_end(&wt::SpanData {
            span_context: self.context.clone(),
            parent_span_id: self.parent_span_id.clone(),
            span_kind: self.kind,
            name: self.name.clone(),
            start_time: self.start,
            end_time: now(),
            attributes: std::mem::take(&mut self.attributes),
            events: std::mem::take(&mut self.events),
            links: Vec::new(),
            status: self.status.clone(),
            instrumentation_scope: types::InstrumentationScope {
                name: "gantry-telemetry".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
                schema_url: None,
                attributes: Vec::new(),
            },
            dropped_attributes: 0,
            dropped_events: 0,
            dropped_links: 0,
        });
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs `f` inside a span named `name`.
pub fn in_span<T>(name: &str, f: impl FnOnce(&mut Span) -> T) -> T {
    let mut span = Span::start(name);
    let out = f(&mut span);
    span.end();
    out
}

/// Custom metrics, exported to the host as they are recorded (each instance
/// lives for one request, so there is nothing to aggregate locally).
pub mod metrics {
    use super::*;

    fn export(name: &str, description: &str, unit: &str, data: wm::MetricData) {
        let _ = wm::export(&wm::ResourceMetrics {
            resource: types::Resource {
                attributes: Vec::new(),
                schema_url: None,
            },
            scope_metrics: vec![wm::ScopeMetrics {
                scope: types::InstrumentationScope {
                    name: "gantry-telemetry".into(),
                    version: Some(env!("CARGO_PKG_VERSION").into()),
                    schema_url: None,
                    attributes: Vec::new(),
                },
                metrics: vec![wm::Metric {
                    name: name.to_string(),
                    description: description.to_string(),
                    unit: unit.to_string(),
                    data,
                }],
            }],
        });
    }

    /// Adds `value` to the counter `name` (exposed as `<name>_total`).
    pub fn counter_add(name: &str, value: u64, attributes: &[(&str, &str)]) {
        let t = now();
        export(
            name,
            "",
            "",
            wm::MetricData::U64Sum(wm::Sum {
                data_points: vec![wm::SumDataPoint {
                    attributes: kv(attributes),
                    value: wm::MetricNumber::U64(value),
                    exemplars: Vec::new(),
                }],
                start_time: t,
                time: t,
                temporality: wm::Temporality::Delta,
                is_monotonic: true,
            }),
        );
    }

    /// Sets the gauge `name`.
    pub fn gauge_set(name: &str, value: f64, attributes: &[(&str, &str)]) {
        export(
            name,
            "",
            "",
            wm::MetricData::F64Gauge(wm::Gauge {
                data_points: vec![wm::GaugeDataPoint {
                    attributes: kv(attributes),
                    value: wm::MetricNumber::F64(value),
                    exemplars: Vec::new(),
                }],
                start_time: None,
                time: now(),
            }),
        );
    }

    /// Records one observation in the histogram `name` with bucket `bounds`
    /// (upper bounds, ascending; the same for every call with this name).
    pub fn histogram_record(name: &str, value: f64, bounds: &[f64], attributes: &[(&str, &str)]) {
        let t = now();
        let mut counts = vec![0u64; bounds.len() + 1];
        let i = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        counts[i] = 1;
        export(
            name,
            "",
            "",
            wm::MetricData::F64Histogram(wm::Histogram {
                data_points: vec![wm::HistogramDataPoint {
                    attributes: kv(attributes),
                    count: 1,
                    bounds: bounds.to_vec(),
                    bucket_counts: counts,
                    min: Some(wm::MetricNumber::F64(value)),
                    max: Some(wm::MetricNumber::F64(value)),
                    sum: wm::MetricNumber::F64(value),
                    exemplars: Vec::new(),
                }],
                start_time: t,
                time: t,
                temporality: wm::Temporality::Delta,
            }),
        );
    }
}

/// Emits a log record attributed to the current span.
pub fn log(severity: &str, message: &str) {
    let cx = current_context();
    logs::on_emit(&logs::LogRecord {
        timestamp: Some(now()),
        observed_timestamp: None,
        severity_text: Some(severity.to_string()),
        severity_number: None,
        body: Some(message.to_string()),
        attributes: None,
        event_name: None,
        resource: None,
        instrumentation_scope: None,
        trace_id: Some(cx.trace_id),
        span_id: Some(cx.span_id),
        trace_flags: Some(cx.trace_flags),
    });
}
