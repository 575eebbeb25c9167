#!/usr/bin/env bash
# Checks everything in deploy/ that this machine can check without a cluster:
# the Helm chart (lint, and rendered with each way it can be set up), the k3s
# manifests, the app ConfigMaps made from the built components, the KEDA and
# Argo CD objects - each object validated against its schema
# (scripts/validate-manifests.py) - and that the app folder the image and the
# ConfigMaps carry is one `gantry check` accepts.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=target/tools/bin
helm=$tools/helm
out=target/deploy-check
rm -rf "$out" && mkdir -p "$out"

"$helm" lint --strict deploy/helm/gantry
"$helm" lint --strict deploy/helm/gantry --set keda.enabled=true,keda.mode=http,app.source=configMaps
render() {
    local name=$1
    shift
    "$helm" template gantry deploy/helm/gantry --namespace gantry --kube-version 1.33.0 "$@" \
        > "$out/helm-$name.yaml"
}
render default
render configmaps --set app.source=configMaps --set-string app.variables.upstream_url=http://upstream.example:8080
render keda-prometheus --set keda.enabled=true,keda.mode=prometheus,serviceMonitor.enabled=true
render keda-http --set keda.enabled=true,keda.mode=http,keda.minReplicas=0
render keda-http-legacy --set keda.enabled=true,keda.mode=http-legacy,keda.minReplicas=0
render rpi --set gpio.backend=rppal,app.source=configMaps
render admin --set admin.mutations=true --set otel.endpoint=http://collector:4318
if "$helm" template gantry deploy/helm/gantry --set gpio.backend=gpiod >/dev/null 2>"$out/bad.err"; then
    echo "helm: gpio.backend=gpiod was accepted" >&2
    exit 1
fi
grep -q "gpio.backend must be sim or rppal" "$out/bad.err"

# What each way of setting it up must render.
expect() { grep -q -- "$2" "$out/helm-$1.yaml" || { echo "helm-$1.yaml lacks: $2" >&2; exit 1; }; }
refuse() { if grep -q -- "$2" "$out/helm-$1.yaml"; then echo "helm-$1.yaml has: $2" >&2; exit 1; fi; }
expect default "replicas: 2"
expect default "/app/spin.toml"
expect default 'GANTRY_ADMIN_READ_ONLY'
refuse default "kind: ScaledObject"
expect configmaps "/srv/app/spin.toml"
expect configmaps "--watch"
expect configmaps "name: gantry-app-robot"
expect configmaps "upstream_url=http://upstream.example:8080"
expect keda-prometheus "type: prometheus"
expect keda-prometheus "kind: ServiceMonitor"
refuse keda-prometheus "replicas:"
expect keda-http "kind: InterceptorRoute"
expect keda-http "type: external-push"
expect keda-http "minReplicaCount: 0"
expect keda-http "keda-add-ons-http-interceptor-proxy"
expect keda-http-legacy "kind: HTTPScaledObject"
expect rpi "privileged: true"
expect rpi "kubernetes.io/arch: arm64"
expect rpi "type: Recreate"
expect rpi "path: /dev/gpiomem"
expect admin "GANTRY_ADMIN_TOKEN"
expect admin "kind: Secret"
expect admin "OTEL_EXPORTER_OTLP_ENDPOINT"

# The app ConfigMaps, from the components built here.
KUBECTL=$tools/kubectl deploy/k3s/app-configmap.sh > "$out/app-configmaps.yaml"

python3 scripts/validate-manifests.py "$out"/*.yaml deploy/k3s/*.yaml \
    deploy/keda/*.yaml deploy/keda/http-add-on/*.yaml deploy/argocd/*.yaml

# The app folder the image and the ConfigMaps carry loads as it is.
deploy/stage-app.sh "$out/app"
target/release/gantry check -f "$out/app/spin.toml" --no-cache >/dev/null

# The load test runs against the real host serving that folder: a short
# headless locust run must make requests and see no failure.
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
target/release/gantry up -f "$out/app/spin.toml" --listen "127.0.0.1:$port" \
    --admin-listen 127.0.0.1:0 --no-cache >"$out/gantry.out" 2>"$out/gantry.err" &
gantry_pid=$!
trap 'kill $gantry_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "^Serving" "$out/gantry.out" && break
    sleep 0.2
done
locust -f deploy/loadtest/locustfile.py --host "http://127.0.0.1:$port" --headless \
    -u 20 -r 20 -t 5s --only-summary --csv "$out/locust" >"$out/locust.log" 2>&1
python3 - "$out/locust_stats.csv" <<'PY'
import csv, sys
rows = {r["Name"]: r for r in csv.DictReader(open(sys.argv[1]))}
total = rows["Aggregated"]
requests, failures = int(total["Request Count"]), int(total["Failure Count"])
print(f"locust: {requests} requests, {failures} failures, "
      f"{float(total['Requests/s']):.0f} req/s, p99 {total['99%']} ms")
assert requests > 0 and failures == 0, rows
for name in ["/alpha", "/beta?delay_ms=50", "/broken", "/robot/"]:
    assert int(rows[name]["Request Count"]) > 0, name
PY
kill -TERM $gantry_pid
wait $gantry_pid
trap - EXIT
echo "deploy: chart, manifests, app folder and load test check out"
