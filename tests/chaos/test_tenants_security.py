"""Tenants and what ships: a pod of namespace A cannot name runs, Stores or `restore-from` of
namespace B; the injected containers and the operator run restricted; the operator's RBAC allows
what it really does and no more; no credential appears in anything a run emits."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness import render_chart, wait_for
from runsync import contract
from runsync_testing import localkube, localpod

pytestmark = [pytest.mark.s3, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
TRAINER = str(ROOT / "examples" / "toy_trainer.py")
WRONG_SECRET = "wrong-secret-4f2a9c7d1e"


@pytest.fixture(scope="module")
def operator(tmp_path_factory, s3_server):
    keys = {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}
    op = localkube.Operator(tmp_path_factory.mktemp("op"), [
        localkube.store("team-a", "default", "tenants", s3_server.endpoint),
        localkube.store("team-b", "default", "tenants", s3_server.endpoint),
        localkube.store("team-b", "store-b", "tenants", s3_server.endpoint)],
        secrets={("team-a", "s3-keys"): keys, ("team-b", "s3-keys"): keys})
    yield op
    op.stop()


def pod(namespace="team-a", name="trainer-abcde", annotations=None, job="job-1"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": namespace, "labels": {contract.INJECT_LABEL: "true"},
        "annotations": {contract.SAVE: "ckpt/**:live", **(annotations or {})},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "1", "controller": True}]},
        "spec": {"terminationGracePeriodSeconds": 60,
                 "containers": [{"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"]}]}}


CROSS_NAMESPACE = {
    "a Store of namespace B": {contract.STORE: "store-b"},
    "a Store named with its namespace": {contract.STORE: "team-b/default"},
    "restore-from a run of namespace B": {contract.RESTORE_FROM: "team-b/proj/run"},
    "restore-from climbing out": {contract.RESTORE_FROM: "../team-b/proj/run"},
    "a run climbing out": {contract.RUN: "../../team-b/proj/run"},
    "a run with a slash": {contract.RUN: "team-b/run"},
    "a project climbing out": {contract.PROJECT: "../team-b"},
}


@pytest.mark.parametrize("label", list(CROSS_NAMESPACE))
def test_a_pod_cannot_reach_another_namespace(operator, tally, label):
    response = operator.review(pod(annotations=CROSS_NAMESPACE[label]))["response"]
    refused = not response["allowed"] and response["status"]["code"] == 400
    tally.record("cross-namespace attempts", "every one refused", 1, 0 if refused else 1)
    assert refused, response
    key = next(iter(CROSS_NAMESPACE[label]))
    assert key in response["status"]["message"] or "Store" in response["status"]["message"]


def test_the_same_names_in_namespace_b_stay_in_namespace_b(operator):
    patched, _ = operator.patched(pod(namespace="team-b", annotations={contract.STORE: "store-b"}))
    env = {e["name"]: e.get("value") for c in patched["spec"]["initContainers"] for e in c.get("env", [])}
    assert env[contract.ENV_RUN_PATH].split("/")[0] == "team-b"


def restricted(sc: dict) -> list[str]:
    wrong = []
    if sc.get("runAsNonRoot") is not True or not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
        wrong.append("not non-root")
    if sc.get("readOnlyRootFilesystem") is not True:
        wrong.append("root filesystem writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        wrong.append("privilege escalation allowed")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get("add"):
        wrong.append("capabilities kept")
    return wrong


def test_injected_containers_run_restricted(operator, tally):
    patched, _ = operator.patched(pod())
    ours = [c for c in patched["spec"]["initContainers"] if c["name"].startswith("runsync-")]
    assert {c["name"] for c in ours} == {"runsync-restore", "runsync-sidecar"}
    wrong = {c["name"]: restricted(c["securityContext"]) for c in ours if restricted(c["securityContext"])}
    tally.record("security: restricted containers", "non-root, read-only root, no capabilities", 2, len(wrong))
    assert not wrong, wrong


def test_the_chart_runs_the_operator_restricted(tally):
    (deployment,) = [d for d in render_chart() if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    wrong = {c["name"]: restricted(c["securityContext"]) for c in spec["containers"] + spec.get("initContainers", [])
             if restricted(c["securityContext"])}
    tally.record("security: restricted containers", "non-root, read-only root, no capabilities",
                 len(spec["containers"]), len(wrong))
    assert not wrong, wrong


def verb_of(method: str, path_qs: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource, verb) of a request to the API server; None for discovery."""
    path, _, query = path_qs.partition("?")
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /api, /apis, /apis/GROUP/VERSION: discovery, open to every authenticated user
    if rest and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = "/".join([rest[0]] + rest[2:3])  # resource, or resource/subresource
    named = len(rest) > 1
    if method == "GET":
        verb = "watch" if re.search(r"(^|&)watch=(true|1)", query) else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return group, resource, verb


