//! `gantry up --build --watch`: an edit to a file a component's build
//! `watch` globs match rebuilds that component alone and swaps the result
//! in while the app serves; a broken edit fails the build, which is shown,
//! and the running version keeps serving. The app is a copy of the
//! JavaScript example (`functions/hello-js`), built by its real toolchain.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A copy of functions/hello-js in a fresh folder, sharing its installed
/// node_modules, plus a Rust component with a build that must not run.
fn js_app() -> tempfile::TempDir {
    let example = workspace().join("functions/hello-js");
    built(
        "functions/hello-js/dist/hello-js.wasm",
        "build it with functions/hello-js/build.sh (after scripts/setup.sh)",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .expect("cp");
        assert!(status.success(), "cp {} {}", from.display(), to.display());
    };
    for f in [
        "src",
        "build",
        "dist",
        "build.mjs",
        "package.json",
        "package-lock.json",
    ] {
        copy(&example.join(f), dir.path());
    }
    std::os::unix::fs::symlink(
        example.join("node_modules"),
        dir.path().join("node_modules"),
    )
    .expect("link node_modules");
    std::fs::write(
        dir.path().join("spin.toml"),
        format!(
            r#"spin_manifest_version = 2
[application]
name = "watched"
[[trigger.http]]
route = "/hello-js/..."
component = "hello-js"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.hello-js]
source = "dist/hello-js.wasm"
exclude_files = ["**/node_modules"]
[component.hello-js.build]
command = "npm run build"
watch = ["src/**/*.js"]
[component.alpha]
source = "{alpha}"
[component.alpha.build]
command = "echo built >> alpha-builds.txt"
watch = ["alpha-src/*.txt"]
"#,
            alpha = wasm("alpha").display()
        ),
    )
    .expect("write spin.toml");
    std::fs::create_dir(dir.path().join("alpha-src")).expect("mkdir");
    std::fs::write(dir.path().join("alpha-src/a.txt"), "one").expect("write");
    dir
}

async fn wait_for_body(g: &Gantry, path: &str, needle: &str, within: Duration) -> String {
    let t = Instant::now();
    loop {
        let r = get(&g.url(path)).await;
        if r.status == 200 && r.text().contains(needle) {
            return r.text();
        }
        assert!(
            t.elapsed() < within,
            "{path} still answers {} {:?} after {within:?}; log:\n{}",
            r.status,
            r.text(),
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_source_is_rebuilt_and_swapped_in_and_a_broken_one_keeps_the_old() {
    let dir = js_app();
    let manifest = dir.path().join("spin.toml");
    let g = Gantry::start(&manifest, &["--build", "--watch"]);
    let first = wait_for_body(
        &g,
        "/hello-js/",
        "Hello from JavaScript!",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(first, "Hello from JavaScript!\n");
    let alpha_builds = || {
        std::fs::read_to_string(dir.path().join("alpha-builds.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(alpha_builds(), 1, "--build builds every component once");

    // Traffic all along: not one request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = g.url("/hello-js/hello/watch");
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&url).await;
                if r.status == 200 && r.text() == "Hello, watch!\n" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let index = dir.path().join("src/index.js");
    let source = std::fs::read_to_string(&index).expect("index.js");
    assert!(source.contains("Hello from JavaScript!"));
    std::fs::write(
        &index,
        source.replace(
            "Hello from JavaScript!",
            "Hello from the rebuilt JavaScript!",
        ),
    )
    .expect("edit index.js");
    let t = Instant::now();
    let body = wait_for_body(&g, "/hello-js/", "rebuilt", Duration::from_secs(180)).await;
    println!("edit to serving the rebuilt component: {:?}", t.elapsed());
    assert_eq!(body, "Hello from the rebuilt JavaScript!\n");
    let log = g.stderr();
    assert!(
        log.contains("watched sources changed: rebuilding") && log.contains("component swapped"),
        "{log}"
    );
    assert_eq!(alpha_builds(), 1, "only the edited component is rebuilt");

    // A source that does not build: shown, and the rebuilt version serves on.
    std::fs::write(&index, "router.get('/', () => {\n").expect("break index.js");
    let t = Instant::now();
    while !g.stderr().contains("build of component hello-js failed") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no failed build reported:\n{}",
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = g.stderr();
    assert!(log.contains("the running version keeps serving"), "{log}");
    // The build's own message (esbuild's) is shown too.
    assert!(log.contains("src/index.js"), "{log}");
    let r = get(&g.url("/hello-js/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from the rebuilt JavaScript!\n");
    let state = get(&g.admin_url("/components")).await.json();
    let js = state["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == "hello-js"))
        .cloned()
        .expect("hello-js in /components");
    assert!(
        js["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("build of component hello-js failed")),
        "{js}"
    );
    assert_eq!(js["swaps"], 1, "{js}");

    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} requests served during the rebuilds, {failed} failed");
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed during the rebuild and swap");

    // The other component's watch works on its own.
    std::fs::write(dir.path().join("alpha-src/a.txt"), "two").expect("write");
    let t = Instant::now();
    while alpha_builds() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "alpha was not rebuilt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without --build, --watch follows the `.wasm` files only: source edits
/// run no build.
#[tokio::test(flavor = "multi_thread")]
async fn watch_without_build_runs_no_build() {
    let dir = js_app();
    let g = Gantry::start(&dir.path().join("spin.toml"), &["--watch"]);
    std::fs::write(dir.path().join("alpha-src/a.txt"), "two").expect("write");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!dir.path().join("alpha-builds.txt").exists());
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
}
