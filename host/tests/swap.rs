//! Hot swap under traffic: a component is replaced through the admin API and
//! through its file (`--watch`), while clients keep calling it; broken versions
//! are refused; rollback; spin.toml changes add and remove routes.
//!
//! The swapped component, `svc`, alternates between the `alpha` build (WASI
//! HTTP 0.2, answers `"route":"alpha"`) and the `beta` build (0.3, answers
//! `"route":"beta"`), so every response says which version produced it.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const TOKEN: &str = "swap-test-token";

fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// The two versions of `svc` and the route each answers with.
fn versions() -> [(Vec<u8>, &'static str); 2] {
    [
        (std::fs::read(wasm("alpha")).expect("alpha.wasm"), "alpha"),
        (std::fs::read(wasm("beta")).expect("beta.wasm"), "beta"),
    ]
}

/// A manifest serving `svc` (from `source`) at `/svc`.
fn svc_manifest(dir: &Path, source: &Path) -> PathBuf {
    let path = dir.join("spin.toml");
    std::fs::write(
        &path,
        format!(
            r#"spin_manifest_version = 2
[application]
name = "swap"

[[trigger.http]]
route = "/svc"
component = "svc"

[component.svc]
source = "{}"
"#,
            source.display()
        ),
    )
    .expect("write manifest");
    path
}

/// One request of the load: when it was sent, when its answer was complete,
/// and the route that answered (or what went wrong).
struct Outcome {
    sent: Instant,
    done: Instant,
    route: Result<String, String>,
}

/// `clients` keep-alive clients calling `url` until `stop` is set.
fn start_load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..clients)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let client: Client<_, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let route = call(&client, &url).await;
                    out.push(Outcome {
                        sent,
                        done: Instant::now(),
                        route,
                    });
                }
                out
            })
        })
        .collect()
}

async fn call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<String, String> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    v["route"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no route in {text}"))
}

/// One swap as the test saw it: begun at `begun`, observed complete at
/// `complete`, after which `route` answers.
struct SwapWindow {
    begun: Instant,
    complete: Instant,
    route: &'static str,
}

/// Checks the load's outcomes against the swaps: nothing failed, and every
/// request sent after a swap completed (and answered before the next one
/// began) came from the version that swap put in.
fn check(outcomes: &[Outcome], initial: &'static str, swaps: &[SwapWindow]) -> usize {
    let failures: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.route.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        outcomes.len(),
        &failures[..failures.len().min(5)]
    );
    let mut checked = 0;
    for o in outcomes {
        let route = o.route.as_deref().unwrap_or_default();
        // The last swap complete before the request was sent.
        let last = swaps.iter().rposition(|s| s.complete <= o.sent);
        let (expected, next_begins) = match last {
            Some(i) => (swaps[i].route, swaps.get(i + 1).map(|s| s.begun)),
            None => (initial, swaps.first().map(|s| s.begun)),
        };
        if next_begins.is_some_and(|b| o.done >= b) {
            continue; // overlaps the next swap: either version is right
        }
        assert_eq!(
            route,
            expected,
            "a request sent {:?} after swap {last:?} completed was answered by the old version",
            last.map(|i| o.sent - swaps[i].complete)
        );
        checked += 1;
    }
    checked
}

async fn components(g: &Gantry) -> serde_json::Value {
    let r = get(&g.admin_url("/components")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn svc_state(g: &Gantry) -> serde_json::Value {
    let all = components(g).await;
    all["components"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["id"] == "svc"))
        .cloned()
        .unwrap_or_else(|| panic!("no svc in {all}"))
}

/// Waits until `svc` has been swapped `swaps` times; returns when it saw it.
async fn await_swaps(g: &Gantry, swaps: u64, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let s = svc_state(g).await;
        if s["swaps"].as_u64() == Some(swaps) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "svc not swapped {swaps} times within {within:?}: {s}\nstderr:\n{}",
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of one sample in a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().split(' ').next())
        .and_then(|v| v.parse().ok())
}

