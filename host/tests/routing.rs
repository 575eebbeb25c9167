//! Spin's routing rules and `spin-*` headers, end to end: one component
//! (`alpha`, which echoes the headers it gets) mounted under several ids.

mod common;
use common::*;

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "routing"

[[trigger.http]]
route = "/..."
component = "fallback"
[[trigger.http]]
route = "/api/..."
component = "api"
[[trigger.http]]
route = "/api/v1/..."
component = "api-v1"
[[trigger.http]]
route = "/exact"
component = "exact"
[[trigger.http]]
route = "/users/:id"
component = "user"
[[trigger.http]]
route = "/posts/:post_id/:path_segment"
component = "user"
[[trigger.http]]
route = { private = true }
component = "hidden"

[component.fallback]
source = "{wasm}/alpha.wasm"
[component.api]
source = "{wasm}/alpha.wasm"
[component.api-v1]
source = "{wasm}/alpha.wasm"
[component.exact]
source = "{wasm}/alpha.wasm"
[component.user]
source = "{wasm}/alpha.wasm"
[component.hidden]
source = "{wasm}/alpha.wasm"
"#;

async fn spin(g: &Gantry, path: &str) -> serde_json::Value {
    let r = get(&g.url(path)).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn most_specific_route_wins_with_spin_headers() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(MANIFEST);
    let g = Gantry::start(&manifest, &[]);

    // Exact beats every wildcard; a trailing slash is not significant.
    for path in ["/exact", "/exact/"] {
        let h = spin(&g, path).await;
        assert_eq!(h["spin-raw-component-route"], "/exact", "{path}");
        assert_eq!(h["spin-component-route"], "/exact");
        assert_eq!(h["spin-matched-route"], "/exact");
        assert_eq!(h["spin-path-info"], "");
    }
    // Below an exact route, the wildcard takes it.
    let h = spin(&g, "/exact/more").await;
    assert_eq!(h["spin-raw-component-route"], "/...");
    assert_eq!(h["spin-path-info"], "/exact/more");
    assert_eq!(h["spin-component-route"], "");

    // Longest wildcard prefix wins.
    let h = spin(&g, "/api/v1/things?x=1").await;
    assert_eq!(h["spin-raw-component-route"], "/api/v1/...");
    assert_eq!(h["spin-matched-route"], "/api/v1/...");
    assert_eq!(h["spin-component-route"], "/api/v1");
    assert_eq!(h["spin-path-info"], "/things");
    let full = h["spin-full-url"].as_str().unwrap();
    assert_eq!(full, format!("http://{}/api/v1/things?x=1", g.addr));
    assert_eq!(h["spin-base-path"], "/");
    assert!(
        h["spin-client-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let h = spin(&g, "/api").await;
    assert_eq!(h["spin-raw-component-route"], "/api/...");
    assert_eq!(h["spin-path-info"], "");
    let h = spin(&g, "/api/").await;
    assert_eq!(h["spin-path-info"], "/");
    let h = spin(&g, "/api/x/y/").await;
    assert_eq!(h["spin-path-info"], "/x/y/");
    let h = spin(&g, "/apix").await;
    assert_eq!(h["spin-raw-component-route"], "/...");

    // Named segments.
    let h = spin(&g, "/users/42").await;
    assert_eq!(h["spin-raw-component-route"], "/users/:id");
    assert_eq!(h["spin-path-match-id"], "42");
    // Header names as Spin forms them: underscores become hyphens.
    let h = spin(&g, "/posts/7/intro").await;
    assert_eq!(h["spin-path-match-post-id"], "7");
    assert_eq!(h["spin-path-match-path-segment"], "intro");
    assert!(h.get("spin-path-match-post_id").is_none());

    // A client cannot forge the host's headers.
    let r = send(
        "GET",
        &g.url("/api/real"),
        &[
            ("spin-path-info", "/forged"),
            ("spin-component-route", "/x"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.json()["headers"]["spin-path-info"], "/real");
    assert_eq!(r.json()["headers"]["spin-component-route"], "/api");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_components_are_never_routed() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "private"
[[trigger.http]]
route = "/public"
component = "public"
[[trigger.http]]
route = { private = true }
component = "hidden"
[component.public]
source = "{wasm}/alpha.wasm"
[component.hidden]
source = "{wasm}/alpha.wasm"
"#,
    );
    let g = Gantry::start(&manifest, &[]);
    assert_eq!(get(&g.url("/public")).await.status, 200);
    for path in ["/hidden", "/", "/private"] {
        assert_eq!(get(&g.url(path)).await.status, 404, "{path}");
    }
}
