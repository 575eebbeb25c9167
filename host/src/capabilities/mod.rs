//! Host interfaces a guest may import, one sub-module each. Each owns its
//! manifest section (resolved here into [`ComponentCaps`]), its per-store
//! state and its linker registration. Nothing is ambient: a component gets
//! only what its manifest entry grants.

pub mod gpio;
pub mod otel;
pub mod outbound_http;
pub mod stdio;
pub mod variables;

/// Host bindings for every interface of `wit/` that Gantry implements.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gantry:host/guest-imports",
        imports: { default: trappable },
        with: {
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;

use crate::instance::HostState;
use crate::manifest::{ComponentSpec, ManifestError};
use outbound_http::{HostPattern, OutboundPolicy};
use variables::ComponentVariables;

/// What one component version is granted, resolved from the manifest once.
#[derive(Debug, Clone)]
pub struct ComponentCaps {
    pub id: Arc<str>,
    pub outbound: Arc<OutboundPolicy>,
    pub variables: ComponentVariables,
    pub environment: Vec<(String, String)>,
    /// Per-component request timeout (`tool.gantry.timeout_ms`).
    pub timeout: Option<Duration>,
    /// Inject trace context into outbound requests.
    pub propagate_trace_context: bool,
    /// GPIO pins granted, by label.
    pub gpio: Arc<gpio::GpioGrants>,
}

impl ComponentCaps {
    /// Resolves templates against the application's variable values.
    pub fn resolve(
        spec: &ComponentSpec,
        app_values: &BTreeMap<String, String>,
    ) -> Result<ComponentCaps, ManifestError> {
        let mut vars = HashMap::new();
        for (name, template) in &spec.variables {
            let value = template
                .render(app_values)
                .map_err(|message| ManifestError {
                    location: spec.source_location.clone(),
                    message,
                })?;
            vars.insert(name.clone(), value);
        }
        let mut patterns = Vec::new();
        for rule in &spec.allowed_outbound_hosts {
            let text = rule
                .template
                .render(app_values)
                .map_err(|message| ManifestError {
                    location: rule.location.clone(),
                    message,
                })?;
            let pattern = HostPattern::parse(&text).map_err(|message| ManifestError {
                location: rule.location.clone(),
                message: if text == rule.raw {
                    message
                } else {
                    format!("{} expands to {text:?}: {message}", rule.raw)
                },
            })?;
            patterns.push(pattern);
        }
        Ok(ComponentCaps {
            id: Arc::from(spec.id.as_str()),
            outbound: Arc::new(OutboundPolicy::new(patterns)),
            variables: ComponentVariables::new(vars),
            environment: spec
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: spec.gantry.timeout_ms.map(Duration::from_millis),
            propagate_trace_context: spec.gantry.propagate_trace_context.unwrap_or(true),
            gpio: Arc::new(gpio::GpioGrants::new(&spec.gpio)),
        })
    }
}

/// Registers every interface Gantry provides: for WASI 0.2 and 0.3 guests
/// on an engine with concurrency support (`concurrent`), else only what
/// needs none (WASI 0.2 and Gantry's own synchronous interfaces).
pub fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    if concurrent {
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    variables::add_to_linker(
        linker,
        |s: &mut HostState| variables::ConfigView(&s.variables),
        concurrent,
    )?;
    otel::add_to_linker(linker, HostState::otel)?;
    gpio::add_to_linker(linker, HostState::gpio)?;
    Ok(())
}
