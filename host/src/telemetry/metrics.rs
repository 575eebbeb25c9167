//! Gantry's metrics and their exposition, in the Prometheus text format and,
//! when a scraper asks for it, OpenMetrics with exemplars that carry the trace
//! id of a request that landed in a duration bucket.
//!
//! Names are the OpenTelemetry HTTP semantic conventions as Prometheus shows
//! them (`http.server.request.duration` in seconds becomes
//! `http_server_request_duration_seconds`, attribute dots become underscores);
//! Gantry's own metrics are prefixed `gantry_`. Recording is a hash lookup and
//! a few atomic adds; nothing on the request path waits for a scrape.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bucket bounds for HTTP durations, the ones the OTel HTTP conventions advise.
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket bounds for instantiation, which should take microseconds.
pub const INSTANTIATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];

#[derive(Debug, Clone)]
struct Exemplar {
    trace_id: String,
    value: f64,
    timestamp: f64,
}

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
    exemplars: Mutex<Vec<Option<Exemplar>>>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            exemplars: Mutex::new(vec![None; bounds.len() + 1]),
        }
    }

    /// Records `value`; `trace_id` (of a sampled trace) becomes the bucket's
    /// exemplar.
    pub fn observe(&self, value: f64, trace_id: Option<&str>) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + value).to_bits();
            match self.sum_bits.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if let Some(trace_id) = trace_id
            && let Ok(mut ex) = self.exemplars.lock()
        {
            ex[i] = Some(Exemplar {
                trace_id: trace_id.to_string(),
                value,
                timestamp: now_seconds(),
            });
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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

/// A metric family: one series per distinct label-value tuple.
pub struct Family<M> {
    labels: &'static [&'static str],
    /// Keyed by the label values joined with U+001F (which no sane label
    /// value contains), so a lookup costs one small allocation.
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
        let key = values.join("\u{1f}");
        if let Ok(map) = self.series.read()
            && let Some((_, m)) = map.get(&key)
        {
            return m.clone();
        }
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
    /// One series per loaded component version, value 1.
    pub component_info: Family<Gauge>,
    /// When each component's current version was loaded (Unix seconds).
    pub component_loaded: Family<Gauge>,
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

enum GuestKind {
    Counter(HashMap<String, (Vec<(String, String)>, f64)>),
    Gauge(HashMap<String, (Vec<(String, String)>, f64)>),
    Histogram(HashMap<String, (Vec<(String, String)>, GuestHistogram)>),
}

struct GuestHistogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    exemplar: Option<Exemplar>,
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
            instantiation: Family::new(&["component"], || Histogram::new(INSTANTIATION_BUCKETS)),
            guest_failures: Family::new(&["component", "reason"], Counter::default),
            guest_memory_peak: Family::new(&["component"], Gauge::default),
            outbound_duration: Family::new(
                &["component", "server_address", "http_response_status_code"],
                || Histogram::new(HTTP_BUCKETS),
            ),
            outbound_denied: Family::new(&["component", "server_address"], Counter::default),
            component_info: Family::new(&["component", "digest", "wasi_http"], Gauge::default),
            component_loaded: Family::new(&["component"], Gauge::default),
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
    /// the first point fixes the bounds, later ones must match them.
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
        trace_id: Option<&str>,
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
                                exemplar: None,
                            },
                        )
                    });
                    if h.1.bounds != bounds {
                        return false;
                    }
                    for (c, n) in h.1.counts.iter_mut().zip(counts) {
                        *c += n;
                    }
                    h.1.sum += sum;
                    let n: u64 = counts.iter().sum();
                    if let Some(t) = trace_id.filter(|_| n > 0) {
                        h.1.exemplar = Some(Exemplar {
                            trace_id: t.to_string(),
                            value: sum / n as f64,
                            timestamp: now_seconds(),
                        });
                    }
                    true
                }
                _ => false,
            },
        );
    }

    /// Renders every family; `openmetrics` selects OpenMetrics 1.0 (with
    /// exemplars and `# EOF`) over the Prometheus 0.0.4 text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(8192);
        let w = &mut Writer {
            out: &mut out,
            openmetrics,
        };
        w.histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            &self.request_duration,
        );
        w.gauge(
            "http_server_active_requests",
            "Number of active HTTP server requests.",
            &self.active_requests,
        );
        w.histogram(
            "gantry_instantiation_duration_seconds",
            "Time to create a fresh component instance for a request.",
            &self.instantiation,
        );
        w.counter(
            "gantry_guest_failures",
            "Requests a guest failed, by reason (trap, timeout, memory, no_free_instance, guest_error).",
            &self.guest_failures,
        );
        w.gauge(
            "gantry_guest_memory_peak_bytes",
            "Largest linear memory a guest instance has grown to.",
            &self.guest_memory_peak,
        );
        w.histogram(
            "http_client_request_duration_seconds",
            "Duration of guests' outbound HTTP requests.",
            &self.outbound_duration,
        );
        w.counter(
            "gantry_outbound_denied",
            "Outbound requests refused by allowed_outbound_hosts.",
            &self.outbound_denied,
        );
        w.gauge(
            "gantry_component_info",
            "The component versions being served (value 1).",
            &self.component_info,
        );
        w.gauge(
            "gantry_component_loaded_timestamp_seconds",
            "When each component's current version was loaded.",
            &self.component_loaded,
        );
        self.render_guest(w);
        self.telemetry_dropped.with(&["traces"]).0.store(
            self.dropped_spans.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        w.counter(
            "gantry_telemetry_dropped",
            "Telemetry items (spans, metric points, log records) that could not be exported.",
            &self.telemetry_dropped,
        );
        if openmetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

impl Metrics {
    fn render_guest(&self, w: &mut Writer<'_>) {
        let Ok(map) = self.guest.read() else {
            return;
        };
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let fam = &map[name];
            let fmt_labels = |labels: &[(String, String)], extra: Option<(&str, &str)>| {
                let mut parts: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                if let Some((k, v)) = extra {
                    parts.push(format!("{k}=\"{v}\""));
                }
                format!("{{{}}}", parts.join(","))
            };
            match &fam.kind {
                GuestKind::Counter(series) => {
                    let base = name.strip_suffix("_total").unwrap_or(name);
                    let family = if w.openmetrics {
                        base.to_string()
                    } else {
                        format!("{base}_total")
                    };
                    w.header(&family, "counter", &fam.help);
                    let mut rows: Vec<_> = series.values().collect();
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    for (labels, v) in rows {
                        let _ = writeln!(
                            w.out,
                            "{base}_total{} {}",
                            fmt_labels(labels, None),
                            fmt_f64(*v)
                        );
                    }
                }
                GuestKind::Gauge(series) => {
                    w.header(name, "gauge", &fam.help);
                    let mut rows: Vec<_> = series.values().collect();
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    for (labels, v) in rows {
                        let _ =
                            writeln!(w.out, "{name}{} {}", fmt_labels(labels, None), fmt_f64(*v));
                    }
                }
                GuestKind::Histogram(series) => {
                    w.header(name, "histogram", &fam.help);
                    let mut rows: Vec<_> = series.values().collect();
                    rows.sort_by(|a, b| a.0.cmp(&b.0));
                    for (labels, h) in rows {
                        let mut cumulative = 0;
                        let total: u64 = h.counts.iter().sum();
                        for (i, bound) in h
                            .bounds
                            .iter()
                            .copied()
                            .chain(std::iter::once(f64::INFINITY))
                            .enumerate()
                        {
                            cumulative += h.counts[i];
                            let le = fmt_f64(bound);
                            let _ = write!(
                                w.out,
                                "{name}_bucket{} {cumulative}",
                                fmt_labels(labels, Some(("le", &le)))
                            );
                            if w.openmetrics
                                && cumulative == total
                                && i == h.bounds.len()
                                && let Some(ex) = &h.exemplar
                            {
                                let _ = write!(
                                    w.out,
                                    " # {{trace_id=\"{}\"}} {} {:.3}",
                                    ex.trace_id,
                                    fmt_f64(ex.value),
                                    ex.timestamp
                                );
                            }
                            w.out.push('\n');
                        }
                        let l = fmt_labels(labels, None);
                        let _ = writeln!(w.out, "{name}_sum{l} {}", fmt_f64(h.sum));
                        let _ = writeln!(w.out, "{name}_count{l} {total}");
                    }
                }
            }
        }
    }
}

