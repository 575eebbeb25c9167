#!/usr/bin/env python3
"""Checks that the Kubernetes objects of one deployment name each other right.

    scripts/check-references.py FILE.yaml... [--external FILE.yaml...]

Every object in the FILEs is one deployment (one chart render, or the plain
manifests together). Objects in the --external files (the app ConfigMaps,
which a pipeline applies beside them) may be named but are not checked.

What is checked, in the namespace each object lives in:
- a Service's selector picks a workload's pods; its target ports are named
  ports of those pods' containers;
- an Ingress backend is a Service of the render, by a port it has; an
  ExternalName Service in that role names the HTTP add-on's interceptor;
- the Ingress hosts and the HTTP add-on's hosts are the same names;
- an InterceptorRoute, HTTPScaledObject or ScaledObject targets a Deployment
  and a Service (and port) of the render; an external-push trigger names an
  InterceptorRoute of the render; the floor is zero where the mode scales
  to zero (the interceptor is in the path);
- a Prometheus trigger selects `namespace` and `service` labels that a
  ServiceMonitor of the render gives its targets (the Service it selects),
  and that ServiceMonitor carries the label kube-prometheus-stack selects
  (`release: <name>`, the name taken from the trigger's serverAddress);
- every Secret, ConfigMap and port a pod template names exists;
- a PodDisruptionBudget or topology spread selects the workload's pods;
- an Argo CD Application that ignores differences also respects them on sync
  (`RespectIgnoreDifferences=true`: otherwise every sync writes them back,
  fighting KEDA over the replica count), ignores the replica count of every
  Deployment an autoscaler owns, and names only objects the render has.
"""
import re
import sys
from pathlib import Path

import yaml


