//! Metrics over OTLP: every `OTEL_METRIC_EXPORT_INTERVAL` the same snapshot
//! that `/metrics` renders is encoded as an OTLP `ExportMetricsServiceRequest`
//! (cumulative temporality, OTel instrument names and units, exemplars with
//! trace ids) and pushed over http/protobuf or gRPC, configured by the
//! standard `OTEL_EXPORTER_OTLP[_METRICS]_*` variables.
//!
//! Why not the SDK's `MeterProvider`: Gantry's registry is recorded with a few
//! atomic adds on the request path and read only when someone asks; the SDK
//! cannot export a registry it does not own (its `ResourceMetrics` cannot be
//! built outside it), and recording everything twice would tax every request.
//! So the push happens here, off the request path, from one source of truth.
//! Points a push fails to deliver are counted in
//! `gantry_telemetry_dropped_total{signal="metrics"}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::metrics::Metrics;
use super::otlp_env::{
    Protocol, env_first, env_millis, export_timeout, grpc_endpoint, grpc_tls, http_client,
    http_signal_url, otlp_configured, protocol, resource, signal_headers,
};

/// Where and how pushes go.
enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        headers: Vec<(String, String)>,
    },
}

/// The running exporter; [`MetricsExport::shutdown`] pushes one last time.
pub struct MetricsExport {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Transport {
    fn from_env() -> anyhow::Result<Transport> {
        match protocol("METRICS")? {
            Protocol::Grpc => {
                let endpoint = grpc_endpoint("METRICS");
                let mut channel = tonic::transport::Channel::from_shared(endpoint.clone())
                    .map_err(|e| anyhow::anyhow!("OTLP metrics endpoint {endpoint:?}: {e}"))?
                    .timeout(export_timeout("METRICS"));
                if let Some(tls) = grpc_tls("METRICS", &endpoint)? {
                    channel = channel.tls_config(tls).map_err(|e| {
                        anyhow::anyhow!("OTLP metrics endpoint {endpoint:?}: TLS: {e}")
                    })?;
                }
                Ok(Transport::Grpc {
                    client: MetricsServiceClient::new(channel.connect_lazy()),
                    headers: signal_headers("METRICS"),
                })
            }
            Protocol::HttpProtobuf => {
                let url = http_signal_url(
                    "METRICS",
                    env_first(&["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]),
                    env_first(&["OTEL_EXPORTER_OTLP_ENDPOINT"]),
                )?;
                Ok(Transport::Http {
                    client: http_client("METRICS")?,
                    url,
                    headers: signal_headers("METRICS"),
                })
            }
        }
    }

    async fn send(&mut self, request: ExportMetricsServiceRequest) -> anyhow::Result<()> {
        match self {
            Transport::Http {
                client,
                url,
                headers,
            } => {
                let mut req = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec());
                for (k, v) in headers.iter() {
                    req = req.header(k.as_str(), v.as_str());
                }
                let resp = req.send().await?;
                if !resp.status().is_success() {
                    anyhow::bail!("collector answered {}", resp.status());
                }
                Ok(())
            }
            Transport::Grpc { client, headers } => {
                let mut req = tonic::Request::new(request);
                for (k, v) in headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        k.to_ascii_lowercase()
                            .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                        v.parse(),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
                client.export(req).await?;
                Ok(())
            }
        }
    }
}

impl MetricsExport {
    /// Starts pushing if a metrics endpoint is configured (and neither
    /// `OTEL_SDK_DISABLED` nor `OTEL_METRICS_EXPORTER=none` says otherwise).
    pub fn start(metrics: Arc<Metrics>) -> anyhow::Result<Option<MetricsExport>> {
        if !otlp_configured("METRICS") {
            return Ok(None);
        }
        let mut transport = Transport::from_env()?;
        let interval = env_millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000);
        let timeout = env_millis("OTEL_METRIC_EXPORT_TIMEOUT", 30_000);
        let resource = resource_proto();
        let started = SystemTime::now();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut failing = false;
            loop {
                let last = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = &mut stopped => true,
                };
                let (request, points) =
                    encode(&metrics, resource.clone(), started, SystemTime::now());
                let outcome = tokio::time::timeout(timeout, transport.send(request)).await;
                let error = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some(format!("no answer within {timeout:?}")),
                };
                match error {
                    Some(e) => {
                        metrics.telemetry_dropped.with(&["metrics"]).add(points);
                        // One warning when export starts failing, not one a push.
                        if !failing {
                            tracing::warn!("OTLP metrics export failed: {e}");
                        }
                        failing = true;
                    }
                    None => {
                        if failing {
                            tracing::info!("OTLP metrics export recovered");
                        }
                        failing = false;
                    }
                }
                if last {
                    break;
                }
            }
        });
        Ok(Some(MetricsExport { stop, task }))
    }

    /// Pushes the final figures and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn resource_proto() -> Resource {
    let attributes = resource()
        .iter()
        .map(|(k, v)| {
            use opentelemetry::Value;
            let value = match v {
                Value::Bool(b) => any_value::Value::BoolValue(*b),
                Value::I64(i) => any_value::Value::IntValue(*i),
                Value::F64(f) => any_value::Value::DoubleValue(*f),
                other => any_value::Value::StringValue(other.to_string()),
            };
            KeyValue {
                key: k.to_string(),
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            }
        })
        .collect();
    Resource {
        attributes,
        ..Default::default()
    }
}

