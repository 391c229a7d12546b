"""Which run and replica a pod belongs to, from its owner and labels: stable across replacement.

| owner | run | replica |
|---|---|---|
| Job (Indexed: completion index) | the Job's name | the completion index, else `0` |
| JobSet | the JobSet's name | `<replicated job>-<job index>-<completion index>` |
| Kubeflow PyTorchJob (and kin) | the job's name | `<replica type>-<replica index>` (`master-0`, `worker-2`) |
| StatefulSet | the StatefulSet's name | the pod's index (`apps.kubernetes.io/pod-index`, else the name's ordinal) |
| ReplicaSet of a Deployment | the Deployment's name (the ReplicaSet's less its `pod-template-hash`) | `0` |
| any other owner | the owner's name | `0` |
| none | the pod's name (or generateName) | `0` |

`runsync.dev/run` and `runsync.dev/replica` override. Owners whose pods run side by side with
nothing to tell them apart (a Deployment's ReplicaSet, a DaemonSet, an unknown kind) get one
replica for all their pods: two live at once would fight over its writer lease, so admission
warns unless `runsync.dev/replica` was set.
"""

from __future__ import annotations

import dataclasses

from runsync import contract

JOB_INDEX = "batch.kubernetes.io/job-completion-index"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
JOBSET_REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
JOBSET_JOB_INDEX = "jobset.sigs.k8s.io/job-index"
KUBEFLOW_JOB = "training.kubeflow.org/job-name"
KUBEFLOW_TYPE = "training.kubeflow.org/replica-type"
KUBEFLOW_INDEX = "training.kubeflow.org/replica-index"
POD_INDEX = "apps.kubernetes.io/pod-index"
"""A StatefulSet pod's ordinal (Kubernetes 1.28+); older clusters: the `-N` end of its name."""
TEMPLATE_HASH = "pod-template-hash"
"""A Deployment's ReplicaSet is named `<deployment>-<hash>`; its pods carry the hash."""

# Owners whose pods are one at a time or indexed: one replica per pod, no warning.
INDEXED_KINDS = ("Job", "StatefulSet")


@dataclasses.dataclass(frozen=True)
class Identity:
    run: str
    replica: str
    shared: str | None = None
    """Why several live pods may get this same replica (an admission warning), or None."""


def of(pod: dict, run: str | None, replica: str | None) -> Identity:
    """The pod's run and replica; `run` and `replica` are the annotations' overrides (or None)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    index = labels.get(JOB_INDEX) or annotations.get(JOB_INDEX)
    shared = None
    if JOBSET_NAME in labels:
        found_run = labels[JOBSET_NAME]
        found_replica = f"{labels.get(JOBSET_REPLICATED_JOB, 'job')}-{labels.get(JOBSET_JOB_INDEX, '0')}-{index or '0'}"
    elif KUBEFLOW_JOB in labels:
        found_run = labels[KUBEFLOW_JOB]
        found_replica = f"{labels.get(KUBEFLOW_TYPE, 'worker').lower()}-{labels.get(KUBEFLOW_INDEX, '0')}"
    elif controller is not None:
        kind, found_run = controller.get("kind", ""), controller.get("name", "")
        found_replica = "0"
        if kind == "Job" and index is not None:
            found_replica = index
        elif kind == "StatefulSet":
            found_replica = labels.get(POD_INDEX) or _ordinal(meta.get("name") or "", found_run) or "0"
        elif kind == "ReplicaSet" and labels.get(TEMPLATE_HASH) and found_run.endswith("-" + labels[TEMPLATE_HASH]):
            found_run = found_run[:-len(labels[TEMPLATE_HASH]) - 1]  # a rollout keeps the Deployment's run
            kind = "Deployment"
        if kind not in INDEXED_KINDS:
            shared = _shared_message(kind, found_run)
    else:
        found_run = meta.get("name") or (meta.get("generateName") or "").rstrip("-.")
        found_replica = "0"
    return Identity(run or found_run, replica or found_replica, None if replica else shared)


def _ordinal(pod_name: str, statefulset: str) -> str | None:
    tail = pod_name[len(statefulset) + 1:] if pod_name.startswith(statefulset + "-") else ""
    return tail if tail.isdigit() else None


def _shared_message(kind: str, name: str) -> str:
    how = ("run one pod at a time (replicas: 1, strategy: Recreate), " if kind == "Deployment" else "")
    return (f"every pod of {kind} {name!r} gets replica '0' of one run: two live at once (more than one "
            f"replica, or a rollout's surge) contend for its writer lease, and the newer fences the older "
            f"off, whose later checkpoints are then never committed; fix: {how}set {contract.REPLICA} per "
            "pod, or run the pods as an Indexed Job or a StatefulSet (one replica each)")
