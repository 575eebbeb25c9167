#!/usr/bin/env python3
"""Checks the OpenTelemetry Collector configurations in deploy/observability.

    scripts/check-collector-config.py COLLECTOR.yaml... --gantry GANTRY.yaml...

No OpenTelemetry Collector build can be installed on this machine, so its
configuration is checked here the way the collector reads it at start:
- every `config.yaml` of a ConfigMap against the collector's configuration
  layout (receivers, processors, exporters, extensions, service) and each
  component's settings, strictly: the component types these files use
  (otelcol-contrib 0.116) with the fields each one takes - an unknown field
  or type fails, as the collector refuses it;
- every pipeline and extension the service names is defined, every defined
  component is used (the collector warns), pipelines are of a known signal;
- the wiring: each receiver's port is a container port of the collector's
  workload; an exporter's `*.svc.cluster.local:PORT` names a Service of the
  files with that port; the DaemonSet's Service reaches its pods; and every
  OTEL_EXPORTER_OTLP_ENDPOINT of the Gantry manifests (--gantry) reaches a
  collector Service port that a receiver listens on.
"""
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import yaml

S, I, B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}


def obj(props, required=()):
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": list(required)}


TLS = obj({"insecure": B, "insecure_skip_verify": B, "ca_file": S, "cert_file": S, "key_file": S,
           "server_name_override": S})
QUEUE = obj({"enabled": B, "queue_size": I, "num_consumers": I})
RETRY = obj({"enabled": B, "initial_interval": S, "max_interval": S, "max_elapsed_time": S})
COMPONENTS = {
    "receivers": {
        "otlp": obj({"protocols": obj({"grpc": obj({"endpoint": S}), "http": obj({"endpoint": S})})}),
    },
    "processors": {
        "memory_limiter": obj({"check_interval": S, "limit_percentage": I, "spike_limit_percentage": I,
                               "limit_mib": I, "spike_limit_mib": I}, ["check_interval"]),
        "batch": obj({"send_batch_size": I, "send_batch_max_size": I, "timeout": S}),
        "k8sattributes": obj({
            "auth_type": S, "passthrough": B,
            "filter": obj({"node_from_env_var": S, "namespace": S}),
            "extract": obj({"metadata": {"type": "array", "items": S}}),
            "pod_association": {"type": "array"}}),
        "resourcedetection": obj({"detectors": {"type": "array", "items": {
            "enum": ["env", "system", "docker", "k8snode", "gcp", "ec2", "eks", "azure", "aks"]}},
            "timeout": S, "override": B}),
        "tail_sampling": obj({"decision_wait": S, "num_traces": I, "expected_new_traces_per_sec": I,
                              "policies": {"type": "array", "items": obj({
                                  "name": S,
                                  "type": {"enum": ["always_sample", "latency", "status_code",
                                                    "probabilistic", "string_attribute",
                                                    "numeric_attribute", "rate_limiting"]},
                                  "status_code": obj({"status_codes": {"type": "array", "items": {
                                      "enum": ["OK", "ERROR", "UNSET"]}}}),
                                  "latency": obj({"threshold_ms": I, "upper_threshold_ms": I}),
                                  "probabilistic": obj({"sampling_percentage": {"type": "number"},
                                                        "hash_salt": S}),
                              }, ["name", "type"])}}),
    },
    "exporters": {
        "otlp": obj({"endpoint": S, "tls": TLS, "sending_queue": QUEUE, "retry_on_failure": RETRY,
                     "compression": S, "timeout": S}, ["endpoint"]),
        "otlphttp": obj({"endpoint": S, "tls": TLS, "sending_queue": QUEUE,
                         "retry_on_failure": RETRY, "compression": S, "timeout": S}, ["endpoint"]),
        "prometheus": obj({"endpoint": S, "enable_open_metrics": B, "namespace": S,
                           "send_timestamps": B, "resource_to_telemetry_conversion":
                               obj({"enabled": B})}, ["endpoint"]),
        "debug": obj({"verbosity": {"enum": ["basic", "normal", "detailed"]}}),
    },
    "extensions": {
        "health_check": obj({"endpoint": S, "path": S}),
    },
}
SECTIONS = list(COMPONENTS)
LAYOUT = obj({
    **{s: {"type": "object"} for s in SECTIONS},
    "connectors": {"type": "object"},
    "service": obj({
        "extensions": {"type": "array", "items": S},
        "telemetry": {"type": "object"},
        "pipelines": {"type": "object", "minProperties": 1, "additionalProperties": obj({
            "receivers": {"type": "array", "items": S, "minItems": 1},
            "processors": {"type": "array", "items": S},
            "exporters": {"type": "array", "items": S, "minItems": 1}}, ["receivers", "exporters"])},
    }, ["pipelines"]),
}, ["receivers", "exporters", "service"])


