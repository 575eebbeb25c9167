//! Logs: guest stdout/stderr attributed to component and request (host log
//! and OTLP log records with trace and span ids), and JSON host logs whose
//! request lines carry the trace id and component.

mod common;
use common::otlp::{Receiver, attr_of, hex};
use common::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_becomes_otlp_logs_with_the_request_trace() {
    wasm("hello");
    let rx = Receiver::start().await;
    let upstream = Upstream::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_SERVICE_NAME", "gantry-logs-test".to_string()),
        ("SPIN_VARIABLE_UPSTREAM_URL", upstream.url()),
        ("SPIN_VARIABLE_UPSTREAM_HOST", upstream.url()),
    ];
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/hello"), &traceparent).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let expected = format!("calling {}", upstream.url());
    let record = rx
        .wait_for_log("hello's stdout line", |l| {
            common::otlp::any_to_string(l.body.as_ref()).as_deref() == Some(expected.as_str())
        })
        .await;
    assert_eq!(hex(&record.trace_id), TRACE);
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /hello" && hex(&s.trace_id) == TRACE
        })
        .await;
    // The line is attributed to the request's server span.
    assert_eq!(record.span_id, server.span_id);
    assert_eq!(
        attr_of(&record.attributes, "gantry.component.id").as_deref(),
        Some("hello")
    );
    assert_eq!(
        attr_of(&record.attributes, "log.iostream").as_deref(),
        Some("stdout")
    );
    assert_eq!(record.severity_text, "INFO");
    let services = rx.got.lock().unwrap().services.clone();
    assert!(
        services.iter().any(|s| s == "gantry-logs-test"),
        "{services:?}"
    );

    // The same line is in the host log, with component and trace id.
    let log = g.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_else(|| panic!("guest line not in host log:\n{log}"));
    assert!(line.contains("component=hello"), "{line}");
    assert!(line.contains(TRACE), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_trace_id_and_component_on_request_lines() {
    wasm("broken");
    let g = Gantry::start(&workspace().join("spin.toml"), &["--log-format", "json"]);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/broken"), &traceparent).await;
    assert_eq!(r.status, 500);
    // The trap is logged while the request is handled: give the writer a moment.
    let mut found = None;
    for _ in 0..40 {
        found = g
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("guest trapped"))
            });
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = found.unwrap_or_else(|| panic!("no JSON trap line:\n{}", g.stderr()));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["span"]["component"], "broken", "{line}");
    assert_eq!(line["span"]["trace_id"], TRACE, "{line}");
    assert_eq!(line["span"]["route"], "/broken", "{line}");
    // Every line of the log is JSON.
    for l in g.stderr().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}
