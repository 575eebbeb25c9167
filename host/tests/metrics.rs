//! Prometheus exposition, checked by the real tools: `promtool check metrics`
//! and a Prometheus server that scrapes the admin port; and the drop counter
//! when the OTLP collector is unreachable.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    let seen = loop {
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(v) = prom_query(
            port,
            "sum(http_server_request_duration_seconds_count{component=\"alpha\"})",
        )
        .await
        else {
            continue;
        };
        last = v.clone();
        if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
            break Some(value.to_string());
        }
    };
    assert_eq!(seen.as_deref(), Some("7"), "last answer: {last}");

    // Every query of the Grafana dashboard in deploy/ is valid PromQL that
    // this Prometheus evaluates, and names only metrics Gantry exposes.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/observability/grafana-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let exposed = get(&g.admin_url("/metrics")).await.text();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let concrete = expr
                .replace("$__rate_interval", "1m")
                .replace("$component", ".*");
            let v = prom_query(port, &concrete)
                .await
                .expect("prometheus answers");
            assert_eq!(v["status"], "success", "{expr}: {v}");
            for name in metric_names(expr) {
                let family = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_count"))
                    .unwrap_or(&name);
                assert!(
                    exposed.contains(&format!("# TYPE {family} ")),
                    "dashboard panel {:?} uses {name}, which Gantry does not expose",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} dashboard queries");
    let _ = prom.kill();
    let _ = prom.wait();
}

/// Metric names in a PromQL expression: identifiers directly before `{`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices('{') {
        let name: String = expr[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() && !name.starts_with("__") {
            out.push(name);
        }
    }
    out
}

/// Runs an instant query; `None` while Prometheus is not answering yet.
async fn prom_query(port: u16, query: &str) -> Option<serde_json::Value> {
    let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}");
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client.get(url.parse().ok()?).await.ok()?;
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

#[test]
fn the_shipped_prometheus_config_is_valid() {
    let out = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(workspace().join("deploy/observability/prometheus.yml"))
        .output()
        .expect("promtool (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
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
    let (spans, points) = loop {
        let text = get(&g.admin_url("/metrics")).await.text();
        let value = |signal: &str| {
            metric_value(
                &text,
                &format!("gantry_telemetry_dropped_total{{signal=\"{signal}\"}}"),
            )
            .unwrap_or(0.0)
        };
        let (spans, points) = (value("traces"), value("metrics"));
        if (spans > 0.0 && points > 0.0) || Instant::now() > deadline {
            break (spans, points);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("dropped with the collector away: {spans} spans, {points} metric points");
    assert!(spans > 0.0, "the span drop counter did not rise");
    assert!(points > 0.0, "the metric drop counter did not rise");
}
