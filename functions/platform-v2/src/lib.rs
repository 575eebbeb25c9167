//! `platform-v2`: the `platform` probe for apps on spin-sdk 5: every
//! interface of `fermyon:spin@2.0.0` (key-value, SQLite, variables, Redis,
//! PostgreSQL, MySQL, MQTT, LLM) and `spin:postgres@3.0.0`, `@4.0.0` and
//! `spin:sqlite@3.0.0`, each called once as an app granted nothing would.
//! It answers a JSON object: for each interface, `"ok"` or the error the
//! host answered. `?sqlite` instead uses the default database (when
//! granted) through SQLite 2.0.0 and 3.0.0; `POST ?sql` runs the statement
//! the body holds there; `?open=N` opens the default key-value store and the
//! default database N times each, holding them, to probe the host's bounds;
//! `?redis=URL` runs every Redis operation against that server;
//! `?redis_open=N&url=URL` opens N Redis connections at once.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

fn outcome<T, E: std::fmt::Debug>(r: Result<T, E>) -> serde_json::Value {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").into(),
    }
}

/// `?sqlite`: the default database through `fermyon:spin/sqlite@2.0.0` and
/// `spin:sqlite/sqlite@3.0.0` (granted): one writes, both read.
fn sqlite() -> anyhow::Result<serde_json::Value> {
    use spin_sdk::{sqlite, sqlite3};
    let v2 = sqlite::Connection::open_default().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    v2.execute(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        &[],
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    v2.execute(
        "INSERT INTO notes (body) VALUES (?)",
        &[sqlite::Value::Text("from 2.0.0".into())],
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let v3 = sqlite3::Connection::open_default().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    v3.execute(
        "INSERT INTO notes (body) VALUES (?)",
        &[sqlite3::Value::Text("from 3.0.0".into())],
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rows = v3
        .execute(
            "SELECT body, ? * 2 AS twice FROM notes ORDER BY id",
            &[sqlite3::Value::Integer(21)],
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let via_v3: Vec<serde_json::Value> = rows
        .rows()
        .map(|r| serde_json::json!([r.get::<&str>("body"), r.get::<i64>("twice")]))
        .collect();
    let count = v2
        .execute("SELECT count(*) AS n FROM notes", &[])
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let n = count.rows().next().and_then(|r| r.get::<i64>("n"));
    Ok(serde_json::json!({ "rows": via_v3, "count": n }))
}

/// `POST ?sql`: the body's statement on the default database, through
/// `spin:sqlite@3.0.0`; the number of rows, or the host's error.
fn sql(statement: &str) -> Response {
    let result =
        spin_sdk::sqlite3::Connection::open_default().and_then(|db| db.execute(statement, &[]));
    match result {
        Ok(rows) => Response::new(
            200,
            serde_json::json!({ "rows": rows.rows.len() }).to_string(),
        ),
        Err(e) => Response::new(500, format!("{e:?}\n")),
    }
}

/// `?open=N`: how many opens of each kind succeeded, and the first error.
fn open(n: usize) -> Response {
    fn count<T, E: std::fmt::Debug>(
        n: usize,
        mut open: impl FnMut() -> Result<T, E>,
    ) -> serde_json::Value {
        let mut held = Vec::new();
        for _ in 0..n {
            match open() {
                Ok(handle) => held.push(handle),
                Err(e) => {
                    return serde_json::json!({ "opened": held.len(), "error": format!("{e:?}") });
                }
            }
        }
        serde_json::json!({ "opened": held.len() })
    }
    let answers = serde_json::json!({
        "key-value": count(n, spin_sdk::key_value::Store::open_default),
        "sqlite": count(n, spin_sdk::sqlite3::Connection::open_default),
    });
    Response::new(200, answers.to_string())
}

/// `?redis=URL`: every operation of `fermyon:spin/redis@2.0.0` once, on
/// keys under `gantry:v2:`, answering what each returned.
fn redis(url: &str) -> Response {
    use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
    fn out<T: Into<serde_json::Value>, E: std::fmt::Debug>(r: Result<T, E>) -> serde_json::Value {
        match r {
            Ok(v) => serde_json::json!({ "ok": v.into() }),
            Err(e) => serde_json::json!({ "error": format!("{e:?}") }),
        }
    }
    let c = match Connection::open(url) {
        Ok(c) => c,
        Err(e) => return Response::new(503, format!("{e:?}\n")),
    };
    let k = |s: &str| format!("gantry:v2:{s}");
    let results = |rs: Vec<RedisResult>| -> Vec<serde_json::Value> {
        rs.into_iter()
            .map(|r| match r {
                RedisResult::Nil => serde_json::Value::Null,
                RedisResult::Status(s) => serde_json::json!({ "status": s }),
                RedisResult::Int64(i) => i.into(),
                RedisResult::Binary(b) => String::from_utf8_lossy(&b).into_owned().into(),
            })
            .collect()
    };
    let _ = c.del(&[k("text"), k("n"), k("set"), k("exec")]);
    let answers = serde_json::json!({
        "set": out(c.set(&k("text"), b"hello").map(|()| "done")),
        "get": out(c.get(&k("text")).map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))),
        "get_missing": out(c.get(&k("missing")).map(|v| v.is_none())),
        "incr": out(c.incr(&k("n"))),
        "incr_again": out(c.incr(&k("n"))),
        "incr_text": out(c.incr(&k("text"))),
        "sadd": out(c.sadd(&k("set"), &["a".to_string(), "b".to_string(), "a".to_string()])),
        "smembers": out(c.smembers(&k("set")).map(|mut m| { m.sort(); m })),
        "srem": out(c.srem(&k("set"), &["a".to_string(), "x".to_string()])),
        "publish": out(c.publish("gantry:v2", b"hi").map(|()| "done")),
        "execute_set": out(c.execute("SET", &[RedisParameter::Binary(k("exec").into_bytes()), RedisParameter::Int64(5)]).map(results)),
        "execute_incrby": out(c.execute("INCRBY", &[RedisParameter::Binary(k("exec").into_bytes()), RedisParameter::Int64(2)]).map(results)),
        "execute_mget": out(c.execute("MGET", &[RedisParameter::Binary(k("exec").into_bytes()), RedisParameter::Binary(k("missing").into_bytes())]).map(results)),
        "execute_unknown": out(c.execute("NOSUCHCOMMAND", &[]).map(results)),
        "del": out(c.del(&[k("text"), k("n"), k("missing")])),
    });
    Response::new(200, answers.to_string())
}

/// `?redis_open=N&url=URL`: opens N connections to URL, holding them; how
/// many opened and the first error.
fn redis_open(n: usize, url: &str) -> Response {
    let mut held = Vec::new();
    let mut error = None;
    for _ in 0..n {
        match spin_sdk::redis::Connection::open(url) {
            Ok(c) => held.push(c),
            Err(e) => {
                error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    let answer = serde_json::json!({ "opened": held.len(), "error": error });
    Response::new(200, answer.to_string())
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    if let Some(url) = req.query().strip_prefix("redis=") {
        return Ok(redis(url));
    }
    if let Some((n, url)) = req
        .query()
        .strip_prefix("redis_open=")
        .and_then(|q| q.split_once("&url="))
    {
        return Ok(redis_open(n.parse().unwrap_or(0), url));
    }
    if req.query() == "sql" {
        return Ok(sql(&String::from_utf8_lossy(req.body())));
    }
    if let Some(n) = req.query().strip_prefix("open=") {
        return Ok(open(n.parse().unwrap_or(0)));
    }
    if req.query() == "sqlite" {
        return Ok(match sqlite() {
            Ok(v) => Response::new(200, v.to_string()),
            Err(e) => Response::new(500, format!("{e}\n")),
        });
    }
    let address = "127.0.0.1:9";
    let answers = serde_json::json!({
        "key-value@2.0.0": outcome(spin_sdk::key_value::Store::open("nope")),
        "sqlite@2.0.0": outcome(spin_sdk::sqlite::Connection::open("nope")),
        "sqlite@3.0.0": outcome(spin_sdk::sqlite3::Connection::open("nope")),
        "variables@2.0.0": outcome(spin_sdk::variables::get("nope")),
        "redis@2.0.0": outcome(spin_sdk::redis::Connection::open(&format!("redis://{address}"))),
        "postgres@2.0.0": outcome(spin_sdk::pg::Connection::open(&format!("postgres://u@{address}/db"))),
        "postgres@3.0.0": outcome(spin_sdk::pg3::Connection::open(&format!("postgres://u@{address}/db"))),
        "postgres@4.0.0": outcome(spin_sdk::pg4::Connection::open(&format!("postgres://u@{address}/db"))),
        "mysql@2.0.0": outcome(spin_sdk::mysql::Connection::open(&format!("mysql://u@{address}/db"))),
        "mqtt@2.0.0": outcome(spin_sdk::mqtt::Connection::open(&format!("mqtt://{address}"), "u", "p", 30)),
        "llm@2.0.0": outcome(spin_sdk::llm::infer(spin_sdk::llm::InferencingModel::Llama2Chat, "hi")),
    });
    Ok(Response::new(200, answers.to_string()))
}
