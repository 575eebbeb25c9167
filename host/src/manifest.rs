//! `spin.toml` (Spin manifest v2) -> a validated [`App`].
//!
//! Pure: reads one file, touches nothing else but `stat` on component sources.
//! Every error names the file, the line and column, and the dotted field it is
//! about, and says what was expected, so a user can fix it without guessing.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub mod files;
mod gpio;
mod outbound_hosts;
pub mod runtime_config;
mod template;
pub use crate::router::StaticResponse;
pub use gpio::{GpioGrant, MAX_BCM};
pub use outbound_hosts::{HostPattern, OTHER, default_port};
pub use template::{Template, is_valid_name};

/// Where in the manifest something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `component.hello.source`.
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: field `{}`",
            self.file.display(),
            self.line,
            self.column,
            self.field
        )
    }
}

/// A manifest problem: where, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ManifestError {
    pub location: Location,
    pub message: String,
}

/// A manifest file could not be read or parsed; at least one error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join_errors(.0))]
    Invalid(Vec<ManifestError>),
}

fn join_errors(errors: &[ManifestError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&e.to_string());
    }
    out
}

/// A validated application.
#[derive(Debug, Clone)]
pub struct App {
    /// The manifest file.
    pub path: PathBuf,
    /// The folder relative paths are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub variables: BTreeMap<String, VariableSpec>,
    pub components: BTreeMap<String, ComponentSpec>,
    /// HTTP triggers in manifest order (private ones included).
    pub triggers: Vec<HttpTrigger>,
}

#[derive(Debug, Clone)]
pub struct VariableSpec {
    pub location: Location,
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub id: String,
    pub description: Option<String>,
    /// Absolute path of the `.wasm` file (for a `{ url, digest }` source,
    /// where it was downloaded to, once it is).
    pub source: PathBuf,
    /// A `{ url, digest }` source: what to download and check.
    pub download: Option<Download>,
    /// The app folder (of spin.toml): what `files` patterns are relative to.
    pub app_dir: PathBuf,
    /// Where `source` was written, for errors found later (compile, link).
    pub source_location: Location,
    pub allowed_outbound_hosts: Vec<OutboundRule>,
    pub environment: BTreeMap<String, String>,
    pub variables: BTreeMap<String, Template>,
    pub build: Option<BuildSpec>,
    pub gantry: GantrySettings,
    /// Where `tool.gantry` was written (or the component, without one).
    pub gantry_location: Location,
    /// Pins granted by `tool.gantry.gpio`, by label.
    pub gpio: Vec<GpioGrant>,
    /// Key-value stores granted (`key_value_stores`), by label.
    pub key_value_stores: Vec<StoreGrant>,
    /// SQLite databases granted (`sqlite_databases`), by label.
    pub sqlite_databases: Vec<StoreGrant>,
    /// The app's files the component may read (`files`).
    pub files: Vec<files::FilesEntry>,
    /// Files no `files` entry gives (`exclude_files`).
    pub exclude_files: Vec<files::Exclude>,
}

/// One store label a component is granted, and where it was granted.
#[derive(Debug, Clone)]
pub struct StoreGrant {
    pub label: String,
    pub location: Location,
}

/// Spin's store labels: letters, digits, `_` and `-`, not empty.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 128
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One `allowed_outbound_hosts` entry: parsed now when it is literal, or kept as a
/// template when it refers to variables (resolved when variables are known).
#[derive(Debug, Clone)]
pub struct OutboundRule {
    pub raw: String,
    pub template: Template,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub command: BuildCommand,
    /// Absolute working directory.
    pub workdir: PathBuf,
    pub watch: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum BuildCommand {
    /// Run through the shell.
    Shell(String),
    /// Several commands, each through the shell, in order.
    Sequence(Vec<String>),
}

/// The longest `tool.gantry.timeout_ms`: a day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Where `key = ...` is written in the table that starts at `table` (a span
/// of `text`: an inline table, or a `[header]` and the lines after it up to
/// the next header), or the table itself.
fn key_span(text: &str, table: Range<usize>, key: &str) -> Range<usize> {
    let body = text.get(table.start..).unwrap_or("");
    let mut offset = table.start;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        if i > 0 && line.trim_start().starts_with('[') {
            break;
        }
        for (at, _) in line.match_indices(key) {
            let before = line[..at].trim_end();
            let after = line[at + key.len()..].trim_start();
            if after.starts_with('=')
                && (before.is_empty() || before.ends_with('{') || before.ends_with(','))
            {
                return offset + at..offset + at + key.len();
            }
        }
        offset += line.len();
    }
    table
}

