//! Gantry's metrics, one registry for `/metrics` and the OTLP push. The
//! exposition is `prometheus-client`'s: the Prometheus text format and, when
//! a scraper asks for it, OpenMetrics with exemplars that carry the trace id
//! of a request that landed in a duration bucket; the OTLP push is built
//! from the same encoder's OpenMetrics data model.
//!
//! Names are the OpenTelemetry HTTP semantic conventions as Prometheus shows
//! them (`http.server.request.duration` in seconds becomes
//! `http_server_request_duration_seconds`, attribute dots become underscores);
//! Gantry's own metrics are prefixed `gantry_`. Recording is a hash lookup and
//! a few atomic adds; nothing on the request path waits for a scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::registry::Registry;

/// Bucket bounds for HTTP durations, the ones the OTel HTTP conventions advise.
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket bounds for database operations (the semantic conventions' advice
/// for `db.client.operation.duration`).
pub const DB_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Bucket bounds for instantiation, which should take microseconds.
pub const INSTANTIATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];

/// The label set of an exemplar: the trace id of the sampled request.
type TraceLabel = Vec<(&'static str, String)>;

/// A histogram with, per bucket, the last sampled request that landed there
/// (its exemplar): `prometheus-client`'s.
#[derive(Debug, Clone)]
pub struct Histogram(HistogramWithExemplars<TraceLabel>);

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram(HistogramWithExemplars::new(bounds.iter().copied()))
    }

    /// Records `value`; `trace_id` (of a sampled trace) becomes the bucket's
    /// exemplar.
    pub fn observe(&self, value: f64, trace_id: Option<opentelemetry::trace::TraceId>) {
        match trace_id {
            Some(t) => self.0.observe(
                value,
                Some(vec![("trace_id", t.to_string())]),
                Some(SystemTime::now()),
            ),
            None => self.0.observe(value, None, None),
        }
    }

    /// Per-bucket counts (the last bucket +Inf) and the sum, read through
    /// the library's own data model (its protobuf encoding).
    fn buckets(&self) -> (Vec<(f64, u64)>, f64) {
        let mut registry = Registry::default();
        registry.register("h", "", self.0.clone());
        let families =
            prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap_or_default();
        let Some(h) = families
            .first()
            .and_then(|f| f.metric.first())
            .and_then(|m| m.histogram.as_ref())
        else {
            return (Vec::new(), 0.0);
        };
        let mut below = 0;
        let buckets = h
            .bucket
            .iter()
            .map(|b| {
                let n = b.cumulative_count.saturating_sub(below);
                below = b.cumulative_count;
                (b.upper_bound, n)
            })
            .collect();
        (buckets, h.sample_sum)
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn max(&self, n: i64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One series: its label values and its value.
type Series<M> = (Vec<String>, Arc<M>);

thread_local! {
    static KEY_BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A metric family: one series per distinct label-value tuple.
pub struct Family<M> {
    labels: &'static [&'static str],
    /// Keyed by the label values joined with U+001F (which no sane label
    /// value contains).
    series: RwLock<HashMap<String, Series<M>>>,
    make: Box<dyn Fn() -> M + Send + Sync>,
}

impl<M> Family<M> {
    fn new(labels: &'static [&'static str], make: impl Fn() -> M + Send + Sync + 'static) -> Self {
        Family {
            labels,
            series: RwLock::new(HashMap::new()),
            make: Box::new(make),
        }
    }

    /// The series for `values` (one per label, in order), created on first use.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.labels.len());
        // The hot path (the series exists) builds its key in a per-thread
        // buffer and allocates nothing.
        let found = KEY_BUFFER.with(|buf| {
            let mut key = buf.borrow_mut();
            key.clear();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    key.push('\u{1f}');
                }
                key.push_str(v);
            }
            let map = self.series.read().ok()?;
            map.get(key.as_str()).map(|(_, m)| m.clone())
        });
        if let Some(m) = found {
            return m;
        }
        let key = values.join("\u{1f}");
        match self.series.write() {
            Ok(mut map) => map
                .entry(key)
                .or_insert_with(|| {
                    (
                        values.iter().map(|v| v.to_string()).collect(),
                        Arc::new((self.make)()),
                    )
                })
                .1
                .clone(),
            Err(_) => Arc::new((self.make)()),
        }
    }

    /// Drops every series whose first label equals `value` (a removed component).
    pub fn remove_first_label(&self, value: &str) {
        if let Ok(mut map) = self.series.write() {
            map.retain(|_, (labels, _)| labels.first().map(String::as_str) != Some(value));
        }
    }

    fn snapshot(&self) -> Vec<Series<M>> {
        let mut v: Vec<_> = match self.series.read() {
            Ok(map) => map.values().map(|(k, m)| (k.clone(), m.clone())).collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Every metric the host records.
pub struct Metrics {
    /// `http.server.request.duration`: route, component, method, status.
    pub request_duration: Family<Histogram>,
    /// `http.server.active_requests` by component: what KEDA scales on.
    pub active_requests: Family<Gauge>,
    /// Instances alive, by component: requests being served, response
    /// bodies still being sent included (what the pool and each share bound).
    pub instances: Family<Gauge>,
    /// Time to create a fresh instance, by component.
    pub instantiation: Family<Histogram>,
    /// Guest failures by component and reason (trap, timeout, ...).
    pub guest_failures: Family<Counter>,
    /// Largest linear memory an instance reached, by component.
    pub guest_memory_peak: Family<Gauge>,
    /// `http.client.request.duration` of guests' outbound calls.
    pub outbound_duration: Family<Histogram>,
    /// Outbound calls refused by `allowed_outbound_hosts`.
    pub outbound_denied: Family<Counter>,
    /// `db.client.operation.duration` of guests' database calls (Redis,
    /// PostgreSQL, MySQL, MQTT): component, `db.system.name`,
    /// `db.operation.name` (from a fixed set), server address and port (the
    /// granting manifest entry), `error.type` ("" when it worked).
    pub db_duration: Family<Histogram>,
    /// One series per loaded component version, value 1.
    pub component_info: Family<Gauge>,
    /// When each component's current version was loaded (Unix seconds).
    pub component_loaded: Family<Gauge>,
    /// Component swaps by component and result (ok, refused, rollback;
    /// manifest reloads with an empty component).
    pub component_swaps: Family<Counter>,
    /// GPIO operations by component, label and operation (`safe` counts
    /// outputs returned to their safe level when an instance ended).
    pub gpio_operations: Family<Counter>,
    /// GPIO calls refused because the label is not granted, by component and
    /// operation (the label is the guest's choice, so it is no label here).
    pub gpio_denied: Family<Counter>,
    /// Telemetry items that could not be delivered, by signal.
    pub telemetry_dropped: Family<Counter>,
    /// Spans dropped by the trace exporter (kept by the exporter, read here).
    pub dropped_spans: Arc<AtomicU64>,
    /// Metrics guests record through `wasi:otel/metrics`, by sanitized name.
    guest: RwLock<HashMap<String, GuestFamily>>,
}

/// A metric a guest defined: its kind fixes on first use.
struct GuestFamily {
    help: String,
    kind: GuestKind,
}

/// A guest family's series: keyed like [`series_key`], each with its labels.
type GuestSeries<T> = HashMap<String, (Vec<(String, String)>, T)>;

enum GuestKind {
    Counter(GuestSeries<f64>),
    Gauge(GuestSeries<f64>),
    Histogram(GuestSeries<GuestHistogram>),
}

struct GuestHistogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
}

/// Most distinct guest metric names, and series per name, kept; beyond
/// them new ones are dropped (and counted) so a guest cannot exhaust memory.
const MAX_GUEST_METRICS: usize = 256;
const MAX_GUEST_SERIES: usize = 1024;

/// A Prometheus-safe metric or label name.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn series_key(component: &str, attrs: &[(String, String)]) -> (String, Vec<(String, String)>) {
    let mut labels = vec![("component".to_string(), component.to_string())];
    let mut rest: Vec<(String, String)> = attrs
        .iter()
        .map(|(k, v)| (sanitize(k), v.clone()))
        .filter(|(k, _)| k != "component")
        .collect();
    rest.sort();
    labels.extend(rest);
    let key = labels
        .iter()
        .map(|(k, v)| format!("{k}\u{1e}{v}"))
        .collect::<Vec<_>>()
        .join("\u{1f}");
    (key, labels)
}

