//! Host interfaces a guest may import, one module each. Nothing is ambient:
//! a component gets only what its manifest entry grants.
//!
//! Every capability implements [`Capability`]: it resolves its grant from a
//! component's manifest entry, holds app-wide state (a board, later pools and
//! open stores), builds the state one instance holds while it serves a
//! request, registers its interfaces in the linker, and acts when a request
//! ends (GPIO puts its pins back at their safe levels). [`HostState`], the
//! data of every store, is composed here from the capabilities' instance
//! states; the rest of the host (`runtime`, `instance`, `server`) sees only
//! [`ComponentCaps`], [`Shared`] and [`HostState`].
//!
//! See `README.md` in this folder for the steps to add one.

pub mod files;
pub mod gpio;
pub mod key_value;
pub mod otel;
pub mod outbound_http;
pub mod outbound_redis;
pub mod sqlite;
pub mod stdio;
pub mod unserved;
pub mod variables;

/// Host bindings for every interface of `wit/` that Gantry implements.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gantry:host/guest-imports",
        imports: {
            default: trappable,
            // Synchronous for the guest; async on the host, so that the
            // store is reached on the blocking pool.
            "fermyon:spin/key-value.[static]store.open": async | trappable,
            "fermyon:spin/key-value.[method]store.get": async | trappable,
            "fermyon:spin/key-value.[method]store.set": async | trappable,
            "fermyon:spin/key-value.[method]store.delete": async | trappable,
            "fermyon:spin/key-value.[method]store.exists": async | trappable,
            "fermyon:spin/key-value.[method]store.get-keys": async | trappable,
            "fermyon:spin/key-value.[drop]store": async | trappable,
            "fermyon:spin/sqlite.[static]connection.open": async | trappable,
            "fermyon:spin/sqlite.[method]connection.execute": async | trappable,
            "fermyon:spin/sqlite.[drop]connection": async | trappable,
            "wasi:keyvalue/store": async | trappable,
            "wasi:keyvalue/atomics": async | trappable,
            "wasi:keyvalue/batch": async | trappable,
            "spin:sqlite/sqlite@3.0.0.[static]connection.open": async | trappable,
            "spin:sqlite/sqlite@3.0.0.[method]connection.execute": async | trappable,
            "spin:sqlite/sqlite@3.0.0.[drop]connection": async | trappable,
            "spin:sqlite/sqlite@3.1.0.[static]connection.open": async | trappable,
            "spin:sqlite/sqlite@3.1.0.[method]connection.execute": async | trappable,
            "spin:sqlite/sqlite@3.1.0.[drop]connection": async | trappable,
            "fermyon:spin/redis": async | trappable,
            "spin:redis/redis": async | trappable,
        },
        with: {
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "fermyon:spin/key-value.store": super::key_value::OpenStore,
            "spin:key-value/key-value.store": super::key_value::OpenStore,
            "wasi:keyvalue/store.bucket": super::key_value::OpenStore,
            "wasi:keyvalue/atomics.cas": super::key_value::Cas,
            "fermyon:spin/sqlite.connection": super::sqlite::OpenDb,
            "spin:sqlite/sqlite@3.0.0.connection": super::sqlite::OpenDb,
            "spin:sqlite/sqlite@3.1.0.connection": super::sqlite::OpenDb,
            "fermyon:spin/redis.connection": super::outbound_redis::OpenRedis,
            "spin:redis/redis.connection": super::outbound_redis::OpenRedis,
        },
    });
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};

