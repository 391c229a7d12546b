"""Names shared by the operator, the sidecar, restore-init, the CLI and the SDK.

Every label, annotation key and environment variable of SPEC.md is spelt here once; code and
tests use these constants, never the strings.
"""

from __future__ import annotations

PREFIX = "runsync.dev/"

# The label that opts a pod in: the webhook's objectSelector sends only pods that carry it.
INJECT_LABEL = PREFIX + "inject"

# --- Annotations (the pod's configuration). Meaning, format and default are in config.py. ---
SAVE = PREFIX + "save"
"""What to upload: `GLOB[:POLICY]` entries (commas or newlines), or a YAML list."""
IGNORE = PREFIX + "ignore"
"""Comma-separated globs never uploaded; they win over `save`."""
RUN = PREFIX + "run"
"""Run id; default: the owning Job's (JobSet's, Kubeflow job's, StatefulSet's, Deployment's) name,
else the owner's name, else the pod's name (runsync_operator.identity)."""
PROJECT = PREFIX + "project"
"""Groups runs; default `default`."""
RESTORE = PREFIX + "restore"
"""`auto` (default), `none`, or comma-separated globs."""
RESTORE_FROM = PREFIX + "restore-from"
"""`PROJECT/RUN` of another run of the same namespace to start from."""
RESTORE_STRICT = PREFIX + "restore-strict"
"""`true`: fail the pod when there is nothing to restore. Default `false`."""
RESTORE_REPLICAS = PREFIX + "restore-replicas"
"""`own` (default) or `all`."""
STORE = PREFIX + "store"
"""Name of the `Store` in the pod's namespace; default `default`."""
RUN_DIR = PREFIX + "run-dir"
"""Mount path of the run dir in the app containers; default `/runsync`."""
VOLUME = PREFIX + "volume"
"""Name of an existing pod volume to use as the run dir; default a new emptyDir."""
CONTAINERS = PREFIX + "containers"
"""Comma-separated app containers that get the run dir and env; default all."""
COMPLETE_MARKER = PREFIX + "complete-marker"
"""Comma-separated globs of files that mark a checkpoint directory complete."""
TEMP_NAMES = PREFIX + "temp-names"
"""Comma-separated name globs of temp files never uploaded unless a save entry names them;
default the known ones (config.DEFAULT_TEMP_NAMES), `none` for no such rule."""
REPLICA = PREFIX + "replica"
"""This pod's replica name within the run; default derived from the owner (an Indexed Job's
completion index, a StatefulSet pod's index, ...; `0` for a lone pod)."""
STATUS = PREFIX + "status"
"""Set by the operator (`injected`); never set by users."""
IMAGES = PREFIX + "images"
"""Set by the operator once the kubelet reports the pod's imageIDs: JSON, container name →
imageID (with its digest). The sidecar records it in the replica's metadata; never set by users."""

ANNOTATIONS = (
    SAVE, IGNORE, RUN, PROJECT, RESTORE, RESTORE_FROM, RESTORE_STRICT, RESTORE_REPLICAS,
    STORE, RUN_DIR, VOLUME, CONTAINERS, COMPLETE_MARKER, TEMP_NAMES, REPLICA, STATUS, IMAGES,
)

STATUS_INJECTED = "injected"

# --- In-pod environment (set by the operator, read by `runsync sidecar` and `restore-init`). ---
ENV_DIR = "RUNSYNC_DIR"
ENV_RUN_PATH = "RUNSYNC_RUN_PATH"
ENV_REPLICA = "RUNSYNC_REPLICA"
ENV_STORE = "RUNSYNC_STORE"
ENV_ANNOTATIONS = "RUNSYNC_ANNOTATIONS"
ENV_API = "RUNSYNC_API"

ENV_GRACE = "RUNSYNC_GRACE_SECONDS"
"""The pod's termination grace period, in seconds (the operator copies it from the pod)."""
ENV_HOLDER = "RUNSYNC_HOLDER"
"""Who holds the replica's writer lease: the pod (name and uid); restore-init and the sidecar
of one pod share it. Default: the host name, which is the pod's name."""
ENV_MEMORY_LIMIT = "RUNSYNC_MEMORY_LIMIT"
"""The container's memory limit in bytes (the downward API's `limits.memory`, which is the node's
allocatable memory when no limit is set): the sidecar sizes its transfer buffers to fit in it."""
ENV_IGNORE_GLOBS = "RUNSYNC_IGNORE_GLOBS"
"""The SDK's embedded mode (not a pod): comma-separated globs never uploaded, as W&B's
`WANDB_IGNORE_GLOBS` (in a pod the `runsync.dev/ignore` annotation says it)."""
ENV_POD_NAME = "RUNSYNC_POD_NAME"
ENV_POD_NAMESPACE = "RUNSYNC_POD_NAMESPACE"
ENV_POD_UID = "RUNSYNC_POD_UID"
ENV_NODE_NAME = "RUNSYNC_NODE_NAME"
"""The pod's name, namespace, uid and node (downward API), recorded in the replica's metadata."""
ENV_METRICS = "RUNSYNC_METRICS_ADDR"
"""HOST:PORT of the sidecar's /metrics, /healthz and /readyz."""
ENV_SSE = "RUNSYNC_SSE"
"""Server-side encryption of every object runsync writes: `AES256` (SSE-S3) or `aws:kms`
(SSE-KMS); unset: none asked (the bucket's default applies). From the Store's
`serverSideEncryption.type`; the CLI's `--sse`."""
ENV_SSE_KMS_KEY_ID = "RUNSYNC_SSE_KMS_KEY_ID"
"""The KMS key of `aws:kms` (id, ARN or alias; not a secret); unset: the account's default key.
From the Store's `serverSideEncryption.kmsKeyId`; the CLI's `--sse-kms-key-id`."""

API_PORT = 7070
"""The sidecar's SDK API port, on loopback (the operator's `api_port` default)."""
METRICS_PORT = 9097
"""The sidecar's /metrics, /healthz and /readyz port (the operator's `metrics_port` default)."""
DEFAULT_API = f"127.0.0.1:{API_PORT}"
DEFAULT_METRICS = f"0.0.0.0:{METRICS_PORT}"
DEFAULT_GRACE_SECONDS = 30
"""Kubernetes' default terminationGracePeriodSeconds: what a pod without one gets."""
DEFAULT_REGION = "us-east-1"
"""The S3 region when neither AWS_REGION, AWS_DEFAULT_REGION nor a Store's `region` names one."""
API_PREFIX = "/v1"
DEFAULT_REPLICA = "0"
DEFAULT_PROJECT = "default"
DEFAULT_STORE = "default"
DEFAULT_RUN_DIR = "/runsync"
