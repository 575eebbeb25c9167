//! What telemetry costs a request: the same component (`alpha`, WASI 0.2)
//! served by two `gantry up` processes, one exporting traces, logs and metrics
//! over OTLP to a real collector (rotel) with every request sampled, one with
//! `OTEL_SDK_DISABLED=true`. `hey` drives each in turn, A/B/A/B, so drift on
//! the machine hits both alike. Prints req/s, p50 and p99 per round, the
//! medians, the on/off ratios, the host's CPU time per request (which
//! separates the host's own cost from the collector's, since on this machine
//! the collector and `hey` share the host's cores) and each process's peak RSS. Figures, not
//! assertions: run with `cargo bench -p gantry --bench telemetry`.
//!
//! `GANTRY_BENCH_SECONDS` (default 5) and `GANTRY_BENCH_ROUNDS` (default 3)
//! set the length; `GANTRY_BENCH_CONCURRENCY` (default 50) the clients.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::collector::Collector;
use common::*;
use support::*;

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test` of benches must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = env_num("GANTRY_BENCH_SECONDS", 5);
    let rounds = env_num("GANTRY_BENCH_ROUNDS", 3);
    let concurrency = env_num("GANTRY_BENCH_CONCURRENCY", 50);
    let manifest = {
        wasm("alpha");
        workspace().join("spin.toml")
    };
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
    let configs = [("telemetry on ", &on), ("telemetry off", &off)];

    // Warm both up (compile cache, allocator pools, connections).
    for (_, g) in &configs {
        hey(&g.url("/alpha"), 1, concurrency);
    }
    println!(
        "alpha (WASI 0.2), c={concurrency}, {rounds} rounds of {seconds}s each, interleaved\n"
    );
    println!(
        "{:<14} {:>5} {:>10} {:>9} {:>9} {:>7}",
        "config", "round", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, (name, g)) in configs.iter().enumerate() {
            let (host0, coll0) = (cpu_us(g.child.id()), cpu_us(collector.child.id()));
            let mut f = hey(&g.url("/alpha"), seconds, concurrency);
            let n = f.responses.max(1) as f64;
            f.host_cpu_us = (cpu_us(g.child.id()) - host0) / n;
            f.peer_cpu_us = (cpu_us(collector.child.id()) - coll0) / n;
            println!(
                "{name:<14} {round:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>12.1} {:>14.1}",
                f.rps, f.p50_ms, f.p99_ms, f.errors, f.host_cpu_us, f.peer_cpu_us
            );
            results[i].push(f);
        }
    }
    let med = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
    println!("\nmedians:");
    for (i, (name, g)) in configs.iter().enumerate() {
        println!(
            "{name:<14} {:>10.0} req/s  p50 {:.2} ms  p99 {:.2} ms  host CPU {:.1} us/req  peak RSS {} KiB",
            med(i, |f| f.rps),
            med(i, |f| f.p50_ms),
            med(i, |f| f.p99_ms),
            med(i, |f| f.host_cpu_us),
            peak_rss_kib(g.child.id())
        );
    }
    let rps = med(0, |f| f.rps) / med(1, |f| f.rps);
    let cpu = med(0, |f| f.host_cpu_us) / med(1, |f| f.host_cpu_us);
    println!(
        "\ntelemetry on / off: req/s {rps:.3} (cost {:+.1} %), p99 {:.3}, host CPU per request {cpu:.3} (cost {:+.1} %)",
        (1.0 - rps) * 100.0,
        med(0, |f| f.p99_ms) / med(1, |f| f.p99_ms),
        (cpu - 1.0) * 100.0
    );
    println!(
        "collector (same machine, same cores) CPU per request while exporting: {:.1} us",
        med(0, |f| f.peer_cpu_us)
    );
    let dropped = rt.block_on(async {
        let text = get(&on.admin_url("/metrics")).await.text();
        text.lines()
            .filter(|l| l.starts_with("gantry_telemetry_dropped_total"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    println!("telemetry dropped (on): {dropped:?}");
    drop(collector);
}
