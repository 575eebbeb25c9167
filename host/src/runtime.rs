//! The wasmtime side: the engines (pooling allocator when the address space
//! allows it, epoch interruption, async), the on-disk compile cache, the
//! linker with every host interface a guest may import, and the loaded,
//! pre-instantiated components.
//!
//! There are two engines where the design names one: the one WASI 0.3 needs
//! (component-model async, concurrency support), and one without that
//! support for components that serve WASI 0.2 alone. Concurrency support
//! costs every instance of every component, 0.2 or not, about a quarter of
//! its instantiation (see `base_config`), and a 0.2 component gains nothing
//! from it. `--one-engine` keeps one.
//!
//! A loaded component is immutable; the live table holds each one behind an
//! `ArcSwap`, the single point where a new version replaces an old one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, Resource};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::http::types as p2_types;
use wasmtime_wasi_http::p3::bindings::http::types as p3_types;

use crate::capabilities::ComponentCaps;
use crate::capabilities::HostState;
use crate::manifest::{App, Location, TriggerTarget};
use crate::router::Router;

/// How often the epoch advances; the granularity of timeouts and of the
/// yields that keep one busy guest from starving the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Host settings that shape the engine and every store.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances alive at once (requests in flight), across components.
    pub pool_size: u32,
    /// Largest linear memory one instance may grow to, in bytes.
    pub max_instance_memory: u64,
    /// Where compiled components are kept between runs; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// A read-only folder of compiled components (`gantry compile`), looked
    /// in before `cache_dir` and never written.
    pub precompiled_dir: Option<PathBuf>,
    /// Use the pooling allocator if the probe allows it.
    pub pooling: bool,
    /// Bytes of each pooled memory and table kept resident (reset in place)
    /// when an instance is released; see `--pool-keep-resident`.
    pub keep_resident: u64,
    /// Map each instance's initial memory copy-on-write from the compiled
    /// image (true) or copy the data segments in (false); see `MemoryInit`.
    pub memory_init_cow: bool,
    /// Serve WASI 0.2 components from a second engine without concurrency
    /// support (see `Runtime::plain`); see `--one-engine`.
    pub plain_engine: bool,
}

/// How a new instance's linear memory gets its initial contents
/// (`--memory-init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryInit {
    /// `copy` when every component of the app has at most
    /// `COPY_INIT_LIMIT` bytes of data segments, else `cow`.
    Auto,
    /// Map the memory image copy-on-write: an instance touches only the
    /// pages it uses, but its first write to a page it has read is a fault
    /// that flushes the TLB of every CPU the host runs on.
    Cow,
    /// Copy the data segments into fresh memory at instantiation: no
    /// copy-on-write faults later, at the price of the copy.
    Copy,
}

/// Up to this many bytes of data segments, copying them in is cheaper than
/// the copy-on-write faults of a request (measured with the examples, 5 to
/// 42 KiB each: 8 to 15 % less CPU per request with `copy`).
pub const COPY_INIT_LIMIT: u64 = 64 << 10;

impl MemoryInit {
    /// Whether to map memory images copy-on-write, given the data segment
    /// sizes of the app's components (`None`: not known).
    pub fn use_cow(self, data_sizes: impl IntoIterator<Item = Option<u64>>) -> bool {
        match self {
            MemoryInit::Cow => true,
            MemoryInit::Copy => false,
            MemoryInit::Auto => !data_sizes
                .into_iter()
                .all(|d| d.is_some_and(|d| d <= COPY_INIT_LIMIT)),
        }
    }
}

/// Whether `wasm` is a valid WebAssembly component or module, checked by
/// wasmparser's validator (which walks nested modules without recursion).
/// Read anything else from a binary only once this holds.
pub fn is_valid_wasm(wasm: &[u8]) -> bool {
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(wasm)
        .is_ok()
}

/// Bytes of active data segments in a component's core modules (or in a core
/// module): what an instance copies into its memories at start when memory
/// images are not mapped. `None` when the binary cannot be read as such.
/// Nested modules and components are walked by wasmparser's own parser, one
/// payload at a time, so a crafted depth costs no stack.
pub fn data_segment_bytes(wasm: &[u8]) -> Option<u64> {
    let mut total = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(reader) = payload.ok()? {
            for data in reader {
                let data = data.ok()?;
                if let wasmparser::DataKind::Active { .. } = data.kind {
                    total = total.checked_add(data.data.len() as u64)?;
                }
            }
        }
    }
    Some(total)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pool_size: 128,
            max_instance_memory: 128 << 20,
            cache_dir: default_cache_dir(),
            precompiled_dir: None,
            pooling: true,
            keep_resident: default_keep_resident(),
            memory_init_cow: true,
            plain_engine: true,
        }
    }
}

