"""A trainer of any UID can use what restore-init restored, and the sidecar can read what it writes.

From the outside: the real operator patches the pod, LocalPod runs it as a kubelet would (each
container as its securityContext's user, read-only roots, the pod's fsGroup on its volumes),
restore-init restores a run seeded in SeaweedFS, then the trainer creates in, overwrites, renames
over and deletes every restored file and dir, and the sidecar's user reads what the trainer wrote.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid

import pytest

from runsync import contract
from runsync_testing import ports
from runsync_testing.localkube import RUNSYNC, Operator, store
from runsync_testing.localpod import LocalPod

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.usefixtures("as_kubelet")]
NS = "team-a"
BUCKET = "runsync-perms"
RESTORED = {"config.yaml": b"lr: 0.1\n", "ckpt/last.pt": b"w" * 5000, "ckpt/step-100/__0_0.distcp": b"s" * 3000,
            "ckpt/step-100/.metadata": b"m", "ckpt/step-100/deep/extra.bin": b"e" * 10}

# The trainer's part, run as its container's user: every operation a resuming trainer does on
# what was restored. Prints the failures as JSON: [[operation, path, error], ...].
TRAINER = r"""
import json, os, shutil, sys
run, files = sys.argv[1], json.loads(sys.argv[2])
failed = []
def do(what, path, fn):
    try:
        fn()
    except OSError as err:
        failed.append([what, os.path.relpath(path, run), err.strerror])
dirs = sorted({os.path.dirname(f) for f in files if os.path.dirname(f)} |
              {os.path.dirname(os.path.dirname(f)) for f in files if os.path.dirname(os.path.dirname(f))})
for d in dirs:
    p = os.path.join(run, d)
    do("create a file in", p, lambda: open(os.path.join(p, "new.txt"), "w").close())
    do("mkdir in", p, lambda: os.mkdir(os.path.join(p, "new-dir")))
for f in files:
    p = os.path.join(run, f)
    do("overwrite", p, lambda: open(p, "wb").write(b"new"))
    do("rename over", p, lambda: (open(p + ".tmp", "wb").write(b"newer"), os.replace(p + ".tmp", p)))
for f in files:
    p = os.path.join(run, f)
    do("delete", p, lambda: os.remove(p))
for d in sorted(dirs, key=len, reverse=True):
    p = os.path.join(run, d)
    do("delete dir", p, lambda: shutil.rmtree(p))
# What a trainer writes next, with umask 022: the sidecar must be able to read it.
p = os.path.join(run, "ckpt", "step-200", "shards")
do("makedirs", p, lambda: os.makedirs(p, exist_ok=True))
for name in ("ckpt/last.pt", "ckpt/step-200/shards/__0_0.distcp", "ckpt/step-200/.metadata"):
    p = os.path.join(run, name)
    do("write", p, lambda: open(p, "wb").write(b"x" * 100))
print(json.dumps(failed))
"""

# The sidecar's part, run as the sidecar container's user: read every file the trainer wrote.
SIDECAR = r"""
import json, os, sys
run, unreadable = sys.argv[1], []
for d, dirnames, filenames in os.walk(run, onerror=lambda e: unreadable.append(e.filename)):
    dirnames[:] = [n for n in dirnames if n != ".runsync"]
    for name in filenames:
        try:
            open(os.path.join(d, name), "rb").read()
        except OSError:
            unreadable.append(os.path.relpath(os.path.join(d, name), run))
print(json.dumps(unreadable))
"""


@pytest.fixture(scope="module")
def operator(tmp_path_factory, s3_server):
    api, metrics = ports.free_ports(2)
    op = Operator(tmp_path_factory.mktemp("operator"), [store(NS, "default", BUCKET, s3_server.endpoint)],
                  values={"RUNSYNC_OPERATOR_API_PORT": str(api), "RUNSYNC_OPERATOR_METRICS_PORT": str(metrics)})
    yield op
    op.stop()


@pytest.fixture(scope="module")
def seeded_run(s3_server, tmp_path_factory) -> str:
    """A run in the store with files in nested dirs, committed by `runsync sync`."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id=s3_server.credentials.access_key,
                      aws_secret_access_key=s3_server.credentials.secret_key)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    src = tmp_path_factory.mktemp("seed")
    for name, data in RESTORED.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    run = f"perms-{uuid.uuid4().hex[:8]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}, **s3_server.env(),
           contract.ENV_STORE: f"s3://{BUCKET}/runs"}
    result = subprocess.run([RUNSYNC, "sync", str(src), "--run", f"{NS}/default/{run}", "--save", "**"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return run


def manifest(run: str, trainer_sc: dict | None, pod_sc: dict | None, pvc: bool) -> dict:
    trainer = {"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"]}
    if trainer_sc:
        trainer["securityContext"] = trainer_sc
    spec = {"containers": [trainer], "restartPolicy": "Never", "terminationGracePeriodSeconds": 60}
    annotations = {contract.SAVE: "**:live", contract.RUN: run}
    if pvc:
        spec["volumes"] = [{"name": "scratch", "persistentVolumeClaim": {"claimName": "ckpts"}}]
        annotations.update({contract.VOLUME: "scratch", contract.RUN_DIR: "/mnt/run"})
    if pod_sc:
        spec["securityContext"] = pod_sc
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec, "metadata": {
        "name": f"{run}-pod", "namespace": NS, "labels": {contract.INJECT_LABEL: "true"},
        "annotations": annotations}}


