//! The app files a component may read (`files`, `exclude_files`), prepared
//! once per component version: the matching files are gathered into one
//! read-only tree (hard links where the file system allows, else copies) in
//! a private temporary folder, opened once, and every instance gets that
//! open folder as its `/` preopen — a vector clone, no system call. A lone
//! folder mapping with nothing excluded is opened in place, without a tree.

use std::path::{Path, PathBuf};

use wasmtime_wasi::filesystem::WasiFilesystemCtx;

use crate::manifest::files::{Exclude, FilesEntry};
use crate::manifest::{ComponentSpec, ManifestError};

/// Most files one component may be given.
pub const MAX_FILES: usize = 100_000;

/// One component version's mounts.
pub struct Mounts {
    fs: WasiFilesystemCtx,
    /// The gathered tree, removed with the version.
    _tree: Option<tempfile::TempDir>,
}

impl Mounts {
    /// Gives `ctx` this version's mounts.
    pub fn install(&self, ctx: &mut wasmtime_wasi::WasiCtx) {
        *ctx.filesystem() = self.fs.clone();
    }

    /// Gathers `spec`'s files; `None` when it is given none.
    pub fn prepare(spec: &ComponentSpec) -> Result<Option<Mounts>, ManifestError> {
        let app_dir = &spec.app_dir;
        if spec.files.is_empty() {
            return Ok(None);
        }
        // A folder mounted as it is, when nothing needs leaving out.
        if let (
            [
                FilesEntry::Mapping {
                    source,
                    destination,
                    location,
                },
            ],
            true,
        ) = (spec.files.as_slice(), spec.exclude_files.is_empty())
            && source.is_dir()
        {
            let fs = preopen(source, destination).map_err(|e| ManifestError {
                location: location.clone(),
                message: format!("cannot open {}: {e}", source.display()),
            })?;
            return Ok(Some(Mounts { fs, _tree: None }));
        }
        let root = app_dir.canonicalize().map_err(|e| ManifestError {
            location: spec.source_location.clone(),
            message: format!("cannot read the app folder {}: {e}", app_dir.display()),
        })?;
        let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
        for entry in &spec.files {
            gather(entry, &root, &spec.exclude_files, &mut files)?;
        }
        let tree = tempfile::Builder::new()
            .prefix("gantry-files-")
            .tempdir()
            .map_err(|e| ManifestError {
                location: spec.files[0].location().clone(),
                message: format!(
                    "cannot make the folder of the component's files in {}: {e} (set TMPDIR to \
                     a writable folder)",
                    std::env::temp_dir().display()
                ),
            })?;
        for (guest, host) in &files {
            let to = tree.path().join(guest);
            place(host, &to).map_err(|e| ManifestError {
                location: spec.files[0].location().clone(),
                message: format!("cannot gather {}: {e}", host.display()),
            })?;
        }
        let fs = preopen(tree.path(), "/").map_err(|e| ManifestError {
            location: spec.files[0].location().clone(),
            message: format!("cannot open {}: {e}", tree.path().display()),
        })?;
        Ok(Some(Mounts {
            fs,
            _tree: Some(tree),
        }))
    }
}

/// The filesystem context of one read-only preopen.
fn preopen(host: &Path, guest: &str) -> anyhow::Result<WasiFilesystemCtx> {
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.preopened_dir(host, guest, wasmtime_wasi::filesystem::FsPerms::ReadOnly)?;
    Ok(b.build().filesystem().clone())
}

/// A hard link to `from` at `to`, or a copy across file systems.
fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// Adds the files of `entry` (guest path relative to `/`, host path) to
/// `out`, leaving out the excluded ones and refusing any that resolves
/// outside `root`.
fn gather(
    entry: &FilesEntry,
    root: &Path,
    exclude: &[Exclude],
    out: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), ManifestError> {
    let location = entry.location();
    let fail = |message: String| ManifestError {
        location: location.clone(),
        message,
    };
    let excluded = |rel: &Path| exclude.iter().any(|x| x.pattern.matches_path(rel));
    let mut add = |host: PathBuf, guest: PathBuf| -> Result<(), ManifestError> {
        let real = host
            .canonicalize()
            .map_err(|e| fail(format!("{}: {e}", host.display())))?;
        let Ok(rel) = real.strip_prefix(root) else {
            return Err(fail(format!(
                "{} resolves to {}, outside the app folder",
                host.display(),
                real.display()
            )));
        };
        if excluded(rel) {
            return Ok(());
        }
        if out.len() >= MAX_FILES {
            return Err(fail(format!(
                "more than {MAX_FILES} files: give the component fewer"
            )));
        }
        out.push((guest, real));
        Ok(())
    };
    match entry {
        FilesEntry::Pattern { glob, .. } => {
            let pattern = root.join(glob);
            let matches = glob::glob(&pattern.to_string_lossy())
                .map_err(|e| fail(format!("{glob:?} is not a glob: {e}")))?;
            for m in matches {
                let path = m.map_err(|e| fail(format!("{e}")))?;
                if !path.is_file() {
                    continue;
                }
                let guest = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                add(path, guest)?;
            }
        }
        FilesEntry::Mapping {
            source,
            destination,
            ..
        } => {
            let dest = PathBuf::from(destination.trim_start_matches('/'));
            if source.is_file() {
                add(source.clone(), dest)?;
            } else {
                let mut stack = vec![(source.clone(), dest)];
                while let Some((dir, guest)) = stack.pop() {
                    let entries = std::fs::read_dir(&dir)
                        .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
                    for e in entries {
                        let e = e.map_err(|e| fail(format!("{}: {e}", dir.display())))?;
                        let path = e.path();
                        let g = guest.join(e.file_name());
                        // Linked folders are not followed (no loops); linked
                        // files are, when they stay inside the app folder.
                        let real_dir = e.file_type().is_ok_and(|t| t.is_dir());
                        if real_dir {
                            stack.push((path, g));
                        } else if path.is_file() {
                            add(path, g)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
