//! Hot swap: a new version of a component, or of the whole manifest, starts
//! serving without a restart and without losing a request.
//!
//! Everything that can fail happens first and off the request path: the new
//! `.wasm` is compiled (on a blocking thread), linked against the host's
//! imports and type-checked for an HTTP export. Only a version that passed
//! all of it is stored into the component's slot (one atomic pointer swap);
//! requests already running keep the version they loaded. A manifest change
//! builds a whole new live table (routes and slots, unchanged components
//! reused) and swaps that in one store, so a request sees the old table or
//! the new one, never a mix. Swaps are serialised; a refused version leaves
//! the old one serving and its reason in `last_error`.
//!
//! Triggers: the admin API (`PUT /components/{id}`, rollback) and, with
//! `gantry up --watch`, the files themselves. The watcher polls file metadata
//! (following symlinks) rather than relying on change events: that sees
//! in-place writes, `cargo build` replacing a file, write-then-rename and a
//! Kubernetes ConfigMap's `..data` symlink swap alike. A change is acted on
//! once the file has stopped changing for one poll interval, so a file still
//! being written is not read; one read anyway (a truncated component) fails to
//! compile and is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status, Tracer as _};

use crate::manifest;
use crate::runtime::{self, ComponentSlot, LiveApp, Runtime, Version};
use crate::server::{AppServer, record_component_info};

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("no component {0:?} in the application")]
    UnknownComponent(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("component {0:?} has no previous version to roll back to")]
    NoPrevious(String),
    #[error("manifest refused, the old one keeps serving:\n{0}")]
    Manifest(String),
}

/// What a swap did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    pub component: String,
    pub digest: String,
    pub previous: String,
    pub took_ms: f64,
}

