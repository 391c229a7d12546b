"""The sidecar's durable index (`.runsync/durable.sqlite`, durable.py) across restarts in one pod:
kept when it records the store's latest commit, rebuilt when another writer committed since,
kept in memory (with a warning) when the state dir cannot hold it; in every case nothing
durable is lost and nothing unchanged is sent again."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness import RUNSYNC, describes, restore_init, tree, wait_for
from runsync import contract, durable, keys

pytestmark = [pytest.mark.s3, pytest.mark.slow]

FILES = 300
"""More than a commit record holds inline (records.SMALL): a chunked base, then deltas."""
SAVE = {contract.SAVE: "**:live"}


def synced(run_dir, s3_env) -> None:
    for i in range(FILES):
        d = run_dir / f"d{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(str(i))
    subprocess.run([RUNSYNC, "sync", str(run_dir), "--run", "team-a/proj/run-1"], env={**os.environ, **s3_env},
                   check=True, stdout=subprocess.DEVNULL)


def index_said(sc) -> list[str]:
    return [r["msg"] for r in sc.log_records() if r.get("msg", "").startswith("durable index")]


def run_once(sidecars, name: str, change: dict[str, bytes]):
    """A sidecar started on the run dir, `change` written and flushed, then stopped cleanly."""
    sc = sidecars(SAVE, replica="0")
    sc.log_path = sc.log_path.with_name(f"sidecar-{name}.log")
    sc.start()
    for rel, data in change.items():
        (sc.run_dir / rel).write_bytes(data)
    assert sc.flush()["durable"]
    assert sc.terminate()[0] == 0
    return sc


def index_of(run_dir) -> durable.Index:
    return durable.Index(run_dir / keys.STATE_DIR)


def test_a_restart_keeps_the_index_and_a_commit_by_another_writer_rebuilds_it(sidecars, store, s3_env, tmp_path):
    first = sidecars(SAVE)
    synced(first.run_dir, s3_env)
    first = run_once(sidecars, "first", {"a.bin": b"one"})
    assert index_said(first) == ["durable index rebuilt from the store"]  # a new pod: from the listing
    latest = store.latest()
    assert index_of(first.run_dir).records(latest) and len(index_of(first.run_dir)) == FILES + 1

    before = store.files()
    again = run_once(sidecars, "again", {"b.bin": b"two"})
    assert index_said(again) == ["durable index kept"]
    files = store.files()
    assert describes(files["b.bin"], b"two") and len(files) == FILES + 2
    assert all(files[n] == e for n, e in before.items()), "an unchanged file was sent again"
    assert index_of(first.run_dir).records(store.latest())

    # another writer commits while the sidecar is down: the index no longer records the latest
    other = tmp_path / "other"
    (other / "c.bin").parent.mkdir()
    (other / "c.bin").write_bytes(b"three")
    subprocess.run([RUNSYNC, "sync", str(other), "--run", "team-a/proj/run-1"], env={**os.environ, **s3_env},
                   check=True, stdout=subprocess.DEVNULL)
    before = store.files()
    third = run_once(sidecars, "third", {"d.bin": b"four"})
    assert index_said(third) == ["durable index rebuilt from the store"]
    files = store.files()
    assert describes(files["c.bin"], b"three") and describes(files["d.bin"], b"four")
    assert all(files[n] == e for n, e in before.items()), "a durable file was lost or sent again"
    assert index_of(first.run_dir).records(store.latest())


def test_a_state_dir_that_cannot_hold_the_index_keeps_it_in_memory_with_a_warning(sidecars, store, s3_env):
    sc = sidecars(SAVE)
    synced(sc.run_dir, s3_env)
    path = sc.run_dir / keys.STATE_DIR / durable.FILE
    path.mkdir(parents=True)  # unopenable as a database (as a read-only or full state dir), even for root
    before = store.files()
    sc = run_once(sidecars, "memory", {"a.bin": b"one"})
    warned = [r for r in sc.log_records() if r.get("msg") == "the durable index is kept in memory"]
    assert warned and warned[0]["path"] == str(path) and "writable" in warned[0]["fix"], warned
    files = store.files()
    assert describes(files["a.bin"], b"one") and all(files[n] == e for n, e in before.items())


def test_a_new_pod_s_sidecar_keeps_the_index_its_restore_init_left(sidecars, store, s3_env, tmp_path):
    """restore-init reads the latest commit's entries to restore them; it leaves them indexed in
    `.runsync/`, so the new pod's sidecar answers without reading and indexing them again."""
    synced(tmp_path / "old-pod", s3_env)
    sc = sidecars(SAVE, extra_env={contract.ENV_HOLDER: "pod-b"})  # one pod: restore-init's holder
    done = restore_init(s3_env, sc.run_dir, SAVE, tmp_path, holder="pod-b")
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree(sc.run_dir) == tree(tmp_path / "old-pod")
    assert index_of(sc.run_dir).records(store.latest()) and len(index_of(sc.run_dir)) == FILES

    before = store.files()
    sc.start()
    (sc.run_dir / "a.bin").write_bytes(b"one")
    assert sc.flush()["durable"]
    assert sc.terminate()[0] == 0
    assert index_said(sc) == ["durable index kept"]
    files = store.files()
    assert describes(files["a.bin"], b"one") and len(files) == FILES + 1
    assert all(files[n] == e for n, e in before.items()), "a restored file was sent again"
    assert index_of(sc.run_dir).records(store.latest())