def test_rbac_allows_what_the_operator_does_and_no_more(operator, tally):
    operator.review(pod())  # admission itself makes no API call
    # the Store handlers run at start: finalizer, Secret read, S3 check, Ready status, event
    wait_for(lambda: sum("/status" in p for m, p, _ in operator.stub.requests if m == "PATCH") >= 3, timeout=60,
             what="the health handler to report each Store")
    used = {v for m, p, _ in operator.stub.requests if (v := verb_of(m, p))}
    # This operator's stub serves the Stores' Secrets: the chart as installed to read them everywhere.
    docs = render_chart(["--set", "storeHealth.readSecrets=true"])
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]  # Roles: the operator's namespace
    granted = {(g, r, v) for role in roles for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    # What each verb is for; the test fails if the chart grants anything not on this list.
    needed = {
        ("runsync.dev", "stores", "list"): "kopf's index of Stores, read at admission",
        ("runsync.dev", "stores", "watch"): "the same index, kept current",
        ("runsync.dev", "stores", "get"): "kopf re-reads a Store before patching it",
        ("runsync.dev", "stores", "patch"): "kopf's progress annotations on a Store",
        ("runsync.dev", "stores/status", "get"): "reading the Ready condition it writes",
        ("runsync.dev", "stores/status", "patch"): "the Ready condition",
        ("", "events", "create"): "events on a Store (core API)",
        ("events.k8s.io", "events", "create"): "events on a Store (events API)",
        ("batch", "cronjobs", "get"): "a Store's gc CronJob, compared with its retention",
        ("batch", "cronjobs", "create"): "the same CronJob, made when a Store has retention",
        ("batch", "cronjobs", "update"): "the same CronJob, when the retention changes",
        ("batch", "cronjobs", "delete"): "the same CronJob, when the retention is removed",
        ("", "secrets", "get"): "the Store health check reads the Secret a Store names",
        ("", "pods", "list"): "injected pods (label selector), for their image digests",
        ("", "pods", "watch"): "the same pods, kept current",
        ("", "pods", "patch"): "runsync.dev/images on an injected pod, once the kubelet reports imageIDs",
        ("coordination.k8s.io", "leases", "get"): "the Lease that picks the replica running the Store handlers",
        ("coordination.k8s.io", "leases", "create"): "the same Lease, made by the first replica",
        ("coordination.k8s.io", "leases", "update"): "the same Lease, renewed or taken over",
        ("", "secrets", "create"): "the chart's own TLS: the webhook's CA, kept in a Secret (made once)",
        ("", "secrets", "update"): "the same Secret, when the serving certificate is renewed",
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"): "the caBundle, read",
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"): "the caBundle, set to the CA",
    }
    assert not any("*" in x for t in granted for x in t), "wildcards in the operator's roles"
    unused_grants = granted - set(needed)
    missing = used - granted
    tally.record("security: RBAC", "least privilege (grants == needed list, every call granted)",
                 len(used), len(missing) + len(unused_grants), f"{len(used)} distinct calls seen")
    assert not unused_grants, f"granted but not needed: {sorted(unused_grants)}"
    assert not missing, f"the operator called what RBAC does not allow: {sorted(missing)}"
    assert {("runsync.dev", "stores", "watch"), ("runsync.dev", "stores", "list"), ("", "secrets", "get"),
            ("runsync.dev", "stores/status", "patch")} <= used


def _get(url: str) -> dict:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=2).read())
    except OSError:
        return {}


