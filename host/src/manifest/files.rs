//! `files` and `exclude_files`: which of the app's files a component may
//! read. Each entry is a glob relative to the app folder (a match is seen at
//! the same path under `/`) or `{ source, destination }` (a file or folder
//! of the app seen at `destination`). Nothing may name a path outside the
//! app folder: absolute patterns, `..` and sources that resolve elsewhere
//! are refused here, with the file, line and field.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::{Ctx, Location, ManifestError};

/// One `files` entry, validated.
#[derive(Debug, Clone)]
pub enum FilesEntry {
    /// Files of the app folder matching `glob` (relative to it).
    Pattern { glob: String, location: Location },
    /// A file or folder of the app, seen at `destination` (absolute).
    Mapping {
        source: PathBuf,
        destination: String,
        location: Location,
    },
}

impl FilesEntry {
    pub fn location(&self) -> &Location {
        match self {
            FilesEntry::Pattern { location, .. } | FilesEntry::Mapping { location, .. } => location,
        }
    }
}

/// One `exclude_files` pattern, relative to the app folder.
#[derive(Debug, Clone)]
pub struct Exclude {
    pub pattern: glob::Pattern,
    pub location: Location,
}

/// Whether `path` stays inside the folder it is relative to.
fn is_relative_inside(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

impl Ctx<'_> {
    pub(super) fn files(
        &self,
        base: &str,
        raw: Vec<Spanned<toml::Value>>,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<FilesEntry> {
        let mut out = Vec::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let field = format!("{base}.files[{i}]");
            let span = entry.span();
            match self.files_entry(&field, span.clone(), entry.into_inner()) {
                Ok(e) => out.push(e),
                Err(message) => errors.push(self.error_at(span, Some(&field), message)),
            }
        }
        out
    }

    fn files_entry(
        &self,
        field: &str,
        span: Range<usize>,
        entry: toml::Value,
    ) -> Result<FilesEntry, String> {
        let location = self.location(span, Some(field));
        match entry {
            toml::Value::String(glob) => {
                if !is_relative_inside(&glob) {
                    return Err(format!(
                        "{glob:?} leaves the app folder: a pattern is relative to the folder \
                         of spin.toml, without `..`"
                    ));
                }
                glob::Pattern::new(&glob).map_err(|e| format!("{glob:?} is not a glob: {e}"))?;
                Ok(FilesEntry::Pattern { glob, location })
            }
            toml::Value::Table(mut t) => {
                let text = |t: &mut toml::Table, key: &str| match t.remove(key) {
                    Some(toml::Value::String(s)) => Ok(s),
                    Some(_) => Err(format!("`{key}` must be a string")),
                    None => Err(format!(
                        "missing `{key}`: write {{ source = \"assets\", destination = \"/\" }}"
                    )),
                };
                let source = text(&mut t, "source")?;
                let destination = text(&mut t, "destination")?;
                if let Some(k) = t.keys().next() {
                    return Err(format!(
                        "unknown key `{k}`: an entry has `source` and `destination`"
                    ));
                }
                if !is_relative_inside(&source) {
                    return Err(format!(
                        "source {source:?} leaves the app folder: give a path relative to the \
                         folder of spin.toml, without `..`"
                    ));
                }
                let rest = destination.strip_prefix('/').unwrap_or("");
                if !destination.starts_with('/') || !(rest.is_empty() || is_relative_inside(rest)) {
                    return Err(format!(
                        "destination {destination:?} must be an absolute guest path without \
                         `..`, e.g. \"/assets\""
                    ));
                }
                let source_path = self.dir.join(&source);
                if self.check_sources {
                    let real = source_path
                        .canonicalize()
                        .map_err(|e| format!("source {}: {e}", source_path.display()))?;
                    let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
                    if !real.starts_with(&dir) {
                        return Err(format!(
                            "source {source:?} resolves to {}, outside the app folder",
                            real.display()
                        ));
                    }
                }
                Ok(FilesEntry::Mapping {
                    source: source_path,
                    destination,
                    location,
                })
            }
            _ => Err(
                "an entry is a glob string or { source = \"...\", destination = \"/...\" }".into(),
            ),
        }
    }

    pub(super) fn exclude_files(
        &self,
        base: &str,
        raw: Vec<Spanned<String>>,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<Exclude> {
        let mut out = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let field = format!("{base}.exclude_files[{i}]");
            let location = self.location(p.span(), Some(&field));
            match glob::Pattern::new(p.get_ref()) {
                Ok(pattern) if is_relative_inside(p.get_ref()) => {
                    out.push(Exclude { pattern, location })
                }
                Ok(_) => errors.push(ManifestError {
                    location,
                    message: format!(
                        "{:?} leaves the app folder: a pattern is relative to the folder of \
                         spin.toml, without `..`",
                        p.get_ref()
                    ),
                }),
                Err(e) => errors.push(ManifestError {
                    location,
                    message: format!("{:?} is not a glob: {e}", p.get_ref()),
                }),
            }
        }
        out
    }
}
