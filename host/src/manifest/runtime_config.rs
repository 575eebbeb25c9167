//! Spin's runtime-config file (`--runtime-config-file`): where state lives.
//!
//! `[key_value_store.<label>]` (`type = "spin"` with an optional `path`, or
//! `type = "redis"` with a `url`), `[sqlite_database.<label>]` (`type =
//! "spin"`, optional `path`) and `state_dir`. Relative paths are resolved
//! against the file's folder. An unknown key or type is an error naming the
//! file, line and field, as in Spin; the sections Spin has and Gantry does
//! not serve are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Ctx, LoadError, Location, ManifestError, is_valid_label};

/// A validated runtime-config file.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfigFile {
    pub path: PathBuf,
    /// `state_dir`, absolute.
    pub state_dir: Option<PathBuf>,
    pub key_value_stores: BTreeMap<String, KeyValueStore>,
    pub sqlite_databases: BTreeMap<String, SqliteDatabase>,
}

#[derive(Debug, Clone)]
pub struct KeyValueStore {
    pub backend: KeyValueBackend,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValueBackend {
    /// SQLite, in `path` (absolute), or in the state folder's default file.
    Spin {
        path: Option<PathBuf>,
    },
    Redis {
        url: String,
    },
}

#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    /// Absolute; `None`: `<label>` in the state folder's default layout.
    pub path: Option<PathBuf>,
    pub location: Location,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    key_value_store: BTreeMap<Spanned<String>, Spanned<RawStore>>,
    #[serde(default)]
    sqlite_database: BTreeMap<Spanned<String>, Spanned<RawStore>>,
    // Spin's sections that Gantry does not serve: named, to say so.
    #[serde(default)]
    llm_compute: Option<Spanned<toml::Value>>,
    #[serde(default)]
    config_provider: Option<Spanned<toml::Value>>,
    #[serde(default)]
    variables_provider: Option<Spanned<toml::Value>>,
    #[serde(default)]
    client_tls: Option<Spanned<toml::Value>>,
    #[serde(default)]
    outbound_networking: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    // Spin's cloud stores: named, to say they are not served.
    #[serde(default)]
    account: Option<Spanned<toml::Value>>,
    #[serde(default)]
    database: Option<Spanned<toml::Value>>,
    #[serde(default)]
    container: Option<Spanned<toml::Value>>,
    #[serde(default)]
    key: Option<Spanned<toml::Value>>,
    #[serde(default)]
    table: Option<Spanned<toml::Value>>,
    #[serde(default)]
    region: Option<Spanned<toml::Value>>,
    #[serde(default)]
    token: Option<Spanned<toml::Value>>,
}

