//! `broken`: fails on purpose, so operators can see what a failing guest costs.
//!
//! - `GET /broken` (or `?mode=panic`): panics, which traps the instance (500).
//! - `?mode=loop`: spins forever; the host's request timeout ends it (504).
//! - `?mode=oom`: allocates until the instance's memory limit stops it (500).
//! - `?mode=error`: returns a handler error instead of a response (500).
//!
//! And guests that try to make the host pay for them; each costs only its
//! own request:
//! - `?mode=spans&n=N`: starts N `wasi:otel` spans and never ends them;
//! - `?mode=bad-time`: ends a span at the largest time a guest can give;
//! - `?mode=buckets`: records histogram buckets whose counts overflow;
//! - `?mode=logs&n=N`: emits N log records;
//! - `?mode=handles`: takes host resources (pollables) until refused.

use gantry_telemetry::raw;
use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;

fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn mode(query: Option<&str>) -> &str {
    param(query, "mode").unwrap_or("panic")
}

fn count(query: Option<&str>) -> u64 {
    param(query, "n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// A span context in the request's trace, with span id `n + 1`.
fn context(n: u64) -> raw::tracing::SpanContext {
    let outer = raw::tracing::outer_span_context();
    raw::tracing::SpanContext {
        trace_id: outer.trace_id,
        span_id: format!("{:016x}", n + 1),
        trace_flags: outer.trace_flags,
        is_remote: false,
        trace_state: Vec::new(),
    }
}

fn scope() -> raw::types::InstrumentationScope {
    raw::types::InstrumentationScope {
        name: "broken".into(),
        version: None,
        schema_url: None,
        attributes: Vec::new(),
    }
}

fn span_at(n: u64, time: raw::Datetime) -> raw::tracing::SpanData {
    raw::tracing::SpanData {
        span_context: context(n),
        parent_span_id: String::new(),
        span_kind: raw::tracing::SpanKind::Internal,
        name: "far-future".into(),
        start_time: time,
        end_time: time,
        attributes: Vec::new(),
        events: Vec::new(),
        links: Vec::new(),
        status: raw::tracing::Status::Unset,
        instrumentation_scope: scope(),
        dropped_attributes: 0,
        dropped_events: 0,
        dropped_links: 0,
    }
}

fn overflowing_buckets() -> raw::metrics::ResourceMetrics {
    use raw::metrics as wm;
    let time = raw::Datetime {
        seconds: 0,
        nanoseconds: 0,
    };
    wm::ResourceMetrics {
        resource: raw::types::Resource {
            attributes: Vec::new(),
            schema_url: None,
        },
        scope_metrics: vec![wm::ScopeMetrics {
            scope: scope(),
            metrics: vec![wm::Metric {
                name: "broken_overflow".into(),
                description: String::new(),
                unit: String::new(),
                data: wm::MetricData::U64Histogram(wm::Histogram {
                    data_points: vec![wm::HistogramDataPoint {
                        attributes: Vec::new(),
                        count: u64::MAX,
                        bounds: vec![1.0],
                        bucket_counts: vec![u64::MAX, u64::MAX],
                        min: None,
                        max: None,
                        sum: wm::MetricNumber::U64(u64::MAX),
                        exemplars: Vec::new(),
                    }],
                    start_time: time,
                    time,
                    temporality: wm::Temporality::Delta,
                }),
            }],
        }],
    }
}

#[http_service]
async fn handle(req: Request) -> Result<StatusCode, spin_sdk::http::Error> {
    let query = req.uri().query();
    match mode(query) {
        "spans" => {
            for i in 0..count(query) {
                raw::tracing::on_start(&context(i));
            }
            Ok(StatusCode::OK)
        }
        "bad-time" => {
            let far = raw::Datetime {
                seconds: u64::MAX,
                nanoseconds: u32::MAX,
            };
            raw::tracing::on_start(&context(0));
            raw::tracing::on_end(&span_at(0, far));
            Ok(StatusCode::OK)
        }
        "buckets" => {
            for _ in 0..2 {
                let _ = raw::metrics::export(&overflowing_buckets());
            }
            Ok(StatusCode::OK)
        }
        "logs" => {
            for i in 0..count(query) {
                gantry_telemetry::log("INFO", &format!("log record {i}"));
            }
            Ok(StatusCode::OK)
        }
        "handles" => {
            // Every pollable is a host resource; a host without a cap on
            // them grows until the process runs out.
            let mut held = Vec::new();
            loop {
                held.push(wasip2::clocks::monotonic_clock::subscribe_duration(1));
                std::hint::black_box(&held);
            }
        }
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "error" => Err(spin_sdk::http::Error::other("broken on purpose")),
        _ => panic!("broken on purpose"),
    }
}
