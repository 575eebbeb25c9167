//! What state costs a request: `/counter` (a key-value increment and a
//! SQLite insert and query per request, spin-sdk 7) against `/alpha` (no
//! state) on one host, driven by `hey` at concurrency 50 (`GANTRY_BENCH_
//! CONCURRENCY`), interleaved round by round. Prints figures and the ratio;
//! asserts nothing but that every answer was a 200.
//!
//! `cargo bench -p gantry --bench stores`

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::*;
use support::*;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = env_num("GANTRY_BENCH_SECONDS", 5);
    let rounds = env_num("GANTRY_BENCH_ROUNDS", 3);
    let c = env_num("GANTRY_BENCH_CONCURRENCY", 50);
    wasm("counter");
    wasm("alpha");
    let (_dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "stores"
[[trigger.http]]
route = "/counter"
component = "counter"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.counter]
source = "{wasm}/counter.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
[component.alpha]
source = "{wasm}/alpha.wasm"
"#,
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let g = Gantry::start_env(&manifest, &[], &[("OTEL_SDK_DISABLED", "true")]);
    for path in ["/counter", "/alpha"] {
        let r = rt.block_on(get(&g.url(path)));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    println!(
        "state per request: /counter (key-value + SQLite) against /alpha, c={c}, {rounds} rounds of {seconds}s, interleaved"
    );
    let (mut counter, mut alpha) = (Vec::new(), Vec::new());
    hey(&g.url("/counter"), 1, c);
    hey(&g.url("/alpha"), 1, c);
    for round in 0..rounds {
        let order: [(&str, &mut Vec<f64>); 2] = if round % 2 == 0 {
            [("/counter", &mut counter), ("/alpha", &mut alpha)]
        } else {
            [("/alpha", &mut alpha), ("/counter", &mut counter)]
        };
        for (path, into) in order {
            let f = hey(&g.url(path), seconds, c);
            assert_eq!(f.errors, 0, "{path}: transport errors");
            println!(
                "  {:<9} round {round}: {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} responses)",
                path, f.rps, f.p50_ms, f.p99_ms, f.responses
            );
            into.push(f.rps);
        }
    }
    let (counter, alpha) = (median(counter), median(alpha));
    println!(
        "  medians: /counter {counter:.0} req/s, /alpha {alpha:.0} req/s -> /counter / /alpha {:.3}x",
        counter / alpha
    );
    let count = rt.block_on(get(&g.url("/counter"))).json();
    println!("  the counter reached {}", count["count"]);
}
