//! Command line: argument parsing and wiring only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::{self, AdminState};
use crate::capabilities;
use crate::gpio;
use crate::manifest::{self, App};
use crate::runtime::{self, LiveApp, Runtime, RuntimeConfig};
use crate::server::{self, AppServer, Limits};
use crate::swap::Swapper;

/// The manifest file itself, when given its folder.
fn manifest_path(p: &Path) -> PathBuf {
    let p = if p.is_dir() {
        p.join("spin.toml")
    } else {
        p.to_path_buf()
    };
    std::path::absolute(&p).unwrap_or(p)
}
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp_metrics::MetricsExport;
use crate::telemetry::trace::Tracing;
use crate::telemetry::{self, LogFormat};

/// Gantry serves the WASI HTTP components of a Spin application.
#[derive(Parser, Debug)]
#[command(name = "gantry", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the application's routes (like `spin up`) until Ctrl-C or SIGTERM.
    Up(Box<UpArgs>),
    /// Load and validate the manifest and every component, then exit; no listener.
    Check(CheckArgs),
    /// Compile every component as `gantry up` with the same flags and
    /// environment would, into a folder that `--precompiled` (or
    /// GANTRY_PRECOMPILED_DIR) reads at start: no compile on the first request.
    Compile(Box<CompileArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct CompileArgs {
    /// Where to write the compiled components (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The flags `gantry up` will run with: those that shape the compiled
    /// code (--max-instance-memory, --memory-init, --no-pooling,
    /// --one-engine) must match, or the artifacts are not used.
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AppArgs {
    /// The application manifest, or the folder that holds its spin.toml.
    #[arg(
        short = 'f',
        long = "from",
        default_value = "spin.toml",
        value_name = "MANIFEST"
    )]
    pub manifest: PathBuf,

    /// Set an application variable (overrides SPIN_VARIABLE_<NAME> and defaults).
    #[arg(long = "variable", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub variables: Vec<(String, String)>,

    /// Folder for compiled components, reused across restarts.
    #[arg(long, env = "GANTRY_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Do not read or write the compile cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Spin's runtime-config file: where key-value stores and SQLite
    /// databases live (`[key_value_store.<label>]`,
    /// `[sqlite_database.<label>]`, `state_dir`).
    #[arg(long, env = "GANTRY_RUNTIME_CONFIG_FILE", value_name = "FILE")]
    pub runtime_config_file: Option<PathBuf>,

    /// Folder of the app's state (Spin's default: `.spin` beside
    /// spin.toml): the default key-value store and SQLite database.
    #[arg(long, env = "GANTRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// A read-only folder of compiled components (written by `gantry
    /// compile`), looked in before the cache. An artifact of another Gantry
    /// or wasmtime version, other engine settings or another CPU has another
    /// name there and is not used; the component is compiled instead.
    #[arg(long, env = "GANTRY_PRECOMPILED_DIR", value_name = "DIR")]
    pub precompiled: Option<PathBuf>,

    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub app: AppArgs,

    /// Address of the application listener.
    #[arg(long, default_value = "127.0.0.1:3000", env = "GANTRY_LISTEN")]
    pub listen: SocketAddr,

    /// Address of the admin listener (/healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9464", env = "GANTRY_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,

    /// Run each component's build command before serving.
    #[arg(long)]
    pub build: bool,

    /// A SQL statement, or `@FILE` of statements, run against the default
    /// SQLite database before serving (repeatable, in order; as `spin up`).
    #[arg(long = "sqlite", value_name = "STATEMENT|@FILE")]
    pub sqlite: Vec<String>,

    /// Swap a component in when its `.wasm` changes, and re-read spin.toml
    /// when it changes (routes and components added, removed, replaced).
    /// With --build: rebuild a component when a file its build `watch`
    /// globs match changes (only that one), and swap the result in; a
    /// failed build is shown and the running version keeps serving.
    #[arg(long)]
    pub watch: bool,

    /// How often --watch looks at the files; a change is acted on once the
    /// file has been still for one interval (e.g. 200ms, 1s).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub watch_interval: Duration,

    /// Bearer token for the admin listener's mutating calls (component swap
    /// and rollback). Required when --admin-listen is not a loopback address.
    #[arg(long, env = "GANTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Turn the admin listener's mutating calls off (they answer 403), token
    /// or not: what a probe- and scrape-only admin port needs, on any address.
    #[arg(long, env = "GANTRY_ADMIN_READ_ONLY")]
    pub admin_read_only: bool,

    /// Longest a request may take before the guest is stopped with a 504
    /// (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Largest linear memory one instance may use (e.g. 128MiB; 64KiB to 4GiB).
    #[arg(
        long,
        default_value = "128MiB",
        env = "GANTRY_MAX_INSTANCE_MEMORY",
        value_parser = parse_instance_memory
    )]
    pub max_instance_memory: u64,

    /// Largest request body accepted; larger ones get 413 (e.g. 10MiB).
    #[arg(long, default_value = "10MiB", value_parser = parse_size)]
    pub max_request_body: u64,

    /// Most instances alive at once (requests in flight); beyond it, 503.
    /// Default: 128, or fewer where --memory-budget holds fewer instances of
    /// --max-instance-memory.
    #[arg(long, env = "GANTRY_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=MAX_POOL as i64))]
    pub pool_size: Option<u32>,

    /// Memory all instances together may use: the pool must fit in it
    /// (pool size x max instance memory). Default: three quarters of the
    /// memory the process may use (its cgroup's limit, v2 or v1, else the
    /// machine's).
    #[arg(long, env = "GANTRY_MEMORY_BUDGET", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// Connections served at once; more wait in the listen backlog until one
    /// ends. Default: 4096, or fewer where the open-files limit is lower.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,

    /// Concurrent HTTP/2 streams (requests) one connection may open.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Time a client has to send a whole request head, from its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a connection may stay open with no request in flight.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long a write to a client may make no progress (a client that
    /// stopped reading) before its connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How much of each pooled instance's memory stays resident between
    /// requests, reset in place instead of handed back to the kernel, at
    /// the price of up to this much RSS per instance slot (0: keep
    /// nothing). Default: 2MiB on Linux, else 0.
    #[arg(long, env = "GANTRY_POOL_KEEP_RESIDENT", value_parser = parse_size)]
    pub pool_keep_resident: Option<u64>,

    /// How an instance's memory gets its initial contents: `copy` the data
    /// segments in, map the image copy-on-write (`cow`), or `auto`: copy when
    /// every component at start has at most 64 KiB of data, else cow.
    #[arg(long, value_enum, default_value = "auto", env = "GANTRY_MEMORY_INIT")]
    pub memory_init: runtime::MemoryInit,

    /// How long a request may wait for a free instance before it gets 503
    /// with Retry-After (absorbs bursts; 0 answers 503 at once).
    #[arg(long, default_value = "100ms", value_parser = parse_wait)]
    pub queue_timeout: Duration,

    /// Never use the pooling allocator (allocate instances on demand).
    #[arg(long)]
    pub no_pooling: bool,

    /// Run WASI 0.2 components on the one engine that 0.3 components need,
    /// with wasmtime's concurrency support. By default they get a second
    /// engine (and pool) without it, where an instance is cheaper to create.
    #[arg(long, env = "GANTRY_ONE_ENGINE")]
    pub one_engine: bool,

    /// GPIO backend: `sim` (in memory, watched at the admin listener's /gpio)
    /// or `rppal` (a Raspberry Pi's pins; fails at start anywhere else).
    #[arg(long, value_enum, default_value = "sim", env = "GANTRY_GPIO")]
    pub gpio: gpio::Backend,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub app: AppArgs,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if !crate::manifest::is_valid_name(k) {
        return Err(format!("{k:?} is not a valid variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The most instances a pool may have.
pub const MAX_POOL: u32 = 100_000;

/// The longest duration any flag takes: a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// `30s`, `500ms`, `2m`, `1h` (humantime's syntax), or plain seconds; more
/// than zero, at most a day.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = read_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is too long: at most 24h"));
    }
    if d.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(d)
}

fn read_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {s:?} is too long: at most 24h"));
    }
    humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => {
            format!("duration {s:?} is too long: at most 24h")
        }
        e => format!("expected a duration like 30s or 500ms, got {s:?}: {e}"),
    })
}

