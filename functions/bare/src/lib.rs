//! `bare`: a WASI HTTP 0.2 handler built for `wasm32-unknown-unknown`, with
//! no WASI preview1 and no Rust std I/O: a core module carrying its
//! component type, which a host makes a component without an adapter. It
//! answers `bare core module` to every request.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasi:http/proxy@0.2.12",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Bare;

impl Guest for Bare {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(b"bare core module\n");
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

export!(Bare);
