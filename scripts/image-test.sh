#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile with buildah (its final
# stage, from a static binary built here: nothing can be pulled) and serves a
# request from it under podman: non-root, read-only root filesystem, explicit
# ulimits, on 127.0.0.1. Then stops it and checks it drained and exited 0.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-musl
cargo build --locked --profile dist --target "$triple" -p gantry --features rppal
rm -rf target/image-app
deploy/stage-app.sh target/image-app

storage=(--storage-driver vfs)
image=localhost/gantry:ci
buildah "${storage[@]}" rmi --prune >/dev/null 2>&1 || true
buildah "${storage[@]}" bud --isolation chroot -q -f deploy/Dockerfile \
    --build-arg BINARY_FROM=prebuilt --build-arg TRIPLE="$triple" -t "$image" .

podman=(podman "${storage[@]}" --runtime runc --cgroup-manager cgroupfs)
name=gantry-ci-$$
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
admin=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() { "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${podman[@]}" run -d --name "$name" --network host --read-only \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --tmpfs /var/cache/gantry:rw,size=64m,mode=1777 \
    -e GANTRY_LISTEN="127.0.0.1:$port" -e GANTRY_ADMIN_LISTEN="127.0.0.1:$admin" \
    "$image" >/dev/null

for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
body=$(curl -fsS "http://127.0.0.1:$port/alpha")
echo "image answered: $body"
grep -q '"route":"alpha"' <<<"$body"
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
size=$(buildah "${storage[@]}" images --format '{{.Size}}' "$image" | head -1)
echo "image ($size, gantry $(du -h target/$triple/dist/gantry | cut -f1)): built, served a request as 65532 on a read-only root, drained, exit 0"
