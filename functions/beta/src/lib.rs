//! `beta`: slow on purpose, so a trace has something to find.
//!
//! Sleeps `delay_ms` milliseconds (query parameter, capped at 60 000) in three
//! steps before answering. Without the parameter it sleeps the component's
//! `default_delay_ms` variable (300 if unset), read through the portable
//! `wasi:config/store` interface that Spin and Gantry both provide.

use spin_sdk::http::{HeaderMap, HeaderValue, Request, StatusCode};
use spin_sdk::http_service;
use std::time::Duration;

mod config {
    spin_sdk::wit_bindgen::generate!({
        path: "../../wit/deps/config",
        world: "wasi:config/imports@0.2.0-draft-2024-09-27",
        runtime_path: "spin_sdk::wit_bindgen::rt",
        generate_all,
    });
    pub use self::wasi::config::store;
}

const DEFAULT_DELAY_MS: u64 = 300;
const MAX_DELAY_MS: u64 = 60_000;

fn default_delay() -> u64 {
    match config::store::get("default_delay_ms") {
        Ok(Some(v)) => v.parse().unwrap_or(DEFAULT_DELAY_MS),
        _ => DEFAULT_DELAY_MS,
    }
}

fn delay_from_query(query: Option<&str>) -> Result<u64, String> {
    let Some(query) = query else {
        return Ok(default_delay());
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("delay_ms=") {
            let ms: u64 = value.parse().map_err(|_| {
                format!("delay_ms must be a whole number of milliseconds, got {value:?}")
            })?;
            return Ok(ms.min(MAX_DELAY_MS));
        }
    }
    Ok(default_delay())
}

#[http_service]
async fn handle(req: Request) -> (StatusCode, HeaderMap, String) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let delay = match delay_from_query(req.uri().query()) {
        Ok(ms) => ms,
        Err(msg) => {
            return (
                StatusCode::BAD_REQUEST,
                headers,
                format!("{{\"error\":{msg:?}}}\n"),
            );
        }
    };
    // Three steps, each its own span, so a trace shows where the time goes.
    let step = delay / 3;
    for (i, ms) in [step, step, delay - 2 * step].into_iter().enumerate() {
        let mut span = gantry_telemetry::Span::start(&format!("slow-step-{}", i + 1));
        span.set_attribute("delay_ms", ms);
        spin_sdk::time::sleep(Duration::from_millis(ms)).await;
        span.end();
    }
    (
        StatusCode::OK,
        headers,
        format!("{{\"route\":\"beta\",\"slept_ms\":{delay}}}\n"),
    )
}
