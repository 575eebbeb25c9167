//! W3C trace context end to end, verified through spans exported over real
//! OTLP/HTTP (protobuf) to a receiver in this test that decodes them.

mod common;
use common::*;

use common::otlp::{Receiver, attr_of, hex};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};

fn attr(span: &Span, key: &str) -> Option<String> {
    attr_of(&span.attributes, key)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn otel_env(rx: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_SERVICE_NAME", "gantry-test".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_flows_from_caller_through_host_to_upstream() {
    wasm("hello");
    wasm("alpha");
    let rx = Receiver::start().await;
    let upstream = Upstream::start().await;
    let mut env = otel_env(&rx);
    env.push(("SPIN_VARIABLE_UPSTREAM_URL", upstream.url()));
    env.push(("SPIN_VARIABLE_UPSTREAM_HOST", upstream.url()));
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);

    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = send(
        "GET",
        &g.url("/hello"),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
            ("baggage", "tenant=t1"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The server span: child of the caller, named after the route.
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /hello" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CALLER);
    assert_eq!(attr(&server, "http.route").as_deref(), Some("/hello"));
    // Those written once per process, route or connection, and those
    // written per request.
    assert_eq!(attr(&server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(&server, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(attr(&server, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr(&server, "url.path").as_deref(), Some("/hello"));
    assert_eq!(
        attr(&server, "server.address"),
        Some(g.url("").trim_start_matches("http://").to_string())
    );
    assert_eq!(
        attr(&server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&server, "gantry.component.id").as_deref(),
        Some("hello")
    );
    assert!(attr(&server, "gantry.component.digest").is_some_and(|d| d.starts_with("sha256:")));
    // The client's address, written once per connection.
    assert_eq!(
        attr(&server, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(attr(&server, "client.port").is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)));

    // The guest's own span around the call: child of the server span.
    let guest = rx
        .wait_for("example-request", |s| {
            s.name == "example-request" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(guest.parent_span_id, server.span_id);
    assert_eq!(attr(&guest, "url.full"), Some(upstream.url()));
    assert_eq!(
        attr(&guest, "http.response.status_code").as_deref(),
        Some("200")
    );

    // The client span of the outbound call: child of the guest span.
    let client = rx
        .wait_for("client", |s| {
            s.kind == SpanKind::Client as i32 && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(client.parent_span_id, guest.span_id);
    assert_eq!(
        attr(&client, "http.response.status_code").as_deref(),
        Some("200")
    );

    // The upstream saw the same trace, with the client span as parent.
    let headers = upstream
        .last_headers
        .lock()
        .unwrap()
        .clone()
        .expect("upstream was called");
    let tp = headers["traceparent"].to_str().expect("ascii");
    assert_eq!(tp, format!("00-{TRACE}-{}-01", hex(&client.span_id)));
    assert_eq!(headers["tracestate"], "vendor=abc");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_sees_a_traceparent_naming_the_server_span() {
    wasm("alpha");
    let rx = Receiver::start().await;
    let env = otel_env(&rx);
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/alpha"), &traceparent).await;
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_string();
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /alpha" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(seen, format!("00-{TRACE}-{}-01", hex(&server.span_id)));

    // Without an incoming context, a new trace starts and the guest sees it.
    let r = get(&g.url("/alpha")).await;
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_string();
    assert!(seen.starts_with("00-") && !seen.contains(TRACE), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_spans_nest_under_the_server_span() {
    wasm("beta");
    let rx = Receiver::start().await;
    let env = otel_env(&rx);
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/beta?delay_ms=90"), &traceparent).await;
    assert_eq!(r.status, 200);
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /beta" && hex(&s.trace_id) == TRACE
        })
        .await;
    for step in 1..=3 {
        let name = format!("slow-step-{step}");
        let span = rx
            .wait_for(&name, |s| s.name == name && hex(&s.trace_id) == TRACE)
            .await;
        assert_eq!(span.parent_span_id, server.span_id, "{name}");
        assert_eq!(attr(&span, "delay_ms").as_deref(), Some("30"));
        let took = span.end_time_unix_nano - span.start_time_unix_nano;
        assert!(took >= 30_000_000, "{name} took {took} ns");
        assert!(span.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(span.end_time_unix_nano <= server.end_time_unix_nano);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn propagation_can_be_turned_off_per_component() {
    wasm("hello");
    let upstream = Upstream::start().await;
    let (_dir, manifest) = write_manifest(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "private-traces"
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "{{wasm}}/hello.wasm"
allowed_outbound_hosts = ["{url}"]
[component.hello.variables]
upstream_url = "{url}"
[component.hello.tool.gantry]
propagate_trace_context = false
"#,
        url = upstream.url()
    ));
    let g = Gantry::start(&manifest, &[]);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/hello"), &traceparent).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = upstream
        .last_headers
        .lock()
        .unwrap()
        .clone()
        .expect("upstream was called");
    assert!(headers.get("traceparent").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampler_comes_from_the_standard_variables() {
    wasm("alpha");
    let rx = Receiver::start().await;
    let mut env = otel_env(&rx);
    env.push(("OTEL_TRACES_SAMPLER", "always_off".into()));
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/alpha"), &traceparent).await;
    // Not sampled: the trace still flows to the guest, flagged unsampled...
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_string();
    assert!(
        seen.starts_with(&format!("00-{TRACE}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // ...and no span leaves the process (the batch delay is 100 ms).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let spans = rx.got.lock().unwrap().spans.len();
    assert_eq!(spans, 0, "always_off exported {spans} spans");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_ends_the_server_span_as_an_error_with_its_type() {
    wasm("broken");
    let rx = Receiver::start().await;
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &otel_env(&rx));
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = get_traced(&g.url("/broken"), &traceparent).await;
    assert_eq!(r.status, 500);
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /broken" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(hex(&server.parent_span_id), CALLER);
    assert_eq!(
        attr(&server, "http.response.status_code").as_deref(),
        Some("500")
    );
    assert_eq!(attr(&server, "error.type").as_deref(), Some("trap"));
    let status = server.status.clone().unwrap_or_default();
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.message.starts_with("guest trapped"), "{status:?}");
    // Sampled, and the parent is known to be remote (OTLP span flags).
    assert_eq!(server.flags & 0x3ff, 0x301, "flags {:#x}", server.flags);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_client_gives_up_on_still_exports_its_server_span() {
    wasm("beta");
    let rx = Receiver::start().await;
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &otel_env(&rx));
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let url = g.url("/beta?delay_ms=5000");
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        get_traced(&url, &traceparent),
    )
    .await;
    assert!(gave_up.is_err(), "beta answered before the client gave up");
    // Ended when the host dropped the request, long before beta's 5 s: no
    // status code, since no response was sent.
    let t0 = std::time::Instant::now();
    let server = rx
        .wait_for("server", |s| {
            s.name == "GET /beta" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "exported after {:?}",
        t0.elapsed()
    );
    assert_eq!(attr(&server, "http.response.status_code"), None);
    assert_eq!(server.status.clone().unwrap_or_default().code, 0);
    assert_eq!(hex(&server.parent_span_id), CALLER);
    // A root request (no traceparent) gets a new trace and no parent.
    let r = get(&g.url("/beta?delay_ms=1")).await;
    assert_eq!(r.status, 200);
    let root = rx
        .wait_for("root server span", |s| {
            s.name == "GET /beta" && hex(&s.trace_id) != TRACE
        })
        .await;
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(root.flags & 0x3ff, 0x101, "flags {:#x}", root.flags);
    assert_eq!(
        attr(&root, "http.response.status_code").as_deref(),
        Some("200")
    );
}
