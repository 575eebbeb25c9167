//! The small figures behind a request and a start:
//! - instantiation: a fresh store with the request's host state plus an
//!   instance from the pool (p50/p99), and the same with the store dropped;
//!   beside it wasmtime's own floor for the same component (an empty store,
//!   every import a trapping host function), interleaved with it;
//! - router lookup with 10 and with 1,000 routes, interleaved batch by batch;
//! - start to first response of the example app with a cold and a warm
//!   compile cache, and its idle RSS;
//! - idle RSS with 1 to 500 components (distinct copies of `plain`, each
//!   compiled on its own), and what each added component costs.
//!
//! Measured with the binary's allocator and backtrace setting.
//! Figures, not assertions: `scripts/bench.sh` runs it, or
//! `cargo bench -p gantry --bench micro`. `GANTRY_BENCH_INSTANCES` (default
//! 20000) sets how many instantiations are timed;
//! `GANTRY_BENCH_ONLY_INSTANTIATION=1` stops after them.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

use gantry::capabilities::{Settings, Shared};
use gantry::instance::{TraceHandle, instantiate_only};
use gantry::router::Router;
use gantry::runtime::{Runtime, RuntimeConfig, load_app};
use gantry::telemetry::metrics::Metrics;
use gantry::telemetry::trace::Tracing;

