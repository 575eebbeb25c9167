//! The on-disk compile cache: a restart with a warm cache reaches its first
//! response faster than a cold start. Both times are printed, not asserted.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The root spin.toml's components.
const COMPONENTS: [&str; 5] = ["hello", "alpha", "beta", "broken", "robot"];

async fn time_to_first_response(cache: &std::path::Path) -> (Duration, String) {
    for f in COMPONENTS {
        wasm(f);
    }
    let t = Instant::now();
    let g = Gantry::start(
        &workspace().join("spin.toml"),
        &["--cache-dir", cache.to_str().expect("utf-8 path")],
    );
    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 200);
    (t.elapsed(), g.stderr())
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_cache_starts_faster_than_cold() {
    let cache = tempfile::tempdir().expect("tempdir");
    let (cold, cold_log) = time_to_first_response(cache.path()).await;
    let entries = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .count();
    assert_eq!(
        entries,
        COMPONENTS.len(),
        "one compiled artifact per component"
    );
    let (warm, warm_log) = time_to_first_response(cache.path()).await;
    println!("start to first response: cold cache {cold:?}, warm cache {warm:?}");
    assert!(cold_log.contains("from_cache=0"), "{cold_log}");
    assert!(
        warm_log.contains(&format!("from_cache={}", COMPONENTS.len())),
        "{warm_log}"
    );
}