def test_no_credential_appears_in_anything_a_run_emits(operator, s3_server, s3_client, tmp_path, pod_root, tally):
    keys = s3_server.credentials
    if "tenants" not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]:
        s3_client.create_bucket(Bucket="tenants")
    emitted: dict[str, str] = {}
    good = {"s3-keys": {"AWS_ACCESS_KEY_ID": keys.access_key, "AWS_SECRET_ACCESS_KEY": keys.secret_key}}
    patched, response = operator.patched(pod(name="leak-pod-aaaaa", job="leak"))
    emitted["admission response"] = json.dumps(response)
    emitted["patched pod"] = json.dumps(patched)
    local = localpod.LocalPod(patched, pod_root / "pod", good)
    init_c, side_c = local.container("runsync-restore"), local.container("runsync-sidecar")
    init = subprocess.run(local.argv(init_c), env=local.env(init_c), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    emitted["restore-init"] = init.stdout + init.stderr
    log = tmp_path / "sidecar.log"
    side = subprocess.Popen(local.argv(side_c), env=local.env(side_c), stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        api = local.env(side_c)[contract.ENV_API]
        wait_for(lambda: _get(f"http://{api}/v1/status").get("loaded"), timeout=30, what="the sidecar to start")
        app = local.container("trainer")
        trainer = subprocess.run(local.command(app, [sys.executable, TRAINER, "--steps", "3", "--sleep", "0.05",
                                                     "--size", "10000", "--flush-log",
                                                     local.paths["runsync-run"] + "/.flushed"]),
                                 env=local.env(app), capture_output=True, text=True, timeout=120)
        assert trainer.returncode == 0, trainer.stderr
        metrics_addr = local.env(side_c)[contract.ENV_METRICS]
        emitted["sidecar metrics"] = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5).read().decode()
        emitted["sidecar status"] = urllib.request.urlopen(f"http://{api}/v1/status", timeout=5).read().decode()
        hook = subprocess.run(local.pre_stop(side_c), env=local.env(side_c), capture_output=True, text=True, timeout=30)
        emitted["preStop"] = hook.stdout + hook.stderr
        side.send_signal(signal.SIGTERM)
        assert side.wait(60) == 0
    finally:
        if side.poll() is None:
            side.kill()
    emitted["sidecar log"] = log.read_text()
    # wrong credentials: the errors users will paste into tickets
    bad = localpod.LocalPod(patched, pod_root / "bad", {"s3-keys": {"AWS_ACCESS_KEY_ID": keys.access_key,
                                                                     "AWS_SECRET_ACCESS_KEY": WRONG_SECRET}})
    wrong = subprocess.run(bad.argv(init_c), env=bad.env(init_c), capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "secret key" in wrong.stderr, wrong.stderr
    emitted["restore-init, wrong secret"] = wrong.stdout + wrong.stderr
    cli = subprocess.run([str(Path(sys.executable).with_name("runsync")), "ls", "team-a/default/leak"],
                         env={**bad.env(init_c), "RUNSYNC_STORE": "s3://tenants/runs"}, capture_output=True,
                         text=True, timeout=60)
    emitted["cli, wrong secret"] = cli.stdout + cli.stderr
    emitted["operator log"] = operator.log.read_text()
    emitted["operator metrics"] = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()
    emitted["events and status sent to the API"] = "\n".join(body for _, _, body in operator.stub.requests)
    secrets = {"secret key": keys.secret_key, "wrong secret key": WRONG_SECRET, "access key id": keys.access_key}
    leaks = [f"{what} in {where}" for where, text in emitted.items() for what, value in secrets.items()
             if value in text]
    tally.record("secret leaks", "0 credentials in logs, events, metrics, annotations, errors", len(emitted),
                 len(leaks), f"{len(emitted)} outputs grepped for {len(secrets)} values")
    assert not leaks, leaks
