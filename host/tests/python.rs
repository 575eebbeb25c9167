//! Python components, built by componentize-py, served by the real host:
//! `functions/hello-py` (Spin's Python SDK, which puts Spin's whole platform
//! world into the component, WASI 0.3's release candidate beside 0.3.0),
//! its count kept in the default key-value store; and `functions/platform-py`,
//! built on the release candidate alone, served through 0.3.0.

mod common;
use common::*;

fn hello_py() -> std::path::PathBuf {
    built(
        "functions/hello-py/app.wasm",
        "build it with functions/hello-py/build.sh (after scripts/setup.sh)",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_app_is_served_and_keeps_its_count() {
    let (dir, manifest) = write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "hello-py"
[[trigger.http]]
route = "/py/..."
component = "hello-py"
[component.hello-py]
source = "{}"
key_value_stores = ["default"]
"#,
        hello_py().display()
    ));
    let cache = shared_cache_dir();
    let cache = cache.to_str().expect("utf-8");
    let g = Gantry::start(&manifest, &["--cache-dir", cache]);
    for n in 1..=3 {
        let r = get(&g.url("/py/there?x=1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("Hello from Python! Visit {n}, GET /py/there?x=1\n")
        );
    }
    drop(g);
    // The count is in Spin's key-value file, and survives a restart.
    assert!(dir.path().join(".spin/sqlite_key_value.db").is_file());
    let g = Gantry::start(&manifest, &["--cache-dir", cache]);
    let r = get(&g.url("/py/")).await;
    assert!(
        r.text().starts_with("Hello from Python! Visit 4,"),
        "{}",
        r.text()
    );
}

/// Every candidate interface the probe calls answers through the host's
/// 0.3.0 implementation, and its candidate handler export is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_component_built_on_the_wasi_0_3_release_candidate_is_served() {
    let wasm = built(
        "functions/platform-py/app.wasm",
        "build it with functions/platform-py/build.sh (after scripts/setup.sh)",
    );
    let (dir, manifest) = write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "platform-py"
[[trigger.http]]
route = "/rc/..."
component = "platform-py"
[component.platform-py]
source = "{}"
files = ["probe.txt"]
environment = {{ PROBE = "rc" }}
"#,
        wasm.display()
    ));
    std::fs::write(dir.path().join("probe.txt"), "mounted for the candidate\n").expect("write");
    let checked = check_ok(&manifest);
    assert!(
        checked.contains("WASI 0.3.0-rc-2026-03-15 interfaces, served through 0.3.0"),
        "{checked}"
    );
    let cache = shared_cache_dir();
    let g = Gantry::start(&manifest, &["--cache-dir", cache.to_str().expect("utf-8")]);
    let mut randoms = Vec::new();
    for _ in 0..2 {
        let r = send("POST", &g.url("/rc/probe?x=1"), &[], b"hello".to_vec()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        assert_eq!(seen["path"], "/rc/probe?x=1", "{seen}");
        assert_eq!(seen["received"], 5, "{seen}");
        // `wait-for` (async) waited, and the monotonic clock saw it.
        let waited = seen["waited_ns"].as_u64().expect("waited_ns");
        assert!(waited >= 2_000_000, "{seen}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let system = seen["system_seconds"].as_u64().expect("system_seconds");
        assert!(system.abs_diff(now) < 60, "{seen} against {now}");
        assert_eq!(seen["env"], serde_json::json!({ "PROBE": "rc" }), "{seen}");
        assert_eq!(seen["preopens"], serde_json::json!(["/"]), "{seen}");
        assert_eq!(seen["file"], "mounted for the candidate\n", "{seen}");
        let random = seen["random"].as_str().expect("random").to_string();
        assert_eq!(random.len(), 32, "{seen}");
        randoms.push(random);
    }
    assert_ne!(randoms[0], randoms[1], "random bytes repeat");
}
