"""Fixtures: one real SeaweedFS per test session, a fresh bucket per test, and the CLI as a process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest

from runsync_testing import kubelet, locals3

RUNSYNC = str(Path(sys.executable).with_name("runsync"))


@pytest.fixture(scope="session")
def s3_server():
    server = locals3.start()
    yield server
    server.stop()


@pytest.fixture
def s3_client(s3_server):
    return boto3.client(
        "s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
        aws_access_key_id=s3_server.credentials.access_key,
        aws_secret_access_key=s3_server.credentials.secret_key,
    )


@pytest.fixture
def bucket(s3_client):
    """A new, empty bucket for this test; emptied and removed after."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for obj in page.get("Contents", ()):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_env(s3_server, bucket, monkeypatch):
    """The environment a user would set: AWS variables and RUNSYNC_STORE (also applied here)."""
    env = {**s3_server.env(), "RUNSYNC_STORE": f"s3://{bucket}/runs"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


class CLI:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
        full_env.update(self.env if env is None else env)
        return subprocess.run([RUNSYNC, *args], env=full_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(s3_env):
    """Run `runsync ...` as a user would, with the test store's environment."""
    return CLI(s3_env)


@pytest.fixture
def sidecars(tmp_path, s3_env):
    """Make sidecar processes (stopped after the test): `sidecars(annotations, **options)`."""
    from harness import Sidecar

    made = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def make(annotations: dict[str, str], **options):
        options.setdefault("run_dir", run_dir)
        sc = Sidecar(s3_env=s3_env, annotations=annotations, workdir=tmp_path, **options)
        made.append(sc)
        return sc

    yield make
    for sc in made:
        sc.stop()


@pytest.fixture
def store(s3_env):
    from harness import Store

    return Store(s3_env)


@pytest.fixture
def pod_root():
    """A dir for a LocalPod that every UID can enter (pytest's tmp_path is under a 0700 dir):
    its containers run as their securityContext's UIDs. Removed after the test."""
    root = Path(tempfile.mkdtemp(prefix="runsync-pod-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def as_kubelet():
    """Skip, saying why, where containers cannot run as a kubelet runs them (not root)."""
    reason = kubelet.unavailable()
    if reason:
        pytest.skip(reason)