/// Gantry-only settings: `[component.<id>.tool.gantry]`, ignored by Spin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GantrySettings {
    /// Request timeout for this component, overriding `--request-timeout`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Inject `traceparent`/`tracestate` into this component's outbound
    /// requests (default true). Turn off when callees must not learn trace ids.
    #[serde(default)]
    pub propagate_trace_context: Option<bool>,
    /// Most instances of this component alive at once (its share of the
    /// pool); past it its requests wait, then get 503, and the rest of the
    /// pool stays free for the other components.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Pins granted to this component; read with their locations by
    /// [`gpio`] into [`ComponentSpec::gpio`].
    #[serde(default)]
    #[allow(dead_code)]
    gpio: Option<toml::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSpec {
    Path(String),
    Private,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub route: RouteSpec,
    pub target: TriggerTarget,
    pub location: Location,
}

/// A `source = { url, digest }`: fetched once, checked against its
/// SHA-256, kept by digest (see `sources::fetch_all`).
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    /// The SHA-256 the manifest gives, as 64 lowercase hex digits.
    pub sha256: String,
    pub location: Location,
}

impl Download {
    fn from_table(
        t: &toml::map::Map<String, toml::Value>,
        location: &Location,
    ) -> Result<Download, ManifestError> {
        let error = |message: String| ManifestError {
            location: location.clone(),
            message,
        };
        if let Some(k) = t.keys().find(|k| *k != "url" && *k != "digest") {
            return Err(error(format!(
                "unknown field `{k}` in a `{{ url, digest }}` source"
            )));
        }
        let url = match t.get("url") {
            Some(toml::Value::String(u))
                if u.starts_with("https://") || u.starts_with("http://") =>
            {
                u.clone()
            }
            Some(other) => {
                return Err(error(format!(
                    "`url` must be an http:// or https:// URL, found {}",
                    short(other)
                )));
            }
            None => return Err(error("missing `url`".into())),
        };
        let hex = match t.get("digest") {
            Some(toml::Value::String(d)) => d.strip_prefix("sha256:").map(str::to_ascii_lowercase),
            None => {
                return Err(error(format!(
                    "missing `digest` for {url}: give the file's SHA-256 as `digest = \"sha256:<64 hex digits>\"` (e.g. from `sha256sum`)"
                )));
            }
            Some(_) => None,
        };
        match hex {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Download {
                url,
                sha256: h,
                location: location.clone(),
            }),
            _ => Err(error(
                "`digest` must be \"sha256:\" followed by 64 hex digits".into(),
            )),
        }
    }
}

/// What answers a trigger's route.
#[derive(Debug, Clone)]
pub enum TriggerTarget {
    /// The component with this id.
    Component(String),
    /// The host itself, with this answer (`static_response`).
    Static(std::sync::Arc<StaticResponse>),
}

impl App {
    /// Routes that can receive requests, and what answers each.
    pub fn public_routes(&self) -> impl Iterator<Item = (&str, &TriggerTarget)> {
        self.triggers.iter().filter_map(|t| match &t.route {
            RouteSpec::Path(p) => Some((p.as_str(), &t.target)),
            RouteSpec::Private => None,
        })
    }
}

// ---------------------------------------------------------------------------
// Raw, serde-facing shapes. Unknown fields are errors, as they are in Spin.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: Option<Spanned<toml::Value>>,
    application: Option<Spanned<RawApplication>>,
    #[serde(default)]
    variables: BTreeMap<Spanned<String>, Spanned<RawVariable>>,
    #[serde(default)]
    trigger: Option<Spanned<RawTriggers>>,
    #[serde(default)]
    component: BTreeMap<Spanned<String>, Spanned<RawComponent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: Spanned<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    authors: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    targets: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    trigger: Option<toml::Table>,
    #[serde(default)]
    #[allow(dead_code)]
    tool: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

/// Trigger types. Only `http` is served; the others Spin knows are named so
/// the error can say they are not supported (rather than "unknown").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<Spanned<RawHttpTrigger>>,
    #[serde(default)]
    redis: Option<Spanned<toml::Value>>,
    #[serde(default)]
    mqtt: Option<Spanned<toml::Value>>,
    #[serde(default)]
    cron: Option<Spanned<toml::Value>>,
    #[serde(default)]
    sqs: Option<Spanned<toml::Value>>,
    #[serde(default)]
    command: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
    route: Option<Spanned<toml::Value>>,
    component: Option<Spanned<toml::Value>>,
    #[serde(default)]
    static_response: Option<Spanned<toml::Value>>,
    #[serde(default)]
    executor: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    #[serde(default)]
    description: Option<String>,
    source: Option<Spanned<toml::Value>>,
    #[serde(default)]
    files: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    exclude_files: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_http_hosts: Option<Spanned<toml::Value>>,
    #[serde(default)]
    key_value_stores: Vec<Spanned<String>>,
    #[serde(default)]
    sqlite_databases: Vec<Spanned<String>>,
    #[serde(default)]
    ai_models: Option<Spanned<toml::Value>>,
    #[serde(default)]
    dependencies: Option<Spanned<toml::Value>>,
    #[serde(default)]
    dependencies_inherit_configuration: Option<Spanned<toml::Value>>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    variables: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    build: Option<Spanned<RawBuild>>,
    #[serde(default)]
    tool: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    command: Spanned<toml::Value>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    environment: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------

