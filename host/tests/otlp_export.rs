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
