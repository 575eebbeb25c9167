//! Start-up paths: `--build`, OTLP endpoints refused before serving, and the fallback from the pooling allocator when
//! the address space is too small (as on 39-bit Raspberry Pi kernels).

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `gantry up` on `manifest` (loopback, any port) with `extra` flags and
/// `env` set, OTEL_SDK_DISABLED removed, and waits for it to exit: for start-ups
/// that must fail.
fn up_until_it_exits(manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(gantry_bin());
    cmd.arg("up")
        .args(extra)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "-f",
        ])
        .arg(manifest)
        .env_remove("OTEL_SDK_DISABLED")
        .envs(env.iter().copied());
    cmd.output().expect("run gantry")
}

#[tokio::test(flavor = "multi_thread")]
async fn build_runs_each_components_build_command_in_its_workdir() {
    let alpha = wasm("alpha");
    let (dir, manifest) = write_manifest(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "built"
[[trigger.http]]
route = "/built"
component = "built"
[component.built]
source = "out/built.wasm"
[component.built.build]
command = "mkdir -p ../out && cp '{}' ../out/built.wasm && echo built > ../out/marker"
workdir = "src"
"#,
        alpha.display()
    ));
    std::fs::create_dir(dir.path().join("src")).expect("src dir");
    assert!(!dir.path().join("out/built.wasm").exists());
    let g = Gantry::start(&manifest, &["--build"]);
    assert!(
        dir.path().join("out/marker").exists(),
        "build command did not run"
    );
    let r = get(&g.url("/built")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_stops_start_up_with_the_component_named() {
    let (_dir, manifest) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "unbuildable"
[[trigger.http]]
route = "/x"
component = "x"
[component.x]
source = "x.wasm"
[component.x.build]
command = "exit 3"
"#,
    );
    let out = up_until_it_exits(&manifest, &["--build"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("build of component x failed"), "{err}");
}

#[test]
fn an_otlp_endpoint_that_is_not_a_url_stops_start_up_with_the_variable_named() {
    let alpha = wasm("alpha");
    let (_dir, manifest) = write_manifest(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "endpoints"
[[trigger.http]]
route = "/x"
component = "x"
[component.x]
source = "{}"
"#,
        alpha.display()
    ));
    // The scheme left out, the usual typo; then one per signal.
    for (var, value, signal) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "traces"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url", "traces"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "ftp://collector",
            "metrics",
        ),
    ] {
        let out = up_until_it_exits(&manifest, &[], &[(var, value)]);
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("Error: {var}: the OTLP {signal} endpoint")),
            "{var}={value}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_address_space_falls_back_to_on_demand_allocation() {
    for f in ["hello", "alpha", "beta", "broken"] {
        wasm(f);
    }
    // 24 GiB of address space: too little for a pool of 128 instances with
    // 128 MiB memories, plenty for on-demand instances.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 25165824 && exec \"$0\" \"$@\"")
        .arg(gantry_bin());
    let g = Gantry::start_with::<&str, &str>(cmd, &workspace().join("spin.toml"), &[], &[]);
    for _ in 0..3 {
        let r = get(&g.url("/alpha")).await;
        assert_eq!(r.status, 200);
    }
    let r = get(&g.url("/broken")).await;
    assert_eq!(r.status, 500);
    let log = g.stderr();
    assert!(log.contains("using on-demand allocation"), "{log}");
    assert!(log.contains("pooling=false"), "{log}");
    assert_eq!(
        log.matches("on-demand allocation").count(),
        1,
        "one log line: {log}"
    );

    // Without the limit the pool is used.
    let g = Gantry::start(&workspace().join("spin.toml"), &[]);
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert!(g.stderr().contains("pooling=true"), "{}", g.stderr());
}

/// Loading says how it goes: without a terminal, one line per component
/// with its name, size and the time it took.
#[tokio::test(flavor = "multi_thread")]
async fn each_component_loaded_is_a_log_line_with_its_size_and_time() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "progress"
[[trigger.http]]
route = "/a"
component = "first"
[[trigger.http]]
route = "/b"
component = "second"
[component.first]
source = "{wasm}/alpha.wasm"
[component.second]
source = "{wasm}/alpha.wasm"
"#,
    );
    let g = Gantry::start(&manifest, &["--no-cache"]);
    let log = g.stderr();
    for (id, n) in [("first", 1), ("second", 2)] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("component {n}/2 ready")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{log}"));
        assert!(line.contains(&format!("component=\"{id}\"")), "{line}");
        assert!(line.contains("size="), "{line}");
        assert!(line.contains("elapsed="), "{line}");
    }
}