/// `$XDG_CACHE_HOME/gantry`, else `~/.cache/gantry`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("gantry"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("gantry"))
}

/// Which WASI HTTP world a component serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// `wasi:http/incoming-handler@0.2.x`
    P2,
    /// `wasi:http/handler@0.3.x`
    P3,
}

impl std::fmt::Display for HttpWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpWorld::P2 => "wasi:http 0.2",
            HttpWorld::P3 => "wasi:http 0.3",
        })
    }
}

/// Why a component could not be loaded. The variants let callers (hot swap,
/// `gantry check`) say precisely what is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly file (it does not start with the `\\0asm` magic)")]
    NotWasm { path: PathBuf },
    #[error(
        "{path} is a core WebAssembly module that cannot be made a component: {reason} (build it for `wasm32-wasip2`, or for `wasm32-wasip1` with the bindings of a Spin SDK)"
    )]
    CoreModule { path: PathBuf, reason: String },
    #[error("{path} does not compile: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("{path} imports something Gantry does not provide: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error(
        "{path} exports no HTTP handler: expected `wasi:http/incoming-handler@0.2.x` or `wasi:http/handler@0.3.x`"
    )]
    NoHandler { path: PathBuf },
    #[error(
        "{path}: its HTTP handler `{interface}#handle` is not of the type the host calls: {reason}"
    )]
    HandlerType {
        path: PathBuf,
        interface: &'static str,
        reason: String,
    },
}

/// `sha256:<hex>` of a component's bytes: what identifies a version.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// What the host passes `wasi:http/incoming-handler@0.2.x#handle`.
pub(crate) type P2Params = (
    Resource<p2_types::IncomingRequest>,
    Resource<p2_types::ResponseOutparam>,
);
/// What the host passes `wasi:http/handler@0.3.x#handle`, and what it returns.
pub(crate) type P3Params = (Resource<p3_types::Request>,);
pub(crate) type P3Results = (Result<Resource<p3_types::Response>, p3_types::ErrorCode>,);

/// The handler interfaces at the versions of the WIT that
/// wasmtime-wasi-http 50 is generated from.
const P2_HANDLER: &str = "wasi:http/incoming-handler@0.2.12";
const P3_HANDLER: &str = "wasi:http/handler@0.3.0";

/// A linked component and where its HTTP handler sits among its exports,
/// both found once when the component is loaded, and the handler's type
/// checked then: a component whose `handle` has another type is refused at
/// load. Each request instantiates it and takes the handler by that index
/// (`HandlerPre::instantiate`, in `instance`), without a name lookup or a
/// type check per instance.
pub struct HandlerPre {
    pub(crate) pre: InstancePre<HostState>,
    /// The `handle` function of `wasi:http/incoming-handler@0.2.x` (P2) or
    /// of `wasi:http/handler@0.3.x` (P3), as `world` says.
    pub(crate) handle: ComponentExportIndex,
    pub(crate) world: HttpWorld,
    /// Whether the component's engine has concurrency support. Without it
    /// (the plain engine, 0.2 only) the handler is called directly rather
    /// than inside `Store::run_concurrent`, which such an engine refuses.
    pub(crate) concurrent: bool,
}

impl HandlerPre {
    /// The handler export of `pre`'s component, looked up by the names
    /// wasmtime-wasi-http's bindings use (wasmtime matches any
    /// semver-compatible version): `wasi:http/incoming-handler` 0.2 first,
    /// else `wasi:http/handler` 0.3, and type-checked by those bindings.
    /// `Ok(None)` when it exports neither with a `handle` in it; an error
    /// (the checker's reason) when the `handle` it exports has another type.
    fn new(
        pre: InstancePre<HostState>,
        concurrent: bool,
    ) -> Result<Option<HandlerPre>, (&'static str, String)> {
        let component = pre.component();
        let find = |interface: &str| {
            let instance = component.get_export_index(None, interface)?;
            component.get_export(Some(&instance), "handle")
        };
        let ((item, handle), world, interface) = match (find(P2_HANDLER), find(P3_HANDLER)) {
            (Some(h), _) => (h, HttpWorld::P2, P2_HANDLER),
            (None, Some(h)) => (h, HttpWorld::P3, P3_HANDLER),
            (None, None) => return Ok(None),
        };
        let ComponentItem::ComponentFunc(func) = item else {
            return Err((interface, "it is not a function".into()));
        };
        // wasmtime's own check of an export's type against the host's
        // signature, with the types the linker gave the component (host
        // resources included): what `Func::typed` does on each instance, and
        // what the generated bindings do at load for a world's own function
        // exports. (For an interface's functions, `ProxyPre::new` and
        // `ServicePre::new` only look the export up; their `load` checks the
        // type on every instance.)
        let ty = pre.instance_type();
        let checked = match world {
            HttpWorld::P2 => func.typecheck::<P2Params, ()>(&ty),
            HttpWorld::P3 => func.typecheck::<P3Params, P3Results>(&ty),
        };
        checked.map_err(|e| (interface, format!("{e:#}")))?;
        Ok(Some(HandlerPre {
            pre,
            handle,
            world,
            concurrent,
        }))
    }

