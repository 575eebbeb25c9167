//! Spin's whole platform world links: `platform` (spin-sdk 7: spin:*@3,
//! spin:postgres@4.2.0, fermyon:spin/llm) and `platform-v2` (spin-sdk 5:
//! every fermyon:spin/*@2.0.0 interface, spin:postgres@3.0.0 and @4.0.0,
//! spin:sqlite@3.0.0) load in the real host, and each call of an app granted
//! nothing answers the interface's own error.

mod common;
use common::*;

const APP: &str = r#"spin_manifest_version = 2
[application]
name = "platform"
[[trigger.http]]
route = "/v3"
component = "platform"
[[trigger.http]]
route = "/v2"
component = "platform-v2"
[component.platform]
source = "{wasm}/platform.wasm"
[component.platform-v2]
source = "{wasm}/platform_v2.wasm"
"#;

fn assert_answers(answers: &serde_json::Value, expected: &[(&str, &str)]) {
    let object = answers.as_object().expect("a JSON object");
    assert_eq!(object.len(), expected.len(), "{answers}");
    for (interface, want) in expected {
        let got = answers[*interface].as_str().unwrap_or("");
        assert!(
            got.starts_with(want),
            "{interface}: {got:?}, wanted {want}…"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_platform_interface_links_and_denies_with_its_own_error() {
    wasm("platform");
    wasm("platform_v2");
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);

    let r = get(&g.url("/v3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_answers(
        &r.json(),
        &[
            ("key-value", "Error::AccessDenied"),
            ("sqlite", "Error::AccessDenied"),
            ("variables", "Error::Undefined"),
            ("redis", "Error::InvalidAddress"),
            (
                "postgres",
                "PgError(Error::ConnectionFailed(\"PostgreSQL (spin:postgres/postgres@4.2.0)",
            ),
            (
                "mysql",
                "MysqlError(Error::ConnectionFailed(\"MySQL (spin:mysql/mysql@3.0.0)",
            ),
            (
                "mqtt",
                "Error::ConnectionFailed(\"MQTT (spin:mqtt/mqtt@3.0.0)",
            ),
            ("llm", "Error::RuntimeError(\"no model is configured"),
        ],
    );

    let r = get(&g.url("/v2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_answers(
        &r.json(),
        &[
            ("key-value@2.0.0", "Error::AccessDenied"),
            ("sqlite@2.0.0", "Error::AccessDenied"),
            ("sqlite@3.0.0", "Error::AccessDenied"),
            ("variables@2.0.0", "Error::Undefined"),
            ("redis@2.0.0", "Error::InvalidAddress"),
            (
                "postgres@2.0.0",
                "Error::ConnectionFailed(\"PostgreSQL (fermyon:spin/postgres@2.0.0)",
            ),
            (
                "postgres@3.0.0",
                "Error::ConnectionFailed(\"PostgreSQL (spin:postgres/postgres@3.0.0)",
            ),
            (
                "postgres@4.0.0",
                "Error::ConnectionFailed(\"PostgreSQL (spin:postgres/postgres@4.0.0)",
            ),
            (
                "mysql@2.0.0",
                "Error::ConnectionFailed(\"MySQL (fermyon:spin/mysql@2.0.0)",
            ),
            (
                "mqtt@2.0.0",
                "Error::ConnectionFailed(\"MQTT (fermyon:spin/mqtt@2.0.0)",
            ),
            ("llm@2.0.0", "Error::RuntimeError(\"no model is configured"),
        ],
    );
}

/// `gantry check` loads them too (the stubs are per component, on a copy of
/// the engine's linker).
#[test]
fn check_accepts_the_platform_probes() {
    wasm("platform");
    wasm("platform_v2");
    let (_dir, manifest) = write_manifest(APP);
    let text = check_ok(&manifest);
    assert!(text.contains("OK: 2 components, 2 routes"), "{text}");
}

/// SQLite through `fermyon:spin/sqlite@2.0.0` and `spin:sqlite/sqlite@3.0.0`
/// (spin-sdk 5), granted: one database, both versions write and read it,
/// parameters bound.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_2_0_0_and_3_0_0_share_the_default_database() {
    wasm("platform_v2");
    let (_dir, manifest) = write_manifest(&APP.replace(
        "source = \"{wasm}/platform_v2.wasm\"",
        "source = \"{wasm}/platform_v2.wasm\"\nsqlite_databases = [\"default\"]",
    ));
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/v2?sqlite")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"rows": [["from 2.0.0", 42], ["from 3.0.0", 42]], "count": 2})
    );
    let r = get(&g.url("/v2?sqlite")).await;
    assert_eq!(r.json()["count"], 4, "{}", r.text());
    // The probe's other calls are unchanged: `nope` is still not granted.
    let r = get(&g.url("/v2")).await;
    assert_eq!(r.json()["sqlite@3.0.0"], "Error::AccessDenied");
}

/// The `platform-v2` probe granted the default store and database.
fn granted() -> (tempfile::TempDir, std::path::PathBuf) {
    wasm("platform_v2");
    write_manifest(&APP.replace(
        "source = \"{wasm}/platform_v2.wasm\"",
        "source = \"{wasm}/platform_v2.wasm\"\nsqlite_databases = [\"default\"]\nkey_value_stores = [\"default\"]",
    ))
}

async fn sql(g: &Gantry, statement: &str) -> Reply {
    send(
        "POST",
        &g.url("/v2?sql"),
        &[],
        statement.as_bytes().to_vec(),
    )
    .await
}

/// A statement that would run forever ends with its request, not 30 s
/// later: it holds the write lock until interrupted, so the next write
/// (which waits 5 s for the lock at most) gets it, and the runaway insert
/// left nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_statement_ends_with_its_request() {
    let (_dir, manifest) = granted();
    let g = Gantry::start(&manifest, &["--request-timeout", "2s"]);
    let r = sql(&g, "CREATE TABLE t (x INTEGER)").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sql(
        &g,
        "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
         SELECT x FROM c",
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    let r = sql(&g, "INSERT INTO t VALUES (1)").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sql(&g, "SELECT x FROM t").await;
    assert_eq!(r.json(), serde_json::json!({ "rows": 1 }), "{}", r.text());
}

/// A result past 32 MiB is an error to the guest; a smaller one is served.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_result_is_an_error_to_the_guest() {
    let (_dir, manifest) = granted();
    let g = Gantry::start(&manifest, &[]);
    let blobs = |n: u32| {
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
             SELECT zeroblob(1048576) FROM c"
        )
    };
    let r = sql(&g, &blobs(8)).await;
    assert_eq!(r.json(), serde_json::json!({ "rows": 8 }), "{}", r.text());
    let r = sql(&g, &blobs(40)).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text()
            .contains("the result is larger than 33554432 bytes"),
        "{}",
        r.text()
    );
    // Bad SQL is the guest's error too, and the host serves on.
    let r = sql(&g, "SELEKT 1").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("syntax error"), "{}", r.text());
}

/// One request holds at most 16 key-value stores and 16 databases open; the
/// next open is an error to the guest, and the next request opens again.
#[tokio::test(flavor = "multi_thread")]
async fn opens_in_one_request_are_bounded() {
    let (_dir, manifest) = granted();
    let g = Gantry::start(&manifest, &[]);
    for _ in 0..2 {
        let r = get(&g.url("/v2?open=20")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        // Each in its interface's own words.
        for (kind, error) in [("key-value", "StoreTableFull"), ("sqlite", "more than 16")] {
            assert_eq!(seen[kind]["opened"], 16, "{seen}");
            let got = seen[kind]["error"].as_str().unwrap_or("");
            assert!(got.contains(error), "{seen}");
        }
    }
}
