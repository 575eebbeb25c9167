#!/usr/bin/env python3
"""Validates Kubernetes manifests, every document of every file given.

- Core kinds: kubernetes-validate, strict (unknown fields are errors), against
  the Kubernetes version in $K8S_VERSION (default 1.33.0, a current k3s).
- KEDA ScaledObject: the @kubernetes-models/keda schema (node, under
  target/tools).
- The KEDA HTTP add-on kinds, ServiceMonitor and Argo CD Application: the
  JSON schemas kept in deploy/schemas.
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
    ("http.keda.sh/v1beta1", "InterceptorRoute"): "interceptorroute.http.keda.sh-v1beta1.json",
    ("http.keda.sh/v1alpha1", "HTTPScaledObject"): "httpscaledobject.http.keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("argoproj.io/v1alpha1", "Application"): "application.argoproj.io-v1alpha1.json",
}

KEDA_CHECK = r"""
import { readFileSync } from "node:fs";
const { ScaledObject } = await import("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const [where, doc] of docs) {
  try { new ScaledObject(doc).validate(); }
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
            if key == ("keda.sh/v1alpha1", "ScaledObject"):
                scaled.append([where, doc])
            elif key in KEPT:
                schema = json.loads((SCHEMAS / KEPT[key]).read_text())
                for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                    errors.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            else:
                try:
                    kubernetes_validate.validate(doc, VERSION, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    errors.append(f"{where}: no schema for {key[0]} {key[1]}")
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    if scaled:
        # An ES module next to node_modules, so the package resolves.
        check = TOOLS / "check-scaledobjects.mjs"
        check.write_text(KEDA_CHECK)
        r = subprocess.run(["node", str(check)], input=json.dumps(scaled), text=True,
                           capture_output=True, cwd=TOOLS)
        if r.returncode != 0:
            errors.extend(l for l in (r.stdout + r.stderr).splitlines() if l.strip())
    for e in errors:
        print(f"INVALID {e}", file=sys.stderr)
    print(f"validated {checked} objects ({len(scaled)} ScaledObjects) in {len(paths)} files: "
          f"{'ok' if not errors else f'{len(errors)} errors'}")
    return 1 if errors or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
