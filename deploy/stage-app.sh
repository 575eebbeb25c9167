#!/bin/sh
# Lays the example app out in one folder, ready to serve from anywhere (an
# image, a ConfigMap, a volume): spin.toml with every component's source next
# to it and no build sections, and the built components themselves.
#   deploy/stage-app.sh OUT_DIR
# Build the components first (scripts/setup.sh does).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: deploy/stage-app.sh OUT_DIR}
built=target/wasm32-wasip2/wasm
mkdir -p "$out"
awk '
  /^\[component\.[^].]+\.build\]/ { skip = 1; next }
  /^\[/ { skip = 0 }
  !skip
' "$root/spin.toml" | sed "s#^source = \"$built/#source = \"#" > "$out/spin.toml"
for f in $(sed -n "s#^source = \"$built/\\(.*\\)\"#\\1#p" "$root/spin.toml"); do
    if [ ! -f "$root/$built/$f" ]; then
        echo "deploy/stage-app.sh: $built/$f is missing; build the functions first:" >&2
        echo "  cargo build --target wasm32-wasip2 --profile wasm --workspace --exclude gantry" >&2
        exit 1
    fi
    cp "$root/$built/$f" "$out/$f"
done
