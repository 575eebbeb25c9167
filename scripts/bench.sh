#!/usr/bin/env bash
# The performance benchmark, in one run: Gantry (telemetry on and off) against
# `wasmtime serve` of the same wasmtime version and a native hyper server, on
# the same component, A/B/C/D interleaved, at concurrency 1 and 50; then the
# micro figures (instantiation, router lookup, start-up with a cold and warm
# compile cache, idle RSS with the example app and with 1..500 components);
# then telemetry's cost in instructions per request; last, a fresh
# container's start to first 200, compiling against precompiled (the image,
# built and run by scripts/image-test.sh).
# Prints figures and ratios; asserts nothing. Run scripts/setup.sh first (hey,
# the collector, valgrind, the toolchain). About 13 minutes with the defaults, plus a
# one-time build of wasmtime-cli (~15 min) and of the 500-component cache.
set -euo pipefail
cd "$(dirname "$0")/.."

# The reference: wasmtime-cli 50.0.1 (the wasmtime the host links), built once
# with the features `wasmtime serve` needs and kept under target/tools.
wasmtime_root=target/tools/wasmtime-50.0.1
if [[ ! -x $wasmtime_root/bin/wasmtime ]]; then
    cargo install wasmtime-cli --version 50.0.1 --locked --root "$wasmtime_root" \
        --no-default-features \
        --features run,serve,cranelift,pooling-allocator,cache,parallel-compilation,component-model,component-model-async,logging
fi
export GANTRY_WASMTIME=$PWD/$wasmtime_root/bin/wasmtime

cargo build --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry
cargo bench --locked -p gantry --bench compare
cargo bench --locked -p gantry --bench micro
# State per request: /counter (key-value + SQLite) against /alpha.
cargo bench --locked -p gantry --bench stores
# Telemetry on against off once more, then counted in instructions (callgrind).
cargo bench --locked -p gantry --bench telemetry
# Start to first 200 of a fresh container, compiling and precompiled.
scripts/image-test.sh