/// Reads and validates a manifest. `path` may be the file or its folder.
pub fn load(path: &Path) -> Result<App, LoadError> {
    load_with(path, true)
}

/// Like [`load`]; with `check_sources` false, a component's `.wasm` need not
/// exist yet (it is about to be built).
pub fn load_with(path: &Path, check_sources: bool) -> Result<App, LoadError> {
    let path = if path.is_dir() {
        path.join("spin.toml")
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(LoadError::Io {
            path: path.clone(),
            source: std::io::Error::other(if meta.is_dir() {
                "it is a directory without a spin.toml"
            } else {
                "not a regular file (a device, FIFO or socket)"
            }),
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // TOML is UTF-8: say where the first byte that is not is.
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let before = String::from_utf8_lossy(&bytes[..valid]);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let field = field_at(&before, valid).unwrap_or_else(|| enclosing_table(&before, valid));
            return Err(LoadError::Invalid(vec![ManifestError {
                location: Location {
                    file: path.clone(),
                    line,
                    column,
                    field,
                },
                message: format!(
                    "byte 0x{:02x} at offset {valid} is not UTF-8; a manifest must be UTF-8 text",
                    bytes[valid]
                ),
            }]));
        }
    };
    parse_with(&path, &text, check_sources)
}

/// Validates manifest text as if it had been read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<App, LoadError> {
    parse_with(path, text, true)
}

fn parse_with(path: &Path, text: &str, check_sources: bool) -> Result<App, LoadError> {
    let mut ctx = Ctx::new(path, text);
    ctx.check_sources = check_sources;
    let raw: RawManifest = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            return Err(LoadError::Invalid(vec![ctx.error_at(span, None, message)]));
        }
    };
    let mut errors = Vec::new();
    let mut app = ctx.validate(raw, &mut errors);
    if let Some(app) = app.as_mut() {
        ctx.gpio_grants(app, &mut errors);
    }
    match app {
        Some(app) if errors.is_empty() => Ok(app),
        _ => Err(LoadError::Invalid(errors)),
    }
}

struct Ctx<'a> {
    path: PathBuf,
    dir: PathBuf,
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    check_sources: bool,
}

