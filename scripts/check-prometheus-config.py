#!/usr/bin/env python3
"""Checks deploy/observability/prometheus.yml against what it scrapes.

    scripts/check-prometheus-config.py PROMETHEUS.yml K8S.yaml... 

- `promtool check config` accepts it (Prometheus' own check);
- every DNS name a `dns_sd_configs` job resolves is a headless Service of the
  Kubernetes files (`clusterIP: None`: one A record per ready pod), with the
  port the job scrapes;
- every label a ScaledObject's Prometheus query selects on (namespace,
  service) is one the job gives its targets, with the same value: otherwise
  KEDA's query reads nothing and the Deployment never scales.
"""
import re
import subprocess
import sys
from pathlib import Path

import yaml


def main(prom, files):
    errors = []
    r = subprocess.run(["promtool", "check", "config", prom], capture_output=True, text=True)
    if r.returncode != 0:
        errors.append(f"promtool check config {prom}: {r.stdout}{r.stderr}")
    cfg = yaml.safe_load(Path(prom).read_text())
    docs = [d for f in files for d in yaml.safe_load_all(Path(f).read_text()) if d]
    services = {(d["metadata"]["name"], d["metadata"].get("namespace")): d
                for d in docs if d["kind"] == "Service"}
    k8s_labels = []
    for job in cfg["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                parts = name.split(".")
                svc = services.get((parts[0], parts[1]))
                if svc is None:
                    errors.append(f"job {job['job_name']}: {name} is no Service of {files}")
                    continue
                if svc["spec"].get("clusterIP") != "None":
                    errors.append(f"job {job['job_name']}: Service {parts[0]} is not headless: "
                                  "its DNS name gives one address, not one per pod")
                if sd["port"] not in [p.get("targetPort", p["port"]) if isinstance(p.get("targetPort"), int)
                                      else p["port"] for p in svc["spec"]["ports"]]:
                    errors.append(f"job {job['job_name']}: port {sd['port']} is not a port of {parts[0]}")
                labels = {rc["target_label"]: rc["replacement"] for rc in job.get("relabel_configs", [])
                          if "replacement" in rc and not rc.get("source_labels")}
                k8s_labels.append((job["job_name"], labels))
    for d in docs:
        if d["kind"] != "ScaledObject":
            continue
        for t in d["spec"]["triggers"]:
            if t["type"] != "prometheus":
                continue
            wanted = dict(re.findall(r'(\w+)="([^"]*)"', t["metadata"]["query"]))
            if not any(all(labels.get(k) == v for k, v in wanted.items()) for _, labels in k8s_labels):
                errors.append(f"ScaledObject {d['metadata']['name']} trigger {t.get('name')}: "
                              f"its query selects {wanted}, which no job of {prom} gives its "
                              f"targets ({k8s_labels})")
    for e in errors:
        print(f"PROMETHEUS CONFIG {e}", file=sys.stderr)
    print(f"prometheus config: {'ok' if not errors else f'{len(errors)} problems'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
