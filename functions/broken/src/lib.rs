//! `broken`: fails on purpose, so operators can see what a failing guest costs.
//!
//! - `GET /broken` (or `?mode=panic`): panics, which traps the instance (500).
//! - `?mode=loop`: spins forever; the host's request timeout ends it (504).
//! - `?mode=oom`: allocates until the instance's memory limit stops it (500).
//! - `?mode=error`: returns a handler error instead of a response (500).

use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;

fn mode(query: Option<&str>) -> &str {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("mode="))
        .unwrap_or("panic")
}

#[http_service]
async fn handle(req: Request) -> Result<StatusCode, spin_sdk::http::Error> {
    match mode(req.uri().query()) {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "error" => Err(spin_sdk::http::Error::other("broken on purpose")),
        _ => panic!("broken on purpose"),
    }
}
