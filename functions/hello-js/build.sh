#!/usr/bin/env bash
# Builds hello-js into dist/hello-js.wasm the way its spin.toml does (npm,
# then esbuild and j2w), with the npm cache under target/; installs the
# locked packages only when node_modules is older than package-lock.json and
# builds only when a source is newer than the component.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export npm_config_cache=$here/../../target/npm-cache
if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
fi
wasm=dist/hello-js.wasm
if [[ -f $wasm && -z $(find src build.mjs package.json package-lock.json -newer "$wasm" -print -quit) ]]; then
    exit 0
fi
npm run --silent build
