"""Restore: restore-init and `runsync restore`, against a real SeaweedFS and real sidecars."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from harness import LinkProxy, Sidecar, describes, restore_init, sha, tree, wait_for
from runsync import contract

pytestmark = pytest.mark.s3
RUN = "team-a/proj/run-1"


def test_cli_restore_to_a_laptop_dir_then_nothing_twice(cli, tmp_path, store):
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    (src / "ckpt/step-1/__0_0.distcp").write_bytes(os.urandom(300_000))
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    (src / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    (src / "notes/a.txt").parent.mkdir()
    (src / "notes/a.txt").write_text("hello")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest = tmp_path / "laptop"
    first = cli("restore", RUN, "--to", str(dest), "--json")
    assert first.returncode == 0, first.stderr
    assert tree(dest) == tree(src)
    latest = store.latest()
    for name, entry in latest.files.items():
        assert describes(entry, (dest / name).read_bytes())
        assert (dest / name).stat().st_mtime_ns == entry.mtime_ns
    assert json.loads(first.stdout)["bytes"] == sum(e.size for e in latest.files.values())
    again = json.loads(cli("restore", RUN, "--to", str(dest), "--json").stdout)
    assert again["written"] == [] and again["bytes"] == 0
    only = tmp_path / "only"
    part = json.loads(cli("restore", RUN, "notes/*", "--to", str(only), "--json").stdout)
    assert part["written"] == ["notes/a.txt"]
    human = cli("restore", RUN, "--to", str(dest))
    assert "restored 0 files (0 B)" in human.stdout and "4 up to date" in human.stdout


def test_newer_local_files_are_kept_unless_replace(cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("stored")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest = tmp_path / "pvc"
    dest.mkdir()
    (dest / "a.txt").write_text("newer local work")
    os.utime(dest / "a.txt", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    kept = json.loads(cli("restore", RUN, "--to", str(dest), "--json").stdout)
    assert kept["kept_newer"] == ["a.txt"] and (dest / "a.txt").read_text() == "newer local work"
    replaced = json.loads(cli("restore", RUN, "--to", str(dest), "--replace", "--json").stdout)
    assert replaced["written"] == ["a.txt"] and (dest / "a.txt").read_text() == "stored"


def test_a_corrupted_object_fails_clearly_and_leaves_nothing(cli, tmp_path, store):
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    (src / "ckpt/step-1/__0_0.distcp").write_bytes(os.urandom(100_000))
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    entry = store.files()["ckpt/step-1/__0_0.distcp"]
    store.client.put_object(Bucket=store.layout.store.bucket, Key=entry.key, Body=b"bit rot" * 1000)
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and entry.key in result.stderr
    # The checkpoint directory is placed whole or not at all: not even its good marker.
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_a_file_that_cannot_be_put_in_place_is_the_one_named(cli, tmp_path):
    """A checkpoint dir's files are downloaded, then renamed into place; a rename that fails (a
    directory stands where a shard goes) names that shard, and the unit's later files stay out."""
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    for name in ("__0_0.distcp", "__1_0.distcp"):
        (src / "ckpt/step-1" / name).write_bytes(os.urandom(50_000))
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest = tmp_path / "dest"
    (dest / "ckpt/step-1/__1_0.distcp").mkdir(parents=True)
    (dest / "ckpt/step-1/__1_0.distcp/mine.txt").write_text("not a checkpoint")
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    line = [x for x in result.stderr.splitlines() if "distcp" in x or "metadata" in x][-1]
    assert "ckpt/step-1/__1_0.distcp" in line and ".metadata" not in line, result.stderr
    assert not (dest / "ckpt/step-1/.metadata").exists()  # the marker never lands before its shards
    assert (dest / "ckpt/step-1/__1_0.distcp/mine.txt").read_text() == "not a checkpoint"
    assert [p.name for p in (dest / "ckpt/step-1").iterdir() if p.name.startswith(".runsync")] == []


