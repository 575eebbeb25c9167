//! Gantry against the reference: the same component (`functions/plain`, WASI
//! HTTP 0.2, standard imports only) served by
//! - Gantry with tracing and metrics on (every request sampled, OTLP traces,
//!   logs and metrics pushed to a real collector, rotel, on this machine),
//! - Gantry with telemetry off (`OTEL_SDK_DISABLED=true`),
//! - `wasmtime serve` of the same wasmtime version, pooling allocator on,
//! - and a native hyper server answering the same bytes (this very binary,
//!   started again with `--native-hello`), the floor for any wasm host.
//!
//! `hey` drives each in turn, A/B/C/D in odd rounds and D/C/B/A in even
//! ones, at concurrency 1 and 50, so drift on the machine hits all alike. Prints req/s, p50, p99 and server CPU
//! per request per round, the medians, each server's peak RSS and the ratios
//! Gantry / `wasmtime serve` and Gantry / native. Figures, not assertions:
//! `scripts/bench.sh` runs it (and installs wasmtime-cli once), or
//! `cargo bench -p gantry --bench compare` with `GANTRY_WASMTIME` naming a
//! `wasmtime` binary.
//!
//! `GANTRY_BENCH_SECONDS` (default 5), `GANTRY_BENCH_ROUNDS` (default 3),
//! `GANTRY_BENCH_WARMUP` (seconds of load per server before the rounds of
//! each concurrency, default 1) and `GANTRY_BENCH_CONCURRENCY` (default
//! "1,50") set the length.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::collector::Collector;
use common::*;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BODY: &[u8] = b"hello\n";

/// A server under test: its name, the URL to load and its process.
struct Subject {
    name: &'static str,
    url: String,
    pid: u32,
    /// Collector CPU is charged to the telemetry-on run only.
    collector_pid: Option<u32>,
}

/// A child process killed on drop.
struct Owned(Child);
impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {addr} within 60 s");
}

/// The `wasmtime` binary to compare with: `GANTRY_WASMTIME`, else the one
/// `scripts/bench.sh` installs under `target/tools`.
fn wasmtime_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GANTRY_WASMTIME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = workspace().join("target/tools/wasmtime-50.0.1/bin/wasmtime");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/bench.sh (it installs wasmtime-cli 50.0.1 there once) \
         or set GANTRY_WASMTIME",
        p.display()
    );
    p
}