impl<'a> Ctx<'a> {
    fn new(path: &Path, text: &'a str) -> Self {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            path,
            dir,
            text,
            line_starts,
            check_sources: true,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, col + 1)
    }

    fn location(&self, span: Range<usize>, field: Option<&str>) -> Location {
        let (line, column) = self.line_col(span.start);
        let field = match field {
            Some(f) => f.to_string(),
            None => field_at(self.text, span.start)
                .unwrap_or_else(|| enclosing_table(self.text, span.start)),
        };
        Location {
            file: self.path.clone(),
            line,
            column,
            field,
        }
    }

    /// A list of store or database labels: each valid, each once.
    fn labels(
        &self,
        base: &str,
        name: &str,
        raw: Vec<Spanned<String>>,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<StoreGrant> {
        let mut out: Vec<StoreGrant> = Vec::new();
        for (i, label) in raw.into_iter().enumerate() {
            let field = format!("{base}.{name}[{i}]");
            let location = self.location(label.span(), Some(&field));
            let label = label.into_inner();
            if !is_valid_label(&label) {
                errors.push(ManifestError {
                    location,
                    message: format!(
                        "{label:?} is not a label: use letters, digits, `_` and `-` (at most \
                         128), e.g. \"default\""
                    ),
                });
            } else if out.iter().any(|g| g.label == label) {
                errors.push(ManifestError {
                    location,
                    message: format!("{label:?} is granted twice"),
                });
            } else {
                out.push(StoreGrant { label, location });
            }
        }
        out
    }

    fn error_at(
        &self,
        span: Range<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            location: self.location(span, field),
            message: message.into(),
        }
    }

    fn validate(&self, raw: RawManifest, errors: &mut Vec<ManifestError>) -> Option<App> {
        match &raw.spin_manifest_version {
            None => errors.push(self.error_at(
                0..0,
                Some("spin_manifest_version"),
                "missing; a Spin manifest v2 starts with `spin_manifest_version = 2`",
            )),
            Some(v) => {
                let ok = matches!(v.get_ref(), toml::Value::Integer(2))
                    || matches!(v.get_ref(), toml::Value::String(s) if s == "2");
                if !ok {
                    errors.push(self.error_at(
                        v.span(),
                        Some("spin_manifest_version"),
                        format!(
                            "expected 2 (only Spin manifest v2 is supported), found {}",
                            v.get_ref()
                        ),
                    ));
                }
            }
        }

        let application = match raw.application {
            Some(a) => a,
            None => {
                errors.push(self.error_at(
                    0..0,
                    Some("application"),
                    "missing `[application]` table (it needs at least `name = \"...\"`)",
                ));
                return None;
            }
        };
        let app_table = application.into_inner();
        let name = app_table.name.get_ref().trim().to_string();
        if name.is_empty() {
            errors.push(self.error_at(
                app_table.name.span(),
                Some("application.name"),
                "must not be empty",
            ));
        }

        // Variables.
        let mut vars = BTreeMap::new();
        for (key, value) in raw.variables {
            let field = format!("variables.{}", key.get_ref());
            if !is_valid_name(key.get_ref()) {
                errors.push(self.error_at(
                    key.span(),
                    Some(&field),
                    format!(
                        "invalid variable name {:?}: use lowercase letters, digits and underscores, starting with a letter",
                        key.get_ref()
                    ),
                ));
            }
            let span = value.span();
            let v = value.into_inner();
            if v.required && v.default.is_some() {
                errors.push(self.error_at(
                    span.clone(),
                    Some(&field),
                    "a variable is either `required = true` or has a `default`, not both",
                ));
            } else if !v.required && v.default.is_none() {
                errors.push(self.error_at(
                    span.clone(),
                    Some(&field),
                    "a variable needs `default = \"...\"` or `required = true`",
                ));
            }
            vars.insert(
                key.into_inner(),
                VariableSpec {
                    location: self.location(span, Some(&field)),
                    default: v.default,
                    required: v.required,
                    secret: v.secret,
                },
            );
        }

        // Components.
        let mut components = BTreeMap::new();
        for (key, value) in raw.component {
            let id = key.get_ref().clone();
            if !is_valid_component_id(&id) {
                errors.push(self.error_at(
                    key.span(),
                    Some(&format!("component.{id}")),
                    format!(
                        "invalid component id {id:?}: use lowercase letters and digits in words joined by '-' (kebab-case), starting with a letter"
                    ),
                ));
            }
            let span = value.span();
            if let Some(c) = self.component(&id, span, value.into_inner(), &vars, errors) {
                components.insert(id, c);
            }
        }

        // Triggers.
        let mut triggers = Vec::new();
        let mut seen_routes: BTreeMap<String, String> = BTreeMap::new();
        if let Some(trig) = raw.trigger {
            let trig = trig.into_inner();
            let others = [
                ("redis", &trig.redis),
                ("mqtt", &trig.mqtt),
                ("cron", &trig.cron),
                ("sqs", &trig.sqs),
                ("command", &trig.command),
            ];
            for (kind, value) in others {
                if let Some(v) = value {
                    errors.push(self.error_at(
                        v.span(),
                        Some(&format!("trigger.{kind}")),
                        format!("trigger type {kind:?} is not supported by Gantry; only `[[trigger.http]]` is"),
                    ));
                }
            }
            for (index, item) in trig.http.into_iter().enumerate() {
                let field = format!("trigger.http[{index}]");
                let span = item.span();
                if let Some(t) = self.trigger(
                    &field,
                    span,
                    item.into_inner(),
                    &components,
                    &mut seen_routes,
                    errors,
                ) {
                    triggers.push(t);
                }
            }
        }
        if triggers.is_empty() && errors.is_empty() {
            errors.push(self.error_at(
                0..0,
                Some("trigger.http"),
                "the application has no `[[trigger.http]]`; add one with `route` and `component`",
            ));
        }

        Some(App {
            path: self.path.clone(),
            dir: self.dir.clone(),
            name,
            version: app_table.version,
            description: app_table.description,
            variables: vars,
            components,
            triggers,
        })
    }

    fn component(
        &self,
        id: &str,
        span: Range<usize>,
        raw: RawComponent,
        vars: &BTreeMap<String, VariableSpec>,
        errors: &mut Vec<ManifestError>,
    ) -> Option<ComponentSpec> {
        let base = format!("component.{id}");
        let unsupported = [
            ("ai_models", raw.ai_models.as_ref()),
            ("dependencies", raw.dependencies.as_ref()),
            (
                "dependencies_inherit_configuration",
                raw.dependencies_inherit_configuration.as_ref(),
            ),
        ];
        for (name, value) in unsupported {
            if let Some(v) = value {
                let empty = matches!(v.get_ref(), toml::Value::Array(a) if a.is_empty())
                    || matches!(v.get_ref(), toml::Value::Table(t) if t.is_empty());
                if !empty {
                    errors.push(self.error_at(
                        v.span(),
                        Some(&format!("{base}.{name}")),
                        format!("`{name}` is not supported by Gantry yet; remove it or run this component under Spin"),
                    ));
                }
            }
        }
        if let Some(v) = &raw.allowed_http_hosts {
            errors.push(self.error_at(
                v.span(),
                Some(&format!("{base}.allowed_http_hosts")),
                "`allowed_http_hosts` is Spin manifest v1; use `allowed_outbound_hosts = [\"https://example.com\"]`",
            ));
        }

        // Source.
        let source_field = format!("{base}.source");
        let Some(source) = raw.source else {
            errors.push(self.error_at(
                span,
                Some(&source_field),
                "missing `source`: the path of the component's .wasm file",
            ));
            return None;
        };
        let source_location = self.location(source.span(), Some(&source_field));
        let mut download = None;
        let source_path = match source.get_ref() {
            toml::Value::String(s) => {
                let p = self.dir.join(s);
                let problem = match std::fs::metadata(&p) {
                    _ if !self.check_sources => None,
                    Ok(m) if m.is_file() => None,
                    Ok(m) if m.is_dir() => {
                        Some(format!("{} is a directory, not a .wasm file", p.display()))
                    }
                    Ok(_) => Some(format!(
                        "{} is not a regular file (a device, FIFO or socket); give the path of a .wasm file",
                        p.display()
                    )),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                        "file {} does not exist{}",
                        p.display(),
                        if raw.build.is_some() {
                            " (build it first, or run with `--build`)"
                        } else {
                            ""
                        }
                    )),
                    Err(e) => Some(format!("cannot read {}: {e}", p.display())),
                };
                if let Some(message) = problem {
                    errors.push(ManifestError {
                        location: source_location.clone(),
                        message,
                    });
                }
                p
            }
            toml::Value::Table(t) if t.contains_key("url") => {
                match Download::from_table(t, &source_location) {
                    Ok(d) => {
                        download = Some(d);
                        // Set to the downloaded file by `sources::fetch_all`.
                        PathBuf::new()
                    }
                    Err(e) => {
                        errors.push(e);
                        return None;
                    }
                }
            }
            other => {
                errors.push(ManifestError {
                    location: source_location,
                    message: format!(
                        "expected a path string like \"target/wasm32-wasip2/release/app.wasm\", found {}",
                        type_name(other)
                    ),
                });
                return None;
            }
        };

        // Variables: templates over application variables.
        let mut comp_vars = BTreeMap::new();
        for (k, v) in raw.variables {
            let field = format!("{base}.variables.{}", k.get_ref());
            if !is_valid_name(k.get_ref()) {
                errors.push(self.error_at(
                    k.span(),
                    Some(&field),
                    format!(
                        "invalid variable name {:?}: use lowercase letters, digits and underscores, starting with a letter",
                        k.get_ref()
                    ),
                ));
                continue;
            }
            match self.template(v.get_ref(), v.span(), &field, vars) {
                Ok(t) => {
                    comp_vars.insert(k.into_inner(), t);
                }
                Err(e) => errors.push(e),
            }
        }

        // Key-value stores and SQLite databases: labels, each once.
        let key_value_stores = self.labels(&base, "key_value_stores", raw.key_value_stores, errors);
        let sqlite_databases = self.labels(&base, "sqlite_databases", raw.sqlite_databases, errors);
        let files = self.files(&base, raw.files, errors);
        let exclude_files = self.exclude_files(&base, raw.exclude_files, errors);

        // Outbound hosts: each a pattern, possibly with templates.
        let mut outbound = Vec::new();
        for (i, host) in raw.allowed_outbound_hosts.into_iter().enumerate() {
            let field = format!("{base}.allowed_outbound_hosts[{i}]");
            let template = match self.template(host.get_ref(), host.span(), &field, vars) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let location = self.location(host.span(), Some(&field));
            if template.is_literal()
                && let Err(msg) = HostPattern::parse(host.get_ref())
            {
                errors.push(ManifestError {
                    location,
                    message: msg,
                });
                continue;
            }
            outbound.push(OutboundRule {
                raw: host.into_inner(),
                template,
                location,
            });
        }

        // Build.
        let build = match raw.build {
            None => None,
            Some(b) => {
                let span = b.span();
                let b = b.into_inner();
                let command = match b.command.get_ref() {
                    toml::Value::String(s) if !s.trim().is_empty() => {
                        Some(BuildCommand::Shell(s.clone()))
                    }
                    toml::Value::Array(items)
                        if !items.is_empty() && items.iter().all(|i| i.is_str()) =>
                    {
                        Some(BuildCommand::Sequence(
                            items
                                .iter()
                                .filter_map(|i| i.as_str().map(str::to_string))
                                .collect(),
                        ))
                    }
                    _ => {
                        errors.push(self.error_at(
                            b.command.span(),
                            Some(&format!("{base}.build.command")),
                            "expected a command string, or an array of command strings",
                        ));
                        None
                    }
                };
                let workdir = self.dir.join(b.workdir.as_deref().unwrap_or("."));
                if !workdir.is_dir() {
                    errors.push(self.error_at(
                        span,
                        Some(&format!("{base}.build.workdir")),
                        format!("folder {} does not exist", workdir.display()),
                    ));
                }
                command.map(|command| BuildSpec {
                    command,
                    workdir,
                    watch: b.watch,
                })
            }
        };

        // Tools: ours is validated, others are Spin's business (ignored).
        let mut gantry = GantrySettings::default();
        let mut gantry_location = source_location.clone();
        if let Some(v) = raw.tool.get("gantry") {
            let field = format!("{base}.tool.gantry");
            gantry_location = self.location(v.span(), Some(&field));
            match GantrySettings::deserialize(v.get_ref().clone()) {
                Ok(g) => {
                    let at = |name: &str| {
                        let span = v
                            .get_ref()
                            .get(name)
                            .map(|_| key_span(self.text, v.span(), name))
                            .unwrap_or(v.span());
                        self.location(span, Some(&format!("{field}.{name}")))
                    };
                    if let Some(ms) = g.timeout_ms
                        && !(1..=MAX_TIMEOUT_MS).contains(&ms)
                    {
                        errors.push(ManifestError {
                            location: at("timeout_ms"),
                            message: format!(
                                "timeout_ms = {ms} is out of range: give 1 to {MAX_TIMEOUT_MS} (24 hours)"
                            ),
                        });
                    }
                    if g.max_concurrency == Some(0) {
                        errors.push(ManifestError {
                            location: at("max_concurrency"),
                            message:
                                "max_concurrency = 0 would refuse every request: give 1 or more"
                                    .into(),
                        });
                    }
                    gantry = g;
                }
                Err(e) => errors.push(self.error_at(
                    v.span(),
                    Some(&field),
                    e.message().trim().to_string(),
                )),
            }
        }

        Some(ComponentSpec {
            id: id.to_string(),
            description: raw.description,
            source: source_path,
            download,
            app_dir: self.dir.clone(),
            source_location,
            allowed_outbound_hosts: outbound,
            environment: raw.environment,
            variables: comp_vars,
            build,
            gantry,
            gantry_location,
            gpio: Vec::new(),
            key_value_stores,
            sqlite_databases,
            files,
            exclude_files,
        })
    }

    fn template(
        &self,
        text: &str,
        span: Range<usize>,
        field: &str,
        vars: &BTreeMap<String, VariableSpec>,
    ) -> Result<Template, ManifestError> {
        let t = Template::parse(text).map_err(|m| self.error_at(span.clone(), Some(field), m))?;
        for name in t.references() {
            if !vars.contains_key(name) {
                return Err(self.error_at(
                    span,
                    Some(field),
                    format!("refers to variable `{name}`, which `[variables]` does not define"),
                ));
            }
        }
        Ok(t)
    }

    fn trigger(
        &self,
        field: &str,
        span: Range<usize>,
        raw: RawHttpTrigger,
        components: &BTreeMap<String, ComponentSpec>,
        seen: &mut BTreeMap<String, String>,
        errors: &mut Vec<ManifestError>,
    ) -> Option<HttpTrigger> {
        if let Some(exec) = &raw.executor {
            let is_spin = exec
                .get_ref()
                .as_table()
                .and_then(|t| t.get("type"))
                .and_then(|t| t.as_str())
                == Some("spin");
            if !is_spin {
                errors.push(self.error_at(
                    span.clone(),
                    Some(&format!("{field}.executor")),
                    "only the default `spin` executor is supported (Wagi is not)",
                ));
            }
        }
        let Some(route) = raw.route else {
            errors.push(self.error_at(
                span,
                Some(&format!("{field}.route")),
                "missing `route`: a path like \"/hello\" or \"/api/...\", or `{ private = true }`",
            ));
            return None;
        };
        let route_field = format!("{field}.route");
        let route_span = route.span();
        let route = match route.get_ref() {
            toml::Value::String(s) if s.starts_with('/') => RouteSpec::Path(s.clone()),
            toml::Value::String(s) => {
                errors.push(self.error_at(
                    route_span.clone(),
                    Some(&route_field),
                    format!("route {s:?} must start with '/'"),
                ));
                return None;
            }
            toml::Value::Table(t)
                if t.len() == 1
                    && t.get("private").and_then(toml::Value::as_bool) == Some(true) =>
            {
                RouteSpec::Private
            }
            other => {
                errors.push(self.error_at(
                    route_span.clone(),
                    Some(&route_field),
                    format!(
                        "expected a route string like \"/hello\" or `{{ private = true }}`, found {}",
                        short(other)
                    ),
                ));
                return None;
            }
        };
        if let RouteSpec::Path(p) = &route
            && let Err(m) = crate::router::validate_route(p)
        {
            errors.push(self.error_at(route_span.clone(), Some(&route_field), m));
            return None;
        }
        let component = match (raw.component, raw.static_response) {
            (Some(c), None) => c,
            (None, Some(sr)) => {
                if let RouteSpec::Private = route {
                    errors.push(self.error_at(
                        route_span,
                        Some(&route_field),
                        "a private route cannot have a `static_response`: nothing could reach it",
                    ));
                    return None;
                }
                let target =
                    self.static_response(&format!("{field}.static_response"), sr, errors)?;
                if let RouteSpec::Path(p) = &route {
                    let key = crate::router::normalize_route(p);
                    if let Some(previous) = seen.insert(key, "a static response".into()) {
                        errors.push(self.error_at(
                            route_span,
                            Some(&route_field),
                            format!("route {p:?} is already routed to {previous}; each route may appear once"),
                        ));
                        return None;
                    }
                }
                return Some(HttpTrigger {
                    route,
                    target: TriggerTarget::Static(std::sync::Arc::new(target)),
                    location: self.location(span, Some(field)),
                });
            }
            (None, None) => {
                errors.push(self.error_at(
                    span,
                    Some(&format!("{field}.component")),
                    "missing `component` (the id of a `[component.<id>]` table) or `static_response`",
                ));
                return None;
            }
            (Some(_), Some(sr)) => {
                errors.push(self.error_at(
                    sr.span(),
                    Some(&format!("{field}.static_response")),
                    "a trigger has either a `component` or a `static_response`, not both",
                ));
                return None;
            }
        };
        let comp_span = component.span();
        let component_id = match component.get_ref() {
            toml::Value::String(s) => s.clone(),
            other => {
                errors.push(self.error_at(
                    comp_span,
                    Some(&format!("{field}.component")),
                    format!(
                        "expected a component id string (inline components are not supported yet), found {}",
                        type_name(other)
                    ),
                ));
                return None;
            }
        };
        if !components.contains_key(&component_id) {
            let known: Vec<&str> = components.keys().map(String::as_str).collect();
            errors.push(self.error_at(
                comp_span,
                Some(&format!("{field}.component")),
                format!(
                    "no component {component_id:?} is defined (known: {}); add `[component.{component_id}]` or fix the id",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
            return None;
        }
        if let RouteSpec::Path(p) = &route {
            let key = crate::router::normalize_route(p);
            if let Some(previous) = seen.insert(key, format!("component {component_id:?}")) {
                errors.push(self.error_at(
                    route_span,
                    Some(&route_field),
                    format!(
                        "route {p:?} is already routed to {previous}; each route may appear once"
                    ),
                ));
                return None;
            }
        }
        Some(HttpTrigger {
            route,
            target: TriggerTarget::Component(component_id),
            location: self.location(span, Some(field)),
        })
    }

    /// A `static_response = { status_code, headers, body }` table, checked
    /// whole: every problem is reported with its field.
    fn static_response(
        &self,
        field: &str,
        raw: Spanned<toml::Value>,
        errors: &mut Vec<ManifestError>,
    ) -> Option<StaticResponse> {
        let span = raw.span();
        let toml::Value::Table(table) = raw.into_inner() else {
            errors.push(self.error_at(
                span,
                Some(field),
                "expected a table like `{ status_code = 200, headers = { \"content-type\" = \"text/plain\" }, body = \"...\" }`",
            ));
            return None;
        };
        let before = errors.len();
        let mut response = StaticResponse {
            status: http::StatusCode::OK,
            headers: Vec::new(),
            body: bytes::Bytes::new(),
        };
        for (key, value) in table {
            let here = format!("{field}.{key}");
            match (key.as_str(), value) {
                ("status_code", toml::Value::Integer(n)) => {
                    match u16::try_from(n).ok().filter(|n| (100..=599).contains(n)).map(http::StatusCode::from_u16) {
                        Some(Ok(status)) => response.status = status,
                        _ => errors.push(self.error_at(
                            span.clone(),
                            Some(&here),
                            format!("{n} is not an HTTP status code (100 to 599)"),
                        )),
                    }
                }
                ("headers", toml::Value::Table(headers)) => {
                    for (name, value) in headers {
                        let header = format!("{here}.{name}");
                        let parsed_name = http::HeaderName::from_bytes(name.as_bytes());
                        let parsed_value = value
                            .as_str()
                            .map(http::HeaderValue::from_str);
                        match (parsed_name, parsed_value) {
                            (Ok(n), Some(Ok(v))) => response.headers.push((n, v)),
                            (Err(_), _) => errors.push(self.error_at(
                                span.clone(),
                                Some(&header),
                                format!("{name:?} is not a valid header name"),
                            )),
                            (_, None) => errors.push(self.error_at(
                                span.clone(),
                                Some(&header),
                                format!("expected a string value, found {}", type_name(&value)),
                            )),
                            (_, Some(Err(_))) => errors.push(self.error_at(
                                span.clone(),
                                Some(&header),
                                "the value holds characters a header cannot carry (a line break or control character)",
                            )),
                        }
                    }
                }
                ("body", toml::Value::String(body)) => response.body = bytes::Bytes::from(body),
                (k @ ("status_code" | "headers" | "body"), other) => errors.push(self.error_at(
                    span.clone(),
                    Some(&here),
                    format!(
                        "expected {}, found {}",
                        match k {
                            "status_code" => "an integer",
                            "headers" => "a table of strings",
                            _ => "a string",
                        },
                        type_name(&other)
                    ),
                )),
                (k, _) => errors.push(self.error_at(
                    span.clone(),
                    Some(&here),
                    format!("unknown field `{k}`: a static response has `status_code`, `headers` and `body`"),
                )),
            }
        }
        (errors.len() == before).then_some(response)
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

fn short(v: &toml::Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

/// Spin's component ids: lowercase words of letters and digits joined by '-'
/// (underscores are accepted too, as Spin does for older manifests).
pub fn is_valid_component_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && id.split(['-', '_']).all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// The dotted key path of the innermost value or key covering byte `offset`,
/// found by re-parsing with spans. Used to name the field of serde errors.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let mut best: Option<String> = None;
    walk_table(doc.get_ref(), "", offset, &mut best);
    best
}

fn walk_table(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    offset: usize,
    best: &mut Option<String>,
) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let in_key = key.span().contains(&offset);
        let in_value = value.span().contains(&offset) || value.span().start == offset;
        if in_key || in_value {
            *best = Some(name.clone());
        }
        walk_value(value.get_ref(), &name, offset, best);
    }
}

fn walk_value(value: &toml::de::DeValue<'_>, name: &str, offset: usize, best: &mut Option<String>) {
    match value {
        toml::de::DeValue::Table(t) => walk_table(t, name, offset, best),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let n = format!("{name}[{i}]");
                if item.span().contains(&offset) {
                    *best = Some(n.clone());
                }
                walk_value(item.get_ref(), &n, offset, best);
            }
        }
        _ => {}
    }
}

