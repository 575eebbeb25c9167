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
//!
//! Then, where valgrind is installed (`scripts/setup.sh` installs it), the
//! same two configurations serve `functions/plain` (a hello, as in the
//! compare benchmark; `alpha` does far more work per request) under callgrind, which counts the
//! instructions the whole process executes (every thread: the request path,
//! the export threads, the HTTP client's) for `GANTRY_BENCH_INSTRUCTIONS`
//! requests (default 2,048, rounded up to whole export batches of 512; one
//! at a time, after 512 of warm-up; 0 skips it). Unlike req/s on a shared machine, that count repeats to within a
//! fraction of a percent, so it shows what telemetry costs the host even
//! where the timings' noise is larger than the effect.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::collector::Collector;
use common::*;
use std::process::Command;
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
    drop(on);
    drop(off);

    let requests = env_num("GANTRY_BENCH_INSTRUCTIONS", 2048);
    if requests > 0 {
        let (_dir, plain) = write_manifest(&format!(
            "spin_manifest_version = 2\n[application]\nname = \"plain\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"plain\"\n\
             [component.plain]\nsource = \"{}\"\n",
            wasm("plain").display()
        ));
        count_instructions(&plain, &endpoint, requests);
    }
    drop(collector);
}

/// Instructions per request, telemetry on and off, each counted twice.
fn count_instructions(manifest: &std::path::Path, endpoint: &str, requests: u64) {
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        println!(
            "\ninstructions: valgrind is not installed (scripts/setup.sh installs it); skipped"
        );
        return;
    }
    // The periodic metric export runs once per interval whatever the load;
    // under callgrind, 50 times slower, it would be charged to far fewer
    // requests than in real time, so it is left at its default (60 s).
    // For the same reason the span queue's delay is long: under load every
    // export carries a full batch (512 spans), but at callgrind's pace a
    // short delay would post every few dozen spans. The warm-up and the
    // count are whole batches, so every post in the window is a full batch
    // and the last one leaves before the dump.
    let batch = BATCH.to_string();
    let on: &[(&str, &str)] = &[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch.as_str()),
    ];
    let requests = requests.div_ceil(BATCH).max(1) * BATCH;
    let off: &[(&str, &str)] = &[("OTEL_SDK_DISABLED", "true")];
    println!(
        "\ninstructions per request (callgrind; plain; {requests} requests one at a time after {BATCH} of warm-up; \
         the whole process, every thread), each configuration twice:"
    );
    let mut counts = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        for (i, (name, label, env)) in [("telemetry on ", "on", on), ("telemetry off", "off", off)]
            .into_iter()
            .enumerate()
        {
            match instructions_per_request(manifest, label, env, requests) {
                Ok(n) => {
                    println!("  {name} {n:>10.0}");
                    counts[i].push(n);
                }
                Err(e) => println!("  {name} not counted: {e}"),
            }
        }
    }
    if counts.iter().all(|c| !c.is_empty()) {
        let on = median(counts[0].clone());
        let off = median(counts[1].clone());
        println!(
            "  telemetry on / off: {:.3} (cost {:+.1} % of the host's instructions, {:+.0} per request)",
            on / off,
            (on / off - 1.0) * 100.0,
            on - off
        );
    }
}

/// The span export batch the instruction count is aligned to.
const BATCH: u64 = 512;

/// Runs gantry under callgrind, warms it up, zeroes the counters, sends
/// `requests` requests, waits for the export, dumps, and divides.
fn instructions_per_request(
    manifest: &std::path::Path,
    label: &str,
    env: &[(&str, &str)],
    requests: u64,
) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!(
            "--callgrind-out-file={}/cg.%p",
            dir.path().display()
        ))
        .arg(gantry_bin());
    let g = Gantry::start_with(cmd, manifest, &[], env);
    let pid = g.child.id().to_string();
    let url = g.url("/");
    let send = |n: u64| -> Result<(), String> {
        let out = Command::new("hey")
            .args(["-n", &n.to_string(), "-c", "1", &url])
            .output()
            .map_err(|e| format!("hey: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("[200]\t{n} responses")) {
            Ok(())
        } else {
            Err(format!("not every request answered 200:\n{text}"))
        }
    };
    let control = |what: &str| -> Result<(), String> {
        let st = Command::new("callgrind_control")
            .args([what, &pid])
            .output()
            .map_err(|e| format!("callgrind_control: {e}"))?;
        if st.status.success() {
            Ok(())
        } else {
            Err(format!("callgrind_control {what} failed"))
        }
    };
    send(BATCH)?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    control("-z")?;
    send(requests)?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    control("-d")?;
    // The dump is `cg.<pid>.1`; its `summary:` line is the total.
    let dump = std::fs::read_to_string(dir.path().join(format!("cg.{pid}.1")))
        .map_err(|e| format!("no callgrind dump: {e}"))?;
    // `GANTRY_BENCH_KEEP_DUMPS=<folder>` keeps each dump there, for
    // `callgrind_annotate` to say where the instructions went.
    if let Some(keep) = std::env::var_os("GANTRY_BENCH_KEEP_DUMPS") {
        let name = format!("cg.{label}.{pid}");
        let to = std::path::Path::new(&keep).join(name);
        if let Err(e) = std::fs::create_dir_all(&keep).and_then(|()| std::fs::write(&to, &dump)) {
            println!("  cannot keep {}: {e}", to.display());
        }
    }
    let total: f64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("the dump has no summary line")?;
    drop(g);
    Ok(total / requests as f64)
}