USERS = {
    "root": (None, None),
    "uid 1000": ({"runAsUser": 1000, "runAsGroup": 1000}, None),
    "uid 1000 with an fsGroup": ({"runAsUser": 1000, "runAsGroup": 1000}, {"fsGroup": 2000}),
}


@pytest.mark.parametrize("volume", ["emptyDir", "root-owned PVC"])
@pytest.mark.parametrize("user", list(USERS))
def test_the_trainer_can_use_every_restored_file_and_the_sidecar_can_read_what_it_writes(
        operator, s3_server, seeded_run, pod_root, user, volume):
    trainer_sc, pod_sc = USERS[user]
    patched, _ = operator.patched(manifest(seeded_run, trainer_sc, pod_sc, volume != "emptyDir"))
    secrets = {"s3-keys": {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                           "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}}
    if volume != "emptyDir":  # a PVC a provisioner made: root-owned 0755, before the pod starts
        (pod_root / "volumes" / "scratch").mkdir(parents=True)
        os.chmod(pod_root / "volumes" / "scratch", 0o755)
    local = LocalPod(patched, pod_root, secrets)
    run_dir = local.paths["scratch" if volume != "emptyDir" else "runsync-run"]

    init = local.container("runsync-restore")
    restored = subprocess.run(local.argv(init), env=local.env(init), capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sorted(p for p in RESTORED if os.path.exists(os.path.join(run_dir, p))) == sorted(RESTORED)
    dirs = ("ckpt", "ckpt/step-100", "ckpt/step-100/deep")
    modes = {p: oct(stat.S_IMODE(os.stat(os.path.join(run_dir, p)).st_mode)) for p in [*RESTORED, *dirs]}
    assert modes == {**{p: oct(0o664) for p in RESTORED}, **{d: oct(0o2775) for d in dirs}}

    trainer = local.container("trainer")
    used = subprocess.run(local.command(trainer, [sys.executable, "-c", TRAINER, run_dir, json.dumps(list(RESTORED))]),
                          env=local.env(trainer), capture_output=True, text=True, timeout=60)
    assert used.returncode == 0, used.stderr
    assert json.loads(used.stdout) == []

    sidecar = local.container("runsync-sidecar")
    read = subprocess.run(local.command(sidecar, [sys.executable, "-c", SIDECAR, run_dir]),
                          env=local.env(sidecar), capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout) == []


RULE = [
    # (trainer securityContext, pod securityContext) -> runsync's (runAsUser, runAsGroup), pod fsGroup
    ("no user set", None, None, (65532, 65532), 65532),
    ("the trainer's user", {"runAsUser": 1000, "runAsGroup": 1000}, None, (1000, 1000), 1000),
    ("the pod's user, no group", None, {"runAsUser": 1000}, (1000, 1000), 1000),
    ("an fsGroup is kept", {"runAsUser": 1000, "runAsGroup": 1000}, {"fsGroup": 2000}, (1000, 1000), 2000),
    ("root is never taken", {"runAsUser": 0}, None, (65532, 65532), 65532),
    ("two users", "two", None, (65532, 65532), 65532),
]


@pytest.mark.parametrize("trainer_sc,pod_sc,user,fs_group", [r[1:] for r in RULE], ids=[r[0] for r in RULE])
def test_runsync_runs_as_the_apps_user_or_65532_with_an_fs_group(operator, trainer_sc, pod_sc, user, fs_group):
    pod = manifest("rule", None if trainer_sc == "two" else trainer_sc, pod_sc, False)
    if trainer_sc == "two":
        pod["spec"]["containers"] = [{"name": "a", "image": "x", "securityContext": {"runAsUser": 1000}},
                                     {"name": "b", "image": "x", "securityContext": {"runAsUser": 1001}}]
    patched, _ = operator.patched(pod)
    ours = patched["spec"]["initContainers"][:2]
    assert [(c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"]) for c in ours] == [user] * 2
    for c in ours:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
    pod_sc_out = patched["spec"]["securityContext"]
    assert pod_sc_out["fsGroup"] == fs_group
    assert pod_sc_out.get("fsGroupChangePolicy") == (None if pod_sc and "fsGroup" in pod_sc else "OnRootMismatch")
