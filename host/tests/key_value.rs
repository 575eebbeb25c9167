//! Spin's key-value stores, served by the real host to real guests: `kv`
//! (spin-sdk 7, `spin:key-value@3.0.0`) and `kv-v2` (spin-sdk 5,
//! `fermyon:spin/key-value@2.0.0`), over SQLite files in Spin's layout.

mod common;
use common::servers;
use common::*;

use std::path::Path;

const APP: &str = r#"spin_manifest_version = 2
[application]
name = "kv"
[[trigger.http]]
route = "/kv/..."
component = "kv"
[[trigger.http]]
route = "/kv-v2/..."
component = "kv-v2"
[[trigger.http]]
route = "/other/..."
component = "other"
[component.kv]
source = "{wasm}/kv.wasm"
key_value_stores = ["default"STORES]
[component.kv-v2]
source = "{wasm}/kv_v2.wasm"
key_value_stores = ["default"STORES]
[component.other]
source = "{wasm}/kv.wasm"
"#;

fn app(extra_stores: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    wasm("kv");
    wasm("kv_v2");
    write_manifest(&APP.replace("STORES", extra_stores))
}

async fn put(g: &Gantry, path: &str, body: &str) -> Reply {
    send("PUT", &g.url(path), &[], body.as_bytes().to_vec()).await
}