struct Writer<'a> {
    out: &'a mut String,
    openmetrics: bool,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn labels(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Writer<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn counter(&mut self, base: &str, help: &str, fam: &Family<Counter>) {
        // OpenMetrics names the family without `_total`; 0.0.4 with it.
        let family = if self.openmetrics {
            base.to_string()
        } else {
            format!("{base}_total")
        };
        self.header(&family, "counter", help);
        for (values, c) in fam.snapshot() {
            let _ = writeln!(
                self.out,
                "{base}_total{} {}",
                labels(fam.labels, &values, None),
                c.get()
            );
        }
    }

    fn gauge(&mut self, name: &str, help: &str, fam: &Family<Gauge>) {
        self.header(name, "gauge", help);
        for (values, g) in fam.snapshot() {
            let _ = writeln!(
                self.out,
                "{name}{} {}",
                labels(fam.labels, &values, None),
                g.get()
            );
        }
    }

    fn histogram(&mut self, name: &str, help: &str, fam: &Family<Histogram>) {
        self.header(name, "histogram", help);
        for (values, h) in fam.snapshot() {
            let exemplars = h.exemplars.lock().map(|e| e.clone()).unwrap_or_default();
            let mut cumulative = 0;
            for (i, bound) in h
                .bounds
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .enumerate()
            {
                cumulative += h.counts[i].load(Ordering::Relaxed);
                let le = fmt_f64(bound);
                let _ = write!(
                    self.out,
                    "{name}_bucket{} {cumulative}",
                    labels(fam.labels, &values, Some(("le", &le)))
                );
                if self.openmetrics
                    && let Some(Some(ex)) = exemplars.get(i)
                {
                    let _ = write!(
                        self.out,
                        " # {{trace_id=\"{}\"}} {} {:.3}",
                        ex.trace_id,
                        fmt_f64(ex.value),
                        ex.timestamp
                    );
                }
                self.out.push('\n');
            }
            let l = labels(fam.labels, &values, None);
            let sum = f64::from_bits(h.sum_bits.load(Ordering::Relaxed));
            let _ = writeln!(self.out, "{name}_sum{l} {}", fmt_f64(sum));
            let _ = writeln!(self.out, "{name}_count{l} {}", h.count());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_exemplars_only_in_openmetrics() {
        let m = Metrics::new();
        let h = m.request_duration.with(&["alpha", "/alpha", "GET", "200"]);
        h.observe(0.003, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
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
        assert!(
            om.contains("le=\"0.005\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.003 "),
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
