//! W3C trace context end to end, verified through spans exported over real
//! OTLP/HTTP (protobuf) to a receiver in this test that decodes them.

mod common;
use common::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

/// An OTLP/HTTP receiver: accepts `POST /v1/traces` and keeps every span.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let store = store.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let decoded = (path == "/v1/traces")
                                    .then(|| ExportTraceServiceRequest::decode(body).ok())
                                    .flatten();
                                if let Some(msg) = decoded {
                                    let mut s = store.lock().unwrap();
                                    for rs in msg.resource_spans {
                                        for ss in rs.scope_spans {
                                            s.extend(ss.spans);
                                        }
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until a span matching `pred` has arrived.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.spans.lock().unwrap().iter().find(|s| pred(s)) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "no {what} span arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| {
            kv.value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    Value::IntValue(i) => i.to_string(),
                    other => format!("{other:?}"),
                })
        })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn otel_env(rx: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
    assert_eq!(
        attr(&server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&server, "gantry.component.id").as_deref(),
        Some("hello")
    );
    assert!(attr(&server, "gantry.component.digest").is_some_and(|d| d.starts_with("sha256:")));

    // The client span of the outbound call: child of the server span.
    let client = rx
        .wait_for("client", |s| {
            s.kind == SpanKind::Client as i32 && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(client.parent_span_id, server.span_id);
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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = send(
        "GET",
        &g.url("/alpha"),
        &[("traceparent", &traceparent)],
        vec![],
    )
    .await;
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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let g = Gantry::start_env(&workspace().join("spin.toml"), &[], &env);
    let traceparent = format!("00-{TRACE}-{CALLER}-01");
    let r = send(
        "GET",
        &g.url("/beta?delay_ms=90"),
        &[("traceparent", &traceparent)],
        vec![],
    )
    .await;
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
    let r = send(
        "GET",
        &g.url("/hello"),
        &[("traceparent", &traceparent)],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = upstream
        .last_headers
        .lock()
        .unwrap()
        .clone()
        .expect("upstream was called");
    assert!(headers.get("traceparent").is_none(), "{headers:?}");
}