const CLIENTS: usize = 32;
const LOAD_FOR: Duration = Duration::from_secs(10);
const SWAPS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn admin_put_swaps_under_load_without_losing_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = svc_manifest(dir.path(), &wasm("alpha"));
    let g = Gantry::start(&manifest, &["--admin-token", TOKEN]);
    let versions = versions();

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(g.url("/svc?delay_ms=0"), CLIENTS, stop.clone());
    let started = Instant::now();
    let mut swaps = Vec::new();
    let mut digests = std::collections::HashSet::new();
    while swaps.len() < SWAPS || started.elapsed() < LOAD_FOR {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (bytes, route) = &versions[(swaps.len() + 1) % 2];
        let (k, v) = auth();
        let begun = Instant::now();
        let r = send(
            "PUT",
            &g.admin_url("/components/svc"),
            &[(k, &v)],
            bytes.clone(),
        )
        .await;
        let complete = Instant::now();
        assert_eq!(r.status, 200, "swap {}: {}", swaps.len(), r.text());
        digests.insert(r.json()["digest"].as_str().unwrap_or_default().to_string());
        swaps.push(SwapWindow {
            begun,
            complete,
            route,
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for h in load {
        outcomes.extend(h.await.expect("load client"));
    }
    let checked = check(&outcomes, "alpha", &swaps);
    eprintln!(
        "admin PUT: {} swaps, {} requests in {:.1}s, {checked} checked against the version they must see",
        swaps.len(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(swaps.len() >= SWAPS);
    assert_eq!(digests.len(), 2, "two versions alternate: {digests:?}");
    assert!(
        checked > outcomes.len() / 5,
        "{checked} of {}",
        outcomes.len()
    );

    let state = svc_state(&g).await;
    assert_eq!(state["swaps"].as_u64(), Some(swaps.len() as u64), "{state}");
    assert!(state["last_error"].is_null(), "{state}");
    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"gantry_component_swaps_total{component="svc",result="ok"}"#
        ),
        Some(swaps.len() as f64),
        "{metrics}"
    );
    // The info metric names the digest now serving.
    let digest = state["digest"].as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gantry_component_info{")
                && l.contains(r#"component="svc""#)
                && l.contains(digest)),
        "{metrics}"
    );
    assert!(g.stderr().contains("component swapped"), "{}", g.stderr());
}

/// How a file gets its new content.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// An editor saving in place: truncate and write the same inode.
    InPlace,
    /// Write a temporary file beside it, then rename over it.
    Rename,
    /// What `cargo build` does: unlink, then hard-link the new artifact in.
    Relink,
}

fn write_file(path: &Path, bytes: &[u8], how: Write, n: usize) {
    match how {
        Write::InPlace => std::fs::write(path, bytes).expect("write in place"),
        Write::Rename => {
            let tmp = path.with_extension(format!("wasm.tmp{n}"));
            std::fs::write(&tmp, bytes).expect("write temp");
            std::fs::rename(&tmp, path).expect("rename");
        }
        Write::Relink => {
            let deps = path.parent().expect("parent").join("deps");
            std::fs::create_dir_all(&deps).expect("deps");
            let artifact = deps.join(format!("svc-{n}.wasm"));
            std::fs::write(&artifact, bytes).expect("write artifact");
            std::fs::remove_file(path).expect("unlink");
            std::fs::hard_link(&artifact, path).expect("hard link");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_changes_swap_under_load_without_losing_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let versions = versions();
    let source = dir.path().join("svc.wasm");
    std::fs::write(&source, &versions[0].0).expect("svc.wasm");
    let manifest = svc_manifest(dir.path(), &source);
    let g = Gantry::start(&manifest, &["--watch", "--admin-token", TOKEN]);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(g.url("/svc?delay_ms=0"), CLIENTS, stop.clone());
    let started = Instant::now();
    let mut swaps = Vec::new();
    let ways = [Write::InPlace, Write::Rename, Write::Relink];
    while swaps.len() < SWAPS || started.elapsed() < LOAD_FOR {
        // Time on one version between swaps, so that many requests are
        // checked against it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let n = swaps.len();
        let (bytes, route) = &versions[(n + 1) % 2];
        let begun = Instant::now();
        write_file(&source, bytes, ways[n % ways.len()], n);
        let complete = await_swaps(&g, n as u64 + 1, Duration::from_secs(20)).await;
        swaps.push(SwapWindow {
            begun,
            complete,
            route,
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for h in load {
        outcomes.extend(h.await.expect("load client"));
    }
    let checked = check(&outcomes, "alpha", &swaps);
    let took: Vec<f64> = swaps
        .iter()
        .map(|s| (s.complete - s.begun).as_secs_f64() * 1000.0)
        .collect();
    eprintln!(
        "file swaps: {} swaps, {} requests in {:.1}s, {checked} checked; write to served: {:.0}..{:.0} ms",
        swaps.len(),
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        took.iter().cloned().fold(f64::MAX, f64::min),
        took.iter().cloned().fold(0.0, f64::max),
    );
    assert!(swaps.len() >= SWAPS);
    assert!(
        checked > outcomes.len() / 5,
        "{checked} of {}",
        outcomes.len()
    );
    let state = svc_state(&g).await;
    assert!(state["last_error"].is_null(), "{state}");
    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"gantry_component_swaps_total{component="svc",result="ok"}"#
        ),
        Some(swaps.len() as f64),
        "{metrics}"
    );
}

/// A Kubernetes ConfigMap volume: `svc.wasm -> ..data/svc.wasm`, and an
/// update swaps the `..data` symlink to a new timestamped folder at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_update_swaps_the_component() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).expect("volume");
    let versions = versions();
    let publish = |n: usize, bytes: &[u8]| {
        let stamp = format!("..2026_11_22_00_00_{n:02}.000000001");
        std::fs::create_dir(volume.join(&stamp)).expect("stamp dir");
        std::fs::write(volume.join(&stamp).join("svc.wasm"), bytes).expect("write");
        let tmp = volume.join("..data_tmp");
        symlink(&stamp, &tmp).expect("symlink");
        std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");
        if n > 0 {
            let old = format!("..2026_11_22_00_00_{:02}.000000001", n - 1);
            std::fs::remove_dir_all(volume.join(old)).expect("remove old");
        }
    };
    publish(0, &versions[0].0);
    symlink("..data/svc.wasm", volume.join("svc.wasm")).expect("key symlink");
    let manifest = svc_manifest(dir.path(), &volume.join("svc.wasm"));
    let g = Gantry::start(&manifest, &["--watch"]);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(g.url("/svc?delay_ms=0"), 8, stop.clone());
    let mut swaps = Vec::new();
    for n in 1..=6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (bytes, route) = &versions[n % 2];
        let begun = Instant::now();
        publish(n, bytes);
        let complete = await_swaps(&g, n as u64, Duration::from_secs(20)).await;
        swaps.push(SwapWindow {
            begun,
            complete,
            route,
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for h in load {
        outcomes.extend(h.await.expect("load client"));
    }
    let checked = check(&outcomes, "alpha", &swaps);
    assert!(checked > 0);
    let r = get(&g.url("/svc?delay_ms=0")).await;
    assert_eq!(r.json()["route"], "alpha", "six swaps end on alpha");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_versions_are_refused_and_the_old_one_keeps_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let versions = versions();
    let source = dir.path().join("svc.wasm");
    std::fs::write(&source, &versions[0].0).expect("svc.wasm");
    let manifest = svc_manifest(dir.path(), &source);
    let g = Gantry::start(&manifest, &["--watch", "--admin-token", TOKEN]);
    let before = svc_state(&g).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(g.url("/svc?delay_ms=0"), 4, stop.clone());

    let beta = &versions[1].0;
    let truncated = beta[..beta.len() / 2].to_vec();
    let core_module = wat::parse_str("(module (func (export \"handle\")))").expect("core module");
    let wrong_exports = wat::parse_str(
        r#"(component
             (core module $m (func (export "run")))
             (core instance $i (instantiate $m))
             (func $run (canon lift (core func $i "run")))
             (export "run" (func $run)))"#,
    )
    .expect("component");
    let unknown_import = wat::parse_str(
        r#"(component
             (import "example:nowhere/thing" (instance $t (export "f" (func))))
           )"#,
    )
    .expect("component");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("truncated", truncated.clone(), "does not compile"),
        ("core module", core_module, "no component type information"),
        ("wrong exports", wrong_exports, "incoming-handler"),
        ("unknown import", unknown_import, "does not provide"),
        (
            "not wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a WebAssembly",
        ),
    ];
    let (k, v) = auth();
    for (what, bytes, says) in &cases {
        let r = send(
            "PUT",
            &g.admin_url("/components/svc"),
            &[(k, &v)],
            bytes.clone(),
        )
        .await;
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{what}: {error}");
        let state = svc_state(&g).await;
        assert_eq!(state["digest"], before["digest"], "{what}: {state}");
        assert!(
            state["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(says)),
            "{what}: {state}"
        );
        let r = get(&g.url("/svc?delay_ms=0")).await;
        assert_eq!(r.json()["route"], "alpha", "{what}");
    }

    // The same through the watcher: a truncated file is refused, then the
    // complete one is taken.
    std::fs::write(&source, &truncated).expect("truncate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&g.admin_url("/metrics")).await.text();
        let refused = sample(
            &metrics,
            r#"gantry_component_swaps_total{component="svc",result="refused"}"#,
        );
        if refused == Some(cases.len() as f64 + 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "truncated file not refused: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(svc_state(&g).await["digest"], before["digest"]);
    std::fs::write(&source, beta).expect("complete");
    await_swaps(&g, 1, Duration::from_secs(10)).await;
    let r = get(&g.url("/svc?delay_ms=0")).await;
    assert_eq!(r.json()["route"], "beta");
    assert!(svc_state(&g).await["last_error"].is_null());

    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for h in load {
        outcomes.extend(h.await.expect("load client"));
    }
    let failures = outcomes.iter().filter(|o| o.route.is_err()).count();
    assert_eq!(
        failures, 0,
        "requests failed while broken versions were refused"
    );
    assert!(
        g.stderr()
            .contains("swap refused; the old version keeps serving")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = svc_manifest(dir.path(), &wasm("alpha"));
    let g = Gantry::start(&manifest, &["--admin-token", TOKEN]);
    let (k, v) = auth();
    let original = svc_state(&g).await;

    let r = send(
        "POST",
        &g.admin_url("/components/svc/rollback"),
        &[(k, &v)],
        vec![],
    )
    .await;
    assert_eq!(r.status, 409, "nothing to roll back to yet: {}", r.text());

    let r = send(
        "PUT",
        &g.admin_url("/components/svc"),
        &[(k, &v)],
        versions()[1].0.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let swapped = svc_state(&g).await;
    assert_ne!(swapped["digest"], original["digest"]);
    assert_eq!(swapped["previous_digest"], original["digest"]);
    assert_eq!(get(&g.url("/svc?delay_ms=0")).await.json()["route"], "beta");

    let r = send(
        "POST",
        &g.admin_url("/components/svc/rollback"),
        &[(k, &v)],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["digest"], original["digest"]);
    let back = svc_state(&g).await;
    assert_eq!(back["digest"], original["digest"], "{back}");
    assert_eq!(back["previous_digest"], swapped["digest"], "{back}");
    assert_eq!(
        get(&g.url("/svc?delay_ms=0")).await.json()["route"],
        "alpha"
    );

    // A second rollback undoes the first.
    let r = send(
        "POST",
        &g.admin_url("/components/svc/rollback"),
        &[(k, &v)],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&g.url("/svc?delay_ms=0")).await.json()["route"], "beta");

    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"gantry_component_swaps_total{component="svc",result="rollback"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    let r = send(
        "PUT",
        &g.admin_url("/components/nope"),
        &[(k, &v)],
        vec![0; 8],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutating_admin_calls_without_the_token_get_401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = svc_manifest(dir.path(), &wasm("alpha"));
    let g = Gantry::start(&manifest, &["--admin-token", TOKEN]);
    let beta = versions()[1].0.clone();
    let put = g.admin_url("/components/svc");
    let rollback = g.admin_url("/components/svc/rollback");
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-token")],
        vec![("authorization", "Bearer ")],
        vec![("authorization", TOKEN)],
        vec![("authorization", "Basic c3dhcDpzd2Fw")],
    ] {
        let r = send("PUT", &put, &headers, beta.clone()).await;
        assert_eq!(r.status, 401, "PUT with {headers:?}: {}", r.text());
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let r = send("POST", &rollback, &headers, vec![]).await;
        assert_eq!(r.status, 401, "rollback with {headers:?}: {}", r.text());
    }
    // Nothing changed, and reading needs no token.
    let state = svc_state(&g).await;
    assert_eq!(state["swaps"], 0, "{state}");
    assert_eq!(
        get(&g.url("/svc?delay_ms=0")).await.json()["route"],
        "alpha"
    );

    // Starting with the admin listener off loopback and no token is refused.
    let out = std::process::Command::new(gantry_bin())
        .args(["up", "-f"])
        .arg(&manifest)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--no-cache",
        ])
        .env_remove("GANTRY_ADMIN_TOKEN")
        .output()
        .expect("run gantry");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-token"), "{stderr}");
}

fn two_route_manifest(path: &Path, with_b: bool) {
    let mut text = format!(
        r#"spin_manifest_version = 2
[application]
name = "reload"

[[trigger.http]]
route = "/a"
component = "a"

[component.a]
source = "{}"
"#,
        wasm("alpha").display()
    );
    if with_b {
        text.push_str(&format!(
            r#"
[[trigger.http]]
route = "/b"
component = "b"

[component.b]
source = "{}"
"#,
            wasm("beta").display()
        ));
    }
    // Write-then-rename, as editors and config management do.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, path).expect("rename manifest");
}

async fn await_status(g: &Gantry, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(&g.url(path)).await;
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {} ({}), not {status}\nstderr:\n{}",
            r.status,
            r.text(),
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spin_toml_changes_add_and_remove_routes_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("spin.toml");
    two_route_manifest(&manifest, false);
    let g = Gantry::start(&manifest, &["--watch"]);
    let pid = g.child.id();
    assert_eq!(get(&g.url("/b")).await.status, 404);

    two_route_manifest(&manifest, true);
    await_status(&g, "/b?delay_ms=0", 200).await;
    assert_eq!(get(&g.url("/b?delay_ms=0")).await.json()["route"], "beta");
    assert_eq!(get(&g.url("/a")).await.json()["route"], "alpha");
    let ids: Vec<String> = components(&g).await["components"]
        .as_array()
        .map(|l| l.iter().map(|c| c["id"].to_string()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["\"a\"", "\"b\""]);

    // A broken manifest is refused; the table keeps serving as it was.
    std::fs::write(&manifest, "spin_manifest_version = 2\n[application\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.stderr().contains("manifest refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(g.stderr().contains("spin.toml:2"), "{}", g.stderr());
    assert_eq!(get(&g.url("/b?delay_ms=0")).await.status, 200);

    // Remove /b while a slow request on it is in flight: that request
    // completes on the version it started with; new ones get 404.
    let slow_url = g.url("/b?delay_ms=2500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    two_route_manifest(&manifest, false);
    await_status(&g, "/b?delay_ms=0", 404).await;
    assert!(
        !slow.is_finished(),
        "the slow request should still be running"
    );
    assert_eq!(get(&g.url("/a")).await.json()["route"], "alpha");
    let r = slow.await.expect("slow request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["slept_ms"], 2500);
    assert_eq!(g.child.id(), pid, "served without a restart");
    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("gantry_component_info{") && l.contains(r#"component="b""#)),
        "a removed component is no longer reported: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_and_refusals_are_spans() {
    use common::otlp::{Receiver, attr_of};
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = svc_manifest(dir.path(), &wasm("alpha"));
    let g = Gantry::start_env(
        &manifest,
        &["--admin-token", TOKEN],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let (k, v) = auth();
    let url = g.admin_url("/components/svc");
    let r = send("PUT", &url, &[(k, &v)], versions()[1].0.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = r.json()["digest"].as_str().unwrap_or_default().to_string();
    let r = send(
        "PUT",
        &url,
        &[(k, &v)],
        b"\0asm\x0d\0\x01\0garbage".to_vec(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let r = send("POST", &format!("{url}/rollback"), &[(k, &v)], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let ok = rx
        .wait_for("swap", |s| {
            s.name == "component.swap"
                && attr_of(&s.attributes, "gantry.component.digest").as_deref()
                    == Some(digest.as_str())
        })
        .await;
    assert_eq!(
        attr_of(&ok.attributes, "gantry.component.id").as_deref(),
        Some("svc")
    );
    assert_eq!(
        attr_of(&ok.attributes, "gantry.swap.trigger").as_deref(),
        Some("admin")
    );
    let refused = rx
        .wait_for("refused swap", |s| {
            s.name == "component.swap" && s.status.as_ref().is_some_and(|st| st.code == 2)
        })
        .await;
    let message = refused.status.map(|s| s.message).unwrap_or_default();
    assert!(message.contains("does not compile"), "{message}");
    rx.wait_for("rollback", |s| s.name == "component.rollback")
        .await;
}
