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
    """Resources of the sidecar container. The sidecar reads its memory limit (downward API) and
    sizes its upload buffers to stay under it: the limit less 192 MiB for the AWS CRT, or, under
    448 MiB, no CRT (about 100 MiB RSS)."""
    init_resources: dict = dataclasses.field(default_factory=lambda: {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    guaranteed_cpu: str = "500m"
    """CPU request and limit of restore-init and of the sidecar in a Guaranteed pod (every container
    has CPU and memory limits equal to its requests): there they take requests == limits (this
    CPU, and their memory limit above), so the pod stays Guaranteed. Elsewhere they have no CPU
    limit. A CFS quota: uploads hash and sign at about 1 CPU-second per GiB through the CRT."""
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
    tls_secret: str = ""
    """The chart's own TLS mode: the Secret where the operator keeps the webhook's CA and serving
    certificate (it makes them; operator/servingcert.py) and from which it writes `certfile` and
    `pkeyfile`. Empty: those files are given (cert-manager's Secret, mounted)."""
    webhook_config: str = ""
    """In that mode, the MutatingWebhookConfiguration whose caBundle the operator sets to its CA."""
    webhook_hosts: str = ""
    """In that mode, the comma-separated DNS names (or IPs) the serving certificate is for."""
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
