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
from runsync_testing import localkube, ports
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
    op.values = {"api_port": api, "metrics_port": metrics}
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
    "statefulset pod": (pod(name="llm-2", owners=owner("StatefulSet", "llm", "apps/v1"),
                            labels={"apps.kubernetes.io/pod-index": "2"}), "team-a/default/llm", "2"),
    "statefulset pod, ordinal only": (pod(name="llm-7", owners=owner("StatefulSet", "llm", "apps/v1")),
                                      "team-a/default/llm", "7"),
    "deployment pod": (pod(name="web-5d8f7b9c4-x7k2p", owners=owner("ReplicaSet", "web-5d8f7b9c4", "apps/v1"),
                           labels={"pod-template-hash": "5d8f7b9c4"}), "team-a/default/web", "0"),
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
    assert env[contract.ENV_MEMORY_LIMIT] == {"resourceFieldRef": {"resource": "limits.memory"}}
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


def test_pods_that_may_share_a_replica_are_warned(operator):
    deployment = pod(name="web-5d8f7b9c4-x7k2p", owners=owner("ReplicaSet", "web-5d8f7b9c4", "apps/v1"),
                     labels={"pod-template-hash": "5d8f7b9c4"}, grace=60)
    _, response = operator.patched(deployment)
    [warning] = response["warnings"]
    assert "Deployment 'web'" in warning and "runsync.dev/replica" in warning and "StatefulSet" in warning
    for alone in (pod(name="llm-2", owners=owner("StatefulSet", "llm", "apps/v1"), grace=60),
                  pod(owners=owner("Job", "bert-ft"), grace=60),
                  pod(owners=owner("ReplicaSet", "web-5d8f7b9c4", "apps/v1"), annotations={contract.REPLICA: "a"},
                      grace=60)):
        _, response = operator.patched(alone)
        assert not response.get("warnings"), alone["metadata"]


