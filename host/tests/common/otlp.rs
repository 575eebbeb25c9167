//! An OTLP/HTTP (protobuf) receiver for tests: accepts `POST /v1/traces`,
//! `/v1/logs` and `/v1/metrics`, decodes them with the protocol's own message
//! types and keeps what arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default)]
pub struct Received {
    pub spans: Vec<Span>,
    pub logs: Vec<LogRecord>,
    /// Every metric of every export, in arrival order.
    pub metrics: Vec<Metric>,
    /// `service.name` of every resource seen.
    pub services: Vec<String>,
    /// Headers of the last export, to check `OTEL_EXPORTER_OTLP_HEADERS`.
    pub last_headers: Option<http::HeaderMap>,
}

pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub got: Arc<Mutex<Received>>,
}

fn service_name(attrs: &[KeyValue]) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| any_to_string(kv.value.as_ref()))
}

/// Any OTLP value as text (strings as they are, numbers formatted).
pub fn any_to_string(
    v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    v.and_then(|v| v.value.as_ref()).map(|v| match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// The value of attribute `key`, as text.
pub fn attr_of(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| any_to_string(kv.value.as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn store(got: &Mutex<Received>, path: &str, headers: http::HeaderMap, body: Bytes) {
    let mut g = got.lock().unwrap();
    match path {
        "/v1/traces" => {
            if let Ok(msg) = ExportTraceServiceRequest::decode(body) {
                for rs in msg.resource_spans {
                    if let Some(r) = &rs.resource {
                        g.services.extend(service_name(&r.attributes));
                    }
                    for ss in rs.scope_spans {
                        g.spans.extend(ss.spans);
                    }
                }
            }
        }
        "/v1/logs" => {
            if let Ok(msg) = ExportLogsServiceRequest::decode(body) {
                for rl in msg.resource_logs {
                    if let Some(r) = &rl.resource {
                        g.services.extend(service_name(&r.attributes));
                    }
                    for sl in rl.scope_logs {
                        g.logs.extend(sl.log_records);
                    }
                }
            }
        }
        "/v1/metrics" => {
            if let Ok(msg) = ExportMetricsServiceRequest::decode(body) {
                for rm in msg.resource_metrics {
                    if let Some(r) = &rm.resource {
                        g.services.extend(service_name(&r.attributes));
                    }
                    for sm in rm.scope_metrics {
                        g.metrics.extend(sm.metrics);
                    }
                }
            }
        }
        _ => return,
    }
    g.last_headers = Some(headers);
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Received::default()));
        let shared = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let got = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let got = got.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req.headers().clone();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                store(&got, &path, headers, body);
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
        Receiver { addr, got }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `find` returns something from what has arrived.
    pub async fn wait<T>(&self, what: &str, find: impl Fn(&Received) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = find(&self.got.lock().unwrap()) {
                return t;
            }
            assert!(Instant::now() < deadline, "no {what} arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a span matching `pred` has arrived.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
        self.wait(&format!("{what} span"), |g| {
            g.spans.iter().find(|s| pred(s)).cloned()
        })
        .await
    }

    /// Waits until a log record matching `pred` has arrived.
    pub async fn wait_for_log(&self, what: &str, pred: impl Fn(&LogRecord) -> bool) -> LogRecord {
        self.wait(&format!("{what} log record"), |g| {
            g.logs.iter().find(|l| pred(l)).cloned()
        })
        .await
    }
}
