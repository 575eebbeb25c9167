//! One client, or one guest, costs only its own request: bodies that never
//! end, clients that never read, slow heads, idle and surplus connections,
//! HTTP/2 streams, components that would take the whole pool, and labels a
//! client chooses. Every test runs the real host on loopback.

mod common;
use common::raw::*;
use common::*;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

/// `stall` (alpha, 1.5 s timeout) beside `alpha`: two components, so each
/// gets three quarters of the pool by default.
fn stall_and_alpha(stall_timeout_ms: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "hardening"

[[trigger.http]]
route = "/stall"
component = "stall"

[[trigger.http]]
route = "/alpha"
component = "alpha"

[component.stall]
source = "{{wasm}}/alpha.wasm"
[component.stall.tool.gantry]
timeout_ms = {stall_timeout_ms}

[component.alpha]
source = "{{wasm}}/alpha.wasm"
"#
    ))
}

async fn metrics(g: &Gantry) -> String {
    get(&g.admin_url("/metrics")).await.text()
}

/// Waits until `check` holds on the metrics text, or fails with it.
async fn wait_metrics(g: &Gantry, within: Duration, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let m = metrics(g).await;
        if check(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn alpha_answers(g: &Gantry, times: usize) {
    for i in 0..times {
        let r = get(&g.url("/alpha")).await;
        assert_eq!(r.status, 200, "/alpha request {i}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_ends_releases_its_instance_at_the_deadline() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1500);
    let g = Gantry::start(&manifest, &["--pool-size", "8", "--write-timeout", "1s"]);

    // A guest that traps after its head: the store ends with it, the body
    // ends with an error, and the slot is free again. More such requests
    // than the pool has slots, every client staying connected.
    let mut trapped = Vec::new();
    for _ in 0..12 {
        let mut s = connect_and_send(g.addr, &get_request("/alpha?panic_after_head=1")).await;
        let head = read_head(&mut s).await;
        assert_eq!(status_of(&head), 200, "{head}");
        let ended = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            matches!(ended, Ended::Closed(n) if n < 4096 + 64),
            "a body cut off by a trap must end, short, with the connection: {ended:?}"
        );
        trapped.push(s);
    }
    alpha_answers(&g, 20).await;
    let m = metrics(&g).await;
    assert_eq!(
        metric(
            &m,
            "gantry_guest_failures_total{component=\"alpha\",reason=\"trap\"}"
        ),
        12.0,
        "{m}"
    );

    // A guest that sends its head, then sleeps past its timeout: cut off at
    // the deadline, logged and counted; the other component keeps answering
    // meanwhile, and the stalled component's slots come back.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s =
            connect_and_send(g.addr, &get_request("/stall?stall_ms=60000&size=100000")).await;
        assert_eq!(status_of(&read_head(&mut s).await), 200);
        stalled.push(s);
    }
    alpha_answers(&g, 10).await;
    for s in &mut stalled {
        let ended = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(
            matches!(ended, Ended::Closed(n) if n < 100_000),
            "a stalled body must be cut off: {ended:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off long after the 1.5 s deadline: {:?}",
        started.elapsed()
    );
    wait_metrics(
        &g,
        Duration::from_secs(5),
        "six body timeouts counted",
        |m| {
            metric(
                m,
                "gantry_guest_failures_total{component=\"stall\",reason=\"body_timeout\"}",
            ) == 6.0
        },
    )
    .await;
    assert!(
        g.stderr()
            .contains("response body not finished by the request's deadline"),
        "{}",
        g.stderr()
    );
    for _ in 0..6 {
        let r = get(&g.url("/stall")).await;
        assert_eq!(r.status, 200, "the stalled component's slots are back");
    }

    // Clients that never read a large response, as many as alpha's share:
    // their connections are cut after the write timeout, and their
    // instances released.
    let mut readers = Vec::new();
    for _ in 0..6 {
        readers.push(connect_and_send(g.addr, &get_request("/alpha?size=30000000")).await);
    }
    wait_metrics(&g, Duration::from_secs(5), "alpha's share held", |m| {
        metric(m, "gantry_instances{component=\"alpha\"}") == 6.0
    })
    .await;
    wait_metrics(
        &g,
        Duration::from_secs(15),
        "never-reading clients let go",
        |m| metric(m, "gantry_instances{") == 0.0,
    )
    .await;
    for s in &mut readers {
        let ended = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(
            matches!(ended, Ended::Closed(n) if n < 30_000_000),
            "a client that never read must not get the whole body: {ended:?}"
        );
    }
    alpha_answers(&g, 5).await;
    drop(trapped);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_fifty_six_slow_bodies_leave_alpha_answering() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(3000);
    let g = Gantry::start(&manifest, &[]);

    // 256 clients, each reading the head and then holding a body that
    // would last a minute.
    let url_addr = g.addr;
    let slow: Vec<_> = (0..256)
        .map(|_| {
            tokio::spawn(async move {
                let mut s =
                    connect_and_send(url_addr, &get_request("/stall?stall_ms=60000&size=100000"))
                        .await;
                let status = status_of(&read_head(&mut s).await);
                if status != 200 {
                    return (status, Ended::Open);
                }
                let ended = read_until_closed(&mut s, Duration::from_secs(20)).await;
                (status, ended)
            })
        })
        .collect();
    wait_metrics(&g, Duration::from_secs(10), "the stall share taken", |m| {
        metric(m, "gantry_instances{component=\"stall\"}") == 96.0
    })
    .await;
    // While they hold every place the stall component may have, the other
    // component answers every time.
    alpha_answers(&g, 50).await;

    let mut cut = 0;
    let mut refused = 0;
    for t in slow {
        let (status, ended) = t.await.expect("client");
        match status {
            200 => {
                assert!(
                    matches!(ended, Ended::Closed(n) if n < 100_000),
                    "a held body must be cut off at the deadline: {ended:?}"
                );
                cut += 1;
            }
            503 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(cut + refused, 256);
    assert!(cut >= 96, "the component's share (96 of 128) served: {cut}");
    wait_metrics(&g, Duration::from_secs(5), "every cut body counted", |m| {
        metric(
            m,
            "gantry_guest_failures_total{component=\"stall\",reason=\"body_timeout\"}",
        ) == f64::from(cut)
    })
    .await;
    alpha_answers(&g, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_admin_token_is_refused_at_start() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    let m = manifest.to_str().expect("path");
    let base = ["up", "-f", m, "--listen", "127.0.0.1:0"];
    for token in ["", "   "] {
        let mut args = base.to_vec();
        args.extend(["--admin-listen", "0.0.0.0:0", "--admin-token", token]);
        let (code, err) = gantry_fails::<&str, &str>(&args, &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("is empty"), "{err}");
    }
    let mut args = base.to_vec();
    args.extend(["--admin-listen", "0.0.0.0:0"]);
    let (code, err) = gantry_fails(&args, &[("GANTRY_ADMIN_TOKEN", "")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_guests_cannot_grow_label_sets() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "labels"

[[trigger.http]]
route = "/alpha"
component = "alpha"

[component.alpha]
source = "{wasm}/alpha.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:1"]
"#,
    );
    let g = Gantry::start(&manifest, &[]);
    for i in 0..300 {
        let r = send(&format!("M{i}"), &g.url("/alpha"), &[], Vec::new()).await;
        assert_eq!(r.status, 200);
    }
    let m = metrics(&g).await;
    let methods: BTreeSet<String> = m
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter_map(|l| {
            let at = l.find("http_request_method=\"")? + "http_request_method=\"".len();
            Some(l[at..].split('"').next()?.to_string())
        })
        .collect();
    assert_eq!(
        methods,
        BTreeSet::from(["_OTHER".to_string()]),
        "methods as labels:\n{m}"
    );
    assert_eq!(
        metric(&m, "http_server_request_duration_seconds_count{"),
        300.0
    );

    // Denied calls to hosts the guest makes up: one label, and few log lines.
    for i in 0..100 {
        let r = get(&g.url(&format!("/alpha?fetch=http://h{i}.invalid/"))).await;
        assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
    }
    let r = get(&g.url("/alpha?fetch=http://127.0.0.1:2/")).await;
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
    let m = metrics(&g).await;
    let denied: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("gantry_outbound_denied_total{"))
        .collect();
    assert_eq!(
        denied,
        vec![
            "gantry_outbound_denied_total{component=\"alpha\",server_address=\"_OTHER\"} 100",
            "gantry_outbound_denied_total{component=\"alpha\",server_address=\"http://127.0.0.1:1\"} 1",
        ],
        "{m}"
    );
    let logged = g.stderr().matches("outbound request denied").count();
    assert!(
        (1..=50).contains(&logged),
        "denials must be logged, rate-limited: {logged} lines"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_idle_and_surplus_connections_are_bounded() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    let g = Gantry::start(
        &manifest,
        &[
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-connections",
            "20",
        ],
    );

    // Slowloris: half a head each, never the rest. Closed after the
    // header-read timeout, not the idle one.
    let mut slow = Vec::new();
    for _ in 0..10 {
        slow.push(
            connect_and_send(
                g.addr,
                b"GET /alpha HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
            )
            .await,
        );
    }
    let started = Instant::now();
    for s in &mut slow {
        let ended = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive connection that sends nothing more is closed after the
    // idle timeout.
    let mut kept = connect_and_send(g.addr, &get_request("/alpha")).await;
    assert_eq!(status_of(&read_head(&mut kept).await), 200);
    let ended = read_until_closed(&mut kept, Duration::from_secs(6)).await;
    assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");

    // Twenty idle connections take every place: the next one waits in the
    // backlog, and is served once the idle ones are gone.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_and_send(g.addr, b"").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = connect_and_send(g.addr, &get_request("/alpha")).await;
    let waited = tokio::time::timeout(Duration::from_millis(800), read_head(&mut next)).await;
    assert!(waited.is_err(), "served past the connection limit");
    let head = tokio::time::timeout(Duration::from_secs(6), read_head(&mut next))
        .await
        .expect("served once the idle connections closed");
    assert_eq!(status_of(&head), 200, "{head}");
    drop(idle);
}

#[test]
fn the_open_files_limit_is_raised_and_respected() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    // A low soft limit under a higher hard one: raised at start.
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "ulimit -Sn 200 && exec \"$0\" \"$@\""])
        .arg(gantry_bin());
    let g = Gantry::start_with::<&str, &str>(sh, &manifest, &[], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", g.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_eq!(
        nums[0], nums[1],
        "soft limit not raised to the hard one: {line}"
    );
    drop(g);

    // More connections than descriptors: refused, with the figures.
    let m = manifest.to_str().expect("path");
    let script = format!(
        "ulimit -n 300 && exec \"{}\" up -f \"{m}\" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --max-connections 1000",
        gantry_bin().display()
    );
    let (code, err) = gantry_fails_cmd(&["sh", "-c", &script]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("open-files limit is 300"), "{err}");
}

/// Like `gantry_fails`, for a command line of its own.
fn gantry_fails_cmd(argv: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run");
    assert!(!out.status.success());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_and_component_shares_bound_one_client() {
    wasm("beta");
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "fairness"

[[trigger.http]]
route = "/beta"
component = "beta"

[[trigger.http]]
route = "/alpha"
component = "alpha"

[[trigger.http]]
route = "/capped"
component = "capped"

[component.beta]
source = "{wasm}/beta.wasm"

[component.alpha]
source = "{wasm}/alpha.wasm"

[component.capped]
source = "{wasm}/beta.wasm"
[component.capped.tool.gantry]
max_concurrency = 2
"#,
    );
    let g = Gantry::start(
        &manifest,
        &["--pool-size", "8", "--max-streams-per-connection", "4"],
    );

    // One HTTP/2 connection, sixteen concurrent requests: at most four
    // streams at a time. (A first request lets the client learn the
    // server's limit; streams beyond it are refused, not served.)
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let first = http::Request::get(g.url("/alpha"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(client.request(first).await.expect("h2").status(), 200);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let uri: http::Uri = g.url("/beta?delay_ms=600").parse().expect("uri");
            tokio::spawn(async move {
                let req = http::Request::get(uri)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                client.request(req).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut most = 0.0f64;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let m = metrics(&g).await;
        most = most.max(metric(&m, "gantry_instances{component=\"beta\"}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        assert_eq!(c.await.expect("task").expect("h2 request"), 200);
    }
    assert!(
        (1.0..=4.0).contains(&most),
        "one connection had {most} requests in flight"
    );

    // Eight slow requests to one component of three: it holds six of the
    // eight slots at most, the other two are refused, and alpha answers.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let url = g.url("/beta?delay_ms=1500");
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    wait_metrics(&g, Duration::from_secs(5), "beta's share in flight", |m| {
        metric(m, "gantry_instances{component=\"beta\"}") == 6.0
    })
    .await;
    alpha_answers(&g, 5).await;
    let mut statuses: Vec<u16> = Vec::new();
    for s in slow {
        statuses.push(s.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 503, 503]);
    // A 503 for want of an instance is a counted failure.
    let m = metrics(&g).await;
    assert_eq!(
        metric(
            &m,
            "gantry_guest_failures_total{component=\"beta\",reason=\"no_free_instance\"}"
        ),
        2.0,
        "{m}"
    );

    // `max_concurrency = 2`: the third at once is refused.
    let capped: Vec<_> = (0..3)
        .map(|_| {
            let url = g.url("/capped?delay_ms=1000");
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    let mut statuses: Vec<u16> = Vec::new();
    for s in capped {
        statuses.push(s.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503]);
}

#[test]
fn the_pool_is_sized_from_the_memory_budget() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    let m = manifest.to_str().expect("path");
    let base = [
        "up",
        "-f",
        m,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let mut args = base.to_vec();
    args.extend(["--pool-size", "200", "--memory-budget", "1GiB"]);
    let (code, err) = gantry_fails::<&str, &str>(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("200 instances x 128 MiB = 25600 MiB")
            && err.contains("--memory-budget is 1024 MiB (room for 8)"),
        "{err}"
    );
    // Without a pool size, the pool is what fits.
    let g = Gantry::start(&manifest, &["--memory-budget", "1GiB"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !g.stderr().contains("pool_size=8") {
        assert!(Instant::now() < deadline, "{}", g.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_one_valid_host_are_refused() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    let g = Gantry::start(&manifest, &[]);
    let cases: [(&[u8], u16); 6] = [
        (b"GET /alpha HTTP/1.1\r\n\r\n", 400),
        (b"GET /alpha HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /alpha HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET /alpha HTTP/1.1\r\nHost: user@evil\r\n\r\n", 400),
        (b"GET /alpha HTTP/1.0\r\n\r\n", 200),
        (
            b"GET /alpha HTTP/1.1\r\nHost: example.test:8080\r\n\r\n",
            200,
        ),
    ];
    for (request, want) in cases {
        let mut s = connect_and_send(g.addr, request).await;
        let head = read_head(&mut s).await;
        assert_eq!(
            status_of(&head),
            want,
            "{}: {head}",
            String::from_utf8_lossy(request)
        );
    }
    let r = get(&g.url("/alpha")).await;
    assert!(
        r.json()["headers"]["spin-full-url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("http://{}/", g.addr))),
        "{}",
        r.text()
    );
}

/// Every response on one connection: its statuses, read until it closes.
async fn statuses_until_closed(s: &mut tokio::net::TcpStream) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let head = tokio::time::timeout(Duration::from_secs(10), read_head(s))
            .await
            .expect("a response or the end within 10 s");
        if head.is_empty() {
            return out;
        }
        out.push(status_of(&head));
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        if !(if chunked {
            skip_chunked(s).await
        } else {
            skip(s, length).await
        }) {
            return out;
        }
    }
}

async fn skip(s: &mut tokio::net::TcpStream, n: usize) -> bool {
    let mut body = vec![0u8; n];
    tokio::io::AsyncReadExt::read_exact(s, &mut body)
        .await
        .is_ok()
}

/// Reads a chunked body to its end; `false` if the connection ended first.
async fn skip_chunked(s: &mut tokio::net::TcpStream) -> bool {
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            match tokio::io::AsyncReadExt::read(s, &mut b).await {
                Ok(1) => line.push(b[0]),
                _ => return false,
            }
        }
        let text = String::from_utf8_lossy(&line);
        let Ok(size) = usize::from_str_radix(text.trim(), 16) else {
            return false;
        };
        if !skip(s, size + 2).await {
            return false;
        }
        if size == 0 {
            return true;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_heads_are_refused_pipelined_or_not_and_bodies_keep_theirs() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    let g = Gantry::start(&manifest, &[]);
    let ok = "GET /alpha HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let last = "GET /alpha HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let cases: Vec<(String, Vec<u16>)> = vec![
        ("GET /alpha HTTP/1.1\nHost: 127.0.0.1\n\n".into(), vec![400]),
        (
            "GET /alpha HTTP/1.1\r\nHost: 127.0.0.1\n\r\n".into(),
            vec![400],
        ),
        (
            format!("{ok}GET /alpha HTTP/1.1\nHost: 127.0.0.1\n\n{ok}"),
            vec![200, 400],
        ),
        (format!("{ok}{ok}{last}"), vec![200, 200, 200]),
        (
            format!(
                "POST /alpha HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 6\r\n\r\na\nb\n\n\n{last}"
            ),
            vec![200, 200],
        ),
        (
            format!(
                "POST /alpha HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 4\r\n\n\n\n\n\r\n0\r\n\r\n{last}"
            ),
            vec![200, 200],
        ),
    ];
    for (request, want) in cases {
        let mut s = connect_and_send(g.addr, request.as_bytes()).await;
        let got = statuses_until_closed(&mut s).await;
        assert_eq!(got, want, "{request:?}");
    }
    alpha_answers(&g, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_for_half_sent_heads_or_a_mute_collector() {
    wasm("alpha");
    let (_dir, manifest) = stall_and_alpha(1000);
    // A collector that accepts connections and never answers.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", mute.local_addr().expect("addr"));
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in mute.incoming().take(16) {
            conns.push(c);
        }
    });
    let mut g = Gantry::start_env(
        &manifest,
        &["--shutdown-timeout", "30s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    alpha_answers(&g, 3).await;
    let mut half = connect_and_send(g.addr, b"GET /alpha HTTP/1.1\r\nHost: x\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    terminate(g.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = g.child.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", g.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "exit took {:?}:\n{}",
        sent.elapsed(),
        g.stderr()
    );
    let _ = half.shutdown().await;
    drop(held);
}
