//! How long a changed `.wasm` takes to serve: from the moment the new file is
//! in place (written beside it, then renamed over it) to the first response
//! from the new version, for the smallest and the largest component built from
//! `functions/`, under `gantry up --watch`.
//!
//! Two cases per component: a **new build** (bytes never seen, so the swap
//! compiles; each round appends a distinct custom section, as a rebuild
//! changes the bytes) and a **known build** (swapping back to bytes already
//! compiled, served from the compile cache). The time includes the watcher's
//! debounce: a change is acted on once the file has been still for one
//! `--watch-interval` (default 200ms, `GANTRY_BENCH_WATCH_INTERVAL` to change
//! it here). "Serving" is detected by polling the admin listener's
//! `/components` for the new digest every 2 ms and then sending one request:
//! the swap tests show that every request sent after the digest changes is
//! answered by the new version.
//!
//! Figures, not assertions: `cargo bench -p gantry --bench swap`;
//! `GANTRY_BENCH_ROUNDS` (default 5) sets the rounds per case.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `bytes` with one more custom section named `gantry-bench` holding `tag`:
/// a different component to the compiler, the same one to run.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"gantry-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.new");
    std::fs::write(&tmp, bytes).expect("write new version");
    std::fs::rename(&tmp, path).expect("rename over the old one");
}

async fn serving_digest(g: &Gantry) -> String {
    let r = get(&g.admin_url("/components")).await;
    r.json()["components"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Replaces the file and returns the time to the first response from it.
async fn swap_once(g: &Gantry, source: &Path, bytes: &[u8]) -> Duration {
    let digest = gantry::runtime::digest(bytes);
    replace_file(source, bytes);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    while serving_digest(g).await != digest {
        assert!(
            Instant::now() < deadline,
            "not swapped in 120s:\n{}",
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = get(&g.url("/svc/")).await;
    assert!(r.status < 500, "{}: {}", r.status, r.text());
    t0.elapsed()
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    println!(
        "  {label:<12} median {median:7.1} ms   min {:7.1} ms   max {:7.1} ms   ({} rounds)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

async fn bench(name: &str, original: &Path, rounds: usize, interval: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(original).expect("read component");
    let source = dir.path().join("svc.wasm");
    std::fs::write(&source, &bytes).expect("copy component");
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench\"\n\n\
             [[trigger.http]]\nroute = \"/svc/...\"\ncomponent = \"svc\"\n\n\
             [component.svc]\nsource = \"{}\"\n",
            source.display()
        ),
    )
    .expect("manifest");
    let cache = dir.path().join("cache");
    let cache = cache.display().to_string();
    let g = Gantry::start(
        &manifest,
        &[
            "--watch",
            "--watch-interval",
            interval,
            "--cache-dir",
            &cache,
        ],
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut new_build = Vec::new();
    let mut known_build = Vec::new();
    for round in 0..rounds {
        let fresh = with_custom_section(&bytes, &format!("{stamp}-{round}"));
        new_build.push(swap_once(&g, &source, &fresh).await.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        known_build.push(swap_once(&g, &source, &bytes).await.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("{name} ({} KiB):", bytes.len() / 1024);
    summary("new build", new_build);
    summary("known build", known_build);
}

fn built_functions() -> Vec<(String, PathBuf, u64)> {
    let mut found: Vec<(String, PathBuf, u64)> = std::fs::read_dir(workspace().join("functions"))
        .expect("functions/")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = wasm_dir().join(format!("{name}.wasm"));
            let size = std::fs::metadata(&p).ok()?.len();
            Some((name, p, size))
        })
        .collect();
    found.sort_by_key(|f| f.2);
    found
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs this too; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = std::env::var("GANTRY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let interval =
        std::env::var("GANTRY_BENCH_WATCH_INTERVAL").unwrap_or_else(|_| "200ms".to_string());
    let functions = built_functions();
    assert!(
        functions.len() >= 2,
        "build the functions first (scripts/setup.sh does)"
    );
    println!("file change to first response from the new version (--watch-interval {interval}):");
    let smallest = &functions[0];
    let largest = &functions[functions.len() - 1];
    for (name, path, _) in [smallest, largest] {
        bench(name, path, rounds, &interval).await;
    }
}
