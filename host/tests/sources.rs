//! What a manifest can give besides a local `.wasm`: `static_response`
//! routes answered by the host, and `{ url, digest }` sources downloaded
//! once from a real HTTP server, checked and kept by digest.

mod common;
use common::*;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn static_responses_are_answered_by_the_host() {
    wasm("alpha");
    let (_dir, manifest) = write_manifest(
        r#"
spin_manifest_version = 2
[application]
name = "static"
[[trigger.http]]
route = "/teapot"
static_response = { status_code = 418, headers = { "content-type" = "text/plain", "x-teapot" = "short and stout" }, body = "I am a teapot\n" }
[[trigger.http]]
route = "/empty/..."
static_response = {}
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = "{wasm}/alpha.wasm"
allowed_outbound_hosts = ["http://self"]
"#,
    );
    let g = Gantry::start(&manifest, &[]);
    let r = get(&g.url("/teapot")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "I am a teapot\n");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.headers["x-teapot"], "short and stout");
    let r = get(&g.url("/empty/any/where")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "{}", r.text());
    // A component reaches it as a client does.
    let r = get(&g.url("/alpha?fetch=http://self.alt/teapot")).await;
    let j = r.json();
    assert_eq!(j["fetched"]["status"], 418, "{j}");
    assert_eq!(j["fetched"]["body"], "I am a teapot\n", "{j}");
    assert_eq!(get(&g.url("/nowhere")).await.status, 404);
}

/// A file server on loopback counting the requests it answers.
struct FileServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl FileServer {
    fn start(path: &'static str, bytes: Vec<u8>) -> FileServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                count.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head);
                let found = head.starts_with(&format!("GET {path} "));
                let (status, body): (&str, &[u8]) = if found {
                    ("200 OK", &bytes)
                } else {
                    ("404 Not Found", b"not here")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        FileServer { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn url_app(url: &str, digest: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    write_manifest(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "downloaded"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = {{ url = "{url}", digest = "sha256:{digest}" }}
"#
    ))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_source_is_downloaded_once_checked_and_kept() {
    let bytes = std::fs::read(wasm("alpha")).expect("alpha.wasm");
    let digest = sha256_hex(&bytes);
    let server = FileServer::start("/alpha.wasm", bytes);
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().display().to_string();
    let (_dir, manifest) = url_app(&server.url("/alpha.wasm"), &digest);

    // Downloaded at the first start, and served.
    let g = Gantry::start(&manifest, &["--cache-dir", &cache_dir]);
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    let kept = cache
        .path()
        .join("downloads")
        .join(format!("sha256-{digest}.wasm"));
    assert!(kept.is_file(), "{} missing", kept.display());
    drop(g);

    // The next start reads what was kept: no request.
    let g = Gantry::start(&manifest, &["--cache-dir", &cache_dir]);
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    drop(g);

    // A kept file that was damaged is downloaded again.
    std::fs::write(&kept, b"damaged").expect("damage");
    let g = Gantry::start(&manifest, &["--cache-dir", &cache_dir]);
    assert_eq!(get(&g.url("/alpha")).await.status, 200);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn a_wrong_digest_or_a_missing_file_stops_the_start_naming_the_source() {
    let bytes = std::fs::read(wasm("alpha")).expect("alpha.wasm");
    let server = FileServer::start("/alpha.wasm", bytes);
    let cache = tempfile::tempdir().expect("cache");
    let wrong = "0".repeat(64);
    for (url, expect) in [
        (
            server.url("/alpha.wasm"),
            format!("not the sha256:{wrong} the manifest gives"),
        ),
        (server.url("/gone.wasm"), "404".to_string()),
    ] {
        let (_dir, manifest) = url_app(&url, &wrong);
        let out = std::process::Command::new(gantry_bin())
            .args(["check", "--cache-dir"])
            .arg(cache.path())
            .arg("-f")
            .arg(&manifest)
            .output()
            .expect("gantry check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("spin.toml:9:"), "{stderr}");
        assert!(stderr.contains("component.alpha.source"), "{stderr}");
        assert!(stderr.contains(&expect), "{expect:?} not in {stderr}");
        assert!(
            !cache
                .path()
                .join("downloads")
                .join(format!("sha256-{wrong}.wasm"))
                .exists()
        );
    }
}