def test_restore_init_leaves_no_index_of_another_run_or_of_nothing(store, s3_env, tmp_path):
    """A warm start restores another run's files: their entries are not this run's commits, so
    no index is left (the sidecar builds its own); nor is one for a run with no commit."""
    synced(tmp_path / "pretrain", s3_env)  # team-a/proj/run-1
    warm = tmp_path / "warm"
    done = restore_init(s3_env, warm, {contract.RESTORE_FROM: "proj/run-1"}, tmp_path, run="team-a/proj/run-2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree(warm) == tree(tmp_path / "pretrain")
    assert not (warm / keys.STATE_DIR / durable.FILE).exists() or index_of(warm).manifest() is None


def start_listing(sc) -> list[dict]:
    return [{k: r[k] for k in ("files", "taken_as_restored")} for r in sc.log_records()
            if r.get("msg") == "run dir listed at start"]


def test_a_new_pod_s_sidecar_takes_restore_init_s_word_for_the_files_it_restored(sidecars, store, s3_env, tmp_path):
    """restore-init has just compared every file of the commit with the run dir (restored it, or
    found it the same); the pod's sidecar starts right after it, before any other container can
    write there, so its first listing does not look at those files again (beside 100,000 files,
    a third of its start). What restore-init did not vouch for is looked at and sent: a newer
    copy it kept, a file the commit does not hold. The word is taken once: a sidecar restarted
    later (after the trainer ran) looks at every file again."""
    synced(tmp_path / "old-pod", s3_env)
    sc = sidecars(SAVE, extra_env={contract.ENV_HOLDER: "pod-b"})  # one pod: restore-init's holder
    (sc.run_dir / "d0").mkdir(parents=True)  # what the pod's volume held already (a PVC)
    (sc.run_dir / "d0/f0001.txt").write_text("edited here")  # newer than the commit's: kept
    (sc.run_dir / "extra.bin").write_bytes(b"never sent")
    done = restore_init(s3_env, sc.run_dir, SAVE, tmp_path, holder="pod-b")
    assert done.returncode == 0, done.stdout + done.stderr
    before = store.files()

    sc.start()
    assert sc.flush()["durable"]
    assert sc.terminate()[0] == 0
    assert start_listing(sc) == [{"files": 2, "taken_as_restored": FILES - 1}], sc.logs()[-3000:]
    files = store.files()
    assert describes(files["d0/f0001.txt"], b"edited here") and describes(files["extra.bin"], b"never sent")
    assert len(files) == FILES + 1
    assert all(files[n] == e for n, e in before.items() if n != "d0/f0001.txt"), "a restored file was sent again"

    # The sidecar restarts later (a crash, an OOM kill) after the trainer rewrote a restored file.
    (sc.run_dir / "d1/f0100.txt").write_text("trained")
    again = run_once(sidecars, "restarted", {})
    assert start_listing(again)[-1] == {"files": FILES + 1, "taken_as_restored": 0}
    assert describes(store.files()["d1/f0100.txt"], b"trained")
