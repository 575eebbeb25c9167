//! `fileserver`: serves the files its manifest entry gives it (`files`),
//! read-only, the way a static site is served from Spin. Route it at
//! `/static/...` with `files = [{ source = "functions/site", destination =
//! "/" }]`: `GET /static/css/site.css` answers `/css/site.css` from the
//! mount, `GET /static/` answers `/index.html`.
//!
//! - the content type comes from the file's extension (`mime_guess`);
//! - a folder answers its `index.html`;
//! - a missing file is 404, a path with `..` or a NUL byte 400;
//! - only GET and HEAD; anything else is 405.

use spin_sdk::http::{FullBody, HeaderMap, HeaderValue, Method, Request, StatusCode};
use spin_sdk::http_service;

type Reply = (StatusCode, HeaderMap, FullBody<bytes::Bytes>);

fn reply(status: StatusCode, content_type: &str, body: impl Into<bytes::Bytes>) -> Reply {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert("content-type", v);
    }
    (status, headers, FullBody::new(body.into()))
}

fn text(status: StatusCode, message: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

/// The file under `/` that `path` (the request path after the route) names,
/// or `None` when it tries to leave the mount.
fn file_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.contains('\0') || p.contains('\\') => return None,
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

#[http_service]
async fn handle(req: Request) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/")
        .to_string();
    let Some(mut path) = file_path(&info) else {
        return text(StatusCode::BAD_REQUEST, "the path leaves the site");
    };
    if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
        path = format!("{}/index.html", path.trim_end_matches('/'));
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            let content_type = match mime.type_() {
                mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
                _ => mime.to_string(),
            };
            let body = if req.method() == Method::HEAD {
                Vec::new()
            } else {
                bytes
            };
            reply(StatusCode::OK, &content_type, body)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, "no such file")
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read: {e}"),
        ),
    }
}
