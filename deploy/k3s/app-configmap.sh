#!/bin/sh
# Prints the example app as two ConfigMaps for deploy/k3s (one ConfigMap is
# capped at 1 MiB): `gantry-app` (spin.toml and the traced examples) and
# `gantry-app-robot` (the robot, the counter and redis). Components go in as binaryData.
# The Python and JavaScript examples (tens of MB) and the static site (a
# folder tree) do not fit in ConfigMaps: that app leaves them out (said on
# stderr); the image carries the whole app.
#   deploy/k3s/app-configmap.sh | kubectl apply --server-side -f -
# Server-side: a client-side apply copies each object into its last-applied
# annotation, which for a component-sized ConfigMap passes the 256 KiB that
# Kubernetes allows all annotations (scripts/kubectl-dry-run.py checks both).
# Applying it again after a rebuild hot-swaps what changed in every pod
# (Gantry runs with --watch; the kubelet refreshes the volume within a minute).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
namespace=${NAMESPACE:-gantry}
kubectl=${KUBECTL:-kubectl}
app=$(mktemp -d)
trap 'rm -rf "$app"' EXIT
"$here/../stage-app.sh" --leave-out hello-py --leave-out hello-js --leave-out site "$app"
"$kubectl" create configmap gantry-app --namespace "$namespace" --dry-run=client -o yaml \
    --from-file="$app/spin.toml" --from-file="$app/hello.wasm" --from-file="$app/alpha.wasm" \
    --from-file="$app/beta.wasm" --from-file="$app/broken.wasm"
echo "---"
"$kubectl" create configmap gantry-app-robot --namespace "$namespace" --dry-run=client -o yaml \
    --from-file="$app/robot.wasm" --from-file="$app/counter.wasm" \
    --from-file="$app/redis.wasm"