def qos_class(p: dict) -> str:
    """The pod's QoS class as the kubelet computes it (pkg/apis/core/helper/qos), after the API
    server's defaulting of a container's requests to its limits."""
    from kubernetes.utils import parse_quantity

    requests, limits, guaranteed = {}, {}, True
    for c in p["spec"]["containers"] + p["spec"].get("initContainers", []):
        res = c.get("resources") or {}
        lim = {k: parse_quantity(v) for k, v in (res.get("limits") or {}).items() if k in ("cpu", "memory")}
        req = {**lim, **{k: parse_quantity(v) for k, v in (res.get("requests") or {}).items() if k in ("cpu", "memory")}}
        for k, v in req.items():
            if v > 0:
                requests[k] = requests.get(k, 0) + v
        found = {k for k, v in lim.items() if v > 0}
        for k in found:
            limits[k] = limits.get(k, 0) + lim[k]
        guaranteed = guaranteed and found >= {"cpu", "memory"}
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def test_a_guaranteed_pod_stays_guaranteed(operator):
    sized = [{"name": "trainer", "image": "python:3.11",
              "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4000m", "memory": "16Gi"}}},
             {"name": "limits-only", "image": "busybox", "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]
    original = pod(containers=sized, init=[{"name": "fetch", "image": "busybox",
                                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}])
    assert qos_class(original) == "Guaranteed"
    patched, _ = operator.patched(copy.deepcopy(original))
    check_pod(patched)
    assert qos_class(patched) == "Guaranteed"
    for c in patched["spec"]["initContainers"][:2]:
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
    burstable = pod(containers=[{"name": "trainer", "image": "python:3.11",
                                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}])
    patched, _ = operator.patched(burstable)
    assert qos_class(patched) == "Burstable"
    assert "cpu" not in patched["spec"]["initContainers"][1]["resources"]["limits"]  # no CPU limit where not needed


COLLISIONS = {
    "host network": (dict(host_network=True), {}, "spec.hostNetwork: true"),
    "trainer mounts the run dir": (dict(mounts=[{"name": "data", "mountPath": "/runsync"}]), {},
                                   "runsync.dev/run-dir: container 'trainer' already mounts volume 'data' at '/runsync'"),
    "trainer mounts the named volume with a subPath": (
        dict(mounts=[{"name": "data", "mountPath": "/mnt/run", "subPath": "x"}]),
        {contract.VOLUME: "data", contract.RUN_DIR: "/mnt/run"}, "subPath"),
    "a volume named like ours": (dict(volumes=[{"name": "runsync-tmp", "emptyDir": {}}]), {},
                                 "spec.volumes: this pod already has a volume named 'runsync-tmp'"),
    "run dir on our tmp": (dict(), {contract.RUN_DIR: "/tmp"}, "runsync.dev/run-dir: '/tmp'"),
    "run dir inside our tmp": (dict(), {contract.RUN_DIR: "/tmp/run"}, "runsync.dev/run-dir: '/tmp/run'"),
    "run dir on our annotations": (dict(), {contract.RUN_DIR: "/etc/runsync"}, "runsync.dev/run-dir: '/etc/runsync'"),
    "run dir over the image": (dict(), {contract.RUN_DIR: "/usr"}, "runsync.dev/run-dir: '/usr'"),
    "a port of the sidecar": (dict(ports=["metrics"]), {}, "container 'trainer' declares port"),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_pods_that_collide_with_runsync_are_denied(operator, case):
    shape, annotations, message = COLLISIONS[case]
    trainer = {"name": "trainer", "image": "python:3.11", "volumeMounts": shape.get("mounts", [])}
    if shape.get("ports"):
        trainer["ports"] = [{"containerPort": operator.values["metrics_port"]}]
    p = pod(annotations=annotations, containers=[trainer],
            volumes=[{"name": "data", "emptyDir": {}}, *shape.get("volumes", [])])
    if shape.get("host_network"):
        p["spec"]["hostNetwork"] = True
    response = operator.review(p)["response"]
    assert response["allowed"] is False, case
    assert message in response["status"]["message"]
    assert "fix:" in response["status"]["message"]
    import urllib.request

    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    assert 'runsync_admission_denials_total{reason="conflict"}' in text


def test_what_does_not_collide_is_allowed(operator):
    mounted = {"name": "trainer", "image": "python:3.11",
               "volumeMounts": [{"name": "data", "mountPath": "/mnt/run"}, {"name": "ro", "mountPath": "/mnt/run/data"}]}
    p = pod(annotations={contract.VOLUME: "data", contract.RUN_DIR: "/mnt/run"}, containers=[mounted], grace=60,
            volumes=[{"name": "data", "emptyDir": {}}, {"name": "ro", "emptyDir": {}}])
    patched, response = operator.patched(p)
    check_pod(patched)
    [warning] = response["warnings"]
    assert "'/mnt/run/data'" in warning and "never uploaded" in warning


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
            local.wait_started(sidecar, side)  # the kubelet starts the app after the sidecar's startupProbe
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
        listed = s3_client.list_objects_v2(Bucket="runsync-e2e", Prefix=f"runs/{run_path}/0/objects/")
        assert listed.get("KeyCount", 0) > 0, f"nothing under runs/{run_path}/"
    assert "starting fresh" in outputs[0]
    assert "resumed from step 5" in outputs[1], outputs[1]


class _SlowStoreList(localkube.ApiStub):
    """An apiserver whose Store list reaches kopf only when the test says so (a big cluster, a slow
    apiserver): until then kopf serves admissions with an empty index."""

    def __init__(self, *args, **kwargs):
        self.gate = None
        super().__init__(*args, **kwargs)

    async def _stores(self, request):
        import asyncio

        if self.gate is None:
            self.gate = asyncio.Event()
        if request.query.get("watch") not in ("true", "1") and request.headers.get("User-Agent", "").startswith("kopf"):
            await self.gate.wait()
        return await super()._stores(request)


def test_the_operator_is_ready_only_once_its_store_index_is_filled(tmp_path, monkeypatch):
    """The chart's readinessProbe (/readyz on the metrics port): a new replica takes no
    admissions (the Service sends none) before it knows every Store, so none is denied
    'Store does not exist' for a Store that exists."""
    import threading
    import urllib.error
    import urllib.request

    stubs = []
    monkeypatch.setattr(localkube, "ApiStub", lambda *a, **k: stubs.append(_SlowStoreList(*a, **k)) or stubs[-1])
    metrics = ports.free_ports(1)[0]
    readyz = f"http://127.0.0.1:{metrics}/readyz"
    seen: list[tuple[int, str]] = []

    def readiness() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(readyz, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def watch_then_release():
        # Before the list arrives: not ready, saying why. Then let kopf's list through.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                seen.append(readiness())
                break
            except OSError:
                time.sleep(0.1)
        stub = stubs[0]
        stub.loop.call_soon_threadsafe(lambda: stub.gate.set() if stub.gate else None)

    def release_when_listed():
        while not stubs or stubs[0].gate is None:
            time.sleep(0.05)
        watch_then_release()

    thread = threading.Thread(target=release_when_listed, daemon=True)
    thread.start()
    op = Operator(tmp_path, [store(NS, "default", "b-ready", "http://127.0.0.1:9")],
                  values={"RUNSYNC_OPERATOR_METRICS_ADDR": f"127.0.0.1:{metrics}"})
    try:
        thread.join(30)
        assert seen, "the operator never answered /readyz"
        code, body = seen[0]
        assert code == 503, (code, body)
        assert "not ready" in body and "team-a/default" in body
        assert readiness()[0] == 200                   # Operator() returned: the index is filled
        assert op.review(pod())["response"]["allowed"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert "runsync_admissions_total" in text      # metrics still served on that port
    finally:
        op.stop()


class _WithLeases(localkube.ApiStub):
    """The API stub plus coordination.k8s.io Leases with the apiserver's optimistic concurrency
    (a replace with a stale resourceVersion is a 409), so two operators can share it."""

    LEASES = "/apis/coordination.k8s.io/v1/namespaces/"

    def __init__(self, *args, **kwargs):
        self.leases: dict[tuple[str, str], dict] = {}
        super().__init__(*args, **kwargs)

    async def _echo(self, request):
        import json as _json

        from aiohttp import web

        if not request.path.startswith(self.LEASES):
            return await super()._echo(request)
        parts = request.path[len(self.LEASES):].split("/")  # NS, "leases", [NAME]
        namespace = parts[0]
        if request.method == "GET":
            found = self.leases.get((namespace, parts[2]))
            return web.json_response(found, status=200) if found else \
                web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        body = _json.loads(await request.read())
        key = (namespace, body["metadata"]["name"])
        current = self.leases.get(key)
        if request.method == "POST" and current is not None:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        if request.method == "PUT" and (current is None or body["metadata"].get("resourceVersion")
                                        != current["metadata"]["resourceVersion"]):
            return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"}, status=409)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        body["metadata"]["namespace"] = namespace
        self.leases[key] = body
        return web.json_response(body, status=201 if request.method == "POST" else 200)


def test_one_replica_runs_the_store_handlers_and_all_serve_the_webhook(tmp_path, s3_server, monkeypatch):
    """Two operators (two replicas of the Deployment) against one API: the Store health check
    runs in the one that holds the Lease; both admit pods; when it stops, the other takes over."""
    stub = _WithLeases([store(NS, "default", "b-leader", s3_server.endpoint)],
                       {(NS, "s3-keys"): {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                                          "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}})
    monkeypatch.setattr(localkube, "ApiStub", lambda *a, **k: stub)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    values = {"RUNSYNC_OPERATOR_NAMESPACE": "runsync-system"}
    first = Operator(tmp_path / "a", [], values=values)

    def wait(what, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, what + "\n" + first.log.read_text()[-3000:]
            time.sleep(0.1)

    def secret_reads():
        return sum(1 for m, p, _ in stub.requests if m == "GET" and "/secrets/" in p)

    def holder():
        lease = next(iter(stub.leases.values()), None)
        return lease and lease["spec"].get("holderIdentity")

    try:
        wait("the first operator to check the Store", lambda: secret_reads() == 1)
        leader = holder()
        assert leader, stub.leases
        second = Operator(tmp_path / "b", [store(NS, "default", "b-leader", s3_server.endpoint)], values=values)
        try:
            # The second replica ran its resume handler too, as a follower: no second check.
            wait("the second operator to resume the Store",
                 lambda: "report_health" in second.log.read_text() and "succeeded" in second.log.read_text())
            assert secret_reads() == 1 and holder() == leader
            for op in (first, second):  # every replica serves the webhook from its own index
                assert op.review(pod())["response"]["allowed"]
            first.proc.terminate()          # the leader goes away (its cleanup releases the Lease)
            assert first.proc.wait(30) == 0
            wait("the second operator to take the Lease", lambda: holder() not in (None, "", leader))
        finally:
            second.stop()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()


def test_a_renewed_serving_certificate_is_served_without_a_restart(tmp_path, monkeypatch):
    """cert-manager renews the serving certificate into its Secret and the kubelet swaps the
    mounted files at once (a symlink to a new directory); the operator serves the new
    certificate without a restart, under the same CA, and its port never closes meanwhile:
    a refused connection is a refused admission (failurePolicy Fail), so a client that keeps
    connecting through the renewal is answered every time."""
    import os
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    monkeypatch.setattr(localkube.trustme, "CA", lambda: ca)
    mount = tmp_path / "tls"

    def secret_volume(version: str, cert, key_of=None) -> None:  # what the kubelet does on a Secret's update
        (mount / version).mkdir(parents=True)
        (key_of or cert).private_key_pem.write_to_path(str(mount / version / "tls.key"))
        cert.cert_chain_pems[0].write_to_path(str(mount / version / "tls.crt"))
        os.symlink(version, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    secret_volume("v1", ca.issue_cert("127.0.0.1", "localhost"))
    op = Operator(tmp_path, [], values={"RUNSYNC_OPERATOR_CERTFILE": str(mount / "..data" / "tls.crt"),
                                        "RUNSYNC_OPERATOR_PKEYFILE": str(mount / "..data" / "tls.key")})
    try:
        def served() -> bytes:
            with socket.create_connection(("127.0.0.1", op.port), timeout=5) as raw:
                with op.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return tls.getpeercert(binary_form=True)

        first = served()
        # renewed with another kind of key (RSA after ECDSA): one pair replaces the other whole
        renewed = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
        # First a pair that does not match (a hand-edited Secret): refused with a reason, and the
        # current certificate stays served.
        secret_volume("v2-wrong", renewed, key_of=ca.issue_cert("127.0.0.1"))
        deadline = time.monotonic() + 60
        while "cannot load the certificate" not in op.log.read_text():
            assert served() == first
            assert time.monotonic() < deadline, "a mismatched pair is not reported:\n" + op.log.read_text()[-3000:]
        assert served() == first
        assert "the current one is still served" in op.log.read_text()
        secret_volume("v2", renewed)
        wanted = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        assert wanted != first
        deadline = time.monotonic() + 60
        handshakes = 0
        while served() != wanted:  # back to back: a closed port in between raises here
            handshakes += 1
            assert time.monotonic() < deadline, "the renewed certificate is not served:\n" + op.log.read_text()[-3000:]
        assert handshakes > 10                             # the renewal was watched, not skipped over
        assert op.proc.poll() is None                      # the same process
        assert op.review(pod())["response"]["allowed"] is False  # and it still answers (no Store here)
    finally:
        op.stop()


class _TlsApi(localkube.ApiStub):
    """The API stub plus what the chart's own TLS mode uses: one Secret (get, create, replace with
    resourceVersion) and MutatingWebhookConfigurations (get, JSON patch)."""

    def __init__(self, *args, webhook_configs: dict | None = None, **kwargs):
        self.tls: dict[tuple[str, str], dict] = {}
        self.webhook_configs = webhook_configs or {}
        super().__init__(*args, **kwargs)

    async def _secret(self, request):
        from aiohttp import web

        found = self.tls.get((request.match_info["ns"], request.match_info["name"]))
        return web.json_response(found) if found else await super()._secret(request)

    async def _echo(self, request):
        import json as _json

        from aiohttp import web

        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[4] == "secrets" and request.method in ("POST", "PUT"):
            body = _json.loads(await request.read())
            key = (parts[3], body["metadata"]["name"])
            current = self.tls.get(key)
            stale = request.method == "PUT" and (current is None or body["metadata"].get("resourceVersion")
                                                  != current["metadata"]["resourceVersion"])
            if (request.method == "POST" and current is not None) or stale:
                return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"}, status=409)
            self.version += 1
            body["metadata"].update(namespace=parts[3], resourceVersion=str(self.version))
            self.tls[key] = body
            return web.json_response(body, status=201 if request.method == "POST" else 200)
        if "mutatingwebhookconfigurations" in parts:
            config = self.webhook_configs.get(parts[-1])
            if config is None:
                return web.json_response({"kind": "Status", "code": 404}, status=404)
            if request.method == "PATCH":
                import jsonpatch

                patched = jsonpatch.apply_patch(config, _json.loads(await request.read()))
                config.clear()
                config.update(patched)
            return web.json_response(config)
        return await super()._echo(request)


def _tls_values(workdir, hosts="127.0.0.1,rs-runsync.runsync-system.svc"):
    return {"RUNSYNC_OPERATOR_TLS_SECRET": "rs-runsync-webhook-tls", "RUNSYNC_OPERATOR_WEBHOOK_CONFIG": "rs-runsync",
            "RUNSYNC_OPERATOR_WEBHOOK_HOSTS": hosts, "RUNSYNC_OPERATOR_NAMESPACE": "runsync-system",
            "RUNSYNC_OPERATOR_CERTFILE": str(workdir / "tls" / "tls.crt"),
            "RUNSYNC_OPERATOR_PKEYFILE": str(workdir / "tls" / "tls.key")}


def _hook_config():
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "rs-runsync"}, "webhooks": [{
                "name": "inject.runsync.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"service": {"name": "rs-runsync", "namespace": "runsync-system",
                                             "path": "/inject-pods", "port": 443}}}]}


def _served(op) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", op.port), timeout=5) as raw:
        with op.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def test_the_charts_own_tls_keeps_its_ca_and_renews_the_serving_certificate_from_it(tmp_path, monkeypatch):
    """The chart renders no key material; the operator keeps the CA in a Secret. A serving
    certificate near its end is re-issued from the same CA (the caBundle does not change);
    another replica (or a restart) reuses what the Secret holds."""
    import base64
    import datetime
    import ssl

    import trustme
    from cryptography import x509

    ca = trustme.CA()
    monkeypatch.setattr(localkube.trustme, "CA", lambda: ca)   # what the test's client trusts
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=10)
    expiring = ca.issue_cert("127.0.0.1", not_after=soon)
    b64 = lambda blob: base64.b64encode(blob.bytes()).decode()  # noqa: E731
    stub = _TlsApi([], webhook_configs={"rs-runsync": _hook_config()})
    stub.tls[("runsync-system", "rs-runsync-webhook-tls")] = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "rs-runsync-webhook-tls", "namespace": "runsync-system", "resourceVersion": "1"},
        "data": {"ca.crt": b64(ca.cert_pem), "ca.key": b64(ca.private_key_pem),
                 "tls.crt": b64(expiring.cert_chain_pems[0]), "tls.key": b64(expiring.private_key_pem)}}
    monkeypatch.setattr(localkube, "ApiStub", lambda *a, **k: stub)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Operator(tmp_path / "a", [], values=_tls_values(tmp_path / "a"))  # verifies against `ca`
    try:
        secret = stub.tls[("runsync-system", "rs-runsync-webhook-tls")]["data"]
        assert (secret["ca.crt"], secret["ca.key"]) == (b64(ca.cert_pem), b64(ca.private_key_pem))
        renewed = base64.b64decode(secret["tls.crt"])
        assert renewed != expiring.cert_chain_pems[0].bytes()
        leaf = x509.load_pem_x509_certificate(renewed)
        assert leaf.not_valid_after_utc > soon + datetime.timedelta(days=300)
        assert _served(first) == ssl.PEM_cert_to_DER_cert(renewed.decode())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "rs-runsync.runsync-system.svc" in names.get_values_for_type(x509.DNSName)
        (hook,) = stub.webhook_configs["rs-runsync"]["webhooks"]
        assert hook["clientConfig"]["caBundle"] == b64(ca.cert_pem)     # the CA, not the leaf
        assert hook["clientConfig"]["service"]["path"] == "/inject-pods"  # the rest left alone
        writes = [m for m, p, _ in stub.requests if m in ("POST", "PUT") and "/secrets" in p]
        assert writes == ["PUT"]
        second = Operator(tmp_path / "b", [], values=_tls_values(tmp_path / "b"))
        try:
            assert _served(second) == _served(first)                   # the same pair, not a new one
            assert [m for m, p, _ in stub.requests if m in ("POST", "PUT") and "/secrets" in p] == ["PUT"]
        finally:
            first.proc.terminate()
            first.proc.wait(30)
            second.stop()                  # and the API stub they share
    finally:
        if first.proc.poll() is None:
            first.proc.kill()


def test_the_first_replica_makes_the_ca_and_the_next_one_takes_it(tmp_path):
    """No Secret yet: the first replica makes a CA and a serving certificate and stores them; the
    next one serves the same pair."""
    import kubernetes
    from cryptography import x509

    from runsync_operator import servingcert

    stub = _TlsApi([])
    try:
        cfg = kubernetes.client.Configuration()
        cfg.host = f"http://127.0.0.1:{stub.port}"
        core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(cfg))
        hosts = ["rs-runsync.runsync-system.svc"]
        keepers = [servingcert.Keeper(core, "runsync-system", "tls", hosts, tmp_path / n / "tls.crt",
                                      tmp_path / n / "tls.key") for n in ("a", "b")]
        made = keepers[0].ensure()
        assert [m for m, p, _ in stub.requests if m in ("POST", "PUT")] == ["POST"]
        taken = keepers[1].ensure()
        assert taken == made and [m for m, p, _ in stub.requests if m in ("POST", "PUT")] == ["POST"]
        assert (tmp_path / "b" / "tls.crt").read_bytes() == made.cert
        ca = x509.load_pem_x509_certificate(made.ca_cert)
        leaf = x509.load_pem_x509_certificate(made.cert)
        leaf.verify_directly_issued_by(ca)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert oct((tmp_path / "a" / "tls.key").stat().st_mode & 0o777) == "0o600"
    finally:
        stub.stop()


class _SecretsForbidden(localkube.ApiStub):
    """The apiserver as seen by an operator that was granted no Secret (the chart's default)."""

    async def _secret(self, request):
        from aiohttp import web

        if request.match_info["name"] != "s3-keys":
            return await super()._secret(request)  # 404: it does not exist
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                                  "reason": "Forbidden", "message": f"secrets \"{request.match_info['name']}\" is "
                                  "forbidden: User \"system:serviceaccount:runsync-system:rs-runsync\" cannot get "
                                  "resource \"secrets\""}, status=403)


