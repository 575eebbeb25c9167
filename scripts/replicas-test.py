#!/usr/bin/env python3
"""Three Gantry replicas behind a real load balancer, scraped by a real
Prometheus, scaled by the chart's own KEDA queries; one drained under load.

    scripts/replicas-test.py GANTRY SPIN_TOML RENDER.yaml

- Three `gantry up` processes serve the app on loopback ports, as three pods.
- haproxy (from apt) balances them, health-checking each one's /readyz as
  the kubelet's readiness probe and the endpoints controller would.
- Prometheus (from apt) scrapes each admin port every second, with the
  target labels a ServiceMonitor gives (namespace, service, pod, endpoint).
- The rendered ScaledObject's Prometheus triggers (RENDER.yaml, rendered
  with keda.mode=prometheus) are evaluated against that Prometheus at rest
  and under `hey` load, and turned into the replica count KEDA and the HPA
  would ask for (AverageValue: ceil(value / threshold), the largest trigger,
  within minReplicaCount..maxReplicaCount). Printed; under load it must be
  more than at rest.
- Under load again, one replica is taken out as Kubernetes does it: its
  endpoint leaves the load balancer (haproxy's `drain`), then SIGTERM after
  the preStop pause. No request may fail, and it must exit 0.
Every server runs on 127.0.0.1 with its own data directory, and is stopped.
"""
import json
import math
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import yaml

from loopback import free_port, get


def wait(what, pred, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Replica:
    def __init__(self, gantry, manifest, tmp, i):
        self.name = f"gantry-{i}"
        self.port, self.admin = free_port(), free_port()
        self.log = open(Path(tmp) / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(
            [gantry, "up", "-f", manifest, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin}", "--shutdown-timeout", "30s",
             "--cache-dir", str(Path(tmp) / "cache")],
            stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self):
        return get(f"http://127.0.0.1:{self.admin}/readyz", 1)[0] == 200


def haproxy_admin(sock, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(command.encode() + b"\n")
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    s.close()
    return out.decode()


def hey(url, seconds, concurrency):
    return subprocess.Popen(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-t", "20", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def hey_result(out):
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    errors = out.split("Error distribution:")[1].strip() if "Error distribution:" in out else ""
    return {int(k): int(v) for k, v in codes.items()}, errors


def triggers(render):
    so = next(d for d in yaml.safe_load_all(Path(render).read_text())
              if d and d.get("kind") == "ScaledObject")
    spec = so["spec"]
    trig = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    assert trig, "the render has no Prometheus trigger"
    return spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100), trig


def desired(prom, floor, ceiling, trig):
    """What KEDA (through the HPA) would ask for, and each trigger's value."""
    wanted, values = floor, {}
    for t in trig:
        md = t["metadata"]
        status, body = get(f"http://127.0.0.1:{prom}/api/v1/query?"
                           + urllib.parse.urlencode({"query": md["query"]}))
        assert status == 200, body
        result = json.loads(body)["data"]["result"]
        value = float(result[0]["value"][1]) if result else 0.0
        values[t["name"]] = value
        assert t.get("metricType", "AverageValue") == "AverageValue"
        wanted = max(wanted, math.ceil(value / float(md["threshold"])))
    return min(max(wanted, floor), ceiling), values


def main(gantry, manifest, render):
    floor, ceiling, trig = triggers(render)
    tmp = tempfile.mkdtemp(prefix="gantry-replicas-")
    procs = []
    try:
        replicas = [Replica(gantry, manifest, tmp, i) for i in range(1, 4)]
        procs += [r.proc for r in replicas]
        wait("three ready replicas", lambda: all(r.ready() for r in replicas))

        lb, sock = free_port(), str(Path(tmp) / "haproxy.sock")
        servers = "\n".join(f"  server {r.name} 127.0.0.1:{r.port} check port {r.admin}"
                            for r in replicas)
        (Path(tmp) / "haproxy.cfg").write_text(f"""
global
  stats socket {sock} mode 600 level admin
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
  retry-on conn-failure empty-response
frontend app
  bind 127.0.0.1:{lb}
  default_backend gantry
backend gantry
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1
{servers}
""")
        procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(Path(tmp) / "haproxy.cfg")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait("haproxy", lambda: get(f"http://127.0.0.1:{lb}/alpha")[0] == 200)

        prom = free_port()
        targets = [{"targets": [f"127.0.0.1:{r.admin}"],
                    "labels": {"namespace": "gantry", "service": "gantry", "endpoint": "admin",
                               "pod": r.name}} for r in replicas]
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gantry", "metrics_path": "/metrics",
                                "static_configs": targets}]}))
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={tmp}/prometheus.yml",
             f"--web.listen-address=127.0.0.1:{prom}", f"--storage.tsdb.path={tmp}/tsdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def scraped():
            s, body = get(f"http://127.0.0.1:{prom}/api/v1/query?query=up")
            return s == 200 and sum(1 for r in json.loads(body)["data"]["result"]
                                    if r["value"][1] == "1") == 3
        wait("Prometheus scraping three replicas", scraped)
        time.sleep(3)
        at_rest, values = desired(prom, floor, ceiling, trig)
        print(f"at rest: KEDA would ask for {at_rest} replicas ({values})")

        # Held requests: about 100 in flight, 500 per second.
        load = hey(f"http://127.0.0.1:{lb}/beta?delay_ms=200", 14, 100)
        time.sleep(10)
        loaded, values = desired(prom, floor, ceiling, trig)
        out = load.communicate()[0]
        codes, errors = hey_result(out)
        print(f"under hey -c 100 of /beta?delay_ms=200: KEDA would ask for {loaded} replicas "
              f"({', '.join(f'{k} {v:.1f}' for k, v in values.items())}); responses {codes}")
        assert loaded > at_rest, f"load did not raise the replica count ({at_rest} -> {loaded})"
        assert set(codes) == {200} and not errors, out

        # One replica leaves under load, as Kubernetes takes a pod away.
        load = hey(f"http://127.0.0.1:{lb}/beta?delay_ms=20", 8, 50)
        time.sleep(2)
        gone = replicas[2]
        assert "" == haproxy_admin(sock, f"set server gantry/{gone.name} state drain").strip()
        time.sleep(1)
        gone.proc.send_signal(signal.SIGTERM)
        code = gone.proc.wait(timeout=40)
        out = load.communicate()[0]
        codes, errors = hey_result(out)
        print(f"{gone.name} drained and stopped under hey -c 50: exit {code}; responses {codes}"
              + (f"; errors {errors}" if errors else ""))
        assert code == 0, f"{gone.name} exited {code}"
        assert set(codes) == {200} and not errors, out
        print("replicas: scaled by the rendered KEDA queries, drained one under load, no request lost")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main(*sys.argv[1:4])