/// A linear memory limit: at least one WebAssembly page, at most the 4 GiB a
/// 32-bit memory can address.
fn parse_instance_memory(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(64 << 10..=4 << 30).contains(&n) {
        return Err(format!(
            "{s:?} is out of range: an instance's memory is 64KiB to 4GiB"
        ));
    }
    Ok(n)
}

/// Like [`parse_duration`], but zero is allowed (`0` means "do not wait").
fn parse_wait(s: &str) -> Result<Duration, String> {
    match read_duration(s)? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// `128MiB`, `10MB`, `512KiB`, `1GiB`, or plain bytes (bytesize's syntax).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("expected a size like 128MiB, got {s:?}: {e}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Up(a) => a.app.log_format,
        Command::Check(a) => a.app.log_format,
        Command::Compile(a) => a.up.app.log_format,
    };
    telemetry::init_logging(log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Up(args) => up(*args).await,
            Command::Check(args) => check(args),
            Command::Compile(args) => compile(*args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the app's state lives: the runtime-config file's stores and
/// databases over Spin's defaults, in the state folder (`--state-dir`, else
/// the file's `state_dir`, else `.spin` beside spin.toml, Spin's).
fn state_config(
    args: &AppArgs,
    app: &App,
) -> anyhow::Result<(
    capabilities::key_value::Config,
    capabilities::sqlite::Config,
)> {
    let file = match &args.runtime_config_file {
        Some(path) => {
            crate::manifest::runtime_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => Default::default(),
    };
    let state_dir = args
        .state_dir
        .clone()
        .or(file.state_dir.clone())
        .unwrap_or_else(|| app.dir.join(".spin"));
    let databases = file
        .sqlite_databases
        .iter()
        .map(|(label, d)| (label.clone(), d.path.clone()))
        .collect();
    Ok((
        capabilities::key_value::Config::new(&state_dir, &file.key_value_stores),
        capabilities::sqlite::Config::new(&state_dir, &databases),
    ))
}

/// `--sqlite`: each a statement, or `@FILE` of statements, run in order
/// against the default database before serving (as `spin up` does).
fn run_sqlite_statements(
    statements: &[String],
    config: &capabilities::sqlite::Config,
) -> anyhow::Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    let path = config
        .path("default")
        .context("no default SQLite database")?;
    let conn = capabilities::sqlite::connect(path)?;
    for s in statements {
        let (sql, what) = match s.strip_prefix('@') {
            Some(file) => (
                std::fs::read_to_string(file)
                    .with_context(|| format!("--sqlite @{file}: cannot read the file"))?,
                format!("--sqlite @{file}"),
            ),
            None => (s.clone(), format!("--sqlite {s:?}")),
        };
        conn.execute_batch(&sql)
            .with_context(|| format!("{what} failed against {}", path.display()))?;
    }
    Ok(())
}

/// Reads the manifest and gives each `{ url, digest }` source its file.
fn load_manifest(args: &AppArgs, check_sources: bool) -> anyhow::Result<App> {
    let mut app =
        manifest::load_with(&args.manifest, check_sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = crate::sources::downloads_dir(
        args.cache_dir
            .clone()
            .or_else(runtime::default_cache_dir)
            .as_deref(),
    );
    crate::sources::fetch_all(&mut app, &dir).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    Ok(app)
}

fn runtime_config(args: &AppArgs, pool_size: u32, max_memory: u64, pooling: bool) -> RuntimeConfig {
    RuntimeConfig {
        pool_size,
        max_instance_memory: max_memory,
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir.clone().or_else(runtime::default_cache_dir)
        },
        precompiled_dir: args
            .precompiled
            .clone()
            .filter(|d| !d.as_os_str().is_empty()),
        pooling,
        keep_resident: 0,
        memory_init_cow: true,
        plain_engine: true,
    }
}

fn load_live(runtime: &Runtime, app: App, args: &AppArgs) -> anyhow::Result<LiveApp> {
    let overrides: BTreeMap<String, String> = args.variables.iter().cloned().collect();
    runtime::load_app(runtime, app, &overrides).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })
}

