//! Malformed manifests: each one fails `gantry check` with a message that
//! names the file, the line and the field, and says what is wrong.

mod common;
use common::*;
use std::process::Command;

struct Case {
    name: &'static str,
    manifest: &'static str,
    /// Extra files: (name, bytes) next to spin.toml.
    files: Vec<(&'static str, Vec<u8>)>,
    /// Expected line number in `spin.toml:LINE:`.
    line: usize,
    /// Substrings the error must contain (field and reason).
    expect: &'static [&'static str],
}

const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"bad\"\n";

fn ok_component() -> String {
    "[component.c]\nsource = \"{alpha}\"\n".to_string()
}

fn run_case(case: &Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let alpha = wasm("alpha");
    let text = case
        .manifest
        .replace("{HEAD}", HEAD)
        .replace("{OK}", &ok_component())
        .replace("{alpha}", &alpha.display().to_string());
    let path = dir.path().join("spin.toml");
    std::fs::write(&path, &text).expect("write");
    for (name, bytes) in &case.files {
        std::fs::write(dir.path().join(name), bytes).expect("write file");
    }
    let out = Command::new(gantry_bin())
        .args(["check", "--no-cache", "-f"])
        .arg(&path)
        .output()
        .expect("run gantry check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "case {}: `gantry check` accepted:\n{text}",
        case.name
    );
    let marker = format!("spin.toml:{}:", case.line);
    assert!(
        stderr.contains(&marker),
        "case {}: expected {marker} in:\n{stderr}\n--- manifest:\n{text}",
        case.name
    );
    for e in case.expect {
        assert!(
            stderr.contains(e),
            "case {}: expected {e:?} in:\n{stderr}",
            case.name
        );
    }
    println!("{:<28} {}", case.name, stderr.lines().next().unwrap_or(""));
}

fn core_module() -> Vec<u8> {
    wat::parse_str("(module (func (export \"f\")))").expect("wat")
}

fn component_without_http() -> Vec<u8> {
    wat::parse_str(
        "(component (core module $m (func (export \"f\"))) (core instance (instantiate $m)))",
    )
    .expect("wat")
}

