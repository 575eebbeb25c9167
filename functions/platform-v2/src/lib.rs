//! `platform-v2`: the `platform` probe for apps on spin-sdk 5: every
//! interface of `fermyon:spin@2.0.0` (key-value, SQLite, variables, Redis,
//! PostgreSQL, MySQL, MQTT, LLM) and `spin:postgres@3.0.0`, `@4.0.0` and
//! `spin:sqlite@3.0.0`, each called once as an app granted nothing would.
//! It answers a JSON object: for each interface, `"ok"` or the error the
//! host answered.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

fn outcome<T, E: std::fmt::Debug>(r: Result<T, E>) -> serde_json::Value {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").into(),
    }
}

#[http_component]
fn handle(_req: Request) -> anyhow::Result<impl IntoResponse> {
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
