#!/usr/bin/env bash
# Checks everything in deploy/ that this machine can check without a cluster:
# - the Helm chart, linted and rendered every way it can be set up, and the
#   plain k3s, KEDA, Argo CD and collector manifests: each object against its
#   kind's schema, strictly (scripts/validate-manifests.py), every name an
#   object gives resolving in the same deployment (scripts/check-references.py),
#   the collector and Prometheus configurations against what they wire to;
# - what kubectl would send, within Kubernetes' size limits
#   (scripts/kubectl-dry-run.py);
# - the app folder the image and the ConfigMaps carry, loaded by `gantry check`;
# - three replicas behind haproxy, scraped by Prometheus, scaled by the
#   chart's own KEDA queries, one drained under load (scripts/replicas-test.py);
# - the load test against the real host.
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
# Every way the chart can be set up: app source x GPIO backend x KEDA mode x
# admin mutations. One board takes one pod, so rppal with KEDA must be refused.
renders=()
for source in image configMaps; do
  for backend in sim rppal; do
    for keda in off prometheus http http-legacy; do
      for mutations in false true; do
        name=$source-$backend-keda_$keda-mutations_$mutations
        set -- --set app.source=$source,gpio.backend=$backend,admin.mutations=$mutations
        [ $keda = off ] || set -- "$@" --set keda.enabled=true,keda.mode=$keda
        [ $keda = prometheus ] && set -- "$@" --set serviceMonitor.enabled=true
        if [ $backend = rppal ] && [ $keda != off ]; then
            if "$helm" template gantry deploy/helm/gantry "$@" >/dev/null 2>"$out/$name.err"; then
                echo "helm: $name rendered: GPIO with KEDA must be refused" >&2
                exit 1
            fi
            grep -q "one board takes one pod" "$out/$name.err"
            continue
        fi
        render "$name" "$@"
        renders+=("$out/helm-$name.yaml")
      done
    done
  done
done
echo "helm: ${#renders[@]} renders, GPIO with KEDA refused in each KEDA mode"
render configmaps --set app.source=configMaps --set-string app.variables.upstream_url=http://upstream.example:8080
render otel --set otel.endpoint=https://collector:4318
render redis-kv --set 'keyValue.redis.stores={default,cache}' --set keyValue.redis.url=redis://redis.data:6379 \
    --set keda.enabled=true,keda.mode=http
refuse_render() {
    local want=$1
    shift
    if "$helm" template gantry deploy/helm/gantry "$@" >/dev/null 2>"$out/bad.err"; then
        echo "helm: $* was accepted" >&2
        exit 1
    fi
    grep -q -- "$want" "$out/bad.err" || { echo "helm: $* refused without '$want':" >&2; cat "$out/bad.err" >&2; exit 1; }
}
refuse_render "gpio.backend must be sim or rppal" --set gpio.backend=gpiod
refuse_render "keda.minReplicas must be at least 1" --set keda.enabled=true,keda.mode=prometheus,serviceMonitor.enabled=true,keda.minReplicas=0
refuse_render "set serviceMonitor.enabled=true" --set keda.enabled=true,keda.mode=prometheus
refuse_render "set ingress.enabled=true" --set keda.enabled=true,keda.mode=http,ingress.enabled=false
refuse_render "keyValue.redis.stores needs keyValue.redis.url" --set 'keyValue.redis.stores={default}'
refuse_render "is not a Redis URL" --set 'keyValue.redis.stores={default}' --set keyValue.redis.url=redis.data:6379

# What each way of setting it up must render.
expect() { grep -q -- "$2" "$out/helm-$1.yaml" || { echo "helm-$1.yaml lacks: $2" >&2; exit 1; }; }
refuse() { if grep -q -- "$2" "$out/helm-$1.yaml"; then echo "helm-$1.yaml has: $2" >&2; exit 1; fi; }
d=image-sim-keda_off-mutations_false
expect $d "replicas: 2"
expect $d "/app/spin.toml"
expect $d 'GANTRY_ADMIN_READ_ONLY'
expect $d "kind: PodDisruptionBudget"
expect $d "topologySpreadConstraints"
expect $d "failureThreshold: 3"
refuse $d "kind: ScaledObject"
expect configmaps "/srv/app/spin.toml"
expect configmaps "--watch"
expect configmaps "name: gantry-app-robot"
expect configmaps "upstream_url=http://upstream.example:8080"
p=image-sim-keda_prometheus-mutations_false
expect $p "type: prometheus"
expect $p "kind: ServiceMonitor"
expect $p "release: kube-prometheus-stack"
expect $p "minReplicaCount: 1"
refuse $p "replicas:"
h=image-sim-keda_http-mutations_false
expect $h "kind: InterceptorRoute"
expect $h "type: external-push"
expect $h "minReplicaCount: 0"
expect $h "keda-add-ons-http-interceptor-proxy"
expect $h "kind: HelmChartConfig"
expect $h "allowExternalNameServices: true"
expect image-sim-keda_http-legacy-mutations_false "kind: HTTPScaledObject"
expect image-sim-keda_http-legacy-mutations_false "min: 0"
r=configMaps-rppal-keda_off-mutations_false
expect $r "privileged: true"
expect $r "kubernetes.io/arch: arm64"
expect $r "gantry.dev/gpio: rpi"
expect $r "type: Recreate"
expect $r "path: /dev/gpiomem0"
refuse $r "kind: PodDisruptionBudget"
m=image-sim-keda_off-mutations_true
expect $m "GANTRY_ADMIN_TOKEN"
expect $m "kind: Secret"
expect $m "helm.sh/resource-policy: keep"
expect otel "OTEL_EXPORTER_OTLP_ENDPOINT"
expect redis-kv "GANTRY_RUNTIME_CONFIG_FILE"
expect redis-kv "checksum/runtime-config"
expect redis-kv "secretName: gantry-runtime-config"
refuse $d "runtime-config"
# The runtime config the chart writes is one Gantry accepts.
python3 - "$out/helm-redis-kv.yaml" "$out/runtime-config.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("runtime-config"):
        open(sys.argv[2], "w").write(doc["stringData"]["runtime-config.toml"])
        break
