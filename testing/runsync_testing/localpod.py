"""A patched pod's containers as local processes, as a kubelet would run them.

`LocalPod`: a container's exact command, args and env, its volumes mapped to dirs under `root`,
the downward-API annotations file written the way the kubelet writes it, secretKeyRef and fieldRef
resolved; each process as its securityContext says, with a read-only root and the pod's fsGroup
(see `kubelet`). `root` and every dir above it must let other UIDs through (pytest's tmp_path is
0700: use the `pod_root` fixture). emptyDir volumes are 0777 as the kubelet makes them; a
persistentVolumeClaim is a dir that already exists (a test may fill it first) or a fresh
root-owned 0755 one, as a provisioner leaves it.

Loopback ports in the env are mapped to free ones per pod (a pod's network namespace is its
own). Without root nothing can be switched: commands run as the current user and `unenforced` says why.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes.utils import parse_quantity

from . import downward, kubelet, ports
from .localkube import RUNSYNC


class LocalPod:
    """Run a patched pod's containers as local processes (see the module docstring)."""

    def __init__(self, patched: dict, root: Path, secrets: dict[str, dict[str, str]], umask: int = 0o022):
        self.pod = patched
        self.root = root
        self.umask = umask
        """The umask of every container's process (the image's default is 022)."""
        self.unenforced = kubelet.unavailable()
        """Why users and the read-only root are not applied here, or None when they are."""
        self.paths: dict[str, str] = {}
        spec = patched["spec"]
        pod_sc = spec.get("securityContext") or {}
        if self.unenforced is None:
            _check_traversable(root)
        for v in spec["volumes"]:
            local = root / "volumes" / v["name"]
            if "emptyDir" in v:
                kubelet.make_empty_dir(local)
            elif "persistentVolumeClaim" in v:
                if not local.exists():
                    local.mkdir(parents=True)
                    os.chmod(local, 0o755)
            elif "downwardAPI" in v:
                local.mkdir(parents=True, exist_ok=True)
                os.chmod(local, 0o755)
                for item in v["downwardAPI"]["items"]:
                    if item["fieldRef"]["fieldPath"] != "metadata.annotations":
                        raise ValueError(f"unsupported downward-API item {item}")
                    text = downward.format_annotations_file(patched["metadata"].get("annotations") or {})
                    (local / item["path"]).write_text(text)
                    os.chmod(local / item["path"], 0o644)
            else:
                raise ValueError(f"unsupported volume {v}")
            if pod_sc.get("fsGroup") is not None and ("emptyDir" in v or "persistentVolumeClaim" in v):
                kubelet.apply_fs_group(local, pod_sc["fsGroup"], pod_sc.get("fsGroupChangePolicy", "Always"))
            self.paths[v["name"]] = str(local)
        self.secrets = secrets
        meta = patched["metadata"]
        self.fields = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "default"),
                       "metadata.uid": meta.get("uid") or "00000000-0000-4000-8000-000000000000",
                       "spec.nodeName": spec.get("nodeName") or "local-node"}
        """The downward API's fieldRefs, as the kubelet resolves them (this machine is the node)."""
        self.ports: dict[str, str] = {}
        """A pod has its own network namespace, so its fixed loopback ports never clash with
        another pod's; here every pod shares the host's: each `127.0.0.1:PORT` in the pod's env
        is mapped to a free port of its own, the same in all of its containers."""

    def update_annotations(self, annotations: dict[str, str]) -> None:
        """The pod's annotations changed (`kubectl annotate`, the operator): the kubelet rewrites
        the downward-API file, swapped in atomically."""
        for v in self.pod["spec"]["volumes"]:
            for item in (v.get("downwardAPI") or {}).get("items", ()):
                path = Path(self.paths[v["name"]]) / item["path"]
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(downward.format_annotations_file(annotations))
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)

    def _port(self, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if host != "127.0.0.1" or not sep or not port.isdigit():
            return value
        if port not in self.ports:
            self.ports[port] = str(ports.free_ports(1)[0])
        return f"{host}:{self.ports[port]}"

    def container(self, name: str) -> dict:
        spec = self.pod["spec"]
        return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)

    def env(self, container: dict, base: dict[str, str] | None = None) -> dict[str, str]:
        mounts = {m["mountPath"]: self.paths[m["name"]] for m in container.get("volumeMounts", [])}

        def local(value: str) -> str:  # a path inside a mount → the temp dir behind it
            for mount, path in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == mount or value.startswith(mount + "/"):
                    return path + value[len(mount):]
            return value

        env = dict(base if base is not None else
                   {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))})
        if "/tmp" in mounts:  # the kubelet mounts it at /tmp; here the dir stays where it is
            env["TMPDIR"] = mounts["/tmp"]
        if self.unenforced is None and kubelet.identity(self.pod["spec"], container).uid != 0:
            env["HOME"] = "/"  # a UID the image does not know gets HOME=/
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = self._port(local(e["value"]))
            elif "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") in self.fields:
                env[e["name"]] = self.fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            elif e["valueFrom"].get("resourceFieldRef", {}).get("resource") == "limits.memory":
                # as the kubelet: the limit in bytes, else the node's allocatable memory
                limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
                env[e["name"]] = str(int(parse_quantity(limit)) if limit is not None
                                     else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
            else:
                raise ValueError(f"unsupported env source {e}")
        return env

    def argv(self, container: dict) -> list[str]:
        """The container's command and args; `runsync` is this environment's runsync."""
        command = container.get("command") or ["runsync"]
        if command[0] != "runsync":
            raise ValueError(f"container {container['name']} runs {command[0]!r}, not runsync")
        return self.command(container, [RUNSYNC, *command[1:], *container.get("args", [])])

    def wait_started(self, container: dict, process: subprocess.Popen) -> None:
        """Block as the kubelet does before it starts the containers after a native sidecar: until
        the sidecar's startupProbe (an httpGet) answers 2xx; RuntimeError if the process exits or
        the probe's failureThreshold x periodSeconds passes. Polled every 0.1 s, not every period."""
        probe = container["startupProbe"]["httpGet"]
        port = probe["port"]
        if not isinstance(port, int):  # a named port: the container's own
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        port = self.ports.get(str(port), str(port))
        url = f"http://127.0.0.1:{port}{probe['path']}"
        spec = container["startupProbe"]
        deadline = time.monotonic() + spec.get("failureThreshold", 3) * spec.get("periodSeconds", 10)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"container {container['name']} exited ({process.returncode}) before its "
                                   f"startupProbe {url} passed")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if 200 <= resp.status < 300:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeError(f"container {container['name']}'s startupProbe {url} did not pass in time")

    def pre_stop(self, container: dict) -> list[str]:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        return self.command(container, [RUNSYNC, *command[1:]])

    def command(self, container: dict, argv: list[str]) -> list[str]:
        """`argv` as this container's process: its user and groups, its volumes writable, the
        rest of the root read-only if it says so, the pod's umask."""
        if self.unenforced is not None:
            return list(argv)
        mounts = container.get("volumeMounts", [])
        writable = sorted({self.paths[m["name"]] for m in mounts if not m.get("readOnly")})
        read_only = sorted({self.paths[m["name"]] for m in mounts if m.get("readOnly")} - set(writable))
        # A sized emptyDir at /tmp (runsync's scratch) is a tmpfs of that size. Per container, so
        # only where nothing is shared through it: a run dir must stay one dir for the whole pod.
        limits = {v["name"]: v["emptyDir"]["sizeLimit"] for v in self.pod["spec"]["volumes"]
                  if (v.get("emptyDir") or {}).get("sizeLimit")}
        sized = {self.paths[m["name"]]: limits[m["name"]] for m in mounts
                 if m["name"] in limits and m["mountPath"] == "/tmp"}
        who = kubelet.identity(self.pod["spec"], container)
        return kubelet.command(who, argv, writable, read_only, self.umask, sized)


def _check_traversable(root: Path) -> None:
    """Containers run as other UIDs: every dir above the pod's must let them through."""
    for d in [*Path(root).absolute().parents][::-1]:
        if d.exists() and not os.stat(d).st_mode & 0o001:
            raise PermissionError(f"{d} (mode {os.stat(d).st_mode & 0o7777:o}) is not traversable by other "
                                  f"UIDs, so a container cannot reach {root}; fix: put the pod under a dir "
                                  "every UID can enter (tests: the pod_root fixture)")
