//! Spin's Redis interface against a real `redis-server` (started here on a
//! free loopback port): every operation of `spin:redis/redis@3.0.0`
//! (`functions/redis`, spin-sdk 7) and of `fermyon:spin/redis@2.0.0`
//! (`functions/platform-v2`, spin-sdk 5); a denied address that opens no
//! connection; the server killed and brought back; 64 concurrent requests
//! on one pooled connection; spans and metrics by the database conventions.

mod common;
use common::otlp::{Receiver, attr_of, hex};
use common::servers::RedisServer;
use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::time::{Duration, Instant};

/// `/redis/...` (spin-sdk 7) at `url`, granted `grant`, and `/v2`
/// (spin-sdk 5) granted the same.
fn app(url: &str, grant: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    wasm("redis_example");
    wasm("platform_v2");
    write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "redis"
[variables]
redis_url = {{ default = "{url}" }}
[[trigger.http]]
route = "/redis/..."
component = "redis"
[[trigger.http]]
route = "/v2"
component = "v2"
[component.redis]
source = "{{wasm}}/redis_example.wasm"
allowed_outbound_hosts = ["{grant}"]
[component.redis.variables]
redis_url = "{{{{ redis_url }}}}"
[component.v2]
source = "{{wasm}}/platform_v2.wasm"
allowed_outbound_hosts = ["{grant}"]
"#
    ))
}

fn ok(answers: &serde_json::Value, op: &str) -> serde_json::Value {
    let a = &answers[op];
    assert!(a.get("error").is_none(), "{op}: {a}");
    a["ok"].clone()
}