    /// The linked component.
    pub fn component(&self) -> &Component {
        self.pre.component()
    }

    /// Whether the component runs on the engine with concurrency support
    /// (every 0.3 component does) rather than the plain one.
    pub fn on_concurrent_engine(&self) -> bool {
        self.concurrent
    }
}

/// Whether a component's exports name a `wasi:http/incoming-handler` 0.2
/// and no `wasi:http/handler` 0.3: the only kind the engine without
/// concurrency support can serve. Read from the binary before compiling, so
/// that a 0.3 component is never compiled for an engine that refuses it.
/// Its imports are left to the engine and the linker, which refuse any 0.3
/// one (and the full engine then takes the component).
pub fn serves_only_p2(bytes: &[u8]) -> bool {
    let mut p2 = false;
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ModuleSection { .. })
            | Ok(wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 0 => {
                for export in exports {
                    let Ok(export) = export else { return false };
                    let name = export.name.name;
                    if name.starts_with("wasi:http/handler@0.3") {
                        return false;
                    }
                    p2 |= name.starts_with("wasi:http/incoming-handler@0.2");
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    p2
}

/// A compiled, linked, type-checked component version.
pub struct LoadedComponent {
    pub id: Arc<str>,
    pub source: PathBuf,
    /// `sha256:<hex>` of the `.wasm` bytes (shared: every span carries it).
    pub digest: Arc<str>,
    pub size: u64,
    pub world: HttpWorld,
    pub handler: HandlerPre,
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    pub compile_time: Duration,
    /// What turned a core module into this component, if it was one.
    pub componentized: Option<Componentized>,
    /// Whether it uses WASI 0.3's release candidate, served through 0.3.0
    /// (see `wasi_rc`).
    pub release_candidate: bool,
}

/// How a core module became a component at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Componentized {
    /// A `wasm32-wasip1` module, through the WASI preview1 adapter.
    Wasip1Adapter,
    /// A module carrying its component type, without an adapter.
    TypeInformation,
}

impl std::fmt::Display for Componentized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Componentized::Wasip1Adapter => "core module (wasip1), adapted to a component",
            Componentized::TypeInformation => "core module, made a component from its type",
        })
    }
}

/// Turns a core module into a component, as `spin up` does: a module that
/// imports `wasi_snapshot_preview1` through the preview1 adapter (the
/// reactor one: HTTP components are libraries), any other from the component
/// type information its bindings embedded.
fn componentize(bytes: &[u8]) -> anyhow::Result<(Vec<u8>, Componentized)> {
    let (mut imports_preview1, mut typed) = (false, false);
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ImportSection(section)) => {
                imports_preview1 |= section
                    .into_imports()
                    .filter_map(Result::ok)
                    .any(|i| i.module == "wasi_snapshot_preview1");
            }
            Ok(wasmparser::Payload::CustomSection(c)) => {
                typed |= c.name().starts_with("component-type");
            }
            _ => {}
        }
    }
    if !typed {
        anyhow::bail!("it carries no component type information (no WIT bindings)");
    }
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.validate(true).module(bytes)?;
    let how = if imports_preview1 {
        encoder.adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?;
        Componentized::Wasip1Adapter
    } else {
        Componentized::TypeInformation
    };
    Ok((encoder.encode()?, how))
}

pub struct Runtime {
    /// The engine every component can run on: WASI 0.2 and 0.3, with
    /// component-model async and wasmtime's concurrency support.
    full: EngineUnit,
    /// An engine without concurrency support, for components that serve
    /// `wasi:http/incoming-handler` 0.2 and import nothing of 0.3; built at
    /// the first such component. `None` inside when it could not be built
    /// as the full engine was (then every component runs on the full one).
    plain: OnceLock<Option<EngineUnit>>,
    config: RuntimeConfig,
    stop_ticker: Arc<AtomicBool>,
}

