"""The real operator (`kopf run`) over HTTPS: injected pods are valid, bad ones denied, and what
the patched pod spec says actually runs: restore-init and the sidecar, against SeaweedFS."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest

from runsync import config, contract
from runsync_testing import ports
from runsync_testing.localkube import Operator, store
from runsync_testing.localpod import LocalPod
from runsync_operator import stores as store_handlers

pytestmark = [pytest.mark.s3, pytest.mark.slow]
NS = "team-a"
TRAINER = str(Path(__file__).parent.parent / "examples" / "toy_trainer.py")


@pytest.fixture(scope="module")
def operator(tmp_path_factory, s3_server):
    work = tmp_path_factory.mktemp("operator")
    api, metrics = ports.free_ports(2)
    op = Operator(work, [store(NS, "default", "runsync-e2e", s3_server.endpoint),
                         store(NS, "other", "runsync-other", None, secret=None)],
                  values={"RUNSYNC_OPERATOR_API_PORT": str(api), "RUNSYNC_OPERATOR_METRICS_PORT": str(metrics)})
    yield op
    op.stop()


def pod(name="trainer-x7k2p", annotations=None, labels=None, owners=None, containers=None, volumes=None,
        grace=None, init=None):
    # The trainer is not root, as in most clusters: UID 1000 (LocalPod runs it as that user).
    spec = {"containers": containers or [{"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"],
                                          "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}],
            "restartPolicy": "Never"}
    if volumes:
        spec["volumes"] = volumes
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if init:
        spec["initContainers"] = init
    meta = {"name": name, "namespace": NS, "labels": {contract.INJECT_LABEL: "true", **(labels or {})},
            "annotations": {contract.SAVE: "ckpt/**:live", **(annotations or {})}}
    if owners:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def owner(kind, name, api="batch/v1"):
    return [{"apiVersion": api, "kind": kind, "name": name, "uid": "1234", "controller": True}]


def env_of(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def check_pod(p: dict) -> None:
    """What kubernetes-validate cannot see: references and names that must line up."""
    for version in ("1.29", "1.33"):
        kubernetes_validate.validate(p, version, strict=True)
    spec = p["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    all_containers = spec.get("initContainers", []) + spec["containers"]
    names = [c["name"] for c in all_containers]
    assert len(names) == len(set(names)), names
    assert len(volumes) == len(spec.get("volumes", []))
    for c in all_containers:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m)
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), (c["name"], paths)
    init = spec["initContainers"]
    assert init[0]["name"] == "runsync-restore" and "restartPolicy" not in init[0]
    assert init[1]["name"] == "runsync-sidecar" and init[1]["restartPolicy"] == "Always"
    for c in init[:2]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["allowPrivilegeEscalation"]
        keys = {e["name"]: e for e in c["env"]}
        assert "value" not in keys.get("AWS_SECRET_ACCESS_KEY", {"valueFrom": 1}), "a secret copied into the spec"
    assert p["metadata"]["annotations"][contract.STATUS] == contract.STATUS_INJECTED


CASES = {
    "job pod": (pod(owners=owner("Job", "bert-ft"), labels={"batch.kubernetes.io/job-name": "bert-ft"}),
                "team-a/default/bert-ft", "0"),
    "indexed job pod": (pod(owners=owner("Job", "sweep"), labels={"batch.kubernetes.io/job-completion-index": "3"},
                            annotations={contract.PROJECT: "nlp"}), "team-a/nlp/sweep", "3"),
    "pytorchjob master": (pod(owners=owner("PyTorchJob", "llama", "kubeflow.org/v1"), labels={
        "training.kubeflow.org/job-name": "llama", "training.kubeflow.org/replica-type": "Master",
        "training.kubeflow.org/replica-index": "0"}), "team-a/default/llama", "master-0"),
    "pytorchjob worker": (pod(owners=owner("PyTorchJob", "llama", "kubeflow.org/v1"), labels={
        "training.kubeflow.org/job-name": "llama", "training.kubeflow.org/replica-type": "Worker",
        "training.kubeflow.org/replica-index": "2"}), "team-a/default/llama", "worker-2"),
    "jobset pod": (pod(owners=owner("Job", "big-trainers-0"), labels={
        "jobset.sigs.k8s.io/jobset-name": "big", "jobset.sigs.k8s.io/replicatedjob-name": "trainers",
        "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": "5"}),
        "team-a/default/big", "trainers-0-5"),
    "bare pod": (pod(name="notebook-1"), "team-a/default/notebook-1", "0"),
    "run annotation": (pod(owners=owner("Job", "x"), annotations={contract.RUN: "fixed-run", contract.REPLICA: "r7"}),
                       "team-a/default/fixed-run", "r7"),
    "pvc run dir": (pod(annotations={contract.VOLUME: "scratch", contract.RUN_DIR: "/mnt/run"},
                        volumes=[{"name": "scratch", "persistentVolumeClaim": {"claimName": "ckpts"}}]),
                    "team-a/default/trainer-x7k2p", "0"),
    "several containers": (pod(annotations={contract.CONTAINERS: "trainer"}, containers=[
        {"name": "trainer", "image": "python:3.11"}, {"name": "logger", "image": "fluent-bit"}],
        init=[{"name": "fetch-data", "image": "busybox"}]), "team-a/default/trainer-x7k2p", "0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_injected_pods_are_valid_and_named_right(operator, case):
    original, run_path, replica = CASES[case]
    patched, response = operator.patched(copy.deepcopy(original))
    check_pod(patched)
    sidecar = patched["spec"]["initContainers"][1]
    env = env_of(sidecar)
    assert env[contract.ENV_RUN_PATH] == run_path and env[contract.ENV_REPLICA] == replica
    assert env[contract.ENV_STORE] == "s3://runsync-e2e/runs"
    apps = {c["name"]: c for c in patched["spec"]["containers"]}
    cfg = config.parse(original["metadata"]["annotations"])
    for name, c in apps.items():
        wanted = cfg.containers is None or name in cfg.containers
        assert (contract.ENV_RUN_PATH in env_of(c)) == wanted, name
        assert any(m["mountPath"] == cfg.run_dir for m in c.get("volumeMounts", [])) == wanted, name
    if case == "pvc run dir":
        assert sidecar["volumeMounts"][0] == {"name": "scratch", "mountPath": "/mnt/run"}
        assert not [v for v in patched["spec"]["volumes"] if v["name"] == "runsync-run"]
    if case == "several containers":
        assert [c["name"] for c in patched["spec"]["initContainers"]] == ["runsync-restore", "runsync-sidecar",
                                                                         "fetch-data"]
    assert any("terminationGracePeriodSeconds" in w for w in response.get("warnings", []))


def test_an_injected_pod_is_left_alone(operator):
    patched, _ = operator.patched(pod())
    again = operator.review(patched)["response"]
    assert again["allowed"] and "patch" not in again
    unlabeled = pod()
    del unlabeled["metadata"]["labels"][contract.INJECT_LABEL]
    assert "patch" not in operator.review(unlabeled)["response"]


DENIALS = [
    ({contract.SAVE: "ckpt/*.pt:livee"}, 'runsync.dev/save: unknown policy "livee" in "ckpt/*.pt:livee"; expected live, now or end'),
    ({contract.IGNORE: "../x"}, "runsync.dev/ignore: bad glob"),
    ({contract.RESTORE_FROM: "team-b/proj/run"}, "runsync.dev/restore-from: invalid run \"team-b/proj/run\""),
    ({contract.STORE: "missing"}, "runsync.dev/store: Store 'missing' does not exist in namespace 'team-a'"),
    ({contract.VOLUME: "nope"}, "runsync.dev/volume: volume 'nope' is not a volume of this pod"),
    ({contract.CONTAINERS: "ghost"}, "runsync.dev/containers: no container named 'ghost'"),
    ({contract.RUN_DIR: "relative"}, "runsync.dev/run-dir: invalid mount path"),
    ({contract.RESTORE_STRICT: "maybe"}, "runsync.dev/restore-strict: invalid value \"maybe\""),
    ({"runsync.dev/sav": "x"}, "did you mean runsync.dev/save?"),
]


@pytest.mark.parametrize("annotations,message", DENIALS, ids=[next(iter(a)) for a, _ in DENIALS])
def test_bad_pods_are_denied_with_a_clear_message(operator, annotations, message):
    response = operator.review(pod(annotations=annotations))["response"]
    assert response["allowed"] is False
    assert message in response["status"]["message"]
    assert response["status"]["code"] == 400


def test_grace_period_is_raised_when_configured(tmp_path, s3_server):
    op = Operator(tmp_path, [store(NS, "default", "b-grace", s3_server.endpoint)],
                  values={"RUNSYNC_OPERATOR_RAISE_GRACE": "true", "RUNSYNC_OPERATOR_GRACE_FLOOR": "120"})
    try:
        patched, response = op.patched(pod(grace=10))
        assert patched["spec"]["terminationGracePeriodSeconds"] == 120
        assert env_of(patched["spec"]["initContainers"][1])[contract.ENV_GRACE] == "120"
        assert any("raised terminationGracePeriodSeconds from 10 to 120" in w for w in response["warnings"])
        ok, response = op.patched(pod(grace=300))
        assert ok["spec"]["terminationGracePeriodSeconds"] == 300 and not response.get("warnings")
    finally:
        op.stop()


def test_metrics_count_admissions_and_denials(operator):
    import urllib.request

    operator.review(pod(annotations={contract.SAVE: "x:livee"}))
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    assert 'runsync_admissions_total{result="injected"}' in text
    assert 'runsync_admission_denials_total{reason="annotation"}' in text
    assert "runsync_admission_seconds_count" in text


# ------------------------------------------------------------- run what the pod spec says

def test_the_patched_pod_runs_and_its_replacement_resumes(operator, s3_server, s3_client, tmp_path, pod_root):
    """Run what the patched spec says (LocalPod): a change in the sidecar's CLI, env or paths
    that the operator does not follow fails here."""
    if "runsync-e2e" not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]:
        s3_client.create_bucket(Bucket="runsync-e2e")
    secrets = {"s3-keys": {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                           "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}}
    job = owner("Job", f"e2e-{int(time.time())}")
    outputs = []
    for attempt, name in enumerate(["e2e-pod-aaaaa", "e2e-pod-bbbbb"]):
        patched, _ = operator.patched(pod(name=name, owners=job, grace=60))
        local = LocalPod(patched, pod_root / name, secrets)
        restore = local.container("runsync-restore")
        init = subprocess.run(local.argv(restore), env=local.env(restore), capture_output=True, text=True,
                              timeout=120)
        assert init.returncode == 0, init.stdout + init.stderr
        sidecar = local.container("runsync-sidecar")
        side = subprocess.Popen(local.argv(sidecar), env=local.env(sidecar),
                                stdout=open(tmp_path / f"{name}-sidecar.log", "wb"), stderr=subprocess.STDOUT)
        try:
            app = local.container("trainer")
            app_env = local.env(app)
            assert Path(app_env[contract.ENV_DIR]) == Path(local.paths["runsync-run"])
            trainer = subprocess.run(local.command(app, [
                sys.executable, TRAINER, "--steps", str(5 * (attempt + 1)), "--sleep", "0.05", "--size", "20000",
                "--flush-log", str(Path(local.paths["runsync-run"]) / ".flushed")]),
                env=app_env, capture_output=True, text=True, timeout=120)
            assert trainer.returncode == 0, trainer.stderr
            outputs.append(trainer.stdout)
            # The app container exited: the kubelet runs the sidecar's preStop, then SIGTERM.
            hook = subprocess.run(local.pre_stop(sidecar), env=local.env(sidecar), capture_output=True, text=True,
                                  timeout=30)
            assert hook.returncode == 0, hook.stderr
            side.send_signal(signal.SIGTERM)
            assert side.wait(60) == 0
        finally:
            if side.poll() is None:
                side.kill()
        run_path = local.env(sidecar)[contract.ENV_RUN_PATH]
        listed = s3_client.list_objects_v2(Bucket="runsync-e2e", Prefix=f"runs/{run_path}/0/files/ckpt/")
        assert listed.get("KeyCount", 0) > 0, f"nothing under runs/{run_path}/"
    assert "starting fresh" in outputs[0]
    assert "resumed from step 5" in outputs[1], outputs[1]


def test_store_health_conditions_with_a_real_server(s3_server, s3_client):
    s3_client.create_bucket(Bucket="health-ok")
    creds = (s3_server.credentials.access_key, s3_server.credentials.secret_key)
    ok = store_handlers.check_health(store_handlers.StoreSpec("health-ok", endpoint=s3_server.endpoint), creds)
    assert ok["status"] == "True" and ok["reason"] == "BucketReachable"
    missing = store_handlers.check_health(store_handlers.StoreSpec("no-such-bucket", endpoint=s3_server.endpoint), creds)
    assert missing["status"] == "False" and "does not exist" in missing["message"]
    wrong = store_handlers.check_health(store_handlers.StoreSpec("health-ok", endpoint=s3_server.endpoint),
                                        (creds[0], "wrong"))
    assert wrong["status"] == "False" and "SignatureDoesNotMatch" in wrong["message"]
    assert "wrong" not in wrong["message"].replace("is wrong", "")
    down = store_handlers.check_health(store_handlers.StoreSpec("health-ok", endpoint="http://127.0.0.1:9"), creds)
    assert down["status"] == "False" and "cannot reach" in down["message"]
