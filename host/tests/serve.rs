//! The example app from the root spin.toml, served by the real binary.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn root_manifest() -> std::path::PathBuf {
    // Make sure the components exist before gantry is asked to load them.
    for f in ["hello", "alpha", "beta", "broken"] {
        wasm(f);
    }
    workspace().join("spin.toml")
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_every_route_and_404s_the_rest() {
    let upstream = Upstream::start().await;
    let g = Gantry::start_env(
        &root_manifest(),
        &["--variable", "beta_delay_ms=40"],
        &[
            ("SPIN_VARIABLE_UPSTREAM_URL", upstream.url().as_str()),
            ("SPIN_VARIABLE_UPSTREAM_HOST", upstream.url().as_str()),
        ],
    );

    let r = get(&g.url("/hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("hello"), "{}", r.text());
    assert!(r.text().contains("answered 200"), "{}", r.text());
    assert_eq!(upstream.connection_count(), 1);

    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["route"], "alpha");
    assert_eq!(r.headers["content-type"], "application/json");

    let t = Instant::now();
    let r = get(&g.url("/beta?delay_ms=150")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["slept_ms"], 150);
    assert!(t.elapsed() >= Duration::from_millis(150));
    let r = get(&g.url("/beta?delay_ms=soon")).await;
    assert_eq!(r.status, 400);
    // Without ?delay_ms, beta reads its variable through wasi:config/store.
    let r = get(&g.url("/beta")).await;
    assert_eq!(r.json()["slept_ms"], 40);

    let r = get(&g.url("/broken")).await;
    assert_eq!(r.status, 500);

    for path in ["/", "/nope", "/alpha/extra", "/hello2"] {
        let r = get(&g.url(path)).await;
        assert_eq!(r.status, 404, "{path} should be 404");
    }

    let r = get(&g.admin_url("/healthz")).await;
    assert_eq!(r.status, 200);
    let r = get(&g.admin_url("/readyz")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_costs_one_request() {
    let g = Gantry::start(&root_manifest(), &["--max-instance-memory", "32MiB"]);
    for mode in ["panic", "oom", "error"] {
        let r = get(&g.url(&format!("/broken?mode={mode}"))).await;
        assert_eq!(r.status, 500, "mode={mode}: {}", r.text());
        // The next request to any route succeeds.
        let r = get(&g.url("/alpha")).await;
        assert_eq!(r.status, 200);
        let r = get(&g.url("/beta?delay_ms=1")).await;
        assert_eq!(r.status, 200);
    }
    let log = g.stderr();
    assert!(
        log.contains("component=broken"),
        "trap not logged with component:\n{log}"
    );
}

/// Memory kept resident between instances is reset in place (the default on
/// Linux; forced here, and off for comparison): no request sees what an
/// earlier one wrote, whether the data segments are copied in or mapped
/// copy-on-write, one request at a time (the same slot again and again) or
/// many at once. `alpha` reads a counter, a data segment value and pages it
/// grows itself, then writes to all three.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_pristine_instance() {
    for (keep, init) in [("4MiB", "copy"), ("4MiB", "cow"), ("0", "auto")] {
        let args = vec!["--pool-keep-resident", keep, "--memory-init", init];
        let g = Gantry::start(&root_manifest(), &args);
        let pristine = |r: &Reply| {
            assert_eq!(r.status, 200, "{}", r.text());
            let j = r.json();
            let case = format!("keep {keep}, {init}: {j}");
            assert_eq!(j["served_before"], 0, "{case}");
            assert_eq!(j["seed"], 7, "{case}");
            assert_eq!(j["grown_zero"], true, "{case}");
        };
        for _ in 0..30 {
            pristine(&get(&g.url("/alpha")).await);
        }
        let url = g.url("/alpha");
        let replies = futures::future::join_all((0..64).map(|_| get(&url))).await;
        replies.iter().for_each(pristine);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_gets_504_within_the_timeout() {
    // `broken` sets tool.gantry.timeout_ms = 2000; alpha uses --request-timeout.
    let mut g = Gantry::start(&root_manifest(), &["--request-timeout", "1s"]);
    let t = Instant::now();
    let r = get(&g.url("/broken?mode=loop")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(1900),
        "ended too early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    println!("loop stopped after {took:?} (timeout 2s)");

    // Beta is slower than the host-wide 1s timeout: a 504 too, while waiting.
    let t = Instant::now();
    let r = get(&g.url("/beta?delay_ms=5000")).await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3));

    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 200);
    assert!(g.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_gets_413() {
    let g = Gantry::start(&root_manifest(), &["--max-request-body", "1KiB"]);
    let r = send("POST", &g.url("/alpha"), &[], vec![b'x'; 2048]).await;
    assert_eq!(r.status, 413);
    let r = send("POST", &g.url("/alpha"), &[], vec![b'x'; 512]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_free_instance_gets_503_with_retry_after() {
    let g = Gantry::start(&root_manifest(), &["--pool-size", "1"]);
    let url = g.url("/beta?delay_ms=1500");
    let slow = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    let r = slow.await.expect("slow request");
    assert_eq!(r.status, 200);
    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waits_for_a_slot_within_the_queue_timeout() {
    let g = Gantry::start(
        &root_manifest(),
        &["--pool-size", "1", "--queue-timeout", "3s"],
    );
    let url = g.url("/beta?delay_ms=600");
    let slow = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = get(&g.url("/alpha")).await;
    // Queued behind the slow request, then served: no 503.
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "did not wait: {:?}",
        t.elapsed()
    );
    assert_eq!(slow.await.expect("slow request").status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_frees_its_instance() {
    let g = Gantry::start(&root_manifest(), &["--pool-size", "1"]);
    for path in ["/beta?delay_ms=10000", "/broken?mode=loop"] {
        // The previous request's instance is released just after its response
        // has been sent; give that a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let gone = tokio::time::timeout(Duration::from_millis(300), get(&g.url(path))).await;
        assert!(gone.is_err(), "{path} should still be running");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The only slot is free again: the abandoned guest was stopped.
        let r = get(&g.url("/alpha")).await;
        assert_eq!(r.status, 200, "after abandoning {path}");
    }
}

/// A component whose `handle` export has another type than wasi:http's is
/// refused when the app loads, not served as a 500 on every request.
#[test]
fn a_handler_of_the_wrong_type_is_refused_at_load() {
    wasm("alpha");
    let bad = wat::parse_str(
        r#"(component
            (core module $m (func (export "handle")))
            (core instance $i (instantiate $m))
            (type $no-args (func))
            (func $handle (type $no-args) (canon lift (core func $i "handle")))
            (instance $handler (export "handle" (func $handle)))
            (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))"#,
    )
    .expect("component text");
    let (dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "wrong-type"
[[trigger.http]]
route = "/bad"
component = "bad"
[component.bad]
source = "bad.wasm"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = "{wasm}/alpha.wasm"
"#,
    );
    std::fs::write(dir.path().join("bad.wasm"), bad).expect("write component");
    let m = manifest.to_str().expect("path");
    // Refused at load, by `gantry check` and by `gantry up`, naming the
    // component's file, the export and wasmtime's reason.
    for args in [
        vec!["check", "-f", m],
        vec![
            "up",
            "-f",
            m,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    ] {
        let (code, err) = gantry_fails::<&str, &str>(&args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("bad.wasm")
                && err.contains("wasi:http/incoming-handler@0.2")
                && err.contains("#handle` is not of the type the host calls"),
            "{args:?}: {err}"
        );
    }
}

/// A WASI 0.2 handler in WebAssembly text: `handle` runs `body` (which gets
/// the request and response-outparam handles as locals 0 and 1).
fn p2_handler(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (import "wasi:http/types@0.2.0" (instance $types
                (export "incoming-request" (type (sub resource)))
                (export "response-outparam" (type (sub resource)))))
            (alias export $types "incoming-request" (type $request))
            (alias export $types "response-outparam" (type $out))
            (core module $m (func (export "handle") (param i32 i32) {body}))
            (core instance $i (instantiate $m))
            (func $handle (param "request" (own $request)) (param "response-out" (own $out))
                (canon lift (core func $i "handle")))
            (instance $handler (export "handle" (func $handle)))
            (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))"#
    ))
    .expect("component text")
}

/// WASI 0.2 components run on an engine without wasmtime's concurrency
/// support, called directly rather than inside `run_concurrent`; 0.3 ones
/// on the engine with it (`--one-engine` puts both on that one). The limits
/// hold on the plain engine as on the other: a guest that loops gets a 504
/// at its deadline, one that traps a 500, one whose client goes away frees
/// its instance slot, and the host goes on serving both kinds.
#[tokio::test(flavor = "multi_thread")]
async fn wasi_0_2_components_run_on_an_engine_without_concurrency_support() {
    wasm("alpha");
    wasm("beta");
    let (dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "two-engines"
[[trigger.http]]
route = "/loop"
component = "loop"
[component.loop]
source = "loop.wasm"
[[trigger.http]]
route = "/trap"
component = "trap"
[component.trap]
source = "trap.wasm"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = "{wasm}/alpha.wasm"
[[trigger.http]]
route = "/beta"
component = "beta"
[component.beta]
source = "{wasm}/beta.wasm"
"#,
    );
    std::fs::write(
        dir.path().join("loop.wasm"),
        p2_handler("(loop $l (br $l))"),
    )
    .expect("write");
    std::fs::write(dir.path().join("trap.wasm"), p2_handler("unreachable")).expect("write");

    let engines = |r: Reply| -> Vec<(String, String)> {
        assert_eq!(r.status, 200, "{}", r.text());
        let mut v: Vec<_> = r.json()["components"]
            .as_array()
            .expect("component list")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or("").to_string(),
                    c["engine"].to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut g = Gantry::start(&manifest, &["--request-timeout", "1s", "--pool-size", "1"]);
    assert_eq!(
        engines(get(&g.admin_url("/components")).await),
        [
            ("alpha".into(), "\"plain\"".into()),
            ("beta".into(), "\"concurrent\"".into()),
            ("loop".into(), "\"plain\"".into()),
            ("trap".into(), "\"plain\"".into()),
        ]
    );
    let t = Instant::now();
    let r = get(&g.url("/loop")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let r = get(&g.url("/trap")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    // The only instance slot is given back when a client stops waiting.
    let gone = tokio::time::timeout(Duration::from_millis(300), get(&g.url("/loop"))).await;
    assert!(gone.is_err(), "/loop should still be running");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let r = get(&g.url("/alpha")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["served_before"], 0);
        let r = get(&g.url("/beta?delay_ms=1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(g.is_running());
    assert!(
        g.stderr().contains("unreachable"),
        "the trap is logged:\n{}",
        g.stderr()
    );
    drop(g);

    let g = Gantry::start(&manifest, &["--request-timeout", "1s", "--one-engine"]);
    let all = engines(get(&g.admin_url("/components")).await);
    assert!(all.iter().all(|(_, e)| e == "\"concurrent\""), "{all:?}");
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert_eq!(get(&g.url("/loop")).await.status, 504);
    assert_eq!(get(&g.url("/trap")).await.status, 500);
}

/// The root app as `gantry up` serves it with nothing set: `/hello` calls
/// the app's own `/alpha` in-process, so it answers without any network.
#[tokio::test(flavor = "multi_thread")]
async fn hello_answers_without_a_network_by_calling_the_app_itself() {
    wasm("hello");
    wasm("alpha");
    let g = Gantry::start(&root_manifest(), &[]);
    let r = get(&g.url("/hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "hello (http://self.alt/alpha answered 200)\n",
        "{}",
        r.text()
    );
}
