//! The GPIO capability with the simulated board, driven through the robot
//! component over HTTP and checked through the admin listener's view.

mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::Value;

fn root_manifest() -> std::path::PathBuf {
    wasm("robot");
    workspace().join("spin.toml")
}

async fn gpio_view(g: &Gantry) -> Value {
    get(&g.admin_url("/gpio")).await.json()
}

/// Every change of `label` after sequence number `after`: (level, duty).
fn changes(view: &Value, label: &str, after: u64) -> Vec<(String, f64)> {
    view["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["label"] == label && e["seq"].as_u64().unwrap_or(0) > after)
        .map(|e| {
            (
                e["level"].as_str().unwrap_or("").to_string(),
                e["duty"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

fn last_seq(view: &Value) -> u64 {
    view["events"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

/// The pin with `label` as the board has it now.
fn pin<'a>(view: &'a Value, label: &str) -> &'a Value {
    view["pins"]
        .as_array()
        .expect("pins")
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no pin {label} in {view}"))
}

const MOTORS: [&str; 4] = [
    "left-motor-forward",
    "left-motor-backward",
    "right-motor-forward",
    "right-motor-backward",
];

/// The first motor or eye of `robot` that is not off, and how.
fn not_safe(view: &Value, robot: &str) -> Option<String> {
    for m in MOTORS {
        let p = pin(view, &format!("{robot}-{m}"));
        if p["duty"] != 0.0 {
            return Some(format!("{robot}-{m} still driven: {p}"));
        }
        if p["level"] != "low" {
            return Some(format!("{robot}-{m} not low: {p}"));
        }
    }
    for e in ["left-eye", "right-eye"] {
        let p = pin(view, &format!("{robot}-{e}"));
        if p["level"] != "low" {
            return Some(format!("{robot}-{e} not low: {p}"));
        }
    }
    None
}

fn assert_all_safe(view: &Value, robot: &str) {
    if let Some(why) = not_safe(view, robot) {
        panic!("{why}");
    }
}

async fn post(url: &str, body: &str) -> Reply {
    send(
        "POST",
        url,
        &[("content-type", "application/json")],
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn blinking_and_driving_set_exactly_the_expected_pins() {
    let g = Gantry::start(&root_manifest(), &["--gpio", "sim"]);
    let view = gpio_view(&g).await;
    assert_eq!(view["backend"], "sim");
    // Every granted pin is set up at its safe level.
    assert_eq!(view["pins"].as_array().expect("pins").len(), 12);
    assert_eq!(pin(&view, "linus-left-eye")["pin"], 17);
    assert_all_safe(&view, "linus");
    assert_all_safe(&view, "torvald");

    // Blink three times: each eye goes high, low, high, low, high, low.
    let mark = last_seq(&view);
    let r = send(
        "POST",
        &g.url("/robot/linus/eyes/blink?times=3"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let view = gpio_view(&g).await;
    for eye in ["linus-left-eye", "linus-right-eye"] {
        let levels: Vec<String> = changes(&view, eye, mark).into_iter().map(|c| c.0).collect();
        assert_eq!(
            levels,
            ["high", "low", "high", "low", "high", "low"],
            "{eye}"
        );
    }
    // torvald was not touched.
    assert!(changes(&view, "torvald-left-eye", mark).is_empty());

    // Drive forward at 0.6: both forward motors at duty 0.6, then stopped.
    let mark = last_seq(&view);
    let r = post(
        &g.url("/robot/linus/drive"),
        r#"{"direction":"forward","speed":0.6,"duration_ms":200}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let view = gpio_view(&g).await;
    for m in ["linus-left-motor-forward", "linus-right-motor-forward"] {
        assert_eq!(
            changes(&view, m, mark),
            [("high".to_string(), 0.6), ("low".to_string(), 0.0)],
            "{m}"
        );
    }
    for m in ["linus-left-motor-backward", "linus-right-motor-backward"] {
        assert!(changes(&view, m, mark).is_empty(), "{m} moved");
    }

    // Turning left spins in place: left side backward, right side forward.
    let mark = last_seq(&view);
    let r = post(
        &g.url("/robot/torvald/drive"),
        r#"{"direction":"left","speed":0.25,"duration_ms":100}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let view = gpio_view(&g).await;
    let first = |l: &str| changes(&view, l, mark).first().map(|c| c.1);
    assert_eq!(first("torvald-left-motor-backward"), Some(0.25));
    assert_eq!(first("torvald-right-motor-forward"), Some(0.25));
    assert_eq!(first("torvald-left-motor-forward"), None);
    assert_all_safe(&view, "torvald");

    // While a drive runs, the robot's state (and the board) show it.
    let url = g.url("/robot/linus/drive");
    let driving = tokio::spawn(async move {
        post(
            &url,
            r#"{"direction":"back","speed":0.9,"duration_ms":800}"#,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = get(&g.url("/robot/linus")).await.json();
    assert_eq!(state["motors"]["left_backward"], 0.9, "{state}");
    assert_eq!(state["motors"]["right_backward"], 0.9, "{state}");
    assert_eq!(
        pin(&gpio_view(&g).await, "linus-left-motor-backward")["duty"],
        0.9
    );
    assert_eq!(driving.await.expect("drive").status, 200);

    // The operations are counted by component, label and operation.
    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(
            "gantry_gpio_operations_total{component=\"robot\",label=\"linus-left-eye\",operation=\"set\"} 6"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_400_with_a_message() {
    let g = Gantry::start(&root_manifest(), &[]);
    let before = gpio_view(&g).await;
    for (path, body, needle) in [
        ("/robot/bob/stop", "", "unknown robot"),
        (
            "/robot/linus/drive",
            r#"{"direction":"up","speed":0.5}"#,
            "unknown direction",
        ),
        (
            "/robot/linus/drive",
            r#"{"direction":"forward","speed":1.5}"#,
            "speed must be from 0 to 1",
        ),
        (
            "/robot/linus/drive",
            r#"{"direction":"forward","speed":-0.1}"#,
            "speed must be from 0 to 1",
        ),
        ("/robot/linus/drive", "not json", "expected"),
        ("/robot/linus/eyes/blink?times=0", "", "times must be"),
    ] {
        let r = post(&g.url(path), body).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(needle)),
            "{}",
            r.text()
        );
    }
    // Nothing moved.
    assert_eq!(last_seq(&gpio_view(&g).await), last_seq(&before));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pin_outside_the_grant_is_not_allowed_and_changes_nothing() {
    // The robot component granted linus's pins only.
    let (_dir, manifest) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "one-robot"
[[trigger.http]]
route = "/robot/..."
component = "robot"
[component.robot]
source = "{wasm}/robot.wasm"
[component.robot.tool.gantry.gpio]
linus-left-eye = { pin = 17, mode = "output" }
linus-right-eye = { pin = 27, mode = "output" }
linus-left-motor-forward = { pin = 5, mode = "pwm" }
linus-left-motor-backward = { pin = 6, mode = "pwm" }
linus-right-motor-forward = { pin = 13, mode = "pwm" }
linus-right-motor-backward = { pin = 19, mode = "pwm" }
"#,
    );
    wasm("robot");
    let g = Gantry::start(&manifest, &[]);
    let before = gpio_view(&g).await;
    let r = send(
        "POST",
        &g.url("/robot/torvald/eyes/blink?times=1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("torvald-left-eye is not granted"),
        "{}",
        r.text()
    );
    let after = gpio_view(&g).await;
    assert_eq!(last_seq(&after), last_seq(&before), "the board changed");
    assert_eq!(after["pins"], before["pins"]);
    let metrics = get(&g.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("gantry_gpio_denied_total{component=\"robot\",operation=\"set\"} 1"),
        "{metrics}"
    );
    // Its own pins still work.
    let r = send(
        "POST",
        &g.url("/robot/linus/eyes/blink?times=1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A component with no grant at all: every call is refused.
    let (_dir2, bare) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "no-pins"
[[trigger.http]]
route = "/robot/..."
component = "robot"
[component.robot]
source = "{wasm}/robot.wasm"
"#,
    );
    let g = Gantry::start(&bare, &[]);
    let r = get(&g.url("/robot/linus")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        gpio_view(&g).await["pins"].as_array().map(Vec::len),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_mid_drive_leaves_every_motor_at_its_safe_level() {
    let g = Gantry::start(&root_manifest(), &[]);
    let mark = last_seq(&gpio_view(&g).await);
    let r = post(
        &g.url("/robot/linus/drive?fault=panic"),
        r#"{"direction":"forward","speed":0.8,"duration_ms":600}"#,
    )
    .await;
    assert_eq!(r.status, 500);
    let view = gpio_view(&g).await;
    // It really was driving when it trapped...
    assert_eq!(
        changes(&view, "linus-left-motor-forward", mark),
        [("high".to_string(), 0.8), ("low".to_string(), 0.0)]
    );
    // ...and now nothing is.
    assert_all_safe(&view, "linus");
    assert!(
        g.stderr().contains("fault injected mid-drive"),
        "{}",
        g.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_or_a_vanished_client_mid_drive_stops_the_motors() {
    // The drive outlasts the component's timeout: the guest is interrupted.
    let (_dir, manifest) =
        write_manifest(&robot_manifest("").replace("timeout_ms = 15000", "timeout_ms = 400"));
    wasm("robot");
    let g = Gantry::start(&manifest, &[]);
    let t = Instant::now();
    let r = post(
        &g.url("/robot/linus/drive"),
        r#"{"direction":"right","speed":0.5,"duration_ms":5000}"#,
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3));
    wait_all_safe(&g, "linus").await;

    // A client that goes away mid-drive takes its instance, and the drive, with it.
    let g = Gantry::start(&root_manifest(), &[]);
    let url = g.url("/robot/torvald/drive");
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        post(
            &url,
            r#"{"direction":"forward","speed":0.7,"duration_ms":5000}"#,
        ),
    )
    .await;
    assert!(gone.is_err(), "the drive should still have been running");
    wait_all_safe(&g, "torvald").await;
}

/// Waits (up to 3 s) until every motor and eye of `robot` is off: the pins
/// return to safe one after another.
async fn wait_all_safe(g: &Gantry, robot: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let view = gpio_view(g).await;
        let Some(why) = not_safe(&view, robot) else {
            return;
        };
        assert!(Instant::now() < deadline, "{why}: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_instance_drives_a_pin_at_a_time() {
    let g = Gantry::start(&root_manifest(), &[]);
    let url = g.url("/robot/linus/drive");
    let first = tokio::spawn(async move {
        post(
            &url,
            r#"{"direction":"forward","speed":0.5,"duration_ms":800}"#,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = post(
        &g.url("/robot/linus/drive"),
        r#"{"direction":"back","speed":0.5,"duration_ms":100}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("busy"), "{}", r.text());
    assert_eq!(first.await.expect("first").status, 200);
    // Released when the first request ended.
    let r = post(
        &g.url("/robot/linus/drive"),
        r#"{"direction":"back","speed":0.5,"duration_ms":50}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_stream_as_server_sent_events() {
    use http_body_util::BodyExt;
    let g = Gantry::start(&root_manifest(), &[]);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(g.admin_url("/gpio/events").parse().expect("url"))
        .await
        .expect("events");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let r = send(
        "POST",
        &g.url("/robot/torvald/eyes/blink?times=1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while text.matches("event: change").count() < 4 {
        assert!(Instant::now() < deadline, "stream so far:\n{text}");
        let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(1), body.frame()).await
        else {
            continue;
        };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(text.starts_with("event: pins\ndata: ["), "{text}");
    let changes: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: change\ndata: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let left: Vec<&str> = changes
        .iter()
        .filter(|c| c["label"] == "torvald-left-eye")
        .filter_map(|c| c["level"].as_str())
        .collect();
    assert_eq!(left, ["high", "low"]);
}

#[test]
fn check_refuses_bad_grants_naming_file_line_and_field() {
    wasm("robot");
    let cases = [
        (
            "one output pin granted to two components",
            r#"
spin_manifest_version = 2
[application]
name = "clash"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/b/..."
component = "b"
[component.a]
source = "{wasm}/robot.wasm"
[component.a.tool.gantry.gpio]
left-eye = { pin = 17, mode = "output" }
[component.b]
source = "{wasm}/robot.wasm"
[component.b.tool.gantry.gpio]
lamp = { pin = 17, mode = "output" }
"#,
            vec![
                "spin.toml:18:",
                "component.b.tool.gantry.gpio.lamp",
                "pin 17 is already granted to component `a`",
            ],
        ),
        (
            "not a BCM pin",
            r#"
spin_manifest_version = 2
[application]
name = "bad-pin"
[[trigger.http]]
route = "/a/..."
component = "a"
[component.a]
source = "{wasm}/robot.wasm"
[component.a.tool.gantry.gpio]
eye = { pin = 40, mode = "output" }
"#,
            vec![
                "spin.toml:11:",
                "component.a.tool.gantry.gpio.eye.pin",
                "BCM number from 0 to 27",
            ],
        ),
        (
            "unknown mode",
            r#"
spin_manifest_version = 2
[application]
name = "bad-mode"
[[trigger.http]]
route = "/a/..."
component = "a"
[component.a]
source = "{wasm}/robot.wasm"
[component.a.tool.gantry.gpio]
eye = { pin = 4, mode = "blink" }
"#,
            vec!["spin.toml:11:", "gpio.eye.mode", "unknown mode \"blink\""],
        ),
        (
            "one pin under two labels",
            r#"
spin_manifest_version = 2
[application]
name = "twice"
[[trigger.http]]
route = "/a/..."
component = "a"
[component.a]
source = "{wasm}/robot.wasm"
[component.a.tool.gantry.gpio]
eye = { pin = 4, mode = "output" }
lamp = { pin = 4, mode = "output" }
"#,
            vec![
                "spin.toml:12:",
                "gpio.lamp.pin",
                "already granted to this component as `eye`",
            ],
        ),
    ];
    for (name, text, needles) in cases {
        let (_dir, manifest) = write_manifest(text);
        let out = std::process::Command::new(gantry_bin())
            .args(["check", "-f"])
            .arg(&manifest)
            .output()
            .expect("gantry check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: check passed");
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in:\n{err}");
        }
    }
}

#[test]
fn rppal_off_a_pi_fails_at_start_with_a_clear_message() {
    wasm("robot");
    let out = std::process::Command::new(gantry_bin())
        .args([
            "up",
            "--gpio",
            "rppal",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "-f",
        ])
        .arg(workspace().join("spin.toml"))
        .output()
        .expect("gantry up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gpio rppal"), "{err}");
    assert!(err.contains("use --gpio sim"), "{err}");
    // Nothing was served.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Serving"));
}
