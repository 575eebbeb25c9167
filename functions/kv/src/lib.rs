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
//! The same stores through `wasi:keyvalue@0.2.0-draft2`:
//!
//! - `POST /kv/<store>/<key>?add=N`: `atomics.increment` by N, answers it;
//! - `PUT /kv/<store>/<key>?cas=EXPECTED`: stores the body if the key holds
//!   EXPECTED (`?cas` alone: if it has no value), through `atomics.swap`;
//!   409 with the value it holds otherwise;
//! - `GET /kv/<store>?many=a,b`: `batch.get-many`, a JSON object (null for a
//!   missing key); `PUT /kv/<store>?many` with `key=value` lines:
//!   `batch.set-many`; `DELETE /kv/<store>?many=a,b`: `batch.delete-many`;
//! - `GET /kv/<store>?list`: `store.list-keys`, as a JSON list.
//!
//! A store the component may not open answers 403 (`access-denied`) or 404
//! (`no-such-store`); any other store error 500, with the error as text.

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Method, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::{Error, Store};

wit_bindgen::generate!({
    path: "../../wit/deps/wasi-keyvalue-0.2.0-draft2",
    world: "wasi:keyvalue/imports",
    generate_all,
});

use wasi::keyvalue::{atomics, batch, store as wk};

fn wasi_failure(e: wk::Error) -> (StatusCode, String) {
    let status = match e {
        wk::Error::AccessDenied => StatusCode::FORBIDDEN,
        wk::Error::NoSuchStore => StatusCode::NOT_FOUND,
        wk::Error::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e:?}\n"))
}

fn is_wasi_keyvalue(query: &str) -> bool {
    let name = query.split_once('=').map_or(query, |(n, _)| n);
    matches!(name, "add" | "cas" | "many" | "list")
}

/// The `wasi:keyvalue` calls (see [`is_wasi_keyvalue`]).
async fn wasi_keyvalue(
    req: Request,
    label: &str,
    key: Option<&str>,
    query: &str,
) -> (StatusCode, String) {
    let (name, arg) = query.split_once('=').unwrap_or((query, ""));
    let method = req.method().clone();
    let bucket = match wk::open(label) {
        Ok(b) => b,
        Err(e) => return wasi_failure(e),
    };
    let list = |arg: &str| -> Vec<String> {
        arg.split(',')
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect()
    };
    match (method, name, key) {
        (Method::POST, "add", Some(key)) => {
            let Ok(delta) = arg.parse::<i64>() else {
                return (StatusCode::BAD_REQUEST, "?add=N takes an integer\n".into());
            };
            match atomics::increment(&bucket, key, delta) {
                Ok(n) => (StatusCode::OK, n.to_string()),
                Err(e) => wasi_failure(e),
            }
        }
        (Method::PUT, "cas", Some(key)) => {
            let expected = (!query.ends_with("cas")).then(|| arg.as_bytes().to_vec());
            let body = match req.into_body().bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:?}\n")),
            };
            let cas = match atomics::Cas::new(&bucket, key) {
                Ok(c) => c,
                Err(e) => return wasi_failure(e),
            };
            let seen = match cas.current() {
                Ok(v) => v,
                Err(e) => return wasi_failure(e),
            };
            if seen != expected {
                let now = String::from_utf8_lossy(&seen.unwrap_or_default()).into_owned();
                return (StatusCode::CONFLICT, now);
            }
            match atomics::swap(cas, &body) {
                Ok(()) => (StatusCode::OK, "swapped\n".into()),
                Err(atomics::CasError::CasFailed(c)) => {
                    let now = c.current().ok().flatten().unwrap_or_default();
                    (
                        StatusCode::CONFLICT,
                        String::from_utf8_lossy(&now).into_owned(),
                    )
                }
                Err(atomics::CasError::StoreError(e)) => wasi_failure(e),
            }
        }
        (Method::GET, "many", None) => match batch::get_many(&bucket, &list(arg)) {
            Ok(pairs) => {
                let object: serde_json::Map<String, serde_json::Value> = pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let v = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                        (k, serde_json::json!(v))
                    })
                    .collect();
                (
                    StatusCode::OK,
                    serde_json::Value::Object(object).to_string(),
                )
            }
            Err(e) => wasi_failure(e),
        },
        (Method::PUT, "many", None) => {
            let body = match req.into_body().bytes().await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:?}\n")),
            };
            let pairs: Vec<(String, Vec<u8>)> = body
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            match batch::set_many(&bucket, &pairs) {
                Ok(()) => (StatusCode::OK, format!("stored {}\n", pairs.len())),
                Err(e) => wasi_failure(e),
            }
        }
        (Method::DELETE, "many", None) => match batch::delete_many(&bucket, &list(arg)) {
            Ok(()) => (StatusCode::OK, "deleted\n".into()),
            Err(e) => wasi_failure(e),
        },
        (Method::GET, "list", None) => match bucket.list_keys(None) {
            Ok(r) => (StatusCode::OK, serde_json::json!(r.keys).to_string()),
            Err(e) => wasi_failure(e),
        },
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "see the wasi:keyvalue calls in functions/kv/src/lib.rs\n".into(),
        ),
    }
}

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
    if is_wasi_keyvalue(&query) {
        return wasi_keyvalue(req, &label, key.as_deref(), &query).await;
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
