//! Core modules made components at load, as `spin up` does: `kv-v2`
//! (spin-sdk 5.2, Spin's `http-rust-p2` template) built for `wasm32-wasip1`
//! is adapted with the WASI preview1 adapter and served like any component.

mod common;
use common::*;

fn wasip1_module() -> std::path::PathBuf {
    built(
        "target/wasm32-wasip1/wasm/kv_v2.wasm",
        "build it with `cargo build --target wasm32-wasip1 --profile wasm -p kv-v2`",
    )
}

fn manifest() -> (tempfile::TempDir, std::path::PathBuf) {
    let module = wasip1_module();
    let bytes = std::fs::read(&module).expect("read module");
    assert_eq!(
        &bytes[4..8],
        &[1, 0, 0, 0],
        "a core module, not a component"
    );
    write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "p1"
[[trigger.http]]
route = "/kv-v2/..."
component = "kv-v2"
[component.kv-v2]
source = "{}"
key_value_stores = ["default"]
"#,
        module.display()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasip1_module_is_adapted_served_and_cached() {
    let (dir, manifest) = manifest();
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().expect("utf-8");
    let g = Gantry::start(&manifest, &["--cache-dir", cache_arg]);
    assert_eq!(
        send("PUT", &g.url("/kv-v2/default/k"), &[], b"from p1".to_vec())
            .await
            .status,
        200
    );
    let r = get(&g.url("/kv-v2/default/k")).await;
    assert_eq!((r.status, r.text()), (200, "from p1".to_string()));
    assert_eq!(get(&g.url("/kv-v2/forbidden/k")).await.status, 403);
    drop(g);

    // The second start compiles nothing: the cache the first one wrote is
    // keyed by the module as given.
    let g = Gantry::start(&manifest, &["--cache-dir", cache_arg]);
    assert_eq!(get(&g.url("/kv-v2/default/k")).await.text(), "from p1");
    assert!(g.stderr().contains("from_cache=1"), "{}", g.stderr());

    // `gantry check` says what it did.
    let text = check_ok(&manifest);
    assert!(
        text.contains("core module (wasip1), adapted to a component"),
        "{text}"
    );
    let size = std::fs::metadata(wasip1_module()).expect("stat").len();
    assert!(text.contains(&format!("{size} bytes")), "{text}");
}

/// A `wasm32-unknown-unknown` module carrying its component type (`bare`,
/// wit-bindgen only) is made a component without the adapter.
#[tokio::test(flavor = "multi_thread")]
async fn a_typed_module_without_wasi_preview1_is_made_a_component() {
    let module = built(
        "target/wasm32-unknown-unknown/wasm/bare.wasm",
        "build it with `cargo build --target wasm32-unknown-unknown --profile wasm -p bare`",
    );
    let (_dir, manifest) = write_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"bare\"\n[[trigger.http]]\nroute = \
         \"/...\"\ncomponent = \"bare\"\n[component.bare]\nsource = \"{}\"\n",
        module.display()
    ));
    let text = check_ok(&manifest);
    assert!(
        text.contains("core module, made a component from its type"),
        "{text}"
    );
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/anything")).await;
    assert_eq!(
        (r.status, r.text()),
        (200, "bare core module\n".to_string())
    );
}
