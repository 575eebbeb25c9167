//! `alpha`: a fast JSON answer, written against WASI HTTP 0.2
//! (`wasi:http/incoming-handler`) with the plain `wasip2` bindings, so the
//! examples cover both WASI HTTP versions.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Alpha;

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
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

impl Guest for Alpha {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_info = header(&request, "spin-path-info").unwrap_or_default();
        let route = header(&request, "spin-matched-route").unwrap_or_default();
        let body = format!(
            "{{\"route\":\"alpha\",\"ok\":true,\"matched_route\":\"{}\",\"path_info\":\"{}\"}}\n",
            json_escape(&route),
            json_escape(&path_info)
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
        if let Ok(stream) = out_body.write() {
            let _ = stream.blocking_write_and_flush(body.as_bytes());
        }
        let _ = OutgoingBody::finish(out_body, None);
    }
}

wasip2::http::proxy::export!(Alpha);