// The allocator the `gantry` binary uses (see `src/main.rs`): the store and
// host state are allocated and freed on every request, so the figures must
// come from the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Instantiation with each way of initialising memory: `copy` (what
/// `--memory-init auto` picks for these components) moves the data segment
/// copy into instantiation, `cow` leaves it to the guest's first writes.
fn instantiation(rt: &tokio::runtime::Runtime, count: usize, memory_init_cow: bool) {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(shared_cache_dir()),
        memory_init_cow,
        ..RuntimeConfig::default()
    })
    .expect("engine");
    println!(
        "instantiation (pooling allocator: {}, --memory-init {}), {count} in a row per component:",
        runtime.uses_pooling(),
        if memory_init_cow { "cow" } else { "copy" }
    );
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "micro"
[[trigger.http]]
route = "/plain"
component = "plain"
[component.plain]
source = "{wasm}/plain.wasm"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = "{wasm}/alpha.wasm"
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "{wasm}/hello.wasm"
[[trigger.http]]
route = "/granted"
component = "granted"
[component.granted]
source = "{wasm}/plain.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
files = ["site/**/*"]
"#,
    );
    wasm("plain");
    let site = _dir.path().join("site");
    std::fs::create_dir_all(site.join("css")).expect("site folder");
    std::fs::write(site.join("index.html"), "<h1>hi</h1>").expect("write");
    std::fs::write(site.join("css/site.css"), "h1 {}").expect("write");
    let app = gantry::manifest::load(&manifest).expect("manifest");
    let live = load_app(&runtime, app, &BTreeMap::new()).unwrap_or_else(|errors| {
        panic!(
            "load: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    let metrics = Arc::new(Metrics::new());
    let tracing = Arc::new(Tracing::disabled());
    let board = gantry::gpio::open(gantry::gpio::Backend::Sim).expect("sim board");
    let state = _dir.path().join(".spin");
    let shared = Shared::new(&Settings {
        metrics: metrics.clone(),
        board,
        key_value: gantry::capabilities::key_value::Config::new(&state, &BTreeMap::new()),
        sqlite: gantry::capabilities::sqlite::Config::new(&state, &BTreeMap::new()),
    })
    .expect("capabilities");
    let mut p50 = BTreeMap::new();
    for slot in &live.slots {
        let version = slot.current.load_full();
        let run = |n: usize| {
            let mut store = Vec::with_capacity(n);
            let mut inst = Vec::with_capacity(n);
            let mut whole = Vec::with_capacity(n);
            rt.block_on(async {
                for _ in 0..n {
                    let trace = TraceHandle {
                        tracing: tracing.clone(),
                        metrics: metrics.clone(),
                        cx: opentelemetry::Context::new(),
                    };
                    let started = Instant::now();
                    let took =
                        instantiate_only(&version.loaded, &version.caps, &shared, 128 << 20, trace)
                            .await
                            .expect("instantiate");
                    whole.push(micros(started.elapsed()));
                    store.push(micros(took.store));
                    inst.push(micros(took.store + took.instance));
                }
            });
            (store, inst, whole)
        };
        // wasmtime's own floor for the same component: an empty store, and
        // every import a trapping host function (as many lowered imports as
        // Gantry's linker gives it), in the same engine and pool: the plain
        // one for a 0.2 component (see `--one-engine`).
        let component = version.loaded.handler.component().clone();
        let engine = component.engine().clone();
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        linker
            .define_unknown_imports_as_traps(&component)
            .expect("trapping imports");
        let floor_pre = linker.instantiate_pre(&component).expect("instance pre");
        let floor = |n: usize| floor_times(rt, &engine, &floor_pre, n);
        // Warm-up, then the two interleaved in blocks so that both meet the
        // same machine.
        run(count / 10);
        floor(count / 10);
        let (mut store, mut inst, mut whole, mut bare) = (vec![], vec![], vec![], vec![]);
        for _ in 0..4 {
            let (s, i, w) = run(count / 4);
            store.extend(s);
            inst.extend(i);
            whole.extend(w);
            bare.extend(floor(count / 4));
        }
        let (store, inst, whole, bare) = (sorted(store), sorted(inst), sorted(whole), sorted(bare));
        println!(
            "  {:<6} ({:>4} KiB, {}, {} engine) store + instantiate: p50 {:>6.1} us  p99 {:>6.1} us \
             (store with host state p50 {:>4.1} us) | with the store dropped: p50 {:>6.1} us  p99 {:>6.1} us",
            slot.id,
            version.loaded.size / 1024,
            version.loaded.world,
            gantry::runtime::engine_name(version.loaded.handler.on_concurrent_engine()),
            quantile(&inst, 0.5),
            quantile(&inst, 0.99),
            quantile(&store, 0.5),
            quantile(&whole, 0.5),
            quantile(&whole, 0.99),
        );
        println!(
            "  {:<6} wasmtime floor (empty store, trapping imports): p50 {:>6.1} us  p99 {:>6.1} us \
             -> Gantry / floor at p50 {:.2}x",
            "",
            quantile(&bare, 0.5),
            quantile(&bare, 0.99),
            quantile(&inst, 0.5) / quantile(&bare, 0.5),
        );
        p50.insert(slot.id.to_string(), quantile(&inst, 0.5));
    }
    if let (Some(plain), Some(granted)) = (p50.get("plain"), p50.get("granted")) {
        println!(
            "  granted (plain with a key-value store, a SQLite database and files) - plain at \
             p50: {:+.2} us ({:.3}x)",
            granted - plain,
            granted / plain
        );
    }
}

/// What WASI 0.3 support costs every instantiation: wasmtime's floor for
/// `plain` (empty store, trapping imports) on two engines alike but for
/// component-model async and wasmtime's concurrency support, which Gantry's
/// engine has on so that it can serve 0.3 components. Interleaved in blocks.
fn concurrency_cost(rt: &tokio::runtime::Runtime, count: usize) {
    let engine = |concurrent: bool| {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        c.wasm_component_model_async(concurrent);
        c.concurrency_support(concurrent);
        c.epoch_interruption(true);
        c.memory_reservation(128 << 20);
        c.memory_guard_size(2 << 20);
        let mut p = wasmtime::PoolingAllocationConfig::default();
        p.total_component_instances(16);
        p.total_core_instances(16 * 32);
        p.total_memories(16 * 4);
        p.total_tables(16 * 8);
        p.max_memory_size(128 << 20);
        p.total_stacks(16);
        p.linear_memory_keep_resident(2 << 20);
        p.table_keep_resident(4096);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p));
        wasmtime::Engine::new(&c).expect("engine")
    };
    let bytes = std::fs::read(wasm("plain")).expect("plain.wasm");
    let mut floors: Vec<_> = [("with 0.3 support", true), ("without", false)]
        .into_iter()
        .map(|(name, concurrent)| {
            let engine = engine(concurrent);
            let component = wasmtime::component::Component::new(&engine, &bytes).expect("compile");
            let mut linker = wasmtime::component::Linker::<()>::new(&engine);
            linker
                .define_unknown_imports_as_traps(&component)
                .expect("trapping imports");
            let pre = linker.instantiate_pre(&component).expect("instance pre");
            (name, engine, pre, Vec::with_capacity(count))
        })
        .collect();
    for block in 0..5 {
        for (_, engine, pre, times) in floors.iter_mut() {
            let block_times = floor_times(rt, engine, pre, count / 4);
            // The first block warms up.
            if block > 0 {
                times.extend(block_times);
            }
        }
    }
    println!("what WASI 0.3 support costs an instantiation (wasmtime floor, plain, {count} each):");
    let mut p50 = Vec::new();
    for (name, _, _, times) in floors {
        let times = sorted(times);
        println!(
            "  engine {name:<17} p50 {:>6.1} us  p99 {:>6.1} us",
            quantile(&times, 0.5),
            quantile(&times, 0.99)
        );
        p50.push(quantile(&times, 0.5));
    }
    println!("  without / with at p50: {:.2}x", p50[1] / p50[0]);
}

