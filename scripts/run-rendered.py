#!/usr/bin/env python3
"""Runs the container of a rendered Deployment the way the kubelet would, under
podman, from the locally built image, and checks it serves, hot-swaps and
drains.

    scripts/run-rendered.py RENDER.yaml IMAGE CONFIGMAPS.yaml

Taken from the render as they are: the container's args; its env (fieldRef
values filled in as the kubelet would, secretKeyRef read from the render's
Secret, `$(VAR)` references expanded); the pod's user and group and the
container's read-only root, no-new-privileges and dropped capabilities; the
memory limit; the emptyDir (a tmpfs of its sizeLimit); and the projected app
ConfigMaps, laid out as the kubelet's atomic writer does: a timestamped
folder, a `..data` symlink to it, and one symlink per file through `..data`.
The probes are run against the ports they name.

The one change: the pod's network is the host's here (podman runs with
`--network host`), so GANTRY_LISTEN and GANTRY_ADMIN_LISTEN move from
0.0.0.0:3000/9464 to free ports on 127.0.0.1.

Then, as in a cluster: the first request; a new version of the ConfigMaps
written by a `..data` swap (alpha.wasm replaced by another component), which
--watch must pick up without a restart; and SIGTERM (`podman stop`), after
which the container must drain and exit 0.
"""
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loopback import free_port, get

PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


class Layout:
    """A ConfigMap volume as the kubelet writes it, and updates it."""

    def __init__(self, root, files):
        self.root = Path(root)
        self.version = 0
        self.write(files)

    def write(self, files):
        self.version += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + str(self.version)
        new = self.root / stamp
        new.mkdir()
        for name, data in files.items():
            (new / name).write_bytes(data)
            os.chmod(new / name, 0o644)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.rename(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def configmap_files(docs, names):
    files = {}
    for d in docs:
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"] in names:
            for k, v in (d.get("data") or {}).items():
                files[k] = v.encode()
            for k, v in (d.get("binaryData") or {}).items():
                files[k] = base64.b64decode(v)
    return files


def expand(value, env):
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(container, docs, pod_name):
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": "gantry",
                              "spec.nodeName": "node-1", "status.hostIP": "127.0.0.1",
                              "status.podIP": "127.0.0.1"}[field]
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            secret = next(d for d in docs if d.get("kind") == "Secret"
                          and d["metadata"]["name"] == r["name"])
            env[e["name"]] = base64.b64decode(secret["data"][r["key"]]).decode()
        else:
            raise SystemExit(f"env {e['name']}: {list(ref)} is not handled here")
    return env


def wait_probe(probe, ports, what, deadline_s):
    path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
    port = ports[port] if isinstance(port, str) else port
    end = time.time() + deadline_s
    while time.time() < end:
        status, _ = get(f"http://127.0.0.1:{port}{path}", timeout=probe.get("timeoutSeconds", 1))
        if status == 200:
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} never passed ({path} on port {port})")


