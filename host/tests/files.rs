//! `files` and `exclude_files`: the `fileserver` example (spin-sdk 7)
//! served by the real host, reading the app files its manifest entry
//! gives it, read-only, and nothing else.

mod common;
use common::*;

use std::path::Path;

const APP: &str = r#"spin_manifest_version = 2
[application]
name = "files"
[[trigger.http]]
route = "/static/..."
component = "site"
[[trigger.http]]
route = "/globbed/..."
component = "globbed"
[[trigger.http]]
route = "/bare/..."
component = "bare"
[component.site]
source = "{wasm}/fileserver.wasm"
files = [{ source = "site", destination = "/" }]
[component.globbed]
source = "{wasm}/fileserver.wasm"
files = ["site/**/*", "top.txt"]
exclude_files = ["**/*.draft.md"]
[component.bare]
source = "{wasm}/fileserver.wasm"
"#;

/// The app folder: spin.toml, a copy of `functions/site`, and a file that
/// no component is given.
fn app(manifest: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    wasm("fileserver");
    let (dir, path) = write_manifest(manifest);
    copy_dir(
        &workspace().join("functions/site"),
        &dir.path().join("site"),
    );
    std::fs::write(dir.path().join("top.txt"), "top\n").expect("write");
    std::fs::write(dir.path().join("secret.txt"), "not given\n").expect("write");
    (dir, path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read site") {
        let e = e.expect("entry");
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mounted_folder_is_served_with_its_types_and_404s() {
    let (_dir, manifest) = app(APP);
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/static/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "text/html; charset=utf-8");
    assert!(r.text().contains("Served by Gantry"));
    let r = get(&g.url("/static/css/site.css")).await;
    assert_eq!(
        (r.status, r.content_type().as_str()),
        (200, "text/css; charset=utf-8")
    );
    let r = get(&g.url("/static/gantry.svg")).await;
    assert_eq!(
        (r.status, r.content_type().as_str()),
        (200, "image/svg+xml")
    );
    assert_eq!(get(&g.url("/static/missing.html")).await.status, 404);
    // Nothing outside the mount: not spin.toml, not a sibling file.
    for path in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/css/../../spin.toml",
    ] {
        let r = get(&g.url(path)).await;
        assert!(
            r.status == 400 || r.status == 404,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("not given") && !r.text().contains("spin_manifest_version"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn globs_mount_matches_at_their_paths_without_the_excluded() {
    let (_dir, manifest) = app(APP);
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/globbed/site/index.html")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&g.url("/globbed/top.txt")).await.text(), "top\n");
    assert_eq!(get(&g.url("/globbed/site/css/site.css")).await.status, 200);
    // Excluded, and never given.
    assert_eq!(
        get(&g.url("/globbed/site/notes.draft.md")).await.status,
        404
    );
    assert_eq!(get(&g.url("/globbed/secret.txt")).await.status, 404);
    assert_eq!(get(&g.url("/globbed/spin.toml")).await.status, 404);
    // The mounted folder has the draft; the globbed tree does not.
    assert_eq!(get(&g.url("/static/notes.draft.md")).await.status, 200);
    // A component given no files sees none.
    assert_eq!(get(&g.url("/bare/")).await.status, 404);
    assert_eq!(get(&g.url("/bare/site/index.html")).await.status, 404);
}

/// Every way of naming a path outside the app folder is refused at load,
/// with the file, line and field.
#[test]
fn files_that_leave_the_app_folder_are_refused_at_load() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("x.txt"), "x").expect("write");
    let cases: Vec<(String, &str)> = vec![
        (r#"files = ["../*.txt"]"#.into(), "leaves the app folder"),
        (r#"files = ["/etc/passwd"]"#.into(), "leaves the app folder"),
        (
            r#"files = [{ source = "../", destination = "/" }]"#.into(),
            "leaves the app folder",
        ),
        (
            r#"files = [{ source = "site", destination = "relative" }]"#.into(),
            "must be an absolute guest path",
        ),
        (
            r#"files = [{ source = "site", destination = "/a/../.." }]"#.into(),
            "must be an absolute guest path",
        ),
        (
            r#"files = [{ source = "missing", destination = "/" }]"#.into(),
            "missing",
        ),
        (
            r#"files = [{ source = "site" }]"#.into(),
            "missing `destination`",
        ),
        (r#"files = [42]"#.into(), "an entry is a glob string"),
        (
            r#"exclude_files = ["../x"]"#.into(),
            "leaves the app folder",
        ),
        (r#"files = ["site/[.txt"]"#.into(), "is not a glob"),
        (r#"files = ["link/*"]"#.into(), "outside the app folder"),
        (
            r#"files = [{ source = "link", destination = "/" }]"#.into(),
            "outside the app folder",
        ),
        (r#"files = ["site/**/*"]"#.into(), "outside the app folder"),
    ];
    for (line, want) in cases {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"f\"\n[[trigger.http]]\nroute = \
             \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"{{wasm}}/fileserver.wasm\"\n\
             {line}\n"
        );
        let (dir, manifest) = app(&text);
        // A link out of the app folder, by itself and inside a mounted one.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("x.txt"), dir.path().join("site/x.txt"))
            .expect("symlink");
        let mut args = up_args(&manifest);
        args.push("--no-cache".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, err) = gantry_fails(&args, &[("GANTRY_NONE", "")]);
        assert!(err.contains("spin.toml:9:"), "{line}: {err}");
        assert!(err.contains("component.c."), "{line}: {err}");
        assert!(err.contains(want), "{line}: wanted {want:?} in {err}");
    }
}
