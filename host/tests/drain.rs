//! Graceful drain, as Kubernetes ends a pod: SIGTERM with slow requests in
//! flight. `/readyz` turns 503 at once, the application listener stops
//! accepting, every request in flight completes, and the process exits 0.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn active_requests(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_server_active_requests{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_ten_slow_requests_finish_and_exits_zero() {
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "drain"

[[trigger.http]]
route = "/slow"
component = "slow"

[component.slow]
source = "{wasm}/beta.wasm"
"#,
    );
    let mut g = Gantry::start(&manifest, &["--shutdown-timeout", "20s"]);
    assert_eq!(get(&g.admin_url("/readyz")).await.status, 200);

    // Ten slow requests, each on its own connection.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let url = g.url("/slow?delay_ms=2000");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(&g.admin_url("/metrics")).await.text();
        if active_requests(&m) >= 10.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ten requests never in flight:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &g.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // Not ready any more, straight away (well before the requests end).
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let r = get(&g.admin_url("/readyz")).await;
        if r.status == 503 {
            assert_eq!(r.text(), "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {}", r.status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // New connections are refused while the old requests run.
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match tokio::net::TcpStream::connect(g.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the listener still accepts: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "checks ran past the slow requests"
    );

    for (i, h) in slow.into_iter().enumerate() {
        let r = h.await.expect("slow request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["slept_ms"], 2000, "request {i}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = g.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gantry did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code.code(), Some(0), "stderr:\n{}", g.stderr());
    assert!(g.stderr().contains("draining in-flight requests"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_admin_listener_may_face_the_network_without_a_token() {
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "ro"

[[trigger.http]]
route = "/a"
component = "a"

[component.a]
source = "{wasm}/alpha.wasm"
"#,
    );
    // The harness binds the admin listener to 127.0.0.1; the flag is what
    // matters to the calls, and starting on 0.0.0.0 is checked below.
    let g = Gantry::start(&manifest, &["--admin-read-only"]);
    let r = send(
        "PUT",
        &g.admin_url("/components/a"),
        &[],
        std::fs::read(wasm("beta")).expect("beta"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(get(&g.admin_url("/components")).await.status, 200);
    assert_eq!(get(&g.url("/a")).await.json()["route"], "alpha");

    let port = free_port();
    let mut wide = std::process::Command::new(gantry_bin())
        .args(["up", "-f"])
        .arg(&manifest)
        .args(["--listen", "127.0.0.1:0", "--admin-read-only", "--no-cache"])
        .args(["--admin-listen", &format!("0.0.0.0:{port}")])
        .env_remove("GANTRY_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Probed over loopback only.
        let ok = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(
            matches!(wide.try_wait(), Ok(None)),
            "gantry refused to start with --admin-read-only on 0.0.0.0"
        );
        assert!(Instant::now() < deadline, "admin listener never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(r.status, 200);
    let _ = wide.kill();
    let _ = wide.wait();
}
