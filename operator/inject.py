"""Pod → injected pod. Pure: no API calls, no I/O; the webhook supplies the Store and values.

Decide (`skip_reason`), then `inject`, which first refuses what would collide with runsync's own
volumes, paths and ports (`conflicts`), then touches only what it must, in a fixed order: the
run-dir, annotations and tmp volumes; the app containers' mounts and env; restore-init first
among the init containers, the native sidecar right after it (requests == limits in a
Guaranteed pod, which stays Guaranteed: `qos`); the grace period; the pod's fsGroup when it sets none (the runsync containers run as `containers.runsync_user`);
the status mark.
"""

from __future__ import annotations

import copy
import dataclasses

from runsync import config, contract, keys

from . import conflicts, containers, qos
from .stores import StoreSpec
from .values import ANNOTATIONS_FILE, Values


class InjectionError(ValueError):
    """The pod cannot be injected as its annotations ask; the message says why and what to fix."""


class Conflict(InjectionError):
    """The pod already has something runsync's injection would collide with (`conflicts`)."""


@dataclasses.dataclass(frozen=True)
class Result:
    pod: dict
    warnings: tuple[str, ...]


def skip_reason(pod: dict) -> str | None:
    """Why this pod is left alone, or None to inject it."""
    meta = pod.get("metadata") or {}
    if ((meta.get("labels") or {}).get(contract.INJECT_LABEL)) != "true":
        return f"no {contract.INJECT_LABEL}=true label"
    if (meta.get("annotations") or {}).get(contract.STATUS) == contract.STATUS_INJECTED:
        return "already injected"
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])}
    if containers.SIDECAR_NAME in names or containers.RESTORE_NAME in names:
        return "already has the runsync containers"
    return None


def inject(pod: dict, cfg: config.RunConfig, values: Values, store: StoreSpec, run_path: keys.RunPath,
           replica: str) -> Result:
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    warnings: list[str] = []
    apps = spec.get("containers") or []
    chosen = [c for c in apps if cfg.containers is None or c.get("name") in cfg.containers]
    problem = conflicts.denial(pod, cfg, values, chosen)
    if problem:
        raise Conflict(problem)
    warnings += conflicts.warnings(cfg, chosen)
    guaranteed = qos.qos_class(spec) == "Guaranteed"  # before our containers join the pod
    volumes = spec.setdefault("volumes", [])
    volume_names = {v.get("name") for v in volumes}

    # -- volumes
    if cfg.volume is not None:
        if cfg.volume not in volume_names:
            raise InjectionError(f"{contract.VOLUME}: volume {cfg.volume!r} is not a volume of this pod; "
                                 f"expected one of {sorted(n for n in volume_names if n)}")
        run_volume = cfg.volume
    else:
        run_volume = containers.RUN_VOLUME
        volumes.append({"name": run_volume, "emptyDir": {}})
    volumes.append({"name": containers.ANNOTATIONS_VOLUME, "downwardAPI": {"items": [
        {"path": ANNOTATIONS_FILE, "fieldRef": {"fieldPath": "metadata.annotations"}}]}})
    volumes.append({"name": containers.TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}})

    # -- app containers: the run dir and where to find it
    if cfg.containers is not None:
        missing = sorted(set(cfg.containers) - {c.get("name") for c in apps})
        if missing:
            raise InjectionError(f"{contract.CONTAINERS}: no container named {missing[0]!r} in this pod; "
                                 f"expected some of {[c.get('name') for c in apps]}")
    for c in chosen:
        mounts = c.setdefault("volumeMounts", [])
        if not any(m.get("mountPath") == cfg.run_dir for m in mounts):
            mounts.append({"name": run_volume, "mountPath": cfg.run_dir})
        env = c.setdefault("env", [])
        have = {e.get("name") for e in env}
        for name, value in ((contract.ENV_DIR, cfg.run_dir), (contract.ENV_RUN_PATH, str(run_path)),
                            (contract.ENV_API, f"127.0.0.1:{values.api_port}")):
            if name not in have:
                env.append({"name": name, "value": value})

    # -- grace period: the final flush must fit in it
    grace = spec.get("terminationGracePeriodSeconds", contract.DEFAULT_GRACE_SECONDS)
    if grace < values.grace_floor:
        if values.raise_grace:
            warnings.append(f"runsync raised terminationGracePeriodSeconds from {grace} to {values.grace_floor} "
                            "so the final flush can finish")
            grace = spec["terminationGracePeriodSeconds"] = values.grace_floor
        else:
            warnings.append(f"terminationGracePeriodSeconds is {grace} s, under runsync's floor of "
                            f"{values.grace_floor} s: the last checkpoint may not be uploaded when the pod "
                            "is preempted; raise it on the pod template")

    # -- restore-init first, the native sidecar right after it
    env = containers.runsync_env(cfg, values, store, str(run_path), replica, grace)
    user = containers.runsync_user(spec, values)
    init = spec.setdefault("initContainers", [])
    ours = [containers.restore_init(cfg, values, env, run_volume, user),
            containers.sidecar(cfg, values, env, run_volume, user)]
    if guaranteed:  # requests == limits on ours too, or the pod turns Burstable
        for c in ours:
            c["resources"] = qos.guaranteed(c.get("resources") or {}, values.guaranteed_cpu)
    init[:0] = ours

    # -- fsGroup: the kubelet makes the run-dir volume (a root-owned PVC too) group-owned by
    # runsync's GID with setgid dirs, and gives every container that group; one the pod set wins.
    pod_sc = spec.setdefault("securityContext", {})
    if pod_sc.get("fsGroup") is None:
        pod_sc["fsGroup"] = user[1]
        pod_sc.setdefault("fsGroupChangePolicy", "OnRootMismatch")

    # -- the mark: the status annotation, last
    annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[contract.STATUS] = contract.STATUS_INJECTED
    return Result(pod, tuple(warnings))
