//! Spin's interfaces this Gantry links but does not serve:
//! PostgreSQL, MySQL, MQTT (`spin:*@3`/`@4`, `fermyon:spin/*@2.0.0`), the
//! LLM interface. A component importing them loads, as under Spin (every
//! Python component imports the whole platform world); each call answers
//! the interface's own error, chosen from the error variant the component
//! itself declares, so every version of each interface is covered without
//! per-version code. No resource can be obtained, so no method is reached.
//!
//! Stubs are defined per component, on a copy of the engine's linker, only
//! for a component that imports one of these interfaces.

use std::sync::Arc;

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Linker, ResourceType, Type, Val};

use super::HostState;

/// Interfaces (by name prefix) that link and deny.
const UNSERVED: &[(&str, &str)] = &[
    ("spin:postgres/", "PostgreSQL"),
    ("spin:mysql/", "MySQL"),
    ("spin:mqtt/", "MQTT"),
    ("fermyon:spin/postgres", "PostgreSQL"),
    ("fermyon:spin/mysql", "MySQL"),
    ("fermyon:spin/mqtt", "MQTT"),
    ("fermyon:spin/rdbms-types", "database types"),
    ("fermyon:spin/llm", "LLM"),
    ("spin:llm/", "LLM"),
];

/// A resource no call ever hands out.
struct Unobtainable;

fn unserved(name: &str) -> Option<&'static str> {
    UNSERVED
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, what)| *what)
}

/// `base`, or a copy of it with stubs for the unserved interfaces
/// `component` imports.
pub fn linker_for(
    base: &Linker<HostState>,
    component: &Component,
    concurrent: bool,
) -> anyhow::Result<Option<Linker<HostState>>> {
    let engine = component.engine();
    let ty = component.component_type();
    let wanted: Vec<_> = ty
        .imports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(i) => unserved(name).map(|what| (name, what, i)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let mut linker = base.clone();
    for (name, what, instance) in wanted {
        let mut inst = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::Resource(_) => {
                    inst.resource(export, ResourceType::host::<Unobtainable>(), |_, _| Ok(()))?;
                }
                ComponentItem::ComponentFunc(f) => {
                    let answer = Arc::new(denial(&f, what, name));
                    let label = format!("{name}#{export}");
                    if f.async_() && concurrent {
                        inst.func_new_concurrent(export, move |_, _, _, results| {
                            let answer = answer.clone();
                            let label = label.clone();
                            Box::pin(async move { fill(&answer, &label, results) })
                        })?;
                    } else {
                        inst.func_new(export, move |_, _, _, results| {
                            fill(&answer, &label, results)
                        })?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Some(linker))
}

fn fill(answer: &Option<Val>, label: &str, results: &mut [Val]) -> wasmtime::Result<()> {
    match (answer, results.first_mut()) {
        (Some(v), Some(slot)) => {
            *slot = v.clone();
            Ok(())
        }
        _ => Err(wasmtime::Error::msg(format!(
            "{label} is not served by this Gantry, and has no error to answer with"
        ))),
    }
}

/// The error a call answers: `result<_, E>` where `E` is the interface's
/// error variant, with the case that best says "not available here".
fn denial(f: &ComponentFunc, what: &str, interface: &str) -> Option<Val> {
    let mut results = f.results();
    let (Some(Type::Result(r)), None) = (results.next(), results.next()) else {
        return None;
    };
    let message = if what == "LLM" {
        "no model is configured: Gantry does not serve the LLM interface".to_string()
    } else {
        format!("{what} ({interface}) is not served by this Gantry: the host is not allowed")
    };
    let err = match r.err()? {
        Type::Variant(v) => {
            let cases: Vec<_> = v.cases().collect();
            let preferred = if what == "LLM" {
                &["runtime-error", "model-not-supported", "other"][..]
            } else {
                &[
                    "access-denied",
                    "connection-failed",
                    "invalid-address",
                    "other",
                ][..]
            };
            let case = preferred
                .iter()
                .find_map(|want| cases.iter().find(|c| c.name == *want))?;
            let payload = match &case.ty {
                None => None,
                Some(Type::String) => Some(Box::new(Val::String(message))),
                Some(_) => return None,
            };
            Val::Variant(case.name.to_string(), payload)
        }
        Type::String => Val::String(message),
        _ => return None,
    };
    Some(Val::Result(Err(Some(Box::new(err)))))
}
