//! `redis`: a Spin app talking to Redis through Spin's Redis interface
//! (spin-sdk 7, `spin:redis/redis@3.0.0`). The server is the `redis_url`
//! variable, granted in spin.toml with
//! `allowed_outbound_hosts = ["{{ redis_url }}"]`.
//!
//! - `GET /redis`: counts the visit (`INCR gantry:visits`), stores when it
//!   happened and reads both back: `{"visits": N, "last": "..."}`.
//! - `GET /redis?slow=1`: the same after 200 small writes, one round trip
//!   each, on purpose: the trace shows where the time goes (one client span
//!   per write), and why a pipeline or `MSET` would be the fix.
//! - `GET /redis/ops`: every operation of the interface once, answering
//!   what each returned (the tests check it against the server).
//!
//! When Redis cannot be reached the route answers 503, naming the server.

use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::redis::{Connection, Error, RedisParameter, RedisResult};

const SLOW_WRITES: usize = 200;

fn text(e: &Error) -> String {
    format!("{e:?}")
}

async fn visit(redis: &Connection, slow: bool) -> Result<serde_json::Value, Error> {
    if slow {
        for i in 0..SLOW_WRITES {
            redis.set(format!("gantry:slow:{i}"), i.to_string()).await?;
        }
    }
    let visits = redis.incr("gantry:visits").await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    redis.set("gantry:last", now.to_string()).await?;
    let last = redis
        .get("gantry:last")
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    Ok(serde_json::json!({ "visits": visits, "last": last }))
}

fn result_json(r: &RedisResult) -> serde_json::Value {
    match r {
        RedisResult::Nil => serde_json::json!(null),
        RedisResult::Status(s) => serde_json::json!({ "status": s }),
        RedisResult::Int64(i) => serde_json::json!(i),
        RedisResult::Binary(b) => serde_json::json!(String::from_utf8_lossy(b)),
    }
}

fn outcome<T: Into<serde_json::Value>>(r: Result<T, Error>) -> serde_json::Value {
    match r {
        Ok(v) => serde_json::json!({ "ok": v.into() }),
        Err(e) => serde_json::json!({ "error": text(&e) }),
    }
}

/// Every operation once, on keys under `gantry:ops:`.
async fn ops(redis: &Connection) -> serde_json::Value {
    let k = |s: &str| format!("gantry:ops:{s}");
    let _ = redis.del([k("text"), k("n"), k("set"), k("exec")]).await;
    let set = outcome(redis.set(k("text"), b"hello").await.map(|()| "done"));
    let get = outcome(
        redis
            .get(k("text"))
            .await
            .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())),
    );
    let get_missing = outcome(redis.get(k("missing")).await.map(|v| v.is_none()));
    let incr = outcome(redis.incr(k("n")).await);
    let incr_again = outcome(redis.incr(k("n")).await);
    let incr_text = outcome(redis.incr(k("text")).await);
    let sadd = outcome(redis.sadd(k("set"), ["a", "b", "a"]).await);
    let smembers = outcome(redis.smembers(k("set")).await.map(|mut m| {
        m.sort();
        m
    }));
    let srem = outcome(redis.srem(k("set"), ["a", "x"]).await);
    let publish = outcome(redis.publish("gantry:ops", b"hi").await.map(|()| "done"));
    let exec = |command: &'static str, args: Vec<RedisParameter>| async move {
        redis
            .execute(command, args)
            .await
            .map(|rs| rs.iter().map(result_json).collect::<Vec<_>>())
    };
    let bin = |s: &str| RedisParameter::Binary(s.as_bytes().to_vec());
    let exec_set = outcome(exec("SET", vec![bin(&k("exec")), RedisParameter::Int64(5)]).await);
    let exec_incrby =
        outcome(exec("INCRBY", vec![bin(&k("exec")), RedisParameter::Int64(2)]).await);
    let exec_mget = outcome(exec("MGET", vec![bin(&k("exec")), bin(&k("missing"))]).await);
    let exec_bad = outcome(exec("NOSUCHCOMMAND", vec![]).await);
    let del = outcome(redis.del([k("text"), k("n"), k("missing")]).await);
    serde_json::json!({
        "set": set, "get": get, "get_missing": get_missing,
        "incr": incr, "incr_again": incr_again, "incr_text": incr_text,
        "sadd": sadd, "smembers": smembers, "srem": srem, "publish": publish,
        "execute_set": exec_set, "execute_incrby": exec_incrby,
        "execute_mget": exec_mget, "execute_unknown": exec_bad, "del": del,
    })
}

#[http_service]
async fn handle(req: Request) -> (StatusCode, String) {
    let url = match spin_sdk::variables::get("redis_url").await {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("redis_url: {e:?}\n"),
            );
        }
    };
    let redis = match Connection::open(&url).await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Redis at {url} is unreachable: {}\n", text(&e)),
            );
        }
    };
    let path = req.uri().path();
    if path.ends_with("/ops") {
        return (StatusCode::OK, ops(&redis).await.to_string());
    }
    let slow = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "slow=1"));
    match visit(&redis, slow).await {
        Ok(v) => (StatusCode::OK, v.to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis at {url} failed: {}\n", text(&e)),
        ),
    }
}
