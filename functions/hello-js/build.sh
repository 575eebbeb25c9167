#!/usr/bin/env bash
# Builds hello-js into dist/hello-js.wasm the way its spin.toml does (npm,
# then esbuild and j2w), with everything npm installs under target/: the
# cache in target/npm-cache, the locked packages in target/npm/hello-js
# (node_modules here links there). Installs only when package-lock.json
# changed, and builds only when a source is newer than the component.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=$here/../../target
cd "$here"
export npm_config_cache=$target/npm-cache
modules=$target/npm/hello-js
if [[ ! -d $modules/node_modules || package-lock.json -nt $modules/node_modules ]]; then
    mkdir -p "$modules"
    cp package.json package-lock.json "$modules/"
    (cd "$modules" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$modules/node_modules"
fi
if [[ ! -L node_modules ]]; then
    rm -rf node_modules
    ln -s ../../target/npm/hello-js/node_modules node_modules
fi
wasm=dist/hello-js.wasm
if [[ -f $wasm && -z $(find src build.mjs package.json package-lock.json -newer "$wasm" -print -quit) ]]; then
    exit 0
fi
npm run --silent build
