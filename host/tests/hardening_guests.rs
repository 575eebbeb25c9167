//! A guest, a manifest or a component file costs only what it owns: guest
//! telemetry is bounded, guest times and counts cannot panic or wrap the host,
//! host resources are capped, a manifest reload leaves other components' pins
//! alone, a crafted `.wasm` is refused, and out-of-range values are errors.

mod common;
use common::raw::*;
use common::*;

use std::time::{Duration, Instant};

use serde_json::Value;

fn broken_app() -> (tempfile::TempDir, std::path::PathBuf) {
    write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "guests"

[[trigger.http]]
route = "/broken"
component = "broken"

[[trigger.http]]
route = "/alpha"
component = "alpha"

[component.broken]
source = "{wasm}/broken.wasm"

[component.alpha]
source = "{wasm}/alpha.wasm"
"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_cannot_grow_host_memory_or_panic_it() {
    wasm("broken");
    let (_dir, manifest) = broken_app();
    let mut g = Gantry::start(&manifest, &[]);
    let pid = g.child.id();
    // Warm up, so that the first instances' own growth is not counted.
    for _ in 0..3 {
        assert_eq!(get(&g.url("/broken?mode=spans&n=1000")).await.status, 200);
    }
    let before = rss_kib(pid);

    // Two million span starts that never end.
    let r = get(&g.url("/broken?mode=spans&n=2000000")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 32 << 10,
        "2M span starts grew the host by {grown} KiB"
    );
    let m = get(&g.admin_url("/metrics")).await.text();
    assert!(
        metric(&m, "gantry_telemetry_dropped_total{signal=\"guest_spans\"}") >= 1_999_000.0,
        "{m}"
    );

    // A span at the largest time a guest can give: no panic, the request
    // answers and the host goes on.
    let r = get(&g.url("/broken?mode=bad-time")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Bucket counts that would overflow: dropped and counted, never wrapped.
    let r = get(&g.url("/broken?mode=buckets")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = get(&g.admin_url("/metrics")).await.text();
    assert!(
        metric(
            &m,
            "gantry_telemetry_dropped_total{signal=\"guest_metrics\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("broken_overflow_count") && !l.ends_with(" 0")),
        "{m}"
    );

    // Log records past the per-request bound.
    let r = get(&g.url("/broken?mode=logs&n=3000")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = get(&g.admin_url("/metrics")).await.text();
    assert!(
        metric(&m, "gantry_telemetry_dropped_total{signal=\"guest_logs\"}") >= 1976.0,
        "{m}"
    );

    // Host resources until refused: the guest traps, the host stays small.
    let before = rss_kib(pid);
    let started = Instant::now();
    let r = get(&g.url("/broken?mode=handles")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 32 << 10, "resources grew the host by {grown} KiB");

    assert!(g.is_running(), "{}", g.stderr());
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert!(!g.stderr().contains("panicked"), "{}", g.stderr());
}

fn duty(view: &Value, label: &str) -> f64 {
    view["pins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["label"] == label))
        .and_then(|p| p["duty"].as_f64())
        .unwrap_or(-1.0)
}

async fn reloads_seen(g: &Gantry, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.stderr().matches("manifest reloaded").count() < n {
        assert!(Instant::now() < deadline, "no reload:\n{}", g.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_reload_keeps_the_pins_of_unchanged_grants() {
    wasm("robot");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("spin.toml");
    std::fs::write(&manifest, robot_manifest("")).expect("write");
    let g = Gantry::start(&manifest, &["--watch", "--watch-interval", "100ms"]);
    let drive = |g: &Gantry| {
        let url = g.url("/robot/linus/drive");
        tokio::spawn(async move {
            send(
                "POST",
                &url,
                &[("content-type", "application/json")],
                br#"{"direction":"forward","speed":0.8,"duration_ms":2500}"#.to_vec(),
            )
            .await
            .status
        })
    };
    let view = || async { get(&g.admin_url("/gpio")).await.json() };

    // An edit that changes nothing of the robot's grants, mid-drive.
    let driving = drive(&g);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(duty(&view().await, "linus-left-motor-forward"), 0.8);
    std::fs::write(
        &manifest,
        robot_manifest("").replace(
            "name = \"robot\"",
            "name = \"robot\"\ndescription = \"edited\"",
        ),
    )
    .expect("edit");
    reloads_seen(&g, 1).await;
    assert_eq!(
        duty(&view().await, "linus-left-motor-forward"),
        0.8,
        "an unrelated edit stopped the motors"
    );
    assert_eq!(driving.await.expect("drive"), 200);

    // A change of the robot's own grant, mid-drive: its pins go back to
    // safe, and the change is an event.
    let driving = drive(&g);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = view().await;
    assert_eq!(duty(&before, "linus-left-motor-forward"), 0.8);
    let seq = before["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0);
    std::fs::write(&manifest, robot_manifest(", frequency_hz = 200")).expect("edit");
    reloads_seen(&g, 2).await;
    let after = view().await;
    assert_eq!(duty(&after, "linus-left-motor-forward"), 0.0, "{after}");
    let events: Vec<&Value> = after["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["label"] == "linus-left-motor-forward" && e["seq"].as_u64().unwrap_or(0) > seq
        })
        .collect();
    assert!(
        events.iter().any(|e| e["duty"] == 0.0),
        "no event for the pin set back to safe: {after}"
    );
    let _ = driving.await;
}

/// A component of `depth` components nested one in the other.
fn nested_component(depth: usize) -> Vec<u8> {
    const HEADER: [u8; 8] = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
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
    // Sizes from the innermost out, then the bytes from the outermost in.
    let mut sizes = vec![HEADER.len()];
    let mut scratch = Vec::new();
    for _ in 0..depth {
        let inner = sizes[sizes.len() - 1];
        scratch.clear();
        leb(inner, &mut scratch);
        sizes.push(HEADER.len() + 1 + scratch.len() + inner);
    }
    let mut out = Vec::with_capacity(sizes[depth]);
    for level in (1..=depth).rev() {
        out.extend_from_slice(&HEADER);
        out.push(4); // a nested component section
        leb(sizes[level - 1], &mut out);
    }
    out.extend_from_slice(&HEADER);
    out
}

#[test]
fn a_crafted_nested_component_is_refused_not_a_crash() {
    let (dir, manifest) = write_manifest(
        r#"spin_manifest_version = 2
[application]
name = "nested"

[[trigger.http]]
route = "/..."
component = "deep"

[component.deep]
source = "deep.wasm"
"#,
    );
    std::fs::write(dir.path().join("deep.wasm"), nested_component(1_000_000)).expect("write");
    let m = manifest.to_str().expect("path");
    for args in [
        vec![
            "up",
            "-f",
            m,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-cache",
        ],
        vec!["check", "-f", m, "--no-cache"],
    ] {
        let (code, err) = gantry_fails::<&str, &str>(&args, &[]);
        assert_eq!(code, Some(1), "{args:?} ended by a signal or oddly:\n{err}");
        assert!(err.contains("deep.wasm"), "{err}");
    }
}

#[test]
fn out_of_range_values_are_refused_with_clear_errors() {
    wasm("alpha");
    let (_dir, manifest) = broken_app();
    let m = manifest.to_str().expect("path");
    let up = |extra: &[&str]| {
        let mut args = vec![
            "up",
            "-f",
            m,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        gantry_fails::<&str, &str>(&args, &[])
    };
    for (flags, says) in [
        (
            vec!["--request-timeout", "18446744073709551615s"],
            "at most 24h",
        ),
        (
            vec!["--request-timeout", "307445734561825861m"],
            "at most 24h",
        ),
        (vec!["--shutdown-timeout", "25h"], "at most 24h"),
        (vec!["--pool-size", "0"], "0 is not in 1..=100000"),
        (vec!["--max-instance-memory", "0"], "64KiB to 4GiB"),
        (vec!["--max-instance-memory", "8GiB"], "64KiB to 4GiB"),
        (vec!["--max-connections", "0"], "0 is not in 1..=1000000"),
    ] {
        let (code, err) = up(&flags);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }

    for (value, says) in [
        ("timeout_ms = 0", "timeout_ms = 0 is out of range"),
        (
            "timeout_ms = 9223372036854775807",
            "timeout_ms = 9223372036854775807 is out of range",
        ),
        (
            "max_concurrency = 0",
            "max_concurrency = 0 would refuse every request",
        ),
        (
            "max_concurrency = 5000",
            "max_concurrency = 5000 is more than the whole pool",
        ),
    ] {
        let (_d, bad) = write_manifest(&format!(
            r#"spin_manifest_version = 2
[application]
name = "range"

[[trigger.http]]
route = "/alpha"
component = "alpha"

[component.alpha]
source = "{{wasm}}/alpha.wasm"
[component.alpha.tool.gantry]
{value}
"#
        ));
        let b = bad.to_str().expect("path");
        let (code, err) = gantry_fails::<&str, &str>(&["check", "-f", b, "--no-cache"], &[]);
        assert_eq!(code, Some(1), "{value}: {err}");
        assert!(err.contains(says), "{value}: {err}");
        if !value.starts_with("max_concurrency = 5000") {
            assert!(
                err.contains("spin.toml:12:")
                    && err.contains(&format!(
                        "component.alpha.tool.gantry.{}",
                        value.split(' ').next().unwrap_or("")
                    )),
                "{value}: the error names line and field: {err}"
            );
        }
    }
}

#[test]
fn check_names_what_a_path_is_and_where_a_manifest_is_not_utf8() {
    wasm("alpha");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::fs::create_dir(dir.path().join("folder.wasm")).expect("dir");
    for (source, says) in [
        (dir.path().join("folder.wasm"), "is a directory"),
        (fifo.clone(), "is not a regular file"),
        (
            std::path::PathBuf::from("/dev/zero"),
            "is not a regular file",
        ),
        (dir.path().join("missing.wasm"), "does not exist"),
    ] {
        let manifest = dir.path().join("spin.toml");
        std::fs::write(
            &manifest,
            format!(
                "spin_manifest_version = 2\n[application]\nname = \"paths\"\n\n[[trigger.http]]\nroute = \"/a\"\ncomponent = \"a\"\n\n[component.a]\nsource = \"{}\"\n",
                source.display()
            ),
        )
        .expect("write");
        let m = manifest.to_str().expect("path");
        let (code, err) = gantry_fails::<&str, &str>(&["check", "-f", m], &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(says)
                && err.contains("spin.toml:10:")
                && err.contains("component.a.source"),
            "{source:?}: {err}"
        );
    }

    let manifest = dir.path().join("spin.toml");
    let mut bytes = b"spin_manifest_version = 2\n[application]\nname = \"caf".to_vec();
    bytes.extend([0xe9, b'"', b'\n']);
    std::fs::write(&manifest, bytes).expect("write");
    let m = manifest.to_str().expect("path");
    let (code, err) = gantry_fails::<&str, &str>(&["check", "-f", m], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("spin.toml:3:12") && err.contains("not UTF-8"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_component_upload_at_a_time() {
    use tokio::io::AsyncWriteExt;
    wasm("alpha");
    let (_dir, manifest) = broken_app();
    let g = Gantry::start(&manifest, &["--admin-token", "s3cret"]);
    // The first upload announces a large body and sends it slowly.
    let mut first = connect_and_send(
        g.admin,
        b"PUT /components/alpha HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1000000\r\n\r\n\0asm",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = send(
        "PUT",
        &g.admin_url("/components/alpha"),
        &[("authorization", "Bearer s3cret")],
        std::fs::read(wasm("alpha")).expect("alpha"),
    )
    .await;
    assert_eq!(second.status, 429, "{}", second.text());
    let _ = first.shutdown().await;
    drop(first);
    // Once the first is gone, uploads go through again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = send(
            "PUT",
            &g.admin_url("/components/alpha"),
            &[("authorization", "Bearer s3cret")],
            std::fs::read(wasm("alpha")).expect("alpha"),
        )
        .await;
        if again.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} {}",
            again.status,
            again.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
