//! `counter`: Spin's two embedded stores in one request (spin-sdk 7). Each
//! request adds one to the `count` key of the default key-value store
//! (atomically, with `wasi:keyvalue/atomics.increment`, so that concurrent
//! requests never lose a visit; the count is decimal text, readable through
//! spin-sdk's `Store::get` as well) and
//! records the visit (time and path) in the default SQLite database, then
//! answers `{"count": N, "recent": [...]}`: the count and the last five
//! visits, newest first. Both stores are granted in spin.toml
//! (`key_value_stores = ["default"]`, `sqlite_databases = ["default"]`) and
//! live in `.spin/` beside it, so the count survives a restart and the same
//! data serves under `spin up` and `gantry up`.

use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::sqlite::{Connection, Value};

wit_bindgen::generate!({
    path: "../../wit/deps/wasi-keyvalue-0.2.0-draft2",
    world: "wasi:keyvalue/imports",
    generate_all,
});

use wasi::keyvalue::{atomics, store};

const RECENT: i64 = 5;

async fn visit(path: &str) -> Result<serde_json::Value, String> {
    let bucket = store::open("default").map_err(|e| format!("key-value: {e:?}"))?;
    let count = atomics::increment(&bucket, "count", 1).map_err(|e| format!("key-value: {e:?}"))?;

    let db = Connection::open_default()
        .await
        .map_err(|e| format!("sqlite: {e:?}"))?;
    let sql = |e| format!("sqlite: {e:?}");
    db.execute(
        "CREATE TABLE IF NOT EXISTS visits (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            path TEXT NOT NULL
        )",
        [],
    )
    .await
    .map_err(sql)?
    .result()
    .await
    .map_err(sql)?;
    db.execute("INSERT INTO visits (path) VALUES (?)", [Value::text(path)])
        .await
        .map_err(sql)?
        .result()
        .await
        .map_err(sql)?;
    let rows = db
        .execute(
            "SELECT id, at, path FROM visits ORDER BY id DESC LIMIT ?",
            [Value::integer(RECENT)],
        )
        .await
        .map_err(sql)?
        .collect()
        .await
        .map_err(sql)?;
    let recent: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.get::<i64>(0),
                "at": r.get::<&str>(1),
                "path": r.get::<&str>(2),
            })
        })
        .collect();
    Ok(serde_json::json!({ "count": count, "recent": recent }))
}

#[http_service]
async fn handle(req: Request) -> (StatusCode, String) {
    let path = req.uri().path().to_string();
    match visit(&path).await {
        Ok(body) => (StatusCode::OK, body.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
