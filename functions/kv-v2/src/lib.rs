//! `kv-v2`: the `kv` example for apps on spin-sdk 5 (WASI HTTP 0.2 and
//! `fermyon:spin/key-value@2.0.0`, Spin's synchronous key-value interface).
//! Routed at `/kv-v2/...` (any `/<prefix>/...`, read from `spin-path-info`): `GET`, `PUT` and `DELETE /kv-v2/<store>/<key>`,
//! and `GET /kv-v2/<store>` for the keys (one a line). Store errors as in
//! `kv`: 403 `access-denied`, 404 `no-such-store`, else 500.

use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::{Error, Store};

fn failure(e: Error) -> Response {
    let status = match e {
        Error::AccessDenied => 403,
        Error::NoSuchStore => 404,
        _ => 500,
    };
    Response::new(status, format!("{e:?}\n"))
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .header("spin-path-info")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let rest = info.trim_start_matches('/');
    let (label, key) = match rest.split_once('/') {
        Some((l, k)) => (l, Some(k)),
        None => (rest, None),
    };
    let store = match Store::open(label) {
        Ok(s) => s,
        Err(e) => return Ok(failure(e)),
    };
    let Some(key) = key else {
        return Ok(match store.get_keys() {
            Ok(keys) => Response::new(200, keys.join("\n")),
            Err(e) => failure(e),
        });
    };
    Ok(match req.method() {
        Method::Get => match store.get(key) {
            Ok(Some(v)) => Response::new(200, v),
            Ok(None) => Response::new(404, "no such key\n"),
            Err(e) => failure(e),
        },
        Method::Put => match store.set(key, req.body()) {
            Ok(()) => Response::new(200, "stored\n"),
            Err(e) => failure(e),
        },
        Method::Delete => match store.delete(key) {
            Ok(()) => Response::new(200, "deleted\n"),
            Err(e) => failure(e),
        },
        _ => Response::new(405, "GET, PUT or DELETE\n"),
    })
}
