//! `kv`: a small HTTP API over a Spin key-value store (spin-sdk 7, so
//! `spin:key-value/key-value@3.0.0`), the same under `spin up` and
//! `gantry up`. Routed at `/kv/...` (or any `/<prefix>/...`: it reads the
//! path after the route from Spin's `spin-path-info` header):
//!
//! - `GET /kv/<store>/<key>`: the value (404 when there is none);
//! - `PUT /kv/<store>/<key>`: stores the body;
//! - `DELETE /kv/<store>/<key>`;
//! - `GET /kv/<store>/<key>?exists`: `true` or `false`;
//! - `GET /kv/<store>`: the keys, as a JSON list;
//! - `POST /kv/<store>/<key>?incr`: adds one to a decimal counter, answers it.
//!
//! A store the component may not open answers 403 (`access-denied`) or 404
//! (`no-such-store`); any other store error 500, with the error as text.

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Method, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::{Error, Store};

fn failure(e: Error) -> (StatusCode, String) {
    let status = match e {
        Error::AccessDenied => StatusCode::FORBIDDEN,
        Error::NoSuchStore => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e:?}\n"))
}

#[http_service]
async fn handle(req: Request) -> (StatusCode, String) {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let rest = info.trim_start_matches('/');
    let (label, key) = match rest.split_once('/') {
        Some((l, k)) => (l.to_string(), Some(k.to_string())),
        None => (rest.to_string(), None),
    };
    if label.is_empty() {
        return (StatusCode::BAD_REQUEST, "use /kv/<store>/<key>\n".into());
    }
    let store = match Store::open(&label).await {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let Some(key) = key else {
        return match store.get_keys().await.collect().await {
            Ok(keys) => (StatusCode::OK, serde_json::json!(keys).to_string()),
            Err(e) => failure(e),
        };
    };
    match (method, query.as_str()) {
        (Method::GET, "exists") => match store.exists(&key).await {
            Ok(b) => (StatusCode::OK, b.to_string()),
            Err(e) => failure(e),
        },
        (Method::GET, _) => match store.get(&key).await {
            Ok(Some(v)) => (StatusCode::OK, String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => (StatusCode::NOT_FOUND, "no such key\n".into()),
            Err(e) => failure(e),
        },
        (Method::PUT, _) => {
            let body = match req.into_body().bytes().await {
                Ok(b) => b,
                Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:?}\n")),
            };
            match store.set(&key, &body).await {
                Ok(()) => (StatusCode::OK, "stored\n".into()),
                Err(e) => failure(e),
            }
        }
        (Method::DELETE, _) => match store.delete(&key).await {
            Ok(()) => (StatusCode::OK, "deleted\n".into()),
            Err(e) => failure(e),
        },
        (Method::POST, "incr") => {
            let now = match store.get(&key).await {
                Ok(v) => v
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0),
                Err(e) => return failure(e),
            };
            let next = now + 1;
            match store.set(&key, next.to_string()).await {
                Ok(()) => (StatusCode::OK, next.to_string()),
                Err(e) => failure(e),
            }
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, PUT, DELETE or POST ?incr\n".into(),
        ),
    }
}