fn rows(db: &Path) -> Vec<(String, String, Vec<u8>)> {
    let c = rusqlite::Connection::open(db).expect("open the store file");
    let mut stmt = c
        .prepare("SELECT store, key, value FROM spin_key_value ORDER BY store, key")
        .expect("Spin's table");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_interface_versions_share_the_default_store_in_spins_layout() {
    let (dir, manifest) = app("");
    let g = Gantry::start(&manifest, &[]);
    assert_eq!(put(&g, "/kv/default/a", "from v3").await.status, 200);
    let r = get(&g.url("/kv-v2/default/a")).await;
    assert_eq!((r.status, r.text()), (200, "from v3".to_string()));
    assert_eq!(put(&g, "/kv-v2/default/b", "from v2").await.status, 200);
    let r = get(&g.url("/kv/default/b")).await;
    assert_eq!((r.status, r.text()), (200, "from v2".to_string()));
    assert_eq!(
        get(&g.url("/kv/default")).await.json(),
        serde_json::json!(["a", "b"])
    );
    assert_eq!(get(&g.url("/kv-v2/default")).await.text(), "a\nb");
    assert_eq!(get(&g.url("/kv/default/a?exists")).await.text(), "true");
    assert_eq!(get(&g.url("/kv/default/zz?exists")).await.text(), "false");
    assert_eq!(get(&g.url("/kv/default/zz")).await.status, 404);
    let r = send("DELETE", &g.url("/kv-v2/default/a"), &[], vec![]).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&g.url("/kv/default/a")).await.status, 404);
    // Deleting what is not there is no error (Spin's contract).
    let r = send("DELETE", &g.url("/kv/default/a"), &[], vec![]).await;
    assert_eq!(r.status, 200);
    // Spin's file and table, beside spin.toml: an app keeps its data when
    // it moves between `spin up` and `gantry up`.
    let db = dir.path().join(".spin/sqlite_key_value.db");
    assert_eq!(
        rows(&db),
        vec![("default".into(), "b".into(), b"from v2".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_not_granted_is_access_denied_in_both_versions() {
    let (_dir, manifest) = app("");
    let g = Gantry::start(&manifest, &[]);
    for path in ["/kv/secret/a", "/kv-v2/secret/a", "/other/default/a"] {
        let r = get(&g.url(path)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains("AccessDenied"), "{path}: {}", r.text());
    }
    // And a component granted nothing cannot write the store either.
    let r = put(&g, "/other/default/x", "no").await;
    assert_eq!(r.status, 403);
    assert_eq!(get(&g.url("/kv/default/x")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_label_no_store_backs_stops_the_load_naming_it() {
    let (_dir, manifest) = app(r#", "orders""#);
    let (_, err) = gantry_fails(
        &[
            "up",
            "-f",
            manifest.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("GANTRY_NONE", "")],
    );
    assert!(err.contains("spin.toml:"), "{err}");
    assert!(err.contains("key_value_stores[1]"), "{err}");
    assert!(err.contains("[key_value_store.orders]"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_config_places_stores_and_the_state_dir() {
    let (dir, manifest) = app(r#", "orders""#);
    let rc = dir.path().join("runtime-config.toml");
    std::fs::write(
        &rc,
        "state_dir = \"state\"\n[key_value_store.orders]\ntype = \"spin\"\npath = \"data/orders.db\"\n",
    )
    .expect("write runtime config");
    let g = Gantry::start(
        &manifest,
        &["--runtime-config-file", rc.to_str().expect("utf-8")],
    );
    assert_eq!(put(&g, "/kv/orders/o1", "3 apples").await.status, 200);
    assert_eq!(put(&g, "/kv-v2/default/d", "x").await.status, 200);
    assert_eq!(get(&g.url("/kv-v2/orders/o1")).await.text(), "3 apples");
    drop(g);
    assert_eq!(
        rows(&dir.path().join("data/orders.db")),
        vec![("orders".into(), "o1".into(), b"3 apples".to_vec())]
    );
    assert_eq!(rows(&dir.path().join("state/sqlite_key_value.db")).len(), 1);
    assert!(!dir.path().join(".spin").exists(), "state_dir moved it");

    // --state-dir wins over the file's state_dir.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let g = Gantry::start(
        &manifest,
        &[
            "--runtime-config-file",
            rc.to_str().expect("utf-8"),
            "--state-dir",
            elsewhere.path().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(get(&g.url("/kv/default/d")).await.status, 404);
    assert_eq!(put(&g, "/kv/default/e", "y").await.status, 200);
    drop(g);
    assert_eq!(rows(&elsewhere.path().join("sqlite_key_value.db")).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let (dir, manifest) = app("");
    let mut g = Gantry::start(&manifest, &[]);
    const N: usize = 40;
    for i in 0..N {
        let r = put(&g, &format!("/kv/default/k{i:02}"), &format!("v{i}")).await;
        assert_eq!(r.status, 200);
    }
    // SIGKILL: no shutdown, no flush; only what SQLite had written counts.
    g.child.kill().expect("kill -9");
    g.child.wait().expect("reaped");
    drop(g);
    let g = Gantry::start(&manifest, &[]);
    let keys = get(&g.url("/kv/default")).await.json();
    assert_eq!(keys.as_array().map(Vec::len), Some(N), "{keys}");
    for i in 0..N {
        let r = get(&g.url(&format!("/kv-v2/default/k{i:02}"))).await;
        assert_eq!(r.text(), format!("v{i}"));
    }
    assert!(dir.path().join(".spin/sqlite_key_value.db").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_never_see_the_database_locked() {
    let (_dir, manifest) = app("");
    let g = Gantry::start(&manifest, &[]);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = if i % 2 == 0 {
            g.url("/kv/default/counter?incr")
        } else {
            g.url(&format!("/kv-v2/default/w{i}"))
        };
        tasks.push(tokio::spawn(async move {
            let method = if i % 2 == 0 { "POST" } else { "PUT" };
            send(method, &url, &[], b"x".to_vec()).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The increments are not atomic (read, then write), so the count says
    // only that every request reached the store; the writes all landed.
    let keys = get(&g.url("/kv/default")).await.json();
    assert_eq!(keys.as_array().map(Vec::len), Some(33), "{keys}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_keys_and_values_are_refused_to_the_guest_only() {
    let (_dir, manifest) = app("");
    let g = Gantry::start(&manifest, &[]);
    let long_key = "k".repeat(2000);
    let r = put(&g, &format!("/kv/default/{long_key}"), "v").await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("at most 1024 bytes"), "{}", r.text());
    let big = "v".repeat((1 << 20) + 1);
    let r = put(&g, "/kv-v2/default/big", &big).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("at most 1048576 bytes"), "{}", r.text());
    // The host and the store are fine.
    assert_eq!(put(&g, "/kv/default/small", "ok").await.status, 200);
    assert_eq!(get(&g.url("/kv-v2/default/small")).await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_state_dir_or_database_stops_the_start_naming_it() {
    let (dir, manifest) = app("");
    // A corrupt database file where the default store lives.
    std::fs::create_dir_all(dir.path().join(".spin")).expect("mkdir");
    std::fs::write(
        dir.path().join(".spin/sqlite_key_value.db"),
        b"this is not a database, it only sits where one should be......",
    )
    .expect("write");
    let args = [
        "up",
        "-f",
        manifest.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let (_, err) = gantry_fails(&args, &[("GANTRY_NONE", "")]);
    assert!(err.contains("sqlite_key_value.db"), "{err}");
    assert!(err.contains("not a usable key-value database"), "{err}");
    // A state folder that cannot be created.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let mut with_state = args.to_vec();
    let state = file.join("state");
    with_state.extend(["--state-dir", state.to_str().expect("utf-8")]);
    let (_, err) = gantry_fails(&with_state, &[("GANTRY_NONE", "")]);
    assert!(err.contains("cannot create the state folder"), "{err}");
}

/// Malformed runtime-config files: each refused by `gantry check` with the
/// file, line and field.
#[test]
fn malformed_runtime_configs_are_refused_with_file_line_and_field() {
    wasm("kv");
    wasm("kv_v2");
    let (dir, manifest) = write_manifest(&APP.replace("STORES", ""));
    let cases: &[(&str, &str, &str)] = &[
        (
            "[key_value_store.a]\ntype = \"memcached\"\n",
            "key_value_store.a.type",
            "unknown key-value store type",
        ),
        (
            "[key_value_store.a]\npath = \"x.db\"\n",
            "key_value_store.a.type",
            "missing `type`",
        ),
        (
            "[key_value_store.a]\ntype = \"redis\"\n",
            "key_value_store.a.url",
            "needs `url`",
        ),
        (
            "[key_value_store.a]\ntype = \"redis\"\nurl = \"http://x\"\n",
            "key_value_store.a.url",
            "not a Redis URL",
        ),
        (
            "[key_value_store.a]\ntype = \"spin\"\nurl = \"redis://x\"\n",
            "key_value_store.a.url",
            "takes no `url`",
        ),
        (
            "[key_value_store.a]\ntype = \"redis\"\nurl = \"redis://x:1\"\npath = \"p\"\n",
            "key_value_store.a.path",
            "takes no `path`",
        ),
        (
            "[key_value_store.a]\ntype = \"spin\"\ncolour = \"red\"\n",
            "key_value_store.a",
            "unknown field `colour`",
        ),
        (
            "[key_value_store.a]\ntype = \"azure_cosmos\"\n",
            "key_value_store.a.type",
            "not supported by Gantry",
        ),
        (
            "[key_value_store.\"b c\"]\ntype = \"spin\"\n",
            "key_value_store.b c",
            "not a store label",
        ),
        (
            "[key_value_store.a]\ntype = \"spin\"\npath = \"\"\n",
            "key_value_store.a.path",
            "the path is empty",
        ),
        (
            "[key_value_store.a]\ntype = 7\n",
            "key_value_store.a",
            "invalid type",
        ),
        (
            "[sqlite_database.db]\ntype = \"libsql\"\n",
            "sqlite_database.db.type",
            "unknown SQLite database type",
        ),
        (
            "[sqlite_database.db]\n",
            "sqlite_database.db.type",
            "missing `type`",
        ),
        (
            "[sqlite_database.db]\ntype = \"spin\"\nurl = \"x\"\n",
            "sqlite_database.db.url",
            "takes no `url`",
        ),
        (
            "[llm_compute]\ntype = \"spin\"\n",
            "llm_compute",
            "not supported by Gantry",
        ),
        ("state_dir = 3\n", "state_dir", "invalid type"),
        ("colour = \"red\"\n", "colour", "unknown field `colour`"),
        (
            "[key_value_store.a\ntype = \"spin\"\n",
            "key_value_store",
            "",
        ),
    ];
    for (i, (text, field, message)) in cases.iter().enumerate() {
        let rc = dir.path().join(format!("rc{i}.toml"));
        std::fs::write(&rc, text).expect("write runtime config");
        let (_, err) = gantry_fails(
            &[
                "check",
                "-f",
                manifest.to_str().expect("utf-8"),
                "--no-cache",
                "--runtime-config-file",
                rc.to_str().expect("utf-8"),
            ],
            &[("GANTRY_NONE", "")],
        );
        let place = format!("rc{i}.toml:");
        assert!(
            err.contains(&place)
                && err.contains(&format!("field `{field}"))
                && err.contains(message),
            "case {i} ({text:?}): want {place}LINE:COL: field `{field}`: ...{message}...; got:\n{err}"
        );
        // The line is named: a number after the file name.
        let after = err.split(&place).nth(1).unwrap_or("");
        assert!(
            after.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "case {i}: no line number in {err}"
        );
    }
}

/// The app with a store `shared` on the Redis at `url`, and its runtime
/// config.
fn redis_app(url: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, manifest) = app(r#", "shared""#);
    let rc = servers::runtime_config(
        &manifest,
        &format!("[key_value_store.shared]\ntype = \"redis\"\nurl = \"{url}\"\n"),
    );
    (dir, manifest, rc)
}

/// A Redis-backed store: two `gantry up` processes (two replicas) share it,
/// through both interface versions, beside the SQLite `default` store.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_share_a_redis_backed_store() {
    let redis = servers::RedisServer::start();
    let (_dir, manifest, rc) = redis_app(&redis.url());
    let rc = rc.to_str().expect("utf-8");
    let a = Gantry::start(&manifest, &["--runtime-config-file", rc]);
    let b = Gantry::start(&manifest, &["--runtime-config-file", rc]);
    assert_eq!(put(&a, "/kv/shared/k1", "from a").await.status, 200);
    assert_eq!(put(&b, "/kv-v2/shared/k2", "from b").await.status, 200);
    let r = get(&b.url("/kv/shared/k1")).await;
    assert_eq!((r.status, r.text()), (200, "from a".to_string()));
    let r = get(&a.url("/kv-v2/shared/k2")).await;
    assert_eq!((r.status, r.text()), (200, "from b".to_string()));
    assert_eq!(get(&a.url("/kv/shared/k2?exists")).await.text(), "true");
    assert_eq!(
        get(&b.url("/kv/shared")).await.json(),
        serde_json::json!(["k1", "k2"])
    );
    // A counter read and written by each replica in turn sees the other's
    // every write (get-then-set is not atomic, so the turns are sequential).
    for i in 1..=20 {
        let g = if i % 2 == 0 { &a } else { &b };
        let r = send("POST", &g.url("/kv/shared/hits?incr"), &[], Vec::new()).await;
        assert_eq!((r.status, r.text()), (200, i.to_string()));
    }
    // The data is in Redis under the key the guest named, as Spin keeps it.
    let mut c = redis.connection();
    let v: Vec<u8> = redis::cmd("GET").arg("k1").query(&mut c).expect("GET");
    assert_eq!(v, b"from a");
    assert_eq!(
        put(&a, "/kv/default/local", "sqlite").await.status,
        200,
        "the default store stays SQLite"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("local")
        .query(&mut c)
        .expect("EXISTS");
    assert!(!exists);
    assert_eq!(
        send("DELETE", &b.url("/kv/shared/k1"), &[], Vec::new())
            .await
            .status,
        200
    );
    assert_eq!(get(&a.url("/kv-v2/shared/k1")).await.status, 404);
}

/// An unreachable Redis stops the start naming the store; a Redis that goes
/// away while serving costs each request an error within the bound, never a
/// hang, and the host keeps serving its other stores.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_is_a_clear_error_at_start_and_per_request() {
    let dead = free_port();
    let (_dir, manifest, rc) = redis_app(&format!("redis://127.0.0.1:{dead}"));
    let mut args = up_args(&manifest);
    args.extend([
        "--runtime-config-file".into(),
        rc.to_str().expect("utf-8").into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, err) = gantry_fails(&args, &[("GANTRY_NONE", "")]);
    assert!(err.contains("key-value store \"shared\""), "{err}");
    assert!(err.contains("runtime-config.toml:1:1"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{dead}")), "{err}");

    let mut redis = servers::RedisServer::start();
    let (_dir, manifest, rc) = redis_app(&redis.url());
    let g = Gantry::start(
        &manifest,
        &["--runtime-config-file", rc.to_str().expect("utf-8")],
    );
    assert_eq!(put(&g, "/kv/shared/a", "1").await.status, 200);
    redis.stop();
    let started = std::time::Instant::now();
    let r = get(&g.url("/kv/shared/a")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("127.0.0.1"), "{}", r.text());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(put(&g, "/kv/default/still", "serving").await.status, 200);
}

/// `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) over the same
/// stores, on SQLite and on Redis: increments from many concurrent requests
/// lose none, compare-and-swap refuses a stale value, batches round-trip,
/// and an ungranted bucket is access-denied.
async fn wasi_keyvalue_round_trip(g: &Gantry, label: &str) {
    let url = |p: &str| g.url(&format!("/kv/{label}{p}"));
    // Atomic increments, 100 of them 40 at a time (within the component's
    // share of the instance pool).
    use futures::StreamExt as _;
    let adds: Vec<String> = (0..100).map(|_| url("/hits?add=2")).collect();
    let replies: Vec<Reply> =
        futures::stream::iter(adds.iter().map(|u| send("POST", u, &[], vec![])))
            .buffer_unordered(40)
            .collect()
            .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(get(&url("/hits")).await.text(), "200", "no increment lost");
    assert_eq!(
        send("POST", &url("/hits?add=-200"), &[], vec![])
            .await
            .text(),
        "0"
    );
    // Compare-and-swap.
    let r = send("PUT", &url("/slot?cas"), &[], b"first".to_vec()).await;
    assert_eq!((r.status, r.text()), (200, "swapped\n".to_string()));
    let r = send("PUT", &url("/slot?cas"), &[], b"again".to_vec()).await;
    assert_eq!(
        (r.status, r.text()),
        (409, "first".to_string()),
        "it has a value now"
    );
    let r = send("PUT", &url("/slot?cas=first"), &[], b"second".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&url("/slot")).await.text(), "second");
    // Batches.
    let r = send("PUT", &url("?many"), &[], b"a=1\nb=2\nc=3\n".to_vec()).await;
    assert_eq!((r.status, r.text()), (200, "stored 3\n".to_string()));
    assert_eq!(
        get(&url("?many=a,c,zz")).await.json(),
        serde_json::json!({"a": "1", "c": "3", "zz": null})
    );
    assert_eq!(
        send("DELETE", &url("?many=a,b"), &[], vec![]).await.status,
        200
    );
    let listed = get(&url("?list")).await.json();
    assert_eq!(listed, serde_json::json!(["c", "hits", "slot"]), "{listed}");
    // A value that is not a number cannot be incremented.
    let r = send("POST", &url("/slot?add=1"), &[], vec![]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("integer"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn wasi_keyvalue_on_sqlite_and_on_redis() {
    let redis = servers::RedisServer::start();
    let (_dir, manifest, rc) = redis_app(&redis.url());
    let g = Gantry::start(
        &manifest,
        &["--runtime-config-file", rc.to_str().expect("utf-8")],
    );
    wasi_keyvalue_round_trip(&g, "default").await;
    wasi_keyvalue_round_trip(&g, "shared").await;
    // Not granted: the `other` component has no store.
    let r = send("POST", &g.url("/other/default/x?add=1"), &[], vec![]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Through spin-sdk's interface, the counter is the same decimal text.
    assert_eq!(
        send("POST", &g.url("/kv/default/n?add=41"), &[], vec![])
            .await
            .text(),
        "41"
    );
    assert_eq!(
        send("POST", &g.url("/kv-v2/default/n"), &[], vec![])
            .await
            .status,
        405
    );
    assert_eq!(get(&g.url("/kv-v2/default/n")).await.text(), "41");
}

/// Listing a store is bounded: past 10,000 keys `get-keys` and `list-keys`
/// answer an error to the guest instead of an answer of any size; batches
/// are bounded to 1,000 keys.
#[tokio::test(flavor = "multi_thread")]
async fn listing_and_batches_are_bounded() {
    let (_dir, manifest) = app("");
    let g = Gantry::start(&manifest, &[]);
    for chunk in 0..10 {
        let body: String = (0..1000)
            .map(|i| format!("k{chunk:02}{i:04}=v\n"))
            .collect();
        let r = send("PUT", &g.url("/kv/default?many"), &[], body.into_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let keys = get(&g.url("/kv/default")).await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.json().as_array().map(Vec::len), Some(10_000));
    let r = send(
        "PUT",
        &g.url("/kv/default?many"),
        &[],
        b"one-more=v\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for path in ["/kv/default", "/kv/default?list"] {
        let r = get(&g.url(path)).await;
        assert_eq!(r.status, 500, "{path}");
        assert!(
            r.text().contains("more than 10000 keys"),
            "{path}: {}",
            r.text()
        );
    }
    let body: String = (0..1001).map(|i| format!("b{i}=v\n")).collect();
    let r = send("PUT", &g.url("/kv/default?many"), &[], body.into_bytes()).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("at most 1000"), "{}", r.text());
}
