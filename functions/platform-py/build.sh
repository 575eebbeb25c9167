#!/usr/bin/env bash
# Builds the platform-py probe into app.wasm with the Python toolchain
# scripts/setup.sh installs (target/venv, pinned in
# ../hello-py/requirements.txt) over its WIT (wit/); does
# nothing when app.wasm is newer than its sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$here/../../target/venv
wit=$here/wit
if [[ -f $here/app.wasm && $here/app.wasm -nt $here/app.py && $here/app.wasm -nt $wit/world.wit ]]; then
    exit 0
fi
cd "$here"
# Not through the venv's activate: componentize-py would then also merge in
# the WIT of every SDK installed there (Spin's), which this probe does not use.
env -u VIRTUAL_ENV "$venv/bin/componentize-py" -d "$wit" -w gantry:platform-py/rc-http-guest \
    componentize app -o app.wasm
