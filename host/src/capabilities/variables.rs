//! Spin variables: the application's `[variables]`, each component's
//! `[component.<id>.variables]` templates over them, and the
//! `wasi:config/store` interface through which a guest reads its own.
//!
//! Values come, first match wins, from `--variable name=value`, then the
//! environment (`SPIN_VARIABLE_<NAME>`, Spin's convention), then the default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::manifest::{ManifestError, VariableSpec};

/// `{{ name }}` templates with literal text around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed `{{{{` in {text:?}"));
            };
            let name = after[..end].trim();
            if !is_valid_name(name) {
                return Err(format!(
                    "`{{{{ {name} }}}}` does not name a variable (lowercase letters, digits, underscores)"
                ));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("stray `}}}}` in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Literal(_) => None,
        })
    }

    pub fn render(&self, values: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Var(v) => match values.get(v) {
                    Some(value) => out.push_str(value),
                    None => return Err(format!("variable `{v}` has no value")),
                },
            }
        }
        Ok(out)
    }
}

/// Spin's variable names: lowercase ASCII letters, digits and underscores,
/// starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

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

/// `concurrent`: whether the linker's engine has concurrency support,
/// which Spin's v3 interface (an async function) needs.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> ConfigView<'_>,
    concurrent: bool,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasConfig>(linker, get)?;
    spin_v2::add_to_linker::<T, HasConfig>(linker, get)?;
    if concurrent {
        spin_v3::add_to_linker::<T, HasConfig>(linker, get)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("http://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.references().collect::<Vec<_>>(), ["host", "port"]);
        let mut vals = BTreeMap::new();
        vals.insert("host".into(), "127.0.0.1".into());
        vals.insert("port".into(), "80".into());
        assert_eq!(t.render(&vals).unwrap(), "http://127.0.0.1:80/x");
        assert!(Template::parse("{{ oops").is_err());
        assert!(Template::parse("{{ Bad }}").is_err());
        assert!(Template::parse("plain").unwrap().is_literal());
    }
}