/// A Prometheus label name as the OTel attribute it stands for.
fn attribute_name(label: &str) -> &str {
    match label {
        "http_route" => "http.route",
        "http_request_method" => "http.request.method",
        "http_response_status_code" => "http.response.status_code",
        "server_address" => "server.address",
        other => other,
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Encodes every family of `metrics` as one OTLP export request, from the
/// data model its registry encodes (`Metrics::data_model`); also returns
/// how many points it holds.
pub fn encode(
    metrics: &Metrics,
    resource: Resource,
    start: SystemTime,
    now: SystemTime,
) -> (ExportMetricsServiceRequest, u64) {
    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pm;
    let (start, now) = (nanos(start), nanos(now));
    let cumulative = AggregationTemporality::Cumulative as i32;
    let (families, names) = metrics.data_model();
    let mut points = 0u64;
    let attrs = |labels: &[pm::LabelPair]| -> Vec<KeyValue> {
        labels
            .iter()
            .map(|l| string_kv(attribute_name(&l.name), &l.value))
            .collect()
    };
    let number = |m: &pm::Metric, value: f64| NumberDataPoint {
        attributes: attrs(&m.label),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let exemplar = |e: &pm::Exemplar| Exemplar {
        time_unix_nano: e
            .timestamp
            .as_ref()
            .map(|t| (t.seconds.max(0) as u64) * 1_000_000_000 + t.nanos.max(0) as u64)
            .unwrap_or(now),
        trace_id: e
            .label
            .iter()
            .find(|l| l.name == "trace_id")
            .and_then(|l| opentelemetry::trace::TraceId::from_hex(&l.value).ok())
            .map(|t| t.to_bytes().to_vec())
            .unwrap_or_default(),
        value: Some(exemplar::Value::AsDouble(e.value)),
        ..Default::default()
    };
    let metrics = families
        .into_iter()
        .filter(|f| !f.metric.is_empty())
        .filter_map(|f| {
            let base = f.name.strip_suffix("_total").unwrap_or(&f.name);
            let (name, unit) = names
                .get(&f.name)
                .or_else(|| names.get(base))
                .cloned()
                .unwrap_or_else(|| (f.name.clone(), ""));
            points += f.metric.len() as u64;
            let data = match pm::MetricType::try_from(f.r#type).ok()? {
                pm::MetricType::Counter => metric::Data::Sum(Sum {
                    data_points: f
                        .metric
                        .iter()
                        .filter_map(|m| Some(number(m, m.counter.as_ref()?.value)))
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                pm::MetricType::Gauge => metric::Data::Gauge(Gauge {
                    data_points: f
                        .metric
                        .iter()
                        .filter_map(|m| Some(number(m, m.gauge.as_ref()?.value)))
                        .collect(),
                }),
                pm::MetricType::Histogram => metric::Data::Histogram(Histogram {
                    aggregation_temporality: cumulative,
                    data_points: f
                        .metric
                        .iter()
                        .filter_map(|m| {
                            let h = m.histogram.as_ref()?;
                            // Prometheus buckets are cumulative, OTLP's are
                            // not; OTLP leaves the +Inf bound implicit.
                            let mut below = 0;
                            let mut bucket_counts: Vec<u64> = h
                                .bucket
                                .iter()
                                .map(|b| {
                                    let n = b.cumulative_count.saturating_sub(below);
                                    below = b.cumulative_count;
                                    n
                                })
                                .collect();
                            let explicit_bounds: Vec<f64> = h
                                .bucket
                                .iter()
                                .map(|b| b.upper_bound)
                                .filter(|b| b.is_finite())
                                .collect();
                            if bucket_counts.len() == explicit_bounds.len() {
                                bucket_counts.push(h.sample_count.saturating_sub(below));
                            }
                            Some(HistogramDataPoint {
                                attributes: attrs(&m.label),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: h.sample_count,
                                sum: Some(h.sample_sum),
                                bucket_counts,
                                explicit_bounds,
                                exemplars: h
                                    .bucket
                                    .iter()
                                    .filter_map(|b| b.exemplar.as_ref())
                                    .map(exemplar)
                                    .collect(),
                                ..Default::default()
                            })
                        })
                        .collect(),
                }),
                _ => return None,
            };
            Some(Metric {
                name,
                description: f.help,
                unit: unit.to_string(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "gantry".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp_env::parse_headers;

    #[test]
    fn endpoints_follow_the_specification_and_bad_ones_are_refused() {
        for (signal, path) in [("TRACES", "traces"), ("METRICS", "metrics")] {
            let url = |s: Option<&str>, g: Option<&str>| {
                http_signal_url(signal, s.map(String::from), g.map(String::from))
                    .map_err(|e| e.to_string())
            };
            assert_eq!(
                url(None, Some("http://c:4318/")),
                Ok(format!("http://c:4318/v1/{path}"))
            );
            assert_eq!(
                url(Some("https://c/custom"), Some("http://other:4318")).as_deref(),
                Ok("https://c/custom")
            );
            assert_eq!(
                url(None, None),
                Ok(format!("http://localhost:4318/v1/{path}"))
            );
            let e = url(None, Some("collector:4318")).err().unwrap_or_default();
            assert!(
                e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("http://"),
                "{e}"
            );
            let e = url(Some("not a url"), None).err().unwrap_or_default();
            assert!(
                e.contains(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
                    && e.contains("not a URL"),
                "{e}"
            );
        }
    }

    #[test]
    fn headers_parse_like_the_specification_says() {
        assert_eq!(
            parse_headers("api-key=secret%20value, x-tenant = t1,broken"),
            vec![
                ("api-key".to_string(), "secret value".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ]
        );
    }

    #[test]
    fn a_snapshot_encodes_with_otel_names_and_exemplars() {
        let m = Metrics::new();
        m.request_duration
            .with(&["alpha", "/alpha", "GET", "200"])
            .observe(
                0.003,
                opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").ok(),
            );
        m.guest_failures.with(&["broken", "trap"]).inc();
        let (req, _) = encode(&m, Resource::default(), UNIX_EPOCH, SystemTime::now());
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let duration = metrics
            .iter()
            .find(|m| m.name == "http.server.request.duration")
            .expect("duration");
        assert_eq!(duration.unit, "s");
        let Some(metric::Data::Histogram(h)) = &duration.data else {
            panic!("not a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 1);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert!(p.attributes.iter().any(|kv| kv.key == "http.route"));
        assert_eq!(p.exemplars[0].trace_id.len(), 16);
        let failures = metrics
            .iter()
            .find(|m| m.name == "gantry.guest.failures")
            .expect("failures");
        let Some(metric::Data::Sum(s)) = &failures.data else {
            panic!("not a sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.0))
        );
        // Families with no series are left out.
        assert!(!metrics.iter().any(|m| m.name == "gantry.outbound.denied"));
    }
}