pub struct Swapper {
    runtime: Arc<Runtime>,
    server: Arc<AppServer>,
    manifest: PathBuf,
    overrides: BTreeMap<String, String>,
    /// One swap at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Swapper {
    pub fn new(
        runtime: Arc<Runtime>,
        server: Arc<AppServer>,
        manifest: PathBuf,
        overrides: BTreeMap<String, String>,
    ) -> Self {
        Swapper {
            runtime,
            server,
            manifest,
            overrides,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn live(&self) -> Arc<LiveApp> {
        self.server.live.load_full()
    }

    /// The live table and the slot of `id` in it.
    fn slot(&self, id: &str) -> Result<(Arc<LiveApp>, Arc<ComponentSlot>), SwapError> {
        let live = self.live();
        let slot = live
            .slot(id)
            .ok_or_else(|| SwapError::UnknownComponent(id.to_string()))?
            .clone();
        Ok((live, slot))
    }

    fn count(&self, id: &str, result: &str) {
        self.server
            .metrics
            .component_swaps
            .with(&[id, result])
            .inc();
    }

    fn span(
        &self,
        name: &'static str,
        id: &str,
        trigger: &'static str,
    ) -> opentelemetry_sdk::trace::Span {
        let tracer = self.server.tracing.tracer();
        tracer
            .span_builder(name)
            .with_attributes(vec![
                KeyValue::new("gantry.component.id", id.to_string()),
                KeyValue::new("gantry.swap.trigger", trigger),
            ])
            .start(tracer)
    }

    /// Compiles, links and checks `bytes` as the new version of `id`, then
    /// swaps it in. `trigger` says who asked (`admin`, `file`).
    pub async fn replace(
        &self,
        id: &str,
        bytes: Vec<u8>,
        trigger: &'static str,
    ) -> Result<Swapped, SwapError> {
        let _one = self.lock.lock().await;
        let (live, slot) = self.slot(id)?;
        let current = slot.current.load_full();
        let mut span = self.span("component.swap", id, trigger);
        let started = Instant::now();
        let runtime = self.runtime.clone();
        let (owned_id, source) = (id.to_string(), current.loaded.source.clone());
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load_bytes(&owned_id, &source, &bytes))
                .await
                .map_err(|e| SwapError::Refused(format!("the compile task failed: {e}")))
                .and_then(|r| r.map_err(|e| SwapError::Refused(e.to_string())));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                slot.set_error(Some(e.to_string()));
                self.count(id, "refused");
                span.set_status(Status::error(e.to_string()));
                span.end();
                tracing::warn!(
                    component = id,
                    trigger,
                    "swap refused; the old version keeps serving: {e}"
                );
                return Err(e);
            }
        };
        let swapped = Swapped {
            component: id.to_string(),
            digest: loaded.digest.to_string(),
            previous: current.loaded.digest.to_string(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        let old = slot.current.swap(Arc::new(Version {
            loaded: Arc::new(loaded),
            caps: current.caps.clone(),
        }));
        slot.previous.store(Some(old));
        slot.swaps.fetch_add(1, Ordering::Relaxed);
        slot.set_error(None);
        self.count(id, "ok");
        record_component_info(&self.server.metrics, &live);
        span.set_attribute(KeyValue::new(
            "gantry.component.digest",
            swapped.digest.clone(),
        ));
        span.end();
        tracing::info!(
            component = id,
            trigger,
            from = %swapped.previous,
            to = %swapped.digest,
            took_ms = swapped.took_ms,
            "component swapped"
        );
        Ok(swapped)
    }

    /// Puts the previous version back (and keeps the one it replaces as the
    /// new "previous", so a second rollback undoes the first).
    pub async fn rollback(&self, id: &str) -> Result<Swapped, SwapError> {
        let _one = self.lock.lock().await;
        let (live, slot) = self.slot(id)?;
        let Some(previous) = slot.previous.load_full() else {
            return Err(SwapError::NoPrevious(id.to_string()));
        };
        let mut span = self.span("component.rollback", id, "admin");
        let to = previous.loaded.digest.clone();
        let old = slot.current.swap(previous);
        let swapped = Swapped {
            component: id.to_string(),
            digest: to.to_string(),
            previous: old.loaded.digest.to_string(),
            took_ms: 0.0,
        };
        slot.previous.store(Some(old));
        slot.swaps.fetch_add(1, Ordering::Relaxed);
        self.count(id, "rollback");
        record_component_info(&self.server.metrics, &live);
        span.end();
        tracing::info!(component = id, from = %swapped.previous, to = %swapped.digest, "component rolled back");
        Ok(swapped)
    }

    /// Reads the manifest again and serves what it says: new components and
    /// routes, removed ones gone, changed `.wasm` files recompiled. All or
    /// nothing.
    pub async fn reload_manifest(&self) -> Result<(), SwapError> {
        let _one = self.lock.lock().await;
        let old = self.live();
        let mut span = self.span("manifest.reload", "", "file");
        let runtime = self.runtime.clone();
        let (path, overrides, previous) =
            (self.manifest.clone(), self.overrides.clone(), old.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<LiveApp, String> {
            let mut app = manifest::load(&path).map_err(|e| e.to_string())?;
            let dir = crate::sources::downloads_dir(
                runtime
                    .config()
                    .cache_dir
                    .clone()
                    .or_else(runtime::default_cache_dir)
                    .as_deref(),
            );
            crate::sources::fetch_all(&mut app, &dir).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            runtime::load_app_over(&runtime, app, &overrides, Some(&previous)).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        })
        .await
        .map_err(|e| SwapError::Manifest(format!("the reload task failed: {e}")))
        .and_then(|r| r.map_err(SwapError::Manifest));
        let new = match result {
            Ok(n) => n,
            Err(e) => {
                self.count("", "manifest_refused");
                span.set_status(Status::error(e.to_string()));
                span.end();
                tracing::warn!("{e}");
                return Err(e);
            }
        };
        // Each capability takes up the new grants (GPIO keeps the pins of
        // unchanged grants as they are).
        for (id, spec) in &new.app.components {
            let before = old.app.components.get(id);
            if let Err(e) = self.server.shared.claim_again(id, before, spec) {
                span.end();
                return Err(SwapError::Manifest(format!("{e:#}")));
            }
        }
        let removed: Vec<String> = old
            .slots
            .iter()
            .filter(|s| new.slot(&s.id).is_none())
            .map(|s| s.id.to_string())
            .collect();
        let added: Vec<String> = new
            .slots
            .iter()
            .filter(|s| old.slot(&s.id).is_none())
            .map(|s| s.id.to_string())
            .collect();
        let routes = new.router.entries().len();
        self.server.live.store(Arc::new(new));
        for id in &removed {
            self.server.metrics.component_info.remove_first_label(id);
            self.server.metrics.component_loaded.remove_first_label(id);
        }
        record_component_info(&self.server.metrics, &self.live());
        self.count("", "manifest_ok");
        span.end();
        tracing::info!(?added, ?removed, routes, "manifest reloaded");
        Ok(())
    }

    /// Watches the manifest and every component's source until the process
    /// ends, swapping what changes. `manifest_seen` is the manifest's
    /// signature from before it was read at start.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        manifest_seen: Signature,
    ) -> tokio::task::JoinHandle<()> {
        let mut files: HashMap<PathBuf, Watched> = HashMap::new();
        files.insert(
            self.manifest.clone(),
            Watched {
                applied: manifest_seen,
                seen: manifest_seen,
            },
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let live = self.live();
                let mut targets: Vec<PathBuf> = vec![self.manifest.clone()];
                targets.extend(
                    live.slots
                        .iter()
                        .map(|s| s.current.load().loaded.source.clone()),
                );
                targets.sort();
                targets.dedup();
                files.retain(|p, _| targets.contains(p));
                for path in targets {
                    let now = signature(&path);
                    // A component file seen for the first time may have
                    // changed since it was loaded: it is checked once (by
                    // digest, so an unchanged file is not swapped).
                    let w = files.entry(path.clone()).or_insert(Watched {
                        applied: None,
                        seen: now,
                    });
                    if now == w.applied {
                        w.seen = now;
                        continue;
                    }
                    // Settled when unchanged since the last tick, or last
                    // written at least one interval ago (a finished file
                    // renamed into place): acting then saves a tick.
                    let settled = now == w.seen
                        || now.is_some_and(|(_, mtime, _, _)| {
                            mtime.elapsed().is_ok_and(|age| age >= interval)
                        });
                    if !settled {
                        // Still being written: look again next tick.
                        w.seen = now;
                        continue;
                    }
                    w.seen = now;
                    w.applied = now;
                    if now.is_none() {
                        // Gone (mid-rename, or deleted): keep serving what runs.
                        continue;
                    }
                    if path == self.manifest {
                        let _ = self.reload_manifest().await;
                    } else {
                        self.file_changed(&live, &path).await;
                    }
                }
            }
        })
    }

    async fn file_changed(&self, live: &LiveApp, path: &Path) {
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read changed component: {e}");
                return;
            }
        };
        for slot in &live.slots {
            let current = slot.current.load();
            if current.loaded.source != path {
                continue;
            }
            // Touched but the same bytes (or already swapped in by the API).
            if *runtime::digest(&bytes) == *current.loaded.digest {
                continue;
            }
            let _ = self.replace(&slot.id, bytes.clone(), "file").await;
        }
    }
}

/// What identifies one version of a file without reading it.
pub type Signature = Option<(u64, SystemTime, u64, u64)>;

struct Watched {
    /// The signature last acted on.
    applied: Signature,
    /// The signature seen on the previous tick.
    seen: Signature,
}

pub fn signature(path: &Path) -> Signature {
    // `metadata` follows symlinks: a ConfigMap's `..data` swap changes the inode.
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some((m.len(), m.modified().ok()?, dev, ino))
}
