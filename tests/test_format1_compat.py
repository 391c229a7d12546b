"""Runs written in storage format 1 stay restorable (issue 17): a run written the old way, with
plain boto3 (keys `files/<name>~<sha256[:16]>`, a format-1 manifest without part checksums), is
restored by restore-init, `runsync restore` and the SDK; then a sidecar continues that run in
format 2, and a second restore gets the old files and the new ones."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

import runsync
from harness import Store, restore_init, tree
from runsync import contract

pytestmark = pytest.mark.s3

RUN = "team-a/proj/run-1"  # the `store` fixture's run
OLD = {"config.yaml": b"lr: 0.1\n", "ckpt/step-1/model.pt": b"weights-1" * 1000, "empty.txt": b""}


def write_format_1(store: Store, files: dict[str, bytes]) -> None:
    """What runsync wrote before format 2: one object per file at `files/<name>~<sha16>`, then a
    format-1 manifest naming them, under a released lease of epoch 1."""
    bucket, prefix = store.layout.store.bucket, store.layout.replica_prefix
    entries = []
    for name, data in sorted(files.items()):
        sha = hashlib.sha256(data).hexdigest()
        key = f"{prefix}files/{name}~{sha[:16]}"
        store.client.put_object(Bucket=bucket, Key=key, Body=data)
        entries.append({"name": name, "key": key, "size": len(data), "mtime_ns": 1_700_000_000_000_000_000,
                        "sha256": sha, "policy": "live"})
    manifest = {"format": 1, "run": RUN, "replica": "0", "seq": 1, "created": time.time(), "final": True,
                "writer": "pod-a", "epoch": 1, "files": entries, "checkpoints": {}}
    store.client.put_object(Bucket=bucket, Key=f"{prefix}manifests/{1:012d}.json", Body=json.dumps(manifest).encode())
    lease = {"holder": "pod-a", "epoch": 1, "heartbeat": time.time() - 3600, "state": "released", "ttl": 15.0,
             "epochs": [[1, 0]]}
    store.client.put_object(Bucket=bucket, Key=f"{prefix}lease.json", Body=json.dumps(lease).encode())


def test_a_format_1_run_restores_and_continues_in_format_2(store, cli, sidecars, s3_env, tmp_path, monkeypatch):
    write_format_1(store, OLD)

    # restore-init, `runsync restore` and the SDK each restore it as it was committed
    init_dir = tmp_path / "init"
    result = restore_init(s3_env, init_dir, {}, tmp_path, holder="pod-b")
    assert result.returncode == 0, result.stderr + result.stdout
    assert tree(init_dir) == OLD
    restored = cli("restore", RUN, "--to", str(tmp_path / "cli"))
    assert restored.returncode == 0, restored.stderr
    assert tree(tmp_path / "cli") == OLD
    monkeypatch.chdir(tmp_path)
    with runsync.restore("ckpt/step-1/model.pt", run_path=RUN, root=str(tmp_path / "sdk")) as f:
        assert f.read() == OLD["ckpt/step-1/model.pt"]

    # a sidecar (holder pod-b, whose restore-init took the lease) continues the run in format 2
    sc = sidecars({contract.SAVE: "**:live"}, run_dir=init_dir, extra_env={contract.ENV_HOLDER: "pod-b"}).start()
    (init_dir / "ckpt" / "step-2").mkdir(parents=True)
    (init_dir / "ckpt" / "step-2" / "model.pt").write_bytes(b"weights-2" * 1000)
    (init_dir / "config.yaml").write_bytes(b"lr: 0.05\n")
    sc.flush(timeout=120)
    assert sc.terminate()[0] == 0
    files = store.files()
    assert files["ckpt/step-2/model.pt"].key.startswith(store.layout.objects_prefix)
    assert files["config.yaml"].key.startswith(store.layout.objects_prefix)
    assert files["ckpt/step-1/model.pt"].key.startswith(store.layout.replica_prefix + "files/")  # kept as it was

    again = cli("restore", RUN, "--to", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert tree(tmp_path / "again") == {**OLD, "config.yaml": b"lr: 0.05\n",
                                        "ckpt/step-2/model.pt": b"weights-2" * 1000}
