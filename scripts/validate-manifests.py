#!/usr/bin/env python3
"""Validates Kubernetes manifests, every document of every file given.

- Core kinds: kubernetes-validate, strict (unknown fields are errors), against
  the Kubernetes version in $K8S_VERSION (default 1.33.0, a current k3s).
- KEDA ScaledObject, Prometheus Operator ServiceMonitor, Argo CD Application:
  the validators the @kubernetes-models packages generate from each project's
  own CRD schemas (node, under target/tools; versions pinned in
  scripts/setup.sh). Those schemas let unknown fields through, as the API
  server's pruning does, so each of these kinds is also held to the strict
  schema in deploy/schemas (unknown fields are errors there).
- The KEDA HTTP add-on kinds and k3s's HelmChartConfig: the strict JSON
  schemas in deploy/schemas (no package carries theirs).
A document of any other kind is an error, so nothing passes unchecked.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "deploy" / "schemas"
TOOLS = ROOT / "target" / "tools"
VERSION = os.environ.get("K8S_VERSION", "1.33.0")

KEPT = {
    ("helm.cattle.io/v1", "HelmChartConfig"): "helmchartconfig.helm.cattle.io-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh-v1alpha1.json",
    ("http.keda.sh/v1beta1", "InterceptorRoute"): "interceptorroute.http.keda.sh-v1beta1.json",
    ("http.keda.sh/v1alpha1", "HTTPScaledObject"): "httpscaledobject.http.keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("argoproj.io/v1alpha1", "Application"): "application.argoproj.io-v1alpha1.json",
}

MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    ("argoproj.io/v1alpha1", "Application"):
        "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application",
}

MODEL_CHECK = r"""
import { readFileSync } from "node:fs";
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const [where, module, kind, doc] of docs) {
  const Model = (await import(module))[kind];
  try { new Model(doc).validate(); }
  catch (e) { failed++; console.log(`${where}: ${e.message}`); }
}
process.exit(failed ? 1 : 0);
"""


def main(paths):
    errors, checked, scaled = [], 0, []
    for path in paths:
        text = Path(path).read_text()
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is None:
                continue
            where = f"{path} (document {i + 1}, {doc.get('kind')} {doc.get('metadata', {}).get('name')})"
            checked += 1
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in MODELS:
                scaled.append([where, MODELS[key], key[1], doc])
            if key in KEPT:
                schema = json.loads((SCHEMAS / KEPT[key]).read_text())
                for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                    errors.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            elif key not in MODELS:
                try:
                    kubernetes_validate.validate(doc, VERSION, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    errors.append(f"{where}: no schema for {key[0]} {key[1]}")
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    if scaled:
        # An ES module next to node_modules, so the package resolves.
        check = TOOLS / "check-models.mjs"
        check.write_text(MODEL_CHECK)
        r = subprocess.run(["node", str(check)], input=json.dumps(scaled), text=True,
                           capture_output=True, cwd=TOOLS)
        if r.returncode != 0:
            errors.extend(l for l in (r.stdout + r.stderr).splitlines() if l.strip())
    for e in errors:
        print(f"INVALID {e}", file=sys.stderr)
    print(f"validated {checked} objects ({len(scaled)} against CRD models) in {len(paths)} files: "
          f"{'ok' if not errors else f'{len(errors)} errors'}")
    return 1 if errors or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