def test_a_store_whose_secret_the_operator_may_not_read_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(localkube, "ApiStub", _SecretsForbidden)
    op = Operator(tmp_path, [store(NS, "default", "no-access", "http://127.0.0.1:9", secret="s3-keys"),
                             store(NS, "gone", "no-access", "http://127.0.0.1:9", secret="missing-keys")],
                  secrets={})
    try:
        def ready(name):
            status = op.stub.stores[(NS, name)].get("status") or {}
            return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)

        deadline = time.monotonic() + 60
        while not (ready("default") and ready("gone")) and time.monotonic() < deadline:
            time.sleep(0.2)
        condition = ready("default")
        assert condition is not None, op.log.read_text()[-3000:]
        assert condition["status"] == "Unknown" and condition["reason"] == "SecretAccessNotGranted"
        assert "may not read Secret 's3-keys' in namespace 'team-a'" in condition["message"]
        assert "storeHealth.secretNamespaces" in condition["message"]
        assert "Audit-Id" not in condition["message"] and "HTTP response" not in condition["message"]
        gone = ready("gone")
        assert gone["status"] == "False" and gone["reason"] == "CredentialsUnreadable"
        assert "Secret 'missing-keys' does not exist in namespace 'team-a'" in gone["message"]
        # Handled, not retried: one status patch per Store, and the operator keeps serving.
        patches = [p for m, p, _ in op.stub.requests if m == "PATCH" and p.endswith("/stores/default/status")]
        assert len(patches) == 1, patches
        assert op.review(pod())["response"]["allowed"]
    finally:
        op.stop()


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