/// An engine, the linker of everything Gantry provides on it, and its pool.
struct EngineUnit {
    engine: Engine,
    linker: Linker<HostState>,
    /// Whether `engine` has concurrency support (it then serves 0.3 too).
    concurrent: bool,
    pooling: bool,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl EngineUnit {
    /// Builds an engine for `config`, pooled when the address space and the
    /// configuration allow it, with or without concurrency support, and its
    /// linker; starts its epoch ticker.
    fn build(
        config: &RuntimeConfig,
        concurrent: bool,
        stop_ticker: &Arc<AtomicBool>,
    ) -> anyhow::Result<EngineUnit> {
        let mut pooling = false;
        let engine = if config.pooling {
            let need = pool_reservation_bytes(config);
            if probe_address_space(need) {
                let mut wcfg = base_config(config, concurrent);
                wcfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
                    config,
                )));
                match Engine::new(&wcfg) {
                    Ok(e) => {
                        pooling = true;
                        e
                    }
                    Err(err) => {
                        tracing::info!(
                            "pooling allocator unavailable ({err:#}); using on-demand allocation"
                        );
                        Engine::new(&base_config(config, concurrent))?
                    }
                }
            } else {
                tracing::info!(
                    "address space too small for a pool of {} instances ({} GiB); using on-demand allocation",
                    config.pool_size,
                    need >> 30
                );
                Engine::new(&base_config(config, concurrent))?
            }
        } else {
            Engine::new(&base_config(config, concurrent))?
        };

        let mut linker = Linker::new(&engine);
        crate::capabilities::add_to_linker(&mut linker, concurrent)?;
        spawn_epoch_ticker(engine.weak(), stop_ticker.clone());
        Ok(EngineUnit {
            engine,
            linker,
            concurrent,
            pooling,
        })
    }
}

