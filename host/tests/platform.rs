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
