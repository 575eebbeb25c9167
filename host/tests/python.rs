//! A Spin app in Python: `functions/hello-py`, built by componentize-py with
//! Spin's Python SDK (which puts Spin's whole platform world into the
//! component, WASI 0.3's release candidates included), served by the real
//! host, its count kept in the default key-value store.

mod common;
use common::*;

fn hello_py() -> std::path::PathBuf {
    let p = workspace().join("functions/hello-py/app.wasm");
    assert!(
        p.is_file(),
        "{} is missing: build it with functions/hello-py/build.sh (after scripts/setup.sh)",
        p.display()
    );
    p
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
