"""Server-side encryption: every object runsync writes carries the Store's mode, S3 says so.

From the outside, against SeaweedFS: `runsync sync` with `RUNSYNC_SSE` or `--sse` (single PUTs,
multipart through the CRT and through boto3's transfer manager, manifests, the lease), the pod the
real operator patches from a Store with `serverSideEncryption` (restore-init and the sidecar as
LocalPod runs them), and the SDK's embedded engine. Each object is HEADed: `ServerSideEncryption`
is what S3 stored, not what we meant to send. SSE-KMS runs on a SeaweedFS with its local KMS
provider; a mode the server cannot apply (SSE-KMS on a SeaweedFS without one) gives the Store a
`Ready=False` condition and makes restore-init, the sidecar and `runsync sync` fail loudly.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import kubernetes_validate
import pytest

from runsync import contract
from runsync_testing import locals3, ports
from runsync_testing.localkube import Operator, store
from runsync_testing.localpod import LocalPod

pytestmark = [pytest.mark.s3, pytest.mark.slow]
NS = "team-a"
MiB = 1024 * 1024
BIG = 17 * MiB  # over the 16 MiB multipart threshold


@pytest.fixture(scope="module")
def kms_server():
    server = locals3.start(kms=True)
    yield server
    server.stop()


def client_of(server):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=server.credentials.access_key,
                        aws_secret_access_key=server.credentials.secret_key)


def new_bucket(s3) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    return name


def encryption_of_every_object(s3, bucket: str) -> dict[str, tuple]:
    """key → (ServerSideEncryption, SSEKMSKeyId) as S3 reports them on HEAD."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            head = s3.head_object(Bucket=bucket, Key=obj["Key"])
            found[obj["Key"]] = (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"))
    return found


def make_run_dir(root: Path) -> dict[str, bytes]:
    files = {"config.yaml": b"lr: 0.1\n", "ckpt/step-1/shard.bin": hashlib.sha256(b"x").digest() * 1000,
             "ckpt/step-1/.metadata": b"m", "big.pt": bytes(range(256)) * (BIG // 256)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def restored(cli, run: str, to: Path, env: dict) -> dict[str, bytes]:
    done = cli("restore", run, "--to", str(to), env=env)
    assert done.returncode == 0, done.stderr
    return {str(p.relative_to(to)): p.read_bytes() for p in to.rglob("*") if p.is_file()}


# ----------------------------------------------------------------- runsync sync (the CLI)

@pytest.mark.parametrize("how, crt", [
    pytest.param("env", "1", id="RUNSYNC_SSE-multipart-through-the-CRT"),
    pytest.param("flag", "0", id="--sse-multipart-through-boto3s-transfer-manager"),
])
def test_sync_encrypts_every_object_it_writes_and_restore_reads_them(how, crt, cli, s3_env, s3_client, bucket,
                                                                    tmp_path):
    run_dir = tmp_path / "run"
    files = make_run_dir(run_dir)
    env = {**s3_env, "RUNSYNC_CRT": crt}
    args = ["sync", str(run_dir), "--run", "team-a/default/sse-1"]
    if how == "env":
        env[contract.ENV_SSE] = "AES256"
    else:
        args = ["--sse", "AES256", *args]
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr

    stored = encryption_of_every_object(s3_client, bucket)
    assert any("/objects/" in k for k in stored) and any("/manifests/" in k for k in stored)
    assert any(k.endswith("/lease.json") for k in stored)
    assert {k: v[0] for k, v in stored.items()} == {k: "AES256" for k in stored}
    # Reads need nothing: SSE-S3 objects come back as they were written.
    assert restored(cli, "team-a/default/sse-1", tmp_path / "back", s3_env) == files


@pytest.mark.parametrize("args, env, message", [
    pytest.param(["--sse", "AES"], {}, "--sse / RUNSYNC_SSE: unknown server-side encryption 'AES'; "
                 "expected AES256 or aws:kms", id="unknown-mode"),
    pytest.param([], {"RUNSYNC_SSE": "SSE-C"}, "SSE-C (customer-provided keys) is not offered", id="sse-c"),
    pytest.param(["--sse", "AES256", "--sse-kms-key-id", "alias/k"], {},
                 "--sse-kms-key-id / RUNSYNC_SSE_KMS_KEY_ID is only used with aws:kms", id="key-without-kms"),
])
def test_a_bad_encryption_setting_is_one_clear_line_and_writes_nothing(args, env, message, cli, s3_env, s3_client,
                                                                       bucket, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.txt").write_text("a")
    done = cli(*args, "sync", str(tmp_path / "run"), "--run", "team-a/default/bad", env={**s3_env, **env})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_sync_fails_loudly_when_the_server_cannot_apply_the_mode(cli, s3_env, s3_client, bucket, tmp_path):
    """SeaweedFS without a KMS refuses aws:kms: nothing is written unencrypted instead."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.txt").write_text("a")
    done = cli("--sse", "aws:kms", "--sse-kms-key-id", locals3.LOCAL_KMS_KEY,
               "sync", str(tmp_path / "run"), "--run", "team-a/default/nokms", env=s3_env)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "server-side encryption aws:kms" in line and locals3.LOCAL_KMS_KEY in line and "fix:" in line, line
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", ())]
    assert not [k for k in keys if "/objects/" in k or "/files/" in k or "/manifests/" in k or k.endswith("lease.json")], keys


# ------------------------------------------------------------ the SDK's embedded engine

SDK_SCRIPT = textwrap.dedent("""
    import os, sys
    import runsync
    run = runsync.init(dir=sys.argv[1], run="team-a/default/sdk-sse", code=False)
    with open(os.path.join(run.dir, "model.pt"), "wb") as f:
        f.write(b"w" * 5000)
    runsync.finish()
""")


def test_the_sdks_embedded_engine_encrypts_what_it_writes(s3_env, s3_client, bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update({**s3_env, contract.ENV_SSE: "AES256"})
    done = subprocess.run([sys.executable, "-c", SDK_SCRIPT, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = encryption_of_every_object(s3_client, bucket)
    assert any("/objects/" in k for k in stored), stored
    assert {k: v[0] for k, v in stored.items()} == {k: "AES256" for k in stored}


# --------------------------------------------- the operator: the Store, the pod, what runs

def encrypted_store(name: str, bucket: str, endpoint: str, sse: dict) -> dict:
    obj = store(NS, name, bucket, endpoint)
    obj["spec"]["serverSideEncryption"] = sse
    return obj


def ready_condition(op: Operator, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = op.stub.stores[(NS, name)].get("status") or {}
        found = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no Ready condition on Store {name}:\n" + op.log.read_text()[-3000:])


def trainer_pod(name: str, store_name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": NS, "labels": {contract.INJECT_LABEL: "true"},
        "annotations": {contract.SAVE: "ckpt/**:live", contract.STORE: store_name, contract.RUN: "sse-job"}},
        "spec": {"containers": [{"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"],
                                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}],
                 "restartPolicy": "Never", "terminationGracePeriodSeconds": 60}}


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture
def operator(tmp_path, s3_server, kms_server):
    kms_bucket, plain_bucket = new_bucket(client_of(kms_server)), new_bucket(client_of(s3_server))
    api, metrics = ports.free_ports(2)
    secrets = {(NS, "s3-keys"): {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                                 "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}}
    assert kms_server.credentials == s3_server.credentials  # one Secret serves both stores
    (tmp_path / "op").mkdir()
    op = Operator(tmp_path / "op", [
        encrypted_store("kms", kms_bucket, kms_server.endpoint,
                        {"type": "aws:kms", "kmsKeyId": locals3.LOCAL_KMS_KEY}),
        encrypted_store("nokms", plain_bucket, s3_server.endpoint,
                        {"type": "aws:kms", "kmsKeyId": locals3.LOCAL_KMS_KEY}),
        encrypted_store("s3", plain_bucket, s3_server.endpoint, {"type": "AES256"}),
    ], values={"RUNSYNC_OPERATOR_API_PORT": str(api), "RUNSYNC_OPERATOR_METRICS_PORT": str(metrics)},
        secrets=secrets)
    op.buckets = {"kms": kms_bucket, "nokms": plain_bucket, "s3": plain_bucket}
    op.secrets = {"s3-keys": secrets[(NS, "s3-keys")]}
    yield op
    op.stop()


def wait_loaded(side: subprocess.Popen, api: str, log: Path) -> None:
    """Until the sidecar has read the store and serves its API (a poll, not a timing claim)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert side.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://{api}{contract.API_PREFIX}/status", timeout=5) as response:
                if json.loads(response.read()).get("loaded"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the sidecar did not start:\n" + log.read_text()[-3000:])


def run_pod(op: Operator, name: str, store_name: str, root: Path, log: Path, files: dict[str, bytes]) -> LocalPod:
    """restore-init, then the sidecar beside a 'trainer' that writes `files`, then preStop and SIGTERM."""
    patched, _ = op.patched(trainer_pod(name, store_name))
    local = LocalPod(patched, root, op.secrets)
    restore = local.container("runsync-restore")
    init = subprocess.run(local.argv(restore), env=local.env(restore), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    sidecar = local.container("runsync-sidecar")
    side = subprocess.Popen(local.argv(sidecar), env=local.env(sidecar), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    try:
        wait_loaded(side, local.env(sidecar)[contract.ENV_API], log)
        run_dir = Path(local.paths["runsync-run"])
        for name_, data in files.items():
            (run_dir / name_).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name_).write_bytes(data)
        hook = subprocess.run(local.pre_stop(sidecar), env=local.env(sidecar), capture_output=True, text=True,
                              timeout=30)
        assert hook.returncode == 0, hook.stderr
        side.send_signal(signal.SIGTERM)
        assert side.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if side.poll() is None:
            side.kill()
    return local


def test_the_patched_pod_encrypts_everything_under_the_stores_kms_key_and_resumes(operator, kms_server, tmp_path,
                                                                                 pod_root):
    condition = ready_condition(operator, "kms")
    assert condition["status"] == "True", condition
    assert "aws:kms" in condition["message"], condition

    patched, _ = operator.patched(trainer_pod("sse-pod-aaaaa", "kms"))
    kubernetes_validate.validate(patched, "1.33", strict=True)
    init = patched["spec"]["initContainers"]
    for c in init[:2]:  # restore-init and the sidecar; the trainer needs no credentials nor keys
        assert env_of(c)[contract.ENV_SSE] == "aws:kms"
        assert env_of(c)[contract.ENV_SSE_KMS_KEY_ID] == locals3.LOCAL_KMS_KEY
    assert contract.ENV_SSE not in env_of(patched["spec"]["containers"][0])

    files = {"ckpt/step-1/shard.bin": b"s" * 3000, "ckpt/step-1/.metadata": b"m", "ckpt/last.pt": b"w" * 20000}
    run_pod(operator, "sse-pod-aaaaa", "kms", pod_root / "a", tmp_path / "a.log", files)
    s3 = client_of(kms_server)
    stored = encryption_of_every_object(s3, operator.buckets["kms"])
    assert any("/objects/" in k for k in stored) and any("/manifests/" in k for k in stored)
    assert any(k.endswith("/lease.json") for k in stored)
    assert {k: v[0] for k, v in stored.items()} == {k: "aws:kms" for k in stored}
    assert all(v[1] for v in stored.values()), stored  # under a KMS key (S3 names it by its id)

    # The replacement pod's restore-init reads the encrypted objects back, verified.
    patched, _ = operator.patched(trainer_pod("sse-pod-bbbbb", "kms"))
    local = LocalPod(patched, pod_root / "b", operator.secrets)
    restore = local.container("runsync-restore")
    init = subprocess.run(local.argv(restore), env=local.env(restore), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    run_dir = Path(local.paths["runsync-run"])
    assert {n: (run_dir / n).read_bytes() for n in files} == files


def test_a_mode_the_server_cannot_apply_is_a_clear_condition_and_the_pod_does_not_start(operator, s3_server,
                                                                                       tmp_path, pod_root):
    condition = ready_condition(operator, "nokms")
    assert condition["status"] == "False" and condition["reason"] == "EncryptionNotApplied", condition
    assert "aws:kms" in condition["message"] and "fix:" in condition["message"], condition
    assert ready_condition(operator, "s3")["status"] == "True"  # SSE-S3 on the same server is fine

    patched, _ = operator.patched(trainer_pod("sse-pod-ccccc", "nokms"))
    local = LocalPod(patched, pod_root / "c", operator.secrets)
    s3 = client_of(s3_server)
    for name in ("runsync-restore", "runsync-sidecar"):
        c = local.container(name)
        done = subprocess.run(local.argv(c), env=local.env(c), capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, f"{name} started: {done.stdout}{done.stderr}"
        out = done.stdout + done.stderr
        assert "server-side encryption aws:kms" in out and "fix:" in out, out
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=operator.buckets["nokms"]).get("Contents", ())]
    assert not [k for k in keys if "/objects/" in k or "/files/" in k or "/manifests/" in k or k.endswith("lease.json")], keys


# ------------------------------------------------ a brief outage at the sidecar's start

def test_a_sidecar_that_starts_during_an_outage_waits_for_the_store_then_encrypts(tmp_path):
    """The sidecar's start-up encryption check is retried while the store cannot be reached (a
    refusal stays fatal): it must not crash-loop through a blip, nor start writing unchecked."""
    from harness import Sidecar

    server = locals3.start(workdir=tmp_path / "s3")
    try:
        bucket = new_bucket(client_of(server))
        env = {**server.env(), "RUNSYNC_STORE": f"s3://{bucket}/x", contract.ENV_SSE: "AES256"}
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "model.pt").write_bytes(b"m" * 5000)
        server.stop(keep_data=True)
        sc = Sidecar(run_dir, env, {contract.SAVE: "**:live"}, tmp_path).start(wait=False)
        try:
            deadline = time.monotonic() + 120  # a poll: the retry is logged, the process lives on
            while "cannot check server-side encryption yet" not in sc.logs():
                assert sc.proc.poll() is None, sc.logs()[-3000:]
                assert time.monotonic() < deadline, sc.logs()[-3000:]
                time.sleep(0.1)
            server.restart()
            while True:  # then it comes up as usual
                try:
                    if sc.status().get("loaded"):
                        break
                except OSError:
                    pass
                assert sc.proc.poll() is None and time.monotonic() < deadline + 60, sc.logs()[-3000:]
                time.sleep(0.1)
            sc.flush(timeout=120)
            stored = encryption_of_every_object(client_of(server), bucket)
            assert any(k.endswith("/sse-check") for k in stored), stored
            assert any("model.pt" in k or "/objects/" in k for k in stored), stored
            assert {k: v[0] for k, v in stored.items()} == {k: "AES256" for k in stored}
        finally:
            sc.stop()
    finally:
        server.stop()
