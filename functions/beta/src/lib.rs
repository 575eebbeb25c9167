//! `beta`: slow on purpose, so a trace has something to find.
//!
//! Sleeps `delay_ms` milliseconds (query parameter, default 300, capped at
//! 60 000) in three steps before answering.

use spin_sdk::http::{HeaderMap, HeaderValue, Request, StatusCode};
use spin_sdk::http_service;
use std::time::Duration;

const DEFAULT_DELAY_MS: u64 = 300;
const MAX_DELAY_MS: u64 = 60_000;

fn delay_from_query(query: Option<&str>) -> Result<u64, String> {
    let Some(query) = query else {
        return Ok(DEFAULT_DELAY_MS);
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("delay_ms=") {
            let ms: u64 = value.parse().map_err(|_| {
                format!("delay_ms must be a whole number of milliseconds, got {value:?}")
            })?;
            return Ok(ms.min(MAX_DELAY_MS));
        }
    }
    Ok(DEFAULT_DELAY_MS)
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
    // Three steps, so that per-step spans show where the time goes.
    let step = delay / 3;
    for ms in [step, step, delay - 2 * step] {
        spin_sdk::time::sleep(Duration::from_millis(ms)).await;
    }
    (
        StatusCode::OK,
        headers,
        format!("{{\"route\":\"beta\",\"slept_ms\":{delay}}}\n"),
    )
}
