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
    /// TLS handshakes that failed (a client that does not trust the CA).
    pub tls_failures: Arc<std::sync::atomic::AtomicUsize>,
    tls: bool,
}

/// A self-signed CA and a server certificate it signed for `localhost` and
/// 127.0.0.1, in PEM.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gantry test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The OTLP path a gRPC method stands for.
fn grpc_signal_path(path: &str) -> Option<&'static str> {
    match path {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => Some("/v1/traces"),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => Some("/v1/logs"),
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => Some("/v1/metrics"),
        _ => None,
    }
}

type ReplyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// What the receiver answers: an empty protobuf message for OTLP/HTTP; for
/// gRPC an empty message frame and `grpc-status: 0` in the trailers.
fn reply(grpc: bool) -> http::Response<ReplyBody> {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    if grpc {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ];
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                frames,
            ))))
            .unwrap()
    } else {
        http::Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(BodyExt::boxed(Full::new(Bytes::new())))
            .unwrap()
    }
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
        Receiver::serve(None).await
    }

    /// The same receiver behind TLS (the certificate of `ca`), speaking
    /// OTLP/HTTP over HTTP/1.1 and OTLP/gRPC over HTTP/2 (ALPN).
    pub async fn start_tls(ca: &TestCa) -> Receiver {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Receiver::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Received::default()));
        let tls_failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shared = got.clone();
        let failures = tls_failures.clone();
        let is_tls = tls.is_some();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let got = shared.clone();
                let tls = tls.clone();
                let failures = failures.clone();
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
                                let grpc = grpc_signal_path(&path);
                                match grpc {
                                    // A gRPC message: flag byte, 4-byte length, message.
                                    Some(p) if body.len() >= 5 => {
                                        store(&got, p, headers, body.slice(5..))
                                    }
                                    _ => store(&got, &path, headers, body),
                                }
                                Ok::<_, std::convert::Infallible>(reply(grpc.is_some()))
                            }
                        },
                    );
                    let auto = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let _ = auto
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                let _ = auto
                                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                    .await;
                            }
                            Err(_) => {
                                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        Receiver {
            addr,
            got,
            tls_failures,
            tls: is_tls,
        }
    }

    pub fn endpoint(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
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
