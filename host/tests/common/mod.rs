//! Test harness: the real `gantry` binary on 127.0.0.1 with real components
//! built from `functions/`, driven over real HTTP.
#![allow(dead_code)]

pub mod collector;
pub mod otlp;
pub mod raw;
pub mod servers;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host crate sits in the workspace")
        .to_path_buf()
}

/// Folder of the built example components.
pub fn wasm_dir() -> PathBuf {
    workspace().join("target/wasm32-wasip2/wasm")
}

/// Path of one built example component; fails loudly if the functions have not
/// been built (the test command in README.md builds them first).
pub fn wasm(name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the functions first with \
         `cargo build --target wasm32-wasip2 --profile wasm --workspace --exclude gantry`",
        p.display()
    );
    p
}

pub fn gantry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gantry"))
}

/// A running `gantry up`; killed on drop.
pub struct Gantry {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_log: PathBuf,
    pub started: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl Gantry {
    /// Starts `gantry up -f manifest` on ephemeral ports, with `extra` flags.
    pub fn start(manifest: &Path, extra: &[&str]) -> Gantry {
        Self::start_env::<&str, &str>(manifest, extra, &[])
    }

    pub fn start_env<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        manifest: &Path,
        extra: &[&str],
        env: &[(K, V)],
    ) -> Gantry {
        Self::start_with(Command::new(gantry_bin()), manifest, extra, env)
    }

    /// Starts gantry through `cmd`, which is either the binary itself or a
    /// wrapper (e.g. a shell applying `ulimit`) that execs it with the
    /// arguments appended here.
    pub fn start_with<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut cmd: Command,
        manifest: &Path,
        extra: &[&str],
        env: &[(K, V)],
    ) -> Gantry {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_log = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let started = Instant::now();
        cmd.arg("up")
            .arg("-f")
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr);
        if !extra
            .iter()
            .any(|a| *a == "--cache-dir" || *a == "--no-cache")
        {
            cmd.arg("--cache-dir").arg(shared_cache_dir());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gantry");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut addr = None;
        let mut admin = None;
        let mut line = String::new();
        while addr.is_none() || admin.is_none() {
            line.clear();
            let n = reader.read_line(&mut line).expect("read stdout");
            if n == 0 {
                let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("gantry exited before serving; stderr:\n{err}");
            }
            if let Some(a) = line.trim().strip_prefix("Serving http://") {
                addr = Some(a.parse().expect("serving addr"));
            } else if let Some(a) = line.trim().strip_prefix("Admin http://") {
                admin = Some(a.parse().expect("admin addr"));
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Gantry {
            child,
            addr: addr.expect("addr"),
            admin: admin.expect("admin"),
            stderr_log,
            started: started.elapsed(),
            _dir: Some(dir),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One compile cache for the whole test run, so only the first start compiles.
pub fn shared_cache_dir() -> PathBuf {
    let d = workspace().join("target/test-compile-cache");
    let _ = std::fs::create_dir_all(&d);
    d
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `content-type` header, or "" without one.
    pub fn content_type(&self) -> String {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request over a fresh connection.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send("GET", url, &[], Vec::new()).await
}

/// A GET in the caller's trace `traceparent`.
pub async fn get_traced(url: &str, traceparent: &str) -> Reply {
    send("GET", url, &[("traceparent", traceparent)], Vec::new()).await
}

/// A local upstream server that counts the TCP connections it accepts and
/// records the last request's headers.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub last_headers: Arc<std::sync::Mutex<Option<http::HeaderMap>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let last_headers = Arc::new(std::sync::Mutex::new(None));
        let (c, h) = (connections.clone(), last_headers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let h = h.clone();
                            async move {
                                *h.lock().unwrap() = Some(req.headers().clone());
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(200)
                                        .body(Full::new(Bytes::from_static(b"upstream ok")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            last_headers,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Writes a manifest into a fresh temp folder; `{wasm}` in the text is
/// replaced by the folder of built components.
/// A guest built outside cargo's test build (another target, another
/// toolchain), at `path` under the workspace; `how` says how to build it.
pub fn built(path: &str, how: &str) -> PathBuf {
    let p = workspace().join(path);
    assert!(p.is_file(), "{} is missing: {how}", p.display());
    p
}

pub fn write_manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spin.toml");
    let text = text.replace("{wasm}", &wasm_dir().display().to_string());
    std::fs::write(&path, text).expect("write manifest");
    (dir, path)
}

/// Runs `gantry` with `args` (and `env`), which must fail within 30 s: its
/// exit code (`None` for a signal) and its stderr. A gantry still running
/// after that is killed and the test fails.
pub fn gantry_fails<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    args: &[&str],
    env: &[(K, V)],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(gantry_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gantry");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(
                !status.success(),
                "gantry {args:?} succeeded; stderr:\n{err}"
            );
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gantry {args:?} was still running after 30 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `gantry up -f manifest` on ephemeral ports: the arguments a test that
/// expects the start to fail passes to [`gantry_fails`], before its own.
pub fn up_args(manifest: &Path) -> Vec<String> {
    let m = manifest.to_str().expect("utf-8 path").to_string();
    [
        "up",
        "-f",
        &m,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

/// `gantry check -f manifest --no-cache`, which must succeed: its stdout.
pub fn check_ok(manifest: &Path) -> String {
    let out = Command::new(gantry_bin())
        .args(["check", "--no-cache", "-f"])
        .arg(manifest)
        .output()
        .expect("run gantry check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gantry check failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The root app's robot and its pins, alone in a manifest of its own;
/// `extra_grant` is added to the `linus-left-motor-forward` grant.
pub fn robot_manifest(extra_grant: &str) -> String {
    let root = std::fs::read_to_string(workspace().join("spin.toml")).expect("spin.toml");
    // `[component.robot]` and its sub-tables, up to the next component.
    let robot = &root[root.find("[component.robot]").expect("robot")..];
    let end = robot
        .match_indices("\n[component.")
        .find(|(i, _)| !robot[i + 1..].starts_with("[component.robot"))
        .map_or(robot.len(), |(i, _)| i + 1);
    let robot = &robot[..end];
    let robot = robot.replace(
        "source = \"target/wasm32-wasip2/wasm/",
        &format!("source = \"{}/", wasm_dir().display()),
    );
    let robot = robot.replace(
        "linus-left-motor-forward = { pin = 5, mode = \"pwm\" }",
        &format!("linus-left-motor-forward = {{ pin = 5, mode = \"pwm\"{extra_grant} }}"),
    );
    format!(
        "spin_manifest_version = 2\n[application]\nname = \"robot\"\n\n[[trigger.http]]\nroute = \"/robot/...\"\ncomponent = \"robot\"\n\n{robot}"
    )
}
