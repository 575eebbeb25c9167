#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, the example
# functions' build, unit tests and the integration tests that start the real
# host on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo build --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry
cargo clippy --locked --release -p gantry --all-targets -- -D warnings
cargo clippy --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry -- -D warnings
cargo test --locked --release -p gantry