fn assert_every_operation(answers: &serde_json::Value) {
    assert_eq!(ok(answers, "set"), "done");
    assert_eq!(ok(answers, "get"), "hello");
    assert_eq!(ok(answers, "get_missing"), true);
    assert_eq!(ok(answers, "incr"), 1);
    assert_eq!(ok(answers, "incr_again"), 2);
    assert_eq!(
        answers["incr_text"]["error"], "Error::TypeError",
        "{answers}"
    );
    assert_eq!(ok(answers, "sadd"), 2);
    assert_eq!(ok(answers, "smembers"), serde_json::json!(["a", "b"]));
    assert_eq!(ok(answers, "srem"), 1);
    assert_eq!(ok(answers, "publish"), "done");
    assert_eq!(
        ok(answers, "execute_set"),
        serde_json::json!([{ "status": "OK" }])
    );
    assert_eq!(ok(answers, "execute_incrby"), serde_json::json!([7]));
    assert_eq!(ok(answers, "execute_mget"), serde_json::json!(["7", null]));
    let unknown = answers["execute_unknown"]["error"].as_str().unwrap_or("");
    assert!(
        unknown.starts_with("Error::Other(") && unknown.contains("unknown command"),
        "{answers}"
    );
    assert_eq!(ok(answers, "del"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_of_both_interface_versions_reaches_the_server() {
    let server = RedisServer::start();
    let (_dir, manifest) = app(&server.url(), &server.url());
    let g = Gantry::start(&manifest, &[]);

    let r = get(&g.url("/redis/ops")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_every_operation(&r.json());
    let r = get(&g.url(&format!("/v2?redis={}", server.url()))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_every_operation(&r.json());

    // What the guests wrote is in the server.
    let mut c = server.connection();
    for prefix in ["gantry:ops", "gantry:v2"] {
        let exec: String = redis::cmd("GET")
            .arg(format!("{prefix}:exec"))
            .query(&mut c)
            .expect("GET");
        assert_eq!(exec, "7");
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}:set"))
            .query(&mut c)
            .expect("SMEMBERS");
        assert_eq!(members, ["b"]);
        let text: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:text"))
            .query(&mut c)
            .expect("GET");
        assert_eq!(text, None, "deleted by the guest");
    }

    // The example's route counts its visits.
    for n in 1..=2 {
        let r = get(&g.url("/redis")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["visits"], n);
    }
    let visits: i64 = redis::cmd("GET")
        .arg("gantry:visits")
        .query(&mut c)
        .expect("GET");
    assert_eq!(visits, 2);

    // Each operation is a metric series by the database conventions.
    let text = get(&g.admin_url("/metrics")).await.text();
    for op in [
        "GET", "SET", "INCR", "SADD", "SMEMBERS", "SREM", "PUBLISH", "DEL",
    ] {
        let series = format!(
            "db_client_operation_duration_seconds_count{{component=\"redis\",db_system_name=\"redis\",db_operation_name=\"{op}\",server_address=\"{}\",error_type=\"\"}}",
            server.url()
        );
        assert!(text.contains(&series), "no {series} in:\n{text}");
    }
    // A command the guest made up is no label of its own.
    assert!(text.contains("db_operation_name=\"_OTHER\""), "{text}");
    assert!(!text.contains("NOSUCHCOMMAND"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_address_opens_no_connection() {
    // Something listening where the guest is sent, not granted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let denied = format!(
        "redis://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let (_dir, manifest) = app(&denied, "redis://127.0.0.1:1");
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/redis")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("InvalidAddress"), "{}", r.text());
    let r = get(&g.url(&format!("/v2?redis={denied}"))).await;
    assert!(r.text().contains("InvalidAddress"), "{}", r.text());
    // Not a scheme Redis speaks, nor an address at all.
    for bad in ["http://127.0.0.1:1", "not-a-url"] {
        let r = get(&g.url(&format!("/v2?redis={bad}"))).await;
        assert!(r.text().contains("InvalidAddress"), "{bad}: {}", r.text());
    }
    assert!(
        listener.accept().is_err(),
        "a denied address was connected to"
    );
    let text = get(&g.admin_url("/metrics")).await.text();
    // Labelled by the entry that names the host (another port here).
    for component in ["redis", "v2"] {
        let series = format!(
            "gantry_outbound_denied_total{{component=\"{component}\",server_address=\"redis://127.0.0.1:1\"}} 1"
        );
        assert!(text.contains(&series), "no {series} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_server_at_start_and_a_server_that_goes_away_cost_only_their_requests() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (_dir, manifest) = app(&url, &url);
    // Nothing listens yet: the host starts, the route says what is missing.
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/redis")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains(&format!("Redis at {url} is unreachable")),
        "{}",
        r.text()
    );
    assert_eq!(get(&g.admin_url("/readyz")).await.status, 200);

    let mut server = RedisServer::start_on(port);
    let r = get(&g.url("/redis")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["visits"], 1);

    // Killed: requests fail with an error, within bounds, and the host
    // serves on.
    server.stop();
    let t = Instant::now();
    let r = get(&g.url("/redis")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // Back (empty: it keeps nothing): the next requests reconnect.
    let _server = RedisServer::start_on(port);
    let t = Instant::now();
    loop {
        let r = get(&g.url("/redis")).await;
        if r.status == 200 {
            assert_eq!(r.json()["visits"], 1, "a fresh server");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "still {} after the server came back: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_pooled_connection() {
    let server = RedisServer::start();
    let (_dir, manifest) = app(&server.url(), &server.url());
    let g = Gantry::start(&manifest, &[]);
    let url = g.url("/redis");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("request"), 200);
    }
    let mut c = server.connection();
    let visits: i64 = redis::cmd("GET")
        .arg("gantry:visits")
        .query(&mut c)
        .expect("GET");
    assert_eq!(visits, 64, "every INCR counted");
    // One request holds at most 16 open; the 17th is refused, and the next
    // request opens its 16 again.
    for _ in 0..2 {
        let r = get(&g.url(&format!("/v2?redis_open=17&url={}", server.url()))).await;
        assert_eq!(
            r.json(),
            serde_json::json!({ "opened": 16, "error": "Error::TooManyConnections" })
        );
    }
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut c)
        .expect("CLIENT LIST");
    // This test's own connection and the host's one for each component.
    assert_eq!(clients.lines().count(), 3, "{clients}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_operation_is_a_client_span_of_the_request() {
    let server = RedisServer::start();
    let (_dir, manifest) = app(&server.url(), &server.url());
    let rx = Receiver::start().await;
    let g = Gantry::start_env(
        &manifest,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = get_traced(
        &g.url("/redis?slow=1"),
        &format!("00-{trace}-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let server_span = rx
        .wait_for("the server span", |s| {
            s.kind == SpanKind::Server as i32 && hex(&s.trace_id) == trace
        })
        .await;
    let spans = rx
        .wait("the 200 slow writes and the visit", |got| {
            let ours: Vec<_> = got
                .spans
                .iter()
                .filter(|s| hex(&s.trace_id) == trace && s.kind == SpanKind::Client as i32)
                .cloned()
                .collect();
            (ours.len() >= 203).then_some(ours)
        })
        .await;
    let sets = spans.iter().filter(|s| s.name == "SET").count();
    assert_eq!(sets, 201, "200 slow writes and the visit's");
    for s in &spans {
        assert_eq!(s.parent_span_id, server_span.span_id, "{}", s.name);
        assert_eq!(
            attr_of(&s.attributes, "db.system.name").as_deref(),
            Some("redis")
        );
        assert_eq!(
            attr_of(&s.attributes, "db.operation.name").as_deref(),
            Some(s.name.as_str())
        );
        assert_eq!(
            attr_of(&s.attributes, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            attr_of(&s.attributes, "server.port"),
            Some(server.port.to_string())
        );
        // The query text is not recorded unless asked for.
        assert_eq!(attr_of(&s.attributes, "db.query.text"), None);
    }
    assert!(spans.iter().any(|s| s.name == "INCR"));
    assert!(spans.iter().any(|s| s.name == "GET"));
}
