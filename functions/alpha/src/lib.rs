//! `alpha`: a fast JSON answer, written against WASI HTTP 0.2
//! (`wasi:http/incoming-handler`) with the plain `wasip2` bindings, so the
//! examples cover both WASI HTTP versions. With `?fetch=http://host:port/path`
//! it also calls that URL (`wasi:http/outgoing-handler`, so only where the
//! manifest's `allowed_outbound_hosts` lets it) and reports the answer: its
//! status, length and (up to 64 KiB) body. `?fetch=/path` is a relative URL,
//! sent as Spin's SDKs send one (authority `:80`): a request to the app
//! itself.
//!
//! To see what slow and large responses cost (and that they cost only their
//! own request): `?size=N` pads the body to N bytes (at most 64 MiB),
//! `?stall_ms=N` sends the head and the first bytes, then waits N ms (at
//! most 60 s) before the rest, and `?panic_after_head=1` fails after the
//! head and the first bytes, as a guest bug would.

use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::{OutputStream, StreamError};

/// The most one `blocking-write-and-flush` may take (WASI's limit).
const WRITE_CHUNK: usize = 4096;
const MAX_SIZE: usize = 64 << 20;
const MAX_STALL_MS: u64 = 60_000;

/// Writes all of `bytes`, a chunk at a time; `false` once the client is gone.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(WRITE_CHUNK)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

struct Alpha;

// Per-instance state, to show that every request gets a pristine instance:
// a counter in zero-initialised memory and a value from a data segment. Both
// read 0 and 7 on every request, however the host reuses memory between
// instances.
static SERVED: AtomicU32 = AtomicU32::new(0);
static SEED: AtomicU32 = AtomicU32::new(7);

/// Grows memory by a few pages of its own and says whether they read as
/// zeros, as WebAssembly promises, then fills them. A host that reused memory
/// without resetting what the previous instance wrote would show it here on
/// the next request (`grown_zero` false).
fn grown_pages_are_zero() -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        const PAGES: usize = 4;
        let before = core::arch::wasm32::memory_grow(0, PAGES);
        if before == usize::MAX {
            return false;
        }
        // SAFETY: the pages were just grown and are used by nothing else: the
        // allocator only uses memory it grows itself.
        let bytes =
            unsafe { core::slice::from_raw_parts_mut((before * 65536) as *mut u8, PAGES * 65536) };
        let zero = bytes.iter().all(|&b| b == 0);
        bytes.fill(0xAB);
        std::hint::black_box(bytes);
        zero
    }
    #[cfg(not(target_arch = "wasm32"))]
    true
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The most of a fetched body reported back.
const MAX_FETCHED_BODY: usize = 64 << 10;

/// Calls `url` (plain `http://`, or a path) and says how it went, as a JSON
/// value: the status, the body's length and its start, or the error.
fn fetch(url: &str) -> String {
    let (authority, path) = if url.starts_with('/') {
        (":80", url)
    } else if let Some(rest) = url.strip_prefix("http://") {
        match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        }
    } else {
        return format!("{{\"error\":\"only http:// URLs: {}\"}}", json_escape(url));
    };
    let request = OutgoingRequest::new(Fields::new());
    // Setting a scheme, an authority or a path only fails on a malformed
    // value, which the host's answer below then reports.
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let answer = outgoing_handler::handle(request, None).and_then(|pending| {
        pending.subscribe().block();
        match pending.get() {
            Some(Ok(answer)) => answer,
            _ => Err(wasip2::http::types::ErrorCode::InternalError(Some(
                "no answer after the wait".into(),
            ))),
        }
    });
    let response = match answer {
        Ok(r) => r,
        Err(e) => return format!("{{\"error\":\"{}\"}}", json_escape(&format!("{e:?}"))),
    };
    let status = response.status();
    let mut length = 0usize;
    let mut kept = Vec::new();
    if let Ok(body) = response.consume()
        && let Ok(stream) = body.stream()
    {
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(bytes) => {
                    length += bytes.len();
                    let room = MAX_FETCHED_BODY.saturating_sub(kept.len());
                    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => break,
            }
        }
    }
    format!(
        "{{\"status\":{status},\"length\":{length},\"body\":\"{}\"}}",
        json_escape(&String::from_utf8_lossy(&kept))
    )
}

impl Guest for Alpha {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Echo what the host told us about the request: the method, the path,
        // the `spin-*` headers (how the route matched) and the trace context
        // (which span this request runs under).
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(m) => m,
        };
        let path = request.path_with_query().unwrap_or_default();
        let mut spin = Vec::new();
        for (name, value) in request.headers().entries() {
            if name.starts_with("spin-") || name == "traceparent" || name == "tracestate" {
                spin.push(format!(
                    "\"{}\":\"{}\"",
                    json_escape(&name),
                    json_escape(&String::from_utf8_lossy(&value))
                ));
            }
        }
        spin.sort();
        // A custom metric, exposed by the host as `alpha_requests_total`.
        gantry_telemetry::metrics::counter_add("alpha_requests", 1, &[("method", &method)]);
        let served_before = SERVED.fetch_add(1, Ordering::Relaxed);
        let seed = SEED.swap(0, Ordering::Relaxed);
        let grown_zero = grown_pages_are_zero();
        let fetched = query_param(&path, "fetch")
            .map(|url| format!(",\"fetched\":{}", fetch(url)))
            .unwrap_or_default();
        let size = query_param(&path, "size")
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(0, |n| n.min(MAX_SIZE));
        let stall_ms = query_param(&path, "stall_ms")
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |n| n.min(MAX_STALL_MS));
        let panic_after_head = query_param(&path, "panic_after_head").is_some();
        let body = format!(
            "{{\"route\":\"alpha\",\"ok\":true,\"method\":\"{}\",\"path\":\"{}\",\"headers\":{{{}}},\"served_before\":{},\"seed\":{},\"grown_zero\":{}{}}}\n",
            json_escape(&method),
            json_escape(&path),
            spin.join(","),
            served_before,
            seed,
            grown_zero,
            fetched
        );

        let headers = Fields::new();
        // A fresh `fields` is mutable; failing here would be a host bug, and
        // the guest has nothing better to do than answer without the header.
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(out_body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        let mut body = body.into_bytes();
        // JSON allows trailing whitespace: the padding keeps the body valid.
        if body.len() < size {
            body.pop();
            body.resize(size - 1, b' ');
            body.push(b'\n');
        }
        if let Ok(stream) = out_body.write() {
            let (first, rest) = body.split_at(body.len().min(WRITE_CHUNK));
            if !write_all(&stream, first) {
                return;
            }
            if panic_after_head {
                panic!("failing after the response head, on purpose");
            }
            if stall_ms > 0 {
                wasip2::clocks::monotonic_clock::subscribe_duration(stall_ms * 1_000_000).block();
            }
            if !write_all(&stream, rest) {
                return;
            }
        }
        let _ = OutgoingBody::finish(out_body, None);
    }
}

wasip2::http::proxy::export!(Alpha);
