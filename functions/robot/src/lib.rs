//! `robot`: the dual robot, "linus" and "torvald": two LED eyes and two
//! motors each, driven through the pins the manifest grants (`gantry:gpio`),
//! with a web page to drive them.
//!
//! - `GET  /robot`: the page.
//! - `GET  /robot/{name}`: eye levels and motor duties, as JSON.
//! - `POST /robot/{name}/eyes/blink?times=N`: blink both eyes N times (1..=20).
//! - `POST /robot/{name}/drive` with `{"direction", "speed", "duration_ms"}`:
//!   drive for a while (direction forward, back, left, right or stop; speed
//!   0..=1; at most 10 s), then stop.
//! - `POST /robot/{name}/stop`: motors off.
//!
//! Each action is a span and counts in `robot_actions`. Motors only run while
//! a request runs: when it ends, however it ends, the host returns every pin
//! it drove to its safe level. `?fault=panic` on a drive panics mid-drive to
//! show exactly that.

use serde::Deserialize;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use spin_sdk::http_service;
use std::time::Duration;

mod gpio {
    spin_sdk::wit_bindgen::generate!({
        path: "../../wit",
        world: "gantry:gpio/imports@0.1.0",
        runtime_path: "spin_sdk::wit_bindgen::rt",
        generate_all,
    });
    pub use self::gantry::gpio::{digital, pwm, types};
}

use gpio::types::{Error as GpioError, Level};

const ROBOTS: [&str; 2] = ["linus", "torvald"];
const PAGE: &str = include_str!("page.html");
const BLINK_HALF_PERIOD: Duration = Duration::from_millis(150);
const MAX_DRIVE_MS: u64 = 10_000;

type Reply = (StatusCode, HeaderMap, String);

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    (status, headers, body)
}

fn json(status: StatusCode, value: serde_json::Value) -> Reply {
    reply(status, "application/json", format!("{value}\n"))
}

fn bad_request(message: impl Into<String>) -> Reply {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": message.into() }),
    )
}

/// A GPIO failure as the HTTP status a caller can act on.
fn gpio_failure(robot: &str, label: &str, e: GpioError) -> Reply {
    let (status, message) = match e {
        GpioError::NotAllowed => (
            StatusCode::FORBIDDEN,
            format!("pin {label} is not granted to this component"),
        ),
        GpioError::Busy => (
            StatusCode::CONFLICT,
            format!("{robot} is busy with another request"),
        ),
        GpioError::Unsupported => (
            StatusCode::BAD_REQUEST,
            format!("pin {label} cannot do that"),
        ),
        GpioError::Hardware(why) => (
            StatusCode::BAD_GATEWAY,
            format!("pin {label}: hardware error: {why}"),
        ),
    };
    json(status, serde_json::json!({ "error": message }))
}

struct Failure {
    label: String,
    error: GpioError,
}

type GpioResult<T> = Result<T, Failure>;

fn label(robot: &str, part: &str) -> String {
    format!("{robot}-{part}")
}

fn set_eyes(robot: &str, level: Level) -> GpioResult<()> {
    for side in ["left-eye", "right-eye"] {
        let l = label(robot, side);
        gpio::digital::set(&l, level).map_err(|error| Failure { label: l, error })?;
    }
    Ok(())
}

const MOTORS: [&str; 4] = [
    "left-motor-forward",
    "left-motor-backward",
    "right-motor-forward",
    "right-motor-backward",
];

/// Duties for (left forward, left backward, right forward, right backward).
fn duties(direction: &str, speed: f64) -> Option<[f64; 4]> {
    Some(match direction {
        "forward" => [speed, 0.0, speed, 0.0],
        "back" | "backward" => [0.0, speed, 0.0, speed],
        // Turning in place: one side forward, the other back.
        "left" => [0.0, speed, speed, 0.0],
        "right" => [speed, 0.0, 0.0, speed],
        "stop" => [0.0; 4],
        _ => return None,
    })
}

fn set_motors(robot: &str, duty: [f64; 4]) -> GpioResult<()> {
    // Off first, then on, so a motor never gets both directions at once.
    let order = duty
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == 0.0)
        .chain(duty.iter().enumerate().filter(|(_, d)| **d > 0.0));
    for (i, d) in order {
        let l = label(robot, MOTORS[i]);
        gpio::pwm::set_duty_cycle(&l, *d).map_err(|error| Failure { label: l, error })?;
    }
    Ok(())
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::High => "on",
        Level::Low => "off",
    }
}

