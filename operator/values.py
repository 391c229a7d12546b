"""The operator's own settings (from the Helm values, through its Deployment's environment).

One frozen dataclass on kopf's `memo`; every field says what it means and its default.
"""

from __future__ import annotations

import dataclasses
import json
import os

from runsync import contract

ENV_PREFIX = "RUNSYNC_OPERATOR_"


@dataclasses.dataclass(frozen=True)
class Values:
    image: str = "ghcr.io/runsync/runsync:0.1.0"
    """The one runsync image, used for restore-init and the sidecar."""
    pull_policy: str = "IfNotPresent"
    sidecar_resources: dict = dataclasses.field(default_factory=lambda: {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    """Resources of the sidecar container. Memory in flight is about 10 parts of 16 MiB."""
    init_resources: dict = dataclasses.field(default_factory=lambda: {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    user_id: int = 65532
    """Numeric non-root user of the runsync containers."""
    api_port: int = contract.API_PORT
    """Loopback port of the sidecar's SDK API (RUNSYNC_API in the app containers)."""
    metrics_port: int = contract.METRICS_PORT
    """Port of the sidecar's /metrics, /healthz and /readyz."""
    grace_floor: int = 60
    """Seconds of terminationGracePeriodSeconds under which admission warns."""
    raise_grace: bool = False
    """Raise a shorter grace period to `grace_floor` instead of only warning."""
    webhook_port: int = 9443
    webhook_addr: str = "0.0.0.0"
    certfile: str = "/etc/runsync/tls/tls.crt"
    pkeyfile: str = "/etc/runsync/tls/tls.key"
    metrics_addr: str = "0.0.0.0:8080"
    """Where the operator serves its own /metrics (admissions, denials, latency)."""
    namespace: str = "runsync-system"
    """The operator's own namespace: its pods are never injected."""

    @classmethod
    def from_env(cls, env=os.environ) -> "Values":
        """Each field may be set as RUNSYNC_OPERATOR_<FIELD> (JSON for dicts and booleans)."""
        found = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            default = getattr(cls(), field.name)
            if isinstance(default, bool):
                found[field.name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                found[field.name] = int(raw)
            elif isinstance(default, dict):
                found[field.name] = json.loads(raw)
            else:
                found[field.name] = raw
        return cls(**found)


WEBHOOK_ID = "inject-pods"
"""kopf serves the mutating webhook at `/<id>`: the chart's webhook path must be this."""

ANNOTATIONS_MOUNT = "/etc/runsync"
ANNOTATIONS_FILE = "annotations"
TMP_MOUNT = "/tmp"
