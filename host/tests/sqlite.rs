//! Spin's SQLite databases, served by the real host to the `counter`
//! example (spin-sdk 7: `spin:sqlite@3.1.0` beside `spin:key-value@3.0.0`).

mod common;
use common::*;

const APP: &str = r#"spin_manifest_version = 2
[application]
name = "counter"
[[trigger.http]]
route = "/counter"
component = "counter"
[[trigger.http]]
route = "/no-db"
component = "no-db"
[component.counter]
source = "{wasm}/counter.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
[component.no-db]
source = "{wasm}/counter.wasm"
key_value_stores = ["default"]
"#;

fn visits(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).expect("open");
    c.query_row("SELECT count(*) FROM visits", [], |r| r.get(0))
        .expect("the visits table")
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_counts_records_and_keeps_both_across_a_restart() {
    wasm("counter");
    let (dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);
    for n in 1..=3 {
        let r = get(&g.url("/counter")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["count"], n, "{body}");
        let recent = body["recent"].as_array().expect("recent");
        assert_eq!(recent.len(), n as usize);
        assert_eq!(recent[0]["path"], "/counter");
    }
    drop(g);
    let g = Gantry::start(&manifest, &[]);
    let body = get(&g.url("/counter")).await.json();
    assert_eq!(body["count"], 4, "{body}");
    assert_eq!(body["recent"].as_array().map(Vec::len), Some(4));
    // Spin's files, beside spin.toml.
    assert_eq!(visits(&dir.path().join(".spin/sqlite_db.db")), 4);
    assert!(dir.path().join(".spin/sqlite_key_value.db").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_not_granted_is_access_denied() {
    wasm("counter");
    let (_dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/no-db")).await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("sqlite: Error::AccessDenied"),
        "{}",
        r.text()
    );
    // The counter itself still works, and the denied request wrote nothing.
    let body = get(&g.url("/counter")).await.json();
    assert_eq!(body["recent"].as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_flags_run_before_serving_and_bad_sql_stops_the_start() {
    wasm("counter");
    let (dir, manifest) = write_manifest(APP);
    let migration = dir.path().join("migration.sql");
    std::fs::write(
        &migration,
        "CREATE TABLE visits (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         at TEXT NOT NULL DEFAULT 'then', path TEXT NOT NULL);\n\
         INSERT INTO visits (path) VALUES ('/seeded');\n",
    )
    .expect("write migration");
    let at_file = format!("@{}", migration.display());
    let g = Gantry::start(
        &manifest,
        &[
            "--sqlite",
            &at_file,
            "--sqlite",
            "INSERT INTO visits (path) VALUES ('/second')",
        ],
    );
    let body = get(&g.url("/counter")).await.json();
    let paths: Vec<&str> = body["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter_map(|v| v["path"].as_str())
        .collect();
    assert_eq!(paths, ["/counter", "/second", "/seeded"], "{body}");
    drop(g);

    let (_, err) = gantry_fails(
        &[
            "up",
            "-f",
            manifest.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--sqlite",
            "SELEKT nonsense",
        ],
        &[("GANTRY_NONE", "")],
    );
    assert!(err.contains("--sqlite \"SELEKT nonsense\" failed"), "{err}");
    assert!(err.contains("syntax error"), "{err}");
}

/// The counter's increment is atomic (`wasi:keyvalue/atomics`): 200
/// visits, 40 at a time, count 200, and each is recorded once in SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_visits_are_all_counted() {
    wasm("counter");
    let (dir, manifest) = write_manifest(APP);
    let g = Gantry::start(&manifest, &[]);
    let url = g.url("/counter");
    // 40 at a time: within the component's share of the instance pool.
    use futures::StreamExt as _;
    let replies: Vec<Reply> = futures::stream::iter((0..200).map(|_| get(&url)))
        .buffer_unordered(40)
        .collect()
        .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut counts: Vec<i64> = replies
        .iter()
        .map(|r| r.json()["count"].as_i64().unwrap_or(-1))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        (1..=200).collect::<Vec<i64>>(),
        "each visit its own count"
    );
    drop(g);
    assert_eq!(visits(&dir.path().join(".spin/sqlite_db.db")), 200);
}