const ROUTE_LABELS: &[&str] = &[
    "component",
    "http_route",
    "http_request_method",
    "http_response_status_code",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            request_duration: Family::new(ROUTE_LABELS, || Histogram::new(HTTP_BUCKETS)),
            active_requests: Family::new(&["component"], Gauge::default),
            instances: Family::new(&["component"], Gauge::default),
            instantiation: Family::new(&["component"], || Histogram::new(INSTANTIATION_BUCKETS)),
            guest_failures: Family::new(&["component", "reason"], Counter::default),
            guest_memory_peak: Family::new(&["component"], Gauge::default),
            outbound_duration: Family::new(
                &["component", "server_address", "http_response_status_code"],
                || Histogram::new(HTTP_BUCKETS),
            ),
            outbound_denied: Family::new(&["component", "server_address"], Counter::default),
            db_duration: Family::new(
                &[
                    "component",
                    "db_system_name",
                    "db_operation_name",
                    "server_address",
                    "error_type",
                ],
                || Histogram::new(DB_BUCKETS),
            ),
            component_info: Family::new(&["component", "digest", "wasi_http"], Gauge::default),
            component_loaded: Family::new(&["component"], Gauge::default),
            component_swaps: Family::new(&["component", "result"], Counter::default),
            gpio_operations: Family::new(&["component", "label", "operation"], Counter::default),
            gpio_denied: Family::new(&["component", "operation"], Counter::default),
            telemetry_dropped: Family::new(&["signal"], Counter::default),
            dropped_spans: Arc::new(AtomicU64::new(0)),
            guest: RwLock::new(HashMap::new()),
        }
    }

    /// Runs `f` on the guest family `name`, creating it with `make` if new.
    /// Returns false (and counts a drop) when limits or a kind clash refuse it.
    fn with_guest(
        &self,
        name: &str,
        help: &str,
        make: impl FnOnce() -> GuestKind,
        f: impl FnOnce(&mut GuestKind) -> bool,
    ) {
        let name = sanitize(name);
        let Ok(mut map) = self.guest.write() else {
            return;
        };
        if !map.contains_key(&name) {
            if map.len() >= MAX_GUEST_METRICS {
                self.telemetry_dropped.with(&["guest_metrics"]).inc();
                return;
            }
            map.insert(
                name.clone(),
                GuestFamily {
                    help: if help.is_empty() {
                        "Recorded by a guest.".into()
                    } else {
                        help.replace('\n', " ")
                    },
                    kind: make(),
                },
            );
        }
        let ok = map.get_mut(&name).is_some_and(|fam| f(&mut fam.kind));
        if !ok {
            self.telemetry_dropped.with(&["guest_metrics"]).inc();
        }
    }

    /// A guest's counter increment (a delta sum).
    pub fn guest_counter_add(
        &self,
        component: &str,
        name: &str,
        help: &str,
        attrs: &[(String, String)],
        value: f64,
    ) {
        let (key, labels) = series_key(component, attrs);
        self.with_guest(
            name,
            help,
            || GuestKind::Counter(HashMap::new()),
            |k| match k {
                GuestKind::Counter(series) if value >= 0.0 => {
                    if series.len() >= MAX_GUEST_SERIES && !series.contains_key(&key) {
                        return false;
                    }
                    series.entry(key).or_insert((labels, 0.0)).1 += value;
                    true
                }
                _ => false,
            },
        );
    }

    /// A guest's gauge reading.
    pub fn guest_gauge_set(
        &self,
        component: &str,
        name: &str,
        help: &str,
        attrs: &[(String, String)],
        value: f64,
    ) {
        let (key, labels) = series_key(component, attrs);
        self.with_guest(
            name,
            help,
            || GuestKind::Gauge(HashMap::new()),
            |k| match k {
                GuestKind::Gauge(series) => {
                    if series.len() >= MAX_GUEST_SERIES && !series.contains_key(&key) {
                        return false;
                    }
                    series.insert(key, (labels, value));
                    true
                }
                _ => false,
            },
        );
    }

    /// Adds a guest's histogram data point (explicit buckets) to the series;
    /// the first point fixes the bounds, later ones must match them. (Guest
    /// histograms carry no exemplars: only the host's own do.)
    #[allow(clippy::too_many_arguments)]
    pub fn guest_histogram_merge(
        &self,
        component: &str,
        name: &str,
        help: &str,
        attrs: &[(String, String)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        if counts.len() != bounds.len() + 1 {
            self.telemetry_dropped.with(&["guest_metrics"]).inc();
            return;
        }
        let (key, labels) = series_key(component, attrs);
        self.with_guest(
            name,
            help,
            || GuestKind::Histogram(HashMap::new()),
            |k| match k {
                GuestKind::Histogram(series) => {
                    if series.len() >= MAX_GUEST_SERIES && !series.contains_key(&key) {
                        return false;
                    }
                    let h = series.entry(key).or_insert_with(|| {
                        (
                            labels,
                            GuestHistogram {
                                bounds: bounds.to_vec(),
                                counts: vec![0; counts.len()],
                                sum: 0.0,
                            },
                        )
                    });
                    if h.1.bounds != bounds {
                        return false;
                    }
                    // Guest-given counts: a sum that would overflow drops the
                    // whole point (counted), never wraps.
                    if counts
                        .iter()
                        .try_fold(0u64, |a, c| a.checked_add(*c))
                        .is_none()
                    {
                        return false;
                    }
                    let merged: Option<Vec<u64>> =
                        h.1.counts
                            .iter()
                            .zip(counts)
                            .map(|(c, n)| c.checked_add(*n))
                            .collect();
                    let Some(merged) = merged
                        .filter(|m| m.iter().try_fold(0u64, |a, c| a.checked_add(*c)).is_some())
                    else {
                        return false;
                    };
                    if !sum.is_finite() {
                        return false;
                    }
                    h.1.counts = merged;
                    h.1.sum += sum;
                    true
                }
                _ => false,
            },
        );
    }

    /// Renders every family; `openmetrics` selects OpenMetrics 1.0 (with
    /// exemplars and `# EOF`) over the Prometheus 0.0.4 text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut families = self.snapshot();
        if !openmetrics {
            // The 0.0.4 format has no exemplars: the host's histograms go
            // out as their plain buckets.
            for f in &mut families {
                for s in &mut f.series {
                    if let Point::Histogram(HistogramPoint::Host(h)) = &s.point {
                        let (buckets, sum) = h.buckets();
                        s.point = Point::Histogram(HistogramPoint::Guest { buckets, sum });
                    }
                }
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(families)));
        let mut out = String::with_capacity(8192);
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        if written.is_err() {
            tracing::error!("metrics exposition failed");
        }
        out
    }

    /// Every family in Prometheus' data model (as its protobuf exposition
    /// has it), with the OpenTelemetry name and unit of each, by Prometheus
    /// name: what the OTLP push is built from.
    pub fn data_model(&self) -> (Vec<MetricFamily>, HashMap<String, (String, &'static str)>) {
        let families = self.snapshot();
        let names = families
            .iter()
            .map(|f| (f.name.clone(), (f.otel_name.clone(), f.unit)))
            .collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(families)));
        let set = prometheus_client::encoding::prometheus_protobuf::encode(&registry)
            .unwrap_or_else(|_| {
                tracing::error!("metrics encoding failed");
                Vec::new()
            });
        (set, names)
    }

    /// Every family as it is now: what the registry's collector encodes.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        let mut out = vec![
            FamilySnapshot::of(
                "http_server_request_duration_seconds",
                "http.server.request.duration",
                "s",
                "Duration of HTTP server requests.",
                Kind::Histogram,
                self.request_duration.series(Histogram::point),
            ),
            FamilySnapshot::of(
                "http_server_active_requests",
                "http.server.active_requests",
                "{request}",
                "Number of active HTTP server requests.",
                Kind::Gauge,
                self.active_requests.series(Gauge::point),
            ),
            FamilySnapshot::of(
                "gantry_instances",
                "gantry.instances",
                "{instance}",
                "Instances alive (requests in flight, response bodies still being sent included).",
                Kind::Gauge,
                self.instances.series(Gauge::point),
            ),
            FamilySnapshot::of(
                "gantry_instantiation_duration_seconds",
                "gantry.instantiation.duration",
                "s",
                "Time to create a fresh component instance for a request.",
                Kind::Histogram,
                self.instantiation.series(Histogram::point),
            ),
            FamilySnapshot::of(
                "gantry_guest_failures",
                "gantry.guest.failures",
                "{request}",
                "Requests a guest failed, by reason (trap, timeout, memory, no_free_instance, guest_error).",
                Kind::Counter,
                self.guest_failures.series(Counter::point),
            ),
            FamilySnapshot::of(
                "gantry_guest_memory_peak_bytes",
                "gantry.guest.memory.peak",
                "By",
                "Largest linear memory a guest instance has grown to.",
                Kind::Gauge,
                self.guest_memory_peak.series(Gauge::point),
            ),
            FamilySnapshot::of(
                "http_client_request_duration_seconds",
                "http.client.request.duration",
                "s",
                "Duration of guests' outbound HTTP requests.",
                Kind::Histogram,
                self.outbound_duration.series(Histogram::point),
            ),
            FamilySnapshot::of(
                "db_client_operation_duration_seconds",
                "db.client.operation.duration",
                "s",
                "Duration of guests' database operations.",
                Kind::Histogram,
                self.db_duration.series(Histogram::point),
            ),
            FamilySnapshot::of(
                "gantry_outbound_denied",
                "gantry.outbound.denied",
                "{request}",
                "Outbound requests refused by allowed_outbound_hosts.",
                Kind::Counter,
                self.outbound_denied.series(Counter::point),
            ),
            FamilySnapshot::of(
                "gantry_component_info",
                "gantry.component.info",
                "1",
                "The component versions being served (value 1).",
                Kind::Gauge,
                self.component_info.series(Gauge::point),
            ),
            FamilySnapshot::of(
                "gantry_component_loaded_timestamp_seconds",
                "gantry.component.loaded_timestamp",
                "s",
                "When each component's current version was loaded.",
                Kind::Gauge,
                self.component_loaded.series(Gauge::point),
            ),
            FamilySnapshot::of(
                "gantry_component_swaps",
                "gantry.component.swaps",
                "{swap}",
                "Component swaps by result (ok, refused, rollback, manifest_ok, manifest_refused).",
                Kind::Counter,
                self.component_swaps.series(Counter::point),
            ),
            FamilySnapshot::of(
                "gantry_gpio_operations",
                "gantry.gpio.operations",
                "{operation}",
                "GPIO operations by component, label and operation (safe: returned to the safe level when an instance ended).",
                Kind::Counter,
                self.gpio_operations.series(Counter::point),
            ),
            FamilySnapshot::of(
                "gantry_gpio_denied",
                "gantry.gpio.denied",
                "{operation}",
                "GPIO calls refused because the label is not granted to the component.",
                Kind::Counter,
                self.gpio_denied.series(Counter::point),
            ),
        ];
        self.snapshot_guest(&mut out);
        self.telemetry_dropped.with(&["traces"]).0.store(
            self.dropped_spans.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        out.push(FamilySnapshot::of(
            "gantry_telemetry_dropped",
            "gantry.telemetry.dropped",
            "{item}",
            "Telemetry items (spans, metric points, log records) that could not be exported.",
            Kind::Counter,
            self.telemetry_dropped.series(Counter::point),
        ));
        out
    }

    fn snapshot_guest(&self, out: &mut Vec<FamilySnapshot>) {
        let Ok(map) = self.guest.read() else {
            return;
        };
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let fam = &map[name];
            fn rows<T>(
                series: &GuestSeries<T>,
                point: impl Fn(&T) -> Point,
            ) -> Vec<SeriesSnapshot> {
                let mut rows: Vec<SeriesSnapshot> = series
                    .values()
                    .map(|(labels, v)| SeriesSnapshot {
                        labels: labels.clone(),
                        point: point(v),
                    })
                    .collect();
                rows.sort_by(|a, b| a.labels.cmp(&b.labels));
                rows
            }
            let (kind, series, base) = match &fam.kind {
                GuestKind::Counter(s) => (
                    Kind::Counter,
                    rows(s, |v| Point::Float(*v)),
                    name.strip_suffix("_total").unwrap_or(name),
                ),
                GuestKind::Gauge(s) => (Kind::Gauge, rows(s, |v| Point::Float(*v)), name.as_str()),
                GuestKind::Histogram(s) => (
                    Kind::Histogram,
                    rows(s, |h| {
                        let bounds = h.bounds.iter().copied().chain([f64::INFINITY]);
                        Point::Histogram(HistogramPoint::Guest {
                            buckets: bounds.zip(h.counts.iter().copied()).collect(),
                            sum: h.sum,
                        })
                    }),
                    name.as_str(),
                ),
            };
            out.push(FamilySnapshot {
                name: base.to_string(),
                otel_name: name.clone(),
                unit: "",
                help: fam.help.clone(),
                kind,
                series,
            });
        }
    }
}

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One series' value at snapshot time.
#[derive(Debug, Clone)]
pub enum Point {
    Count(u64),
    Int(i64),
    Float(f64),
    Histogram(HistogramPoint),
}

