//! A real OpenTelemetry collector for tests and benchmarks: rotel (installed
//! by scripts/setup.sh with pip), exporting nowhere and printing what it
//! receives.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// rotel's flags to print everything it receives, in detail.
const DEBUG_ARGS: &[&str] = &[
    "--debug-log",
    "traces",
    "--debug-log",
    "logs",
    "--debug-log",
    "metrics",
    "--debug-log-verbosity",
    "detailed",
];

/// The rotel collector binary that `pip install rotel` ships.
pub fn rotel() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("GANTRY_ROTEL") {
        return p.into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).is_file(),
        "rotel is not installed (scripts/setup.sh installs it with pip): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.into()
}

pub struct Collector {
    pub child: std::process::Child,
    log: std::path::PathBuf,
    pub grpc: u16,
    pub http: u16,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts a collector that prints every span, log record and metric.
    pub fn start() -> Collector {
        Self::start_with(true)
    }

    /// Starts a collector; `print` turns its detailed debug output on.
    pub fn start_with(print: bool) -> Collector {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("rotel.log");
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(rotel())
            .args(["start", "--exporter", "blackhole"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(if print { DEBUG_ARGS } else { &[] })
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel");
        // Ready once both ports accept connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while [grpc, http]
            .iter()
            .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
        {
            assert!(Instant::now() < deadline, "rotel did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector {
            child,
            log,
            grpc,
            http,
            _dir: dir,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_for_all(&self, needles: &[String]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output();
            if needles.iter().all(|n| out.contains(n.as_str())) {
                return out;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = needles
                    .iter()
                    .filter(|n| !out.contains(n.as_str()))
                    .collect();
                panic!("the collector never printed {missing:?}; it printed:\n{out}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
