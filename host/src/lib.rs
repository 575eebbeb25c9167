//! Gantry: a wasmtime host that serves Spin applications' WASI HTTP
//! components, one fresh instance per request.
//!
//! Data flows one way: `server` (listener) -> `router` -> `instance`
//! (dispatch into a fresh store) -> `capabilities` (what the guest may call).
//! `manifest` turns spin.toml into an [`manifest::App`]; `runtime` compiles
//! and holds the live components; `admin` is the operator's listener.

pub mod admin;
pub mod builder;
pub mod capabilities;
pub mod cli;
pub mod connection;
pub mod gpio;
pub mod instance;
pub mod manifest;
pub mod router;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod swap;
pub mod telemetry;
pub mod wasi_rc;

/// Library error values get no backtrace unless `RUST_LIB_BACKTRACE` asks for
/// one; panics keep theirs (`RUST_BACKTRACE`). wasmtime builds an error value
/// for every store torn down with work pending, and with `RUST_BACKTRACE` set
/// each one would walk the stack: a few percent of every request. The binary
/// and the benchmarks that measure it in-process both call this first.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists.
pub unsafe fn no_library_backtraces_unless_asked() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
