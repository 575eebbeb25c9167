//! `hello`: the traced "hello that calls out".
//!
//! Calls the URL held in the `upstream_url` variable (spin.toml default:
//! `http://self.alt/alpha`, this app's `/alpha`, reached in-process) and
//! answers `hello` with the status it got back. The
//! variable is read with spin-sdk's `variables::get`, which Spin and Gantry
//! both provide, so the same component runs unchanged under either host.
//!
//! The outbound call runs inside a guest span, `example-request`: the host's
//! client span for the call nests under it, so a trace reads
//! server span -> example-request -> client span -> upstream. The line it
//! prints reaches the host log (and OTLP logs) with the request's trace id.

use spin_sdk::http::{HeaderMap, HeaderValue, Request, StatusCode};
use spin_sdk::http_service;

const DEFAULT_UPSTREAM: &str = "http://self.alt/alpha";

async fn upstream_url() -> String {
    match spin_sdk::variables::get("upstream_url").await {
        Ok(url) if !url.is_empty() => url,
        _ => DEFAULT_UPSTREAM.to_string(),
    }
}

#[http_service]
async fn handle(_req: Request) -> (StatusCode, HeaderMap, String) {
    let url = upstream_url().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    println!("calling {url}");
    let mut span = gantry_telemetry::Span::start("example-request");
    span.set_attribute("url.full", &url);
    let result = spin_sdk::http::get(&url).await;
    match &result {
        Ok(resp) => span.set_attribute("http.response.status_code", resp.status().as_u16()),
        Err(err) => span.set_error(format!("{err:?}")),
    }
    span.end();
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (
                StatusCode::OK,
                headers,
                format!("hello ({url} answered {status})\n"),
            )
        }
        Err(err) => {
            eprintln!("calling {url} failed: {err:?}");
            (
                StatusCode::BAD_GATEWAY,
                headers,
                format!("hello (calling {url} failed: {err:?})\n"),
            )
        }
    }
}