/// A histogram series: the host's own, or one a guest recorded (its
/// per-bucket counts, the last bucket being +Inf).
#[derive(Debug, Clone)]
pub enum HistogramPoint {
    Host(Histogram),
    Guest { buckets: Vec<(f64, u64)>, sum: f64 },
}

#[derive(Debug, Clone)]
pub struct SeriesSnapshot {
    /// Label names (Prometheus form) and values.
    pub labels: Vec<(String, String)>,
    pub point: Point,
}

/// One family as it is now.
#[derive(Debug, Clone)]
pub struct FamilySnapshot {
    /// The Prometheus name; a counter's without `_total`.
    pub name: String,
    /// The OpenTelemetry instrument name and unit, for OTLP.
    pub otel_name: String,
    pub unit: &'static str,
    pub help: String,
    pub kind: Kind,
    pub series: Vec<SeriesSnapshot>,
}

impl FamilySnapshot {
    fn of(
        name: &str,
        otel_name: &str,
        unit: &'static str,
        help: &str,
        kind: Kind,
        series: Vec<SeriesSnapshot>,
    ) -> Self {
        FamilySnapshot {
            name: name.to_string(),
            otel_name: otel_name.to_string(),
            unit,
            help: help.to_string(),
            kind,
            series,
        }
    }
}

