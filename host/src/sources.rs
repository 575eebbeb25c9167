//! `source = { url, digest }`: each file is downloaded once, checked against
//! the SHA-256 the manifest gives, and kept under its digest in the
//! downloads folder (`<cache dir>/downloads/sha256-<hex>.wasm`), so the next
//! start, and every app naming the same digest, reads it from there.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::manifest::{App, Download, ManifestError};

/// The largest file a download may be.
pub const MAX_DOWNLOAD: u64 = 512 << 20;

/// How long one download may take, from connecting to its last byte.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Where downloads are kept under `cache_dir` (the compile cache's folder),
/// else in the system's temporary folder.
pub fn downloads_dir(cache_dir: Option<&Path>) -> PathBuf {
    match cache_dir {
        Some(d) => d.join("downloads"),
        None => std::env::temp_dir().join("gantry-downloads"),
    }
}

/// Gives every `{ url, digest }` source of `app` its file in `dir`,
/// downloading what is not there yet. Runs on a thread of its own, so it
/// may be called from the async runtime.
pub fn fetch_all(app: &mut App, dir: &Path) -> Result<(), Vec<ManifestError>> {
    let wanted: Vec<(String, Download)> = app
        .components
        .iter()
        .filter_map(|(id, c)| c.download.clone().map(|d| (id.clone(), d)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let dir = dir.to_path_buf();
    let first = wanted[0].1.location.clone();
    let results = std::thread::spawn(move || {
        crate::telemetry::otlp_env::install_tls_provider();
        let client = reqwest::blocking::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string());
        wanted
            .into_iter()
            .map(|(id, d)| {
                let got = match &client {
                    Ok(c) => fetch(c, &d, &dir),
                    Err(e) => Err(format!("cannot make the download client: {e}")),
                };
                (id, d, got)
            })
            .collect::<Vec<_>>()
    })
    .join()
    .map_err(|_| {
        vec![ManifestError {
            location: first,
            message: "the download thread panicked".into(),
        }]
    })?;
    let mut errors = Vec::new();
    for (id, d, got) in results {
        match got {
            Ok(path) => {
                if let Some(c) = app.components.get_mut(&id) {
                    c.source = path;
                }
            }
            Err(message) => errors.push(ManifestError {
                location: d.location,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The file of `d` in `dir`: there already and intact, or downloaded now.
fn fetch(client: &reqwest::blocking::Client, d: &Download, dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join(format!("sha256-{}.wasm", d.sha256));
    if let Ok(bytes) = std::fs::read(&path) {
        if hex(&Sha256::digest(&bytes)) == d.sha256 {
            return Ok(path);
        }
        tracing::warn!(path = %path.display(), "a kept download no longer matches its digest: downloading it again");
    }
    tracing::info!(url = %d.url, "downloading");
    let response = client
        .get(&d.url)
        .send()
        .map_err(|e| format!("cannot download {}: {e}", d.url))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "cannot download {}: the server answered {status}",
            d.url
        ));
    }
    let mut bytes = Vec::new();
    response
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot download {}: {e}", d.url))?;
    if bytes.len() as u64 > MAX_DOWNLOAD {
        return Err(format!(
            "{} is larger than {} MiB",
            d.url,
            MAX_DOWNLOAD >> 20
        ));
    }
    let got = hex(&Sha256::digest(&bytes));
    if got != d.sha256 {
        return Err(format!(
            "{} has the digest sha256:{got}, not the sha256:{} the manifest gives: it was not used",
            d.url, d.sha256
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot make the downloads folder {}: {e}", dir.display()))?;
    // Written aside, then renamed: a start that dies midway leaves no
    // partial file under the digest's name.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    tmp.persist(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
