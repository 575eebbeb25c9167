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
pub mod gpio;
pub mod instance;
pub mod manifest;
pub mod pagemap;
pub mod router;
pub mod runtime;
pub mod server;
pub mod swap;
pub mod telemetry;
