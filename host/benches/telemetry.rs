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

use common::collector::Collector;
use common::*;
use std::process::Command;

struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    responses: u64,
    errors: u64,
    /// CPU the host spent per response, and the collector (on runs only).
    host_cpu_us: f64,
    collector_cpu_us: f64,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `hey` against `url` and reads its summary.
fn hey(url: &str, seconds: u64, concurrency: u64) -> Figures {
    let out = Command::new("hey")
        .args([
            "-z",
            &format!("{seconds}s"),
            "-c",
            &concurrency.to_string(),
            url,
        ])
        .output()
        .expect("hey (apt-get install hey; scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    // Status lines look like "  [200]	12345 responses".
    let by_status: Vec<(bool, u64)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('['))
        .filter_map(|l| {
            let (code, rest) = l.split_once(']')?;
            Some((code == "200", rest.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    Figures {
        rps: number_after("Requests/sec:"),
        p50_ms: number_after("50% in") * 1000.0,
        p99_ms: number_after("99% in") * 1000.0,
        responses: by_status.iter().map(|(_, n)| n).sum(),
        errors: by_status.iter().filter(|(ok, _)| !ok).map(|(_, n)| n).sum(),
        host_cpu_us: 0.0,
        collector_cpu_us: 0.0,
    }
}

/// CPU time (user + system) a process has used, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz * 1e6
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

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
            f.collector_cpu_us = (cpu_us(collector.child.id()) - coll0) / n;
            println!(
                "{name:<14} {round:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>12.1} {:>14.1}",
                f.rps, f.p50_ms, f.p99_ms, f.errors, f.host_cpu_us, f.collector_cpu_us
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
        med(0, |f| f.collector_cpu_us)
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
