#!/usr/bin/env bash
# Sets up a fresh machine for Gantry: the pinned Rust toolchain with the
# wasm32-wasip2 target, the test peers (Prometheus, an OTLP collector), then a release build of
# the host and the example functions. Safe to run again; it only installs
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^${toolchain}"; then
    rustup toolchain install "$toolchain" --profile minimal \
        --component rustfmt --component clippy --target wasm32-wasip2
fi
# An existing toolchain may lack the target or components.
rustup target add --toolchain "$toolchain" wasm32-wasip2
rustup component add --toolchain "$toolchain" rustfmt clippy

# Real peers the tests and benchmarks talk to: Prometheus (server and
# promtool) and the hey load generator.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
    || ! command -v hey >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        prometheus hey
fi

# A real OpenTelemetry collector for the OTLP tests (rotel ships its binary
# in the Python package).
if ! python3 -c 'import rotel' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check rotel==0.0.1a15
fi

cargo build --release --locked -p gantry
cargo build --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry
echo "setup done: target/release/gantry"
