"""A patched pod's containers as local processes, as a kubelet would run them.

`LocalPod`: a container's exact command, args and env, its volumes mapped to temp dirs, the
downward-API annotations file written the way the kubelet writes it, secretKeyRef and fieldRef
resolved.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import downward
from .localkube import RUNSYNC


class LocalPod:
    """Run a patched pod's containers as local processes (see the module docstring)."""

    def __init__(self, patched: dict, root: Path, secrets: dict[str, dict[str, str]]):
        self.pod = patched
        self.root = root
        self.paths: dict[str, str] = {}
        for v in patched["spec"]["volumes"]:
            local = root / "volumes" / v["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "downwardAPI" in v:
                for item in v["downwardAPI"]["items"]:
                    if item["fieldRef"]["fieldPath"] != "metadata.annotations":
                        raise ValueError(f"unsupported downward-API item {item}")
                    text = downward.format_annotations_file(patched["metadata"].get("annotations") or {})
                    (local / item["path"]).write_text(text)
            self.paths[v["name"]] = str(local)
        self.secrets = secrets

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
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = local(e["value"])
            elif "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[e["name"]] = self.pod["metadata"]["name"]
            else:
                raise ValueError(f"unsupported env source {e}")
        return env

    def argv(self, container: dict) -> list[str]:
        """The container's command and args; `runsync` is this environment's runsync."""
        command = container.get("command") or ["runsync"]
        if command[0] != "runsync":
            raise ValueError(f"container {container['name']} runs {command[0]!r}, not runsync")
        return [RUNSYNC, *command[1:], *container.get("args", [])]

    def pre_stop(self, container: dict) -> list[str]:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        return [RUNSYNC, *command[1:]]
