//! Prometheus exposition, checked by the real tools: `promtool check metrics`
//! and a Prometheus server that scrapes the admin port; and the drop counter
//! when the OTLP collector is unreachable.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_both_formats_and_exemplars_carry_trace_ids() {
    wasm("alpha");
    let g = Gantry::start(&workspace().join("spin.toml"), &[]);
    for _ in 0..3 {
        assert_eq!(get(&g.url("/alpha")).await.status, 200);
    }
    assert_eq!(get(&g.url("/broken")).await.status, 500);

    let plain = get(&g.admin_url("/metrics")).await;
    assert_eq!(plain.status, 200);
    assert!(
        plain.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = plain.text();
    for name in [
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "gantry_instantiation_duration_seconds_bucket",
        "gantry_guest_failures_total{component=\"broken\",reason=\"trap\"} 1",
        "gantry_guest_memory_peak_bytes{component=\"alpha\"}",
        "gantry_component_info{component=\"alpha\",digest=\"sha256:",
        "gantry_telemetry_dropped_total{signal=\"traces\"} 0",
        // alpha's own metric, recorded through wasi:otel/metrics.
        "# TYPE alpha_requests_total counter",
        "alpha_requests_total{component=\"alpha\",method=\"GET\"} 3",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
    let count = metric_value(
        &text,
        "http_server_request_duration_seconds_count{component=\"alpha\",http_route=\"/alpha\",http_request_method=\"GET\",http_response_status_code=\"200\"}",
    );
    assert_eq!(count, Some(3.0));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by scripts/setup.sh)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let om = send(
        "GET",
        &g.admin_url("/metrics"),
        &[(
            "accept",
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
        )],
        vec![],
    )
    .await;
    assert!(
        om.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = om.text();
    assert!(om.ends_with("# EOF\n"));
    let exemplar = om
        .lines()
        .find(|l| l.contains("component=\"alpha\"") && l.contains(" # {trace_id=\""))
        .unwrap_or_else(|| panic!("no exemplar:\n{om}"));
    let id = exemplar
        .split("trace_id=\"")
        .nth(1)
        .and_then(|s| s.get(..32))
        .expect("id");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{exemplar}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_request_count() {
    wasm("alpha");
    let g = Gantry::start(&workspace().join("spin.toml"), &[]);
    let requests = 7;
    for _ in 0..requests {
        assert_eq!(get(&g.url("/alpha")).await.status, 200);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gantry\n    static_configs:\n      - targets: ['{}']\n",
            g.admin
        ),
    )
    .expect("config");
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (installed by scripts/setup.sh)");

    let query = "sum(http_server_request_duration_seconds_count%7Bcomponent%3D%22alpha%22%7D)";
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={query}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let seen = loop {
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let Ok(resp) = client.get(url.parse().expect("url")).await else {
            continue;
        };
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        last = String::from_utf8_lossy(&body).into_owned();
        let v: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
            break Some(value.to_string());
        }
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(seen.as_deref(), Some("7"), "last answer: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_costs_no_request_and_drops_are_counted() {
    wasm("alpha");
    let closed = free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let g = Gantry::start_env(
        &workspace().join("spin.toml"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = g.url("/alpha");
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..125 {
                if get(&url).await.status == 200 {
                    ok += 1;
                }
            }
            (worker, ok)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (_, ok) = t.await.expect("worker");
        total += ok;
    }
    assert_eq!(
        total, 1000,
        "every request must succeed with the collector away"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let dropped = loop {
        let text = get(&g.admin_url("/metrics")).await.text();
        let v =
            metric_value(&text, "gantry_telemetry_dropped_total{signal=\"traces\"}").unwrap_or(0.0);
        if v > 0.0 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("spans dropped with the collector away: {dropped}");
    assert!(dropped > 0.0, "the drop counter did not rise");
}
