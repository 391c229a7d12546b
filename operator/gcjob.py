"""The CronJob that keeps a Store's `retention`: `runsync gc NAMESPACE` on the Store's schedule. Pure.

It runs in the Store's namespace with the Store's own credentials, as secretKeyRef env exactly
as the sidecar gets them (never copied), so the operator needs no access to Secrets. It is
owned by the Store (deleting the Store deletes it) and restricted like the sidecar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from runsync import contract, retention

from . import containers
from .stores import GROUP, VERSION, StoreSpec
from .values import Values

CONTAINER = "runsync-gc"
SPEC_HASH = "runsync.dev/spec-hash"
"""Annotation on the CronJob: a digest of what the operator wants, so an unchanged one is left alone."""
STORE_LABEL = "runsync.dev/store"
_MAX_NAME = 52  # a CronJob's name: its Jobs append 11 characters to it


@dataclasses.dataclass(frozen=True)
class Retention:
    """A Store's `spec.retention`; the defaults are the CRD's, which are `runsync gc`'s."""

    keep: int = retention.DEFAULT_KEEP
    min_age: str = retention.DEFAULT_MIN_AGE
    days: int | None = None
    schedule: str = "17 3 * * *"

    @classmethod
    def parse(cls, spec: dict) -> "Retention | None":
        """None when the Store has no `retention`: nothing is ever deleted."""
        r = spec.get("retention")
        if r is None:
            return None
        return cls(keep=int(r.get("keepManifests", cls.keep)), min_age=str(r.get("minAge", cls.min_age)),
                   days=int(r["days"]) if r.get("days") is not None else None,
                   schedule=str(r.get("schedule") or cls.schedule))

    def args(self, namespace: str) -> list[str]:
        args = ["--log-level", "info", "gc", namespace, "--keep", str(self.keep), "--min-age", self.min_age]
        return args + (["--expire-days", str(self.days)] if self.days is not None else [])


def name(store: str) -> str:
    """`runsync-gc-<store>`; a long Store name is cut and given a digest, so it stays unique."""
    full = f"runsync-gc-{store}"
    if len(full) <= _MAX_NAME:
        return full
    digest = hashlib.sha256(store.encode()).hexdigest()[:8]
    return f"{full[:_MAX_NAME - 9].rstrip('.-')}-{digest}"


def cronjob(namespace: str, store: str, store_uid: str, spec: StoreSpec, retention: Retention,
            values: Values) -> dict:
    user = (values.user_id, values.user_id)
    container = {
        "name": CONTAINER,
        "image": values.image,
        "imagePullPolicy": values.pull_policy,
        "command": ["runsync"],
        "args": retention.args(namespace),
        "env": [{"name": contract.ENV_STORE, "value": spec.url}, *containers.store_env(spec)],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": containers.security_context(*user),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # gc talks to S3 only
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    labels = {"app.kubernetes.io/name": "runsync", "app.kubernetes.io/component": "gc", STORE_LABEL: store}
    body_spec = {
        "schedule": retention.schedule,
        "concurrencyPolicy": "Forbid",  # one gc at a time per Store
        "successfulJobsHistoryLimit": 1,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"metadata": {"labels": labels}, "spec": {
            "backoffLimit": 2,
            "template": {"metadata": {"labels": labels}, "spec": pod}}},
    }
    digest = hashlib.sha256(json.dumps(body_spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name(store), "namespace": namespace, "labels": labels,
            "annotations": {SPEC_HASH: digest},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "Store", "name": store,
                                 "uid": store_uid, "controller": True}],
        },
        "spec": body_spec,
    }
