//! Spin variables: the application's `[variables]`, each component's
//! `[component.<id>.variables]` templates over them, and the
//! `wasi:config/store` interface through which a guest reads its own.
//!
//! Values come, first match wins, from `--variable name=value`, then the
//! environment (`SPIN_VARIABLE_<NAME>`, Spin's convention), then the default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::Linker;

use super::{Capability, HostState, Request, Settings};
use crate::manifest::{ComponentSpec, ManifestError, VariableSpec, is_valid_name};

/// Resolves every application variable once, at load.
pub fn resolve_app_variables(
    specs: &BTreeMap<String, VariableSpec>,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<ManifestError>> {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, spec) in specs {
        let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        let value = overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(&env_name).ok())
            .or_else(|| spec.default.clone());
        match value {
            Some(v) => {
                values.insert(name.clone(), v);
            }
            None => missing.push(ManifestError {
                location: spec.location.clone(),
                message: format!(
                    "required variable `{name}` has no value: set {env_name} or pass --variable {name}=..."
                ),
            }),
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        Err(missing)
    }
}

/// The values one component sees through `wasi:config/store`.
#[derive(Debug, Default, Clone)]
pub struct ComponentVariables(Arc<HashMap<String, String>>);

impl ComponentVariables {
    pub fn new(map: HashMap<String, String>) -> Self {
        ComponentVariables(Arc::new(map))
    }
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.get(key)
    }
    pub fn all(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort();
        v
    }
}

use super::bindings;
use bindings::fermyon::spin::variables as spin_v2;
use bindings::spin::variables::variables as spin_v3;
use bindings::wasi::config::store;

/// Per-store view handed to the generated host traits of all three
/// variables interfaces.
pub struct ConfigView<'a>(pub &'a ComponentVariables);

impl ComponentVariables {
    /// Spin's lookup rules: a bad name and an undefined variable are
    /// different errors.
    fn spin_get(&self, name: &str) -> Result<String, (bool, String)> {
        if !is_valid_name(name) {
            return Err((true, name.to_string()));
        }
        self.get(name)
            .cloned()
            .ok_or_else(|| (false, name.to_string()))
    }
}

impl store::Host for ConfigView<'_> {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        Ok(Ok(self.0.get(&key).cloned()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        Ok(Ok(self.0.all()))
    }
}

impl spin_v2::Host for ConfigView<'_> {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, spin_v2::Error>> {
        Ok(self.0.spin_get(&name).map_err(|(invalid, n)| {
            if invalid {
                spin_v2::Error::InvalidName(n)
            } else {
                spin_v2::Error::Undefined(n)
            }
        }))
    }
}

impl spin_v3::Host for ConfigView<'_> {}

impl<U> spin_v3::HostWithStore<U> for HasConfig {
    async fn get(
        store: &wasmtime::component::Accessor<U, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, spin_v3::Error>> {
        let found = store.with(|mut view| view.get().0.spin_get(&name));
        Ok(found.map_err(|(invalid, n)| {
            if invalid {
                spin_v3::Error::InvalidName(n)
            } else {
                spin_v3::Error::Undefined(n)
            }
        }))
    }
}

pub struct HasConfig;
impl wasmtime::component::HasData for HasConfig {
    type Data<'a> = ConfigView<'a>;
}

/// The variables capability.
pub struct Variables;

impl Capability for Variables {
    type Grant = ComponentVariables;
    type Shared = ();
    type Instance = ComponentVariables;

    fn shared(_: &Settings) -> anyhow::Result<()> {
        Ok(())
    }

    /// Renders the component's `[component.<id>.variables]` templates.
    fn grant(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<ComponentVariables, ManifestError> {
        let mut vars = HashMap::new();
        for (name, template) in &spec.variables {
            let value = template.render(values).map_err(|message| ManifestError {
                location: spec.source_location.clone(),
                message,
            })?;
            vars.insert(name.clone(), value);
        }
        Ok(ComponentVariables::new(vars))
    }

    fn instance(_: &(), grant: &ComponentVariables, _: &Request) -> ComponentVariables {
        grant.clone()
    }

    /// Spin's v3 interface (an async function) needs an engine with
    /// concurrency support.
    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> ConfigView<'_> {
            ConfigView(&s.caps.variables)
        }
        store::add_to_linker::<HostState, HasConfig>(linker, get)?;
        spin_v2::add_to_linker::<HostState, HasConfig>(linker, get)?;
        if concurrent {
            spin_v3::add_to_linker::<HostState, HasConfig>(linker, get)?;
        }
        Ok(())
    }
}
