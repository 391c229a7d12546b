"""Owner → (run, replica): replicas of one run never collide, a replaced pod keeps its name."""

import pytest

from runsync_operator import identity


def pod(name="", owner=None, labels=None, annotations=None, generate_name=None):
    meta = {"labels": labels or {}, "annotations": annotations or {}}
    if name:
        meta["name"] = name
    if generate_name:
        meta["generateName"] = generate_name
    if owner:
        kind, owner_name = owner
        meta["ownerReferences"] = [{"apiVersion": "x/v1", "kind": kind, "name": owner_name, "uid": "u",
                                    "controller": True}]
    return {"metadata": meta, "spec": {"containers": []}}


# (case, pod, run and replica annotations, expected run, expected replica, warned that pods share it)
CASES = [
    ("job", pod(owner=("Job", "bert"), generate_name="bert-"), None, None, "bert", "0", False),
    ("indexed job", pod(owner=("Job", "sweep"), labels={identity.JOB_INDEX: "3"}), None, None, "sweep", "3", False),
    ("statefulset, index label", pod("web-2", ("StatefulSet", "web"), {identity.POD_INDEX: "2"}), None, None,
     "web", "2", False),
    ("statefulset, name ordinal only", pod("web-11", ("StatefulSet", "web")), None, None, "web", "11", False),
    ("statefulset named with dashes", pod("llm-ft-0", ("StatefulSet", "llm-ft")), None, None, "llm-ft", "0", False),
    ("deployment's replicaset", pod(owner=("ReplicaSet", "web-5d8f7b9c4"), labels={identity.TEMPLATE_HASH: "5d8f7b9c4"},
                                    generate_name="web-5d8f7b9c4-"), None, None, "web", "0", True),
    ("next rollout, same run", pod(owner=("ReplicaSet", "web-77fc6d8b9"), labels={identity.TEMPLATE_HASH: "77fc6d8b9"}),
     None, None, "web", "0", True),
    ("bare replicaset", pod(owner=("ReplicaSet", "rs-a")), None, None, "rs-a", "0", True),
    ("daemonset", pod(owner=("DaemonSet", "agent")), None, None, "agent", "0", True),
    ("unknown owner", pod(owner=("Workflow", "wf-1")), None, None, "wf-1", "0", True),
    ("deployment, replica set per pod", pod(owner=("ReplicaSet", "web-5d8f7b9c4"),
                                            labels={identity.TEMPLATE_HASH: "5d8f7b9c4"}),
     None, "a", "web", "a", False),
    ("statefulset, run annotation", pod("web-1", ("StatefulSet", "web")), "r", None, "r", "1", False),
    ("kubeflow worker", pod(owner=("PyTorchJob", "llama"), labels={identity.KUBEFLOW_JOB: "llama",
                            identity.KUBEFLOW_TYPE: "Worker", identity.KUBEFLOW_INDEX: "2"}),
     None, None, "llama", "worker-2", False),
    ("jobset", pod(owner=("Job", "big-t-0"), labels={identity.JOBSET_NAME: "big", identity.JOBSET_REPLICATED_JOB: "t",
                   identity.JOBSET_JOB_INDEX: "0", identity.JOB_INDEX: "5"}), None, None, "big", "t-0-5", False),
    ("bare pod", pod("notebook-1"), None, None, "notebook-1", "0", False),
]


@pytest.mark.parametrize("case,p,run,replica,want_run,want_replica,warned", CASES, ids=[c[0] for c in CASES])
def test_owner_gives_run_and_replica(case, p, run, replica, want_run, want_replica, warned):
    who = identity.of(p, run, replica)
    assert (who.run, who.replica) == (want_run, want_replica)
    assert (who.shared is not None) == warned
    if warned:
        assert "runsync.dev/replica" in who.shared and "StatefulSet" in who.shared and repr(want_run) in who.shared
