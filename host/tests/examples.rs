//! The root spin.toml's examples from every SDK, as `gantry up` serves them:
//! the static site at `/static/...` (the Rust file server over
//! functions/site), the Python example at `/hello-py/...` and the JavaScript
//! one at `/hello-js/...` (its router and path parameters).

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_root_app_serves_its_python_javascript_and_static_examples() {
    built(
        "functions/hello-py/app.wasm",
        "build it with functions/hello-py/build.sh (after scripts/setup.sh)",
    );
    built(
        "functions/hello-js/dist/hello-js.wasm",
        "build it with functions/hello-js/build.sh (after scripts/setup.sh)",
    );
    // Its own state folder, so the Python visit count starts at one.
    let state = tempfile::tempdir().expect("tempdir");
    let g = Gantry::start(
        &workspace().join("spin.toml"),
        &["--state-dir", state.path().to_str().expect("utf-8")],
    );

    // The static site.
    let r = get(&g.url("/static/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "text/html; charset=utf-8");
    let index =
        std::fs::read_to_string(workspace().join("functions/site/index.html")).expect("index.html");
    assert_eq!(r.text(), index);
    let r = get(&g.url("/static/index.html")).await;
    assert_eq!((r.status, r.text()), (200, index));
    for (path, ty) in [
        ("/static/css/site.css", "text/css; charset=utf-8"),
        ("/static/gantry.svg", "image/svg+xml"),
    ] {
        let r = get(&g.url(path)).await;
        assert_eq!((r.status, r.content_type().as_str()), (200, ty), "{path}");
    }
    for path in [
        "/static/missing.html",
        "/static/css/missing.css",
        "/static/notes.draft.md",
    ] {
        assert_eq!(get(&g.url(path)).await.status, 404, "{path}");
    }
    // Nothing outside the mount, however the path is spelled.
    for path in [
        "/static/../spin.toml",
        "/static/%2e%2e/spin.toml",
        "/static/..%2fspin.toml",
        "/static/css/../../spin.toml",
        "/static/css/%2e%2e/%2e%2e/Cargo.toml",
    ] {
        let r = get(&g.url(path)).await;
        assert!(r.status == 400 || r.status == 404, "{path}: {}", r.status);
        let text = r.text();
        assert!(
            !text.contains("spin_manifest_version") && !text.contains("[workspace]"),
            "{path} served a file outside the site: {text}"
        );
    }

    // Python: answers, and counts in the key-value store.
    for n in 1..=2 {
        let r = get(&g.url("/hello-py/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("Hello from Python! Visit {n}, GET /hello-py/\n")
        );
    }

    // JavaScript: its router, path parameters and query.
    let r = get(&g.url("/hello-js/")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello from JavaScript!\n")
    );
    let r = get(&g.url("/hello-js/hello/W%C3%B6rld")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, Wörld!\n"));
    let r = get(&g.url("/hello-js/items/books/42?sort=asc")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json; charset=utf-8");
    assert_eq!(
        r.json(),
        serde_json::json!({"kind": "books", "id": "42", "query": {"sort": "asc"}})
    );
    let r = send(
        "POST",
        &g.url("/hello-js/echo"),
        &[("content-type", "text/x-test")],
        b"round trip".to_vec(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "round trip"));
    assert_eq!(r.content_type(), "text/x-test");
    // Unmatched by its router: the router's 404.
    assert_eq!(get(&g.url("/hello-js/nothing/here")).await.status, 404);
}
