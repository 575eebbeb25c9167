#!/usr/bin/env bash
# Builds hello-py into app.wasm with the Python toolchain scripts/setup.sh
# installs (target/venv: componentize-py and Spin's Python SDK, pinned in
# requirements.txt); does nothing when app.wasm is newer than the sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$here/../../target/venv
if [[ -f $here/app.wasm && $here/app.wasm -nt $here/app.py && $here/app.wasm -nt $here/requirements.txt ]]; then
    exit 0
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
cd "$here"
componentize-py -w spin:up/http-trigger@4.1.0 componentize app -o app.wasm
