//! `hello`: the traced "hello that calls out".
//!
//! Calls the URL held in the `upstream_url` variable (spin.toml default:
//! `https://example.com`) and answers `hello` with the status it got back. The
//! variable is read with spin-sdk's `variables::get`, which Spin and Gantry
//! both provide, so the same component runs unchanged under either host.

use spin_sdk::http::{HeaderMap, HeaderValue, Request, StatusCode};
use spin_sdk::http_service;

const DEFAULT_UPSTREAM: &str = "https://example.com";

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
    match spin_sdk::http::get(&url).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (
                StatusCode::OK,
                headers,
                format!("hello ({url} answered {status})\n"),
            )
        }
        Err(err) => (
            StatusCode::BAD_GATEWAY,
            headers,
            format!("hello (calling {url} failed: {err:?})\n"),
        ),
    }
}
