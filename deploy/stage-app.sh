#!/bin/sh
# Lays the example app out in one folder, ready to serve from anywhere (an
# image, a ConfigMap, a volume): spin.toml, without build sections, with each
# component's source (as <id>.wasm) and `files` folder next to it.
#   deploy/stage-app.sh [--leave-out ID]... OUT_DIR
# --leave-out leaves component ID and its routes out: the image leaves out
# the Python and JavaScript examples (tens of MB, and more memory than its
# instance bound), the ConfigMaps the static site too (a folder tree, which a
# ConfigMap's flat keys cannot carry).
# Build the components first (scripts/setup.sh does). Reads the root
# spin.toml, whose `files` entries are written `[{ source = "...", destination
# = "..." }]` on one line.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dropped=""
while [ $# -gt 1 ] && [ "$1" = --leave-out ]; do
    dropped="$dropped ${2:?--leave-out needs a component id}"
    shift 2
done
out=${1:?usage: deploy/stage-app.sh [--leave-out ID]... OUT_DIR}
manifest=$root/spin.toml
mkdir -p "$out"

# One line per component: id, source, files folder (or "-").
components=$(awk '
    function flush() { if (id != "") print id "\t" src "\t" (files == "" ? "-" : files) }
    /^\[/ {
        if (match($0, /^\[component\.[^].]+\]$/)) { flush(); id = substr($0, 12, length($0) - 12); src = ""; files = ""; inside = 1 }
        else inside = 0
        next
    }
    inside && /^source = "/ { src = $0; sub(/^source = "/, "", src); sub(/".*/, "", src) }
    inside && /^files = / {
        files = $0
        if (files !~ /^files = \[\{ source = "[^"]+", destination = "[^"]+" \}\]$/) {
            print "deploy/stage-app.sh: component " id ": write files as [{ source = \"...\", destination = \"...\" }] on one line" > "/dev/stderr"
            exit 1
        }
        sub(/^files = \[\{ source = "/, "", files); sub(/".*/, "", files)
    }
    END { flush() }
' "$manifest")

for id in $dropped; do
    if ! printf '%s\n' "$components" | cut -f1 | grep -qx "$id"; then
        echo "deploy/stage-app.sh: --leave-out $id: no such component in spin.toml" >&2
        exit 1
    fi
done
for line in $(printf '%s\n' "$components" | tr '\t' '|'); do
    id=${line%%|*}
    rest=${line#*|}
    src=${rest%%|*}
    files=${rest#*|}
    case " $dropped " in *" $id "*) continue ;; esac
    if [ ! -f "$root/$src" ]; then
        echo "deploy/stage-app.sh: $src (component $id) is missing; build the app first (scripts/setup.sh)" >&2
        exit 1
    fi
    cp "$root/$src" "$out/$id.wasm"
    if [ "$files" != - ]; then
        rm -rf "${out:?}/$(basename "$files")"
        cp -R "$root/$files" "$out/$(basename "$files")"
    fi
done

# The manifest: sources by component id, files folders by their base name, no build
# sections, and neither the components left out nor their routes.
awk -v dropped="$dropped" '
    BEGIN { keep = 1; n = split(dropped, d, " "); for (i = 1; i <= n; i++) gone[d[i]] = 1 }
    function flush() {
        if (keep) printf "%s", block
        block = ""
    }
    /^\[/ {
        flush()
        keep = 1
        header = $0
        if (match(header, /^\[component\.[^].]+/)) {
            id = substr(header, 12, RLENGTH - 11)
            if (id in gone) keep = 0
            if (header ~ /\.build\]$/) keep = 0
        }
    }
    header == "[[trigger.http]]" && /^component = "/ {
        c = $0; sub(/^component = "/, "", c); sub(/".*/, "", c)
        if (c in gone) keep = 0
    }
    /^source = "/ && header ~ /^\[component\.[^].]+\]$/ {
        $0 = "source = \"" id ".wasm\""
    }
    /^files = \[\{ source = "/ {
        s = $0; sub(/^files = \[\{ source = "/, "", s); rest = s; sub(/".*/, "", s); sub(/^[^"]*/, "", rest)
        n = split(s, parts, "/"); $0 = "files = [{ source = \"" parts[n] rest
    }
    { block = block $0 "\n" }
    END { flush() }
' "$manifest" >"$out/spin.toml"
