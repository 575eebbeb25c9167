//! `plain`: answers `hello` with nothing but standard WASI HTTP 0.2 imports
//! (`wasi:http/incoming-handler`, no Gantry or Spin interface), so the very
//! same file runs under Gantry, Spin and `wasmtime serve`. It is the subject
//! of the comparison benchmark (`scripts/bench.sh`): what it measures is the
//! host, not the guest.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Plain;

const BODY: &[u8] = b"hello\n";

impl Guest for Plain {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::new();
        // A fresh `fields` is mutable: a failure here would be a host bug, and
        // answering without the header is the best the guest can do then.
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let _ = headers.set("content-length", &[BODY.len().to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(BODY);
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Plain);
