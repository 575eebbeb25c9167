//! OTLP over TLS: traces, logs and metrics reach an `https://` endpoint whose
//! certificate a self-signed test CA issued, over http/protobuf and over
//! gRPC, when `OTEL_EXPORTER_OTLP_CERTIFICATE` names that CA; without it the
//! handshake is refused (the CA is not among the system's roots) and the
//! loss is counted, the requests unharmed.

mod common;
use common::otlp::{Receiver, TestCa};
use common::*;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn env_for(
    rx: &Receiver,
    protocol: &str,
    ca_file: Option<&std::path::Path>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), rx.endpoint()),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            protocol.to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL".to_string(), "200".to_string()),
        (
            "OTEL_SERVICE_NAME".to_string(),
            format!("gantry-tls-{protocol}"),
        ),
        // The system's bundle must not be what makes it pass.
        ("SSL_CERT_FILE".to_string(), "/nonexistent".to_string()),
    ];
    if let Some(ca) = ca_file {
        env.push((
            "OTEL_EXPORTER_OTLP_CERTIFICATE".to_string(),
            ca.display().to_string(),
        ));
    }
    env
}

async fn exports_over_tls(protocol: &str) {
    wasm("alpha");
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("write CA");
    let rx = Receiver::start_tls(&ca).await;
    let g = Gantry::start_env(
        &workspace().join("spin.toml"),
        &[],
        &env_for(&rx, protocol, Some(&ca_file)),
    );
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    let span = rx
        .wait_for("server span of /alpha over TLS", |s| {
            s.name.contains("/alpha")
        })
        .await;
    assert_eq!(span.kind, 2, "a server span");
    rx.wait("metrics over TLS", |got| {
        got.metrics
            .iter()
            .any(|m| m.name == "http.server.request.duration")
            .then_some(())
    })
    .await;
    let services = rx.got.lock().unwrap().services.clone();
    assert!(
        services
            .iter()
            .any(|s| s == &format!("gantry-tls-{protocol}")),
        "{services:?}"
    );
    assert_eq!(rx.tls_failures.load(Ordering::SeqCst), 0);
    println!(
        "{protocol}: spans and metrics arrived at {} over TLS",
        rx.endpoint()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_protobuf_exports_to_a_tls_endpoint_with_the_configured_ca() {
    exports_over_tls("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_exports_to_a_tls_endpoint_with_the_configured_ca() {
    exports_over_tls("grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_is_refused_and_counted() {
    wasm("alpha");
    let ca = TestCa::new();
    let rx = Receiver::start_tls(&ca).await;
    let g = Gantry::start_env(
        &workspace().join("spin.toml"),
        &[],
        &env_for(&rx, "http/protobuf", None),
    );
    for _ in 0..3 {
        assert_eq!(get(&g.url("/alpha")).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let metrics = get(&g.admin_url("/metrics")).await.text();
        let dropped = metrics
            .lines()
            .find(|l| l.starts_with("gantry_telemetry_dropped_total{signal=\"traces\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 && rx.tls_failures.load(Ordering::SeqCst) > 0 {
            break dropped;
        }
        assert!(
            Instant::now() < deadline,
            "no refused handshake and counted drop; tls failures {}, metrics:\n{metrics}",
            rx.tls_failures.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = rx.got.lock().unwrap();
    assert!(
        got.spans.is_empty() && got.metrics.is_empty(),
        "data crossed an untrusted TLS connection"
    );
    println!(
        "untrusted CA: {} handshakes refused, {dropped} spans counted as dropped",
        rx.tls_failures.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_ca_file_is_refused_at_start_naming_the_variable() {
    wasm("alpha");
    let manifest = workspace().join("spin.toml");
    let (_, out) = gantry_fails(
        &[
            "up",
            "-f",
            manifest.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ],
    );
    assert!(
        out.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && out.contains("/nonexistent/ca.pem"),
        "{out}"
    );
}