#[test]
fn malformed_manifests_are_refused_with_file_line_and_field() {
    let cases = vec![
        Case {
            name: "bad toml",
            manifest: "spin_manifest_version = 2\n[application\nname = \"x\"\n",
            files: vec![],
            line: 2,
            expect: &["unclosed table", "field `application`"],
        },
        Case {
            name: "missing version",
            manifest: "[application]\nname = \"x\"\n",
            files: vec![],
            line: 1,
            expect: &["spin_manifest_version", "missing"],
        },
        Case {
            name: "version 1",
            manifest: "spin_manifest_version = 1\n[application]\nname = \"x\"\n",
            files: vec![],
            line: 1,
            expect: &["spin_manifest_version", "expected 2"],
        },
        Case {
            name: "unknown top-level key",
            manifest: "spin_manifest_version = 2\nbogus = true\n[application]\nname = \"x\"\n",
            files: vec![],
            line: 2,
            expect: &["unknown field `bogus`"],
        },
        Case {
            name: "wrong type",
            manifest: "spin_manifest_version = 2\n[application]\nname = 42\n",
            files: vec![],
            line: 3,
            expect: &["application.name", "invalid type"],
        },
        Case {
            name: "missing application name",
            manifest: "spin_manifest_version = 2\n[application]\nversion = \"1\"\n",
            files: vec![],
            line: 2,
            expect: &["application", "name"],
        },
        Case {
            name: "route to missing component",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"nope\"\n{OK}",
            files: vec![],
            line: 6,
            expect: &["trigger.http[0].component", "no component \"nope\""],
        },
        Case {
            name: "missing component source file",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = \"missing.wasm\"\n",
            files: vec![],
            line: 8,
            expect: &["component.c.source", "does not exist"],
        },
        Case {
            name: "route without slash",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"a\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 5,
            expect: &["trigger.http[0].route", "must start with '/'"],
        },
        Case {
            name: "private = false",
            manifest: "{HEAD}[[trigger.http]]\nroute = { private = false }\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 5,
            expect: &["trigger.http[0].route", "private = true"],
        },
        Case {
            name: "unknown component field",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsorce = \"x.wasm\"\n",
            files: vec![],
            line: 8,
            expect: &["component.c", "unknown field `sorce`"],
        },
        Case {
            name: "bad outbound host",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n{OK}allowed_outbound_hosts = [\"example.com\"]\n",
            files: vec![],
            line: 9,
            expect: &["component.c.allowed_outbound_hosts[0]", "no scheme"],
        },
        Case {
            name: "core module, not component",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = \"core.wasm\"\n",
            files: vec![("core.wasm", core_module())],
            line: 8,
            expect: &[
                "component.c.source",
                "core WebAssembly module that cannot be made a component: it carries no component type information",
            ],
        },
        Case {
            name: "component without handler",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = \"plain.wasm\"\n",
            files: vec![("plain.wasm", component_without_http())],
            line: 8,
            expect: &["component.c.source", "exports no HTTP handler"],
        },
        Case {
            name: "not wasm at all",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = \"junk.wasm\"\n",
            files: vec![("junk.wasm", b"#!/bin/sh\necho not wasm\n".to_vec())],
            line: 8,
            expect: &["component.c.source", "not a WebAssembly file"],
        },
        Case {
            name: "truncated component",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = \"cut.wasm\"\n",
            files: vec![("cut.wasm", {
                let full = std::fs::read(wasm("alpha")).expect("alpha");
                full[..full.len() / 2].to_vec()
            })],
            line: 8,
            expect: &["component.c.source", "does not compile"],
        },
        Case {
            name: "invalid component id",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"Bad_Id\"\n[component.Bad_Id]\nsource = \"{alpha}\"\n",
            files: vec![],
            line: 7,
            expect: &["component.Bad_Id", "kebab-case"],
        },
        Case {
            name: "undefined variable",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n{OK}[component.c.variables]\nurl = \"{{ nowhere }}\"\n",
            files: vec![],
            line: 10,
            expect: &["component.c.variables.url", "`nowhere`"],
        },
        Case {
            name: "duplicate route",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[[trigger.http]]\nroute = \"/a/\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 8,
            expect: &["trigger.http[1].route", "already routed"],
        },
        Case {
            name: "variable default and required",
            manifest: "{HEAD}[variables]\nv = { default = \"1\", required = true }\n[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 5,
            expect: &["variables.v", "not both"],
        },
        Case {
            name: "required variable unset",
            manifest: "{HEAD}[variables]\nsecret_key = { required = true }\n[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 5,
            expect: &["variables.secret_key", "SPIN_VARIABLE_SECRET_KEY"],
        },
        Case {
            name: "unsupported trigger type",
            manifest: "{HEAD}[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 4,
            expect: &["trigger.redis", "not supported"],
        },
        Case {
            name: "bad gantry tool setting",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n{OK}[component.c.tool.gantry]\ntimeout_ms = \"soon\"\n",
            files: vec![],
            line: 9,
            expect: &["component.c.tool.gantry", "invalid type"],
        },
        Case {
            name: "static status out of range",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\nstatic_response = { status_code = 1000 }\n[[trigger.http]]\nroute = \"/b\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 6,
            expect: &["trigger.http[0].static_response.status_code", "1000"],
        },
        Case {
            name: "static and component",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\nstatic_response = { body = \"x\" }\n{OK}",
            files: vec![],
            line: 7,
            expect: &["trigger.http[0].static_response", "not both"],
        },
        Case {
            name: "static header name",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\nstatic_response = { headers = { \"bad name\" = \"x\" } }\n[[trigger.http]]\nroute = \"/b\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 6,
            expect: &[
                "static_response.headers.bad name",
                "not a valid header name",
            ],
        },
        Case {
            name: "static unknown field",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\nstatic_response = { status = 200 }\n[[trigger.http]]\nroute = \"/b\"\ncomponent = \"c\"\n{OK}",
            files: vec![],
            line: 6,
            expect: &["static_response.status", "unknown field"],
        },
        Case {
            name: "url source without digest",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = { url = \"http://127.0.0.1:1/a.wasm\" }\n",
            files: vec![],
            line: 8,
            expect: &["component.c.source", "missing `digest`"],
        },
        Case {
            name: "url source bad digest",
            manifest: "{HEAD}[[trigger.http]]\nroute = \"/a\"\ncomponent = \"c\"\n[component.c]\nsource = { url = \"http://127.0.0.1:1/a.wasm\", digest = \"md5:abc\" }\n",
            files: vec![],
            line: 8,
            expect: &["component.c.source", "64 hex digits"],
        },
        Case {
            name: "no triggers",
            manifest: "{HEAD}{OK}",
            files: vec![],
            line: 1,
            expect: &["trigger.http", "no `[[trigger.http]]`"],
        },
    ];
    assert!(cases.len() >= 15);
    for case in &cases {
        run_case(case);
    }
    println!("{} malformed manifests refused", cases.len());
}

#[test]
fn a_good_manifest_passes_check_and_reports_what_it_found() {
    let out = Command::new(gantry_bin())
        .args(["check", "-f"])
        .arg(workspace().join("spin.toml"))
        .arg("--cache-dir")
        .arg(shared_cache_dir())
        .output()
        .expect("run gantry check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each component's WASI HTTP version, and the engine it would run on.
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("alpha").contains("wasi:http 0.2 (plain engine)"),
        "{stdout}"
    );
    assert!(
        line("hello").contains("wasi:http 0.3 (concurrent engine)"),
        "{stdout}"
    );
    assert!(
        line("hello-js").contains("wasi:http 0.2 (plain engine)"),
        "{stdout}"
    );
    assert!(
        line("hello-py").contains("wasi:http 0.3 (concurrent engine)"),
        "{stdout}"
    );
    assert!(stdout.contains("OK: 10 components, 10 routes"), "{stdout}");
    // The robot's pins are listed with their BCM numbers.
    assert!(stdout.contains("linus-left-eye=BCM17 output"), "{stdout}");
}