def load(paths):
    out = []
    for p in paths:
        for doc in yaml.safe_load_all(Path(p).read_text()):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", None)
                out.append((p, doc))
    return out


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Check:
    def __init__(self, docs, external, default_ns):
        self.errors = []
        self.default_ns = default_ns
        self.docs = docs
        self.all = docs + external

    def ns(self, doc):
        return doc["metadata"].get("namespace") or self.default_ns

    def find(self, kind, name, ns, pool=None):
        for _, d in pool if pool is not None else self.all:
            if d.get("kind") == kind and d["metadata"].get("name") == name and self.ns(d) == ns:
                return d
        return None

    def of(self, kind):
        return [(p, d) for p, d in self.docs if d.get("kind") == kind]

    def err(self, where, doc, msg):
        self.errors.append(f"{where}: {doc['kind']} {doc['metadata'].get('name')}: {msg}")

    def workloads(self, ns):
        for _, d in self.docs:
            if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet") and self.ns(d) == ns:
                yield d

    def pods_selected(self, selector, ns):
        return [w for w in self.workloads(ns)
                if matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]

    def run(self):
        for p, svc in self.of("Service"):
            self.service(p, svc)
        for p, ing in self.of("Ingress"):
            self.ingress(p, ing)
        for kind in ("Deployment", "DaemonSet", "StatefulSet"):
            for p, w in self.of(kind):
                self.pod_template(p, w)
        for p, pdb in self.of("PodDisruptionBudget"):
            if not self.pods_selected(pdb["spec"]["selector"]["matchLabels"], self.ns(pdb)):
                self.err(p, pdb, "its selector picks no pods of this deployment")
        for p, route in self.of("InterceptorRoute"):
            t = route["spec"]["target"]
            self.service_port(p, route, t["service"], t["port"], self.ns(route))
            self.hosts(p, route, [h for r in route["spec"]["rules"] for h in r.get("hosts", [])])
        for p, hso in self.of("HTTPScaledObject"):
            ref = hso["spec"]["scaleTargetRef"]
            self.deployment(p, hso, ref["name"], self.ns(hso))
            self.service_port(p, hso, ref["service"], ref["port"], self.ns(hso))
            self.hosts(p, hso, hso["spec"].get("hosts", []))
            if hso["spec"].get("replicas", {}).get("min", 1) != 0:
                self.err(p, hso, "the HTTP add-on holds requests at zero, yet replicas.min is not 0")
        for p, so in self.of("ScaledObject"):
            self.scaled_object(p, so)
        for p, app in self.of("Application"):
            self.argo(p, app)
        return self.errors

    def argo(self, p, app):
        spec = app["spec"]
        ignored = spec.get("ignoreDifferences", [])
        options = spec.get("syncPolicy", {}).get("syncOptions", [])
        if ignored and "RespectIgnoreDifferences=true" not in options:
            self.err(p, app, "ignores differences but syncs them back (no RespectIgnoreDifferences=true)")
        for ig in ignored:
            name = ig.get("name")
            if name and not any(d.get("kind") == ig["kind"] and d["metadata"].get("name") == name
                                for _, d in self.docs):
                self.err(p, app, f"ignores {ig['kind']} {name}, which the render lacks")
        scaled = {so["spec"]["scaleTargetRef"]["name"] for _, so in self.of("ScaledObject")}
        scaled |= {h["spec"]["scaleTargetRef"]["name"] for _, h in self.of("HTTPScaledObject")}
        if scaled and not any(ig["kind"] == "Deployment" and "/spec/replicas" in ig.get("jsonPointers", [])
                              for ig in ignored):
            self.err(p, app, f"KEDA scales {sorted(scaled)}, yet the replica count is not ignored")

    def service(self, p, svc):
        spec = svc["spec"]
        if spec.get("type") == "ExternalName":
            if "interceptor" not in spec.get("externalName", ""):
                self.err(p, svc, f"ExternalName {spec.get('externalName')} is not the HTTP add-on's interceptor")
            return
        pods = self.pods_selected(spec.get("selector", {}), self.ns(svc))
        if not pods:
            self.err(p, svc, f"its selector {spec.get('selector')} picks no pods of this deployment")
            return
        for port in spec.get("ports", []):
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                names = {cp.get("name") for w in pods for c in w["spec"]["template"]["spec"]["containers"]
                         for cp in c.get("ports", [])}
                if target not in names:
                    self.err(p, svc, f"target port {target!r} is no container port of its pods ({sorted(n for n in names if n)})")

    def service_port(self, p, doc, name, port, ns):
        svc = self.find("Service", name, ns)
        if svc is None:
            self.err(p, doc, f"names Service {ns}/{name}, which this deployment lacks")
            return None
        ports = svc["spec"].get("ports", [])
        if isinstance(port, str):
            ok = any(sp.get("name") == port for sp in ports)
        else:
            ok = any(sp.get("port") == port for sp in ports)
        if not ok:
            self.err(p, doc, f"names port {port!r} of Service {name}, which has {[(sp.get('name'), sp.get('port')) for sp in ports]}")
        return svc

    def ingress(self, p, ing):
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                b = path["backend"]["service"]
                port = b["port"].get("name", b["port"].get("number"))
                self.service_port(p, ing, b["name"], port, self.ns(ing))

    def ingress_hosts(self, ns):
        return {r.get("host") for _, i in self.of("Ingress") if self.ns(i) == ns
                for r in i["spec"].get("rules", [])}

    def hosts(self, p, doc, hosts):
        ingress = self.ingress_hosts(self.ns(doc))
        if not hosts:
            self.err(p, doc, "routes no host")
        for h in hosts:
            if h not in ingress:
                self.err(p, doc, f"routes host {h!r}, which no Ingress of this deployment serves ({sorted(x for x in ingress if x)})")
        through = [i for _, i in self.of("Ingress") if self.ns(i) == self.ns(doc)
                   and any(self.is_interceptor(pth["backend"]["service"]["name"], self.ns(i))
                           for r in i["spec"].get("rules", []) for pth in r.get("http", {}).get("paths", []))]
        if not through:
            self.err(p, doc, "no Ingress sends its hosts through the interceptor: at zero replicas nothing would wake the app")

    def is_interceptor(self, name, ns):
        svc = self.find("Service", name, ns)
        return svc is not None and svc["spec"].get("type") == "ExternalName" \
            and "interceptor" in svc["spec"].get("externalName", "")

    def deployment(self, p, doc, name, ns):
        if self.find("Deployment", name, ns, self.docs) is None:
            self.err(p, doc, f"scales Deployment {ns}/{name}, which this deployment lacks")

    def scaled_object(self, p, so):
        ns = self.ns(so)
        self.deployment(p, so, so["spec"]["scaleTargetRef"]["name"], ns)
        floor = so["spec"].get("minReplicaCount", 0)
        for t in so["spec"]["triggers"]:
            md = t.get("metadata", {})
            if t["type"] == "external-push":
                route = md.get("interceptorRoute")
                if self.find("InterceptorRoute", route, ns, self.docs) is None:
                    self.err(p, so, f"its trigger names InterceptorRoute {route!r}, which this deployment lacks")
                if floor != 0:
                    self.err(p, so, "the HTTP add-on can wake the app from zero, yet minReplicaCount is not 0")
            elif t["type"] == "prometheus":
                if floor < 1:
                    self.err(p, so, "a Prometheus trigger cannot wake an app at zero (no pod, no metric), yet minReplicaCount is 0")
                self.prometheus_query(p, so, md)

    def prometheus_query(self, p, so, md):
        q = md.get("query", "")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', q))
        if "namespace" not in labels or "service" not in labels:
            self.err(p, so, f"query {q!r} does not select namespace and service")
            return
        svc = self.find("Service", labels["service"], labels["namespace"], self.docs)
        if svc is None:
            self.err(p, so, f"query selects service {labels['service']!r} in {labels['namespace']!r}, no Service of this deployment")
            return
        release = re.match(r"https?://([a-z0-9-]+?)-prometheus\.", md.get("serverAddress", ""))
        monitors = [m for _, m in self.of("ServiceMonitor")
                    if matches(m["spec"]["selector"].get("matchLabels", {}), svc["metadata"].get("labels", {}))
                    and labels["namespace"] in m["spec"].get("namespaceSelector", {}).get("matchNames", [labels["namespace"]])]
        if not monitors:
            self.err(p, so, f"no ServiceMonitor of this deployment scrapes Service {labels['service']}: the query would read nothing")
            return
        for m in monitors:
            want = release.group(1) if release else None
            if want and m["metadata"].get("labels", {}).get("release") != want:
                self.err(p, m, f"lacks the label release: {want}, which {want}'s Prometheus selects ServiceMonitors by")
            svc_ports = {sp.get("name") for sp in svc["spec"].get("ports", [])}
            for e in m["spec"]["endpoints"]:
                if e.get("port") not in svc_ports:
                    self.err(p, m, f"scrapes port {e.get('port')!r}, which Service {svc['metadata']['name']} lacks")
        others = [s for _, s in self.of("Service") if s is not svc and any(
            matches(m["spec"]["selector"].get("matchLabels", {}), s["metadata"].get("labels", {})) for m in monitors)]
        for s in others:
            self.err(p, s, "is selected by the ServiceMonitor too: every pod would be scraped twice")

    def pod_template(self, p, w):
        ns = self.ns(w)
        tpl = w["spec"]["template"]
        labels = tpl["metadata"].get("labels", {})
        spec = tpl["spec"]
        if not matches(w["spec"]["selector"]["matchLabels"], labels):
            self.err(p, w, "its selector does not match its own pod labels")
        ports = {cp.get("name") for c in spec["containers"] for cp in c.get("ports", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    self.key_ref(p, w, "Secret", ref["secretKeyRef"], ns)
                if "configMapKeyRef" in ref:
                    self.key_ref(p, w, "ConfigMap", ref["configMapKeyRef"], ns)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    self.err(p, w, f"{probe} uses port {port!r}, which no container names")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    self.err(p, w, f"mounts volume {m['name']!r}, which the pod lacks")
        for v in volumes.values():
            sources = [v] + [s for s in v.get("projected", {}).get("sources", [])]
            for s in sources:
                if "configMap" in s and self.find("ConfigMap", s["configMap"]["name"], ns) is None:
                    self.err(p, w, f"mounts ConfigMap {s['configMap']['name']!r}, which neither this deployment nor the app ConfigMaps hold")
                if "secret" in s and self.find("Secret", s["secret"]["secretName"], ns) is None:
                    self.err(p, w, f"mounts Secret {s['secret']['secretName']!r}, which this deployment lacks")
        for t in spec.get("topologySpreadConstraints", []):
            if not matches(t["labelSelector"]["matchLabels"], labels):
                self.err(p, w, "its topology spread selects other pods than its own")

    def key_ref(self, p, w, kind, ref, ns):
        obj = self.find(kind, ref["name"], ns)
        if obj is None:
            if not ref.get("optional"):
                self.err(p, w, f"reads {kind} {ns}/{ref['name']}, which this deployment lacks")
            return
        if ref["key"] not in (obj.get("data") or {}) and ref["key"] not in (obj.get("stringData") or {}):
            self.err(p, w, f"reads key {ref['key']!r} of {kind} {ref['name']}, which it lacks")


def main(argv):
    files, external, into = [], [], None
    for a in argv:
        if a == "--external":
            into = external
            continue
        (into if into is not None else files).append(a)
    docs = load(files)
    errors = Check(docs, load(external), default_ns="gantry").run()
    for e in errors:
        print(f"BROKEN REFERENCE {e}", file=sys.stderr)
    print(f"references: {len(docs)} objects in {len(files)} files: "
          f"{'ok' if not errors else f'{len(errors)} broken'}")
    return 1 if errors or not docs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