else:
    sys.exit("helm-redis-kv.yaml has no runtime-config Secret")
PY
grep -q 'type = "redis"' "$out/runtime-config.toml"
target/release/gantry check -f spin.toml --runtime-config-file "$out/runtime-config.toml" >/dev/null

# The app ConfigMaps, from the components built here.
KUBECTL=$tools/kubectl deploy/k3s/app-configmap.sh > "$out/app-configmaps.yaml"

# Every object against its kind's schema, strictly.
python3 scripts/validate-manifests.py "${renders[@]}" "$out/helm-configmaps.yaml" \
    "$out/helm-otel.yaml" "$out/helm-redis-kv.yaml" "$out/app-configmaps.yaml" deploy/k3s/*.yaml \
    deploy/keda/*.yaml deploy/keda/http-add-on/*.yaml deploy/argocd/*.yaml \
    deploy/observability/otel-collector-*.yaml

# Every name an object gives resolves in the same deployment.
for f in "${renders[@]}"; do
    python3 scripts/check-references.py "$f" --external "$out/app-configmaps.yaml" >/dev/null \
        || python3 scripts/check-references.py "$f" --external "$out/app-configmaps.yaml"
done
echo "references: ${#renders[@]} renders ok"
k3s=(deploy/k3s/namespace.yaml deploy/k3s/deployment.yaml deploy/k3s/service.yaml
     deploy/k3s/servicemonitor.yaml deploy/k3s/pdb.yaml)
python3 scripts/check-references.py "${k3s[@]}" deploy/k3s/ingress.yaml \
    deploy/keda/scaledobject-prometheus.yaml --external "$out/app-configmaps.yaml"
python3 scripts/check-references.py "${k3s[@]}" deploy/keda/http-add-on/interceptorroute.yaml \
    deploy/keda/http-add-on/scaledobject.yaml deploy/keda/http-add-on/ingress.yaml \
    --external "$out/app-configmaps.yaml"
python3 scripts/check-references.py "${k3s[@]}" deploy/keda/http-add-on/httpscaledobject-legacy.yaml \
    deploy/keda/http-add-on/ingress.yaml --external "$out/app-configmaps.yaml"
python3 scripts/check-references.py deploy/k3s/namespace.yaml deploy/k3s/deployment-rpi.yaml \
    --external "$out/app-configmaps.yaml"
# Argo CD: the chart as application-helm.yaml renders it (KEDA http, admin
# mutations), and the plain manifests with KEDA, each with its Application.
render argocd --set keda.enabled=true,keda.mode=http,admin.mutations=true
python3 scripts/check-references.py "$out/helm-argocd.yaml" deploy/argocd/application-helm.yaml
python3 scripts/check-references.py "${k3s[@]}" deploy/k3s/ingress.yaml \
    deploy/keda/scaledobject-prometheus.yaml deploy/argocd/application.yaml \
    --external "$out/app-configmaps.yaml"
python3 scripts/check-collector-config.py deploy/observability/otel-collector-*.yaml \
    --gantry deploy/k3s/deployment.yaml "$out/helm-otel.yaml"
python3 scripts/check-prometheus-config.py deploy/observability/prometheus.yml \
    deploy/k3s/service.yaml deploy/keda/scaledobject-prometheus.yaml

# What kubectl would send: the plain manifests client-side, the ConfigMaps
# server-side (as documented), each within Kubernetes' size limits.
python3 scripts/kubectl-dry-run.py "$tools/kubectl" deploy/k3s/*.yaml deploy/keda/*.yaml \
    deploy/keda/http-add-on/*.yaml deploy/observability/otel-collector-*.yaml \
    --server-side "$out/app-configmaps.yaml"

# The app folder the image and the ConfigMaps carry loads as it is.
deploy/stage-app.sh "$out/app"
# (The compile cache the tests filled: the staged components are the same bytes.)
target/release/gantry check -f "$out/app/spin.toml" --cache-dir target/test-compile-cache >/dev/null

# The load test runs against the real host serving that folder: a short
# headless locust run must make requests and see no failure.
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
target/release/gantry up -f "$out/app/spin.toml" --listen "127.0.0.1:$port" \
    --admin-listen 127.0.0.1:0 --cache-dir target/test-compile-cache >"$out/gantry.out" 2>"$out/gantry.err" &
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

python3 scripts/replicas-test.py target/release/gantry "$out/app/spin.toml" \
    "$out/helm-image-sim-keda_prometheus-mutations_false.yaml"
echo "deploy: chart, manifests, app folder and load test check out"
