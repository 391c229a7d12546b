"""The two containers runsync adds to a pod: restore-init and the native sidecar. Pure builders."""

from __future__ import annotations

import copy

from runsync import config, contract

from .stores import StoreSpec
from .values import ANNOTATIONS_FILE, ANNOTATIONS_MOUNT, TMP_MOUNT, Values

RESTORE_NAME = "runsync-restore"
SIDECAR_NAME = "runsync-sidecar"
RUN_VOLUME = "runsync-run"
ANNOTATIONS_VOLUME = "runsync-annotations"
TMP_VOLUME = "runsync-tmp"
METRICS_PORT_NAME = "runsync-metrics"


def runsync_user(spec: dict, values: Values) -> tuple[int, int]:
    """UID and GID of restore-init and the sidecar (README, "Users and permissions").

    The app containers' own when every one of them, its securityContext merged over the pod's,
    names one and the same non-root runAsUser (and runAsGroup, if set; unset, the GID is the
    UID): what restore-init restores is then the trainer's own. Otherwise `values.user_id` for
    both, and the pod's fsGroup gives the trainer the group (see `inject`).
    """
    pod_sc = spec.get("securityContext") or {}
    users = set()
    for c in spec.get("containers") or []:
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        users.add((sc.get("runAsUser"), sc.get("runAsGroup")))
    if len(users) == 1:
        uid, gid = users.pop()
        if _is_id(uid) and uid != 0 and (gid is None or _is_id(gid)):
            return uid, uid if gid is None else gid
    return values.user_id, values.user_id


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def security_context(uid: int, gid: int) -> dict:
    """Restricted (Pod Security Standards): non-root, read-only root, no capabilities."""
    return {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }


def store_env(store: StoreSpec) -> list[dict]:
    """The standard AWS variables and the Store's server-side encryption; keys as secretKeyRef
    to the Store's Secret, never copied."""
    env = [{"name": "AWS_REGION", "value": store.region}]
    if store.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": store.endpoint})
    if store.sse:  # what every write asks S3 for; the key id names a key, it is no secret
        env.append({"name": contract.ENV_SSE, "value": store.sse})
        if store.kms_key_id:
            env.append({"name": contract.ENV_SSE_KMS_KEY_ID, "value": store.kms_key_id})
    if store.secret:
        for var, key in (("AWS_ACCESS_KEY_ID", store.access_key_id_key),
                         ("AWS_SECRET_ACCESS_KEY", store.secret_access_key_key)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": store.secret, "key": key}}})
    return env


def runsync_env(cfg: config.RunConfig, values: Values, store: StoreSpec, run_path: str, replica: str,
                grace: int) -> list[dict]:
    return [
        {"name": contract.ENV_DIR, "value": cfg.run_dir},
        {"name": contract.ENV_RUN_PATH, "value": run_path},
        {"name": contract.ENV_REPLICA, "value": replica},
        {"name": contract.ENV_STORE, "value": store.url},
        {"name": contract.ENV_ANNOTATIONS, "value": f"{ANNOTATIONS_MOUNT}/{ANNOTATIONS_FILE}"},
        {"name": contract.ENV_API, "value": f"127.0.0.1:{values.api_port}"},
        {"name": contract.ENV_METRICS, "value": f"0.0.0.0:{values.metrics_port}"},
        {"name": contract.ENV_GRACE, "value": str(grace)},
        {"name": contract.ENV_HOLDER, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # Who and where, for the run's metadata (replica.json); image digests come later (images.py).
        *({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in (
            (contract.ENV_POD_NAME, "metadata.name"), (contract.ENV_POD_NAMESPACE, "metadata.namespace"),
            (contract.ENV_POD_UID, "metadata.uid"), (contract.ENV_NODE_NAME, "spec.nodeName"))),
        # Each container's own memory limit, in bytes: the sidecar sizes its buffers under it.
        {"name": contract.ENV_MEMORY_LIMIT, "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        *store_env(store),
    ]


def mounts(cfg: config.RunConfig, run_volume: str) -> list[dict]:
    return [
        {"name": run_volume, "mountPath": cfg.run_dir},
        {"name": ANNOTATIONS_VOLUME, "mountPath": ANNOTATIONS_MOUNT, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": TMP_MOUNT},
    ]


def restore_init(cfg, values: Values, env: list[dict], run_volume: str, user: tuple[int, int]) -> dict:
    return {
        "name": RESTORE_NAME,
        "image": values.image,
        "imagePullPolicy": values.pull_policy,
        "command": ["runsync"],
        "args": ["restore-init"],
        "env": copy.deepcopy(env),
        "volumeMounts": mounts(cfg, run_volume),
        "resources": copy.deepcopy(values.init_resources),
        "securityContext": security_context(*user),
    }


def sidecar(cfg, values: Values, env: list[dict], run_volume: str, user: tuple[int, int]) -> dict:
    probe = {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME}, "periodSeconds": 10}
    return {
        "name": SIDECAR_NAME,
        "image": values.image,
        "imagePullPolicy": values.pull_policy,
        "command": ["runsync"],
        "args": ["sidecar"],
        # A native sidecar: an init container that keeps running beside the app containers and
        # gets SIGTERM only after they exited; its preStop starts the final flush at once.
        "restartPolicy": "Always",
        "env": copy.deepcopy(env),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": values.metrics_port, "protocol": "TCP"}],
        "volumeMounts": mounts(cfg, run_volume),
        "startupProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME},
                         "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT_NAME}, "periodSeconds": 10},
        "livenessProbe": probe,
        "lifecycle": {"preStop": {"exec": {"command": ["runsync", "sidecar", "--pre-stop"]}}},
        "resources": copy.deepcopy(values.sidecar_resources),
        "securityContext": security_context(*user),
    }
