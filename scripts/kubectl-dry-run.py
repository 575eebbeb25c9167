#!/usr/bin/env python3
"""Runs `kubectl apply --dry-run=client` on manifests, offline, and checks
that what kubectl would send fits Kubernetes' size limits.

    scripts/kubectl-dry-run.py KUBECTL FILE.yaml... [--server-side FILE.yaml...]

kubectl needs an API server even for a client-side dry run: it asks the
server which resources exist (discovery) and whether each object is there
already. A small stand-in on 127.0.0.1 answers just that - the API groups and
resources of the kinds in the files, and "not found" for every object - so
kubectl takes the create path and prints the object exactly as `apply` would
send it, with its `kubectl.kubernetes.io/last-applied-configuration`
annotation. Schema validation is left to scripts/validate-manifests.py
(`--validate=false` here: the stand-in serves no OpenAPI document).

Checked for every object:
- all its annotations, the last-applied copy included, fit in 256 KiB (what
  the API server accepts; past it, client-side apply fails);
- a ConfigMap's data and binaryData fit in 1 MiB.
Files after --server-side are the ones the documentation says to apply with
`kubectl apply --server-side` (it keeps no last-applied copy, and kubectl
refuses a client dry run of it): kubectl's `create --dry-run=client` renders
them and only the 1 MiB bound is checked, and the report says how large the
annotation of a client-side apply would have been.
"""
import base64
import json
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ANNOTATIONS_MAX = 256 * 1024
CONFIGMAP_MAX = 1024 * 1024
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
PLURAL_EXCEPTIONS = {"Ingress": "ingresses", "NetworkPolicy": "networkpolicies",
                     "PodDisruptionBudget": "poddisruptionbudgets"}


def plural(kind):
    return PLURAL_EXCEPTIONS.get(kind, kind.lower() + "s")


def resources(docs):
    """{group/version: [(kind, plural, namespaced)]} for the kinds in docs."""
    out = {}
    for d in docs:
        gv = d["apiVersion"]
        entry = (d["kind"], plural(d["kind"]), d["kind"] not in CLUSTER_SCOPED)
        out.setdefault(gv, set()).add(entry)
    return out


def handler_for(by_gv):
    groups = {}
    for gv in by_gv:
        if "/" in gv:
            g, v = gv.split("/")
            groups.setdefault(g, []).append(v)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def resource_list(self, gv):
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": [{"name": p, "singularName": k.lower(), "namespaced": ns,
                                   "kind": k, "verbs": ["create", "get", "list", "patch",
                                                        "update", "delete", "watch"]}
                                  for k, p, ns in sorted(by_gv.get(gv, []))]}

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/api":
                return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": []})
            if path == "/apis":
                return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                     "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                    for g, vs in sorted(groups.items())]})
            if path == "/api/v1":
                return self.reply(200, self.resource_list("v1"))
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "apis":
                return self.reply(200, self.resource_list(f"{parts[1]}/{parts[2]}"))
            # Any object: not there yet, so apply creates it.
            return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404,
                                    "message": "not found"})

    return Handler


def main(kubectl, argv):
    server_side = set(argv[argv.index("--server-side") + 1:]) if "--server-side" in argv else set()
    paths = [a for a in argv if a != "--server-side"]
    docs = [d for p in paths for d in yaml.safe_load_all(Path(p).read_text()) if d]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(resources(docs)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    errors, applied = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "kubeconfig"
        config.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "dry",
            "clusters": [{"name": "dry", "cluster": {
                "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
            "contexts": [{"name": "dry", "context": {"cluster": "dry", "namespace": "gantry"}}],
            "users": [{"name": "dry", "user": {}}]}))
        for p in paths:
            verb = ["create", "--save-config"] if p in server_side else ["apply"]
            r = subprocess.run([kubectl, "--kubeconfig", str(config), *verb, "--dry-run=client",
                                "--validate=false", "-o", "json", "-f", p],
                               capture_output=True, text=True)
            if r.returncode != 0:
                errors.append(f"{p}: kubectl apply --dry-run=client failed: {r.stderr.strip()}")
                continue
            items, text, at = [], r.stdout, 0
            decoder = json.JSONDecoder()
            while at < len(text.rstrip()):
                while text[at].isspace():
                    at += 1
                out, at = decoder.raw_decode(text, at)
                items.extend(out["items"] if out.get("kind") == "List" else [out])
            for obj in items:
                applied += 1
                name = f"{p}: {obj['kind']} {obj['metadata']['name']}"
                notes = obj["metadata"].get("annotations", {})
                last = notes.get("kubectl.kubernetes.io/last-applied-configuration")
                if last is None:
                    errors.append(f"{name}: kubectl wrote no last-applied annotation")
                    continue
                size = sum(len(k) + len(v) for k, v in notes.items())
                if p in server_side:
                    note = f"server-side apply (a client-side one would need {size} bytes of annotations)"
                elif size > ANNOTATIONS_MAX:
                    errors.append(f"{name}: its annotations are {size} bytes once applied "
                                  f"(last-applied copy {len(last)}), over the {ANNOTATIONS_MAX} "
                                  "the API server takes")
                    note = f"annotations {size} bytes"
                else:
                    note = f"annotations {size} bytes"
                if obj["kind"] == "ConfigMap":
                    data = sum(len(k) + len(v) for k, v in (obj.get("data") or {}).items())
                    # Stored and bounded as bytes, not as the base64 of JSON.
                    data += sum(len(k) + len(base64.b64decode(v))
                                for k, v in (obj.get("binaryData") or {}).items())
                    if data > CONFIGMAP_MAX:
                        errors.append(f"{name}: {data} bytes of data, over a ConfigMap's 1 MiB")
                    print(f"  {name}: {data} bytes of data, {note}")
    server.shutdown()
    for e in errors:
        print(f"TOO BIG OR REFUSED {e}", file=sys.stderr)
    print(f"kubectl --dry-run=client: {applied} objects from {len(paths)} files: "
          f"{'ok' if not errors else f'{len(errors)} problems'}")
    return 1 if errors or applied == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
