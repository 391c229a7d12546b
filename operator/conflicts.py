"""What a pod already has that runsync's injection would collide with. Pure.

Each is denied at admission with a message naming the field or annotation, the value and the
fix, instead of a pod the API server rejects (two volumes of one name, two mounts at one path)
or, worse, one it accepts whose sidecar watches another volume than the trainer writes.
"""

from __future__ import annotations

import posixpath

from runsync import config, contract

from . import containers
from .values import ANNOTATIONS_MOUNT, TMP_MOUNT, Values

OWN_MOUNTS = {ANNOTATIONS_MOUNT: "the pod's annotations", TMP_MOUNT: "the sidecar's temp dir"}
"""Paths runsync mounts in its own containers: the run dir may be neither on, in nor above them."""
IMAGE_PATHS = ("/bin", "/sbin", "/lib", "/lib64", "/usr/bin", "/usr/lib", "/usr/local", "/etc/ssl", "/etc")
"""Paths of the runsync image (Python, runsync, CA certificates, /etc/hosts): a run dir on or
above one would hide it in runsync's containers."""
KERNEL_PATHS = ("/proc", "/sys", "/dev")
FIX_RUN_DIR = f"fix: set {contract.RUN_DIR} to a path of its own, such as {contract.DEFAULT_RUN_DIR}"


def denial(pod: dict, cfg: config.RunConfig, values: Values, chosen: list[dict]) -> str | None:
    """Why runsync cannot be injected into this pod as asked, or None. `chosen`: the app
    containers that get the run dir."""
    spec = pod.get("spec") or {}
    return (_host_network(spec, values) or _volume_names(spec, cfg) or _run_dir_paths(cfg)
            or _run_dir_mounts(cfg, chosen) or _ports(spec, values))


def warnings(cfg: config.RunConfig, chosen: list[dict]) -> list[str]:
    """Allowed, but the trainer should know: what it writes below the run dir into another volume."""
    found = []
    for c in chosen:
        for m in c.get("volumeMounts") or []:
            if _inside(m.get("mountPath", ""), cfg.run_dir):
                found.append(f"container {c.get('name')!r} mounts volume {m.get('name')!r} at {m.get('mountPath')!r}, "
                             f"inside the run dir {cfg.run_dir!r}: runsync's sidecar does not see that volume, and "
                             "what is written there is never uploaded; mount it elsewhere if it should be")
    return found


def _host_network(spec: dict, values: Values) -> str | None:
    if spec.get("hostNetwork") is not True:
        return None
    return ("spec.hostNetwork: true: runsync's sidecar would listen on the node's own network (its SDK API on "
            f"127.0.0.1:{values.api_port}, metrics on port {values.metrics_port}), where another pod's sidecar "
            "can already hold those ports and every process of the node could call the API; runsync does not "
            f"inject hostNetwork pods; fix: drop hostNetwork, or remove the {contract.INJECT_LABEL} label")


def _volume_names(spec: dict, cfg: config.RunConfig) -> str | None:
    for v in spec.get("volumes") or []:
        name = v.get("name")
        if name in (containers.RUN_VOLUME, containers.ANNOTATIONS_VOLUME, containers.TMP_VOLUME) \
                and not (name == containers.RUN_VOLUME and cfg.volume == name):
            also = f", or name it in {contract.VOLUME} to use it as the run dir" if name == containers.RUN_VOLUME else ""
            return (f"spec.volumes: this pod already has a volume named {name!r}, a name runsync gives its own "
                    f"volume; fix: rename that volume{also}")
    return None


def _run_dir_paths(cfg: config.RunConfig) -> str | None:
    run_dir = cfg.run_dir
    for path, what in OWN_MOUNTS.items():
        if _inside(run_dir, path) or _inside(path, run_dir) or run_dir == path:
            return f"{contract.RUN_DIR}: {run_dir!r} collides with runsync's own mount of {what} at {path!r}; {FIX_RUN_DIR}"
    for path in IMAGE_PATHS:
        if run_dir == path or _inside(path, run_dir):
            return (f"{contract.RUN_DIR}: {run_dir!r} would hide {path!r} of the runsync image in its containers; "
                    f"{FIX_RUN_DIR}")
    for path in KERNEL_PATHS:
        if run_dir == path or _inside(run_dir, path):
            return f"{contract.RUN_DIR}: {run_dir!r} is in the kernel's {path!r}; {FIX_RUN_DIR}"
    return None


def _run_dir_mounts(cfg: config.RunConfig, chosen: list[dict]) -> str | None:
    ours = cfg.volume or containers.RUN_VOLUME
    for c in chosen:
        for m in c.get("volumeMounts") or []:
            if posixpath.normpath(m.get("mountPath", "")) != cfg.run_dir:
                continue
            if m.get("name") != ours:
                return (f"{contract.RUN_DIR}: container {c.get('name')!r} already mounts volume {m.get('name')!r} at "
                        f"{cfg.run_dir!r}, so runsync's sidecar would watch another volume than it writes; fix: name "
                        f"that volume in {contract.VOLUME}, or set {contract.RUN_DIR} to another path")
            if m.get("subPath") or m.get("subPathExpr"):
                return (f"{contract.RUN_DIR}: container {c.get('name')!r} mounts a subPath of volume {m.get('name')!r} "
                        f"at {cfg.run_dir!r}, while runsync's sidecar mounts the whole volume there; fix: mount the "
                        f"whole volume at {cfg.run_dir!r}, or drop that mount and let runsync add it")
    return None


def _ports(spec: dict, values: Values) -> str | None:
    ours = {values.api_port: "SDK API", values.metrics_port: "metrics"}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for p in c.get("ports") or []:
            if p.get("containerPort") in ours:
                port = p["containerPort"]
                return (f"container {c.get('name')!r} declares port {port}, where runsync's sidecar serves its "
                        f"{ours[port]} in the same pod network; fix: move that port, or install runsync with other "
                        "sidecar ports (Helm values sidecar.apiPort, sidecar.metricsPort)")
    return None


def _inside(path: str, parent: str) -> bool:
    """Is `path` strictly below `parent`?"""
    path = posixpath.normpath(path) if path else path
    return path.startswith(parent.rstrip("/") + "/") and path != parent
