//! The on-disk compile cache: a restart with a warm cache reaches its first
//! response faster than a cold start. Both times are printed, not asserted.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The components of the app as its ConfigMaps carry it: the root app's
/// Rust examples (the Python and JavaScript ones would add tens of seconds
/// of compiling to every cold start here, and nothing to what is tested).
const COMPONENTS: [&str; 7] = [
    "hello",
    "alpha",
    "beta",
    "broken",
    "robot",
    "counter",
    "redis_example",
];

/// That app, laid out once per test run by deploy/stage-app.sh.
fn app() -> std::path::PathBuf {
    static STAGED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    STAGED
        .get_or_init(|| {
            let dir = workspace().join(format!(
                "target/tmp/compile-cache-app-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let out = std::process::Command::new(workspace().join("deploy/stage-app.sh"))
                .args([
                    "--leave-out",
                    "hello-py",
                    "--leave-out",
                    "hello-js",
                    "--leave-out",
                    "site",
                ])
                .arg(&dir)
                .output()
                .expect("run deploy/stage-app.sh");
            assert!(
                out.status.success(),
                "deploy/stage-app.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir.join("spin.toml")
        })
        .clone()
}

async fn time_to_first_response(cache: &std::path::Path) -> (Duration, String) {
    for f in COMPONENTS {
        wasm(f);
    }
    let t = Instant::now();
    let g = Gantry::start(
        &app(),
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

/// Runs `gantry compile --out dir` for the root app with `extra` flags.
fn precompile(dir: &std::path::Path, extra: &[&str]) {
    let manifest = app();
    let out = std::process::Command::new(gantry_bin())
        .args(["compile", "-f"])
        .arg(&manifest)
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run gantry compile");
    assert!(
        out.status.success(),
        "gantry compile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cwasm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts the root app with `--precompiled dir`, an empty cache of its own,
/// and `extra`; returns the time to the first 200 and the log.
async fn first_response_precompiled(
    precompiled: &std::path::Path,
    extra: &[&str],
) -> (Duration, String, usize) {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "--precompiled",
        precompiled.to_str().expect("utf-8 path"),
        "--cache-dir",
        cache.path().to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let g = Gantry::start(&app(), &args);
    let r = get(&g.url("/alpha")).await;
    assert_eq!(r.status, 200);
    (t.elapsed(), g.stderr(), cwasm_files(cache.path()).len())
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiled_components_serve_the_first_request_without_compiling() {
    for f in COMPONENTS {
        wasm(f);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    precompile(dir.path(), &[]);
    assert_eq!(cwasm_files(dir.path()).len(), COMPONENTS.len());
    let (precompiled, log, written) = first_response_precompiled(dir.path(), &[]).await;
    assert!(
        log.contains(&format!("from_cache={}", COMPONENTS.len())),
        "{log}"
    );
    assert_eq!(written, 0, "nothing is compiled, so nothing is cached");
    let empty = tempfile::tempdir().expect("tempdir");
    let (cold, log, _) = first_response_precompiled(empty.path(), &[]).await;
    assert!(log.contains("from_cache=0"), "{log}");
    println!("start to first response: compiling {cold:?}, precompiled {precompiled:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiled_for_other_engine_settings_is_not_used() {
    for f in COMPONENTS {
        wasm(f);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Another instance memory bound compiles other bounds checks.
    precompile(dir.path(), &["--max-instance-memory", "16MiB"]);
    let (_, log, written) =
        first_response_precompiled(dir.path(), &["--max-instance-memory", "64MiB"]).await;
    assert!(log.contains("from_cache=0"), "{log}");
    assert_eq!(written, COMPONENTS.len(), "compiled and cached instead");
    assert!(
        !log.contains("ignoring unusable"),
        "not even looked at: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_of_another_wasmtime_version_is_refused_and_rebuilt() {
    for f in COMPONENTS {
        wasm(f);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    precompile(dir.path(), &[]);
    // Each artifact's engine section starts with a format byte, the length
    // of the wasmtime version and the version itself: make it another one,
    // as an artifact copied from another build would carry.
    for file in cwasm_files(dir.path()) {
        let mut bytes = std::fs::read(&file).expect("read artifact");
        let version = engine_version_range(&bytes).expect("engine section");
        for b in &mut bytes[version.clone()] {
            *b = if *b == b'0' { b'1' } else { b'0' };
        }
        std::fs::write(&file, bytes).expect("write artifact");
    }
    let (_, log, written) = first_response_precompiled(dir.path(), &[]).await;
    assert!(log.contains("from_cache=0"), "{log}");
    assert!(
        log.contains("ignoring unusable compiled component"),
        "{log}"
    );
    assert!(log.contains("incompatible version"), "{log}");
    assert_eq!(written, COMPONENTS.len(), "compiled afresh and cached");
}

/// Where the wasmtime version string sits in an artifact: the data of its
/// `.wasmtime.engine` ELF section, after a format byte and a length byte.
fn engine_version_range(elf: &[u8]) -> Option<std::ops::Range<usize>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let (entsize, count, names) = (
        u16_at(0x3A)? as usize,
        u16_at(0x3C)? as usize,
        u16_at(0x3E)? as usize,
    );
    let strtab = u64_at(shoff + names * entsize + 0x18)? as usize;
    (0..count).find_map(|i| {
        let sh = shoff + i * entsize;
        let name_at = strtab + u32_at(sh)? as usize;
        let name = elf.get(name_at..name_at + 17)?;
        if name != b".wasmtime.engine\0" {
            return None;
        }
        let data = u64_at(sh + 0x18)? as usize;
        let len = *elf.get(data + 1)? as usize;
        Some(data + 2..data + 2 + len)
    })
}
