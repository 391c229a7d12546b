"""A full local disk during restore, on a real small file system (tmpfs). The promise: a clear
error naming the dir, the bytes and the fix; a checkpoint placed whole or not at all; no temp
files left behind; the store untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import Store
from runsync import keys, restorer, transfer

pytestmark = [pytest.mark.s3]
RUN = "team-a/proj/run-1"
MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB file system of its own (tmpfs; needs root, as CI here has)."""
    mnt = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); the full-disk case needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def synced_run(cli, tmp_path) -> dict[str, bytes]:
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    files = {f"ckpt/step-1/__{r}_0.distcp": os.urandom(3 * MiB) for r in range(3)}
    files["ckpt/step-1/.metadata"] = b"marker"
    files["notes.txt"] = b"small" * 100
    for name, data in files.items():
        (src / name).write_bytes(data)
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    return files


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]


def test_not_enough_space_is_refused_up_front(cli, tmp_path, small_disk, store, tally):
    files = synced_run(cli, tmp_path)
    before = store.files()
    result = cli("restore", RUN, "--to", str(small_disk / "run"))
    ok = result.returncode == 1 and "not enough space" in result.stderr and str(small_disk) in result.stderr
    tally.record("full local disk during restore", "clear error, nothing half-placed", 1, 0 if ok else 1,
                 "refused before writing")
    assert ok, result.stderr
    assert "free space" in result.stderr and str(sum(len(d) for d in files.values())) in result.stderr
    assert leftovers(small_disk) == []
    assert store.files() == before


def test_a_disk_that_fills_mid_restore_leaves_whole_units_only(cli, tmp_path, small_disk, s3_env, monkeypatch, tally):
    """The up-front check passes (space is taken by someone else as the restore runs, here by
    pretending it was free): the write then hits ENOSPC for real."""
    files = synced_run(cli, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
    dest = small_disk / "run"
    s3 = transfer.client()
    try:
        report = restorer.restore(s3, keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse(RUN), dest)
        message = f"no error: {report}"
    except restorer.RestoreError as err:
        message = str(err)
    ok = "disk full" in message and str(dest) in message and "free space" in message
    left = leftovers(dest) if dest.exists() else []
    assert all(n.startswith("run/") for n in leftovers(small_disk)), leftovers(small_disk)
    whole = all(Path(dest / n).read_bytes() == files[n] for n in left)
    ckpt = [n for n in left if n.startswith("ckpt/")]
    # the checkpoint directory is all there or not at all; no temp files stay
    complete = not ckpt or set(ckpt) == {n for n in files if n.startswith("ckpt/")}
    tally.record("full local disk during restore", "clear error, nothing half-placed", 1,
                 0 if ok and whole and complete else 1, "ENOSPC mid-write")
    assert ok, message
    assert whole and complete, left
    assert Store(s3_env).files().keys() == files.keys()