/// The engine settings `gantry up` runs with: `gantry compile` uses the same,
/// so that what it writes is what `up` looks for.
fn up_runtime_config(args: &UpArgs, app: &App, pool_size: u32) -> RuntimeConfig {
    let data_sizes: Vec<Option<u64>> = app
        .components
        .values()
        .map(|c| {
            // Read only when valid: this runs before wasmtime has looked at it.
            std::fs::read(&c.source)
                .ok()
                .filter(|b| runtime::is_valid_wasm(b))
                .and_then(|b| runtime::data_segment_bytes(&b))
        })
        .collect();
    let memory_init_cow = args.memory_init.use_cow(data_sizes.iter().copied());
    let keep_resident = args
        .pool_keep_resident
        .unwrap_or_else(runtime::default_keep_resident);
    tracing::info!(
        mode = ?args.memory_init,
        largest_data = data_sizes.iter().flatten().max().copied().unwrap_or(0),
        copy_on_write = memory_init_cow,
        keep_resident,
        "instance memory initialisation"
    );
    RuntimeConfig {
        keep_resident,
        memory_init_cow,
        plain_engine: !args.one_engine,
        ..runtime_config(
            &args.app,
            pool_size,
            args.max_instance_memory,
            !args.no_pooling,
        )
    }
}