def test_files_under_a_symlinked_dir_are_refused_the_rest_restored(cli, tmp_path):
    # Parent dirs are checked once per restore, not once per file: every file under the
    # symlink is still refused, and nothing lands where it points.
    src = tmp_path / "src"
    for name in ("logs/a.txt", "logs/b.txt", "logs/deep/c.txt", "notes/d.txt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "logs").symlink_to(outside)
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "3 of 4 restores failed" in result.stderr and "symlink" in result.stderr
    assert list(outside.iterdir()) == []
    assert (dest / "notes/d.txt").read_text() == "notes/d.txt"


def test_restore_init_resumes_own_run_then_warm_starts_from_another(cli, tmp_path, s3_env):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "weights.bin").write_bytes(b"pretrained" * 100)
    assert cli("sync", str(pre), "--run", "team-a/proj/pretrain").returncode == 0
    fresh = tmp_path / "fresh"
    result = restore_init(s3_env, fresh, {contract.RESTORE_FROM: "proj/pretrain"}, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (fresh / "weights.bin").read_bytes() == b"pretrained" * 100
    report = json.loads((fresh / ".runsync/restore.json").read_text())
    assert report["bytes"] == 1000

    other = restore_init(s3_env, tmp_path / "x", {contract.RESTORE_FROM: "team-b/proj/pretrain"}, tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip() == ('runsync: error: runsync.dev/restore-from: invalid run "team-b/proj/pretrain"; '
                                    "expected PROJECT/RUN of a run in the pod's own namespace")


def _restore_done(result) -> dict:
    lines = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
    return next(r for r in lines if r.get("msg") == "restore done")


def test_restore_init_counts_what_it_wrote_and_what_was_already_there(cli, tmp_path, s3_env):
    # restore-init counts names instead of holding them (1,000,000 of them would be its largest
    # memory): the counts it logs and leaves for the sidecar must still be the files'.
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i % 3}" / f"f{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}.txt").write_text(f"file {i}")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    pod = tmp_path / "pod"
    first = restore_init(s3_env, pod, {}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert tree(pod) == tree(src)
    done = _restore_done(first)
    assert (done["files"], done["up_to_date"]) == (30, 0), done
    assert json.loads((pod / ".runsync/restore.json").read_text())["files"] == 30
    (pod / "d0" / "f0.txt").unlink()
    again = restore_init(s3_env, pod, {}, tmp_path, holder="pod-c")
    assert again.returncode == 0, again.stderr
    done = _restore_done(again)
    assert (done["files"], done["up_to_date"]) == (1, 29), done
    assert json.loads((pod / ".runsync/restore.json").read_text())["files"] == 1


def test_a_restore_over_files_already_there_looks_at_each_once(cli, tmp_path, s3_env, monkeypatch):
    """A pod whose run dir survived (a PVC) meets its files already there: one lstat each tells
    restore-init so (beside 100,000 files, eight stats a file were 2 s of the pod's start). A file
    that differs is still checked by its content and restored, the rest left alone."""
    from collections import Counter

    from runsync import keys, restorer, transfer

    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}" / f"f{i}.bin").parent.mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}.bin").write_bytes(os.urandom(100 + i))
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    pod = tmp_path / "pvc"
    assert cli("restore", RUN, "--to", str(pod)).returncode == 0
    (pod / "d1/f1.bin").write_bytes(os.urandom(101))  # same size, other bytes, newer: kept
    (pod / "d2/f2.bin").write_bytes(os.urandom(102))
    os.utime(pod / "d2/f2.bin", ns=(10**9, 10**9))  # same size, other bytes, older: restored
    os.utime(pod / "d3/f3.bin", ns=(10**9, 10**9))  # same bytes, older mtime: found equal by content
    counts = Counter()
    for name in ("lstat", "stat"):
        real = getattr(os, name)

        def counting(path, *args, _real=real, **kwargs):
            if str(path).startswith(str(pod) + "/d") and str(path).endswith(".bin"):
                counts[os.path.relpath(path, pod)] += 1
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, counting)

    report = restorer.restore(transfer.client(), keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse(RUN),
                              pod, keep_names=True)
    looked = counts.copy()  # as the restore left it: the checks below stat files too

    assert (report.written, report.kept_newer, report.files_up_to_date) == (["d2/f2.bin"], ["d1/f1.bin"], 38)
    assert tree(pod) == {**tree(src), "d1/f1.bin": (pod / "d1/f1.bin").read_bytes()}
    assert (pod / "d3/f3.bin").stat().st_mtime_ns == (src / "d3/f3.bin").stat().st_mtime_ns
    untouched = {n: c for n, c in looked.items() if n not in ("d1/f1.bin", "d2/f2.bin", "d3/f3.bin")}
    assert len(untouched) == 37 and set(untouched.values()) == {1}, looked