impl<M> Family<M> {
    /// Every series with its label names, valued by `point`.
    fn series(&self, point: impl Fn(&M) -> Point) -> Vec<SeriesSnapshot> {
        self.snapshot()
            .into_iter()
            .map(|(values, m)| SeriesSnapshot {
                labels: self
                    .labels
                    .iter()
                    .map(|l| l.to_string())
                    .zip(values)
                    .collect(),
                point: point(&m),
            })
            .collect()
    }
}

impl Counter {
    fn point(&self) -> Point {
        Point::Count(self.get())
    }
}

impl Gauge {
    fn point(&self) -> Point {
        Point::Int(self.get())
    }
}

impl Histogram {
    fn point(&self) -> Point {
        Point::Histogram(HistogramPoint::Host(self.clone()))
    }
}

/// The collector of [`Metrics::registry`]: every family of one snapshot,
/// encoded by `prometheus-client` (text or protobuf).
#[derive(Debug)]
struct Families(Vec<FamilySnapshot>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            for s in &f.series {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                encode_point(family.encode_family(&labels)?, f.kind, &s.point)?;
            }
        }
        Ok(())
    }
}

fn encode_point(mut m: MetricEncoder, kind: Kind, point: &Point) -> Result<(), std::fmt::Error> {
    match (kind, point) {
        (Kind::Counter, Point::Count(v)) => m.encode_counter::<NoLabelSet, _, u64>(v, None),
        (Kind::Counter, Point::Float(v)) => m.encode_counter::<NoLabelSet, _, f64>(v, None),
        (Kind::Gauge, Point::Int(v)) => m.encode_gauge(v),
        (Kind::Gauge, Point::Float(v)) => m.encode_gauge(v),
        (Kind::Histogram, Point::Histogram(HistogramPoint::Host(h))) => h.0.encode(m),
        (Kind::Histogram, Point::Histogram(HistogramPoint::Guest { buckets, sum })) => {
            let count = buckets.iter().map(|(_, c)| c).sum();
            m.encode_histogram::<NoLabelSet>(*sum, count, buckets, None)
        }
        // A point of another kind than its family's is never built.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_exemplars_only_in_openmetrics() {
        let m = Metrics::new();
        let h = m.request_duration.with(&["alpha", "/alpha", "GET", "200"]);
        h.observe(
            0.003,
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").ok(),
        );
        h.observe(0.2, None);
        h.observe(20.0, None);
        let text = m.render(false);
        assert!(text.contains("http_server_request_duration_seconds_bucket{component=\"alpha\",http_route=\"/alpha\",http_request_method=\"GET\",http_response_status_code=\"200\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.25\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains("http_server_request_duration_seconds_count{component=\"alpha\",http_route=\"/alpha\",http_request_method=\"GET\",http_response_status_code=\"200\"} 3"));
        assert!(!text.contains("trace_id"));
        assert!(text.contains("# TYPE gantry_telemetry_dropped_total counter"));
        let om = m.render(true);
        let bucket = om
            .lines()
            .find(|l| l.contains("le=\"0.005\""))
            .unwrap_or_default();
        assert!(
            bucket.contains("} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.003 "),
            "{om}"
        );
        assert!(om.contains("# TYPE gantry_telemetry_dropped counter"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.component_info.with(&["a\"b", "x\\y", "0.2"]).set(1);
        let text = m.render(false);
        assert!(
            text.contains("component=\"a\\\"b\",digest=\"x\\\\y\""),
            "{text}"
        );
    }
}
