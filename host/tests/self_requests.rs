//! Requests a component sends to its own app: `http://self.alt`, a relative
//! URL and `http://<id>.spin.internal` (service chaining), served in-process
//! by the real host, each granted by `allowed_outbound_hosts`, in one trace.

mod common;
use common::*;

use common::otlp::{Receiver, attr_of, hex};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "self-requests"
[[trigger.http]]
route = "/caller/..."
component = "caller"
[[trigger.http]]
route = "/target/..."
component = "target"
[[trigger.http]]
route = "/denied"
component = "denied"
[[trigger.http]]
route = { private = true }
component = "hidden"
[component.caller]
source = "{wasm}/alpha.wasm"
allowed_outbound_hosts = ["http://self", "http://*.spin.internal"]
[component.target]
source = "{wasm}/alpha.wasm"
[component.denied]
source = "{wasm}/alpha.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:1"]
[component.hidden]
source = "{wasm}/alpha.wasm"
"#;

/// What `alpha` says it fetched, and the fetched body as JSON.
fn fetched(r: &Reply) -> (serde_json::Value, serde_json::Value) {
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let f = j["fetched"].clone();
    let body = f["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (f, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn self_requests_and_chaining_reach_the_app_in_process() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);

    // `http://self.alt`: routed by path, as a client's request would be.
    let r = get(&g.url("/caller/a?fetch=http://self.alt/target/x?q=1")).await;
    let (f, inner) = fetched(&r);
    assert_eq!(f["status"], 200, "{f}");
    assert_eq!(inner["route"], "alpha", "{inner}");
    assert_eq!(inner["path"], "/target/x?q=1", "{inner}");
    let h = &inner["headers"];
    assert_eq!(h["spin-full-url"], "http://self.alt/target/x?q=1", "{h}");
    assert_eq!(h["spin-component-route"], "/target", "{h}");
    assert_eq!(h["spin-path-info"], "/x", "{h}");
    assert_eq!(h["spin-client-addr"], "0.0.0.0:0", "{h}");

    // A relative URL, as Spin's SDKs send it: the same router.
    let r = get(&g.url("/caller/b?fetch=/target/y")).await;
    let (f, inner) = fetched(&r);
    assert_eq!(f["status"], 200, "{f}");
    assert_eq!(inner["path"], "/target/y", "{inner}");
    assert_eq!(inner["headers"]["spin-full-url"], "http://self/target/y");

    // A path no route matches: the app's own 404.
    let r = get(&g.url("/caller/c?fetch=http://self.alt/nowhere")).await;
    let (f, _) = fetched(&r);
    assert_eq!(f["status"], 404, "{f}");

    // Service chaining reaches a private component, with the whole path
    // as its path info.
    let r = get(&g.url("/caller/d?fetch=http://hidden.spin.internal/deep/er")).await;
    let (f, inner) = fetched(&r);
    assert_eq!(f["status"], 200, "{f}");
    assert_eq!(inner["headers"]["spin-path-info"], "/deep/er", "{inner}");
    assert_eq!(inner["headers"]["spin-component-route"], "", "{inner}");
    // A component the app does not have.
    let r = get(&g.url("/caller/e?fetch=http://nope.spin.internal/")).await;
    let j = r.json();
    let error = j["fetched"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("DestinationNotFound"), "{j}");

    // Private components are not routed from outside.
    assert_eq!(get(&g.url("/deep/er")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_not_granted_the_app_cannot_reach_it() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);
    for url in [
        "http://self.alt/target",
        "/target",
        "http://self/target",
        "http://target.spin.internal/",
        "http://hidden.spin.internal/",
    ] {
        let r = get(&g.url(&format!("/denied?fetch={url}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        let error = j["fetched"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("HttpRequestDenied"), "{url}: {j}");
    }
    // Each denial is counted under the label the manifest allows.
    let metrics = get(&g.admin_url("/metrics")).await.text();
    let denied = metrics
        .lines()
        .find(|l| l.starts_with("gantry_outbound_denied_total") && l.contains("denied"))
        .unwrap_or_default();
    assert!(denied.ends_with(" 5"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_that_never_ends_is_cut() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);
    // Each level asks the next to fetch the rest of the URL: twelve levels
    // deep, past the limit of eight.
    let mut url = "http://self.alt/target/end".to_string();
    for _ in 0..12 {
        url = format!("http://self.alt/caller/n?fetch={url}");
    }
    let r = get(&g.url(&format!("/caller/top?fetch={url}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Walk down to where the chain was cut.
    let mut level = r.json();
    let mut depth = 0;
    loop {
        let f = &level["fetched"];
        if let Some(e) = f["error"].as_str() {
            assert!(e.contains("LoopDetected"), "{level}");
            break;
        }
        assert_eq!(f["status"], 200, "{level}");
        level = serde_json::from_str(f["body"].as_str().unwrap_or("null")).unwrap_or_default();
        depth += 1;
        assert!(depth <= 8, "the chain went past eight hops: {level}");
    }
    assert_eq!(depth, 8, "cut after eight hops");
    // The host still serves.
    assert_eq!(get(&g.url("/target/after")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_request_is_one_trace_with_two_server_spans() {
    wasm("alpha");
    let rx = Receiver::start().await;
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start_env(
        &manifest,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let r = get_traced(
        &g.url("/caller/t?fetch=http://self.alt/target/t"),
        &format!("00-{trace}-00f067aa0ba902b7-01"),
    )
    .await;
    let (f, inner) = fetched(&r);
    assert_eq!(f["status"], 200, "{f}");
    let outer = rx
        .wait_for("caller's server span", |s| {
            s.name == "GET /caller/..." && hex(&s.trace_id) == trace
        })
        .await;
    let client = rx
        .wait_for("the client span", |s| {
            s.kind == SpanKind::Client as i32 && hex(&s.trace_id) == trace
        })
        .await;
    let target = rx
        .wait_for("target's server span", |s| {
            s.name == "GET /target/..." && hex(&s.trace_id) == trace
        })
        .await;
    assert_eq!(target.kind, SpanKind::Server as i32);
    assert_eq!(client.parent_span_id, outer.span_id);
    assert_eq!(target.parent_span_id, client.span_id);
    assert_eq!(
        attr_of(&target.attributes, "gantry.component.id").as_deref(),
        Some("target")
    );
    // The guest saw the trace context naming its own server span.
    let seen = inner["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(seen.contains(&hex(&target.span_id)), "{seen}");
}
