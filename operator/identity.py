"""Which run and replica a pod belongs to, from its owner and labels: stable across replacement.

| owner | run | replica |
|---|---|---|
| Job (Indexed: completion index) | the Job's name | the completion index, else `0` |
| JobSet | the JobSet's name | `<replicated job>-<job index>-<completion index>` |
| Kubeflow PyTorchJob (and kin) | the job's name | `<replica type>-<replica index>` (`master-0`, `worker-2`) |
| any other owner | the owner's name | `0` |
| none | the pod's name (or generateName) | `0` |

`runsync.dev/run` and `runsync.dev/replica` override.
"""

from __future__ import annotations

JOB_INDEX = "batch.kubernetes.io/job-completion-index"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
JOBSET_REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
JOBSET_JOB_INDEX = "jobset.sigs.k8s.io/job-index"
KUBEFLOW_JOB = "training.kubeflow.org/job-name"
KUBEFLOW_TYPE = "training.kubeflow.org/replica-type"
KUBEFLOW_INDEX = "training.kubeflow.org/replica-index"


def run_and_replica(pod: dict, run: str | None, replica: str | None) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    index = labels.get(JOB_INDEX) or annotations.get(JOB_INDEX)
    if JOBSET_NAME in labels:
        found_run = labels[JOBSET_NAME]
        found_replica = f"{labels.get(JOBSET_REPLICATED_JOB, 'job')}-{labels.get(JOBSET_JOB_INDEX, '0')}-{index or '0'}"
    elif KUBEFLOW_JOB in labels:
        found_run = labels[KUBEFLOW_JOB]
        found_replica = f"{labels.get(KUBEFLOW_TYPE, 'worker').lower()}-{labels.get(KUBEFLOW_INDEX, '0')}"
    elif controller is not None:
        found_run = controller.get("name", "")
        found_replica = index if controller.get("kind") == "Job" and index is not None else "0"
    else:
        found_run = meta.get("name") or (meta.get("generateName") or "").rstrip("-.")
        found_replica = "0"
    return run or found_run, replica or found_replica