/// `gantry compile`: every component compiled into `--out`, as `up` would.
fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let mut up = args.up;
    let app = load_manifest(&up.app, true)?;
    up.app.no_cache = false;
    up.app.precompiled = None;
    up.app.cache_dir = Some(args.out.clone());
    let mut config = up_runtime_config(&up, &app, 1);
    config.cache_dir = Some(args.out.clone());
    let runtime = Runtime::new(config)?;
    // Existing artifacts count: a second run compiles nothing.
    let live = load_live(&runtime, app, &up.app)?;
    for slot in &live.slots {
        let v = slot.current.load();
        let l = &v.loaded;
        println!(
            "  {:<12} {:>8} bytes  {}",
            slot.id,
            l.size,
            if l.from_cache {
                "(already compiled)".to_string()
            } else {
                format!("compiled in {:.2?}", l.compile_time)
            }
        );
    }
    println!(
        "Compiled {} components into {} (serve with --precompiled {} or \
         GANTRY_PRECOMPILED_DIR)",
        live.slots.len(),
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let app = load_manifest(&args.app, true)?;
    state_config(&args.app, &app)?;
    let config = runtime_config(&args.app, 1, 128 << 20, false);
    let runtime = Runtime::new(config)?;
    let live = load_live(&runtime, app, &args.app)?;
    let app = &live.app;
    println!(
        "{}: application {:?}{}",
        app.path.display(),
        app.name,
        app.version
            .as_deref()
            .map(|v| format!(" version {v}"))
            .unwrap_or_default()
    );
    println!("Components:");
    for slot in &live.slots {
        let v = slot.current.load();
        let l = &v.loaded;
        println!(
            "  {:<12} {:<33} {:>8} bytes  {}  {}",
            slot.id,
            format!(
                "{} ({} engine)",
                l.world,
                runtime::engine_name(l.handler.on_concurrent_engine())
            ),
            l.size,
            l.digest,
            if l.from_cache {
                "(from cache)".to_string()
            } else {
                format!("(compiled in {:.2?})", l.compile_time)
            }
        );
        if let Some(how) = l.componentized {
            println!("  {:<12} {how}", "");
        }
        if l.release_candidate {
            println!(
                "  {:<12} WASI 0.3.0-rc-2026-03-15 interfaces, served through 0.3.0",
                ""
            );
        }
    }
    let granted: Vec<_> = app
        .components
        .values()
        .filter(|c| !c.gpio.is_empty())
        .collect();
    if !granted.is_empty() {
        println!("GPIO grants:");
        for c in granted {
            let pins: Vec<String> = c
                .gpio
                .iter()
                .map(|g| format!("{}=BCM{} {}", g.label, g.pin, g.mode.name()))
                .collect();
            println!("  {:<12} {}", c.id, pins.join(", "));
        }
    }
    println!("Routes:");
    for t in &app.triggers {
        let target = match &t.target {
            manifest::TriggerTarget::Component(id) => id.clone(),
            manifest::TriggerTarget::Static(r) => format!("(static {})", r.status.as_u16()),
        };
        match &t.route {
            manifest::RouteSpec::Path(p) => println!("  {target:<12} {p}"),
            manifest::RouteSpec::Private => println!("  {target:<12} (private)"),
        }
    }
    println!(
        "OK: {} components, {} routes",
        live.slots.len(),
        live.router.entries().len()
    );
    Ok(())
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    // Installed first, so that SIGTERM while loading still shuts down cleanly.
    let signals = ShutdownSignals::install()?;
    // Taken before reading it, so `--watch` sees an edit made while loading.
    let manifest_seen = crate::swap::signature(&manifest_path(&args.app.manifest));
    let app = load_manifest(&args.app, !args.build)?;
    let app = if args.build {
        crate::builder::build_all(&app)?;
        load_manifest(&args.app, true)?
    } else {
        app
    };

    if let Some(t) = &args.admin_token
        && t.trim().is_empty()
    {
        bail!(
            "--admin-token (or GANTRY_ADMIN_TOKEN) is empty: an empty token would let anyone \
             swap components; give a secret (e.g. `openssl rand -hex 32`), or leave it unset"
        );
    }
    if !args.admin_listen.ip().is_loopback() && args.admin_token.is_none() && !args.admin_read_only
    {
        bail!(
            "--admin-listen {} is not a loopback address: set --admin-token (or \
             GANTRY_ADMIN_TOKEN) so that only its holder can swap components, or \
             --admin-read-only to turn swapping through the admin listener off",
            args.admin_listen
        );
    }
    let budget = args.memory_budget.unwrap_or_else(default_memory_budget);
    let pool_size = sized_pool(args.pool_size, budget, args.max_instance_memory)?;
    if args
        .pool_keep_resident
        .is_some_and(|k| k > args.max_instance_memory)
    {
        bail!("--pool-keep-resident is more than --max-instance-memory");
    }
    let open_files = crate::connection::raise_open_files_limit();
    let max_connections = connection_limit(args.max_connections, open_files)?;
    // The board first: a Pi backend off a Pi fails here, before anything loads.
    let board = gpio::open(args.gpio)?;
    let metrics = Arc::new(Metrics::new());
    let tracer = Arc::new(Tracing::init(&metrics)?);
    let (kv_config, sqlite_config) = state_config(&args.app, &app)?;
    run_sqlite_statements(&args.sqlite, &sqlite_config)?;
    let shared = Arc::new(capabilities::Shared::new(&capabilities::Settings {
        metrics: metrics.clone(),
        board: board.clone(),
        key_value: kv_config,
        sqlite: sqlite_config,
    })?);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        board: Some(board),
        token: args.admin_token.clone(),
        read_only: args.admin_read_only,
        ..AdminState::default()
    });
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    tokio::spawn(admin::serve(admin_listener, admin_state.clone()));

    let config = up_runtime_config(&args, &app, pool_size);
    tracing::info!(
        pool_size,
        max_instance_memory = args.max_instance_memory,
        memory_budget = budget,
        max_connections,
        open_files,
        "limits"
    );
    let runtime = Arc::new(Runtime::new(config)?);
    let live = load_live(&runtime, app, &args.app)?;
    for (id, spec) in &live.app.components {
        shared.claim(id, spec)?;
    }
    let cached = live
        .slots
        .iter()
        .filter(|s| s.current.load().loaded.from_cache)
        .count();
    tracing::info!(
        components = live.slots.len(),
        from_cache = cached,
        pooling = runtime.uses_pooling(),
        "application loaded"
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if live.router.entries().is_empty() {
        bail!("the application has no public routes");
    }
    let routes_text = routes_text(&live, addr, admin_addr);

    let metrics_handle = metrics.clone();
    let server = Arc::new(AppServer::new(
        runtime.clone(),
        tracer.clone(),
        metrics,
        live,
        Limits {
            request_timeout: args.request_timeout,
            max_request_body: args.max_request_body,
            max_instance_memory: args.max_instance_memory,
            queue_timeout: args.queue_timeout,
            max_connections,
            max_streams_per_connection: args.max_streams_per_connection,
            conn: crate::connection::ConnLimits {
                header_read: args.header_read_timeout,
                idle: args.idle_timeout,
                write: args.write_timeout,
            },
        },
        shared,
    ));
    // Requests a component sends to the app itself come back to this server.
    let dispatch: std::sync::Weak<dyn crate::capabilities::outbound_http::AppDispatch> =
        Arc::downgrade(&server) as _;
    server.shared.http.set(dispatch);
    let metrics_export = MetricsExport::start(metrics_handle)?;
    let swapper = Arc::new(Swapper::new(
        runtime.clone(),
        server.clone(),
        manifest_path(&args.app.manifest),
        args.app.variables.iter().cloned().collect(),
    ));
    let _ = admin_state.swapper.set(swapper.clone());
    let _watcher = args.watch.then(|| {
        tracing::info!("watching spin.toml and every component's source for changes");
        swapper.clone().watch(args.watch_interval, manifest_seen)
    });
    // With --build too: a change to a component's `watch` globs rebuilds
    // that component, and the watcher above swaps the result in.
    let _rebuilder = if args.watch && args.build {
        tracing::info!("rebuilding a component when its build's watched sources change");
        Some(crate::builder::watch(swapper.clone(), args.watch_interval).await)
    } else {
        None
    };
    admin_state.ready.store(true, Ordering::Relaxed);
    // Announced once every admin call works, so whoever waits for this line
    // (a test, a script) can use all of them.
    print!("{routes_text}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let drain_state = admin_state.clone();
    let shutdown = async move {
        signals.recv().await;
        drain_state.draining.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: draining in-flight requests");
    };
    server::serve(listener, server, shutdown, args.shutdown_timeout).await;
    // A collector that does not answer must not hold the exit past the
    // pods' grace period: the last flush gets a few seconds, then is given up.
    let flush = async {
        if let Some(export) = metrics_export {
            export.shutdown().await;
        }
        // Flushing may wait on the collector; keep it off the async threads.
        let flushing = tracer.clone();
        let _ = tokio::task::spawn_blocking(move || flushing.shutdown()).await;
    };
    if tokio::time::timeout(TELEMETRY_FLUSH, flush).await.is_err() {
        tracing::warn!(
            "telemetry not flushed within {TELEMETRY_FLUSH:?}: the collector does not answer; \
             what was still queued is dropped"
        );
        tracing::info!("stopped");
        // The SDK's exporter threads would still wait on the collector while
        // the runtime and the providers are torn down: leave without them.
        std::process::exit(0);
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long the last telemetry flush may take at shutdown.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(3);

/// The default instance pool.
const DEFAULT_POOL: u32 = 128;

/// The pool: as asked, when it fits in the budget; else the default, cut to
/// what fits.
fn sized_pool(asked: Option<u32>, budget: u64, instance: u64) -> anyhow::Result<u32> {
    let fits = budget / instance.max(1);
    match asked {
        Some(n) if u64::from(n) > fits => bail!(
            "--pool-size {n} does not fit in the memory budget: {n} instances x {} MiB = {} MiB, \
             but --memory-budget is {} MiB (room for {fits}); lower --pool-size or \
             --max-instance-memory, or raise --memory-budget",
            instance >> 20,
            (u64::from(n) * instance) >> 20,
            budget >> 20
        ),
        Some(n) => Ok(n),
        None if fits == 0 => bail!(
            "--memory-budget {} MiB holds no instance of --max-instance-memory {} MiB",
            budget >> 20,
            instance >> 20
        ),
        None => Ok(DEFAULT_POOL.min(u32::try_from(fits).unwrap_or(u32::MAX))),
    }
}

/// Three quarters of what the process may use: its cgroup's memory limit
/// where there is one, else the machine's memory.
fn default_memory_budget() -> u64 {
    // cgroup v2, else v1 (still what some Raspberry Pi and older k3s nodes
    // run; an unlimited v1 group reads as a huge number, cut by MemTotal).
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|f| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    });
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let limit = match (cgroup, total) {
        (Some(c), Some(t)) => c.min(t),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => 16 << 30,
    };
    limit / 4 * 3
}

/// Descriptors kept free beside connections: listeners, files, outbound
/// calls, the cache.
const RESERVED_FDS: u64 = 256;

/// Connections at once: as asked when the descriptors allow it, else a
/// default within them.
fn connection_limit(asked: Option<u32>, open_files: u64) -> anyhow::Result<usize> {
    let room = open_files.saturating_sub(RESERVED_FDS).max(1);
    match asked {
        Some(n) if u64::from(n) > room => bail!(
            "--max-connections {n} needs more descriptors than the process may open: its \
             open-files limit is {open_files} ({room} after {RESERVED_FDS} kept for the host); \
             raise `ulimit -n` or lower --max-connections"
        ),
        Some(n) => Ok(n as usize),
        None => Ok(4096usize.min(usize::try_from(room).unwrap_or(usize::MAX))),
    }
}

fn routes_text(live: &LiveApp, addr: SocketAddr, admin: SocketAddr) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Serving http://{addr}");
    let _ = writeln!(out, "Admin {}", admin::describe(admin));
    let _ = writeln!(out, "Available Routes:");
    for e in live.router.entries() {
        let (path, suffix) = if e.is_wildcard() {
            (e.prefix().to_string(), " (wildcard)")
        } else {
            (e.raw.to_string(), "")
        };
        let path = if path.is_empty() { "/".into() } else { path };
        match &e.static_response {
            Some(r) => {
                let status = r.status.as_u16();
                let _ = writeln!(out, "  (static {status}): http://{addr}{path}{suffix}");
            }
            None => {
                let _ = writeln!(out, "  {}: http://{addr}{path}{suffix}", e.component);
            }
        }
    }
    out
}

/// Ctrl-C and (on Unix) SIGTERM, registered up front.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(ShutdownSignals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
        })
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("12XB").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("307445734561825861m").is_err());
        assert!(parse_duration("25h").is_err());
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_wait("0parsecs").is_err());
    }
}