/// For syntax errors, where no key can be found: the table header in effect
/// at `offset` (the nearest `[...]` line above it), or `(top level)`.
fn enclosing_table(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "(top level)".into())
}

/// Names declared anywhere, for tests and `gantry check` output.
pub fn component_ids(app: &App) -> BTreeSet<&str> {
    app.components.keys().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(Path::new("/tmp/app/spin.toml"), text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_top_level_key_names_line_and_field() {
        let e = err("spin_manifest_version = 2\n[application]\nname = \"a\"\n\nbogus = 1\n");
        assert!(e.contains("spin.toml:"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn version_must_be_two() {
        let e = err("spin_manifest_version = 1\n[application]\nname = \"a\"\n");
        assert!(e.contains("spin.toml:1:"), "{e}");
        assert!(e.contains("spin_manifest_version"), "{e}");
    }

    #[test]
    fn field_path_of_wrong_type() {
        let e = err("spin_manifest_version = 2\n[application]\nname = 5\n");
        assert!(e.contains("spin.toml:3:"), "{e}");
        assert!(e.contains("application.name"), "{e}");
    }

    #[test]
    fn component_ids() {
        assert!(is_valid_component_id("hello"));
        assert!(is_valid_component_id("linus-left2"));
        assert!(!is_valid_component_id("Hello"));
        assert!(!is_valid_component_id("1abc"));
        assert!(!is_valid_component_id("a--b"));
        assert!(!is_valid_component_id(""));
    }
}