def check_config(where, cfg, errors):
    for e in jsonschema.Draft202012Validator(LAYOUT).iter_errors(cfg):
        errors.append(f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    if errors:
        return
    for section in SECTIONS:
        for cid, settings in (cfg.get(section) or {}).items():
            kind = cid.split("/")[0]
            schema = COMPONENTS[section].get(kind)
            if schema is None:
                errors.append(f"{where}: {section}.{cid}: no {section[:-1]} of type {kind!r}")
                continue
            for e in jsonschema.Draft202012Validator(schema).iter_errors(settings or {}):
                errors.append(f"{where}: {section}.{cid}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    used = {s: set() for s in SECTIONS}
    service = cfg["service"]
    for ext in service.get("extensions", []):
        used["extensions"].add(ext)
        if ext not in (cfg.get("extensions") or {}):
            errors.append(f"{where}: service.extensions names {ext!r}, which is not defined")
    for name, p in service["pipelines"].items():
        if name.split("/")[0] not in ("traces", "metrics", "logs"):
            errors.append(f"{where}: pipeline {name!r} is of no signal (traces, metrics, logs)")
        for section in ("receivers", "processors", "exporters"):
            for c in p.get(section, []):
                used[section].add(c)
                if c not in (cfg.get(section) or {}):
                    errors.append(f"{where}: pipeline {name} names {section[:-1]} {c!r}, which is not defined")
    for section in SECTIONS:
        for c in (cfg.get(section) or {}):
            if c not in used[section]:
                errors.append(f"{where}: {section[:-1]} {c!r} is defined but in no pipeline")


def main(argv):
    split = argv.index("--gantry") if "--gantry" in argv else len(argv)
    files, gantry = argv[:split], argv[split + 1:]
    docs = [(f, d) for f in files for d in yaml.safe_load_all(Path(f).read_text()) if d]
    errors, listening = [], {}
    services = {(d["metadata"]["name"], d["metadata"].get("namespace")): d
                for _, d in docs if d["kind"] == "Service"}
    workloads = [d for _, d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    for f, d in docs:
        if d["kind"] != "ConfigMap":
            continue
        where = f"{f}: ConfigMap {d['metadata']['name']}"
        cfg = yaml.safe_load(d["data"]["config.yaml"])
        check_config(where, cfg, errors)
        # The workload that mounts this ConfigMap, and its container ports.
        owner = next((w for w in workloads if any(
            v.get("configMap", {}).get("name") == d["metadata"]["name"]
            for v in w["spec"]["template"]["spec"].get("volumes", []))), None)
        if owner is None:
            errors.append(f"{where}: no workload mounts it")
            continue
        ports = {p["containerPort"]: p.get("name") for c in owner["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for proto in ("grpc", "http"):
            ep = (((cfg.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get(proto)
            if ep:
                port = int(ep["endpoint"].rsplit(":", 1)[1])
                if port not in ports:
                    errors.append(f"{where}: the otlp {proto} receiver listens on {port}, "
                                  f"which {owner['metadata']['name']} does not expose")
                listening[(owner["metadata"]["name"], port)] = ports.get(port)
        for cid, settings in (cfg.get("exporters") or {}).items():
            ep = (settings or {}).get("endpoint", "")
            host = urlparse(ep).hostname if "://" in ep else ep.rsplit(":", 1)[0]
            if host and host.endswith(".svc.cluster.local"):
                name, ns = host.split(".")[:2]
                port = urlparse(ep).port if "://" in ep else int(ep.rsplit(":", 1)[1])
                svc = services.get((name, ns))
                if svc is None and ns == "observability" and name in ("jaeger-collector", "loki"):
                    continue  # backends installed by their own charts
                if svc is None or port not in [p["port"] for p in svc["spec"]["ports"]]:
                    errors.append(f"{where}: exporter {cid} sends to {name}.{ns}:{port}, "
                                  "which no Service of these files serves")
    # Each collector Service reaches a collector's pods.
    for (name, ns), svc in services.items():
        sel = svc["spec"].get("selector", {})
        pods = [w for w in workloads if all(
            w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        if not pods:
            errors.append(f"Service {ns}/{name}: its selector picks no collector")
    # Gantry's exports reach a receiver.
    for f in gantry:
        for d in yaml.safe_load_all(Path(f).read_text()):
            if not d or d.get("kind") != "Deployment":
                continue
            for c in d["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] != "OTEL_EXPORTER_OTLP_ENDPOINT":
                        continue
                    u = urlparse(e["value"])
                    parts = u.hostname.split(".")
                    if len(parts) < 3 or parts[2] != "svc":
                        continue  # an address outside these files (a value the user gave)
                    svc = services.get((parts[0], parts[1]))
                    if svc is None:
                        errors.append(f"{f}: Gantry exports to {u.hostname}, no collector Service")
                        continue
                    sp = next((p for p in svc["spec"]["ports"] if p["port"] == u.port), None)
                    if sp is None:
                        errors.append(f"{f}: Gantry exports to port {u.port} of {parts[0]}, which it lacks")
                        continue
                    owners = [w["metadata"]["name"] for w in workloads if all(
                        w["spec"]["template"]["metadata"]["labels"].get(k) == v
                        for k, v in svc["spec"]["selector"].items())]
                    target = sp.get("targetPort", sp["port"])
                    if not any((o, target) in listening or listening.get((o, sp["port"])) == target
                               or any(k[0] == o and v == target for k, v in listening.items())
                               for o in owners):
                        errors.append(f"{f}: Gantry's {e['value']} reaches no OTLP receiver")
    for e in errors:
        print(f"COLLECTOR CONFIG {e}", file=sys.stderr)
    print(f"collector configs: {sum(1 for _, d in docs if d['kind'] == 'ConfigMap')} checked, "
          f"{'ok' if not errors else f'{len(errors)} problems'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
