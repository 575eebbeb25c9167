//! `gantry up --build`: runs each component's `[component.<id>.build]`
//! command in its `workdir`, in manifest order, stopping at the first failure.
//!
//! With `--watch` as well, [`watch`] keeps looking at each component's
//! `watch` globs (relative to its `workdir`, as Spin reads them) and, when a
//! matched file changes, rebuilds that component alone. A build that works
//! writes a new `.wasm`, which the source watcher (`swap.rs`) compiles and
//! swaps in while the app keeps serving; a build that fails is shown, its
//! reason kept as the component's `last_error`, and the running version keeps
//! serving. Builds run one at a time, off the request path.

use anyhow::{Context as _, bail};
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::manifest::{App, BuildCommand, BuildSpec};
use crate::swap::Swapper;

/// At most this many files are looked at per component and tick: a glob
/// that matches a whole dependency tree is cut there (and said once).
const MAX_WATCHED_FILES: usize = 20_000;

pub fn build_all(app: &App) -> anyhow::Result<()> {
    for (id, spec) in &app.components {
        if let Some(build) = &spec.build {
            build_one(id, build, false)?;
        }
    }
    println!("Finished building all Spin components");
    Ok(())
}

/// Runs the build commands of component `id` in order. With `to_stderr`,
/// the commands' output goes to stderr (stdout announces the server).
pub fn build_one(id: &str, build: &BuildSpec, to_stderr: bool) -> anyhow::Result<()> {
    let commands = match &build.command {
        BuildCommand::Shell(c) => std::slice::from_ref(c),
        BuildCommand::Sequence(cs) => cs.as_slice(),
    };
    for command in commands {
        let say = format!("Building component {id} with `{command}`");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command).current_dir(&build.workdir);
        if to_stderr {
            eprintln!("{say}");
            cmd.stdout(Stdio::from(
                std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("cannot pass stderr to the build")?,
            ));
        } else {
            println!("{say}");
        }
        let status = cmd
            .status()
            .with_context(|| format!("cannot run the build command of component {id}"))?;
        if !status.success() {
            bail!(
                "build of component {id} failed ({status}): `{command}` in {}",
                build.workdir.display()
            );
        }
    }
    Ok(())
}

/// What the watched files of one component look like now: a hash of every
/// matched path with its size and modification time.
fn fingerprint(id: &str, build: &BuildSpec, warned: &mut bool) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<(PathBuf, u64, Option<std::time::SystemTime>)> = Vec::new();
    'globs: for pattern in &build.watch {
        let full = build.workdir.join(pattern);
        let Some(full) = full.to_str() else { continue };
        let Ok(paths) = glob::glob(full) else {
            continue;
        };
        for path in paths.flatten() {
            if files.len() >= MAX_WATCHED_FILES {
                if !*warned {
                    *warned = true;
                    tracing::warn!(
                        component = id,
                        "the build's watch globs match more than {MAX_WATCHED_FILES} files; \
                         only the first are watched"
                    );
                }
                break 'globs;
            }
            if let Ok(m) = std::fs::metadata(&path)
                && m.is_file()
            {
                files.push((path, m.len(), m.modified().ok()));
            }
        }
    }
    files.sort();
    files.dedup();
    files.hash(&mut hasher);
    hasher.finish()
}

struct Sources {
    /// The fingerprint last built (or found at start).
    applied: u64,
    /// The fingerprint seen on the previous tick.
    seen: u64,
    warned: bool,
}

/// The watched builds of the live app.
fn builds(swapper: &Swapper) -> Vec<(String, BuildSpec)> {
    swapper
        .live()
        .app
        .components
        .iter()
        .filter_map(|(id, spec)| Some((id.clone(), spec.build.clone()?)))
        .filter(|(_, b)| !b.watch.is_empty())
        .collect()
}

/// Rebuilds each component whose watched sources change, until the process
/// ends. What the sources look like now is taken before this returns (so an
/// edit made once the app is announced is seen as one); the components and
/// their builds are read from the live app on each tick, so a reloaded
/// manifest's builds are the ones followed.
pub async fn watch(swapper: Arc<Swapper>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let initial = builds(&swapper);
    let state = tokio::task::spawn_blocking(move || {
        initial
            .into_iter()
            .map(|(id, build)| {
                let mut warned = false;
                let now = fingerprint(&id, &build, &mut warned);
                let sources = Sources {
                    applied: now,
                    seen: now,
                    warned,
                };
                (id, sources)
            })
            .collect::<HashMap<String, Sources>>()
    })
    .await
    .unwrap_or_default();
    tokio::spawn(async move {
        let mut state = state;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let builds = builds(&swapper);
            state.retain(|id, _| builds.iter().any(|(b, _)| b == id));
            // Looking at the files is blocking work; so is the build.
            let mut taken = std::mem::take(&mut state);
            let due = tokio::task::spawn_blocking(move || {
                let mut due = Vec::new();
                for (id, build) in builds {
                    let mut warned = taken.get(&id).is_some_and(|s| s.warned);
                    let now = fingerprint(&id, &build, &mut warned);
                    let Some(s) = taken.get_mut(&id) else {
                        // A component the reloaded manifest added: what is
                        // there now is its starting point.
                        taken.insert(
                            id,
                            Sources {
                                applied: now,
                                seen: now,
                                warned,
                            },
                        );
                        continue;
                    };
                    s.warned = warned;
                    // Acted on once unchanged for one tick (an editor's save
                    // in several writes is one change).
                    if now != s.applied && now == s.seen {
                        s.applied = now;
                        due.push((id, build));
                    } else {
                        s.seen = now;
                    }
                }
                (taken, due)
            })
            .await;
            let Ok((taken, due)) = due else { continue };
            state = taken;
            for (id, build) in due {
                rebuild(&swapper, id, build).await;
            }
        }
    })
}

async fn rebuild(swapper: &Swapper, id: String, build: BuildSpec) {
    tracing::info!(component = %id, "watched sources changed: rebuilding");
    let started = Instant::now();
    let owned = id.clone();
    let result = tokio::task::spawn_blocking(move || build_one(&owned, &build, true))
        .await
        .map_err(|e| anyhow::anyhow!("the build task failed: {e}"))
        .and_then(|r| r);
    let slot = swapper.live().slot(&id).cloned();
    match result {
        Ok(()) => {
            tracing::info!(
                component = %id,
                took_ms = started.elapsed().as_secs_f64() * 1000.0,
                "rebuilt; the new version is swapped in once compiled"
            );
            if let Some(slot) = slot {
                slot.set_error(None);
            }
        }
        Err(e) => {
            tracing::warn!(component = %id, "{e:#}; the running version keeps serving");
            if let Some(slot) = slot {
                slot.set_error(Some(format!("{e:#}")));
            }
        }
    }
}
