#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile with buildah (its final
# stage, from a static binary built here: nothing can be pulled), with the
# example's components compiled ahead (`gantry compile`) and the CA bundle.
# Then, under podman on 127.0.0.1:
# - the image as it is: non-root, read-only root, explicit ulimits; its first
#   request needs no compile; it refuses a swap on its read-only admin port;
# - start to first 200 of a fresh container, compiling against precompiled
#   (printed: the figure docs/performance.md quotes);
# - the Helm chart's rendered Deployment container run verbatim with the app
#   ConfigMaps in the kubelet's layout: served, hot-swapped through a `..data`
#   swap, drained on SIGTERM with exit 0 (scripts/run-rendered.py).
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-musl
bin=target/$triple/dist/gantry
cargo build --locked --profile dist --target "$triple" -p gantry --features rppal
rm -rf target/image-app target/image-precompiled
# The example app without its Python and JavaScript components (see
# deploy/Dockerfile).
deploy/stage-app.sh --leave-out hello-py --leave-out hello-js target/image-app
# The settings the image runs with (deploy/Dockerfile's ENV).
GANTRY_MAX_INSTANCE_MEMORY=16MiB "$bin" compile -f target/image-app/spin.toml \
    --out target/image-precompiled >/dev/null 2>&1
cp /etc/ssl/certs/ca-certificates.crt target/image-ca.crt

storage=(--storage-driver vfs)
image=localhost/gantry:ci
buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true
buildah "${storage[@]}" bud --isolation chroot -q -f deploy/Dockerfile \
    --build-arg BINARY_FROM=prebuilt --build-arg TRIPLE="$triple" -t "$image" .

podman=(podman "${storage[@]}" --runtime runc --cgroup-manager cgroupfs)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
names=()
cleanup() { for n in "${names[@]}"; do "${podman[@]}" rm -f "$n" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

# Starts the image with extra `podman run` arguments; sets $name, $port,
# $admin and $first (seconds from `podman run` to the first 200 of /alpha).
start() {
    name=gantry-ci-$$-${#names[@]}
    names+=("$name")
    port=$(free_port)
    admin=$(free_port)
    local t0
    t0=$(date +%s.%N)
    "${podman[@]}" run -d --name "$name" --network host --read-only \
        --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
        --tmpfs /var/cache/gantry:rw,size=64m,mode=1777 \
        --tmpfs /var/lib/gantry:rw,size=64m,mode=1777 \
        -e GANTRY_LISTEN="127.0.0.1:$port" -e GANTRY_ADMIN_LISTEN="127.0.0.1:$admin" \
        "$@" "$image" >/dev/null
    for _ in $(seq 1 600); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/alpha")" = 200 ]; then
            first=$(python3 -c "import time; print(f'{time.time() - $t0:.3f}')")
            return 0
        fi
        sleep 0.02
    done
    echo "the image never answered /alpha; logs:" >&2
    "${podman[@]}" logs "$name" >&2
    exit 1
}

start
body=$(curl -fsS "http://127.0.0.1:$port/alpha")
echo "image answered: $body"
grep -q '"route":"alpha"' <<<"$body"
logs=$("${podman[@]}" logs "$name" 2>&1)
components=$(grep -c '^\[component\.[^].]*\]$' target/image-app/spin.toml)
grep -q "from_cache=$components" <<<"$logs" || { echo "the image compiled at start:"; echo "$logs"; exit 1; } >&2
counter=$(curl -fsS "http://127.0.0.1:$port/counter")
grep -q '"count":1' <<<"$counter" || { echo "/counter answered: $counter" >&2; exit 1; }
user=$("${podman[@]}" inspect --format '{{.Config.User}}' "$name")
[ "$user" = "65532:65532" ] || { echo "image runs as '$user', not 65532:65532" >&2; exit 1; }
# Read-only admin port: a swap through it is refused.
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @target/image-app/beta.wasm \
    "http://127.0.0.1:$admin/components/alpha")
[ "$code" = 403 ] || { echo "admin PUT answered $code, not 403" >&2; exit 1; }
"${podman[@]}" stop -t 30 "$name" >/dev/null
status=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
logs=$("${podman[@]}" logs "$name" 2>&1)
[ "$status" = 0 ] || { echo "exit code $status; logs:"; echo "$logs"; exit 1; } >&2
grep -q "draining in-flight requests" <<<"$logs"

# Start to first 200 of a fresh container: three of each, alternated, the
# median printed. "compiling": the precompiled folder pointed elsewhere.
cold=() warm=()
for _ in 1 2 3; do
    start -e GANTRY_PRECOMPILED_DIR=/nonexistent
    cold+=("$first")
    "${podman[@]}" rm -f "$name" >/dev/null
    start
    warm+=("$first")
    "${podman[@]}" rm -f "$name" >/dev/null
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
echo "fresh container, start to first 200 of /alpha (median of 3): compiling $(median "${cold[@]}") s, precompiled $(median "${warm[@]}") s (runs: ${cold[*]} / ${warm[*]})"

# The chart's Deployment, rendered for the ConfigMap app, run verbatim.
out=target/deploy-check
mkdir -p "$out"
target/tools/bin/helm template gantry deploy/helm/gantry --namespace gantry --kube-version 1.33.0 \
    --set app.source=configMaps --set admin.mutations=true > "$out/helm-podman.yaml"
KUBECTL=target/tools/bin/kubectl deploy/k3s/app-configmap.sh > "$out/app-configmaps.yaml"
python3 scripts/run-rendered.py "$out/helm-podman.yaml" "$image" "$out/app-configmaps.yaml"

size=$(buildah "${storage[@]}" images --format '{{.Size}}' "$image" | head -1)
echo "image ($size, gantry $(du -h "$bin" | cut -f1)): built, served its first request without compiling, as 65532 on a read-only root, drained, exit 0"