def main(render, image, configmaps):
    docs = [d for d in yaml.safe_load_all(Path(render).read_text()) if d]
    app_docs = [d for d in yaml.safe_load_all(Path(configmaps).read_text()) if d]
    deploy = next(d for d in docs if d.get("kind") == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    name = f"gantry-rendered-{os.getpid()}"
    http_port, admin_port = free_port(), free_port()
    env = container_env(container, docs, pod_name=name)
    assert env["GANTRY_LISTEN"].endswith(":3000") and env["GANTRY_ADMIN_LISTEN"].endswith(":9464"), env
    env["GANTRY_LISTEN"] = f"127.0.0.1:{http_port}"
    env["GANTRY_ADMIN_LISTEN"] = f"127.0.0.1:{admin_port}"
    ports = {p["name"]: {3000: http_port, 9464: admin_port}[p["containerPort"]]
             for p in container["ports"]}

    args = [*PODMAN, "run", "-d", "--name", name, "--network", "host",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024"]
    user = f"{psc['runAsUser']}:{psc['runAsGroup']}"
    args += ["--user", user, "--group-add", str(psc.get("fsGroup", psc["runAsGroup"]))]
    if csc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        args += ["--memory", limit.replace("Mi", "m").replace("Gi", "g")]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]

    tmp = tempfile.mkdtemp(prefix="gantry-kubelet-")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    layout = None
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "emptyDir" in v:
            size = v["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m").replace("Gi", "g")
            args += ["--tmpfs", f"{m['mountPath']}:rw,size={size},mode=1777"]
        elif "projected" in v:
            names = [s["configMap"]["name"] for s in v["projected"]["sources"]]
            files = configmap_files(app_docs, names)
            root = Path(tmp) / m["name"]
            root.mkdir()
            layout = Layout(root, files)
            os.chmod(root, 0o755)
            args += ["-v", f"{root}:{m['mountPath']}:ro"]
        else:
            raise SystemExit(f"volume {m['name']}: {list(v)} is not handled here")
    args += [image, *container["args"]]
    if layout is None:
        raise SystemExit("the render mounts no app ConfigMaps: render it with app.source=configMaps")

    print("podman run, from the render:", " ".join(a if " " not in a else repr(a) for a in args[len(PODMAN):]))
    subprocess.run(["podman", "--storage-driver", "vfs", "rm", "-f", name], capture_output=True)
    started = time.time()
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0 and limit and "memory" in run.stderr.lower():
        # Some sandboxes give podman no memory controller; the limit is then
        # left out, and said.
        print(f"podman cannot set --memory here ({run.stderr.strip()}); running without the limit")
        i = args.index("--memory")
        del args[i:i + 2]
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True)
        run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"podman run failed: {run.stderr}")
    try:
        wait_probe(container["startupProbe"], ports, "startupProbe", 60)
        wait_probe(container["readinessProbe"], ports, "readinessProbe", 10)
        status, body = get(f"http://127.0.0.1:{http_port}/alpha")
        assert status == 200 and '"route":"alpha"' in body, (status, body)
        print(f"served /alpha {time.time() - started:.2f}s after start: {body[:80]}")
        inspect = json.loads(subprocess.run([*PODMAN, "inspect", name], capture_output=True,
                                            text=True, check=True).stdout)[0]
        assert inspect["Config"]["User"] == user, inspect["Config"]["User"]
        assert inspect["HostConfig"]["ReadonlyRootfs"], "root filesystem is writable"

        # A new version of the ConfigMaps, written as the kubelet does.
        files = configmap_files(app_docs, [s["configMap"]["name"] for s in
                                           volumes["app"]["projected"]["sources"]])
        files["alpha.wasm"] = files["beta.wasm"]
        layout.write(files)
        end = time.time() + 30
        while True:
            status, body = get(f"http://127.0.0.1:{http_port}/alpha?delay_ms=1")
            if status == 200 and '"route":"beta"' in body:
                break
            assert status == 200, (status, body)
            if time.time() > end:
                raise SystemExit(f"the ..data swap was not picked up: /alpha still answers {body}")
            time.sleep(0.2)
        _, comps = get(f"http://127.0.0.1:{admin_port}/components")
        alpha = next(c for c in json.loads(comps)["components"] if c["id"] == "alpha")
        assert alpha["swaps"] == 1, alpha
        print(f"..data swap: alpha swapped in place (swaps {alpha['swaps']}), no restart")

        stop = subprocess.run([*PODMAN, "stop", "-t", str(pod["terminationGracePeriodSeconds"]), name],
                              capture_output=True, text=True)
        assert stop.returncode == 0, stop.stderr
        code = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True, check=True).stdout.strip()
        logs = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True).stderr
        assert code == "0", f"exit code {code}; logs:\n{logs}"
        assert "draining in-flight requests" in logs, logs
        pool = re.search(r"pool_size=(\d+).*?max_instance_memory=(\d+).*?memory_budget=(\d+)", logs)
        assert pool, f"no pool figures in the log:\n{logs}"
        size, each, budget = (int(g) for g in pool.groups())
        print(f"pool: {size} instances of {each >> 20} MiB in a budget of {budget >> 20} MiB "
              f"(container limit {limit if '--memory' in args else 'not applied'})")
        assert size * each <= budget, "the pool does not fit in the memory budget"
        if "--memory" in args:
            units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
            bytes_ = int(limit[:-2]) * units[limit[-2:]]
            assert budget <= bytes_ * 3 // 4, f"the budget ignores the {limit} limit"
        print("rendered container: served, hot-swapped through ..data, drained on SIGTERM, exit 0")
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main(*sys.argv[1:4])