def test_restore_strict_fails_on_an_empty_run(tmp_path, s3_env):
    lax = restore_init(s3_env, tmp_path / "a", {}, tmp_path, run="team-a/proj/new")
    assert lax.returncode == 0, lax.stderr
    strict = restore_init(s3_env, tmp_path / "b", {contract.RESTORE_STRICT: "true"}, tmp_path,
                          run="team-a/proj/new2")
    assert strict.returncode == 1
    assert "nothing to restore for team-a/proj/new2" in strict.stderr and "restore-strict" in strict.stderr


@pytest.mark.slow
def test_new_pod_waits_for_the_old_pods_final_flush(tmp_path, s3_env, store):
    # The old pod's S3 link sends 512 KiB/s per connection: its final flush of 48 MiB takes
    # several seconds whatever the load, so the new pod always meets it under way.
    uplink = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"], up_rate=512 * 1024)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = Sidecar(old_dir, {**s3_env, "AWS_ENDPOINT_URL_S3": uplink.endpoint}, {contract.SAVE: "final/*:end"},
                  tmp_path, grace=90, extra_env={contract.ENV_HOLDER: "pod-a"}).start()
    try:
        (old_dir / "final").mkdir()
        data = os.urandom(48 * 1024 * 1024)
        (old_dir / "final/model.pt").write_bytes(data)  # only uploaded at the end
        old.proc.send_signal(signal.SIGTERM)            # the old pod is terminating...
        new_dir = tmp_path / "new"
        result = restore_init(s3_env, new_dir, {}, tmp_path, holder="pod-b", grace=90, timeout=180)  # ...the new one starts
        assert result.returncode == 0, result.stdout + result.stderr
        assert old.proc.wait(120) == 0
        assert sha((new_dir / "final/model.pt").read_bytes()) == sha(data)
        assert any(json.loads(line).get("msg") == "waiting for the previous pod to finish its final flush"
                   for line in result.stdout.splitlines() if line.startswith("{"))
    finally:
        old.stop()
        uplink.close()


@pytest.mark.slow
def test_a_fenced_off_writer_cannot_commit(tmp_path, s3_env, store):
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = Sidecar(old_dir, s3_env, {contract.SAVE: "**:live"}, tmp_path, extra_env={contract.ENV_HOLDER: "pod-a"}).start()
    try:
        (old_dir / "a.txt").write_text("before")
        old.flush()
        # The old pod is wedged but alive: the new pod waits out the bound, then takes over.
        result = restore_init(s3_env, tmp_path / "new", {}, tmp_path, holder="pod-b", grace=0.5)
        assert result.returncode == 0, result.stderr
        taken = store.latest()
        (old_dir / "b.txt").write_text("after the takeover")
        code, doc = old._call("POST", "/flush", {"timeout": 5})
        assert code == 504 or doc.get("durable") is not True
        wait_for(lambda: any("fenced" in r.get("msg", "") for r in old.log_records()), timeout=20,
                 what="the old writer to notice it was fenced")
        assert "b.txt" not in store.files()
        assert store.latest().seq == taken.seq
    finally:
        old.stop()


def _write_replicas(s3, layout_of, replicas: int, missing: int) -> None:
    """What `replicas` sidecars leave, by the product's lease and manifest code: each commits its
    log and its shard of ckpt/step-100 (replica 0 the marker), then of ckpt/step-200 (all but
    `missing`), and releases its lease."""
    from runsync import lease, manifest

    def one(r: int) -> None:
        layout = layout_of(str(r))
        held = lease.acquire(s3, layout, f"trainer-{r}", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
        previous = None
        for step in (100, 200):
            files = {f"logs/rank-{r}.txt": f"rank {r} step {step}".encode()}
            if step == 100 or r != missing:
                files[f"ckpt/step-{step}/__{r}_0.distcp"] = os.urandom(512)
            if r == 0:
                files[f"ckpt/step-{step}/.metadata"] = b"dcp metadata"
            entries = []
            for name, data in files.items():
                key = layout.file_key(name, sha(data))
                s3.put_object(Bucket=layout.store.bucket, Key=key, Body=data)
                entries.append(manifest.FileEntry(name, key, len(data), time.time_ns(), sha(data), "live"))
            previous = manifest.commit_next(s3, layout, previous, entries, final=step == 200,
                                            writer=f"sidecar@trainer-{r}", epoch=held.lease.epoch)
        lease.renew(s3, layout, held, state="released")

    for r in range(replicas):
        one(r)


def test_restore_all_reads_each_replica_once(tmp_path, s3_env, store, monkeypatch):
    """restore-replicas: all over 16 replicas: one LIST of the run (every replica's manifest
    numbers), then per replica a GET of its lease and one of its latest manifest (format 1 needs
    both), then the files; and every promise kept: a checkpoint with a replica's part missing is
    not restored, and a manifest committed by a fenced-off writer is ignored."""
    from runsync import keys, lease, manifest
    from runsync_testing import s3count

    replicas, run = 16, keys.RunPath.parse("team-a/proj/wide")
    layout_of = lambda r: keys.Layout(store.layout.store, run, r)  # noqa: E731
    _write_replicas(store.client, layout_of, replicas, missing=5)
    fenced = layout_of("3")  # a new writer took replica 3 over; the old one (epoch 1) commits anyway
    lease.acquire(store.client, fenced, "trainer-3b", wait=0, max_seq=lambda: manifest.max_seq(store.client, fenced))
    old = manifest.latest(store.client, fenced)
    manifest.commit(store.client, fenced, old, [], final=True, writer="sidecar@trainer-3", epoch=old.epoch,
                    removed=["logs/rank-3.txt"], seq=old.seq + 1)
    counts = tmp_path / "counts.json"
    for name, value in s3count.environ(counts, tmp_path).items():
        monkeypatch.setenv(name, value)

    result = restore_init(s3_env, tmp_path / "dir", {contract.RESTORE_REPLICAS: "all"}, tmp_path,
                          run=str(run), holder="pod-new", grace=0.5)

    assert result.returncode == 0, result.stdout + result.stderr
    restored = tree(tmp_path / "dir")
    assert {n for n in restored if n.startswith("logs/")} == {f"logs/rank-{r}.txt" for r in range(replicas)}
    assert {n for n in restored if n.startswith("ckpt/")} == \
        {f"ckpt/step-100/__{r}_0.distcp" for r in range(replicas)} | {"ckpt/step-100/.metadata"}
    requests = s3count.read(counts)
    # check_store's LIST; the own lease: GET, max_seq (GET head.json, HEAD its commit, HEAD the
    # number after it), PUT; the LIST of the run; all through the CRT (crtclient.py), counted as
    # botocore's; each restored file in one GET of the CRT's (crtobjects.py).
    assert requests == {"ListObjectsV2": 1 + 1, "HeadObject": 2,
                        "GetObject": 1 + 1 + 2 * replicas + 1, "PutObject": 1,  # +1: the fenced-off one
                        "GetObject (CRT)": len(restored)}, requests