fn state(robot: &str) -> GpioResult<serde_json::Value> {
    let eye = |side: &str| {
        let l = label(robot, side);
        gpio::digital::get(&l)
            .map(level_name)
            .map_err(|error| Failure { label: l, error })
    };
    let motor = |part: &str| {
        let l = label(robot, part);
        gpio::pwm::get_duty_cycle(&l).map_err(|error| Failure { label: l, error })
    };
    Ok(serde_json::json!({
        "name": robot,
        "eyes": { "left": eye("left-eye")?, "right": eye("right-eye")? },
        "motors": {
            "left_forward": motor("left-motor-forward")?,
            "left_backward": motor("left-motor-backward")?,
            "right_forward": motor("right-motor-forward")?,
            "right_backward": motor("right-motor-backward")?,
        },
    }))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn blink(robot: &str, times: u32) -> GpioResult<()> {
    let mut span = gantry_telemetry::Span::start("robot.blink");
    span.set_attribute("robot", robot);
    span.set_attribute("times", times);
    for _ in 0..times {
        set_eyes(robot, Level::High)?;
        spin_sdk::time::sleep(BLINK_HALF_PERIOD).await;
        set_eyes(robot, Level::Low)?;
        spin_sdk::time::sleep(BLINK_HALF_PERIOD).await;
    }
    span.end();
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    direction: String,
    #[serde(default = "default_speed")]
    speed: f64,
    #[serde(default = "default_duration")]
    duration_ms: u64,
}

fn default_speed() -> f64 {
    0.5
}

fn default_duration() -> u64 {
    1000
}

async fn drive(robot: &str, d: &Drive, fault: Option<&str>) -> GpioResult<()> {
    let Some(duty) = duties(&d.direction, d.speed) else {
        return Ok(());
    };
    let mut span = gantry_telemetry::Span::start("robot.drive");
    span.set_attribute("robot", robot);
    span.set_attribute("direction", &d.direction);
    span.set_attribute("speed", d.speed);
    span.set_attribute("duration_ms", d.duration_ms);
    set_motors(robot, duty)?;
    if d.direction != "stop" {
        spin_sdk::time::sleep(Duration::from_millis(d.duration_ms / 2)).await;
        if fault == Some("panic") {
            // Mid-drive, on purpose: the host must stop the motors.
            panic!("fault injected mid-drive: motors must stop");
        }
        spin_sdk::time::sleep(Duration::from_millis(d.duration_ms - d.duration_ms / 2)).await;
        set_motors(robot, [0.0; 4])?;
    }
    span.end();
    Ok(())
}

fn count(robot: &str, action: &str) {
    gantry_telemetry::metrics::counter_add(
        "robot_actions",
        1,
        &[("robot", robot), ("action", action)],
    );
}

#[http_service]
async fn handle(req: Request) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().map(str::to_string);
    let rest = path.strip_prefix("/robot").unwrap_or(&path);
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();

    if parts.is_empty() {
        return match method {
            Method::GET => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string()),
            _ => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            ),
        };
    }
    let robot = parts[0];
    if !ROBOTS.contains(&robot) {
        return bad_request(format!(
            "unknown robot {robot:?}: expected one of {}",
            ROBOTS.join(", ")
        ));
    }
    let action = &parts[1..];
    let result = match (&method, action) {
        (&Method::GET, []) => match state(robot) {
            Ok(s) => return json(StatusCode::OK, s),
            Err(f) => Err(f),
        },
        (&Method::POST, ["eyes", "blink"]) => {
            let times = match query_param(query.as_deref(), "times").map(str::parse::<u32>) {
                None => 3,
                Some(Ok(n)) if (1..=20).contains(&n) => n,
                Some(_) => return bad_request("times must be a whole number from 1 to 20"),
            };
            count(robot, "blink");
            blink(robot, times).await
        }
        (&Method::POST, ["drive"]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            let d: Drive = match serde_json::from_slice(&body) {
                Ok(d) => d,
                Err(e) => {
                    return bad_request(format!(
                        "expected {{\"direction\", \"speed\", \"duration_ms\"}}: {e}"
                    ));
                }
            };
            if duties(&d.direction, 0.0).is_none() {
                return bad_request(format!(
                    "unknown direction {:?}: expected forward, back, left, right or stop",
                    d.direction
                ));
            }
            if !(0.0..=1.0).contains(&d.speed) {
                return bad_request(format!("speed must be from 0 to 1, got {}", d.speed));
            }
            if d.duration_ms > MAX_DRIVE_MS {
                return bad_request(format!("duration_ms is at most {MAX_DRIVE_MS}"));
            }
            count(robot, "drive");
            drive(robot, &d, query_param(query.as_deref(), "fault")).await
        }
        (&Method::POST, ["stop"]) => {
            count(robot, "stop");
            set_motors(robot, [0.0; 4])
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no such robot action: {method} {path}\n"),
            );
        }
    };
    match result {
        Ok(()) => match state(robot) {
            Ok(s) => json(
                StatusCode::OK,
                serde_json::json!({ "ok": true, "robot": s }),
            ),
            Err(f) => gpio_failure(robot, &f.label, f.error),
        },
        Err(f) => gpio_failure(robot, &f.label, f.error),
    }
}