/// How logs and the admin listing name an engine.
pub fn engine_name(concurrent: bool) -> &'static str {
    if concurrent { "concurrent" } else { "plain" }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let full = EngineUnit::build(&config, true, &stop_ticker)?;
        Ok(Runtime {
            full,
            plain: OnceLock::new(),
            config,
            stop_ticker,
        })
    }

    /// The engine without concurrency support, built on first use. It is
    /// only worth having when it allocates as the full engine does: on
    /// demand, where the full engine has a pool, it would be slower.
    fn plain(&self) -> Option<&EngineUnit> {
        self.plain
            .get_or_init(|| {
                if !self.config.plain_engine {
                    return None;
                }
                // Where the full engine has no pool, neither tries again.
                let config = RuntimeConfig {
                    pooling: self.full.pooling,
                    ..self.config.clone()
                };
                match EngineUnit::build(&config, false, &self.stop_ticker) {
                    Ok(unit) if unit.pooling == self.full.pooling => Some(unit),
                    Ok(_) => {
                        tracing::info!(
                            "no pool for a second engine; WASI 0.2 components share the full engine"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::info!(
                            "cannot build an engine for WASI 0.2 components ({e:#}); they share the full engine"
                        );
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The engine with concurrency support, which every component can run
    /// on. A loaded component's own engine is `handler.component().engine()`.
    pub fn engine(&self) -> &Engine {
        &self.full.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn uses_pooling(&self) -> bool {
        self.full.pooling
    }

    /// Reads, compiles (or loads from cache), links and type-checks a
    /// component. Never touches anything that is serving.
    pub fn load(&self, id: &str, path: &Path) -> Result<LoadedComponent, ComponentError> {
        let bytes = std::fs::read(path).map_err(|source| ComponentError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(id, path, &bytes)
    }

    pub fn load_bytes(
        &self,
        id: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<LoadedComponent, ComponentError> {
        let started = Instant::now();
        let path_buf = path.to_path_buf();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ComponentError::NotWasm { path: path_buf });
        }
        // The digest (and so the compile cache) and size are of the file as
        // given.
        let digest = digest(bytes);
        let size = bytes.len() as u64;
        // Layer 1 is a component; version 1 (with layer 0) a core module.
        let adapted;
        let (bytes, componentized) = if bytes[4..8] == [1, 0, 0, 0] {
            let (component, how) = componentize(bytes).map_err(|e| ComponentError::CoreModule {
                path: path_buf.clone(),
                reason: format!("{e:#}"),
            })?;
            adapted = component;
            (adapted.as_slice(), Some(how))
        } else {
            (bytes, None)
        };
        let candidate = crate::wasi_rc::uses_candidate(bytes);
        let plain = if !candidate && serves_only_p2(bytes) {
            self.plain()
        } else {
            None
        };
        let linked = match plain.map(|unit| self.link(unit, bytes, false, &digest, path)) {
            Some(Ok(linked)) => linked,
            Some(Err(e)) => {
                // Anything the plain engine refuses (a 0.3 import, say) the
                // full engine may take; its error is the one to report.
                tracing::debug!(
                    component = id,
                    "not for the engine without concurrency support: {e}"
                );
                self.link(&self.full, bytes, false, &digest, path)?
            }
            None => self.link(&self.full, bytes, candidate, &digest, path)?,
        };
        let (handler, from_cache) = linked;
        let id: Arc<str> = Arc::from(id);
        let digest: Arc<str> = digest.into();
        Ok(LoadedComponent {
            id,
            source: path_buf,
            digest,
            size,
            world: handler.world,
            handler,
            loaded_at: SystemTime::now(),
            from_cache,
            compile_time: started.elapsed(),
            componentized,
            release_candidate: candidate,
        })
    }

    /// Compiles (or loads from cache) and links a component on one engine,
    /// and finds its handler. The plain engine takes only 0.2 handlers.
    /// `candidate`: the component uses WASI 0.3's release candidate.
    fn link(
        &self,
        unit: &EngineUnit,
        bytes: &[u8],
        candidate: bool,
        digest: &str,
        path: &Path,
    ) -> Result<(HandlerPre, bool), ComponentError> {
        let (component, from_cache) =
            self.compile_cached(&unit.engine, bytes, candidate, digest, path)?;
        let stubbed =
            crate::capabilities::unserved::linker_for(&unit.linker, &component, unit.concurrent)
                .map_err(|e| ComponentError::Link {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
        let instance_pre = stubbed
            .as_ref()
            .unwrap_or(&unit.linker)
            .instantiate_pre(&component)
            .map_err(|e| ComponentError::Link {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
        let handler = HandlerPre::new(instance_pre, unit.concurrent)
            .map_err(|(interface, reason)| ComponentError::HandlerType {
                path: path.to_path_buf(),
                interface,
                reason,
            })?
            .filter(|h| unit.concurrent || h.world == HttpWorld::P2)
            .ok_or_else(|| ComponentError::NoHandler {
                path: path.to_path_buf(),
            })?;
        Ok((handler, from_cache))
    }

    fn compile_cached(
        &self,
        engine: &Engine,
        bytes: &[u8],
        candidate: bool,
        digest: &str,
        path: &Path,
    ) -> Result<(Component, bool), ComponentError> {
        let name = artifact_name(engine, digest);
        let cache_file = self.config.cache_dir.as_ref().map(|dir| dir.join(&name));
        let precompiled = self
            .config
            .precompiled_dir
            .as_ref()
            .map(|dir| dir.join(&name));
        for file in [&precompiled, &cache_file].into_iter().flatten() {
            if !file.is_file() {
                continue;
            }
            // SAFETY: the file is one this host wrote (atomically, below, or
            // by `gantry compile`) into a folder the operator gave it, named
            // by content, Gantry version and engine hash; wasmtime checks
            // the header again and refuses artifacts of another engine.
            match unsafe { Component::deserialize_file(engine, file) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(cache = %file.display(), "ignoring unusable compiled component: {e:#}");
                }
            }
        }
        // Only on a miss: the cached artifact is of the wrapped component.
        let wrapped;
        let bytes = if candidate {
            wrapped = crate::wasi_rc::bridge(bytes).map_err(|e| ComponentError::Link {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
            wrapped.as_slice()
        } else {
            bytes
        };
        let component = Component::new(engine, bytes).map_err(|e| ComponentError::Compile {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
        if let Some(file) = cache_file
            && let Err(e) = write_cache(&component, &file)
        {
            tracing::warn!(cache = %file.display(), "cannot write compile cache: {e:#}");
        }
        Ok((component, false))
    }
}

/// What is done to a file before it is compiled (componentizing core
/// modules, bridging WASI 0.3's release candidate): change it whenever that
/// changes, so that no artifact of an earlier preparation is loaded.
const PREPARATION: &str = "componentize+wasi-rc-2026-03-15";

/// The file name of a compiled component: its content digest, this Gantry's
/// version and the engine's compatibility hash (wasmtime version, target,
/// CPU features, settings), so that an artifact of any other build, engine
/// or CPU is never looked up, let alone loaded.
fn artifact_name(engine: &Engine, digest: &str) -> String {
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(PREPARATION.as_bytes());
    std::hash::Hash::hash(
        &engine.precompile_compatibility_hash(),
        &mut HashWriter(&mut h),
    );
    format!("{:x}.cwasm", h.finalize())
}

fn write_cache(component: &Component, file: &Path) -> anyhow::Result<()> {
    let dir = file.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);
impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn base_config(cfg: &RuntimeConfig, concurrent: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    // Concurrency support sets up every store and core instance for
    // concurrent calls, which WASI 0.3 needs and 0.2 does not: without it,
    // wasmtime's own instantiation of `plain` takes 28 % fewer instructions
    // (68.1k against 94.2k; the micro bench's last part times it).
    c.wasm_component_model_async(concurrent);
    c.concurrency_support(concurrent);
    c.epoch_interruption(true);
    // Reserve only what a memory may grow to (not wasmtime's 4 GiB default),
    // for pool and on-demand alike: it keeps a pool of instances within a
    // 39-bit address space, at the price of explicit bounds checks.
    c.memory_reservation(memory_reservation(cfg));
    c.memory_guard_size(GUARD);
    // wasmtime's default on 64-bit hosts, stated because `MemorySlab`
    // relies on the layout it gives the pool.
    c.guard_before_linear_memory(true);
    c.memory_init_cow(cfg.memory_init_cow);
    c
}

/// Guard pages after each memory slot; with bounds checks on, this only has
/// to cover the largest static offset cranelift folds into an access.
const GUARD: u64 = 2 << 20;
/// Memories and tables one component may have (core modules plus the shims
/// `wit-component` adds).
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Bytes of each table kept resident (and zeroed in place) between requests.
const TABLE_KEEP_RESIDENT: usize = 4096;

fn memory_reservation(cfg: &RuntimeConfig) -> u64 {
    cfg.max_instance_memory.next_power_of_two().max(1 << 20)
}

fn pooling_config(cfg: &RuntimeConfig) -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::default();
    let n = cfg.pool_size.max(1);
    p.total_component_instances(n);
    p.total_core_instances(n * CORE_INSTANCES_PER_COMPONENT);
    p.max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT);
    p.total_memories(n * MEMORIES_PER_COMPONENT);
    p.max_memories_per_component(MEMORIES_PER_COMPONENT);
    p.total_tables(n * TABLES_PER_COMPONENT);
    p.max_tables_per_component(TABLES_PER_COMPONENT);
    p.max_memory_size(cfg.max_instance_memory as usize);
    p.total_stacks(n);
    // Keeping a released instance's pages resident resets them in place
    // instead of handing them back to the kernel (and faulting them in again
    // on the next request); wasmtime's PAGEMAP_SCAN support, where the kernel
    // has it, limits the reset to the pages the guest wrote.
    let keep = usize::try_from(cfg.keep_resident).unwrap_or(usize::MAX);
    p.linear_memory_keep_resident(keep);
    // A component's tables are small: one page each kept resident and
    // zeroed in place.
    p.table_keep_resident(TABLE_KEEP_RESIDENT);
    p.pagemap_scan(wasmtime::Enabled::Auto);
    p
}

/// `--pool-keep-resident` when not given: enough for the examples (a Rust
/// guest's memory is 1 MiB of stack plus its data and heap), on Linux, where
/// releasing memory otherwise means an madvise and a cross-CPU TLB flush.
/// Zeroing even a whole 1 MiB memory in place costs less (scripts/bench.sh);
/// where PAGEMAP_SCAN is exact, only the pages a guest wrote are zeroed.
pub fn default_keep_resident() -> u64 {
    if cfg!(target_os = "linux") {
        DEFAULT_KEEP_RESIDENT
    } else {
        0
    }
}

const DEFAULT_KEEP_RESIDENT: u64 = 2 << 20;

fn pool_reservation_bytes(cfg: &RuntimeConfig) -> u64 {
    // Each memory slot reserves the default 4 GiB on 64-bit hosts unless told
    // otherwise; Gantry reserves exactly the memory limit plus a guard.
    let slot = memory_reservation(cfg) + GUARD;
    slot * u64::from(cfg.pool_size.max(1)) * u64::from(MEMORIES_PER_COMPONENT)
}

/// Can the process reserve `bytes` of address space? Raspberry Pi kernels
/// with 39-bit address spaces (512 GiB) cannot always.
fn probe_address_space(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes) else {
        return false;
    };
    // SAFETY: an anonymous PROT_NONE reservation that is unmapped at once; it
    // touches no existing mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(p, len);
    }
    true
}

fn spawn_epoch_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("gantry-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the epoch thread; request timeouts will not interrupt busy guests: {e}"
        );
    }
}

// ---------------------------------------------------------------------------
// The live table: what is serving now.

/// One version of a component with what its manifest entry grants it.
pub struct Version {
    pub loaded: Arc<LoadedComponent>,
    pub caps: Arc<ComponentCaps>,
}

/// A component's place in the live table. Swapping `current` is the only way
/// a new version starts serving; requests that already hold the old `Arc`
/// finish on it.
pub struct ComponentSlot {
    pub id: Arc<str>,
    pub current: ArcSwap<Version>,
    /// The version the last swap replaced: what a rollback restores.
    pub previous: ArcSwapOption<Version>,
    /// Swaps (and rollbacks) done, and why the last refused one was refused.
    pub swaps: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The component's share of the instance pool: how many of its requests
    /// may hold an instance at once (`tool.gantry.max_concurrency`).
    pub share: Arc<tokio::sync::Semaphore>,
    pub share_size: u32,
}

impl ComponentSlot {
    pub fn new(id: &str, version: Version, share_size: u32) -> Self {
        ComponentSlot {
            id: Arc::from(id),
            current: ArcSwap::from_pointee(version),
            previous: ArcSwapOption::empty(),
            swaps: AtomicU64::new(0),
            last_error: Mutex::new(None),
            share: Arc::new(tokio::sync::Semaphore::new(share_size as usize)),
            share_size,
        }
    }

    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub fn error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// One application version: its manifest, routes and component slots.
pub struct LiveApp {
    pub app: App,
    pub router: Router,
    pub slots: Vec<Arc<ComponentSlot>>,
    pub index: HashMap<String, usize>,
    /// Per slot, the entry chained requests reach it through.
    pub chained: Vec<crate::router::RouteEntry>,
}

impl LiveApp {
    pub fn slot(&self, id: &str) -> Option<&Arc<ComponentSlot>> {
        self.index.get(id).map(|&i| &self.slots[i])
    }
}

/// How a load goes, component by component: compiling one can take tens of
/// seconds. On a terminal, a bar with the component being compiled, its
/// size and the time so far; otherwise a log line per component.
struct LoadProgress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
}

impl LoadProgress {
    fn new(total: usize) -> LoadProgress {
        use std::io::IsTerminal as _;
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} loading {pos}/{len} [{bar:24}] {elapsed} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        LoadProgress {
            bar,
            total,
            done: 0,
        }
    }

    fn start(&self, id: &str, size: usize) -> Instant {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{id} ({})", bytesize::ByteSize(size as u64)));
        }
        Instant::now()
    }

    fn done(&mut self, id: &str, size: usize, started: Instant, ok: bool) {
        self.done += 1;
        let elapsed = started.elapsed();
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if self.done == self.total {
                    bar.finish_and_clear();
                }
            }
            None if ok => tracing::info!(
                component = id,
                size = %bytesize::ByteSize(size as u64),
                elapsed = ?elapsed,
                "component {}/{} ready",
                self.done,
                self.total
            ),
            None => {}
        }
    }
}

impl Drop for LoadProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A problem found while loading an application, tied to the manifest.
#[derive(Debug)]
pub struct AppError {
    pub location: Location,
    pub message: String,
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Compiles and links every component of `app` and builds its router. All or
/// nothing: any error leaves nothing half-loaded.
pub fn load_app(
    runtime: &Runtime,
    app: App,
    variable_overrides: &BTreeMap<String, String>,
) -> Result<LiveApp, Vec<AppError>> {
    load_app_over(runtime, app, variable_overrides, None)
}

/// How many instances one component may hold when its manifest does not
/// say: the whole pool for an app of one component, else three quarters of
/// it, so that no component can take every slot from the others.
pub fn default_share(pool: u32, components: usize) -> u32 {
    if components <= 1 {
        pool
    } else {
        (pool - pool / 4).max(1)
    }
}

/// Like [`load_app`], for a new version of the manifest while `old` serves:
/// a component whose `.wasm` is unchanged keeps its compiled version, and a
/// component that stays keeps its swap history.
pub fn load_app_over(
    runtime: &Runtime,
    app: App,
    variable_overrides: &BTreeMap<String, String>,
    old: Option<&LiveApp>,
) -> Result<LiveApp, Vec<AppError>> {
    let mut errors = Vec::new();
    let values = match crate::capabilities::resolve_app_values(&app, variable_overrides) {
        Ok(v) => v,
        Err(missing) => {
            errors.extend(missing.into_iter().map(|e| AppError {
                location: e.location,
                message: e.message,
            }));
            BTreeMap::new()
        }
    };
    let mut slots = Vec::new();
    let mut index = HashMap::new();
    let pool = runtime.config().pool_size;
    let default_share = default_share(pool, app.components.len());
    let mut progress = LoadProgress::new(app.components.len());
    for (id, spec) in &app.components {
        let share = match spec.gantry.max_concurrency {
            Some(n) if n > pool => {
                errors.push(AppError {
                    location: spec.gantry_location.clone(),
                    message: format!(
                        "max_concurrency = {n} is more than the whole pool (--pool-size {pool})"
                    ),
                });
                continue;
            }
            Some(n) => n,
            None => default_share,
        };
        let caps = match ComponentCaps::resolve(spec, &values) {
            Ok(c) => c,
            Err(e) => {
                errors.push(AppError {
                    location: e.location,
                    message: e.message,
                });
                continue;
            }
        };
        let before = old.and_then(|o| o.slot(id));
        let loaded = match std::fs::read(&spec.source) {
            Err(source) => Err(ComponentError::Read {
                path: spec.source.clone(),
                source,
            }),
            Ok(bytes) => {
                let digest = digest(&bytes);
                let current = before.map(|s| s.current.load_full());
                match current {
                    Some(v) if *v.loaded.digest == *digest && v.loaded.source == spec.source => {
                        Ok(v.loaded.clone())
                    }
                    _ => {
                        let started = progress.start(id, bytes.len());
                        let loaded = runtime.load_bytes(id, &spec.source, &bytes).map(Arc::new);
                        progress.done(id, bytes.len(), started, loaded.is_ok());
                        loaded
                    }
                }
            }
        };
        match loaded {
            Ok(loaded) => {
                index.insert(id.clone(), slots.len());
                let mut slot = ComponentSlot::new(
                    id,
                    Version {
                        loaded,
                        caps: Arc::new(caps),
                    },
                    share,
                );
                if let Some(b) = before {
                    // Requests in flight hold places in the old share.
                    if b.share_size == share {
                        slot.share = b.share.clone();
                    }
                    slot.previous.store(b.previous.load_full());
                    slot.swaps
                        .store(b.swaps.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                slots.push(Arc::new(slot));
            }
            Err(e) => errors.push(AppError {
                location: spec.source_location.clone(),
                message: e.to_string(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut router = Router::default();
    for (route, target) in app.public_routes() {
        match target {
            TriggerTarget::Component(comp) => {
                if let Some(&i) = index.get(comp.as_str()) {
                    router.add_component(route, comp, i);
                }
            }
            TriggerTarget::Static(response) => router.add_static(route, response.clone()),
        }
    }
    let chained = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| crate::router::RouteEntry::chained(&slot.id, i))
        .collect();
    Ok(LiveApp {
        app,
        router,
        slots,
        index,
        chained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn counts_active_data_segments_only() {
        // Offset 11 encodes as 0x0b, the byte that also ends an expression.
        let m = wat(r#"(module (memory 1)
            (data (i32.const 11) "hello")
            (data (i32.const 1024) "world!")
            (data "passive, copied only by memory.init"))"#);
        assert_eq!(data_segment_bytes(&m), Some(11));
    }

    #[test]
    fn walks_into_a_component_s_core_modules() {
        let c = wat(r#"(component
            (core module (memory 1) (data (i32.const 0) "abcd"))
            (component (core module (memory 1) (data (i32.const 8) "efghij"))))"#);
        assert_eq!(data_segment_bytes(&c), Some(10));
        assert_eq!(data_segment_bytes(&wat("(component)")), Some(0));
    }

    #[test]
    fn unreadable_binaries_are_unknown() {
        assert_eq!(data_segment_bytes(b"not wasm at all"), None);
        let m = wat(r#"(module (memory 1) (data (i32.const 0) "hello"))"#);
        assert_eq!(data_segment_bytes(&m[..m.len() - 2]), None);
    }

    #[test]
    fn only_a_top_level_0_2_handler_export_picks_the_plain_engine() {
        let exporting = |names: &[&str]| {
            let exports: String = names
                .iter()
                .map(|n| format!(r#"(export "{n}" (instance $i))"#))
                .collect();
            wat(&format!(
                "(component (instance $i) {exports}
                    (component (instance $j) (export \"wasi:http/incoming-handler@0.2.0\" (instance $j))))"
            ))
        };
        assert!(serves_only_p2(&exporting(&[
            "wasi:http/incoming-handler@0.2.0"
        ])));
        assert!(serves_only_p2(&exporting(&[
            "wasi:http/incoming-handler@0.2.12",
            "x"
        ])));
        // The nested component's export is not the component's own.
        assert!(!serves_only_p2(&exporting(&[])));
        assert!(!serves_only_p2(&exporting(&["wasi:http/handler@0.3.0"])));
        assert!(!serves_only_p2(&exporting(&[
            "wasi:http/incoming-handler@0.2.0",
            "wasi:http/handler@0.3.0-rc-2025-09-16"
        ])));
        assert!(!serves_only_p2(&exporting(&[
            "wasi:http/incoming-handler@0.3.0"
        ])));
        assert!(!serves_only_p2(&wat("(module)")));
        assert!(!serves_only_p2(b"not wasm"));
        let whole = exporting(&["wasi:http/incoming-handler@0.2.0"]);
        assert!(!serves_only_p2(&whole[..whole.len() - 3]));
    }

    #[test]
    fn auto_copies_only_when_every_image_is_small() {
        let small = Some(COPY_INIT_LIMIT);
        let large = Some(COPY_INIT_LIMIT + 1);
        assert!(!MemoryInit::Auto.use_cow([small, Some(0)]));
        assert!(MemoryInit::Auto.use_cow([small, large]));
        assert!(MemoryInit::Auto.use_cow([small, None]));
        assert!(MemoryInit::Cow.use_cow([small]));
        assert!(!MemoryInit::Copy.use_cow([large]));
    }
}