/// `--native-hello ADDR`: a plain hyper HTTP/1.1 server answering `hello`.
fn native_hello(addr: &str) {
    use http_body_util::Full;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = http::Response::new(Full::new(bytes::Bytes::from_static(BODY)));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--native-hello") {
        native_hello(args.get(i + 1).map(String::as_str).unwrap_or("127.0.0.1:0"));
        return;
    }
    // `cargo bench` passes --bench; a plain `cargo test` of benches must not run it.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    // Servers run as in production: no backtrace capture asked for (with it,
    // every wasmtime error value walks the stack, in both hosts).
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    let seconds = env_num("GANTRY_BENCH_SECONDS", 5);
    let rounds = env_num("GANTRY_BENCH_ROUNDS", 3);
    let warmup = env_num("GANTRY_BENCH_WARMUP", 1);
    let concurrencies: Vec<u64> = std::env::var("GANTRY_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,50".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let plain = wasm("plain");
    let wasmtime = wasmtime_bin();
    let (_dir, manifest) = write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "compare"
[[trigger.http]]
route = "/..."
component = "plain"
[component.plain]
source = "{}"
"#,
        plain.display()
    ));

    let collector = Collector::start_with(false);
    let endpoint = format!("http://127.0.0.1:{}", collector.http);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let on = Gantry::start_env(
        &manifest,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    let off = Gantry::start_env(&manifest, &[], &[("OTEL_SDK_DISABLED", "true")]);

    let wt_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut wt = Command::new(&wasmtime)
        .args(["serve", "-S", "cli", "-O", "pooling-allocator=y", "--addr"])
        .arg(wt_addr.to_string())
        .arg(&plain)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", wasmtime.display()));
    wait_listening(wt_addr, "wasmtime serve", &mut wt);
    let wt = Owned(wt);
    let wt_version = Command::new(&wasmtime)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    let native_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut native = Command::new(std::env::current_exe().expect("own path"))
        .args(["--native-hello", &native_addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the native server");
    wait_listening(native_addr, "native hello", &mut native);
    let native = Owned(native);

    let subjects = [
        Subject {
            name: "gantry, telemetry on",
            url: on.url("/"),
            pid: on.child.id(),
            collector_pid: Some(collector.child.id()),
        },
        Subject {
            name: "gantry, telemetry off",
            url: off.url("/"),
            pid: off.child.id(),
            collector_pid: None,
        },
        Subject {
            name: "wasmtime serve",
            url: format!("http://{wt_addr}/"),
            pid: wt.0.id(),
            collector_pid: None,
        },
        Subject {
            name: "native hyper",
            url: format!("http://{native_addr}/"),
            pid: native.0.id(),
            collector_pid: None,
        },
    ];
    // Every server must answer the same bytes before it is measured.
    for s in &subjects {
        let reply = rt.block_on(get(&s.url));
        assert_eq!(reply.status, 200, "{} answered {}", s.name, reply.status);
        assert_eq!(
            &reply.body[..],
            BODY,
            "{} answered {:?}",
            s.name,
            reply.text()
        );
    }

    println!("same component for every wasm run: {}", plain.display());
    println!("reference: {wt_version} (serve, -O pooling-allocator=y)");
    println!("{rounds} rounds of {seconds}s per server and concurrency, interleaved; load: hey");
    let mut summary = Vec::new();
    for &c in &concurrencies {
        for s in &subjects {
            hey(&s.url, warmup, c); // warm-up: pools, caches, connections
        }
        println!(
            "\nc={c}\n{:<22} {:>5} {:>10} {:>9} {:>9} {:>7} {:>14} {:>12}",
            "server", "round", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "hey us/req"
        );
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); subjects.len()];
        for round in 1..=rounds {
            // A/B/C/D, then D/C/B/A: drift within a round hits each
            // neighbour pair from both sides.
            let mut order: Vec<usize> = (0..subjects.len()).collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for i in order {
                let s = &subjects[i];
                let host0 = cpu_us(s.pid);
                let peer0 = s.collector_pid.map(cpu_us).unwrap_or(0.0);
                let mut f = hey(&s.url, seconds, c);
                let n = f.responses.max(1) as f64;
                f.host_cpu_us = (cpu_us(s.pid) - host0) / n;
                f.peer_cpu_us = (s.collector_pid.map(cpu_us).unwrap_or(0.0) - peer0) / n;
                println!(
                    "{:<22} {round:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>14.1} {:>12.1}",
                    s.name, f.rps, f.p50_ms, f.p99_ms, f.errors, f.host_cpu_us, f.client_cpu_us
                );
                results[i].push(f);
            }
        }
        let med = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
        println!("medians at c={c}:");
        for (i, s) in subjects.iter().enumerate() {
            let collector = if s.collector_pid.is_some() {
                format!("  (+ collector {:.1} us/req)", med(i, |f| f.peer_cpu_us))
            } else {
                String::new()
            };
            println!(
                "  {:<22} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  CPU {:>6.1} us/req  hey {:>6.1} us/req{collector}",
                s.name,
                med(i, |f| f.rps),
                med(i, |f| f.p50_ms),
                med(i, |f| f.p99_ms),
                med(i, |f| f.host_cpu_us),
                med(i, |f| f.client_cpu_us)
            );
        }
        let ratio = |a: usize, b: usize, f: fn(&Figures) -> f64| med(a, f) / med(b, f);
        // Server, client and collector share this machine's cores. When they
        // are saturated, req/s is about cores / (CPU per request of all
        // three), so a server's own saving moves req/s only by its share.
        let total = |i: usize| {
            med(i, |f| f.host_cpu_us) + med(i, |f| f.client_cpu_us) + med(i, |f| f.peer_cpu_us)
        };
        let needed = total(2) / 1.2 - med(0, |f| f.client_cpu_us) - med(0, |f| f.peer_cpu_us);
        summary.push(format!(
            "c={c}: host CPU per request, gantry (telemetry on) / wasmtime serve: {:.2}x; \
             all CPU per request (host + hey + collector): gantry (on) {:.0} us, wasmtime serve {:.0} us; \
             1.2x wasmtime serve's req/s on saturated cores would need gantry (on) at {:.0} us/req or less",
            ratio(0, 2, |f| f.host_cpu_us),
            total(0),
            total(2),
            needed,
        ));
        summary.push(format!(
            "c={c}: gantry (telemetry on) / wasmtime serve: req/s {:.2}x, p99 {:.2}x | \
             gantry (telemetry off) / wasmtime serve: req/s {:.2}x | \
             gantry (telemetry on) / native: req/s {:.2}x, p99 {:.2}x | \
             telemetry cost: req/s {:+.1} %, CPU/req {:+.1} % (the collector's CPU on the same cores: {:.1} % of all)",
            ratio(0, 2, |f| f.rps),
            ratio(0, 2, |f| f.p99_ms),
            ratio(1, 2, |f| f.rps),
            ratio(0, 3, |f| f.rps),
            ratio(0, 3, |f| f.p99_ms),
            (1.0 - ratio(0, 1, |f| f.rps)) * 100.0,
            (ratio(0, 1, |f| f.host_cpu_us) - 1.0) * 100.0,
            med(0, |f| f.peer_cpu_us) / total(0) * 100.0,
        ));
        // The same ratios round by round (each pair ran seconds apart): their
        // spread shows how far one median ratio can be trusted.
        let per_round = |a: usize, b: usize| {
            let mut r: Vec<f64> = results[a]
                .iter()
                .zip(&results[b])
                .map(|(x, y)| x.rps / y.rps.max(1.0))
                .collect();
            r.sort_by(f64::total_cmp);
            let listed: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            format!("{:.2}x (rounds: {})", median(r), listed.join(" "))
        };
        summary.push(format!(
            "c={c}: round by round, req/s gantry (on) / wasmtime serve: {}; gantry (off) / wasmtime serve: {}; gantry (on) / gantry (off): {}",
            per_round(0, 2),
            per_round(1, 2),
            per_round(0, 1),
        ));
    }
    println!("\npeak RSS:");
    for s in &subjects {
        println!("  {:<22} {:>7} KiB", s.name, peak_rss_kib(s.pid));
    }
    println!("\nratios (medians):");
    for line in summary {
        println!("  {line}");
    }
    drop(collector);
}
