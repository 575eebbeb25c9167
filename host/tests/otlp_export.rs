//! OTLP export of all three signals: metrics pushed to a receiver that
//! decodes them, and traces, logs and metrics delivered to a real collector
//! (rotel, installed by scripts/setup.sh) over gRPC and over http/protobuf.

mod common;
use common::collector::Collector;
use common::otlp::{Receiver, attr_of};
use common::*;

use opentelemetry_proto::tonic::metrics::v1::metric;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_pushed_over_otlp_with_otel_names_and_headers() {
    wasm("alpha");
    let rx = Receiver::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=team%20a".to_string(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_string()),
        ("OTEL_TRACES_EXPORTER", "none".to_string()),
        ("OTEL_SERVICE_NAME", "gantry-metrics-test".to_string()),
    ];
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    for _ in 0..3 {
        assert_eq!(get(&g.url("/alpha")).await.status, 200);
    }

    // The request-duration histogram, counted for the three requests.
    let count = rx
        .wait(
            "http.server.request.duration for /alpha with count 3",
            |got| {
                got.metrics
                    .iter()
                    .rev()
                    .filter(|m| m.name == "http.server.request.duration")
                    .find_map(|m| match &m.data {
                        Some(metric::Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .find(|p| {
                                attr_of(&p.attributes, "http.route").as_deref() == Some("/alpha")
                                    && p.count == 3
                            })
                            .map(|p| p.count),
                        _ => None,
                    })
            },
        )
        .await;
    assert_eq!(count, 3);
    let got = rx.got.lock().unwrap();
    let duration = got
        .metrics
        .iter()
        .find(|m| m.name == "http.server.request.duration")
        .expect("duration");
    assert_eq!(duration.unit, "s");
    // alpha's own counter, recorded through wasi:otel, travels too.
    assert!(
        got.metrics.iter().any(|m| m.name == "alpha_requests"),
        "guest metric missing: {:?}",
        got.metrics.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    assert!(got.services.iter().any(|s| s == "gantry-metrics-test"));
    let headers = got.last_headers.clone().expect("headers");
    assert_eq!(headers["x-tenant"], "team a");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    // OTEL_TRACES_EXPORTER=none: no spans were sent.
    assert!(got.spans.is_empty(), "spans exported despite =none");
}

async fn deliver_all_signals(protocol: &str) {
    wasm("hello");
    let collector = Collector::start();
    let upstream = Upstream::start().await;
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", collector.grpc),
        _ => format!("http://127.0.0.1:{}", collector.http),
    };
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_string()),
        ("SPIN_VARIABLE_UPSTREAM_URL", upstream.url()),
        ("SPIN_VARIABLE_UPSTREAM_HOST", upstream.url()),
    ];
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    // A trace id of its own per protocol, so the two runs cannot be confused.
    let trace = if protocol == "grpc" {
        "5af7651916cd43dd8448eb211c80319c"
    } else {
        "6af7651916cd43dd8448eb211c80319c"
    };
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let r = get_traced(&g.url("/hello"), &traceparent).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let out = collector
        .wait_for_all(&[
            // Traces: the server span and the guest span, in the caller's trace.
            "GET /hello".to_string(),
            "example-request".to_string(),
            trace.to_string(),
            // Logs: hello's stdout line.
            format!("calling {}", upstream.url()),
            // Metrics: the request duration histogram.
            "http.server.request.duration".to_string(),
        ])
        .await;
    assert!(out.contains("gantry.component.id"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_collector_receives_traces_logs_and_metrics_over_grpc() {
    deliver_all_signals("grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_collector_receives_traces_logs_and_metrics_over_http() {
    deliver_all_signals("http/protobuf").await;
}

/// `gantry up` on the root app with nothing set: `/hello` calls `/alpha`
/// of the same app in-process (no network), and the real collector gets
/// one trace holding both server spans, the second a child of the first's
/// client span.
#[tokio::test(flavor = "multi_thread")]
async fn hello_calls_the_app_itself_in_one_trace_at_a_real_collector() {
    wasm("hello");
    wasm("alpha");
    let collector = Collector::start();
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", collector.http),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let trace = "8af7651916cd43dd8448eb211c80319c";
    let r = get_traced(&g.url("/hello"), &format!("00-{trace}-b7ad6b7169203331-01")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("http://self.alt/alpha answered 200"),
        "{}",
        r.text()
    );
    let out = collector
        .wait_for_all(&["GET /hello".to_string(), "GET /alpha".to_string()])
        .await;
    // The collector's spans of this trace, as it printed them.
    let spans: Vec<PrintedSpan> = out
        .split("Span #")
        .skip(1)
        .map(PrintedSpan::parse)
        .filter(|s| s.trace == trace)
        .collect();
    let find = |name: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} span {name:?} in:\n{out}"))
    };
    let hello = find("GET /hello", "SPAN_KIND_SERVER");
    let guest = find("example-request", "SPAN_KIND_INTERNAL");
    let client = find("GET", "SPAN_KIND_CLIENT");
    let alpha = find("GET /alpha", "SPAN_KIND_SERVER");
    assert_eq!(hello.parent, "b7ad6b7169203331", "{out}");
    assert_eq!(guest.parent, hello.id, "{out}");
    assert_eq!(client.parent, guest.id, "{out}");
    assert_eq!(alpha.parent, client.id, "{out}");
    let servers = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_SERVER")
        .count();
    assert_eq!(servers, 2, "{out}");
}

/// One span as the collector's debug output shows it.
struct PrintedSpan {
    trace: String,
    parent: String,
    id: String,
    name: String,
    kind: String,
}

impl PrintedSpan {
    fn parse(text: &str) -> PrintedSpan {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == key).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        PrintedSpan {
            trace: field("Trace ID"),
            parent: field("Parent ID"),
            id: field("ID"),
            name: field("Name"),
            kind: field("Kind"),
        }
    }
}