/// wasmtime's floor: `n` instantiations of `pre`, each in a fresh empty
/// store, timed from the store's creation (its release not included).
fn floor_times(
    rt: &tokio::runtime::Runtime,
    engine: &wasmtime::Engine,
    pre: &wasmtime::component::InstancePre<()>,
    n: usize,
) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..n {
            let started = Instant::now();
            let mut store = wasmtime::Store::new(engine, ());
            // The engine counts epochs: without a deadline ahead, the
            // component's start-up code would trap at once.
            store.set_epoch_deadline(1 << 20);
            pre.instantiate_async(&mut store)
                .await
                .expect("instantiate");
            times.push(micros(started.elapsed()));
        }
    });
    times
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Routes of every kind Spin has, `n` in all.
fn routes(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let route = match i % 4 {
                0 => format!("/svc{i}"),
                1 => format!("/svc{i}/..."),
                2 => format!("/api/v1/items{i}/:id"),
                _ => format!("/static/{i}/assets/..."),
            };
            (route, format!("c{i}"))
        })
        .collect()
}

fn router_lookup() {
    println!(
        "router lookup (ns per lookup over a mix of hits and misses; 200 batches of 10,000 \
         per size, the sizes interleaved):"
    );
    let sizes = [10usize, 1000];
    let tables: Vec<(Router, Vec<String>)> = sizes
        .iter()
        .map(|&n| {
            let table = routes(n);
            let router = Router::build(
                table
                    .iter()
                    .enumerate()
                    .map(|(i, (r, c))| (r.as_str(), c.as_str(), i)),
            );
            // The same mix for both sizes: each route kind hit equally often
            // (at spread-out routes), one lookup in five a miss.
            let paths: Vec<String> = (0..64)
                .map(|k| {
                    let kind = k % 5;
                    let i = ((k * 7919) % (n / 4)) * 4 + kind;
                    match kind {
                        0 => format!("/svc{i}"),
                        1 => format!("/svc{i}/a/b/c"),
                        2 => format!("/api/v1/items{i}/42"),
                        3 => format!("/static/{i}/assets/app.js"),
                        _ => format!("/missing/{k}"),
                    }
                })
                .collect();
            (router, paths)
        })
        .collect();
    let mut hits = vec![0usize; sizes.len()];
    let mut batches = vec![Vec::new(); sizes.len()];
    let mut ratios = Vec::new();
    for _ in 0..200 {
        let mut this_round = Vec::new();
        for (s, (router, paths)) in tables.iter().enumerate() {
            let started = Instant::now();
            for j in 0..10_000 {
                if router
                    .route(std::hint::black_box(&paths[j % paths.len()]))
                    .is_some()
                {
                    hits[s] += 1;
                }
            }
            let ns = started.elapsed().as_secs_f64() * 1e9 / 10_000.0;
            batches[s].push(ns);
            this_round.push(ns);
        }
        ratios.push(this_round[1] / this_round[0]);
    }
    for (s, n) in sizes.iter().enumerate() {
        let b = sorted(std::mem::take(&mut batches[s]));
        println!(
            "  {n:>5} routes: p50 {:>6.1} ns  p99 {:>6.1} ns  ({} of {} lookups matched)",
            quantile(&b, 0.5),
            quantile(&b, 0.99),
            hits[s],
            200 * 10_000
        );
    }
    let ratios = sorted(ratios);
    println!(
        "  1,000 routes / 10 routes, batch by batch: p50 {:.2}x (p10 {:.2}x, p90 {:.2}x)",
        quantile(&ratios, 0.5),
        quantile(&ratios, 0.1),
        quantile(&ratios, 0.9)
    );
}

