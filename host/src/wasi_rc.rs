//! WASI 0.3's last release candidate (`@0.3.0-rc-2026-03-15`), served
//! through Gantry's 0.3.0 implementation (wasmtime's).
//!
//! Python components built by componentize-py with spin-sdk 5 import every
//! release-candidate interface beside the 0.3.0 ones, and components built
//! against the candidate alone import and export nothing else. The
//! candidate's types are those of 0.3.0, but the names differ and a
//! pre-release version never matches another, so the linker cannot serve
//! one through the other. Instead, before compiling, the component is
//! wrapped in an outer one that imports only the 0.3.0 interfaces and hands
//! each one to the component for both its 0.3.0 and its candidate import
//! (so a resource a guest gets through one version works through the
//! other), and that exports the candidate `wasi:http/handler` as 0.3.0.
//! The composition library type-checks every pairing: an interface whose
//! candidate differs from 0.3.0 is refused at load, naming it. The wrapped
//! component is what gets compiled and cached, so this runs once per
//! component version, never on a cache hit.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use wac_graph::{CompositionGraph, EncodeOptions, types::Package};

/// The version suffix of the release candidate served.
const CANDIDATE: &str = "@0.3.0-rc-2026-03-15";

/// The 0.3.0 name serving a candidate `wasi:` import or export.
fn final_name(name: &str) -> Option<String> {
    name.strip_suffix(CANDIDATE)
        .filter(|base| base.starts_with("wasi:"))
        .map(|base| format!("{base}@0.3.0"))
}

/// Whether a component's own imports or exports name a candidate
/// interface (read from the binary, without compiling it).
pub fn uses_candidate(bytes: &[u8]) -> bool {
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
            Ok(wasmparser::Payload::ComponentImportSection(imports)) if depth == 0 => {
                if imports
                    .into_iter()
                    .filter_map(Result::ok)
                    .any(|i| final_name(i.name.name).is_some())
                {
                    return true;
                }
            }
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 0 => {
                if exports
                    .into_iter()
                    .filter_map(Result::ok)
                    .any(|e| final_name(e.name.name).is_some())
                {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Wraps `component` so that it imports and exports 0.3.0 only (see the
/// module's documentation).
pub fn bridge(component: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let package = Package::from_bytes("gantry:guest", None, component, graph.types_mut())
        .context("reading the component's imports and exports")?;
    let world = graph.types()[package.ty()].clone();
    let package = graph.register_package(package)?;
    let instance = graph.instantiate(package);

    // Every import but the candidates, under its own name; then each
    // candidate, from its 0.3.0 import (added when the component has none).
    let mut imports = HashMap::new();
    for (name, kind) in world.imports.iter() {
        if final_name(name).is_none() {
            imports.insert(name.clone(), graph.import(name.clone(), *kind)?);
        }
    }
    for (name, kind) in world.imports.iter() {
        let argument = match final_name(name) {
            None => imports[name],
            Some(served) => match imports.get(&served) {
                Some(node) => *node,
                None => {
                    let node = graph.import(served.clone(), *kind)?;
                    imports.insert(served, node);
                    node
                }
            },
        };
        graph
            .set_instantiation_argument(instance, name, argument)
            .map_err(|e| anyhow!("`{name}` cannot be served through 0.3.0: {e}"))?;
    }

    for name in world.exports.keys() {
        let out = match final_name(name) {
            // Both exported: the 0.3.0 one is the one served.
            Some(served) if world.exports.contains_key(&served) => continue,
            Some(served) => served,
            None => name.clone(),
        };
        let export = graph.alias_instance_export(instance, name)?;
        graph.export(export, out)?;
    }

    graph
        .encode(EncodeOptions {
            // Validated by the compiler right after.
            validate: false,
            ..EncodeOptions::default()
        })
        .context("encoding the wrapped component")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(component: &[u8]) -> (Vec<String>, Vec<String>) {
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(component) {
            match payload.expect("parses") {
                wasmparser::Payload::ModuleSection { .. }
                | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) if depth > 0 => depth -= 1,
                wasmparser::Payload::ComponentImportSection(s) if depth == 0 => imports.extend(
                    s.into_iter()
                        .map(|i| i.expect("import").name.name.to_string()),
                ),
                wasmparser::Payload::ComponentExportSection(s) if depth == 0 => exports.extend(
                    s.into_iter()
                        .map(|e| e.expect("export").name.name.to_string()),
                ),
                _ => {}
            }
        }
        (imports, exports)
    }

    fn component(u64_in_candidate: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                (import "wasi:random/random@0.3.0"
                    (instance (export "get-random-u64" (func (result u64)))))
                (import "wasi:random/random@0.3.0-rc-2026-03-15" (instance $rc
                    (export "get-random-u64" (func (result {u64_in_candidate})))))
                (import "wasi:clocks/types@0.3.0-rc-2026-03-15" (instance $clocks))
                (export "wasi:clocks/types@0.3.0-rc-2026-03-15" (instance $clocks))
            )"#
        ))
        .expect("wat")
    }

    #[test]
    fn wrapped_components_name_only_0_3_0() {
        let original = component("u64");
        assert!(uses_candidate(&original));
        let wrapped = bridge(&original).expect("bridged");
        assert!(!uses_candidate(&wrapped));
        let (imports, exports) = names(&wrapped);
        assert_eq!(
            imports,
            ["wasi:random/random@0.3.0", "wasi:clocks/types@0.3.0"],
            "the candidate random import is served by the 0.3.0 one"
        );
        assert_eq!(exports, ["wasi:clocks/types@0.3.0"]);
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&wrapped)
            .expect("valid");
    }

    #[test]
    fn a_candidate_unlike_0_3_0_is_refused_by_name() {
        let e = bridge(&component("u32")).expect_err("types differ");
        assert!(
            format!("{e:#}").contains("`wasi:random/random@0.3.0-rc-2026-03-15` cannot be served"),
            "{e:#}"
        );
    }

    #[test]
    fn names_only_wasi_candidates_of_0_3_0() {
        assert_eq!(
            final_name("wasi:http/handler@0.3.0-rc-2026-03-15").as_deref(),
            Some("wasi:http/handler@0.3.0")
        );
        assert_eq!(final_name("wasi:http/handler@0.3.0"), None);
        assert_eq!(final_name("wasi:http/types@0.3.0-rc-2025-09-16"), None);
        assert_eq!(final_name("spin:x/y@0.3.0-rc-2026-03-15"), None);
    }
}
