#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, the example
# functions' build, unit tests and the integration tests that start the real
# host on 127.0.0.1, then the Raspberry Pi build: the host cross-compiled for
# arm64 with the rppal backend, run under qemu; then the deployment checks and
# the container image.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where the time goes, in the CI log: seconds since the start, per step.
mark() { echo "test.sh: ${SECONDS}s: $*" >&2; }

cargo fmt --all --check
cargo build --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry
cargo build --locked --target wasm32-wasip1 --profile wasm -p kv-v2
cargo build --locked --target wasm32-unknown-unknown --profile wasm -p bare
functions/hello-py/build.sh
functions/platform-py/build.sh
functions/hello-js/build.sh
mark guests built
cargo clippy --locked --release -p gantry --all-targets --features rppal -- -D warnings
cargo clippy --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry -- -D warnings
mark clippy done
cargo test --locked --release -p gantry

mark tests done
# arm64 (Raspberry Pi) host: built with rppal, it runs under emulation, checks
# the example app, and refuses --gpio rppal off a Pi with a clear message.
cargo build --locked --release --target aarch64-unknown-linux-gnu -p gantry
arm=target/aarch64-unknown-linux-gnu/release/gantry
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
"${qemu[@]}" "$arm" --version
# The app as its ConfigMaps carry it (the Rust examples): compiling the
# Python and JavaScript ones under emulation would take minutes and prove
# nothing more about the arm64 build.
rm -rf target/arm64-app
deploy/stage-app.sh --leave-out hello-py --leave-out hello-js target/arm64-app
"${qemu[@]}" "$arm" check -f target/arm64-app/spin.toml --no-cache
if out=$("${qemu[@]}" "$arm" up --gpio rppal -f target/arm64-app/spin.toml \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 2>&1); then
    echo "arm64: gantry up --gpio rppal started off a Raspberry Pi" >&2
    exit 1
fi
if ! grep -q "no Raspberry Pi" <<<"$out"; then
    echo "arm64: --gpio rppal failed without the 'no Raspberry Pi' message:" >&2
    echo "$out" >&2
    exit 1
fi
echo "arm64: --gpio rppal refused off a Pi: $(grep -m1 'no Raspberry Pi' <<<"$out")"

mark arm64 done
# Deployment: the Helm chart, k3s, KEDA and Argo CD objects against their
# schemas, the load test against the real host; then the container image,
# built with buildah and run under podman.
scripts/deploy-test.sh
mark deployment checks done
scripts/image-test.sh
mark image done