use crate::manifest::{App, ComponentSpec, ManifestError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;

/// What one capability is made of. The functions are called in this order:
/// `shared` once at start, `grant` and `claim` for each component version at
/// load (and at every swap), `instance` for every request, `end_of_request`
/// when that request's store is dropped, however it ended.
pub trait Capability {
    /// What one component version is granted, resolved from its manifest
    /// entry once at load.
    type Grant: Send + Sync + 'static;
    /// App-wide state: what every instance of every component shares.
    type Shared: Send + Sync + 'static;
    /// What one instance holds while it serves one request.
    type Instance: Send + 'static;

    /// The app-wide state, from the host's settings.
    fn shared(settings: &Settings) -> anyhow::Result<Self::Shared>;

    /// The grant of `spec`, its `{{ }}` templates rendered with the app's
    /// variable `values`. Errors name the manifest's file, line and field.
    fn grant(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<Self::Grant, ManifestError>;

    /// Takes up `spec`'s grant in the app-wide state (sets up hardware,
    /// opens a store) when a component version is loaded; an error stops
    /// the load, or refuses the swap while the old version serves.
    fn claim(
        _shared: &Self::Shared,
        _component: &str,
        _spec: &ComponentSpec,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Like `claim`, for a component's new version while `before` (its
    /// manifest entry until now, if it had one) serves: by default claimed
    /// anew.
    fn claim_again(
        shared: &Self::Shared,
        component: &str,
        _before: Option<&ComponentSpec>,
        spec: &ComponentSpec,
    ) -> anyhow::Result<()> {
        Self::claim(shared, component, spec)
    }

    /// The state one instance of a component starts a request with.
    fn instance(shared: &Self::Shared, grant: &Self::Grant, request: &Request) -> Self::Instance;

    /// Registers the capability's interfaces: for WASI 0.2 and 0.3 guests on
    /// an engine with concurrency support (`concurrent`), else only what
    /// needs none.
    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()>;

    /// The request is over (its store is being dropped).
    fn end_of_request(_instance: &mut Self::Instance) {}
}

/// Claims each store label a component is granted (`what`: "key-value
/// store", "SQLite database"): `open` opens what backs it, `Ok(false)` when
/// nothing does, which is an error naming the grant and the runtime-config
/// `section` that would back it.
pub(crate) fn claim_labels(
    component: &str,
    grants: &[crate::manifest::StoreGrant],
    what: &str,
    section: &str,
    mut open: impl FnMut(&str) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    for g in grants {
        match open(&g.label) {
            Ok(true) => {}
            Ok(false) => anyhow::bail!(
                "{}: component {component:?} is granted {what} {:?}, which nothing backs: \
                 define [{section}.{}] in the runtime config (--runtime-config-file)",
                g.location,
                g.label,
                g.label
            ),
            Err(e) => anyhow::bail!("{}: {e:#}", g.location),
        }
    }
    Ok(())
}

/// What the capabilities' app-wide state is built from.
pub struct Settings {
    pub metrics: Arc<Metrics>,
    /// The GPIO board (real or simulated), opened at start.
    pub board: Arc<dyn crate::gpio::Board>,
    /// What backs each key-value store label.
    pub key_value: key_value::Config,
    /// Where each SQLite database label lives.
    pub sqlite: sqlite::Config,
}

/// The request one instance serves: its component, its telemetry (tracer,
/// metrics, the server span) and the guest's open spans, under which every
/// capability that calls out records its client spans.
pub struct Request {
    pub component: Arc<str>,
    pub trace: TraceHandle,
    pub guest: Arc<Mutex<otel::GuestTelemetry>>,
    /// When the request times out: no host work done for it outlives this.
    pub deadline: std::time::Instant,
    /// How many requests to the app itself led to this one (0 for a
    /// client's request).
    pub hops: u32,
}

/// The request's telemetry: tracer, metrics and the server span's context.
pub struct TraceHandle {
    pub tracing: Arc<Tracing>,
    pub metrics: Arc<Metrics>,
    pub cx: opentelemetry::Context,
}

/// Declares the capabilities: each line is a field of [`ComponentCaps`]
/// (its grant), [`Shared`] (its app-wide state) and [`HostState`] (its
/// instance state), named as the capability's module reaches it.
macro_rules! capabilities {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// What each capability grants one component version.
        pub struct Grants {
            $(pub $field: <$cap as Capability>::Grant,)*
        }

        /// Every capability's app-wide state.
        pub struct Shared {
            $(pub $field: <$cap as Capability>::Shared,)*
        }

        /// Every capability's state for one instance.
        pub struct Instances {
            $(pub $field: <$cap as Capability>::Instance,)*
        }

        impl Grants {
            fn resolve(
                spec: &ComponentSpec,
                values: &BTreeMap<String, String>,
            ) -> Result<Grants, ManifestError> {
                Ok(Grants {
                    $($field: <$cap as Capability>::grant(spec, values)?,)*
                })
            }
        }

        impl Shared {
            pub fn new(settings: &Settings) -> anyhow::Result<Shared> {
                Ok(Shared {
                    $($field: <$cap as Capability>::shared(settings)?,)*
                })
            }

            /// Takes up a component version's grants (see [`Capability::claim`]).
            pub fn claim(&self, component: &str, spec: &ComponentSpec) -> anyhow::Result<()> {
                $(<$cap as Capability>::claim(&self.$field, component, spec)?;)*
                Ok(())
            }

            /// Takes up a new version's grants while `before` serves (see
            /// [`Capability::claim_again`]).
            pub fn claim_again(
                &self,
                component: &str,
                before: Option<&ComponentSpec>,
                spec: &ComponentSpec,
            ) -> anyhow::Result<()> {
                $(<$cap as Capability>::claim_again(&self.$field, component, before, spec)?;)*
                Ok(())
            }
        }

        impl Instances {
            fn new(shared: &Shared, grants: &Grants, request: &Request) -> Instances {
                Instances {
                    $($field: <$cap as Capability>::instance(
                        &shared.$field,
                        &grants.$field,
                        request,
                    ),)*
                }
            }

            fn end_of_request(&mut self) {
                $(<$cap as Capability>::end_of_request(&mut self.$field);)*
            }
        }

        /// Registers every capability's interfaces in `linker`.
        pub fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
            $(<$cap as Capability>::add_to_linker(linker, concurrent)?;)*
            Ok(())
        }
    };
}

capabilities! {
    wasi: stdio::Wasi,
    http: outbound_http::OutboundHttp,
    variables: variables::Variables,
    key_value: key_value::KeyValue,
    sqlite: sqlite::Sqlite,
    redis: outbound_redis::Redis,
    otel: otel::Otel,
    gpio: gpio::Gpio,
}

/// The application's variable values, resolved once at load: what every
/// component's templates are rendered with.
pub fn resolve_app_values(
    app: &App,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<ManifestError>> {
    variables::resolve_app_variables(&app.variables, overrides)
}

/// What one component version is granted, resolved from the manifest once.
pub struct ComponentCaps {
    pub id: Arc<str>,
    /// Per-component request timeout (`tool.gantry.timeout_ms`).
    pub timeout: Option<Duration>,
    pub grants: Grants,
}

impl ComponentCaps {
    /// Resolves every capability's grant, templates rendered against the
    /// application's variable values.
    pub fn resolve(
        spec: &ComponentSpec,
        app_values: &BTreeMap<String, String>,
    ) -> Result<ComponentCaps, ManifestError> {
        Ok(ComponentCaps {
            id: Arc::from(spec.id.as_str()),
            timeout: spec.gantry.timeout_ms.map(Duration::from_millis),
            grants: Grants::resolve(spec, app_values)?,
        })
    }
}

/// Most host resources (streams, fields, bodies, pollables...) one instance
/// may hold at once: past it a new one fails in the guest instead of growing
/// host memory that the instance's memory limit does not see.
pub const MAX_RESOURCES: usize = 16_384;

/// Everything a guest's host calls can reach, for one request: the
/// capabilities' instance states, the resource table they share, and the
/// instance's memory limits.
pub struct HostState {
    pub(crate) caps: Instances,
    pub(crate) table: ResourceTable,
    limits: wasmtime::StoreLimits,
    /// The largest linear memory the instance asked for.
    peak: usize,
}

impl HostState {
    pub fn new(
        caps: &ComponentCaps,
        shared: &Shared,
        max_memory: u64,
        trace: TraceHandle,
        deadline: std::time::Instant,
        hops: u32,
    ) -> HostState {
        let guest = otel::GuestTelemetry::new(
            caps.id.clone(),
            trace.tracing.clone(),
            trace.metrics.clone(),
            trace.cx.clone(),
        );
        let request = Request {
            component: caps.id.clone(),
            trace,
            guest: Arc::new(Mutex::new(guest)),
            deadline,
            hops,
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        HostState {
            caps: Instances::new(shared, &caps.grants, &request),
            table,
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
                // Tables hold function references; a million is far beyond
                // any sane guest.
                .table_elements(1 << 20)
                .build(),
            peak: 0,
        }
    }

    /// The store's resource limiter: wasmtime's [`wasmtime::StoreLimits`],
    /// which also remembers the peak memory asked for.
    pub fn limiter(&mut self) -> &mut dyn wasmtime::ResourceLimiter {
        self
    }

    /// The largest linear memory (bytes) the instance grew to or asked for.
    pub fn memory_peak(&self) -> usize {
        self.peak
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        self.caps.end_of_request();
    }
}