/// A `gantry up` started for timing: fixed ports, no stdout reading.
struct Started {
    child: Child,
    to_first_response: Duration,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET over a fresh connection; the status, or `None` if not answered.
fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Starts `gantry up` and times it until `path` answers 200.
fn start_timed(manifest: &Path, cache: &Path, path: &str) -> Started {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut child = Command::new(gantry_bin())
        .arg("up")
        .arg("-f")
        .arg(manifest)
        .args(["--listen", &addr.to_string(), "--admin-listen", &admin])
        .arg("--cache-dir")
        .arg(cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry");
    loop {
        if status_of(addr, path) == Some(200) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gantry exited while starting: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "gantry did not answer {path} within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Started {
        to_first_response: started.elapsed(),
        child,
    }
}

/// Resident memory once the process has settled after start.
fn idle_rss_kib(s: &Started) -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    rss_kib(s.child.id())
}

fn start_up() {
    let manifest = workspace().join("spin.toml");
    wasm("robot");
    let cache = tempfile::tempdir().expect("tempdir");
    let cold = start_timed(&manifest, cache.path(), "/alpha");
    let cold_time = cold.to_first_response;
    drop(cold);
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let s = start_timed(&manifest, cache.path(), "/alpha");
        warm.push(s.to_first_response.as_secs_f64() * 1e3);
        rss.push(idle_rss_kib(&s) as f64);
    }
    let app = gantry::manifest::load(&manifest).expect("example manifest");
    println!(
        "start to first response, example app ({} components; spin.toml):",
        app.components.len()
    );
    println!(
        "  cold compile cache: {:>7.1} ms\n  warm compile cache: {:>7.1} ms (median of 5; min {:.1}, max {:.1})",
        cold_time.as_secs_f64() * 1e3,
        median(warm.clone()),
        warm.iter().cloned().fold(f64::INFINITY, f64::min),
        warm.iter().cloned().fold(0.0, f64::max),
    );
    println!(
        "idle RSS, example app: {:.1} MiB (median of 5)",
        median(rss) / 1024.0
    );
}

/// `plain` with a custom section naming `i` appended: the same code, another
/// digest, so each copy is compiled and kept on its own.
fn distinct_copy(plain: &[u8], i: usize) -> Vec<u8> {
    let name = b"gantry-bench-copy";
    let payload = i.to_le_bytes();
    let mut section = Vec::new();
    leb128(&mut section, name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = plain.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, section.len());
    out.extend_from_slice(&section);
    out
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
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

fn many_components() {
    let plain = std::fs::read(wasm("plain")).expect("plain.wasm");
    let dir = tempfile::tempdir().expect("tempdir");
    let max = 500;
    let mut sources = Vec::new();
    for i in 0..max {
        let path = dir.path().join(format!("c{i}.wasm"));
        std::fs::write(&path, distinct_copy(&plain, i)).expect("write copy");
        sources.push(path);
    }
    let manifest_for = |n: usize| -> PathBuf {
        let mut text = String::from("spin_manifest_version = 2\n[application]\nname = \"many\"\n");
        for (i, source) in sources.iter().take(n).enumerate() {
            text.push_str(&format!(
                "[[trigger.http]]\nroute = \"/c{i}\"\ncomponent = \"c{i}\"\n\
                 [component.c{i}]\nsource = \"{}\"\n",
                source.display()
            ));
        }
        let path = dir.path().join(format!("spin-{n}.toml"));
        std::fs::write(&path, text).expect("write manifest");
        path
    };
    // One cache for the copies, kept between runs: the first run compiles
    // all 500 (minutes on two cores), later ones only load them.
    let cache = workspace().join("target/bench-cache/many");
    let _ = std::fs::create_dir_all(&cache);
    let prime = start_timed(&manifest_for(max), &cache, "/c0");
    println!(
        "{max} components, first start (compiles what the cache lacks): {:.1} s",
        prime.to_first_response.as_secs_f64()
    );
    drop(prime);
    println!("idle RSS by component count (distinct copies of plain, warm cache):");
    let mut last: Option<(usize, f64)> = None;
    for n in [1usize, 100, 250, 500] {
        let s = start_timed(&manifest_for(n), &cache, &format!("/c{}", n - 1));
        let rss = idle_rss_kib(&s) as f64 / 1024.0;
        let step = last
            .map(|(m, r)| {
                format!(
                    "  +{:.1} KiB per added component",
                    (rss - r) * 1024.0 / (n - m) as f64
                )
            })
            .unwrap_or_default();
        println!(
            "  {n:>4} components: {rss:>7.1} MiB, start to first response {:>7.1} ms{step}",
            s.to_first_response.as_secs_f64() * 1e3
        );
        last = Some((n, rss));
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test` of benches must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // As the binary does at start. With only RUST_BACKTRACE=1 set, the
    // release below measured about 8 us more than the server pays.
    // SAFETY: no other thread exists yet.
    unsafe { gantry::no_library_backtraces_unless_asked() };
    let count = env_num("GANTRY_BENCH_INSTANCES", 20_000) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    instantiation(&rt, count, false);
    instantiation(&rt, count, true);
    concurrency_cost(&rt, count);
    if std::env::var_os("GANTRY_BENCH_ONLY_INSTANTIATION").is_some() {
        return;
    }
    println!();
    router_lookup();
    println!();
    start_up();
    println!();
    many_components();
}
