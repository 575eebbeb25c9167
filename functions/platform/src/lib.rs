//! `platform`: a component importing every interface of Spin's platform
//! that spin-sdk 7 offers (key-value, SQLite, variables, Redis, PostgreSQL,
//! MySQL, MQTT, LLM) and calling each once, as an app that was granted
//! nothing would. It answers a JSON object: for each interface, `"ok"` or
//! the error the host answered. A host that does not link one of them
//! refuses to load it; one that links but grants nothing answers each
//! interface's own error.

use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;

fn outcome<T, E: std::fmt::Debug>(r: Result<T, E>) -> serde_json::Value {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").into(),
    }
}

#[http_service]
async fn handle(_req: Request) -> (StatusCode, String) {
    let address = "127.0.0.1:9";
    let answers = serde_json::json!({
        "key-value": outcome(spin_sdk::key_value::Store::open("nope").await),
        "sqlite": outcome(spin_sdk::sqlite::Connection::open("nope").await),
        "variables": outcome(spin_sdk::variables::get("nope").await),
        "redis": outcome(spin_sdk::redis::Connection::open(format!("redis://{address}")).await),
        "postgres": outcome(
            spin_sdk::pg::Connection::open(format!("postgres://u@{address}/db")).await
        ),
        "mysql": outcome(spin_sdk::mysql::Connection::open(format!("mysql://u@{address}/db")).await),
        "mqtt": outcome(
            spin_sdk::mqtt::Connection::open(format!("mqtt://{address}"), "u", "p", 30).await
        ),
        "llm": outcome(spin_sdk::llm::infer(spin_sdk::llm::InferencingModel::Llama2Chat, "hi")),
    });
    (StatusCode::OK, answers.to_string())
}