/// Reads and validates a runtime-config file.
pub fn load(path: &Path) -> Result<RuntimeConfigFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validates runtime-config text as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<RuntimeConfigFile, LoadError> {
    let ctx = Ctx::new(path, text);
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        LoadError::Invalid(vec![ctx.error_at(
            span,
            None,
            e.message().trim().to_string(),
        )])
    })?;
    let mut errors = Vec::new();
    for (name, value) in [
        ("llm_compute", &raw.llm_compute),
        ("config_provider", &raw.config_provider),
        ("variables_provider", &raw.variables_provider),
        ("client_tls", &raw.client_tls),
        ("outbound_networking", &raw.outbound_networking),
    ] {
        if let Some(v) = value {
            errors.push(ctx.error_at(
                v.span(),
                Some(name),
                format!("`{name}` is not supported by Gantry; remove it or run the app under Spin"),
            ));
        }
    }
    let resolve = |p: &Spanned<String>, field: &str, errors: &mut Vec<ManifestError>| {
        if p.get_ref().trim().is_empty() {
            errors.push(ctx.error_at(p.span(), Some(field), "the path is empty"));
            return None;
        }
        Some(ctx.dir.join(p.get_ref()))
    };
    let state_dir = raw
        .state_dir
        .as_ref()
        .and_then(|d| resolve(d, "state_dir", &mut errors));

    let mut key_value_stores = BTreeMap::new();
    for (label, store) in &raw.key_value_store {
        let base = format!("key_value_store.{}", label.get_ref());
        if !is_valid_label(label.get_ref()) {
            errors.push(ctx.error_at(
                label.span(),
                Some(&base),
                format!(
                    "{:?} is not a store label: use letters, digits, `_` and `-`",
                    label.get_ref()
                ),
            ));
            continue;
        }
        let location = ctx.location(store.span(), Some(&base));
        let s = store.get_ref();
        let Some(kind) = &s.kind else {
            errors.push(ctx.error_at(
                store.span(),
                Some(&format!("{base}.type")),
                "missing `type`: \"spin\" (SQLite) or \"redis\"",
            ));
            continue;
        };
        let field = |f: &str| format!("{base}.{f}");
        let cloud = [
            ("account", &s.account),
            ("database", &s.database),
            ("container", &s.container),
            ("key", &s.key),
            ("table", &s.table),
            ("region", &s.region),
            ("token", &s.token),
        ];
        let backend = match kind.get_ref().as_str() {
            "spin" => {
                reject(
                    &ctx,
                    &mut errors,
                    &field("url"),
                    s.url.as_ref().map(|u| u.span()),
                    "type \"spin\"",
                );
                reject_cloud(&ctx, &mut errors, &base, &cloud, "type \"spin\"");
                KeyValueBackend::Spin {
                    path: s
                        .path
                        .as_ref()
                        .and_then(|p| resolve(p, &field("path"), &mut errors)),
                }
            }
            "redis" => {
                reject(
                    &ctx,
                    &mut errors,
                    &field("path"),
                    s.path.as_ref().map(|p| p.span()),
                    "type \"redis\"",
                );
                reject_cloud(&ctx, &mut errors, &base, &cloud, "type \"redis\"");
                match &s.url {
                    None => {
                        errors.push(ctx.error_at(
                            store.span(),
                            Some(&field("url")),
                            "type \"redis\" needs `url`, e.g. \"redis://127.0.0.1:6379\"",
                        ));
                        continue;
                    }
                    Some(u) => match url::Url::parse(u.get_ref()) {
                        Ok(parsed)
                            if matches!(parsed.scheme(), "redis" | "rediss")
                                && parsed.has_host() =>
                        {
                            KeyValueBackend::Redis {
                                url: u.get_ref().clone(),
                            }
                        }
                        _ => {
                            errors.push(ctx.error_at(
                                u.span(),
                                Some(&field("url")),
                                format!(
                                    "{:?} is not a Redis URL: give redis://host:port (or rediss://)",
                                    u.get_ref()
                                ),
                            ));
                            continue;
                        }
                    },
                }
            }
            "azure_cosmos" | "aws_dynamo" => {
                errors.push(ctx.error_at(
                    kind.span(),
                    Some(&field("type")),
                    format!(
                        "type {:?} is not supported by Gantry: use \"spin\" (SQLite) or \"redis\"",
                        kind.get_ref()
                    ),
                ));
                continue;
            }
            other => {
                errors.push(ctx.error_at(
                    kind.span(),
                    Some(&field("type")),
                    format!(
                        "unknown key-value store type {other:?}: use \"spin\" (SQLite) or \"redis\""
                    ),
                ));
                continue;
            }
        };
        key_value_stores.insert(label.get_ref().clone(), KeyValueStore { backend, location });
    }

    let mut sqlite_databases = BTreeMap::new();
    for (label, db) in &raw.sqlite_database {
        let base = format!("sqlite_database.{}", label.get_ref());
        if !is_valid_label(label.get_ref()) {
            errors.push(ctx.error_at(
                label.span(),
                Some(&base),
                format!(
                    "{:?} is not a database label: use letters, digits, `_` and `-`",
                    label.get_ref()
                ),
            ));
            continue;
        }
        let d = db.get_ref();
        match d.kind.as_ref().map(|k| k.get_ref().as_str()) {
            Some("spin") => {}
            Some(other) => {
                let span = d.kind.as_ref().map_or(db.span(), |k| k.span());
                errors.push(ctx.error_at(
                    span,
                    Some(&format!("{base}.type")),
                    format!("unknown SQLite database type {other:?}: use \"spin\""),
                ));
                continue;
            }
            None => {
                errors.push(ctx.error_at(
                    db.span(),
                    Some(&format!("{base}.type")),
                    "missing `type`: \"spin\"",
                ));
                continue;
            }
        }
        let cloud = [
            ("account", &d.account),
            ("database", &d.database),
            ("container", &d.container),
            ("key", &d.key),
            ("table", &d.table),
            ("region", &d.region),
            ("token", &d.token),
        ];
        reject(
            &ctx,
            &mut errors,
            &format!("{base}.url"),
            d.url.as_ref().map(|u| u.span()),
            "type \"spin\"",
        );
        reject_cloud(&ctx, &mut errors, &base, &cloud, "type \"spin\"");
        let path = d
            .path
            .as_ref()
            .and_then(|p| resolve(p, &format!("{base}.path"), &mut errors));
        sqlite_databases.insert(
            label.get_ref().clone(),
            SqliteDatabase {
                path,
                location: ctx.location(db.span(), Some(&base)),
            },
        );
    }

    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(RuntimeConfigFile {
        path: ctx.path.clone(),
        state_dir,
        key_value_stores,
        sqlite_databases,
    })
}

fn reject(
    ctx: &Ctx<'_>,
    errors: &mut Vec<ManifestError>,
    field: &str,
    span: Option<std::ops::Range<usize>>,
    kind: &str,
) {
    if let Some(span) = span {
        let name = field.rsplit('.').next().unwrap_or(field);
        errors.push(ctx.error_at(span, Some(field), format!("{kind} takes no `{name}`")));
    }
}

fn reject_cloud(
    ctx: &Ctx<'_>,
    errors: &mut Vec<ManifestError>,
    base: &str,
    fields: &[(&str, &Option<Spanned<toml::Value>>)],
    kind: &str,
) {
    for (name, value) in fields {
        if let Some(v) = value {
            errors.push(ctx.error_at(
                v.span(),
                Some(&format!("{base}.{name}")),
                format!("{kind} takes no `{name}`"),
            ));
        }
    }
}
